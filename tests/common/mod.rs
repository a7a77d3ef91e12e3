//! Shared helpers of the daemon's integration tests: a small but real model bundle (an ONNX graph built here
//! with tract's protobuf types, centroids computed through the daemon's own feature + tract path), test audio
//! (a MIMII pump with a gross anomaly in the middle), a mosquitto broker on a free loopback port, an MQTT
//! recorder, and a daemon process.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message;
use sonitor_core::bundle::{
    Bundle, FeatureView, InputSpec, Manifest, Provenance, SectionModel, TensorSpec, Threshold,
    FORMAT_VERSION,
};
use sonitor_core::features::{FeatureExtractor, FeatureParams};
use tract_onnx::pb;

pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Small windows keep the real-time tests short: 0.5 s windows every 0.25 s.
pub fn test_features() -> FeatureParams {
    FeatureParams {
        window_samples: 8000,
        window_hop_samples: 4000,
        n_mels: 32,
        ..FeatureParams::default()
    }
}

const POOLS: usize = 40;
const DIM: usize = 24;

fn tensor(name: &str, dims: &[i64], data: &[f32]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: 1,
        float_data: data.to_vec(),
        ..Default::default()
    }
}

fn tensor_i64(name: &str, data: &[i64]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: vec![data.len() as i64],
        data_type: 7,
        int64_data: data.to_vec(),
        ..Default::default()
    }
}

fn value_info(name: &str, dims: &[i64]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: 1,
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| Dimension {
                            value: Some(Value::DimValue(d)),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn node(
    op: &str,
    inputs: &[&str],
    output: &str,
    attrs: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        name: output.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute: attrs,
        ..Default::default()
    }
}

/// An ONNX attribute of integers.
pub fn ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: 7,
        ints: v.to_vec(),
        ..Default::default()
    }
}

/// An ONNX attribute of one integer.
pub fn int(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: 2,
        i: v,
        ..Default::default()
    }
}

/// The test network: per-mel-bin log variance over time of the log-mel view, and the log of the spectrum
/// averaged in `POOLS` bands, concatenated, standardised (`(x - center) * inv_std`), followed by a constant
/// `bias` value, then a fixed random projection to `dim` values. With the bias, normal windows all point close
/// to one direction and a deviation of d standard units costs about d²/(2·bias²) in cosine distance.
pub fn graph(
    f: &FeatureParams,
    center: &[f32],
    inv_std: &[f32],
    bias: f32,
    w: &[f32],
    dim: usize,
) -> Vec<u8> {
    let [frames, n_mels] = f.log_mel_shape();
    let s = f.spectrum_len();
    let k = n_mels + POOLS;
    assert_eq!(center.len(), k);
    assert_eq!(inv_std.len(), k);
    assert_eq!(w.len(), (k + 1) * dim);
    let nodes = vec![
        node("Mul", &["log_mel", "log_mel"], "sq", vec![]),
        node(
            "ReduceMean",
            &["sq"],
            "var",
            vec![ints("axes", &[1]), int("keepdims", 0)],
        ),
        node("Add", &["var", "eps"], "var_eps", vec![]),
        node("Log", &["var_eps"], "log_var", vec![]),
        node("Reshape", &["spectrum", "pool_shape"], "pooled_in", vec![]),
        node(
            "ReduceMean",
            &["pooled_in"],
            "pooled",
            vec![ints("axes", &[2]), int("keepdims", 0)],
        ),
        node("Add", &["pooled", "eps"], "pooled_eps", vec![]),
        node("Log", &["pooled_eps"], "log_pooled", vec![]),
        node(
            "Concat",
            &["log_var", "log_pooled"],
            "stats",
            vec![int("axis", 1)],
        ),
        node("Sub", &["stats", "center"], "centred", vec![]),
        node("Mul", &["centred", "inv_std"], "z", vec![]),
        node("Concat", &["z", "bias"], "zb", vec![int("axis", 1)]),
        node("MatMul", &["zb", "w"], "embedding", vec![]),
    ];
    let model = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        producer_name: "sonitor-tests".into(),
        graph: Some(pb::GraphProto {
            name: "test-embedder".into(),
            node: nodes,
            initializer: vec![
                tensor("eps", &[1], &[1e-3]),
                tensor_i64("pool_shape", &[1, POOLS as i64, (s / POOLS) as i64]),
                tensor("center", &[k as i64], center),
                tensor("inv_std", &[k as i64], inv_std),
                tensor("bias", &[1, 1], &[bias]),
                tensor("w", &[k as i64 + 1, dim as i64], w),
            ],
            input: vec![
                value_info("log_mel", &[1, frames as i64, n_mels as i64]),
                value_info("spectrum", &[1, s as i64]),
            ],
            output: vec![value_info("embedding", &[1, dim as i64])],
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(s % POOLS, 0);
    model.encode_to_vec()
}

fn manifest(f: &FeatureParams, dim: usize, centroids: Vec<Vec<f32>>, threshold: f64) -> Manifest {
    let [frames, n_mels] = f.log_mel_shape();
    Manifest {
        format_version: FORMAT_VERSION,
        model_id: "test-randproj".into(),
        inputs: vec![
            InputSpec {
                name: "log_mel".into(),
                view: FeatureView::LogMel,
                shape: vec![1, frames, n_mels],
            },
            InputSpec {
                name: "spectrum".into(),
                view: FeatureView::Spectrum,
                shape: vec![1, f.spectrum_len()],
            },
        ],
        features: f.clone(),
        output: TensorSpec {
            name: "embedding".into(),
            shape: vec![1, dim],
        },
        embedding_dim: dim,
        classes: vec!["pump/section_00".into()],
        sections: vec![SectionModel {
            machine_type: "pump".into(),
            section: 0,
            n_source_centroids: centroids.len(),
            n_target_centroids: 0,
            centroids,
            threshold: Threshold {
                value: threshold,
                method: "test: 1.5 × max normal score".into(),
                quantile: 1.0,
                gamma_shape: None,
                gamma_scale: None,
            },
            baseline: None,
        }],
        clip_pooling: "mean".into(),
        onnx_file: "model.onnx".into(),
        onnx_sha256: String::new(),
        provenance: Provenance {
            tool: "sonitor tests".into(),
            ..Default::default()
        },
    }
}

/// Deterministic pseudo-random numbers in [-1, 1).
fn lcg(seed: &mut u64) -> f32 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

/// Embeddings of every window (hop = window_hop / 2) of `audio`, through the daemon's own code.
pub fn embeddings(bundle: &Bundle, audio: &[f32]) -> Vec<Vec<f32>> {
    let f = &bundle.manifest.features;
    let mut emb = sonitor::embed::Embedder::load(bundle).unwrap();
    let mut fx = FeatureExtractor::new(f.clone()).unwrap();
    let mut feats = fx.new_output();
    let mut out = Vec::new();
    let mut v = Vec::new();
    let hop = f.window_hop_samples / 2;
    let mut start = 0;
    while start + f.window_samples <= audio.len() {
        fx.extract_into(&audio[start..start + f.window_samples], &mut feats)
            .unwrap();
        emb.embed(&feats, &mut v).unwrap();
        out.push(v.clone());
        start += hop;
    }
    out
}

pub struct TestBundle {
    pub dir: PathBuf,
    pub threshold: f64,
    pub normal_max: f64,
    pub anomaly_min: f64,
}

/// Builds the bundle from the normal audio: centres the statistics on their normal mean, projects, uses the
/// normal embeddings as centroids, and sets the threshold at 1.5 × the largest normal score seen with shifted
/// windows. Measures how far the anomaly separates ([`separating_bundle`] checks that it does).
fn make_bundle(dir: &Path, normal: &[f32], anomalous: &[f32]) -> TestBundle {
    let f = test_features();
    let k = f.n_mels + POOLS;
    let unit = |i: usize, d: usize| -> Vec<f32> {
        (0..d).map(|j| if j == i { 1.0 } else { 0.0 }).collect()
    };
    // Pass 1: an identity projection gives the raw statistics; their normal mean and spread standardise them.
    let mut ident = vec![0.0f32; (k + 1) * (k + 1)];
    for i in 0..=k {
        ident[i * (k + 1) + i] = 1.0;
    }
    let tmp = dir.join("pass1");
    let b1 = Bundle::write(
        &tmp,
        &manifest(&f, k + 1, vec![unit(0, k + 1)], 0.5),
        &graph(&f, &vec![0.0; k], &vec![1.0; k], 0.0, &ident, k + 1),
    )
    .unwrap();
    let stats = embeddings(&b1, normal);
    let n = stats.len() as f64;
    let mean: Vec<f64> = (0..k)
        .map(|j| stats.iter().map(|s| s[j] as f64).sum::<f64>() / n)
        .collect();
    let inv_std: Vec<f32> = (0..k)
        .map(|j| {
            let var = stats
                .iter()
                .map(|s| (s[j] as f64 - mean[j]).powi(2))
                .sum::<f64>()
                / n;
            (1.0 / var.sqrt().max(1e-3)) as f32
        })
        .collect();
    let center: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
    let _ = std::fs::remove_dir_all(&tmp);
    // Pass 2: random projection with a bias of 3·sqrt(k).
    let mut seed = 7u64;
    let w: Vec<f32> = (0..(k + 1) * DIM).map(|_| lcg(&mut seed)).collect();
    let onnx = graph(&f, &center, &inv_std, 3.0 * (k as f32).sqrt(), &w, DIM);
    let tmp2 = dir.join("pass2");
    let b2 = Bundle::write(&tmp2, &manifest(&f, DIM, vec![unit(0, DIM)], 0.5), &onnx).unwrap();
    let all = embeddings(&b2, normal);
    // Every 4th normal window is a centroid (at most 32); the threshold comes from all normal windows.
    let mut centroids: Vec<Vec<f32>> = all
        .iter()
        .step_by(4)
        .take(32)
        .map(|e| {
            let mut c = e.clone();
            sonitor_core::score::normalize(&mut c);
            c
        })
        .collect();
    centroids.dedup();
    let normal_max = all
        .iter()
        .map(|e| sonitor_core::score::min_cosine_distance(e, &centroids) as f64)
        .fold(0.0, f64::max);
    let anomaly_min = embeddings(&b2, anomalous)
        .iter()
        .map(|e| sonitor_core::score::min_cosine_distance(e, &centroids) as f64)
        .fold(f64::INFINITY, f64::min);
    let threshold = (normal_max * 1.5).max(1e-3);
    let _ = std::fs::remove_dir_all(&tmp2);
    let out = dir.join("bundle");
    Bundle::write(&out, &manifest(&f, DIM, centroids, threshold), &onnx).unwrap();
    TestBundle {
        dir: out,
        threshold,
        normal_max,
        anomaly_min,
    }
}

/// The MIMII pump clip (16 kHz mono).
pub fn pump() -> Vec<f32> {
    let p = workspace().join("tests/fixtures/mimii/pump_normal.wav");
    sonitor_core::audio::read_wav(&p, sonitor_core::audio::ChannelSelect::Mix)
        .unwrap()
        .1
}

/// A gross anomaly on top of `x`: a pulsing 1.2 kHz whine and sharp impacts.
pub fn make_anomalous(x: &[f32]) -> Vec<f32> {
    let mut seed = 99u64;
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let t = i as f32 / 16_000.0;
            let gate = if (t * 10.0) as i64 % 2 == 0 { 1.0 } else { 0.2 };
            let whine = 0.3 * gate * (2.0 * std::f32::consts::PI * 1200.0 * t).sin();
            let impact = if i % 1600 < 40 {
                0.6 * lcg(&mut seed)
            } else {
                0.0
            };
            (v + whine + impact).clamp(-1.0, 1.0)
        })
        .collect()
}

/// Normal `a` seconds, anomalous `b` seconds, normal `c` seconds, from the pump clip (looped as needed).
pub fn recording(a: f32, b: f32, c: f32) -> Vec<f32> {
    let p = pump();
    let n = |s: f32| (s * 16_000.0) as usize;
    let total = n(a) + n(b) + n(c);
    let base: Vec<f32> = (0..total).map(|i| p[i % p.len()]).collect();
    let mut out = base[..n(a)].to_vec();
    out.extend(make_anomalous(&base[n(a)..n(a) + n(b)]));
    out.extend_from_slice(&base[n(a) + n(b)..]);
    out
}

pub fn write_wav(path: &Path, samples: &[f32]) {
    sonitor_core::audio::write_wav_i16(path, samples, 16_000).unwrap();
}

/// A 16-bit WAV of `channels` interleaved channels: `frame(x)` gives each frame's samples from `x`, one
/// value of `mono`, in [-1, 1].
pub fn write_wav_channels(
    path: &Path,
    sample_rate: u32,
    channels: u16,
    mono: &[f32],
    frame: impl Fn(f32) -> Vec<f32>,
) {
    let spec = hound::WavSpec {
        channels,
        sample_rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for &x in mono {
        for v in frame(x) {
            w.write_sample((v * 32767.0).round().clamp(-32768.0, 32767.0) as i16)
                .unwrap();
        }
    }
    w.finalize().unwrap();
}

/// The standard bundle in `dir`, and `audio` written there as the 16 kHz WAV `name`: what most daemon tests
/// start from.
pub fn bundle_and_wav(dir: &Path, name: &str, audio: &[f32]) -> (TestBundle, PathBuf) {
    let bundle = standard_bundle(dir);
    let wav = dir.join(name);
    write_wav(&wav, audio);
    (bundle, wav)
}

/// The standard test bundle, built once per test process.
pub fn standard_bundle(dir: &Path) -> TestBundle {
    let p = pump();
    separating_bundle(dir, &p, &make_anomalous(&p))
}

/// [`make_bundle`], checked to score every window of `anomalous` above its threshold.
pub fn separating_bundle(dir: &Path, normal: &[f32], anomalous: &[f32]) -> TestBundle {
    let b = make_bundle(dir, normal, anomalous);
    eprintln!(
        "test model: normal max {:.4}, threshold {:.4}, anomaly min {:.4}",
        b.normal_max, b.threshold, b.anomaly_min
    );
    assert!(
        b.anomaly_min > b.threshold,
        "the test model must separate the gross anomaly: normal max {}, threshold {}, anomaly min {}",
        b.normal_max,
        b.threshold,
        b.anomaly_min
    );
    b
}

/// `unshare` ready to run a command in a private mount namespace: as root a plain one, otherwise inside a user
/// namespace where the user is root (which fails where user namespaces are off; callers skip then).
pub fn private_mount_namespace() -> Command {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut c = Command::new("unshare");
    c.arg(if root { "-m" } else { "-rm" });
    c
}

/// Runs `cmd` with its stdout a pipe whose reader is already closed (`… | head` once head has gone): every write
/// to stdout fails with EPIPE.
pub fn output_to_a_gone_reader(cmd: &mut Command) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    cmd.stdout(writer).output().unwrap()
}

/// Whether this build injects the faults of `sonitor::fault` (builds with debug assertions only); says why a test
/// skips itself when it does not.
pub fn faults_injectable() -> bool {
    if !cfg!(debug_assertions) {
        eprintln!(
            "skipped: a build without debug assertions injects no fault (`cargo test --release`)"
        );
    }
    cfg!(debug_assertions)
}

/// A loopback port free now, and not handed out before by this test binary: the port is released at once, and a
/// test running beside this one that asked at the same moment could otherwise be given it too (its broker or
/// metrics then fail to bind, or a scrape reads the other daemon).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A mosquitto broker on a loopback port, with persistence so that queued messages of persistent sessions
/// survive its restart.
pub struct Broker {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// Lines added to the broker's configuration.
    extra: String,
}

impl Broker {
    pub fn start(dir: &Path) -> Broker {
        Self::start_with(dir, "")
    }

    /// A broker with `extra` lines in its configuration (e.g. an `acl_file`).
    pub fn start_with(dir: &Path, extra: &str) -> Broker {
        let port = free_port();
        let mut b = Broker {
            port,
            dir: dir.to_path_buf(),
            child: None,
            extra: extra.to_string(),
        };
        b.restart();
        b
    }

    pub fn restart(&mut self) {
        let conf = self.dir.join("mosquitto.conf");
        std::fs::create_dir_all(&self.dir).unwrap();
        std::fs::write(
            &conf,
            format!(
                "listener {} 127.0.0.1\nuser root\nallow_anonymous true\npersistence true\npersistence_location {}/\nautosave_interval 1\nmax_queued_messages 10000\n{}",
                self.port,
                self.dir.display(),
                self.extra
            ),
        )
        .unwrap();
        let child = sonitor::bench::start_mosquitto(&conf, self.port)
            .unwrap_or_else(|e| panic!("{e:#} (mosquitto must be installed)"));
        self.child = Some(child);
    }

    /// Kills the broker (SIGKILL), as a crash or a power cut would: it publishes no will, and what it had saved
    /// (every second) is what it holds when it starts again.
    pub fn crash(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes the broker (SIGSTOP: the kernel still takes connections, nothing answers them), or thaws it.
    pub fn freeze(&self, frozen: bool) {
        if let Some(c) = &self.child {
            let sig = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    /// Stops the broker gracefully (it saves its persistent sessions).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let _ = c.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A TCP relay on a free loopback port in front of a broker, whose broker → client direction can be held:
/// the client's packets reach the broker, but the broker's answers (PUBACKs) wait in the relay until
/// [`AckHold::release`]. A broker that is reachable and does not acknowledge in time, without the resets a
/// frozen broker would meet (a client that closed its socket before the broker read it).
pub struct AckHold {
    pub port: u16,
    hold: Arc<std::sync::atomic::AtomicBool>,
}

/// A relay on a free loopback port in front of the broker on `broker_port`: what a client sends goes through as it
/// is; what the broker sends goes through `answers(broker, client)`, one thread per connection. Returns the port.
fn relay<F>(broker_port: u16, answers: F) -> u16
where
    F: Fn(std::net::TcpStream, std::net::TcpStream) + Clone + Send + 'static,
{
    use std::io::{Read, Write};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let Ok(broker) = std::net::TcpStream::connect(("127.0.0.1", broker_port)) else {
                continue;
            };
            let (mut c_in, mut b_out) = (client.try_clone().unwrap(), broker.try_clone().unwrap());
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = c_in.read(&mut buf) {
                    if n == 0 || b_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                // The client's end (FIN) after all its bytes, as the broker would have seen it directly.
                let _ = b_out.shutdown(std::net::Shutdown::Write);
            });
            let answers = answers.clone();
            std::thread::spawn(move || {
                let c = client.try_clone().unwrap();
                answers(broker, client);
                let _ = c.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    port
}

impl AckHold {
    pub fn start(broker_port: u16) -> AckHold {
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicBool, Ordering};
        let hold = Arc::new(AtomicBool::new(false));
        let h = hold.clone();
        let port = relay(broker_port, move |mut b_in, mut c_out| {
            b_in.set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            let mut buf = [0u8; 4096];
            loop {
                if h.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                match b_in.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if c_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => break,
                }
            }
        });
        AckHold { port, hold }
    }

    /// From now on the broker's answers wait in the relay.
    pub fn hold(&self) {
        self.hold.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn release(&self) {
        self.hold.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A relay in front of the broker that drops the broker's PUBACKs while told to: a faulty broker that takes the
/// messages, answers pings, and acknowledges nothing (review29).
pub struct PubackDrop {
    pub port: u16,
    drop: Arc<std::sync::atomic::AtomicBool>,
}

impl PubackDrop {
    pub fn start(broker_port: u16) -> PubackDrop {
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicBool, Ordering};
        let drop = Arc::new(AtomicBool::new(false));
        let dr = drop.clone();
        let port = relay(broker_port, move |mut b_in, mut c_out| {
            // Whole MQTT packets: a fixed header byte, the remaining length (1 to 4 bytes), the rest.
            let mut pending: Vec<u8> = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = b_in.read(&mut buf) {
                if n == 0 {
                    return;
                }
                pending.extend_from_slice(&buf[..n]);
                loop {
                    let (mut len, mut shift, mut at) = (0usize, 0, 1);
                    let complete = loop {
                        let Some(&b) = pending.get(at) else {
                            break false;
                        };
                        len |= usize::from(b & 0x7f) << shift;
                        at += 1;
                        if b & 0x80 == 0 {
                            break true;
                        }
                        shift += 7;
                    };
                    if !complete || pending.len() < at + len {
                        break;
                    }
                    let packet: Vec<u8> = pending.drain(..at + len).collect();
                    let puback = packet[0] >> 4 == 4;
                    if !(puback && dr.load(Ordering::SeqCst)) && c_out.write_all(&packet).is_err() {
                        return;
                    }
                }
            }
        });
        PubackDrop { port, drop }
    }

    /// Whether the broker's PUBACKs are dropped from now on.
    pub fn drop_acks(&self, on: bool) {
        self.drop.store(on, std::sync::atomic::Ordering::SeqCst);
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Msg {
    pub topic: String,
    pub payload: String,
    pub retain: bool,
}

/// Records every message under `sonitor/#` with a persistent session (QoS 1), reconnecting on its own.
pub struct Recorder {
    pub msgs: Arc<Mutex<Vec<Msg>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Recorder {
    pub fn start(port: u16, client_id: &str) -> Recorder {
        let mut o = rumqttc::MqttOptions::new(client_id, "127.0.0.1", port);
        // Large enough for an oversized message a test leaves retained.
        o.set_max_packet_size(1 << 20, 1 << 20);
        o.set_clean_session(false);
        o.set_keep_alive(Duration::from_secs(5));
        let (client, mut conn) = rumqttc::Client::new(o, 100);
        let msgs = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (m2, s2) = (msgs.clone(), stop.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut subscribed = false;
            while !s2.load(std::sync::atomic::Ordering::SeqCst) {
                match conn.recv_timeout(Duration::from_millis(200)) {
                    Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack)))) => {
                        eprintln!(
                            "  [recorder] connected, session present: {}",
                            ack.session_present
                        );
                        if !subscribed || !ack.session_present {
                            let _ = client.try_subscribe("sonitor/#", rumqttc::QoS::AtLeastOnce);
                        }
                    }
                    Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)))) => {
                        subscribed = true;
                        let _ = ready_tx.send(());
                    }
                    Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))) => {
                        m2.lock().unwrap().push(Msg {
                            topic: p.topic.clone(),
                            payload: String::from_utf8_lossy(&p.payload).into(),
                            retain: p.retain,
                        });
                    }
                    Ok(Err(e)) => {
                        eprintln!("  [recorder] {e}");
                        std::thread::sleep(Duration::from_millis(200))
                    }
                    _ => {}
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the recorder could not subscribe");
        Recorder { msgs, stop }
    }

    pub fn snapshot(&self) -> Vec<Msg> {
        self.msgs.lock().unwrap().clone()
    }

    /// Waits until `pred` holds for the messages so far; panics with them on timeout.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[Msg]) -> bool,
    ) -> Vec<Msg> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.snapshot();
            if pred(&s) {
                return s;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; messages so far:\n{}",
                    s.iter()
                        .map(|m| format!(
                            "  {} {} {}",
                            m.topic,
                            if m.retain { "(r)" } else { "" },
                            m.payload
                        ))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Payloads on one topic, in arrival order.
pub fn on(msgs: &[Msg], topic: &str) -> Vec<String> {
    msgs.iter()
        .filter(|m| m.topic == topic)
        .map(|m| m.payload.clone())
        .collect()
}

/// A running `sonitor run`, its stderr collected.
pub struct Daemon {
    pub child: Child,
    pub log: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Daemon {
    pub fn start(config: &Path, envs: &[(&str, &str)]) -> Daemon {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sonitor"));
        cmd.arg("run").arg("--config").arg(config);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let l2 = log.clone();
        let err = child.stderr.take().unwrap();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("  [daemon] {line}");
                let mut l = l2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        Daemon {
            child,
            log,
            reader: Some(reader),
        }
    }

    /// Waits for the daemon to exit on its own (e.g. `at_end = "exit"`); returns its exit code and the whole log
    /// (read to the end of its stderr).
    pub fn wait_exit(&mut self, timeout: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not exit within {timeout:?}; log:\n{}",
                self.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        self.read_log_to_end();
        (status.code(), self.log.lock().unwrap().clone())
    }

    /// After the exit: the log reader ends at the end of the daemon's stderr, so [`Daemon::log`] is then whole.
    fn read_log_to_end(&mut self) {
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }

    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.log.lock().unwrap().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "the daemon did not log '{needle}' in {timeout:?}; log:\n{}",
                self.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn sigkill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM (the daemon stops in order; see [`Daemon::wait_exit`]).
    pub fn sigterm(&self) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
    }

    /// Sends SIGTERM and waits for the exit; returns the exit code, with [`Daemon::log`] read to its end.
    pub fn sigterm_and_wait(mut self) -> i32 {
        self.sigterm();
        let code = self.child.wait().unwrap().code().unwrap_or(-1);
        self.read_log_to_end();
        code
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A configuration with no broker that replays `wav` (device `mic`) as fast as the pipeline allows and ends the
/// daemon at the file's end; the alarm messages stay in the outbox.
pub fn offline_config(dir: &Path, wav: &Path, bundle: &Path, extra: &str) -> PathBuf {
    file_config(
        dir,
        wav,
        bundle,
        "realtime = false\nat_end = \"exit\"\n",
        extra,
    )
}

/// Like [`offline_config`], but the file is paced as a sound card delivers audio (real time), for tests whose
/// outcome depends on the order in which the daemon's threads see events.
pub fn paced_config(dir: &Path, wav: &Path, bundle: &Path, extra: &str) -> PathBuf {
    file_config(dir, wav, bundle, PACED_TO_THE_END, extra)
}

/// The device keys of a file replayed in real time that ends the daemon at its end.
pub const PACED_TO_THE_END: &str = "realtime = true\nat_end = \"exit\"\n";

/// The `[[devices]]` entry of device `mic` replaying `wav`, with the device keys `device_keys` (e.g.
/// `realtime = true\nat_end = "loop"\n`).
pub fn file_device(wav: &Path, device_keys: &str) -> String {
    format!(
        "[[devices]]\nname = \"mic\"\nsource = \"file\"\npath = \"{}\"\n{device_keys}",
        wav.display()
    )
}

/// A configuration with no broker whose device `mic` replays `wav` ([`file_device`]).
pub fn file_config(
    dir: &Path,
    wav: &Path,
    bundle: &Path,
    device_keys: &str,
    extra: &str,
) -> PathBuf {
    let cfg = config(dir, &file_device(wav, device_keys), bundle, 1, extra);
    edit(&cfg, |t| t.replace("[mqtt]\n", "[mqtt]\nenabled = false\n"));
    cfg
}

/// Rewrites the text file `path` (a configuration) with `f`, e.g. to set one key a test needs.
pub fn edit(path: &Path, f: impl FnOnce(String) -> String) {
    let text = std::fs::read_to_string(path).unwrap();
    std::fs::write(path, f(text)).unwrap();
}

/// A daemon configuration for one machine on one input section (`[[devices]]` TOML given by the test).
pub fn config(
    dir: &Path,
    device_toml: &str,
    bundle: &Path,
    broker_port: u16,
    extra: &str,
) -> PathBuf {
    let text = format!(
        r#"node_id = "t1"
state_dir = "{state}"
log_level = "info"

{device_toml}

[[machines]]
name = "pump-1"
device = "mic"
channel = 0
bundle = "{bundle}"
section = "pump/section_00"
raise_k = 2
raise_n = 3
clear_m = 3
clear_n = 4

[mqtt]
host = "127.0.0.1"
port = {broker_port}
reconnect_min = "100ms"
reconnect_max = "500ms"
score_interval = "1s"

[metrics]
listen = "127.0.0.1:{metrics}"

[clips]
pre_seconds = 1.0
post_seconds = 1.0
{extra}
"#,
        state = dir.join("state").display(),
        bundle = bundle.display(),
        metrics = free_port(),
    );
    let p = dir.join("sonitor.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// The value of the first line of a Prometheus text `text` that starts with `name` (labels included).
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Asserts that each series of `want` (name and labels, as in [`metric`]) has its value in the metrics `text`.
pub fn assert_metrics(text: &str, want: &[(&str, f64)]) {
    for (series, value) in want {
        assert_eq!(metric(text, series), Some(*value), "{series} in\n{text}");
    }
}

/// Scrapes the daemon running `config` until `ready` holds for its metrics text, and returns that text; panics
/// with the last text after `timeout` (`what` says what was awaited).
pub fn wait_metrics(
    config: &Path,
    timeout: Duration,
    what: &str,
    ready: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let m = scrape(config);
        if ready(&m) {
            return m;
        }
        assert!(Instant::now() < deadline, "{what}; metrics:\n{m}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `GET /metrics` from the daemon running `config` (its `[metrics] listen` address).
pub fn scrape(config: &Path) -> String {
    let cfg = std::fs::read_to_string(config).unwrap();
    let addr = cfg
        .lines()
        .find(|l| l.starts_with("listen = "))
        .unwrap()
        .trim_start_matches("listen = ")
        .trim_matches('"')
        .to_string();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    std::io::Write::write_all(&mut s, b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut s, &mut out).unwrap();
    out
}

/// systemd's notification socket for a daemon under test, with a 0.4 s watchdog: pass [`Notify::envs`] to
/// [`Daemon::start`].
pub struct Notify {
    sock: std::os::unix::net::UnixDatagram,
    path: String,
    /// Everything received so far, one notification a line.
    pub notes: String,
}

impl Notify {
    pub fn bind(dir: &Path) -> Notify {
        let path = dir.join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Notify {
            sock,
            path: path.display().to_string(),
            notes: String::new(),
        }
    }

    /// `NOTIFY_SOCKET` (this socket) and `WATCHDOG_USEC` (0.4 s).
    pub fn envs(&self) -> [(&str, &str); 2] {
        [
            ("NOTIFY_SOCKET", self.path.as_str()),
            ("WATCHDOG_USEC", "400000"),
        ]
    }

    /// Waits up to the socket's 0.2 s timeout for one notification and adds it to [`Notify::notes`].
    fn recv_one(&mut self) {
        let mut buf = [0u8; 512];
        if let Ok(n) = self.sock.recv(&mut buf) {
            self.notes.push_str(&String::from_utf8_lossy(&buf[..n]));
            self.notes.push('\n');
        }
    }

    /// Reads notifications for `d`.
    pub fn collect_for(&mut self, d: Duration) {
        let t0 = Instant::now();
        while t0.elapsed() < d {
            self.recv_one();
        }
    }

    /// Reads (and forgets) the notifications that come from now on, in a thread of its own, until none has come for
    /// 30 s (the daemon gone). The daemon's notifications are blocking sends, as systemd reads them at once: a
    /// socket left unread holds its main loop (reloads, commands, the stop) once the kernel's queue is full
    /// (`net.unix.max_dgram_qlen`: 10 datagrams on this VM).
    pub fn keep_draining(self) {
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            let mut last = Instant::now();
            while last.elapsed() < Duration::from_secs(30) {
                if self.sock.recv(&mut buf).is_ok() {
                    last = Instant::now();
                }
            }
        });
    }

    /// Reads notifications until `READY=1` and `pings` `WATCHDOG=1` have come; panics after `timeout` with what
    /// came instead.
    pub fn wait_ready_and_pings(&mut self, pings: usize, timeout: Duration) {
        let t0 = Instant::now();
        while !(self.notes.contains("READY=1") && self.notes.matches("WATCHDOG=1").count() >= pings)
        {
            assert!(
                t0.elapsed() < timeout,
                "no READY=1 and {pings} watchdog pings from the daemon: {:?}",
                self.notes
            );
            self.recv_one();
        }
    }
}

/// An ALSA configuration (for `ALSA_CONFIG_PATH`) defining the capture PCM `alsa:<name>` through ALSA's `file`
/// plugin (DESIGN.md §5): its audio read from `infile` (raw samples), a copy of what is captured written to `out`
/// (`/dev/null`, or a FIFO), listed by cpal with `description`. No alsa.conf (see tests/capture_alsa_file.rs).
pub fn file_pcm(name: &str, infile: &Path, out: &Path, description: &str) -> String {
    format!(
        "pcm.{name} {{\n type file\n slave.pcm {{ type null }}\n file \"{}\"\n infile \"{}\"\n format \"raw\"\n hint {{ show on description \"{description}\" }}\n}}\n",
        out.display(),
        infile.display()
    )
}
