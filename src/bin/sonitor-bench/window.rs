//! `sonitor-bench window`: time per window of model bundles through the daemon's own path (`sonitor_core`
//! features, `sonitor::model::Embedder`: tract, plan optimised once), on one thread: median and p99 of many runs
//! after a warm-up; the FFTs' share of the features; and inference against the floor (FLOPs per window over this
//! CPU's single-core matrix-multiply rate).

use std::path::PathBuf;
use std::time::Instant;

use sonitor::bench::{percentile, sgemm_flops_per_second, test_signal, FftOnly, FLOOR_SGEMM_SIZE};
use sonitor::model::Embedder;
use sonitor_core::bundle::Bundle;
use sonitor_core::features::FeatureExtractor;

pub fn run(bundles: &[PathBuf], runs: usize, nodes: bool) -> anyhow::Result<()> {
    let (m, k, n) = (FLOOR_SGEMM_SIZE, FLOOR_SGEMM_SIZE, FLOOR_SGEMM_SIZE);
    let rate = sgemm_flops_per_second(m, k, n, 50)?;
    println!(
        "single-core sgemm {m}x{k}x{n} through tract: {:.1} GFLOP/s (median of 50)\n",
        rate / 1e9
    );
    println!("| bundle | parameters | MFLOPs per window | ONNX (KiB) | features median (ms) | of which FFT (ms) | inference median (ms) | inference p99 (ms) | floor (ms) | inference / floor | runs |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for dir in bundles {
        let b = Bundle::load(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        let mut e = Embedder::load(&b)?;
        let p = &b.manifest.features;
        let mut fx = FeatureExtractor::new(p.clone())?;
        let mut fft = FftOnly::new(p.n_fft, p.stft_hop, p.window_samples);
        let window = test_signal(p.window_samples, p.sample_rate);
        let mut feats = fx.new_output();
        let mut out = Vec::new();
        for _ in 0..10 {
            fx.extract_into(&window, &mut feats)?;
            e.embed(&feats, &mut out)?;
            fft.run(&window);
        }
        let (mut tf, mut tfft, mut ti) = (
            Vec::with_capacity(runs),
            Vec::with_capacity(runs),
            Vec::with_capacity(runs),
        );
        for _ in 0..runs {
            let t0 = Instant::now();
            fx.extract_into(&window, &mut feats)?;
            let t1 = Instant::now();
            e.embed(&feats, &mut out)?;
            let t2 = Instant::now();
            fft.run(&window);
            let t3 = Instant::now();
            tf.push((t1 - t0).as_secs_f64() * 1e3);
            ti.push((t2 - t1).as_secs_f64() * 1e3);
            tfft.push((t3 - t2).as_secs_f64() * 1e3);
        }
        for v in [&mut tf, &mut ti, &mut tfft] {
            v.sort_by(f64::total_cmp);
        }
        let pm = &b.manifest.provenance.model;
        let flops = pm["flops_per_window"].as_f64().unwrap_or(f64::NAN);
        let floor_ms = flops / rate * 1e3;
        println!(
            "| {} | {} | {:.1} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.1}× | {runs} |",
            dir.display(),
            pm["parameters"],
            flops / 1e6,
            std::fs::metadata(&b.onnx_path)?.len() as f64 / 1024.0,
            percentile(&tf, 0.5),
            percentile(&tfft, 0.5),
            percentile(&ti, 0.5),
            percentile(&ti, 0.99),
            floor_ms,
            percentile(&ti, 0.5) / floor_ms,
        );
        if nodes {
            print_nodes(&mut e, &feats, runs)?;
        }
    }
    Ok(())
}

/// The median time of every node of the plan over `runs` runs, largest first, with each op kind's total.
fn print_nodes(
    e: &mut Embedder,
    feats: &sonitor_core::features::Features,
    runs: usize,
) -> anyhow::Result<()> {
    // Node name → (op name, times); in plan order.
    let mut times: Vec<(String, String, Vec<f64>)> = Vec::new();
    for _ in 0..runs {
        let mut i = 0;
        e.profile_nodes(feats, |node, op, s| {
            if i == times.len() {
                times.push((node.to_string(), op.to_string(), Vec::with_capacity(runs)));
            }
            times[i].2.push(s * 1e3);
            i += 1;
        })?;
    }
    let mut rows: Vec<(String, String, f64)> = times
        .into_iter()
        .map(|(node, op, mut t)| {
            t.sort_by(f64::total_cmp);
            (node, op, percentile(&t, 0.5))
        })
        .collect();
    let total: f64 = rows.iter().map(|r| r.2).sum();
    let mut by_op: Vec<(String, f64)> = Vec::new();
    for (_, op, t) in &rows {
        match by_op.iter_mut().find(|(o, _)| o == op) {
            Some(row) => row.1 += t,
            None => by_op.push((op.clone(), *t)),
        }
    }
    by_op.sort_by(|a, b| b.1.total_cmp(&a.1));
    rows.sort_by(|a, b| b.2.total_cmp(&a.2));
    println!("\nby op (sum of node medians {total:.3} ms):");
    for (op, t) in &by_op {
        println!("  {op:<28} {t:.3} ms  {:5.1}%", 100.0 * t / total);
    }
    println!("nodes, largest first:");
    for (node, op, t) in rows.iter().take(25) {
        println!("  {t:.3} ms  {:5.1}%  {op:<24} {node}", 100.0 * t / total);
    }
    println!();
    Ok(())
}
