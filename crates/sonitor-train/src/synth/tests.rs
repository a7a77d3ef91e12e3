//! Tests of the generator on tiny data sets (synthetic background: they never depend on lincity-ng-data).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use sonitor_core::audio::{read_wav, ChannelSelect};
use sonitor_core::dcase::{self, Condition, Domain, Split};

use super::*;

fn tiny(seed: u64) -> SynthConfig {
    SynthConfig {
        clip_seconds: 0.5,
        train_source: 4,
        train_target: 2,
        test_per_domain: 3,
        types: vec![MachineType::Fan, MachineType::Press],
        background: BackgroundChoice::Synthetic,
        ..SynthConfig::new(seed)
    }
}

/// All files under `root` (relative path → bytes).
fn snapshot(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().to_string();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

#[test]
fn layout_scans_and_every_type_has_both_domains_and_conditions() {
    let d = tempfile::tempdir().unwrap();
    let cfg = tiny(7);
    let s = generate(&cfg, d.path()).unwrap();
    assert_eq!(s.clips, 2 * (4 + 2 + 4 * 3));
    let ds = dcase::scan(d.path()).unwrap();
    assert_eq!(ds.clips.len(), s.clips);
    assert_eq!(ds.machine_types(), vec!["fan", "press"]);
    assert_eq!(ds.sections(), vec![("fan".into(), 0), ("press".into(), 0)]);
    for t in ["fan", "press"] {
        let of = |split, dom, cond| {
            ds.clips
                .iter()
                .filter(|c| {
                    c.machine_type == t
                        && c.split == split
                        && c.name.domain == Some(dom)
                        && c.name.condition == Some(cond)
                })
                .count()
        };
        assert_eq!(of(Split::Train, Domain::Source, Condition::Normal), 4);
        assert_eq!(of(Split::Train, Domain::Target, Condition::Normal), 2);
        assert_eq!(of(Split::Train, Domain::Source, Condition::Anomaly), 0);
        for dom in [Domain::Source, Domain::Target] {
            assert_eq!(of(Split::Test, dom, Condition::Normal), 3);
            assert_eq!(of(Split::Test, dom, Condition::Anomaly), 3);
        }
    }
    // Numbering from 0000 per (domain, split, condition).
    let first = ds
        .clips
        .iter()
        .find(|c| {
            c.machine_type == "fan"
                && c.split == Split::Train
                && c.name.domain == Some(Domain::Target)
        })
        .unwrap();
    assert_eq!(first.name.index, 0);
    // 16 kHz mono 16-bit, the right length, no clipping, level fixed.
    for c in &ds.clips {
        let (info, x) = read_wav(&c.path, ChannelSelect::Mix).unwrap();
        assert_eq!(
            (info.sample_rate, info.channels, info.bits_per_sample),
            (16_000, 1, 16)
        );
        assert_eq!(x.len(), 8000);
        let peak = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(peak <= 0.91, "{}: peak {peak}", c.path.display());
        let rms = (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt();
        assert!(rms > 0.02 && rms < 0.1, "{}: rms {rms}", c.path.display());
    }
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.path().join("synth.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["generator"], GENERATOR);
    assert_eq!(manifest["complete"], true);
    assert_eq!(manifest["seed"], 7);
    assert_eq!(manifest["background"]["kind"], "synthetic");
}

#[test]
fn attribute_csv_and_ground_truth_match_the_files() {
    let d = tempfile::tempdir().unwrap();
    generate(&tiny(3), d.path()).unwrap();
    let ds = dcase::scan(d.path()).unwrap();
    let files: BTreeSet<String> = ds
        .clips
        .iter()
        .map(|c| {
            c.path
                .strip_prefix(d.path())
                .unwrap()
                .to_string_lossy()
                .to_string()
        })
        .collect();
    // attributes_00.csv: one row per clip, values equal to the name's attribute part.
    for t in ["fan", "press"] {
        let text = std::fs::read_to_string(d.path().join(t).join("attributes_00.csv")).unwrap();
        let mut lines = text.lines();
        let header = lines.next().unwrap();
        let n_attr = if t == "press" { 3 } else { 2 };
        let expect: Vec<String> = std::iter::once("file_name".to_string())
            .chain((1..=n_attr).flat_map(|i| [format!("d{i}p"), format!("d{i}v")]))
            .collect();
        assert_eq!(header, expect.join(","));
        let rows: Vec<&str> = lines.collect();
        assert_eq!(
            rows.len(),
            files
                .iter()
                .filter(|f| f.starts_with(&format!("{t}/")))
                .count()
        );
        for r in rows {
            let f: Vec<&str> = r.split(',').collect();
            assert!(files.contains(f[0]), "{r}");
            assert_eq!(f.len(), 1 + 2 * n_attr);
        }
    }
    for c in &ds.clips {
        assert!(
            !c.attribute_values.is_empty(),
            "{} not in attributes csv",
            c.path.display()
        );
        assert_eq!(c.attribute_key(), c.name.attributes);
    }
    // ground_truth.csv: one row per clip, labels consistent with names.
    let gt = std::fs::read_to_string(d.path().join("ground_truth.csv")).unwrap();
    let mut lines = gt.lines();
    assert_eq!(
        lines.next().unwrap(),
        "file_name,machine_type,section,domain,split,label,fault,severity,snr_db,attributes"
    );
    let mut seen = BTreeSet::new();
    for l in lines {
        let f: Vec<&str> = l.split(',').collect();
        assert_eq!(f.len(), 10, "{l}");
        assert!(files.contains(f[0]), "{l}");
        seen.insert(f[0].to_string());
        let anomaly = f[0].contains("_anomaly_");
        assert_eq!(f[5], if anomaly { "1" } else { "0" });
        let sev: f64 = f[7].parse().unwrap();
        let snr: f64 = f[8].parse().unwrap();
        assert!((-6.0..=6.0).contains(&snr));
        if anomaly {
            assert!(f[6] != "none" && sev > 0.0 && sev <= 1.0, "{l}");
        } else {
            assert_eq!((f[6], sev), ("none", 0.0));
        }
        assert!(f[0].ends_with(&format!("{}.wav", f[9])), "{l}");
    }
    assert_eq!(seen, files);
}

#[test]
fn same_seed_same_bytes_different_seed_different_bytes_any_thread_count() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let mut cfg = tiny(11);
    cfg.jobs = 1;
    generate(&cfg, a.path()).unwrap();
    cfg.jobs = 3;
    generate(&cfg, b.path()).unwrap();
    let (sa, sb) = (snapshot(a.path()), snapshot(b.path()));
    assert_eq!(sa.keys().collect::<Vec<_>>(), sb.keys().collect::<Vec<_>>());
    for (k, v) in &sa {
        assert!(v == &sb[k], "{k} differs between runs with the same seed");
    }
    generate(&tiny(12), c.path()).unwrap();
    let sc = snapshot(c.path());
    let wavs_equal = sa
        .iter()
        .filter(|(k, _)| k.ends_with(".wav"))
        .filter(|(k, v)| sc.get(*k) == Some(v))
        .count();
    assert_eq!(wavs_equal, 0, "a different seed must give different clips");
}

#[test]
fn output_directory_rules() {
    let d = tempfile::tempdir().unwrap();
    // A foreign non-empty directory is refused.
    std::fs::write(d.path().join("notes.txt"), "mine").unwrap();
    let e = generate(&tiny(1), d.path()).unwrap_err().to_string();
    assert!(e.contains("not empty") && e.contains("synth.json"), "{e}");
    assert!(d.path().join("notes.txt").exists());
    // A file in place of the directory.
    let e = generate(&tiny(1), &d.path().join("notes.txt"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a directory"), "{e}");
    // A previous output is replaced, leaving no stale clips.
    let out = d.path().join("set");
    let mut big = tiny(1);
    big.train_source = 6;
    generate(&big, &out).unwrap();
    let small = tiny(1);
    generate(&small, &out).unwrap();
    let ds = dcase::scan(&out).unwrap();
    assert_eq!(ds.clips.len(), 2 * small.clips_per_type());
    // One with clips `import` added is not replaced: they would go with the generator's, their log staying.
    let type_dir = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| e.path().is_dir())
        .unwrap()
        .path();
    std::fs::write(
        type_dir.join("imported.csv"),
        "file_name,recording,start_seconds,seconds\n",
    )
    .unwrap();
    let e = generate(&small, &out).unwrap_err().to_string();
    assert!(
        e.contains("added by `sonitor-train import`") && e.contains("imported.csv"),
        "{e}"
    );
    assert_eq!(
        dcase::scan(&out).unwrap().clips.len(),
        2 * small.clips_per_type()
    );
    std::fs::remove_file(type_dir.join("imported.csv")).unwrap();
    // Nor one with a clip copied in by hand (not in its ground_truth.csv): a rerun deleted it without a word.
    let train = type_dir.join("train");
    let first = std::fs::read_dir(&train)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let copied = train.join("section_00_source_train_normal_0500_x_9.wav");
    std::fs::copy(&first, &copied).unwrap();
    let e = generate(&small, &out).unwrap_err().to_string();
    assert!(
        e.contains("1 clip(s) that `sonitor-train synth` did not write")
            && e.contains("section_00_source_train_normal_0500_x_9.wav"),
        "{e}"
    );
    assert!(copied.exists());
    std::fs::remove_file(&copied).unwrap();
    generate(&small, &out).unwrap();
    // A foreign synth.json is refused.
    let other = d.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("synth.json"), "{\"generator\":\"someone else\"}").unwrap();
    let e = generate(&tiny(1), &other).unwrap_err().to_string();
    assert!(e.contains("not written by this generator"), "{e}");
}

#[test]
fn uncreatable_output_is_a_clear_error() {
    // A regular file where a parent directory should be: fails for every user, root included.
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("plain");
    std::fs::write(&file, "x").unwrap();
    let e = format!("{:#}", generate(&tiny(1), &file.join("set")).unwrap_err());
    assert!(e.contains("cannot create output directory"), "{e}");
}

#[cfg(unix)]
#[test]
fn unwritable_output_is_a_clear_error() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let ro = d.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    let probe = ro.join("probe");
    if std::fs::create_dir(&probe).is_ok() {
        eprintln!("note: running with permissions that ignore mode bits (root?); skipping");
        return;
    }
    let e = format!("{:#}", generate(&tiny(1), &ro.join("set")).unwrap_err());
    assert!(e.contains("cannot create output directory"), "{e}");
    let e = format!("{:#}", generate(&tiny(1), &ro).unwrap_err());
    assert!(
        e.contains("cannot write") && e.contains("synth.json"),
        "{e}"
    );
}

#[test]
fn config_validation_names_the_option() {
    let mut c = tiny(0);
    c.clip_seconds = 0.0;
    assert!(c
        .validate()
        .unwrap_err()
        .to_string()
        .contains("--clip-seconds"));
    let mut c = tiny(0);
    c.difficulty = 2.0;
    assert!(c
        .validate()
        .unwrap_err()
        .to_string()
        .contains("--difficulty"));
    let mut c = tiny(0);
    c.types = vec![MachineType::Fan, MachineType::Fan];
    assert!(c.validate().unwrap_err().to_string().contains("twice"));
}

// --- physics ------------------------------------------------------------------------------------------------

/// Mean power spectrum (Welch, Hann, 1024) of a signal, bins of 15.625 Hz.
fn spectrum(x: &[f32]) -> Vec<f64> {
    let n = 1024;
    let hann: Vec<f64> = (0..n)
        .map(|i| 0.5 - 0.5 * (std::f64::consts::TAU * i as f64 / n as f64).cos())
        .collect();
    let mut acc = vec![0.0; n / 2];
    let mut frames = 0;
    let mut start = 0;
    while start + n <= x.len() {
        let f: Vec<f64> = (0..n).map(|i| x[start + i] as f64 * hann[i]).collect();
        // Plain DFT on the bins (test only; n/2 × n operations per frame is fine at this size).
        for (k, a) in acc.iter_mut().enumerate() {
            let w = std::f64::consts::TAU * k as f64 / n as f64;
            let (mut re, mut im) = (0.0, 0.0);
            for (i, v) in f.iter().enumerate() {
                re += v * (w * i as f64).cos();
                im -= v * (w * i as f64).sin();
            }
            *a += re * re + im * im;
        }
        frames += 1;
        start += n;
    }
    acc.iter().map(|a| a / frames.max(1) as f64).collect()
}

fn band_share(spec: &[f64], lo: f64, hi: f64) -> f64 {
    let total: f64 = spec.iter().sum();
    let band: f64 = spec
        .iter()
        .enumerate()
        .filter(|(k, _)| {
            let f = *k as f64 * 15.625;
            f >= lo && f < hi
        })
        .map(|(_, v)| v)
        .sum();
    band / total
}

fn machine_only(
    t: MachineType,
    fault: Option<faults::Fault>,
    domain: Domain,
    seed: u64,
) -> Vec<f32> {
    let combos = t.combos(domain);
    let mut rng = <ChaCha8Rng as SeedableRng>::seed_from_u64(seed);
    t.render(&combos[0], fault.as_ref(), 16_000, &mut rng)
}

#[test]
fn bearing_outer_race_fault_raises_the_resonance_band() {
    let healthy = spectrum(&machine_only(MachineType::Bearing, None, Domain::Source, 5));
    let f = faults::Fault::new(FaultKind::OuterRace, 0.8, 0.5);
    let faulty = spectrum(&machine_only(
        MachineType::Bearing,
        Some(f),
        Domain::Source,
        5,
    ));
    let (h, b) = (
        band_share(&healthy, 2500.0, 6000.0),
        band_share(&faulty, 2500.0, 6000.0),
    );
    assert!(
        b > 1.5 * h,
        "2.5–6 kHz share: healthy {h:.4}, outer race {b:.4}"
    );
}

#[test]
fn fan_imbalance_raises_the_shaft_component() {
    // fan spd 1000 → 16.7 Hz: bin 1 (15.6 Hz) of the 1024-point spectrum.
    let healthy = spectrum(&machine_only(MachineType::Fan, None, Domain::Source, 9));
    let f = faults::Fault::new(FaultKind::Imbalance, 0.8, 0.5);
    let faulty = spectrum(&machine_only(MachineType::Fan, Some(f), Domain::Source, 9));
    let (h, b) = (
        band_share(&healthy, 10.0, 25.0),
        band_share(&faulty, 10.0, 25.0),
    );
    assert!(
        b > 3.0 * h,
        "shaft band share: healthy {h:.5}, imbalance {b:.5}"
    );
}

#[test]
fn pump_cavitation_adds_high_frequency_energy() {
    let healthy = spectrum(&machine_only(MachineType::Pump, None, Domain::Source, 2));
    let f = faults::Fault::new(FaultKind::Cavitation, 0.8, 0.5);
    let faulty = spectrum(&machine_only(MachineType::Pump, Some(f), Domain::Source, 2));
    let (h, b) = (
        band_share(&healthy, 2000.0, 7000.0),
        band_share(&faulty, 2000.0, 7000.0),
    );
    assert!(
        b > 1.5 * h,
        "2–7 kHz share: healthy {h:.4}, cavitation {b:.4}"
    );
}

#[test]
fn fan_blade_pass_follows_the_attributes() {
    // Source combo 0: 1000 rpm, 5 blades → BPF 83 Hz; target: 1800 rpm, 5 blades → BPF 150 Hz.
    let s = spectrum(&machine_only(MachineType::Fan, None, Domain::Source, 4));
    let t = spectrum(&machine_only(MachineType::Fan, None, Domain::Target, 4));
    let peak_in = |sp: &[f64], lo: f64, hi: f64| band_share(sp, lo, hi);
    assert!(peak_in(&s, 70.0, 100.0) > 5.0 * peak_in(&s, 140.0, 160.0));
    assert!(peak_in(&t, 140.0, 160.0) > 5.0 * peak_in(&t, 70.0, 100.0));
}

#[test]
fn target_attribute_values_lie_outside_the_source_range() {
    for t in MachineType::ALL {
        let src = t.combos(Domain::Source);
        let tgt = t.combos(Domain::Target);
        let shifted = t.attribute_keys().iter().enumerate().any(|(i, _)| {
            let s: BTreeSet<u32> = src.iter().map(|c| c[i].1).collect();
            let (lo, hi) = (*s.first().unwrap(), *s.last().unwrap());
            tgt.iter().all(|c| c[i].1 < lo || c[i].1 > hi)
        });
        assert!(
            shifted,
            "{}: no attribute of the target lies outside the source range",
            t.name()
        );
    }
}

#[test]
fn real_background_loads_when_installed() {
    let dir = Path::new(background::LINCITY_DIR);
    if !dir.is_dir() {
        eprintln!(
            "note: {} absent (lincity-ng-data not installed); skipping",
            dir.display()
        );
        return;
    }
    let bg = background::Background::load(&BackgroundChoice::Dir(dir.to_path_buf())).unwrap();
    match &bg.used {
        BackgroundUsed::Recordings { files, seconds, .. } => {
            assert!(!files.is_empty() && *seconds > 10.0);
            assert!(files.iter().all(|f| background::INDUSTRIAL_PREFIXES
                .iter()
                .any(|p| f.starts_with(p))));
        }
        other => panic!("expected recordings, got {other:?}"),
    }
    let mut rng = <ChaCha8Rng as SeedableRng>::seed_from_u64(1);
    let x = bg.render(16_000, &mut rng);
    assert!((dsp::rms(&x) - 1.0).abs() < 1e-3);
    // The broadband floor fills the band the 11 kHz recordings lack.
    assert!(band_share(&spectrum(&x), 5800.0, 8000.0) > 1e-4);
}

/// Diagnostic (run with `--ignored --nocapture`): for every fault kind, how far (in dB) the mean log-mel of
/// the machine alone moves at severities 0.3 and 1, at the most affected mel bands.
#[test]
#[ignore]
fn fault_visibility_report() {
    use sonitor_core::features::{FeatureExtractor, FeatureParams};
    let mut fx = FeatureExtractor::new(FeatureParams::default()).unwrap();
    let mut mean_mel = |x: &[f32]| -> Vec<f64> {
        let mut fr = Vec::new();
        let n = fx.log_mel_frames(x, &mut fr);
        let mut m = vec![0.0; 128];
        for row in fr.chunks_exact(128) {
            for (a, b) in m.iter_mut().zip(row) {
                *a += *b as f64 / n as f64;
            }
        }
        m
    };
    for t in MachineType::ALL {
        let avg =
            |fault: Option<faults::Fault>, mm: &mut dyn FnMut(&[f32]) -> Vec<f64>| -> Vec<f64> {
                let mut acc = vec![0.0; 128];
                for seed in 0..6 {
                    let combos = t.combos(Domain::Source);
                    let mut rng = <ChaCha8Rng as SeedableRng>::seed_from_u64(seed);
                    let x = t.render(
                        &combos[seed as usize % combos.len()],
                        fault.as_ref(),
                        48_000,
                        &mut rng,
                    );
                    for (a, b) in acc.iter_mut().zip(mm(&x)) {
                        *a += b / 6.0;
                    }
                }
                acc
            };
        let healthy = avg(None, &mut mean_mel);
        for k in t.faults() {
            let mut line = format!("{:<8} {:<14}", t.name(), k.name());
            for s in [0.3, 1.0] {
                let f = faults::Fault::new(k, s, DEFAULT_DIFFICULTY);
                let m = avg(Some(f), &mut mean_mel);
                let mut d: Vec<(f64, usize)> = m
                    .iter()
                    .zip(&healthy)
                    .enumerate()
                    .map(|(i, (a, b))| ((a - b) * 8.686, i))
                    .collect();
                d.sort_by(|a, b| b.0.abs().total_cmp(&a.0.abs()));
                let top: Vec<String> = d
                    .iter()
                    .take(4)
                    .map(|(v, i)| format!("b{i}:{v:+.1}"))
                    .collect();
                line += &format!(" | s={s}: {}", top.join(" "));
            }
            println!("{line}");
        }
    }
}
