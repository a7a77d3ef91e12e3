//! The seed paper's two-branch embedding network (Wilkinghoff & Kurth), in burn.
//!
//! - **Time–frequency branch** on the mean-subtracted log-mel `[batch, frames, n_mels]`: a BatchNorm per mel bin,
//!   a ResNet-like 2-D CNN (stem conv 7×7/2 + max-pool 3×3/2, then one stage per entry of
//!   [`ModelConfig::tf_widths`], each of [`ModelConfig::tf_blocks`] residual blocks, stride 2 from the second
//!   stage on), max over time, flatten, BatchNorm, dense to [`ModelConfig::tf_embedding`] without bias.
//! - **Spectrum branch** on `|DFT|` of the whole window `[batch, window/2]`: strided 1-D convs
//!   ([`ModelConfig::spec_kernels`] / [`ModelConfig::spec_strides`], [`ModelConfig::spec_filters`] filters,
//!   each conv + BatchNorm + ReLU, no padding), flatten, [`ModelConfig::spec_dense_blocks`] blocks of
//!   dense + BatchNorm + ReLU, dense to [`ModelConfig::spec_embedding`] without bias.
//! - The embedding is the concatenation of both branch embeddings.
//!
//! Every convolution and dense layer that is followed by a BatchNorm has no bias (the BatchNorm's shift is the
//! bias); the exporter folds each BatchNorm into the layer before it.

use burn::module::Module;
use burn::nn::conv::{Conv1d, Conv1dConfig, Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{
    BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig1d, PaddingConfig2d,
};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// Architecture of the network; recorded in the bundle's provenance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Frames of the log-mel input (`FeatureParams::log_mel_shape()[0]`).
    pub frames: usize,
    /// Mel bins of the log-mel input.
    pub n_mels: usize,
    /// Length of the spectrum input (`FeatureParams::spectrum_len()`).
    pub spectrum_len: usize,
    /// Output channels of the stem and of each ResNet stage (paper: 16, 32, 64, 128).
    pub tf_widths: Vec<usize>,
    /// Residual blocks per stage.
    pub tf_blocks: usize,
    /// Embedding size of the time–frequency branch (paper: 128).
    pub tf_embedding: usize,
    /// Filters of each strided 1-D conv of the spectrum branch (paper: 128).
    pub spec_filters: usize,
    /// Kernel sizes of the strided convs (paper, 10 s clips: 256, 64, 16).
    pub spec_kernels: Vec<usize>,
    /// Strides of the strided convs (paper, 10 s clips: 64, 32, 4).
    pub spec_strides: Vec<usize>,
    /// Width of the dense blocks of the spectrum branch (paper: 128).
    pub spec_dense: usize,
    /// Number of dense + BatchNorm + ReLU blocks (paper: 4).
    pub spec_dense_blocks: usize,
    /// Embedding size of the spectrum branch (paper: 128).
    pub spec_embedding: usize,
}

impl ModelConfig {
    /// The paper's network for the given input shapes. The spectrum branch's strides are adapted to the
    /// input length: the paper's 64·32·4 = 8192 total stride turns its 80 000 spectrum bins into ~10 steps;
    /// for the default 2-s window (16 000 bins) 32·8·4 = 1024 keeps ~10 steps with the same kernels.
    pub fn paper(frames: usize, n_mels: usize, spectrum_len: usize) -> Self {
        let (kernels, strides) = if spectrum_len >= 60_000 {
            (vec![256, 64, 16], vec![64, 32, 4])
        } else if spectrum_len >= 12_000 {
            (vec![256, 64, 16], vec![32, 8, 4])
        } else {
            // Short windows (tests, 0.5-s windows): keep ~10 output steps.
            let k1 = (spectrum_len / 16).clamp(8, 256);
            (vec![k1, 8, 4], vec![(k1 / 4).max(1), 4, 2])
        };
        Self {
            frames,
            n_mels,
            spectrum_len,
            tf_widths: vec![16, 32, 64, 128],
            tf_blocks: 1,
            tf_embedding: 128,
            spec_filters: 128,
            spec_kernels: kernels,
            spec_strides: strides,
            spec_dense: 128,
            spec_dense_blocks: 4,
            spec_embedding: 128,
        }
    }

    /// A tiny network for tests.
    pub fn tiny(frames: usize, n_mels: usize, spectrum_len: usize) -> Self {
        let k1 = (spectrum_len / 16).clamp(4, 64);
        Self {
            tf_widths: vec![4, 8],
            tf_blocks: 1,
            tf_embedding: 8,
            spec_filters: 8,
            spec_kernels: vec![k1, 4],
            spec_strides: vec![(k1 / 2).max(1), 2],
            spec_dense: 16,
            spec_dense_blocks: 2,
            spec_embedding: 8,
            ..Self::paper(frames, n_mels, spectrum_len)
        }
    }

    pub fn embedding_dim(&self) -> usize {
        self.tf_embedding + self.spec_embedding
    }

    /// Spatial size after the stem (conv 7/2 pad 3, then max-pool 3/2 pad 1) and the stages.
    pub fn tf_output_hw(&self) -> (usize, usize) {
        let conv = |n: usize, k: usize, s: usize, p: usize| (n + 2 * p - k) / s + 1;
        let mut h = conv(conv(self.frames, 7, 2, 3), 3, 2, 1);
        let mut w = conv(conv(self.n_mels, 7, 2, 3), 3, 2, 1);
        for _ in 1..self.tf_widths.len() {
            h = conv(h, 3, 2, 1);
            w = conv(w, 3, 2, 1);
        }
        (h, w)
    }

    /// Length of the spectrum after each strided conv.
    pub fn spec_lengths(&self) -> Vec<usize> {
        let mut n = self.spectrum_len;
        self.spec_kernels
            .iter()
            .zip(&self.spec_strides)
            .map(|(&k, &s)| {
                n = if n >= k { (n - k) / s + 1 } else { 0 };
                n
            })
            .collect()
    }

    /// Checks that the shapes work out; errors name the offending values.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.frames >= 1 && self.n_mels >= 1 && self.spectrum_len >= 1,
            "model input shapes must be positive: frames {}, n_mels {}, spectrum {}",
            self.frames,
            self.n_mels,
            self.spectrum_len
        );
        anyhow::ensure!(!self.tf_widths.is_empty(), "tf_widths is empty");
        anyhow::ensure!(
            self.tf_widths.iter().all(|&w| w > 0) && self.tf_blocks >= 1,
            "tf_widths {:?} and tf_blocks {} must be positive",
            self.tf_widths,
            self.tf_blocks
        );
        anyhow::ensure!(
            !self.spec_kernels.is_empty() && self.spec_kernels.len() == self.spec_strides.len(),
            "spec_kernels {:?} and spec_strides {:?} must be non-empty and of equal length",
            self.spec_kernels,
            self.spec_strides
        );
        anyhow::ensure!(
            self.spec_strides.iter().all(|&s| s > 0) && self.spec_kernels.iter().all(|&k| k > 0),
            "spectrum kernels {:?} and strides {:?} must be positive",
            self.spec_kernels,
            self.spec_strides
        );
        let lens = self.spec_lengths();
        anyhow::ensure!(
            lens.iter().all(|&n| n > 0),
            "spectrum of {} bins is too short for kernels {:?} / strides {:?} (lengths {:?})",
            self.spectrum_len,
            self.spec_kernels,
            self.spec_strides,
            lens
        );
        anyhow::ensure!(
            self.tf_embedding > 0
                && self.spec_embedding > 0
                && self.spec_filters > 0
                && self.spec_dense > 0,
            "embedding sizes, spec_filters and spec_dense must be positive"
        );
        Ok(())
    }

    /// Multiply–accumulate operations of one forward pass of one window (convs and dense layers; BatchNorm,
    /// ReLU and pooling are negligible). FLOPs ≈ 2 × MACs.
    pub fn macs_per_window(&self) -> u64 {
        let conv = |n: usize, k: usize, s: usize, p: usize| (n + 2 * p - k) / s + 1;
        let mut macs: u64 = 0;
        let (mut h, mut w) = (conv(self.frames, 7, 2, 3), conv(self.n_mels, 7, 2, 3));
        macs += (h * w * self.tf_widths[0] * 49) as u64;
        h = conv(h, 3, 2, 1);
        w = conv(w, 3, 2, 1);
        let mut c_in = self.tf_widths[0];
        for (i, &c) in self.tf_widths.iter().enumerate() {
            for b in 0..self.tf_blocks {
                let stride = if i > 0 && b == 0 { 2 } else { 1 };
                let (h2, w2) = (conv(h, 3, stride, 1), conv(w, 3, stride, 1));
                macs += (h2 * w2 * c * c_in * 9 + h2 * w2 * c * c * 9) as u64;
                if c_in != c || stride != 1 {
                    macs += (h2 * w2 * c * c_in) as u64;
                }
                h = h2;
                w = w2;
                c_in = c;
            }
        }
        let (_, wo) = self.tf_output_hw();
        macs += (c_in * wo * self.tf_embedding) as u64;
        let mut ch = 1;
        for (&k, &n) in self.spec_kernels.iter().zip(&self.spec_lengths()) {
            macs += (n * self.spec_filters * ch * k) as u64;
            ch = self.spec_filters;
        }
        let mut d = self.spec_filters * self.spec_lengths().last().copied().unwrap_or(0);
        for _ in 0..self.spec_dense_blocks {
            macs += (d * self.spec_dense) as u64;
            d = self.spec_dense;
        }
        macs += (d * self.spec_embedding) as u64;
        macs
    }

    /// Builds the network on a device (parameters initialised from the device's RNG: seed it first).
    pub fn init(&self, device: &Device) -> anyhow::Result<Model> {
        self.validate()?;
        let bn = |n: usize| BatchNormConfig::new(n).init(device);
        let conv2 = |c_in: usize, c_out: usize, k: usize, s: usize, p: usize| {
            Conv2dConfig::new([c_in, c_out], [k, k])
                .with_stride([s, s])
                .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
                .with_bias(false)
                .init(device)
        };
        let w0 = self.tf_widths[0];
        let mut blocks = Vec::new();
        let mut c_in = w0;
        for (i, &c) in self.tf_widths.iter().enumerate() {
            for b in 0..self.tf_blocks {
                let stride = if i > 0 && b == 0 { 2 } else { 1 };
                let shortcut = (c_in != c || stride != 1).then(|| Shortcut {
                    conv: conv2(c_in, c, 1, stride, 0),
                    bn: bn(c),
                });
                blocks.push(ResBlock {
                    conv1: conv2(c_in, c, 3, stride, 1),
                    bn1: bn(c),
                    conv2: conv2(c, c, 3, 1, 1),
                    bn2: bn(c),
                    shortcut,
                });
                c_in = c;
            }
        }
        let (_, wo) = self.tf_output_hw();
        let mut spec_convs = Vec::new();
        let mut spec_bns = Vec::new();
        let mut ch = 1;
        for (&k, &s) in self.spec_kernels.iter().zip(&self.spec_strides) {
            spec_convs.push(
                Conv1dConfig::new(ch, self.spec_filters, k)
                    .with_stride(s)
                    .with_padding(PaddingConfig1d::Valid)
                    .with_bias(false)
                    .init(device),
            );
            spec_bns.push(bn(self.spec_filters));
            ch = self.spec_filters;
        }
        let mut d = self.spec_filters * self.spec_lengths().last().copied().unwrap_or(0);
        let mut spec_dense = Vec::new();
        let mut spec_dense_bns = Vec::new();
        for _ in 0..self.spec_dense_blocks {
            spec_dense.push(
                LinearConfig::new(d, self.spec_dense)
                    .with_bias(false)
                    .init(device),
            );
            spec_dense_bns.push(bn(self.spec_dense));
            d = self.spec_dense;
        }
        Ok(Model {
            mel_bn: bn(self.n_mels),
            stem: conv2(1, w0, 7, 2, 3),
            stem_bn: bn(w0),
            stem_pool: MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(),
            blocks,
            tf_flat_bn: bn(c_in * wo),
            tf_emb: LinearConfig::new(c_in * wo, self.tf_embedding)
                .with_bias(false)
                .init(device),
            spec_convs,
            spec_bns,
            spec_dense,
            spec_dense_bns,
            spec_emb: LinearConfig::new(d, self.spec_embedding)
                .with_bias(false)
                .init(device),
        })
    }
}

/// 1×1 strided projection of a residual block's input.
#[derive(Module, Debug)]
pub struct Shortcut {
    pub conv: Conv2d,
    pub bn: BatchNorm,
}

/// `relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`.
#[derive(Module, Debug)]
pub struct ResBlock {
    pub conv1: Conv2d,
    pub bn1: BatchNorm,
    pub conv2: Conv2d,
    pub bn2: BatchNorm,
    pub shortcut: Option<Shortcut>,
}

impl ResBlock {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = relu(self.bn1.forward(self.conv1.forward(x.clone())));
        let y = self.bn2.forward(self.conv2.forward(y));
        let s = match &self.shortcut {
            Some(sc) => sc.bn.forward(sc.conv.forward(x)),
            None => x,
        };
        relu(y + s)
    }
}

/// The network. Fields are public so that the exporter can read the weights.
#[derive(Module, Debug)]
pub struct Model {
    pub mel_bn: BatchNorm,
    pub stem: Conv2d,
    pub stem_bn: BatchNorm,
    pub stem_pool: MaxPool2d,
    pub blocks: Vec<ResBlock>,
    pub tf_flat_bn: BatchNorm,
    pub tf_emb: Linear,
    pub spec_convs: Vec<Conv1d>,
    pub spec_bns: Vec<BatchNorm>,
    pub spec_dense: Vec<Linear>,
    pub spec_dense_bns: Vec<BatchNorm>,
    pub spec_emb: Linear,
}

impl Model {
    /// `log_mel`: `[batch, frames, n_mels]`; `spectrum`: `[batch, spectrum_len]` → embedding `[batch, dim]`
    /// (not normalised).
    pub fn forward(&self, log_mel: Tensor<3>, spectrum: Tensor<2>) -> Tensor<2> {
        Tensor::cat(
            vec![self.forward_tf(log_mel), self.forward_spec(spectrum)],
            1,
        )
    }

    fn forward_tf(&self, log_mel: Tensor<3>) -> Tensor<2> {
        // BatchNorm per mel bin: channels must be dim 1.
        let x = self.mel_bn.forward(log_mel.swap_dims(1, 2)).swap_dims(1, 2);
        let x: Tensor<4> = x.unsqueeze_dim(1);
        let mut x = self
            .stem_pool
            .forward(relu(self.stem_bn.forward(self.stem.forward(x))));
        for b in &self.blocks {
            x = b.forward(x);
        }
        // Max over time (dim 2), flatten channels × mel.
        let [batch, c, _, w] = x.dims();
        let x = x.max_dim(2).reshape([batch, c * w]);
        self.tf_emb.forward(self.tf_flat_bn.forward(x))
    }

    fn forward_spec(&self, spectrum: Tensor<2>) -> Tensor<2> {
        let mut x: Tensor<3> = spectrum.unsqueeze_dim(1);
        for (conv, bn) in self.spec_convs.iter().zip(&self.spec_bns) {
            x = relu(bn.forward(conv.forward(x)));
        }
        let mut x: Tensor<2> = x.flatten(1, 2);
        for (dense, bn) in self.spec_dense.iter().zip(&self.spec_dense_bns) {
            x = relu(bn.forward(dense.forward(x)));
        }
        self.spec_emb.forward(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_shapes_and_cost() {
        let c = ModelConfig::paper(61, 128, 16_000);
        c.validate().unwrap();
        assert_eq!(c.spec_lengths(), vec![493, 54, 10]);
        assert_eq!(c.tf_output_hw(), (2, 4));
        assert_eq!(c.embedding_dim(), 256);
        assert!(c.macs_per_window() > 1_000_000);
    }

    #[test]
    fn too_short_spectrum_is_refused() {
        let mut c = ModelConfig::paper(61, 128, 16_000);
        c.spectrum_len = 100;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("too short"), "{e}");
    }

    #[test]
    fn forward_shapes() {
        let c = ModelConfig::tiny(15, 16, 2000);
        let device = Device::flex();
        let m = c.init(&device).unwrap();
        let lm = Tensor::<3>::zeros([3, 15, 16], &device);
        let sp = Tensor::<2>::ones([3, 2000], &device);
        assert_eq!(m.forward(lm, sp).dims(), [3, c.embedding_dim()]);
    }
}
