//! `sonitor-bench`: time per window of model bundles through the daemon's own path (`sonitor_core` features,
//! `sonitor::model::Embedder`: tract, plan optimised once), on one thread: median and p99 of many runs after a
//! warm-up, as a Markdown table. Run it on the target (a Pi) to see how many machines it can watch.
//!
//! usage: cargo run --release --bin sonitor-bench -- [BUNDLE ...] [--runs N]   (default: models/default, 300 runs)

use std::path::PathBuf;
use std::time::Instant;

use sonitor::model::Embedder;
use sonitor_core::bundle::Bundle;
use sonitor_core::features::FeatureExtractor;

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

fn main() -> anyhow::Result<()> {
    let mut bundles = Vec::new();
    let mut runs = 300usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => {
                runs = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&n| n > 0)
                    .ok_or_else(|| anyhow::anyhow!("--runs needs a positive number"))?
            }
            other => bundles.push(PathBuf::from(other)),
        }
    }
    if bundles.is_empty() {
        bundles.push(PathBuf::from("models/default"));
    }
    println!("| bundle | parameters | MFLOPs per window | ONNX (KiB) | features median (ms) | inference median (ms) | inference p99 (ms) | runs |");
    println!("|---|---|---|---|---|---|---|---|");
    for dir in &bundles {
        let b = Bundle::load(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        let e = Embedder::load(&b)?;
        let mut fx = FeatureExtractor::new(b.manifest.features.clone())?;
        let n = b.manifest.features.window_samples;
        // A deterministic noisy tone: the cost does not depend on the values.
        let window: Vec<f32> = (0..n)
            .map(|i| {
                let t = i as f32 / b.manifest.features.sample_rate as f32;
                0.3 * (std::f32::consts::TAU * 440.0 * t).sin()
                    + 0.01 * ((i * 7919 % 101) as f32 - 50.0) / 50.0
            })
            .collect();
        let mut feats = fx.new_output();
        let mut out = Vec::new();
        for _ in 0..10 {
            fx.extract_into(&window, &mut feats)?;
            e.embed(&feats, &mut out)?;
        }
        let (mut tf, mut ti) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
        for _ in 0..runs {
            let t0 = Instant::now();
            fx.extract_into(&window, &mut feats)?;
            let t1 = Instant::now();
            e.embed(&feats, &mut out)?;
            let t2 = Instant::now();
            tf.push((t1 - t0).as_secs_f64() * 1e3);
            ti.push((t2 - t1).as_secs_f64() * 1e3);
        }
        tf.sort_by(f64::total_cmp);
        ti.sort_by(f64::total_cmp);
        let pm = &b.manifest.provenance.model;
        println!(
            "| {} | {} | {:.1} | {:.0} | {:.3} | {:.3} | {:.3} | {runs} |",
            dir.display(),
            pm["parameters"],
            pm["flops_per_window"].as_f64().unwrap_or(f64::NAN) / 1e6,
            std::fs::metadata(&b.onnx_path)?.len() as f64 / 1024.0,
            percentile(&tf, 0.5),
            percentile(&ti, 0.5),
            percentile(&ti, 0.99),
        );
    }
    Ok(())
}
