//! `sonitor-bench window`: time per window of model bundles through the daemon's own path (`sonitor_core`
//! features, `sonitor::model::Embedder`: tract, plan optimised once), on one thread: median and p99 of many runs
//! after a warm-up; the FFTs' share of the features; and inference against the floor (FLOPs per window over this
//! CPU's single-core matrix-multiply rate).

use std::path::PathBuf;
use std::time::Instant;

use sonitor::bench::{percentile, sgemm_flops_per_second, test_signal, FftOnly};
use sonitor::model::Embedder;
use sonitor_core::bundle::Bundle;
use sonitor_core::features::FeatureExtractor;

/// The sgemm used for the floor: large enough that the kernel, not the call, is timed.
pub const FLOOR_SGEMM: (usize, usize, usize) = (512, 512, 512);

pub fn run(bundles: &[PathBuf], runs: usize) -> anyhow::Result<()> {
    let (m, k, n) = FLOOR_SGEMM;
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
    }
    Ok(())
}
