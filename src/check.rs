//! The configuration check, before anything runs: `sonitor validate`, each start of `sonitor run` and each reload
//! (SIGHUP). It loads the file and checks what can be checked without running: files, bundles (built and run
//! once with tract), sections, channels, devices, ports, the state directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sonitor_core::bundle::Bundle;

use crate::config::{Config, MachineConfig, MissingDirs, SourceKind};

/// Why a recording of `seconds`, played once, can never raise machine `m`'s alarm: it gives fewer analysis
/// windows (of `bundle`'s length and hop) than the machine's `raise_k`. `None` where it gives enough, or not even
/// one window (refused on its own).
pub(crate) fn too_short_to_raise(
    m: &MachineConfig,
    bundle: &Bundle,
    seconds: f64,
) -> Option<String> {
    let f = &bundle.manifest.features;
    let rate = f64::from(f.sample_rate.max(1));
    let window = f.window_samples as f64 / rate;
    let hop = f.window_hop_samples.max(1) as f64 / rate;
    if seconds < window {
        return None;
    }
    // A margin for the rounding of a length that is a whole number of hops.
    let windows = ((seconds - window) / hop + 1e-6).floor() as usize + 1;
    let k = m.detector.raise_k.max(1);
    (windows < k).then(|| {
        format!(
            "holds {seconds:.2} s of audio: {windows} window(s) of {window} s every {hop} s, and raise_k = {k} \
             needs {k} above the threshold ({:.2} s of audio): played once, it can never raise an alarm (a longer \
             recording, or a smaller raise_k)",
            window + (k - 1) as f64 * hop
        )
    })
}

/// A machine whose `threshold_off` lies above the bundle's threshold, the one in force when the machine sets
/// none of its own (with its own, the pair is checked with the file: `Config::static_problems`).
pub(crate) fn threshold_off_above_bundle(
    m: &MachineConfig,
    bundle_threshold: f64,
) -> Option<String> {
    if m.detector.threshold.is_some() {
        return None;
    }
    let off = m
        .detector
        .threshold_off
        .filter(|off| *off > bundle_threshold)?;
    Some(format!(
        "machine '{}': {}",
        m.name,
        crate::config::threshold_off_above(off, bundle_threshold)
    ))
}

/// How many times a threshold and its section's calibrated one may be apart before it is said: a threshold ten
/// times below the calibrated one keeps an alarm on over normal sound, one ten times above may never raise one.
const FAR_RATIO: f64 = 10.0;

/// A threshold ten times or more away from its section's calibrated one, as a ratio (≥ [`FAR_RATIO`]) and whether
/// it is above; `None` when they are of the same order.
pub(crate) fn how_far(t: f64, calibrated: f64) -> Option<(f64, bool)> {
    if !(t > 0.0 && calibrated > 0.0) {
        return None;
    }
    let (ratio, above) = if t > calibrated {
        (t / calibrated, true)
    } else {
        (calibrated / t, false)
    };
    (ratio >= FAR_RATIO).then_some((ratio, above))
}

/// A ratio as a few characters: `53`, or `5e298` for what a mistyped exponent makes.
pub(crate) fn ratio_shown(ratio: f64) -> String {
    if ratio < 1e6 {
        format!("{ratio:.0}")
    } else {
        format!("{ratio:.0e}")
    }
}

/// A threshold `t` ten times or more away from its section's calibrated one, in words: how far, and what it does
/// to the alarm. Said by `validate` and a reload of the file, and logged when a `threshold/set` command sets it.
pub(crate) fn far_from_calibrated(
    t: f64,
    calibrated: &sonitor_core::bundle::Threshold,
) -> Option<String> {
    let c = calibrated.value;
    let (ratio, above) = how_far(t, c)?;
    let what = if above {
        "above every score its normal training sound reached by far: it may never alarm"
    } else {
        "below it: normal sound will keep its alarm on"
    };
    // `{:?}`: the shortest form that reads back, 1e-300 rather than 300 digits.
    Some(format!(
        "threshold {t:?} is {}× away from its section's calibrated threshold {c:?} (the {} quantile of its normal \
         training scores), {what}",
        ratio_shown(ratio),
        calibrated.quantile
    ))
}

/// A threshold a machine uses that an unattended alarm should not run with unknowingly: its own, ten times or
/// more away from its section's calibrated one (an example file's 0.35 against a bundle calibrated at 0.009 can
/// never alarm; validate said OK); or the bundle's, calibrated at a quantile below 0.95 of the normal training
/// scores (`sonitor-train fit`'s default 0.9, DCASE's evaluation setting), which normal sound passes about once in
/// ten windows: two false alarms in 30 s of normal audio in a review.
pub(crate) fn threshold_far_from_calibrated(
    m: &MachineConfig,
    calibrated: &sonitor_core::bundle::Threshold,
) -> Option<String> {
    let c = calibrated.value;
    match m.detector.threshold {
        Some(t) => far_from_calibrated(t, calibrated).map(|far| {
            format!(
                "machine '{}': {far}; the scale of scores is the bundle's own (cosine distances; `sonitor-train \
                 eval` prints it): start from {c}, or from the p99.9 that `sonitor status` shows after a normal run",
                m.name
            )
        }),
        None if calibrated.quantile < 0.95 => Some(format!(
            "machine '{}' uses its bundle's threshold {c}, the {} quantile of the normal training scores: normal \
             sound scores above it about once in {:.0} windows, and raise_k of raise_n such windows raise a false \
             alarm; for an unattended alarm calibrate at 0.99 (`sonitor-train fit --quantile 0.99`) or set the \
             machine's `threshold`",
            m.name,
            calibrated.quantile,
            1.0 / (1.0 - calibrated.quantile).max(1e-9)
        )),
        None => None,
    }
}

/// What [`check`] found.
#[derive(Default)]
pub struct Checked {
    /// `None` when the file could not be read at all.
    pub cfg: Option<Config>,
    /// The loaded bundles, by path.
    pub bundles: BTreeMap<PathBuf, Bundle>,
    /// Their embedders, built by the check and run once on a run state of its own
    /// ([`crate::embed::Embedder::check`]): `start` and a reload take them instead of building them again.
    pub embedders: BTreeMap<PathBuf, crate::embed::Embedder>,
    /// Empty when the configuration is usable.
    pub problems: Vec<String>,
    /// What does not stop it (room on disk: [`Config::disk_check`]; a capture device not there now).
    pub warnings: Vec<String>,
}

/// Loads the configuration and checks everything that can be checked before running: files, bundles,
/// sections, channels, devices, ports, the state directory.
pub fn check(path: &Path) -> Checked {
    check_with(path, None, MissingDirs::Create)
}

/// [`check`] that keeps nothing it writes (`sonitor validate`): a state or clips directory that does not exist
/// yet is left missing, shown only to be one that `run` can create.
pub fn check_leaving_no_trace(path: &Path) -> Checked {
    check_with(path, None, MissingDirs::Probe)
}

/// What a running daemon tells the check of a reload ([`check_with`]).
pub(crate) struct Running<'a> {
    pub(crate) cfg: &'a Config,
    /// The `onnx_sha256` of the graphs it runs: tract has built and run those already.
    pub(crate) graphs: &'a std::collections::BTreeSet<String>,
}

/// [`check`], by a daemon that runs `running` (a reload): a capture device of `running` that the file leaves as
/// it is may be held open by this daemon, so that it cannot be asked for its configurations now; that is a
/// warning, not a problem. A bundle whose graph it runs is not built with tract again (a reload must not stall
/// the controller for each model).
pub(crate) fn check_with(path: &Path, running: Option<&Running>, missing: MissingDirs) -> Checked {
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            return Checked {
                problems: e.problems(),
                ..Checked::default()
            }
        }
    };
    let mut problems = cfg.static_problems();
    let disk = cfg.disk_check(missing);
    problems.extend(disk.problem);
    let mut warnings = disk.warnings;
    warnings.extend(cfg.relative_paths_warning());
    // The MQTT options `run` builds: the password file read, the TLS configuration made from the CA and client
    // files (a file that exists but is no certificate would otherwise stop every start). After the simpler
    // checks of [mqtt], which name a missing file better.
    if cfg.mqtt.enabled && !problems.iter().any(|p| p.starts_with("mqtt")) {
        if let Err(e) = crate::publish::mqtt::options(&cfg) {
            let e = format!("{e:#}");
            problems.push(if e.starts_with("mqtt") {
                e
            } else {
                format!(
                    "mqtt.tls: {e} (ca_file must hold PEM CA certificates, client_cert and client_key the PEM \
                     certificate chain and key of this client)"
                )
            });
        }
        warnings.extend(crate::publish::mqtt::ca_file_warning(&cfg.mqtt));
    }
    let mut bundles = BTreeMap::new();
    let mut embedders = BTreeMap::new();
    // Bundles already refused: each is loaded (and built by tract) once, however many machines use it.
    let mut refused = std::collections::BTreeSet::new();
    for m in &cfg.machines {
        let at = format!("machine '{}'", m.name);
        if !m.bundle.join(sonitor_core::bundle::MANIFEST_FILE).is_file()
            || refused.contains(&m.bundle)
        {
            continue; // already reported
        }
        if !bundles.contains_key(&m.bundle) {
            // The manifest and its graph agree (Bundle::load), and tract can build and run that graph as `run`
            // will: a bundle tract cannot run is a problem of the configuration (exit 78), not a start that
            // fails (exit 1) and is restarted forever.
            crate::fault::pause("check");
            let loaded = Bundle::load(&m.bundle)
                .map_err(|e| format!("{at}: bundle refused: {e}"))
                .and_then(|b| match running {
                    Some(r) if r.graphs.contains(&b.manifest.onnx_sha256) => Ok((b, None)),
                    _ => match crate::embed::Embedder::check(&b) {
                        Ok(e) => Ok((b, Some(e))),
                        Err(e) => Err(format!(
                        "{at}: bundle {} refused: {e:#} (re-export the graph with operators and shapes that \
                         tract runs)",
                        m.bundle.display()
                    )),
                    },
                });
            match loaded {
                Ok((b, e)) => {
                    bundles.insert(m.bundle.clone(), b);
                    embedders.extend(e.map(|e| (m.bundle.clone(), e)));
                }
                Err(e) => {
                    problems.push(e);
                    refused.insert(m.bundle.clone());
                    continue;
                }
            }
        }
        let b = &bundles[&m.bundle];
        match b.manifest.section_by_key(&m.section) {
            None => problems.push(format!(
                "{at}: bundle {} has no section '{}' (it has: {})",
                m.bundle.display(),
                m.section,
                b.manifest
                    .sections
                    .iter()
                    .map(|s| s.key())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Some(s) => {
                problems.extend(threshold_off_above_bundle(m, s.threshold.value));
                warnings.extend(threshold_far_from_calibrated(m, &s.threshold));
            }
        }
    }
    for m in &cfg.machines {
        warnings.extend(idle_settings_that_do_nothing(m));
    }
    warnings.extend(unreadable_to_the_service(&cfg, path, &bundles));
    // Channels and devices.
    for d in &cfg.devices {
        let users: Vec<&MachineConfig> =
            cfg.machines.iter().filter(|m| m.device == d.name).collect();
        if users.is_empty() {
            warnings.push(format!(
                "device '{}' is used by no machine: nothing listens to it (name it in a machine's `device`, or \
                 remove it)",
                d.name
            ));
        }
        // Each of its machines whose model wants more than the input's `rate` ([`crate::window::below_model_rate`]).
        // And each whose bundle's level baseline scores bands that resampling the input cuts
        // ([`crate::window::baseline_cut_by_resampling`]).
        let below_model_rate = |input: String, rate: u32| -> Vec<String> {
            users
                .iter()
                .filter_map(|m| {
                    let b = bundles.get(&m.bundle)?;
                    let model_rate = b.manifest.features.sample_rate;
                    crate::window::below_model_rate(&m.name, &input, rate, model_rate).or_else(
                        || {
                            let s = b.manifest.section_by_key(&m.section)?;
                            crate::window::baseline_cut_by_resampling(
                                &m.name,
                                &input,
                                rate,
                                &b.manifest.features,
                                s.baseline.as_ref()?,
                            )
                        },
                    )
                })
                .collect()
        };
        // A device not there now, or not answering now, and a looped file not there yet, are waited for.
        let waited_for = |why: String, until: &str| {
            let (keeps, check) = match d.source {
                SourceKind::Capture => ("keeps trying to open it", "name"),
                SourceKind::File => ("keeps looking for it", "path"),
            };
            format!(
                "device '{}'{why}: its machines ({}) report health NO_AUDIO until it {until}, and `sonitor run` \
                 {keeps} (check the {check} if it should be there now)",
                d.name,
                users.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ")
            )
        };
        match d.source {
            SourceKind::File => {
                if let Some(p) = d.path.as_ref().filter(|p| {
                    d.at_end == crate::config::AtEnd::Loop && crate::config::file_absent(p)
                }) {
                    warnings.push(waited_for(
                        format!(": {} does not exist (yet)", p.display()),
                        "does",
                    ));
                    continue;
                }
                let Some(p) = d.path.as_ref().filter(|p| p.is_file()) else {
                    continue;
                };
                // The header, then the data to its end: a truncated or corrupt recording is named here, before
                // `run` starts (the file source itself only reads the header).
                match sonitor_core::audio::check_wav(p) {
                    Err(e) => problems.push(format!("device '{}': {e}", d.name)),
                    Ok(info) => {
                        // A file shorter than one analysis window is never scored: played once, and looped
                        // too, since each pass's end is a gap in the audio that starts the window again.
                        let window = users
                            .iter()
                            .filter_map(|m| bundles.get(&m.bundle))
                            .map(|b| b.manifest.features.window_seconds())
                            .fold(0.0, f64::max);
                        let looped = d.at_end == crate::config::AtEnd::Loop;
                        if info.frames == 0 || info.duration_seconds() < window {
                            problems.push(format!(
                                "device '{}': {} holds {:.2} s of audio, less than one {window} s analysis window: \
                                 nothing would be scored{}",
                                d.name,
                                p.display(),
                                info.duration_seconds(),
                                if looped {
                                    " (a loop does not join its end to its start: each pass is cut off)"
                                } else {
                                    ""
                                }
                            ));
                        }
                        // Played once, a file with fewer windows than a machine's raise_k can never raise its
                        // alarm (a looped file plays on, and its windows keep coming).
                        if !looped {
                            warnings.extend(users.iter().filter_map(|m| {
                                too_short_to_raise(
                                    m,
                                    bundles.get(&m.bundle)?,
                                    info.duration_seconds(),
                                )
                                .map(|why| format!("machine '{}': {} {why}", m.name, p.display()))
                            }));
                        }
                        warnings.extend(below_model_rate(
                            format!("device '{}', {}", d.name, p.display()),
                            info.sample_rate,
                        ));
                        for m in users {
                            if m.channel >= info.channels {
                                problems.push(format!(
                                    "machine '{}': channel {} does not exist: {} has {} channel(s)",
                                    m.name,
                                    m.channel,
                                    p.display(),
                                    info.channels
                                ));
                            }
                        }
                    }
                }
            }
            SourceKind::Capture => {
                let spec = d.device.as_deref().unwrap_or("default");
                use crate::capture::ProbeError;
                let rate = users
                    .first()
                    .and_then(|m| bundles.get(&m.bundle))
                    .map_or(16_000, |b| b.manifest.features.sample_rate);
                let probed = crate::capture::probe(spec, d, rate, crate::capture::PROBE_WAIT);
                // Not opened now: the rate the file asks for is known all the same (review27: `sample_rate =
                // 8000` was warned of only when the device was there).
                if let (false, Some(asked)) = (matches!(probed, Some(Ok(_))), d.sample_rate) {
                    warnings.extend(below_model_rate(
                        format!("device '{}', {spec}, its sample_rate", d.name),
                        asked,
                    ));
                }
                // The channels its machines can have: those it opens with, or, not opened now, those the file asks
                // for, as the device opens with exactly these or not at all (review33: a reload that set
                // `channels = 1` under a machine on channel 1 of a device this daemon holds was applied "at the
                // next restart", which then exited 78).
                let channels = match &probed {
                    Some(Ok((sc, _))) => Some((
                        sc.channels,
                        format!("opens with {} channel(s)", sc.channels),
                    )),
                    _ => d
                        .channels
                        .map(|n| (n, format!("is set to `channels = {n}`"))),
                };
                for (m, (_, has)) in users.iter().filter_map(|m| {
                    channels
                        .as_ref()
                        .filter(|(n, _)| m.channel >= *n)
                        .map(|c| (m, c))
                }) {
                    problems.push(format!(
                        "machine '{}': channel {} does not exist: device '{}' {has} (channels count from 0; set \
                         `channels` on the device or the machine's `channel`)",
                        m.name, m.channel, d.name
                    ));
                }
                match probed {
                    // An open that blocks (an ALSA plugin waiting on a network, Bluetooth or a FIFO): as a
                    // device not there, waited for by `run`, not a check that never ends.
                    None => warnings.push(waited_for(
                        format!(
                            " ({spec}): it did not answer within {} s (an ALSA plugin that waits on something?)",
                            crate::capture::PROBE_WAIT.as_secs()
                        ),
                        "answers",
                    )),
                    // Not a mistake in the file: a microphone unplugged, or not yet there at boot. Refusing to
                    // start (exit 78, which the service does not restart) would leave the machine unwatched
                    // until someone came; `run` starts, reports NO_AUDIO and opens it when it appears.
                    Some(Err(ProbeError::Find(e))) if e.is_retryable() => {
                        warnings.push(waited_for(format!(": {e}"), "appears"))
                    }
                    Some(Err(ProbeError::Find(e))) => problems.push(format!("device '{}': {e}", d.name)),
                    // The daemon holds it open (a hw: device cannot be queried while in use): the same hardware,
                    // whatever else of its settings the new file changes (a larger buffer_frames, as the overrun
                    // warning advises, applies at the next start).
                    Some(Err(ProbeError::Choose(e)))
                        if running.is_some_and(|r| {
                            r.cfg.devices.iter().any(|h| {
                                h.name == d.name && h.source == d.source && h.device == d.device
                            })
                        }) =>
                    {
                        warnings.push(format!(
                            "device '{}' ({spec}): {e:#} (it is in use by this daemon: its channels are checked \
                             again at the next start)",
                            d.name
                        ))
                    }
                    // The same as a device not found: `default` with no sound card (ALSA always has a `default`
                    // PCM), or a device busy with another program.
                    Some(Err(ProbeError::Choose(e))) if e.is_retryable() => {
                        warnings.push(waited_for(format!(" ({spec}): {e}"), "answers"))
                    }
                    // ALSA's `default` routed to a sound server (a desktop image's PipeWire or PulseAudio) that a
                    // system service cannot reach.
                    Some(Err(ProbeError::Choose(e))) if e.is_backend() && spec == "default" => {
                        problems.push(format!(
                            "device '{}' ({spec}): {e}: ALSA's `default` here may go through a sound server \
                             (PipeWire, PulseAudio) that does not answer, and a system service cannot reach a \
                             desktop session's server: name the card instead, as `sonitor devices` lists it (e.g. \
                             device = \"alsa:plughw:CARD=…,DEV=0\")",
                            d.name
                        ))
                    }
                    Some(Err(ProbeError::Choose(e))) => {
                        problems.push(format!("device '{}' ({spec}): {e}", d.name))
                    }
                    Some(Ok((sc, _))) => warnings.extend(below_model_rate(
                        format!("device '{}', {spec}", d.name),
                        sc.sample_rate,
                    )),
                }
            }
        }
    }
    Checked {
        cfg: Some(cfg),
        bundles,
        embedders,
        problems,
        warnings,
    }
}

/// `sonitor validate`: prints each problem; returns the exit status (0 or 78).
pub fn validate(config_path: &Path) -> i32 {
    let checked = check_leaving_no_trace(config_path);
    if checked.problems.is_empty() {
        if let Some(cfg) = checked.cfg {
            println!(
                "{}: OK: {} machine(s) on {} input(s), {} bundle(s), topics under {}",
                config_path.display(),
                cfg.machines.len(),
                cfg.devices.len(),
                checked.bundles.len(),
                cfg.topic_base()
            );
            let saved = crate::detect::saved_state_warning(&cfg.saved_path());
            for w in checked.warnings.into_iter().chain(saved) {
                println!("{}: warning: {w}", config_path.display());
            }
            let holder = crate::state_lock::holder(&cfg.state_dir);
            if let Some((h, theirs)) = holder
                .as_ref()
                .and_then(|h| Some((h, h.runs_another_file(config_path)?)))
            {
                println!(
                    "{}: note: a {} runs on its state directory {} now with another file, {}: a reload re-reads \
                     that one; this file takes effect there only if the daemon is restarted with it",
                    config_path.display(),
                    crate::state_lock::holder_named(h.pid),
                    cfg.state_dir.display(),
                    theirs.display()
                );
            } else if let Some(h) = holder {
                println!(
                    "{}: note: a {} runs on its state directory {} now: this file takes effect there when \
                     it reloads (SIGHUP, `systemctl reload sonitor`: thresholds, debounce, enabled flags, models) or restarts",
                    config_path.display(),
                    crate::state_lock::holder_named(h.pid),
                    cfg.state_dir.display()
                );
            }
        }
        0
    } else {
        let problems = checked.problems;
        eprintln!("{}: {} problem(s):", config_path.display(), problems.len());
        for p in &problems {
            eprintln!("  - {p}");
        }
        crate::config::EXIT_CONFIG
    }
}

/// A machine's idle settings that take no effect: an `idle_below_dbfs` at or below the level under which a window
/// has no signal (never judged whatever it says), an `idle_hysteresis_db` without an `idle_below_dbfs`.
fn idle_settings_that_do_nothing(m: &MachineConfig) -> Vec<String> {
    let d = &m.detector;
    let floor = crate::window::NO_SIGNAL_BELOW_DBFS;
    let mut w = Vec::new();
    match d.idle_below_dbfs {
        Some(level) if level <= floor && level > -200.0 => w.push(format!(
            "machine '{}': idle_below_dbfs ({level}) is at or below {floor} dBFS, where a window has no signal and \
             is never judged anyway: the machine never counts as not running; set it between the levels \
             sonitor_window_level_dbfs shows with the machine running and standing",
            m.name
        )),
        None if d.idle_hysteresis_db != crate::detect::DEFAULT_IDLE_HYSTERESIS_DB => w.push(format!(
            "machine '{}': idle_hysteresis_db is set but idle_below_dbfs is not: it does nothing",
            m.name
        )),
        _ => {}
    }
    w
}

/// The files the daemon reads that its service's user could not, checked when this runs as root (`sudo sonitor
/// validate`, as the docs say to run it), which reads them whatever their mode: it said OK of a bundle or a
/// configuration that the service then refused (review23). The service's user is the owner of the state directory
/// (systemd's `StateDirectory=` hands it to that user at the first start; before it, there is none to ask). Its
/// rights are read from the mode bits: the owner's, the group's where the file's group is the state directory's,
/// else the others'. A path inside the state directory is walked from there down (systemd's
/// `/var/lib/private` is closed to others, and opened for the service alone). Warnings: groups beyond the state
/// directory's (the unit's `audio`) are not known here.
#[cfg(unix)]
fn unreadable_to_the_service(
    cfg: &Config,
    config_path: &Path,
    bundles: &BTreeMap<PathBuf, Bundle>,
) -> Vec<String> {
    use std::os::unix::fs::MetadataExt as _;
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Vec::new();
    }
    let Some(state) = std::fs::canonicalize(&cfg.state_dir).ok() else {
        return Vec::new();
    };
    let Ok(owner) = std::fs::metadata(&state) else {
        return Vec::new();
    };
    let (uid, gid) = (owner.uid(), owner.gid());
    if uid == 0 {
        return Vec::new();
    }
    // Whether the service's user has `want` (4 read, 1 enter) on `m`, as its mode says.
    let may = |m: &std::fs::Metadata, want: u32| {
        let mode = m.mode();
        let bits = if m.uid() == uid {
            mode >> 6
        } else if m.gid() == gid {
            mode >> 3
        } else {
            mode
        };
        bits & want == want
    };
    // The first component of `path` that bars the service's user: a folder it may not enter, or the path itself
    // it may not read (and, a folder, list and enter); with its mode, and whether it is the path itself.
    let barred = |path: &Path, folder: bool| -> Option<(PathBuf, u32, bool)> {
        let path = std::fs::canonicalize(path).ok()?;
        let start = if path.starts_with(&state) {
            state.as_path()
        } else {
            Path::new("/")
        };
        let inner: Vec<&Path> = path
            .ancestors()
            .take_while(|a| a.starts_with(start))
            .collect();
        for a in inner.iter().rev() {
            let m = std::fs::metadata(a).ok()?;
            let want = match (*a == path, folder) {
                (true, true) => 5,
                (true, false) => 4,
                (false, _) => 1,
            };
            if !may(&m, want) {
                return Some((a.to_path_buf(), m.mode() & 0o7777, *a == path));
            }
        }
        None
    };
    let mut files: Vec<(String, PathBuf, bool)> =
        vec![("the configuration".into(), config_path.to_path_buf(), false)];
    let mut bundles_seen = std::collections::BTreeSet::new();
    for m in &cfg.machines {
        if bundles_seen.insert(m.bundle.clone()) {
            let at = format!("the bundle of machine '{}'", m.name);
            files.push((at.clone(), m.bundle.clone(), true));
            // The graph the manifest names (a bundle refused for another reason: the default name).
            let onnx = bundles.get(&m.bundle).map_or_else(
                || m.bundle.join(sonitor_core::bundle::DEFAULT_ONNX_FILE),
                |b| b.onnx_path.clone(),
            );
            files.push((
                at.clone(),
                m.bundle.join(sonitor_core::bundle::MANIFEST_FILE),
                false,
            ));
            files.push((at.clone(), onnx, false));
        }
    }
    for d in &cfg.devices {
        if let (SourceKind::File, Some(p)) = (d.source, &d.path) {
            files.push((format!("device '{}'", d.name), p.clone(), false));
        }
    }
    if cfg.mqtt.enabled {
        let tls = &cfg.mqtt.tls;
        for (key, p) in [
            ("mqtt.password_file", &cfg.mqtt.password_file),
            ("mqtt.tls.ca_file", &tls.ca_file),
            ("mqtt.tls.client_cert", &tls.client_cert),
            ("mqtt.tls.client_key", &tls.client_key),
        ] {
            if let Some(p) = p {
                files.push((key.to_string(), p.clone(), false));
            }
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    files
        .into_iter()
        .filter_map(|(what, path, folder)| {
            let (at, mode, itself) = barred(&path, folder)?;
            seen.insert(at.clone()).then(|| {
                let secret = matches!(what.as_str(), "mqtt.password_file" | "mqtt.tls.client_key");
                let fix = if at.is_dir() && itself {
                    // The files inside a bundle folder are as closed as it, most often: one round, not two
                    // (review28). Not for a folder on the way, which may be a home directory.
                    format!("`sudo chmod -R a+rX {}`, or chown it to that user", at.display())
                } else if at.is_dir() {
                    format!("`sudo chmod a+rX {}`, or chown it to that user", at.display())
                } else if secret {
                    // A secret is given to the service's user, not opened to everyone.
                    format!("`sudo chown {uid} {}` (a secret: not chmod a+r)", at.display())
                } else {
                    format!("`sudo chmod a+r {}`, or chown it to that user", at.display())
                };
                format!(
                    "{what} {}: the service's user (uid {uid}, the owner of state_dir) may not read {}, as its \
                     mode says ({mode:04o}, owner uid {}): the service would refuse it where this check, as root, \
                     reads it; {fix}",
                    path.display(),
                    if itself {
                        "it".to_string()
                    } else {
                        format!("the folder {} on its way", at.display())
                    },
                    std::fs::metadata(&at).map(|m| m.uid()).unwrap_or_default(),
                )
            })
        })
        .collect()
}

#[cfg(not(unix))]
fn unreadable_to_the_service(
    _cfg: &Config,
    _config_path: &Path,
    _bundles: &BTreeMap<PathBuf, Bundle>,
) -> Vec<String> {
    Vec::new()
}

#[cfg(test)]
mod threshold_tests {
    use super::*;
    use crate::config::DetectorConfig;

    /// An idle level at or below the no-signal floor, or a hysteresis without an idle level, is warned of: both
    /// take no effect (review24 found them accepted silently).
    #[test]
    fn idle_settings_that_take_no_effect_are_warned_of() {
        let mut m = machine(None);
        assert!(idle_settings_that_do_nothing(&m).is_empty());
        m.detector.idle_hysteresis_db = 6.0;
        let w = idle_settings_that_do_nothing(&m).join("\n");
        assert!(
            w.contains("idle_hysteresis_db is set but idle_below_dbfs is not"),
            "{w}"
        );
        m.detector.idle_below_dbfs = Some(-130.0);
        let w = idle_settings_that_do_nothing(&m).join("\n");
        assert!(
            w.contains("idle_below_dbfs (-130) is at or below -120 dBFS"),
            "{w}"
        );
        m.detector.idle_below_dbfs = Some(-50.0);
        assert!(idle_settings_that_do_nothing(&m).is_empty());
    }

    fn machine(threshold: Option<f64>) -> MachineConfig {
        MachineConfig {
            name: "pump-1".into(),
            device: "mic".into(),
            channel: 0,
            bundle: PathBuf::from("b"),
            section: "pump/section_00".into(),
            enabled: true,
            detector: DetectorConfig {
                threshold,
                ..Default::default()
            },
        }
    }

    fn calibrated(value: f64, quantile: f64) -> sonitor_core::bundle::Threshold {
        sonitor_core::bundle::Threshold {
            value,
            method: "gamma-quantile".into(),
            quantile,
            gamma_shape: None,
            gamma_scale: None,
        }
    }

    /// A threshold ten times or more away from the calibrated one (an example file's 0.35 on a bundle calibrated at
    /// 0.009), or a bundle's own calibrated at DCASE's 0.9, is warned of; a threshold of the same order, or a bundle
    /// calibrated at 0.99, is not.
    #[test]
    fn a_threshold_far_from_the_calibrated_one_or_a_loose_quantile_is_warned_of() {
        let far = threshold_far_from_calibrated(&machine(Some(0.5)), &calibrated(0.009424, 0.99))
            .unwrap();
        assert!(
            far.contains("threshold 0.5 is 53× away") && far.contains("it may never alarm"),
            "{far}"
        );
        let low =
            threshold_far_from_calibrated(&machine(Some(0.001)), &calibrated(0.05, 0.99)).unwrap();
        assert!(
            low.contains("50× away") && low.contains("keep its alarm on"),
            "{low}"
        );
        assert_eq!(
            threshold_far_from_calibrated(&machine(Some(0.06)), &calibrated(0.009, 0.99)),
            None
        );
        // A mistyped exponent (review29: `threshold/set 1e-300` took, without a word): the numbers in a few
        // characters, not 300 digits.
        let typo = far_from_calibrated(1e-300, &calibrated(0.05, 0.99)).unwrap();
        assert!(
            typo.starts_with(
                "threshold 1e-300 is 5e298× away from its section's calibrated threshold 0.05 "
            ) && typo.contains("keep its alarm on"),
            "{typo}"
        );
        assert!(
            matches!(how_far(0.5, 0.05), Some((r, true)) if (r - 10.0).abs() < 1e-9),
            "{:?}",
            how_far(0.5, 0.05)
        );
        assert_eq!(how_far(0.051, 0.5), None);
        let loose =
            threshold_far_from_calibrated(&machine(None), &calibrated(0.0078, 0.9)).unwrap();
        assert!(
            loose.contains("the 0.9 quantile") && loose.contains("once in 10 windows"),
            "{loose}"
        );
        assert!(loose.contains("--quantile 0.99"), "{loose}");
        assert_eq!(
            threshold_far_from_calibrated(&machine(None), &calibrated(0.05, 0.99)),
            None
        );
        // Its own threshold set: the bundle's quantile does not matter.
        assert_eq!(
            threshold_far_from_calibrated(&machine(Some(0.01)), &calibrated(0.0078, 0.9)),
            None
        );
    }
}
