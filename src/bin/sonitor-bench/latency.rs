//! `sonitor-bench latency`: from the first anomalous sample to the alarm at an MQTT subscriber, through a real
//! broker (mosquitto on a free loopback port). `sonitor run` replays, paced in real time, a recording cut from the
//! bundle's demo: normal sound, then the fully developed fault from one sample on. Its file source logs when it
//! opens; the first anomalous sample is due `onset` seconds later. A subscriber timestamps the retained `alarm`
//! turning `ON`. Runs with the default detector (raise when 3 of the last 5 windows are above the threshold) and
//! with the fastest one (1 of 1), so that the pipeline's own share is visible.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use sonitor::bench::median;
use sonitor_core::bundle::Bundle;

use sonitor::config::toml_path;
use sonitor::demo::Timeline;

use crate::e2e::sonitor_binary;

#[derive(clap::Args)]
pub struct Options {
    #[arg(long, default_value = "models/default")]
    pub bundle: PathBuf,
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Seconds of normal sound before the fault.
    #[arg(long = "onset", default_value_t = 10.0)]
    pub onset_seconds: f64,
    #[arg(long)]
    pub json: bool,
}

pub struct Broker {
    pub port: u16,
    child: Child,
}

impl Broker {
    /// Mosquitto on a free loopback port, with its configuration in `dir`; stopped when dropped.
    pub fn start(dir: &Path) -> anyhow::Result<Broker> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\n"),
        )?;
        let child = sonitor::bench::start_mosquitto(&conf, port)?;
        Ok(Broker { port, child })
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Normal sound for `onset` seconds, then the last 12 s of the demo's fault (fully developed), then 4 s normal.
fn cut_recording(demo: &Path, timeline: &Timeline, out: &Path, onset: f64) -> anyhow::Result<()> {
    let (fault_start, fault_end) = (timeline.fault_start_s, timeline.fault_end_s);
    anyhow::ensure!(
        onset <= fault_start,
        "--onset {onset} s: the demo has only {fault_start} s of normal sound before its fault"
    );
    let mut r = hound::WavReader::open(demo).with_context(|| format!("{}", demo.display()))?;
    let spec = r.spec();
    anyhow::ensure!(spec.channels == 1, "the demo recording must be mono");
    let x: Vec<i16> = r.samples::<i16>().collect::<Result<_, _>>()?;
    let sr = spec.sample_rate as f64;
    let at = |s: f64| ((s * sr) as usize).min(x.len());
    anyhow::ensure!(
        fault_start < fault_end && fault_end <= x.len() as f64 / sr,
        "the demo's timeline (fault {fault_start}–{fault_end} s) does not fit its {:.1} s recording",
        x.len() as f64 / sr
    );
    let fault_from = (fault_end - 12.0).max(fault_start);
    let mut w = hound::WavWriter::create(out, spec)?;
    for range in [
        at(0.0)..at(onset),
        at(fault_from)..at(fault_end),
        at(fault_end + 2.0)..at(fault_end + 6.0),
    ] {
        for &s in &x[range] {
            w.write_sample(s)?;
        }
    }
    w.finalize()?;
    Ok(())
}

/// One replay: seconds from the first anomalous sample to the `ON` at the subscriber.
fn one_run(
    sonitor: &Path,
    dir: &Path,
    broker: &Broker,
    cfg_text: &str,
    node: &str,
    onset: f64,
) -> anyhow::Result<f64> {
    let cfg = dir.join(format!("{node}.toml"));
    std::fs::write(&cfg, cfg_text)?;
    let (tx, rx) = crossbeam_channel::unbounded::<(&'static str, Instant)>();

    let mut opts = rumqttc::MqttOptions::new(format!("{node}-sub"), "127.0.0.1", broker.port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut conn) = rumqttc::Client::new(opts, 10);
    client.subscribe(format!("sonitor/{node}/+/alarm"), rumqttc::QoS::AtLeastOnce)?;
    let sub_tx = tx.clone();
    let sub = std::thread::spawn(move || {
        for ev in conn.iter() {
            match ev {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    if p.payload.as_ref() == b"ON" {
                        let _ = sub_tx.send(("on", Instant::now()));
                    }
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                    let _ = sub_tx.send(("subscribed", Instant::now()));
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    // Subscribed before the daemon starts.
    loop {
        let (what, _) = rx
            .recv_timeout(Duration::from_secs(10))
            .context("the subscriber did not get its SUBACK")?;
        if what == "subscribed" {
            break;
        }
    }

    let mut child = crate::e2e::sonitor_run(sonitor, &cfg)
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().context("stderr")?;
    let log_tx = tx.clone();
    // The log is kept to say why, should the daemon stop early.
    let logs = std::thread::spawn(move || {
        let mut kept = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains(" open: ") {
                let _ = log_tx.send(("open", Instant::now()));
            }
            if kept.len() < 20 {
                kept.push(line);
            }
        }
        kept.join("\n")
    });
    let deadline = Instant::now() + Duration::from_secs_f64(onset + 30.0);
    let (mut open, mut on) = (None, None);
    while on.is_none() && Instant::now() < deadline {
        if let Ok((what, t)) = rx.recv_timeout(Duration::from_millis(200)) {
            match what {
                "open" => open = Some(t),
                "on" => on = Some(t),
                _ => {}
            }
        }
    }
    // SAFETY: plain kill(2) of our own child.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let _ = child.wait();
    let log = logs.join().unwrap_or_default();
    let _ = client.disconnect();
    let _ = sub.join();
    let open =
        open.with_context(|| format!("the daemon never logged its input open; its log:\n{log}"))?;
    let on = on.with_context(|| {
        format!(
            "no alarm ON reached the subscriber within 30 s of the fault; the daemon's log:\n{log}"
        )
    })?;
    Ok(on.duration_since(open).as_secs_f64() - onset)
}

/// What every replay shares.
struct Replay<'a> {
    dir: &'a Path,
    bundle: &'a Path,
    section: &'a str,
    wav: &'a Path,
    port: u16,
}

fn config_text(r: &Replay, node: &str, k: usize, n: usize) -> String {
    let (dir, bundle, section, wav, port) = (r.dir, r.bundle, r.section, r.wav, r.port);
    let q = toml_path;
    format!(
        "node_id = {node:?}\nstate_dir = {}\nlog_level = \"info\"\n\n\
         [[devices]]\nname = \"recording\"\nsource = \"file\"\npath = {}\nrealtime = true\nat_end = \"exit\"\n\n\
         [[machines]]\nname = \"machine\"\ndevice = \"recording\"\nbundle = {}\nsection = {section:?}\n\
         raise_k = {k}\nraise_n = {n}\n\n\
         [mqtt]\nhost = \"127.0.0.1\"\nport = {port}\n\n[metrics]\nenabled = false\n\n[clips]\nenabled = false\n",
        q(&dir.join(node)),
        q(wav),
        q(bundle),
    )
}

pub fn run(o: &Options) -> anyhow::Result<()> {
    anyhow::ensure!(o.runs > 0, "--runs must be positive");
    let bundle_dir = std::path::absolute(&o.bundle)?;
    let b =
        Bundle::load(&bundle_dir).map_err(|e| anyhow::anyhow!("{}: {e}", o.bundle.display()))?;
    // The demo recording and its timeline: the section, and where the fault is.
    let demo = bundle_dir.join("demo.wav");
    let timeline = Timeline::of_recording(&demo)?;
    let section = timeline.section.clone();
    let p = &b.manifest.features;
    let sonitor = sonitor_binary()?;
    let tmp = tempfile::tempdir()?;
    let wav = tmp.path().join("onset.wav");
    cut_recording(&demo, &timeline, &wav, o.onset_seconds)?;
    let broker = Broker::start(tmp.path())?;
    let replay = Replay {
        dir: tmp.path(),
        bundle: &bundle_dir,
        section: &section,
        wav: &wav,
        port: broker.port,
    };
    let mut results = Vec::new();
    for (k, n) in [(3usize, 5usize), (1, 1)] {
        let mut lat = Vec::new();
        for i in 0..o.runs {
            let node = format!("lat{k}of{n}r{i}");
            std::fs::create_dir_all(tmp.path().join(&node))?;
            let cfg = config_text(&replay, &node, k, n);
            let l = one_run(&sonitor, tmp.path(), &broker, &cfg, &node, o.onset_seconds)?;
            if !o.json {
                eprintln!("detector {k} of {n}, run {}: {l:.3} s", i + 1);
            }
            lat.push(l);
        }
        let max = lat.iter().copied().fold(f64::MIN, f64::max);
        results.push((k, n, median(&lat), max, lat));
    }
    if o.json {
        let v = serde_json::json!({
            "window_seconds": p.window_samples as f64 / p.sample_rate as f64,
            "hop_seconds": p.window_hop_samples as f64 / p.sample_rate as f64,
            "rows": results.iter().map(|(k, n, med, max, all)| serde_json::json!({
                "raise_k": k, "raise_n": n, "median_seconds": med, "max_seconds": max, "runs": all,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "window {:.1} s, hop {:.1} s; first anomalous sample → retained alarm ON at an MQTT subscriber (mosquitto, loopback)\n",
        p.window_samples as f64 / p.sample_rate as f64,
        p.window_hop_samples as f64 / p.sample_rate as f64
    );
    println!("| detector | runs | median (s) | max (s) |");
    println!("|---|---|---|---|");
    for (k, n, med, max, all) in &results {
        println!("| raise {k} of {n} | {} | {med:.2} | {max:.2} |", all.len());
    }
    Ok(())
}
