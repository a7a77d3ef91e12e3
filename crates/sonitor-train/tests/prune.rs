//! Structured pruning removes exactly the channels it says it removes, and nothing else changes.
//!
//! The check: in a briefly trained network, silence the upper channels of every layer group (BatchNorm γ = β = 0,
//! so they are 0 after the ReLU and contribute nothing downstream). Ranked by BatchNorm scale, those are the
//! channels pruning drops, so the pruned network must compute the same embedding as the silenced original, in
//! burn and, after export, in tract.

use burn::module::{Module, Param};
use burn::nn::BatchNorm;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use sonitor_train::export::export_onnx;
use sonitor_train::infer::exported_graph;
use sonitor_train::loss::{Loss, LossKind};
use sonitor_train::model::{Model, ModelConfig};
use sonitor_train::prune::{kept, prune, pruned_config, Criterion};

#[path = "support/parity.rs"]
mod parity;
use parity::relative_error;

const KEEP: f64 = 0.5;

fn trained(config: &ModelConfig, device: &Device) -> Model {
    device.seed(7);
    let mut model = config.init(device).unwrap();
    let mut optim = AdamConfig::new().init();
    let mut loss = Loss::new(LossKind::SubclusterAdacos, 3, config.embedding_dim(), 1);
    let batch = 6;
    for step in 0..3 {
        let mel = Tensor::<3>::random(
            [batch, config.frames, config.n_mels],
            Distribution::Normal(0.5, 2.0),
            device,
        );
        let spec = Tensor::<2>::random(
            [batch, config.spectrum_len],
            Distribution::Uniform(0.0, 30.0),
            device,
        );
        let labels: Vec<f32> = (0..batch * 3)
            .map(|i| f32::from(u8::from(i % 3 == (i / 3 + step) % 3)))
            .collect();
        let l = loss.forward(model.forward(mel, spec), &labels);
        let grads = GradientsParams::from_grads(l.backward(), &model);
        model = optim.step(1e-2, model, grads);
    }
    model
}

/// Sets γ and β of the channels for which `drop(i)` holds to 0.
fn silence(bn: &mut BatchNorm, drop: impl Fn(usize) -> bool) {
    let n = bn.gamma.val().dims()[0];
    let device = bn.gamma.val().device();
    let mask: Vec<f32> = (0..n).map(|i| if drop(i) { 0.0 } else { 1.0 }).collect();
    let mask = Tensor::<1>::from_data(TensorData::new(mask, [n]), &device);
    // New leaves from plain values (a product of a parameter is not a leaf of the autodiff graph).
    let leaf = |t: Tensor<1>| Param::from_tensor(Tensor::from_data(t.into_data(), &device));
    bn.gamma = leaf(bn.gamma.val() * mask.clone());
    bn.beta = leaf(bn.beta.val() * mask);
}

fn silence_upper(bn: &mut BatchNorm) {
    let n = bn.gamma.val().dims()[0];
    let k = kept(n, KEEP);
    silence(bn, |i| i >= k);
}

fn check(config: ModelConfig) {
    let device = Device::flex().autodiff();
    let mut model = trained(&config, &device);
    silence_upper(&mut model.stem_bn);
    for b in &mut model.blocks {
        silence_upper(&mut b.bn1);
        silence_upper(&mut b.bn2);
        if let Some(sc) = &mut b.shortcut {
            silence_upper(&mut sc.bn);
        }
    }
    // The flattened time–frequency features of silenced channels are 0; their BatchNorm must map them to 0 too.
    let (_, wo) = config.tf_output_hw();
    let last = *config.tf_widths.last().unwrap();
    let k_last = kept(last, KEEP);
    silence(&mut model.tf_flat_bn, |i| i / wo >= k_last);
    for bn in model
        .spec_bns
        .iter_mut()
        .chain(model.spec_dense_bns.iter_mut())
    {
        silence_upper(bn);
    }

    let (pruned, new_config) = prune(model.clone(), &config, KEEP, Criterion::BnScale).unwrap();
    assert_eq!(new_config, pruned_config(&config, KEEP));
    assert!(pruned.num_params() < model.num_params());
    assert!(new_config.macs_per_window() < config.macs_per_window());

    let onnx = export_onnx(&pruned, &new_config, "prune-test").unwrap();
    let full_onnx = export_onnx(&model, &config, "prune-test").unwrap();
    assert!(onnx.len() < full_onnx.len());
    let embedder = exported_graph(&onnx, &new_config).unwrap();
    let plain = Device::flex();
    let (full, small) = (model.valid(), pruned.valid());
    let (mut worst_burn, mut worst_tract) = (0.0f64, 0.0f64);
    for _ in 0..3 {
        let mel = Tensor::<3>::random(
            [1, config.frames, config.n_mels],
            Distribution::Normal(0.0, 3.0),
            &plain,
        );
        let spec = Tensor::<2>::random(
            [1, config.spectrum_len],
            Distribution::Uniform(0.0, 50.0),
            &plain,
        );
        let mel_v: Vec<f32> = mel.to_data().try_to_vec().unwrap();
        let spec_v: Vec<f32> = spec.to_data().try_to_vec().unwrap();
        let want: Vec<f32> = full
            .forward(mel.clone(), spec.clone())
            .into_data()
            .try_to_vec()
            .unwrap();
        let got: Vec<f32> = small.forward(mel, spec).into_data().try_to_vec().unwrap();
        worst_burn = worst_burn.max(relative_error(&got, &want));
        let got = embedder.embed_views(&mel_v, &spec_v).unwrap();
        worst_tract = worst_tract.max(relative_error(&got, &want));
    }
    eprintln!(
        "pruned vs silenced original: burn {worst_burn:.3e}, tract {worst_tract:.3e}; {} → {} MACs",
        config.macs_per_window(),
        new_config.macs_per_window()
    );
    assert!(worst_burn <= 1e-4, "burn: relative error {worst_burn:e}");
    assert!(worst_tract <= 1e-4, "tract: relative error {worst_tract:e}");
}

#[test]
fn pruned_network_equals_the_silenced_original_tiny() {
    check(ModelConfig::tiny(7, 32, 2048));
}

#[test]
fn pruned_network_equals_the_silenced_original_two_blocks_per_stage() {
    // Identity shortcuts inside a stage tie channels across blocks.
    let c = ModelConfig {
        tf_widths: vec![4, 8, 8],
        tf_blocks: 2,
        ..ModelConfig::tiny(15, 16, 2000)
    };
    check(c);
}

#[test]
fn keep_one_is_the_identity() {
    let config = ModelConfig::tiny(7, 32, 2048);
    let device = Device::flex().autodiff();
    let model = trained(&config, &device);
    let (same, c) = prune(model.clone(), &config, 1.0, Criterion::L1).unwrap();
    assert_eq!(c, config);
    let plain = Device::flex();
    let mel = Tensor::<3>::random([1, 7, 32], Distribution::Normal(0.0, 3.0), &plain);
    let spec = Tensor::<2>::random([1, 2048], Distribution::Uniform(0.0, 50.0), &plain);
    let a: Vec<f32> = model
        .valid()
        .forward(mel.clone(), spec.clone())
        .into_data()
        .try_to_vec()
        .unwrap();
    let b: Vec<f32> = same
        .valid()
        .forward(mel, spec)
        .into_data()
        .try_to_vec()
        .unwrap();
    assert_eq!(a, b);
}

#[test]
fn bad_keep_is_refused() {
    let config = ModelConfig::tiny(7, 32, 2048);
    let model = config.init(&Device::flex()).unwrap();
    for keep in [0.0, -0.5, 1.5, f64::NAN] {
        let e = prune(model.clone(), &config, keep, Criterion::BnScale)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--keep"), "{keep}: {e}");
    }
}
