//! Export parity: the embedding tract computes from the exported ONNX graph equals burn's forward pass (inference
//! mode, BatchNorm with running statistics) to a relative error ≤ 1e-4, on random inputs, for a tiny network
//! briefly trained so that every BatchNorm has non-trivial statistics and weights. The stem is exported as a
//! blocked convolution below `STEM_BLOCK_BELOW` channels (the first two tests; the second crops an odd output row)
//! and as a plain one from there on (the third).

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Tensor};
use sonitor_train::export::{export_onnx, STEM_BLOCK_BELOW};
use sonitor_train::infer::exported_graph;
use sonitor_train::loss::{Loss, LossKind};
use sonitor_train::model::ModelConfig;

#[path = "support/parity.rs"]
mod parity;
use parity::relative_error;

fn check(config: ModelConfig) {
    let (frames, n_mels, spec_len) = (config.frames, config.n_mels, config.spectrum_len);
    let device = Device::flex().autodiff();
    device.seed(3);
    let mut model = config.init(&device).unwrap();
    let mut optim = AdamConfig::new().init();
    let mut loss = Loss::new(LossKind::SubclusterAdacos, 3, config.embedding_dim(), 1);
    let batch = 6;
    for step in 0..4 {
        let mel = Tensor::<3>::random(
            [batch, frames, n_mels],
            Distribution::Normal(0.5, 2.0),
            &device,
        );
        let spec =
            Tensor::<2>::random([batch, spec_len], Distribution::Uniform(0.0, 30.0), &device);
        let labels: Vec<f32> = (0..batch * 3)
            .map(|i| {
                if i % 3 == (i / 3 + step) % 3 {
                    1.0
                } else {
                    0.0
                }
            })
            .collect();
        let l = loss.forward(model.forward(mel, spec), &labels);
        let grads = GradientsParams::from_grads(l.backward(), &model);
        model = optim.step(1e-2, model, grads);
    }
    let onnx = export_onnx(&model, &config, "parity-test").unwrap();
    let embedder = exported_graph(&onnx, &config).unwrap();
    let plain = Device::flex();
    let eval = model.valid();
    let mut worst = 0.0f64;
    for _ in 0..3 {
        let mel = Tensor::<3>::random([1, frames, n_mels], Distribution::Normal(0.0, 3.0), &plain);
        let spec = Tensor::<2>::random([1, spec_len], Distribution::Uniform(0.0, 50.0), &plain);
        let mel_v: Vec<f32> = mel.to_data().try_to_vec().unwrap();
        let spec_v: Vec<f32> = spec.to_data().try_to_vec().unwrap();
        let want: Vec<f32> = eval.forward(mel, spec).into_data().try_to_vec().unwrap();
        let got = embedder.embed_views(&mel_v, &spec_v).unwrap();
        worst = worst.max(relative_error(&got, &want));
    }
    eprintln!("export parity: worst relative error {worst:.3e}");
    assert!(worst <= 1e-4, "relative error {worst:e} > 1e-4");
}

#[test]
fn tract_on_exported_onnx_equals_burn_tiny() {
    check(ModelConfig::tiny(7, 32, 2048));
}

#[test]
fn tract_on_exported_onnx_equals_burn_two_blocks_per_stage() {
    let mut c = ModelConfig::tiny(13, 24, 4096);
    c.tf_widths = vec![4, 6, 8];
    c.tf_blocks = 2;
    c.spec_kernels = vec![64, 8, 4];
    c.spec_strides = vec![16, 4, 2];
    check(c);
}

#[test]
fn tract_on_exported_onnx_equals_burn_unblocked_stem() {
    let mut c = ModelConfig::tiny(9, 30, 2048);
    c.tf_widths = vec![STEM_BLOCK_BELOW, 8];
    check(c);
}
