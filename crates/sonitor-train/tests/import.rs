//! `sonitor-train import`: long recordings in any WAV format become a data set `fit` trains on; numbering goes on
//! across runs, nothing is ever replaced, silence and short tails are left out, bad arguments and broken
//! recordings are refused before anything is written.

use std::path::{Path, PathBuf};

use sonitor_core::audio::ChannelSelect;
use sonitor_core::dcase::{self, Condition, Domain, Split};
use sonitor_train::import::{import, ImportArgs};
use sonitor_train::loss::LossKind;
use sonitor_train::train::fit;

#[path = "support/data.rs"]
mod data;

/// A 16-bit recording of `seconds` at `rate` with `channels`: a tone of `hz` on every channel, silent between
/// the seconds `silence.0` and `silence.1`.
fn recording(
    path: &Path,
    rate: u32,
    channels: u16,
    seconds: f64,
    hz: f64,
    silence: (f64, f64),
) -> PathBuf {
    let spec = hound::WavSpec {
        channels,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for i in 0..(seconds * f64::from(rate)) as usize {
        let t = i as f64 / f64::from(rate);
        let v = if (silence.0..silence.1).contains(&t) {
            0
        } else {
            ((t * hz * std::f64::consts::TAU).sin() * 8000.0) as i16
        };
        for _ in 0..channels {
            w.write_sample(v).unwrap();
        }
    }
    w.finalize().unwrap();
    path.to_path_buf()
}

/// `dir/name`: a 16 kHz mono tone of `hz`, `seconds` long.
fn tone(dir: &Path, name: &str, seconds: f64, hz: f64) -> PathBuf {
    recording(&dir.join(name), 16_000, 1, seconds, hz, (0.0, 0.0))
}

fn args(data: &Path, files: Vec<PathBuf>) -> ImportArgs {
    ImportArgs {
        data: data.to_path_buf(),
        machine_type: "pump".into(),
        section: 0,
        attrs: "load_50".into(),
        domain: "source".into(),
        split: "train".into(),
        condition: "normal".into(),
        clip_seconds: 1.0,
        channel: None,
        files,
    }
}

fn names(paths: &[PathBuf]) -> Vec<String> {
    paths
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn recordings_become_a_data_set_that_fit_trains_on() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    // 44.1 kHz stereo, 3.5 s: three 1-s clips, resampled and mixed to 16 kHz mono; 0.5 s left out.
    let a = recording(&d.path().join("a.wav"), 44_100, 2, 3.5, 300.0, (0.0, 0.0));
    let r = import(&args(&data, vec![a.clone()])).unwrap();
    assert_eq!(
        names(&r.clips),
        [0, 1, 2].map(|i| format!("section_00_source_train_normal_000{i}_load_50.wav"))
    );
    assert!((r.left_out_seconds - 0.5).abs() < 1e-3, "{r:?}");
    // Its channels mixed without --channel: one warning for the recording, as `fit` warns (it was silent).
    assert_eq!(r.warnings.len(), 1, "{r:?}");
    assert!(
        r.warnings[0].contains("a.wav: its 2 channels are mixed")
            && r.warnings[0].contains("--channel N"),
        "{r:?}"
    );
    // Recorded at 8 kHz, below the clips' rate: upsampled, with a warning (the daemon warns of the same file).
    let low = recording(&d.path().join("low.wav"), 8_000, 1, 1.0, 300.0, (0.0, 0.0));
    let r8 = import(&args(&d.path().join("data8"), vec![low])).unwrap();
    assert_eq!(r8.clips.len(), 1, "{r8:?}");
    assert_eq!(r8.warnings.len(), 1, "{r8:?}");
    assert!(
        r8.warnings[0].contains("low.wav: recorded at 8000 Hz, below the clips' 16000 Hz")
            && r8.warnings[0].contains("false alarms"),
        "{r8:?}"
    );
    // Nothing written (a recording shorter than a clip): `run` fails (exit 1) saying so, not exit 0.
    let short = recording(
        &d.path().join("short.wav"),
        16_000,
        1,
        0.5,
        300.0,
        (0.0, 0.0),
    );
    let e =
        sonitor_train::import::run(&args(&d.path().join("data_short"), vec![short])).unwrap_err();
    assert!(
        format!("{e:#}").contains("no clip was written: every recording is shorter than one clip"),
        "{e:#}"
    );
    // Read block by block, the clips are what reading the whole recording gives (to 16-bit rounding).
    let whole = sonitor_core::audio::load_mono(&a, ChannelSelect::Mix, 16_000).unwrap();
    for (k, c) in r.clips.iter().enumerate() {
        let (info, clip) = sonitor_core::audio::read_wav(c, ChannelSelect::Mix).unwrap();
        assert_eq!(
            (info.sample_rate, info.channels, info.frames),
            (16_000, 1, 16_000)
        );
        let max = clip
            .iter()
            .zip(&whole[k * 16_000..])
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(max <= 1.0 / 32768.0, "clip {k}: {max}");
    }

    // The same recording again would be learned twice: refused, and named twice in one run too.
    let e = format!("{:#}", import(&args(&data, vec![a.clone()])).unwrap_err());
    assert!(
        e.contains("a.wav: already imported") && !e.contains("part-way"),
        "{e}"
    );
    // A second recording of the same condition goes on from 0003; its silent second is left out.
    let b = recording(&d.path().join("b.wav"), 16_000, 1, 3.0, 320.0, (1.0, 2.0));
    let r = import(&args(&data, vec![b.clone()])).unwrap();
    assert_eq!(
        names(&r.clips),
        [3, 4].map(|i| format!("section_00_source_train_normal_000{i}_load_50.wav"))
    );
    assert!(r.warnings.is_empty(), "a mono recording: {r:?}");
    assert_eq!(r.silent, 1);
    // Another condition, in the target domain, numbers its own clips; then two normal and two faulty test clips.
    let mut t = args(&data, vec![tone(d.path(), "c.wav", 3.0, 520.0)]);
    t.domain = "target".into();
    t.attrs = "load_90".into();
    assert_eq!(
        names(&import(&t).unwrap().clips)[0],
        "section_00_target_train_normal_0000_load_90.wav"
    );
    let mut test = args(&data, vec![tone(d.path(), "n.wav", 2.0, 310.0)]);
    test.split = "test".into();
    assert_eq!(import(&test).unwrap().clips.len(), 2);
    test.condition = "anomaly".into();
    test.files = vec![tone(d.path(), "f.wav", 2.0, 1900.0)];
    assert_eq!(
        names(&import(&test).unwrap().clips)[1],
        "section_00_source_test_anomaly_0001_load_50.wav"
    );

    // The data set reads as DCASE, with the labels the names give, and says where each clip came from.
    let set = dcase::scan(&data).unwrap();
    let count = |split: Split, domain: Domain, condition: Condition| {
        set.clips
            .iter()
            .filter(|c| {
                c.split == split
                    && c.name.domain == Some(domain)
                    && c.name.condition == Some(condition)
            })
            .count()
    };
    assert_eq!(count(Split::Train, Domain::Source, Condition::Normal), 5);
    assert_eq!(count(Split::Train, Domain::Target, Condition::Normal), 3);
    assert_eq!(count(Split::Test, Domain::Source, Condition::Anomaly), 2);
    let log = std::fs::read_to_string(data.join("pump/imported.csv")).unwrap();
    assert!(
        log.starts_with("file_name,recording,start_seconds,seconds\n"),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "pump/train/section_00_source_train_normal_0004_load_50.wav,{},2.000,1.000",
            d.path().join("b.wav").display()
        )),
        "{log}"
    );

    // An import of b that was stopped after its first clip (its log line written, the next not): the refusal says
    // how far it got, not only "already imported".
    let log_path = data.join("pump/imported.csv");
    let cut: String = log
        .lines()
        .filter(|l| !l.starts_with("pump/train/section_00_source_train_normal_0004_load_50.wav,"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&log_path, cut).unwrap();
    let e = format!("{:#}", import(&args(&data, vec![b.clone()])).unwrap_err());
    assert!(
        e.contains("b.wav: already imported")
            && e.contains("1 clip(s) up to 1 s of its 3 s: an import stopped part-way"),
        "{e}"
    );
    std::fs::write(&log_path, &log).unwrap();
    // Not into a set whose `synth` was stopped: the run that finishes it replaces its clips.
    std::fs::write(data.join("synth.json"), r#"{"complete": false}"#).unwrap();
    let c = recording(&d.path().join("c.wav"), 16_000, 1, 2.0, 330.0, (0.0, 0.0));
    let e = format!("{:#}", import(&args(&data, vec![c])).unwrap_err());
    assert!(e.contains("interrupted run"), "{e}");
    std::fs::remove_file(data.join("synth.json")).unwrap();

    // fit trains on it (the tiny network on 1-s clips) and writes a bundle for the section.
    let out = d.path().join("bundle");
    let mut o = data::options(&data, &out, LossKind::SubclusterAdacos, 1);
    o.kmeans = 2;
    fit(&o).unwrap();
    let bundle = sonitor_core::bundle::Bundle::load(&out).unwrap();
    assert!(bundle.section("pump", 0).is_some());
}

#[test]
fn bad_arguments_and_broken_recordings_write_nothing() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let good = tone(d.path(), "good.wav", 2.0, 300.0);
    let broken = d.path().join("broken.wav");
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(&broken, &bytes[..bytes.len() / 2]).unwrap();
    let err = |a: ImportArgs| format!("{:#}", import(&a).unwrap_err());

    // A recording cut short is found before the good one's clips are written.
    let e = err(args(&data, vec![good.clone(), broken.clone()]));
    assert!(e.contains("broken.wav"), "{e}");
    let mut a = args(&data, vec![good.clone()]);
    a.condition = "anomaly".into();
    assert!(err(a).contains("train/ holds normal clips only"));
    let mut a = args(&data, vec![good.clone()]);
    a.machine_type = "pump/1".into();
    assert!(err(a).contains("--type 'pump/1'"));
    let mut a = args(&data, vec![good.clone()]);
    a.attrs = "load 50".into();
    assert!(err(a).contains("--attrs 'load 50'"));
    // A key without its value: not pairs.
    for attrs in ["load", "load_50_speed"] {
        let mut a = args(&data, vec![good.clone()]);
        a.attrs = attrs.into();
        let e = err(a);
        assert!(
            e.contains(&format!("--attrs '{attrs}': key_value pairs")) && e.contains("odd number"),
            "{e}"
        );
    }
    let mut a = args(&data, vec![good.clone()]);
    a.clip_seconds = 0.01;
    assert!(err(a).contains("--clip-seconds 0.01"));
    let mut a = args(&data, vec![good.clone()]);
    a.channel = Some(1);
    assert!(err(a).contains("--channel 1, but the recording has 1 channel(s)"));
    let e = err(args(&data, vec![good.clone(), good.clone()]));
    assert!(e.contains("good.wav: named twice"), "{e}");
    let e = err(args(&data, vec![d.path().join("missing.wav")]));
    assert!(e.contains("missing.wav"), "{e}");
    // A FIFO named like a recording is refused, not waited on for a writer that never comes.
    let fifo = d.path().join("fifo.wav");
    let name = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
    let e = err(args(&data, vec![fifo]));
    assert!(
        e.contains("fifo.wav") && e.contains("not a regular file"),
        "{e}"
    );
    assert!(
        !data.join("pump/train").exists()
            || std::fs::read_dir(data.join("pump/train"))
                .unwrap()
                .next()
                .is_none()
    );
}

/// A float recording too quiet for 16 bits (a tone at 1e-6 of full scale) gives clips of zeros once written: left
/// out as silence, not written as training data.
#[test]
fn a_recording_below_sixteen_bits_is_left_out_as_silence() {
    let d = tempfile::tempdir().unwrap();
    let path = float_recording(&d.path().join("quiet.wav"), 32_000, |i| {
        (i as f32 * 0.17).sin() * 1e-6
    });
    let data = d.path().join("data");
    let mut a = args(&data, vec![path]);
    a.clip_seconds = 1.0;
    let r = import(&a).unwrap();
    assert!(r.clips.is_empty(), "{:?}", r.clips);
    assert_eq!(r.silent, 2);
}

/// `path`: a 16 kHz mono 32-bit float recording of `n` samples, sample `i` being `f(i)`.
fn float_recording(path: &Path, n: usize, f: impl Fn(usize) -> f32) -> PathBuf {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 32,
        sample_format: hound::SampleFormat::Float,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for i in 0..n {
        w.write_sample(f(i)).unwrap();
    }
    w.finalize().unwrap();
    path.to_path_buf()
}

/// A float recording whose second second has impacts beyond full scale (peak 1.85, a float recorder's headroom):
/// that clip is written as 32-bit float with its samples as recorded (16 bits clipped every peak to ±1, without a
/// word), the first, within full scale, as 16-bit PCM as before.
#[test]
fn a_clip_beyond_full_scale_is_written_as_float_not_clipped() {
    let d = tempfile::tempdir().unwrap();
    let path = float_recording(&d.path().join("loud.wav"), 32_000, |i| {
        let hum = (i as f32 * 0.05).sin() * 0.5;
        if i >= 16_000 && i % 4_000 < 40 {
            hum.signum() * 1.85
        } else {
            hum
        }
    });
    let data = d.path().join("data");
    let r = import(&args(&data, vec![path])).unwrap();
    assert_eq!(r.clips.len(), 2, "{:?}", r.clips);
    assert_eq!(r.float_clips, 1);
    assert!((r.float_peak - 1.85).abs() < 1e-6, "{}", r.float_peak);
    let first = hound::WavReader::open(&r.clips[0]).unwrap();
    assert_eq!(first.spec().sample_format, hound::SampleFormat::Int);
    assert_eq!(first.spec().bits_per_sample, 16);
    let mut second = hound::WavReader::open(&r.clips[1]).unwrap();
    assert_eq!(second.spec().sample_format, hound::SampleFormat::Float);
    let samples: Vec<f32> = second.samples::<f32>().map(Result::unwrap).collect();
    assert_eq!(samples.len(), 16_000);
    assert_eq!(samples.iter().filter(|v| v.abs() > 1.0).count(), 4 * 40);
    // What fit reads back is what was recorded.
    let back = sonitor_core::audio::load_mono(
        &r.clips[1],
        sonitor_core::audio::ChannelSelect::Mix,
        16_000,
    )
    .unwrap();
    assert!(back
        .iter()
        .any(|&v| (v - 1.85).abs() < 1e-6 || (v + 1.85).abs() < 1e-6));
}
