//! `sonitor-bench live`: the daemon as it runs next to a machine. The file sources are paced in real time, block
//! by block as a sound card delivers audio, so the daemon spends most of its life waiting; what it costs then
//! (wake-ups, polling, timers) does not show in `e2e`, which replays as fast as it can.
//!
//! For 1 and N machines: CPU time per audio second per machine, whole process and steady state (a run on
//! `--short-seconds` of audio is subtracted, so start-up and shut-down cancel), and where it goes thread by thread
//! (from `/proc/<pid>/task/*/stat`, sampled every 100 ms while the daemon runs: a thread's last 100 ms can be
//! missed).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::e2e::{config_text, sonitor_binary, sonitor_run, ChildUsage, Recordings, Replay};

#[derive(clap::Args)]
pub struct Options {
    #[command(flatten)]
    pub replay: Replay,
    /// Audio per run (seconds, at least; the recording repeated). The run takes as long.
    #[arg(long, default_value_t = 60.0)]
    pub seconds: f64,
    /// Audio of the short run whose CPU is subtracted for the steady state.
    #[arg(long, default_value_t = 10.0)]
    pub short_seconds: f64,
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Publish to a broker (mosquitto on loopback, started here) as a deployed daemon does.
    #[arg(long)]
    pub mqtt: bool,
}

/// CPU ticks (user + system) of one thread, from the text of `/proc/<pid>/task/<tid>/stat`, with its name.
fn thread_ticks(stat: &str) -> Option<(String, u64)> {
    // "tid (comm) state ppid …": comm may hold spaces and parentheses, so split at the last ')'.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_string();
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // Fields 14 and 15 of proc(5) (utime, stime); the first field after the name is field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

/// The thread's role: its name without the device or machine number (`reader-file3` → `reader-file`).
fn role(name: &str) -> String {
    name.trim_end_matches(|c: char| c.is_ascii_digit())
        .to_string()
}

/// Runs a command to completion: what the kernel accounted for it (`wait4`) and the CPU seconds of each thread
/// role, sampled from `/proc` every 100 ms.
fn run_with_threads(cmd: &mut Command) -> anyhow::Result<(ChildUsage, BTreeMap<String, f64>)> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let t0 = Instant::now();
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    let pid = child.id() as libc::pid_t;
    let mut last: BTreeMap<u64, (String, u64)> = BTreeMap::new();
    let mut status: libc::c_int = 0;
    // SAFETY: a zeroed rusage is a valid value for wait4 to fill.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for t in tasks.flatten() {
                let tid: Option<u64> = t.file_name().to_str().and_then(|s| s.parse().ok());
                let stat = std::fs::read_to_string(t.path().join("stat")).ok();
                if let (Some(tid), Some(ticks)) = (tid, stat.as_deref().and_then(thread_ticks)) {
                    last.insert(tid, ticks);
                }
            }
        }
        // SAFETY: pid is our child, not yet waited for; status and ru are valid pointers.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        if r == pid {
            break;
        }
        if r != 0 {
            anyhow::bail!("wait4: {}", std::io::Error::last_os_error());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut roles = BTreeMap::new();
    for (name, ticks) in last.into_values() {
        *roles.entry(role(&name)).or_insert(0.0) += ticks as f64 / hz;
    }
    let usage = ChildUsage::of(&ru, status, t0);
    Ok((usage, roles))
}

struct Row {
    machines: usize,
    /// Whole process, per audio second per machine.
    cpu: f64,
    /// Start-up and shut-down subtracted.
    steady: f64,
    rss_mib: f64,
    /// Whole process of the long run, per audio second per machine, by thread role.
    threads: BTreeMap<String, f64>,
}

pub fn run(o: &Options) -> anyhow::Result<()> {
    let r = Recordings::prepare(
        &o.replay,
        o.repeat,
        o.seconds,
        o.short_seconds,
        true,
        "--seconds",
    )?;
    let (section, audio_s, short_s) = (&r.section, r.audio_s, r.short_s);
    let sonitor = sonitor_binary()?;
    let broker = if o.mqtt {
        Some(crate::latency::Broker::start(r.tmp.path())?)
    } else {
        None
    };
    let port = broker.as_ref().map(|b| b.port);
    let config = |dir: &Path, wav: &Path, n: usize| {
        config_text(dir, &r.bundle_dir, section, wav, n, true, port)
    };
    if !o.replay.json {
        println!(
            "recording: {} repeated to {audio_s:.0} s (short run {short_s:.0} s), paced in real time; bundle {} \
             section {section}; {} repetition(s); MQTT {}",
            r.src.display(),
            r.bundle_dir.display(),
            o.repeat,
            if o.mqtt { "to a loopback mosquitto" } else { "off" }
        );
    }
    let run = |cfg: &Path| -> anyhow::Result<(ChildUsage, BTreeMap<String, f64>)> {
        let (u, threads) = run_with_threads(&mut sonitor_run(&sonitor, cfg))?;
        anyhow::ensure!(u.status == 0, "sonitor run exited with {}", u.status);
        Ok((u, threads))
    };
    let mut rows = Vec::new();
    for &n in &o.replay.machines {
        let dir = r.tmp.path().join(format!("m{n}"));
        std::fs::create_dir_all(dir.join("state"))?;
        let cfg = dir.join("live.toml");
        std::fs::write(&cfg, config(&dir, &r.wav, n))?;
        let short_cfg = dir.join("short.toml");
        std::fs::write(&short_cfg, config(&dir, &r.short_wav, n))?;
        let per = n as f64 * audio_s;
        let (mut cpu, mut steady, mut rss) = (Vec::new(), Vec::new(), Vec::new());
        let mut threads: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for _ in 0..o.repeat {
            let (u, th) = run(&cfg)?;
            let (su, _) = run(&short_cfg)?;
            cpu.push(u.cpu_s / per);
            steady.push((u.cpu_s - su.cpu_s) / (n as f64 * (audio_s - short_s)));
            rss.push(u.max_rss_kib as f64 / 1024.0);
            for (role, s) in th {
                threads.entry(role).or_default().push(s / per);
            }
        }
        let median = sonitor::bench::median;
        rows.push(Row {
            machines: n,
            cpu: median(&cpu),
            steady: median(&steady),
            rss_mib: median(&rss),
            threads: threads
                .iter()
                .map(|(k, v)| (k.clone(), median(v)))
                .collect(),
        });
    }
    if o.replay.json {
        let v = serde_json::json!({
            "audio_seconds": audio_s,
            "short_audio_seconds": short_s,
            "bundle": r.bundle_dir,
            "section": section,
            "repeat": o.repeat,
            "mqtt": o.mqtt,
            "rows": rows.iter().map(|r| serde_json::json!({
                "machines": r.machines,
                "cpu_seconds_per_audio_second_per_machine": r.cpu,
                "steady_cpu_seconds_per_audio_second_per_machine": r.steady,
                "peak_rss_mib": r.rss_mib,
                "threads_cpu_seconds_per_audio_second_per_machine": r.threads,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("\n| machines | CPU per audio second per machine, whole process (ms/s) | steady state (ms/s) | machines per core (steady) | peak RSS (MiB) |");
    println!("|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.2} | {:.2} | {:.0} | {:.1} |",
            r.machines,
            r.cpu * 1e3,
            r.steady * 1e3,
            1.0 / r.steady,
            r.rss_mib
        );
    }
    for r in &rows {
        let shares: Vec<String> = r
            .threads
            .iter()
            .map(|(k, v)| format!("{k} {:.2}", v * 1e3))
            .collect();
        println!(
            "\n{} machine(s), by thread (ms per audio second per machine, whole run): {}",
            r.machines,
            shares.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_threads_stat_line_gives_its_name_and_cpu_ticks() {
        // proc(5): utime and stime are fields 14 and 15; the name may hold spaces and parentheses.
        let line = "4242 (reader-fi) le0) S 1 4242 4242 0 -1 4194368 120 0 0 0 37 5 0 0 20 0 9 0 100 1000 200";
        assert_eq!(thread_ticks(line), Some(("reader-fi) le0".to_string(), 42)));
        assert_eq!(thread_ticks("4242 (x) S 1"), None);
        assert_eq!(role("reader-file12"), "reader-file");
        assert_eq!(role("inference"), "inference");
    }
}
