//! `sonitor-bench e2e`: the real daemon (`sonitor run`, the binary next to this one) on file sources as fast as
//! it can go, one device and one machine per recording, for 1 and for N machines: CPU time (user + system, from
//! the kernel's accounting of the child) per second of audio per machine, machines per core, and peak RSS. In the
//! same run, alternating with it, the Python peer (benches/python/peer.py: librosa + onnxruntime) on the same
//! recording, so that the ratio holds on a noisy machine.
//!
//! The peer reports its processing loop alone (no imports, model loading or WAV reading). For a like-for-like
//! ratio, the one-machine runs alternate with a run on one copy of the source recording (`--short-seconds`), and
//! sonitor's steady state is the difference of the two runs' CPU over the difference of their audio: start-up
//! (loading and optimising the model, the configuration check) and shut-down cancel out.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::Context;
use sonitor::bench::median;
use sonitor::config::toml_path;
use sonitor::demo::Timeline;
use sonitor_core::bundle::Bundle;

/// What `e2e` and `live` both replay, and how they report it.
#[derive(clap::Args)]
pub struct Replay {
    #[arg(long, default_value = "models/default")]
    pub bundle: PathBuf,
    /// Recording [default: the bundle's demo.wav], repeated (`live`: or cut) to the run's length.
    #[arg(long)]
    pub wav: Option<PathBuf>,
    /// Machine counts to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    pub machines: Vec<usize>,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct Options {
    #[command(flatten)]
    pub replay: Replay,
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    #[arg(long, default_value_t = 5.0)]
    pub audio_minutes: f64,
    /// Length of the short one-machine run whose CPU is subtracted for the steady state (seconds, at least; the
    /// source recording repeated).
    #[arg(long, default_value_t = 60.0)]
    pub short_seconds: f64,
    /// Python of the peer's environment [default: benches/python/.venv/bin/python when it exists].
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Do not run the Python peer.
    #[arg(long, conflicts_with = "python")]
    pub no_peer: bool,
}

/// What the kernel accounted for one child process.
#[derive(Debug, Clone, Copy)]
pub struct ChildUsage {
    pub cpu_s: f64,
    pub wall_s: f64,
    pub max_rss_kib: u64,
    pub status: i32,
}

/// Runs a command to completion and returns its CPU time and peak RSS (`wait4`).
pub fn run_measured(cmd: &mut Command) -> anyhow::Result<ChildUsage> {
    let t0 = Instant::now();
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: a zeroed rusage is a valid value for wait4 to fill.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our child, not yet waited for; status and ru are valid pointers.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    if r != pid {
        anyhow::bail!("wait4: {}", std::io::Error::last_os_error());
    }
    Ok(ChildUsage::of(&ru, status, t0))
}

impl ChildUsage {
    /// From what `wait4` returned for a child started at `t0`.
    pub fn of(ru: &libc::rusage, status: libc::c_int, t0: Instant) -> Self {
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
        ChildUsage {
            cpu_s: secs(ru.ru_utime) + secs(ru.ru_stime),
            wall_s: t0.elapsed().as_secs_f64(),
            max_rss_kib: ru.ru_maxrss as u64,
            status: if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                -1
            },
        }
    }
}

/// What a benchmark of the daemon replays: the bundle, its demo's section, and a long and a short recording in a
/// scratch directory (removed when dropped).
pub struct Recordings {
    pub bundle_dir: PathBuf,
    pub section: String,
    pub src: PathBuf,
    pub tmp: tempfile::TempDir,
    pub wav: PathBuf,
    pub audio_s: f64,
    pub short_wav: PathBuf,
    pub short_s: f64,
}

impl Recordings {
    /// The replay's `wav` (default: the bundle's demo.wav) repeated to `long_s` and to `short_s` seconds, or cut
    /// to exactly that with `cut`, once the run's counts are checked. `long_flag` names the option of the long
    /// length in the errors.
    pub fn prepare(
        replay: &Replay,
        repeat: usize,
        long_s: f64,
        short_s: f64,
        cut: bool,
        long_flag: &str,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            repeat > 0 && long_s > 0.0 && short_s > 0.0 && replay.machines.iter().all(|&n| n > 0),
            "--repeat, {long_flag}, --short-seconds and --machines must be positive"
        );
        let bundle = &replay.bundle;
        let wav = replay.wav.as_deref();
        let bundle_dir = std::path::absolute(bundle)?;
        let b =
            Bundle::load(&bundle_dir).map_err(|e| anyhow::anyhow!("{}: {e}", bundle.display()))?;
        let section = demo_section(&b, &bundle_dir)?;
        let src = wav.map_or_else(|| bundle_dir.join("demo.wav"), Path::to_path_buf);
        let tmp = tempfile::tempdir()?;
        let long_wav = tmp.path().join("long.wav");
        let audio_s = repeat_wav(&src, &long_wav, long_s, cut)?;
        let short_wav = tmp.path().join("short.wav");
        let short_s = repeat_wav(&src, &short_wav, short_s, cut)?;
        anyhow::ensure!(
            short_s < audio_s,
            "--short-seconds ({short_s:.0} s of audio) must be shorter than {long_flag} ({audio_s:.0} s)"
        );
        Ok(Recordings {
            bundle_dir,
            section,
            src,
            tmp,
            wav: long_wav,
            audio_s,
            short_wav,
            short_s,
        })
    }
}

/// The daemon binary next to this one (`cargo build --release` builds both).
pub fn sonitor_binary() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let p = me.with_file_name("sonitor");
    anyhow::ensure!(
        p.exists(),
        "{} not found: build it first (cargo build --release --bin sonitor)",
        p.display()
    );
    Ok(p)
}

/// `sonitor run --config cfg`, with no standard input and its standard output discarded.
pub fn sonitor_run(sonitor: &Path, cfg: &Path) -> Command {
    let mut c = Command::new(sonitor);
    c.arg("run")
        .arg("--config")
        .arg(cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    c
}

/// The section the bundle's demo recording belongs to (its `demo.json` timeline), else the manifest's first.
pub fn demo_section(b: &Bundle, dir: &Path) -> anyhow::Result<String> {
    let demo = dir.join("demo.wav");
    if demo.with_extension("json").exists() {
        return Ok(Timeline::of_recording(&demo)?.section);
    }
    b.manifest
        .sections
        .first()
        .map(|s| format!("{}/section_{:02}", s.machine_type, s.section))
        .ok_or_else(|| anyhow::anyhow!("{}: the bundle has no sections", dir.display()))
}

/// Writes `out`: `src` repeated until it lasts at least `seconds` (whole copies), or with `cut`, exactly the
/// first `seconds` of that (in whole frames). Returns the duration in seconds.
pub fn repeat_wav(src: &Path, out: &Path, seconds: f64, cut: bool) -> anyhow::Result<f64> {
    let mut r = hound::WavReader::open(src).with_context(|| format!("{}", src.display()))?;
    let spec = r.spec();
    anyhow::ensure!(
        spec.sample_format == hound::SampleFormat::Int && spec.bits_per_sample == 16,
        "{}: the benchmark repeats 16-bit PCM recordings",
        src.display()
    );
    let samples: Vec<i16> = r.samples::<i16>().collect::<Result<_, _>>()?;
    anyhow::ensure!(!samples.is_empty(), "{}: empty", src.display());
    let channels = usize::from(spec.channels.max(1));
    let per_second = spec.sample_rate as f64 * channels as f64;
    let reps = ((seconds * per_second) / samples.len() as f64)
        .ceil()
        .max(1.0) as usize;
    let total = if cut {
        ((seconds * spec.sample_rate as f64).round() as usize).max(1) * channels
    } else {
        reps * samples.len()
    };
    let mut w = hound::WavWriter::create(out, spec)?;
    // hound's buffered 16-bit writer: its checked per-sample path was 5% of all samples in a perf profile of a
    // one-machine e2e run (write_padded and this function).
    let mut left = total;
    while left > 0 {
        let part = &samples[..left.min(samples.len())];
        let mut block = w.get_i16_writer(u32::try_from(part.len())?);
        for &s in part {
            block.write_sample(s);
        }
        block.flush()?;
        left -= part.len();
    }
    w.finalize()?;
    Ok(total as f64 / per_second)
}

/// A daemon configuration: `n` file sources replaying `wav` (paced in real time or as fast as possible), one
/// machine each; MQTT to a broker on loopback at `mqtt_port`, or off; metrics and clips off.
pub fn config_text(
    dir: &Path,
    bundle: &Path,
    section: &str,
    wav: &Path,
    n: usize,
    realtime: bool,
    mqtt_port: Option<u16>,
) -> String {
    let q = toml_path;
    let mut s = format!(
        "node_id = \"bench\"\nstate_dir = {}\nlog_level = \"error\"\n\n",
        q(&dir.join("state"))
    );
    for i in 0..n {
        s += &format!(
            "[[devices]]\nname = \"file{i}\"\nsource = \"file\"\npath = {}\nrealtime = {realtime}\nat_end = \"exit\"\n\n",
            q(wav)
        );
        s += &format!(
            "[[machines]]\nname = \"machine{i}\"\ndevice = \"file{i}\"\nbundle = {}\nsection = {section:?}\n\n",
            q(bundle)
        );
    }
    s += &match mqtt_port {
        Some(port) => format!("[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\n\n"),
        None => "[mqtt]\nenabled = false\n\n".into(),
    };
    s += "[metrics]\nenabled = false\n\n[clips]\nenabled = false\n";
    s
}

/// Before it is timed, the peer must compute what the daemon computes: the daemon's per-window scores of the
/// bundle's demo (`sonitor demo`, the real pipeline) against the peer's (benches/python/compare.py, 1e-4).
fn check_peer_equivalence(
    sonitor: &Path,
    py: &Path,
    bundle: &Path,
    tmp: &Path,
    json: bool,
) -> anyhow::Result<()> {
    let demo = tmp.join("equivalence");
    // The demo's exit status says whether its alarm came at the right time; only its timeline matters here.
    Command::new(sonitor)
        .arg("demo")
        .arg("--model")
        .arg(bundle)
        .arg("--out")
        .arg(&demo)
        .arg("--quiet")
        .stdout(Stdio::null())
        .status()
        .context("running sonitor demo")?;
    let peer_csv = tmp.join("peer-scores.csv");
    let ok = Command::new(py)
        .arg("benches/python/peer.py")
        .arg("--model")
        .arg(bundle)
        .arg("--scores-out")
        .arg(&peer_csv)
        .stdout(Stdio::null())
        .status()?
        .success()
        && Command::new(py)
            .arg("benches/python/compare.py")
            .arg(&peer_csv)
            .arg(demo.join("timeline.csv"))
            // With --json, standard output carries the JSON object alone; the comparison goes to stderr.
            .stdout(if json {
                Stdio::from(std::io::stderr())
            } else {
                Stdio::inherit()
            })
            .status()?
            .success();
    anyhow::ensure!(
        ok,
        "the Python peer's scores differ from the daemon's (see above): its timings would not compare the same work"
    );
    Ok(())
}

pub fn run(o: &Options) -> anyhow::Result<()> {
    let r = Recordings::prepare(
        &o.replay,
        o.repeat,
        o.audio_minutes * 60.0,
        o.short_seconds,
        false,
        "--audio-minutes",
    )?;
    let (section, audio_s, short_s) = (&r.section, r.audio_s, r.short_s);
    let sonitor = sonitor_binary()?;
    let python = if o.no_peer {
        None
    } else {
        o.python.clone().or_else(|| {
            let p = PathBuf::from("benches/python/.venv/bin/python");
            p.exists().then_some(p)
        })
    };
    if let Some(py) = &python {
        check_peer_equivalence(&sonitor, py, &r.bundle_dir, r.tmp.path(), o.replay.json)?;
    }
    if !o.replay.json {
        println!(
            "recording: {} repeated to {audio_s:.0} s; bundle {} section {section}; {} repetition(s)",
            r.src.display(),
            r.bundle_dir.display(),
            o.repeat
        );
    }
    let mut rows = Vec::new();
    let mut peer_loop = Vec::new();
    let mut peer_process = Vec::new();
    // One machine: sonitor's CPU per audio second with the short run's CPU subtracted.
    let mut steady = Vec::new();
    let run_sonitor = |cfg: &Path| -> anyhow::Result<ChildUsage> {
        let u = run_measured(&mut sonitor_run(&sonitor, cfg))?;
        anyhow::ensure!(u.status == 0, "sonitor run exited with {}", u.status);
        Ok(u)
    };
    for &n in &o.replay.machines {
        let dir = r.tmp.path().join(format!("m{n}"));
        std::fs::create_dir_all(dir.join("state"))?;
        let cfg = dir.join("bench.toml");
        std::fs::write(
            &cfg,
            config_text(&dir, &r.bundle_dir, section, &r.wav, n, false, None),
        )?;
        // One machine only: the short run that gives the steady state, and the peer.
        let short_cfg = if n == 1 {
            let p = dir.join("short.toml");
            std::fs::write(
                &p,
                config_text(&dir, &r.bundle_dir, section, &r.short_wav, 1, false, None),
            )?;
            Some(p)
        } else {
            None
        };
        let mut cpu = Vec::new();
        let mut rss = Vec::new();
        let mut wall = Vec::new();
        for _ in 0..o.repeat {
            let u = run_sonitor(&cfg)?;
            cpu.push(u.cpu_s / (n as f64 * audio_s));
            rss.push(u.max_rss_kib as f64 / 1024.0);
            wall.push(u.wall_s);
            // The short run and the peer, alternating with the one-machine runs.
            if let Some(short_cfg) = &short_cfg {
                let su = run_sonitor(short_cfg)?;
                steady.push((u.cpu_s - su.cpu_s) / (audio_s - short_s));
                if let Some(py) = &python {
                    let out = r.tmp.path().join("peer.json");
                    let pu = run_measured(
                        Command::new(py)
                            .arg("benches/python/peer.py")
                            .arg("--model")
                            .arg(&r.bundle_dir)
                            .arg("--wav")
                            .arg(&r.wav)
                            .arg("--section")
                            .arg(section)
                            .arg("--json")
                            .env("OMP_NUM_THREADS", "1")
                            .stdin(Stdio::null())
                            .stdout(std::fs::File::create(&out)?),
                    )?;
                    anyhow::ensure!(pu.status == 0, "the Python peer exited with {}", pu.status);
                    let v: serde_json::Value =
                        serde_json::from_str(&std::fs::read_to_string(&out)?)
                            .context("the Python peer's JSON")?;
                    let per = v["cpu_seconds_per_audio_second"].as_f64().ok_or_else(|| {
                        anyhow::anyhow!(
                            "the Python peer's JSON has no cpu_seconds_per_audio_second"
                        )
                    })?;
                    peer_loop.push(per);
                    peer_process.push(pu.cpu_s / audio_s);
                }
            }
        }
        rows.push((n, median(&cpu), median(&rss), median(&wall)));
    }
    // The peer ran beside the one-machine runs: (its loop, its whole process, sonitor's one machine).
    let one = rows.iter().find(|r| r.0 == 1).map(|r| r.1);
    let steady = (!steady.is_empty()).then(|| median(&steady));
    let peer = one
        .filter(|_| !peer_loop.is_empty())
        .map(|r| (median(&peer_loop), median(&peer_process), r));
    if o.replay.json {
        let v = serde_json::json!({
            "audio_seconds": audio_s,
            "bundle": r.bundle_dir,
            "section": section,
            "repeat": o.repeat,
            "short_audio_seconds": short_s,
            "sonitor_one_machine_steady_cpu_seconds_per_audio_second": steady,
            "rows": rows.iter().map(|&(n, cpu, rss, wall)| serde_json::json!({
                "machines": n, "cpu_seconds_per_audio_second_per_machine": cpu,
                "machines_per_core": 1.0 / cpu, "peak_rss_mib": rss, "wall_seconds": wall,
            })).collect::<Vec<_>>(),
            "python_peer": peer.map(|(l, p, r)| serde_json::json!({
                "loop_cpu_seconds_per_audio_second": l,
                "process_cpu_seconds_per_audio_second": p,
                "sonitor_one_machine_cpu_seconds_per_audio_second": r,
                "sonitor_steady_over_peer_loop": steady.map(|s| s / l),
            })),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("\n| machines | CPU per audio second per machine (ms/s) | machines per core | peak RSS (MiB) | wall (s) |");
    println!("|---|---|---|---|---|");
    for (n, cpu, rss, wall) in &rows {
        println!(
            "| {n} | {:.2} | {:.0} | {rss:.1} | {wall:.1} |",
            cpu * 1e3,
            1.0 / cpu
        );
    }
    if let Some(s) = steady {
        println!(
            "\none machine, steady state (the {short_s:.0} s run's CPU subtracted, start-up and shut-down cancel): \
             {:.2} ms/s, {:.0} machines per core",
            s * 1e3,
            1.0 / s
        );
    }
    match peer {
        Some((l, p, r)) => {
            println!(
                "\nPython peer (librosa + onnxruntime, one thread), same recording, alternating with the one-machine runs:\n\
                 processing loop {:.2} ms/s, whole process {:.2} ms/s; sonitor {:.2} ms/s (whole process)\n\
                 sonitor / peer loop = {:.3} (target ≤ 0.333)",
                l * 1e3,
                p * 1e3,
                r * 1e3,
                r / l
            );
            if let Some(s) = steady {
                println!(
                    "sonitor steady state / peer loop = {:.3} (both without start-up)",
                    s / l
                );
            }
        }
        None if o.no_peer => {}
        None => println!("\n(no Python peer: run benches/python/setup, or pass --python PATH)"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repeated_recording_is_the_source_sample_for_sample() {
        let d = tempfile::tempdir().unwrap();
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 8000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let src: Vec<i16> = (0..12_000)
            .map(|i| (i * 37 % 65_536 - 32_768) as i16)
            .collect();
        let mut w = hound::WavWriter::create(d.path().join("src.wav"), spec).unwrap();
        for &s in &src {
            w.write_sample(s).unwrap();
        }
        w.finalize().unwrap();
        // 0.75 s per copy; 2 s asked for: three copies.
        let seconds = repeat_wav(
            &d.path().join("src.wav"),
            &d.path().join("out.wav"),
            2.0,
            false,
        )
        .unwrap();
        assert_eq!(seconds, 2.25);
        let mut r = hound::WavReader::open(d.path().join("out.wav")).unwrap();
        assert_eq!(r.spec(), spec);
        let out: Vec<i16> = r.samples::<i16>().map(Result::unwrap).collect();
        assert_eq!(out, [&src[..], &src[..], &src[..]].concat());
        // Cut: the first 1.2 s of the repetition, 9 600 frames of two channels.
        let seconds = repeat_wav(
            &d.path().join("src.wav"),
            &d.path().join("cut.wav"),
            1.2,
            true,
        )
        .unwrap();
        assert_eq!(seconds, 1.2);
        let mut r = hound::WavReader::open(d.path().join("cut.wav")).unwrap();
        let out: Vec<i16> = r.samples::<i16>().map(Result::unwrap).collect();
        assert_eq!(out, [&src[..], &src[..7_200]].concat());
    }
}
