//! The daemon's kernels per analysis window, with criterion: feature extraction (log-mel + spectrum) and the FFTs
//! inside it, tract inference of the shipped bundle, the scoring of its embedding (alone, and with a level
//! baseline as `sonitor-train combine --bundle` adds one), and the single-core sgemm that sets the floor; and per
//! second of audio, the resampling of a 48 or 44.1 kHz microphone to the model's 16 kHz.
//!
//! `cargo bench --bench kernels` (the end-to-end numbers come from `sonitor-bench`; see BENCHMARKS.md).

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use sonitor::bench::{sgemm_plan, test_signal, FftOnly, FLOOR_SGEMM_SIZE};
use sonitor::embed::Embedder;
use sonitor_core::audio::StreamResampler;
use sonitor_core::bundle::Bundle;
use sonitor_core::features::{FeatureExtractor, Features};
use sonitor_core::score::{window_score, Baseline};
use tract_onnx::prelude::*;

fn bundle() -> Bundle {
    Bundle::load(concat!(env!("CARGO_MANIFEST_DIR"), "/models/default").as_ref())
        .expect("models/default loads")
}

fn features(c: &mut Criterion) {
    let b = bundle();
    let p = b.manifest.features.clone();
    let window = test_signal(p.window_samples, p.sample_rate);
    let mut fx = FeatureExtractor::new(p.clone()).unwrap();
    let mut out = fx.new_output();
    let mut g = c.benchmark_group("features");
    g.bench_function("log-mel + spectrum per window", |bch| {
        bch.iter(|| fx.extract_into(black_box(&window), &mut out).unwrap())
    });
    // The FFTs alone, as extract_into plans and runs them.
    let mut fft = FftOnly::new(p.n_fft, p.stft_hop, p.window_samples);
    g.bench_function("FFTs of one window", |bch| {
        bch.iter(|| fft.run(black_box(&window)))
    });
    g.finish();
}

/// The features of one test window, as the feature thread hands them on.
fn window_features(b: &Bundle) -> Features {
    let p = b.manifest.features.clone();
    FeatureExtractor::new(p.clone())
        .unwrap()
        .extract(&test_signal(p.window_samples, p.sample_rate))
        .unwrap()
}

fn inference(c: &mut Criterion) {
    let b = bundle();
    let feats = window_features(&b);
    let mut e = Embedder::load(&b).unwrap();
    let mut emb = Vec::new();
    let flops = b.manifest.provenance.model["flops_per_window"]
        .as_u64()
        .unwrap_or(0);
    let mut g = c.benchmark_group("inference");
    g.throughput(Throughput::Elements(flops));
    g.bench_function("models/default per window (elements = FLOPs)", |bch| {
        bch.iter(|| e.embed(black_box(&feats), &mut emb).unwrap())
    });
    g.finish();
}

fn scoring(c: &mut Criterion) {
    let b = bundle();
    let feats = window_features(&b);
    let mut emb = Vec::new();
    Embedder::load(&b).unwrap().embed(&feats, &mut emb).unwrap();
    let mut section = b.manifest.sections[0].clone();
    let mut scratch = Vec::new();
    let mut g = c.benchmark_group("scoring");
    g.bench_function("cosine distance to the centroids per window", |bch| {
        bch.iter(|| window_score(&section, black_box(&emb), &feats.band_means, &mut scratch))
    });
    // The values do not change the work: two means and a full 128-band triangle, as a combined bundle has.
    let d = b.manifest.features.n_mels;
    section.baseline = Some(Baseline {
        means: vec![vec![-4.0; d], vec![-3.5; d]],
        cholesky: (0..d)
            .flat_map(|i| (0..=i).map(move |j| if i == j { 1.0 } else { 0.01 }))
            .collect(),
        domain_offsets: vec![0.0, 1.5],
        distance_median: 10.0,
        distance_spread: 3.0,
        score_median: 0.02,
        score_spread: 0.03,
        weight: 0.5,
    });
    g.bench_function("with a level baseline per window", |bch| {
        bch.iter(|| window_score(&section, black_box(&emb), &feats.band_means, &mut scratch))
    });
    g.finish();
}

fn sgemm(c: &mut Criterion) {
    let n = FLOOR_SGEMM_SIZE;
    let plan = sgemm_plan(n, n, n).unwrap();
    let a: Tensor = Tensor::from_shape(&[n, n], &test_signal(n * n, 16_000)).unwrap();
    let mut g = c.benchmark_group("sgemm");
    g.throughput(Throughput::Elements(2 * (n * n * n) as u64));
    g.bench_function(
        format!("{n}x{n}x{n} through tract (elements = FLOPs)"),
        |bch| bch.iter(|| plan.run(tvec!(a.clone().into())).unwrap()),
    );
    g.finish();
}

/// One second of a device's audio through the daemon's stream resampler, in the reader's 100 ms blocks.
fn resampling(c: &mut Criterion) {
    let mut g = c.benchmark_group("resampling");
    for from in [48_000u32, 44_100] {
        let second = test_signal(from as usize, from);
        let mut r = StreamResampler::new(from, 16_000).unwrap();
        let mut out = Vec::with_capacity(20_000);
        g.bench_function(format!("{from} Hz to 16 kHz, one second"), |bch| {
            bch.iter(|| {
                out.clear();
                for block in second.chunks(from as usize / 10) {
                    r.push(black_box(block), &mut out).unwrap();
                }
            })
        });
    }
    g.finish();
}

criterion_group!(kernels, features, inference, scoring, sgemm, resampling);
criterion_main!(kernels);
