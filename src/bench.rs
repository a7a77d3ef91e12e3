//! Measurement helpers shared by `sonitor-bench` (src/bin/sonitor-bench) and the criterion kernels
//! (benches/kernels.rs): a deterministic test signal, percentiles, and the single-core matrix-multiply rate that
//! gives the floor time of a model (its FLOPs per window over that rate); and the loopback mosquitto that
//! `sonitor-bench latency` and the integration tests start. Not used by the daemon itself.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use realfft::RealFftPlanner;
use sonitor_core::power_spectrum::PowerSpectrum;

use tract_onnx::pb;
use tract_onnx::prelude::*;

/// `n` samples of a deterministic noisy tone at `sample_rate`: the cost of features and inference does not depend
/// on the values, and the same input every run keeps runs comparable.
pub fn test_signal(n: usize, sample_rate: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let t = i as f32 / sample_rate as f32;
            0.3 * (std::f32::consts::TAU * 440.0 * t).sin()
                + 0.01 * ((i * 7919 % 101) as f32 - 50.0) / 50.0
        })
        .collect()
}

/// The FFTs of one analysis window alone, planned once and run as `FeatureExtractor` runs them: the power
/// spectrum ([`PowerSpectrum`]: the FFT and the squared magnitudes) of each `n_fft` STFT frame, Hann-windowed
/// while it is packed (the log-mel view), and of the whole window (the spectrum view). Timing it beside the extractor gives the FFTs' share of the
/// features.
pub struct FftOnly {
    frame: PowerSpectrum,
    whole: PowerSpectrum,
    n_fft: usize,
    window: usize,
    frames: usize,
    hop: usize,
    hann: Vec<f32>,
    frame_power: Vec<f32>,
    whole_power: Vec<f32>,
}

impl FftOnly {
    pub fn new(n_fft: usize, hop: usize, window: usize) -> Self {
        let mut p = RealFftPlanner::<f32>::new();
        Self {
            frame: PowerSpectrum::new(n_fft, &mut p),
            whole: PowerSpectrum::new(window, &mut p),
            n_fft,
            window,
            frames: 1 + (window - n_fft) / hop,
            hop,
            hann: sonitor_core::features::periodic_hann(n_fft),
            frame_power: vec![0.0; n_fft / 2 + 1],
            whole_power: vec![0.0; window / 2 + 1],
        }
    }

    /// `x` must hold the whole window.
    pub fn run(&mut self, x: &[f32]) {
        for f in 0..self.frames {
            let start = f * self.hop;
            self.frame.process(
                &x[start..start + self.n_fft],
                Some(&self.hann),
                &mut self.frame_power,
            );
        }
        self.whole
            .process(&x[..self.window], None, &mut self.whole_power);
    }
}

/// The `q` quantile of sorted values (nearest rank).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

/// Median of values in any order.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

fn float_tensor(name: &str) -> pb::ValueInfoProto {
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: pb::tensor_proto::DataType::Float as i32,
                shape: None,
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A tract plan of one ONNX `MatMul` `[m, k] × [k, n]` (the right side a constant, as weights are), optimised
/// like the daemon's models: the kernel tract uses for the dense and convolution layers of the embedding network.
pub fn sgemm_plan(m: usize, k: usize, n: usize) -> TractResult<Arc<TypedRunnableModel>> {
    let b: Vec<f32> = (0..k * n).map(|i| ((i % 17) as f32 - 8.0) / 8.0).collect();
    let graph = pb::GraphProto {
        name: "sgemm".into(),
        node: vec![pb::NodeProto {
            name: "mm".into(),
            op_type: "MatMul".into(),
            input: vec!["a".into(), "b".into()],
            output: vec!["c".into()],
            ..Default::default()
        }],
        initializer: vec![pb::TensorProto {
            name: "b".into(),
            dims: vec![k as i64, n as i64],
            data_type: pb::tensor_proto::DataType::Float as i32,
            raw_data: b.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        }],
        // Float tensors of unknown shape: the input's shape is given to tract below, as the daemon does.
        input: vec![float_tensor("a")],
        output: vec![float_tensor("c")],
        ..Default::default()
    };
    let proto = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(graph),
        ..Default::default()
    };
    tract_onnx::onnx()
        .model_for_proto_model(&proto)?
        .with_input_fact(0, f32::fact([m, k]).into())?
        .into_optimized()?
        .into_runnable()
}

/// The side of the square sgemm whose rate is the floor's denominator: large enough that the kernel, not the
/// call, is timed.
pub const FLOOR_SGEMM_SIZE: usize = 512;

/// One `[m, k] × [k, n]` product through tract, timed a run at a time: the floor's denominator.
pub struct Sgemm {
    plan: Arc<TypedRunnableModel>,
    a: Tensor,
    flops: f64,
}

impl Sgemm {
    /// The plan and its input, after a warm-up of three products.
    pub fn new(m: usize, k: usize, n: usize) -> TractResult<Self> {
        let plan = sgemm_plan(m, k, n)?;
        let a = Tensor::from_shape(&[m, k], &test_signal(m * k, 16_000))?;
        let s = Self {
            plan,
            a,
            flops: 2.0 * (m * k * n) as f64,
        };
        for _ in 0..3 {
            s.rate()?;
        }
        Ok(s)
    }

    /// The rate of one product (FLOP/s, a multiply-add counted as 2); only the product is timed.
    pub fn rate(&self) -> TractResult<f64> {
        let input = tvec!(self.a.clone().into());
        let t0 = Instant::now();
        self.plan.run(input)?;
        Ok(self.flops / t0.elapsed().as_secs_f64())
    }
}

/// The single-thread rate of tract's matrix multiply on this CPU (FLOP/s, a multiply-add counted as 2), the median
/// of `runs` products `[m, k] × [k, n]` after a warm-up.
pub fn sgemm_flops_per_second(m: usize, k: usize, n: usize, runs: usize) -> TractResult<f64> {
    let s = Sgemm::new(m, k, n)?;
    let rates = (0..runs.max(1))
        .map(|_| s.rate())
        .collect::<TractResult<Vec<f64>>>()?;
    Ok(median(&rates))
}

/// Starts `mosquitto -c conf` (a configuration that listens on loopback `port`) and waits up to 10 s until it
/// accepts connections; a broker that does not come up is killed and reported.
pub fn start_mosquitto(conf: &Path, port: u16) -> anyhow::Result<Child> {
    let mut child = Command::new("mosquitto")
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("starting mosquitto (Debian package `mosquitto`): {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("mosquitto did not start on port {port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(child)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sgemm_plan_multiplies() {
        let plan = sgemm_plan(2, 3, 4).unwrap();
        let a = Tensor::from_shape(&[2, 3], &[1.0f32, 0.0, 0.0, 0.0, 1.0, 1.0]).unwrap();
        let out = plan.run(tvec!(a.into())).unwrap();
        let c = out[0].to_plain_array_view::<f32>().unwrap();
        let b: Vec<f32> = (0..12).map(|i| ((i % 17) as f32 - 8.0) / 8.0).collect();
        // Row 0 = b's row 0; row 1 = b's rows 1 + 2.
        for j in 0..4 {
            assert_eq!(c[[0, j]], b[j]);
            assert_eq!(c[[1, j]], b[4 + j] + b[8 + j]);
        }
        assert!(sgemm_flops_per_second(16, 16, 16, 3).unwrap() > 0.0);
    }

    #[test]
    fn percentiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.99), 5.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
