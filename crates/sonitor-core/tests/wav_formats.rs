//! WAV decoding across encodings, built byte by byte so that each header layout is exactly what the test says.

use std::path::Path;

use sonitor_core::audio::{
    check_wav, load_mono, read_wav, read_wav_info, write_wav_i16, ChannelSelect, WavBlocks,
    WavError,
};

const PCM: u16 = 1;
const FLOAT: u16 = 3;
const EXTENSIBLE: u16 = 0xFFFE;

/// A RIFF/WAVE file. `format` is the tag written in the fmt chunk; for EXTENSIBLE, `sub` is the sub-format tag.
fn wav_bytes(format: u16, sub: u16, channels: u16, rate: u32, bits: u16, data: &[u8]) -> Vec<u8> {
    let block = (u32::from(channels) * u32::from(bits) / 8) as u16;
    let mut fmt = Vec::new();
    fmt.extend_from_slice(&format.to_le_bytes());
    fmt.extend_from_slice(&channels.to_le_bytes());
    fmt.extend_from_slice(&rate.to_le_bytes());
    fmt.extend_from_slice(&(rate * block as u32).to_le_bytes());
    fmt.extend_from_slice(&block.to_le_bytes());
    fmt.extend_from_slice(&bits.to_le_bytes());
    if format == EXTENSIBLE {
        fmt.extend_from_slice(&22u16.to_le_bytes());
        fmt.extend_from_slice(&bits.to_le_bytes()); // valid bits
        let mask: u32 = if channels == 1 {
            0x4
        } else {
            (1 << channels) - 1
        };
        fmt.extend_from_slice(&mask.to_le_bytes());
        // GUID: sub-format tag followed by the fixed KSDATAFORMAT suffix.
        fmt.extend_from_slice(&sub.to_le_bytes());
        fmt.extend_from_slice(&[
            0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xAA, 0x00, 0x38, 0x9B, 0x71,
        ]);
    }
    let mut out = Vec::new();
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&((4 + 8 + fmt.len() + 8 + data.len()) as u32).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&(fmt.len() as u32).to_le_bytes());
    out.extend_from_slice(&fmt);
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
    out
}

/// Samples in [-1, 1) that every format can represent exactly.
const VALUES: [f32; 5] = [0.0, 0.5, -0.5, 0.25, -1.0];

fn encode(bits: u16, float: bool) -> Vec<u8> {
    let mut d = Vec::new();
    for &v in &VALUES {
        match (float, bits) {
            (true, _) => d.extend_from_slice(&v.to_le_bytes()),
            (false, 8) => d.push(((v * 128.0) as i16 + 128) as u8), // 8-bit PCM is unsigned
            (false, 16) => d.extend_from_slice(&((v * 32768.0) as i16).to_le_bytes()),
            (false, 24) => d.extend_from_slice(&((v * 8_388_608.0) as i32).to_le_bytes()[..3]),
            (false, 32) => {
                d.extend_from_slice(&((v as f64 * 2_147_483_648.0) as i32).to_le_bytes())
            }
            _ => unreachable!(),
        }
    }
    d
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn every_pcm_depth_and_float_plain_and_extensible() {
    let dir = tempfile::tempdir().unwrap();
    for (bits, float) in [
        (8, false),
        (16, false),
        (24, false),
        (32, false),
        (32, true),
    ] {
        for extensible in [false, true] {
            let tag = if float { FLOAT } else { PCM };
            let bytes = if extensible {
                wav_bytes(EXTENSIBLE, tag, 1, 16_000, bits, &encode(bits, float))
            } else {
                wav_bytes(tag, 0, 1, 16_000, bits, &encode(bits, float))
            };
            let name = format!("b{bits}_f{float}_x{extensible}.wav");
            let p = write(dir.path(), &name, &bytes);
            let (info, s) =
                read_wav(&p, ChannelSelect::Mix).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                (info.bits_per_sample, info.float, info.frames),
                (bits, float, 5),
                "{name}"
            );
            assert_eq!(s, VALUES.to_vec(), "{name}");
        }
    }
}

#[test]
fn channel_selection_and_mixdown() {
    let dir = tempfile::tempdir().unwrap();
    // Three channels, two frames: (0.5, -0.5, 0.25), (0.25, 0.0, -1.0).
    let frames: [[i16; 3]; 2] = [[16384, -16384, 8192], [8192, 0, -32768]];
    let data: Vec<u8> = frames
        .iter()
        .flatten()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let p = write(
        dir.path(),
        "three.wav",
        &wav_bytes(EXTENSIBLE, PCM, 3, 48_000, 16, &data),
    );
    assert_eq!(
        read_wav(&p, ChannelSelect::Index(0)).unwrap().1,
        vec![0.5, 0.25]
    );
    assert_eq!(
        read_wav(&p, ChannelSelect::Index(2)).unwrap().1,
        vec![0.25, -1.0]
    );
    let mix = read_wav(&p, ChannelSelect::Mix).unwrap().1;
    assert!((mix[0] - 0.25 / 3.0).abs() < 1e-7 && (mix[1] + 0.75 / 3.0).abs() < 1e-7);
    let e = read_wav(&p, ChannelSelect::Index(3)).unwrap_err();
    assert!(matches!(e, WavError::NoSuchChannel { channels: 3, .. }));
    assert!(e.to_string().contains("three.wav"));
    assert_eq!(read_wav_info(&p).unwrap().channels, 3);
}

#[test]
fn other_rates_are_resampled_not_misread() {
    let dir = tempfile::tempdir().unwrap();
    let x: Vec<f32> = (0..44_100)
        .map(|i| 0.5 * (2.0 * std::f32::consts::PI * 440.0 * i as f32 / 44_100.0).sin())
        .collect();
    let data: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    let p = write(
        dir.path(),
        "cd.wav",
        &wav_bytes(FLOAT, 0, 1, 44_100, 32, &data),
    );
    let y = load_mono(&p, ChannelSelect::Mix, 16_000).unwrap();
    assert_eq!(y.len(), 16_000);
    // Zero crossings of a 440 Hz tone in one second: 880 (±2 at the edges).
    let crossings = y
        .windows(2)
        .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
        .count();
    assert!((878..=882).contains(&crossings), "{crossings}");
}

#[test]
fn corrupt_and_truncated_files_are_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = wav_bytes(PCM, 0, 1, 16_000, 16, &encode(16, false));

    let truncated = write(dir.path(), "truncated.wav", &good[..good.len() - 3]);
    let e = read_wav(&truncated, ChannelSelect::Mix).unwrap_err();
    assert!(matches!(e, WavError::Truncated { expected: 5, .. }), "{e}");
    assert!(e.to_string().contains("truncated.wav"), "{e}");

    let garbage = write(
        dir.path(),
        "garbage.wav",
        b"this is not a wav file at all, honest",
    );
    let e = read_wav(&garbage, ChannelSelect::Mix).unwrap_err();
    assert!(e.to_string().contains("garbage.wav"), "{e}");

    let header_only = write(dir.path(), "short.wav", &good[..20]);
    assert!(read_wav(&header_only, ChannelSelect::Mix)
        .unwrap_err()
        .to_string()
        .contains("short.wav"));

    let empty = write(dir.path(), "empty.wav", b"");
    assert!(read_wav(&empty, ChannelSelect::Mix).is_err());

    let missing = dir.path().join("missing.wav");
    let e = read_wav(&missing, ChannelSelect::Mix).unwrap_err();
    assert!(matches!(e, WavError::Open { .. }) && e.to_string().contains("missing.wav"));
    // The cause is said once: in the message, not again as a source (anyhow's `{:#}` prints both).
    assert_said_once(&e, "No such file or directory");
    assert_said_once(
        &sonitor_core::bundle::Bundle::load(&dir.path().join("no-bundle")).unwrap_err(),
        "No such file or directory",
    );
    assert_said_once(
        &sonitor_core::dcase::read_scores(&dir.path().join("no.csv")).unwrap_err(),
        "No such file or directory",
    );

    // 12-bit samples in a 16-bit container are fine for hound, but a 20-bit float is nonsense.
    let odd = write(
        dir.path(),
        "odd.wav",
        &wav_bytes(FLOAT, 0, 1, 16_000, 64, &[0u8; 16]),
    );
    let e = read_wav(&odd, ChannelSelect::Mix).unwrap_err();
    assert!(e.to_string().contains("odd.wav"), "{e}");

    // Headers that would size the replay's buffers and resampler absurdly.
    let fast = write(
        dir.path(),
        "fast.wav",
        &wav_bytes(PCM, 0, 1, 4_000_000_000, 8, &encode(8, false)),
    );
    let e = read_wav(&fast, ChannelSelect::Mix).unwrap_err();
    assert!(
        e.to_string().contains("sample rate 4000000000 Hz") && e.to_string().contains("fast.wav"),
        "{e}"
    );
    let wide = write(
        dir.path(),
        "wide.wav",
        &wav_bytes(PCM, 0, 9000, 16_000, 16, &vec![0u8; 2 * 9000]),
    );
    let e = read_wav(&wide, ChannelSelect::Mix).unwrap_err();
    assert!(e.to_string().contains("wide.wav"), "{e}");

    // What a recorder streaming to a pipe writes: no data length (0xFFFFFFFF, or 0) before the samples.
    for (name, len, bits) in [
        ("streamed.wav", u32::MAX, 16),
        ("streamed8.wav", u32::MAX, 8),
        ("zero.wav", 0, 16),
    ] {
        let mut streamed = wav_bytes(PCM, 0, 1, 16_000, bits, &vec![0u8; 3200]);
        let at = streamed.len() - 3200 - 4;
        streamed[at..at + 4].copy_from_slice(&len.to_le_bytes());
        let p = write(dir.path(), name, &streamed);
        for e in [
            read_wav(&p, ChannelSelect::Mix).unwrap_err(),
            check_wav(&p).unwrap_err(),
        ] {
            assert!(
                e.to_string().contains(name) && e.to_string().contains("no data length"),
                "{e}"
            );
        }
    }
    // A data chunk of no samples at the end of the file is only empty.
    let nothing = write(
        dir.path(),
        "nothing.wav",
        &wav_bytes(PCM, 0, 1, 16_000, 16, &[]),
    );
    assert_eq!(read_wav_info(&nothing).unwrap().frames, 0);

    let mut nan = wav_bytes(FLOAT, 0, 1, 16_000, 32, &encode(32, true));
    let n = nan.len();
    nan[n - 4..].copy_from_slice(&f32::NAN.to_le_bytes());
    let nan = write(dir.path(), "nan.wav", &nan);
    assert!(read_wav(&nan, ChannelSelect::Mix)
        .unwrap_err()
        .to_string()
        .contains("not a finite"));
}

#[test]
fn written_files_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("out.wav");
    write_wav_i16(&p, &[0.0, 0.5, -0.5, 2.0], 16_000).unwrap();
    let (info, s) = read_wav(&p, ChannelSelect::Mix).unwrap();
    assert_eq!(
        (info.sample_rate, info.channels, info.bits_per_sample),
        (16_000, 1, 16)
    );
    assert!(
        (s[1] - 0.5).abs() < 1e-4 && (s[3] - 32767.0 / 32768.0).abs() < 1e-6,
        "{s:?}"
    );
    let e = write_wav_i16(&dir.path().join("no/such/dir.wav"), &[0.0], 16_000).unwrap_err();
    assert!(e.to_string().contains("dir.wav"));
}

/// The block reader of file sources (16-bit in bulk, the rest through hound) gives read_wav's samples whatever the
/// block size, and reports a data chunk cut short when it reaches the cut.
#[test]
fn block_reader_equals_whole_file_reading() {
    let dir = tempfile::tempdir().unwrap();
    for (bits, float, format) in [
        (16, false, PCM),
        (24, false, PCM),
        (32, true, FLOAT),
        (8, false, PCM),
    ] {
        let path = write(
            dir.path(),
            &format!("b{bits}.wav"),
            &wav_bytes(format, 0, 1, 16_000, bits, &encode(bits, float)),
        );
        let (_, whole) = read_wav(&path, ChannelSelect::Mix).unwrap();
        for block in [1, 2, 3, 100] {
            let mut b = WavBlocks::open(&path).unwrap();
            let mut got = Vec::new();
            while b.read_into(&mut got, block).unwrap() > 0 {}
            assert_eq!(got, whole, "{bits} bits, blocks of {block}");
        }
    }
    let good = wav_bytes(PCM, 0, 1, 16_000, 16, &encode(16, false));
    let cut = write(dir.path(), "cut.wav", &good[..good.len() - 3]);
    let mut b = WavBlocks::open(&cut).unwrap();
    let mut got = Vec::new();
    let e = loop {
        match b.read_into(&mut got, 2) {
            Ok(0) => panic!("the cut was not noticed"),
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    assert!(matches!(e, WavError::Truncated { expected: 5, .. }), "{e}");
    assert_eq!(
        got,
        VALUES[..3].to_vec(),
        "what precedes the cut is delivered"
    );
    // The start-up check finds the same cut from the file's length, and passes every intact format.
    let e = WavBlocks::open(&cut).unwrap().check_to_end().unwrap_err();
    assert!(
        matches!(
            e,
            WavError::Truncated {
                expected: 5,
                got: 3,
                ..
            }
        ),
        "{e}"
    );
    for bits in [8, 16, 24, 32] {
        WavBlocks::open(&dir.path().join(format!("b{bits}.wav")))
            .unwrap()
            .check_to_end()
            .unwrap();
    }
    // `check_wav`, what `sonitor validate` and `run` use: the same refusal, and the header of an intact file.
    assert!(matches!(
        check_wav(&cut).unwrap_err(),
        WavError::Truncated {
            expected: 5,
            got: 3,
            ..
        }
    ));
    let b16 = dir.path().join("b16.wav");
    assert_eq!(check_wav(&b16).unwrap(), read_wav_info(&b16).unwrap());
}

/// `e` and its chain of sources, as anyhow's `{:#}` prints them, name `cause` exactly once.
fn assert_said_once(e: &dyn std::error::Error, cause: &str) {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        text += &format!(": {s}");
        next = s.source();
    }
    assert_eq!(text.matches(cause).count(), 1, "{text}");
}
