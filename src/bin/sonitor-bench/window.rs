//! `sonitor-bench window`: time per window of model bundles through the daemon's own path (`sonitor_core`
//! features, `sonitor::embed::Embedder`: tract, plan optimised once), on one thread: median and p99 of many runs
//! after a warm-up; the FFTs' share of the features; and inference against the floor (FLOPs per window over this
//! CPU's single-core matrix-multiply rate).
//!
//! This machine's speed drifts over tens of seconds (other tenants), so nothing is measured in one long stretch:
//! the runs go in blocks of [`BLOCK`] windows of each bundle in turn (the first bundle changing from block to
//! block), then [`SGEMM_PER_BLOCK`] products of the floor's sgemm. Each block's inference median over the floor
//! from that block's own sgemm rate is one ratio; the table gives the median of those ratios. Bundles compared in
//! one call are measured in the same stretches of time.

use std::path::{Path, PathBuf};
use std::time::Instant;

use sonitor::bench::{median, percentile, test_signal, FftOnly, Sgemm, FLOOR_SGEMM_SIZE};
use sonitor::embed::Embedder;
use sonitor_core::bundle::Bundle;
use sonitor_core::features::{FeatureExtractor, Features};

/// Windows of each bundle per block (after one untimed window: the sgemm before it has evicted the caches).
const BLOCK: usize = 20;
/// Floor products after each block; their median is the block's rate.
const SGEMM_PER_BLOCK: usize = 3;

/// One bundle under measurement: the daemon's extractor and embedder, and the times of its runs.
struct Probe {
    dir: PathBuf,
    bundle: Bundle,
    embedder: Embedder,
    fx: FeatureExtractor,
    fft: FftOnly,
    window: Vec<f32>,
    feats: Features,
    out: Vec<f32>,
    /// Features, inference, FFTs alone (ms), every timed run.
    tf: Vec<f64>,
    ti: Vec<f64>,
    tfft: Vec<f64>,
    /// Per block: the inference median over that block's floor.
    ratios: Vec<f64>,
    flops: f64,
}

impl Probe {
    fn load(dir: &Path) -> anyhow::Result<Self> {
        let bundle = Bundle::load(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        let embedder = Embedder::load(&bundle)?;
        let p = bundle.manifest.features.clone();
        let fx = FeatureExtractor::new(p.clone())?;
        let feats = fx.new_output();
        let flops = bundle.manifest.provenance.model["flops_per_window"]
            .as_f64()
            .unwrap_or(f64::NAN);
        let mut probe = Self {
            dir: dir.to_path_buf(),
            bundle,
            embedder,
            fx,
            fft: FftOnly::new(p.n_fft, p.stft_hop, p.window_samples),
            window: test_signal(p.window_samples, p.sample_rate),
            feats,
            out: Vec::new(),
            tf: Vec::new(),
            ti: Vec::new(),
            tfft: Vec::new(),
            ratios: Vec::new(),
            flops,
        };
        for _ in 0..10 {
            probe.once()?;
        }
        Ok(probe)
    }

    /// One window: features, inference, then the FFTs alone (ms each).
    fn once(&mut self) -> anyhow::Result<[f64; 3]> {
        let t0 = Instant::now();
        self.fx.extract_into(&self.window, &mut self.feats)?;
        let t1 = Instant::now();
        self.embedder.embed(&self.feats, &mut self.out)?;
        let t2 = Instant::now();
        self.fft.run(&self.window);
        let t3 = Instant::now();
        let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
        Ok([ms(t0, t1), ms(t1, t2), ms(t2, t3)])
    }

    /// One block of `n` timed windows; returns their inference median (ms).
    fn block(&mut self, n: usize) -> anyhow::Result<f64> {
        self.once()?;
        for _ in 0..n {
            let [f, i, fft] = self.once()?;
            self.tf.push(f);
            self.ti.push(i);
            self.tfft.push(fft);
        }
        Ok(median(&self.ti[self.ti.len() - n..]))
    }
}

pub fn run(bundles: &[PathBuf], runs: usize, nodes: bool) -> anyhow::Result<()> {
    let s = FLOOR_SGEMM_SIZE;
    let sgemm = Sgemm::new(s, s, s)?;
    let mut probes = bundles
        .iter()
        .map(|d| Probe::load(d))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut rates = Vec::new();
    let mut done = 0;
    let mut block = 0;
    while done < runs {
        let n = BLOCK.min(runs - done);
        let medians = (0..probes.len())
            .map(|i| {
                let p = (i + block) % probes.len();
                Ok((p, probes[p].block(n)?))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut r = (0..SGEMM_PER_BLOCK)
            .map(|_| sgemm.rate())
            .collect::<anyhow::Result<Vec<f64>>>()?;
        let rate = median(&r);
        rates.append(&mut r);
        for (p, inference_ms) in medians {
            let floor_ms = probes[p].flops / rate * 1e3;
            probes[p].ratios.push(inference_ms / floor_ms);
        }
        done += n;
        block += 1;
    }
    rates.sort_by(f64::total_cmp);
    let rate = percentile(&rates, 0.5);
    println!(
        "single-core sgemm {s}x{s}x{s} through tract: {:.1} GFLOP/s (median of {}; p10 {:.1}, p90 {:.1}), \
         {SGEMM_PER_BLOCK} products after every block of {BLOCK} windows of each bundle\n",
        rate / 1e9,
        rates.len(),
        percentile(&rates, 0.1) / 1e9,
        percentile(&rates, 0.9) / 1e9,
    );
    println!("| bundle | parameters | MFLOPs per window | ONNX (KiB) | features median (ms) | of which FFT (ms) | inference median (ms) | inference p99 (ms) | floor (ms) | inference / floor | runs |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for p in &mut probes {
        for v in [&mut p.tf, &mut p.ti, &mut p.tfft, &mut p.ratios] {
            v.sort_by(f64::total_cmp);
        }
        println!(
            "| {} | {} | {:.1} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.1}× ({:.1}–{:.1}) | {runs} |",
            p.dir.display(),
            p.bundle.manifest.provenance.model["parameters"],
            p.flops / 1e6,
            std::fs::metadata(&p.bundle.onnx_path)?.len() as f64 / 1024.0,
            percentile(&p.tf, 0.5),
            percentile(&p.tfft, 0.5),
            percentile(&p.ti, 0.5),
            percentile(&p.ti, 0.99),
            p.flops / rate * 1e3,
            percentile(&p.ratios, 0.5),
            percentile(&p.ratios, 0.1),
            percentile(&p.ratios, 0.9),
        );
    }
    println!(
        "\n(floor: at the median sgemm rate; inference / floor: the median (p10–p90) over the {} blocks of each \
         block's inference median over the floor at that block's own rate)",
        block
    );
    if nodes {
        for p in &mut probes {
            println!("\n{}:", p.dir.display());
            print_nodes(&mut p.embedder, &p.feats, runs)?;
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
        println!("  {op:<34} {t:.3} ms  {:5.1}%", 100.0 * t / total);
    }
    println!("nodes, largest first:");
    for (node, op, t) in rows.iter().take(25) {
        println!("  {t:.3} ms  {:5.1}%  {op:<34} {node}", 100.0 * t / total);
    }
    println!();
    Ok(())
}
