//! WAV decoding across encodings, built byte by byte so that each header layout is exactly what the test says.

use std::path::Path;

use sonitor_core::audio::{
    check_wav, load_mono, read_wav, read_wav_info, to_mono, write_wav_i16, ChannelSelect,
    WavBlocks, WavError,
};

const PCM: u16 = 1;
const FLOAT: u16 = 3;
const EXTENSIBLE: u16 = 0xFFFE;

/// The allocator of this test binary refuses any single allocation over 1 GiB, as a small machine would: no test here
/// needs one, so a reader that sizes a buffer from what a header claims rather than from what the file holds aborts
/// the tests here (on a large machine, overcommit would let such an allocation pass unnoticed).
struct Capped;

const ALLOCATION_CAP: usize = 1 << 30;

unsafe impl std::alloc::GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if layout.size() > ALLOCATION_CAP {
            return std::ptr::null_mut();
        }
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        if layout.size() > ALLOCATION_CAP {
            return std::ptr::null_mut();
        }
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        if new_size > ALLOCATION_CAP {
            return std::ptr::null_mut();
        }
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Capped = Capped;

/// A RIFF/WAVE file. `format` is the tag written in the fmt chunk; for EXTENSIBLE, `sub` is the sub-format tag.
fn wav_bytes(format: u16, sub: u16, channels: u16, rate: u32, bits: u16, data: &[u8]) -> Vec<u8> {
    riff(&[
        (*b"fmt ", fmt_chunk(format, sub, channels, rate, bits, bits)),
        (*b"data", data.to_vec()),
    ])
}

/// The body of a fmt chunk: samples in slots of `slot_bits` (block align = channels × slot bytes) of which
/// `valid_bits` are used (written only in an EXTENSIBLE header, whose sub-format tag is `sub`).
fn fmt_chunk(
    format: u16,
    sub: u16,
    channels: u16,
    rate: u32,
    slot_bits: u16,
    valid_bits: u16,
) -> Vec<u8> {
    let block = (u32::from(channels) * u32::from(slot_bits) / 8) as u16;
    let mut fmt = Vec::new();
    fmt.extend_from_slice(&format.to_le_bytes());
    fmt.extend_from_slice(&channels.to_le_bytes());
    fmt.extend_from_slice(&rate.to_le_bytes());
    fmt.extend_from_slice(&(rate * block as u32).to_le_bytes());
    fmt.extend_from_slice(&block.to_le_bytes());
    fmt.extend_from_slice(&slot_bits.to_le_bytes());
    if format == EXTENSIBLE {
        fmt.extend_from_slice(&22u16.to_le_bytes());
        fmt.extend_from_slice(&valid_bits.to_le_bytes());
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
    fmt
}

/// A RIFF/WAVE file of these chunks in this order, each padded to an even length as RIFF requires (the pad byte
/// is not counted in the chunk's size).
fn riff(chunks: &[([u8; 4], Vec<u8>)]) -> Vec<u8> {
    let mut body = b"WAVE".to_vec();
    for (id, data) in chunks {
        body.extend_from_slice(id);
        body.extend_from_slice(&(data.len() as u32).to_le_bytes());
        body.extend_from_slice(data);
        if data.len() % 2 == 1 {
            body.push(0);
        }
    }
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Samples in [-1, 1) that every format can represent exactly.
const VALUES: [f32; 5] = [0.0, 0.5, -0.5, 0.25, -1.0];

fn encode(bits: u16, float: bool) -> Vec<u8> {
    let mut d = Vec::new();
    for &v in &VALUES {
        match (float, bits) {
            (true, 64) => d.extend_from_slice(&f64::from(v).to_le_bytes()),
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
        (64, true),
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
        "the folder does not exist",
    );
    assert_said_once(
        &sonitor_core::dcase::read_scores(&dir.path().join("no.csv")).unwrap_err(),
        "No such file or directory",
    );

    // A 16-bit float file is valid but not supported: refused by name (see `header_problems_are_named_as_such`).
    let odd = write(
        dir.path(),
        "odd.wav",
        &wav_bytes(FLOAT, 0, 1, 16_000, 16, &[0u8; 16]),
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
    // And one below any audio interface's (a damaged header, or no recording of a machine).
    let slow = write(
        dir.path(),
        "slow.wav",
        &wav_bytes(PCM, 0, 1, 7, 16, &encode(16, false)),
    );
    let e = check_wav(&slow).unwrap_err();
    assert!(
        e.to_string().contains("sample rate 7 Hz (at least 8000 Hz")
            && e.to_string().contains("slow.wav"),
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
    // 64-bit float: NaN, infinity, and a finite value beyond f32's range (infinite once read), by the reader and
    // by the check that `validate` and the daemon's file source make before replaying.
    for (name, bad) in [
        ("nan64.wav", f64::NAN),
        ("inf64.wav", f64::NEG_INFINITY),
        ("big64.wav", 1e300),
    ] {
        let data: Vec<u8> = [0.0, 0.5, bad, 0.25]
            .iter()
            .flat_map(|v: &f64| v.to_le_bytes())
            .collect();
        let p = write(dir.path(), name, &wav_bytes(FLOAT, 0, 1, 16_000, 64, &data));
        for e in [
            read_wav(&p, ChannelSelect::Mix).unwrap_err(),
            check_wav(&p).unwrap_err(),
        ] {
            let text = e.to_string();
            assert!(
                text.contains(name) && text.contains("sample 2 is not a finite number"),
                "{text}"
            );
        }
    }
    // Finite float samples far off the ±1 scale (integers written as floats, here 32767) are refused by name; an
    // over of a few dB is kept.
    for (name, bad, refused) in [("ints.wav", 32767.0f32, true), ("over.wav", 1.9, false)] {
        let data: Vec<u8> = [0.0f32, 0.5, bad, 0.25]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let p = write(dir.path(), name, &wav_bytes(FLOAT, 0, 1, 16_000, 32, &data));
        if !refused {
            assert_eq!(read_wav(&p, ChannelSelect::Mix).unwrap().1[2], bad);
            check_wav(&p).unwrap();
            continue;
        }
        for e in [
            read_wav(&p, ChannelSelect::Mix).unwrap_err(),
            check_wav(&p).unwrap_err(),
        ] {
            let text = e.to_string();
            assert!(
                text.contains(name)
                    && text.contains("sample 2 is 32767, beyond ±16")
                    && text.contains("integers written as floats"),
                "{text}"
            );
        }
    }
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

/// The block reader of file sources (every encoding converted from the raw bytes in bulk) gives read_wav's samples whatever the
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

/// One second at 16 kHz of a 440 Hz sine of amplitude 0.5, at `bits` of resolution (as an integer of that width).
fn sine(bits: u32) -> Vec<i32> {
    let full = f64::from(1u32 << (bits - 1));
    (0..16_000)
        .map(|i| {
            let t = f64::from(i) / 16_000.0;
            (0.5 * (2.0 * std::f64::consts::PI * 440.0 * t).sin() * full).round() as i32
        })
        .collect()
}

/// WAVE_FORMAT_EXTENSIBLE stores samples narrower than their slot left-justified (in the high bits, the low bits
/// zero): 24 valid bits in 32-bit slots, or 16 in 32, are the same signal as plain 16-bit PCM, one sample a slot.
#[test]
fn extensible_samples_narrower_than_their_slots_are_read_left_justified() {
    let dir = tempfile::tempdir().unwrap();
    let x16 = sine(16);
    let plain: Vec<u8> = x16.iter().flat_map(|&v| (v as i16).to_le_bytes()).collect();
    let p16 = write(
        dir.path(),
        "plain16.wav",
        &wav_bytes(PCM, 0, 1, 16_000, 16, &plain),
    );
    let (_, reference) = read_wav(&p16, ChannelSelect::Mix).unwrap();
    assert_eq!(reference.len(), 16_000);

    let x24in32: Vec<u8> = sine(24)
        .iter()
        .flat_map(|&v| (v << 8).to_le_bytes())
        .collect();
    let x16in32: Vec<u8> = x16.iter().flat_map(|&v| (v << 16).to_le_bytes()).collect();
    // Stereo, 16 in 32: the sine on the left, its negation on the right.
    let stereo16in32: Vec<u8> = x16
        .iter()
        .flat_map(|&v| [v << 16, -v << 16])
        .flat_map(|v| v.to_le_bytes())
        .collect();
    for (name, channels, valid, data) in [
        ("x24in32.wav", 1, 24, x24in32),
        ("x16in32.wav", 1, 16, x16in32),
        ("x16in32-stereo.wav", 2, 16, stereo16in32),
    ] {
        let p = write(
            dir.path(),
            name,
            &riff(&[
                (
                    *b"fmt ",
                    fmt_chunk(EXTENSIBLE, PCM, channels, 16_000, 32, valid),
                ),
                (*b"data", data),
            ]),
        );
        let (info, y) =
            read_wav(&p, ChannelSelect::Index(0)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            (info.frames, info.channels, info.bits_per_sample, info.float),
            (16_000, channels, valid, false),
            "{name}"
        );
        assert_eq!(y.len(), reference.len(), "{name}: one sample a slot");
        // Within the quantisation of 16 bits (the 24-bit sine is rounded at a finer step).
        let worst = y
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst <= 0.5 / 32768.0 + 1e-7, "{name}: off by {worst}");
        if valid == 16 {
            assert_eq!(y, reference, "{name}: 16 valid bits are the 16-bit samples");
        }
        if channels == 2 {
            let right = read_wav(&p, ChannelSelect::Index(1)).unwrap().1;
            let negated: Vec<f32> = reference.iter().map(|v| -v).collect();
            assert_eq!(right, negated, "{name}: the right channel");
        }
        // The block reader and the start-up check read it the same way.
        let mut b = WavBlocks::open(&p).unwrap();
        let mut interleaved = Vec::new();
        while b.read_into(&mut interleaved, 1000).unwrap() > 0 {}
        let left: Vec<f32> = interleaved
            .iter()
            .step_by(channels as usize)
            .copied()
            .collect();
        assert_eq!(left, y, "{name}: block reader");
        assert_eq!(check_wav(&p).unwrap(), info, "{name}");
    }
}

/// A 17-byte payload (odd: RIFF pads it with one byte that its size does not count).
fn odd_payload(tag: &[u8; 4]) -> Vec<u8> {
    let mut v = tag.to_vec();
    v.extend_from_slice(b"ICMT");
    v.extend_from_slice(&5u32.to_le_bytes());
    v.extend_from_slice(b"pump\0");
    assert_eq!(v.len() % 2, 1);
    v
}

/// Chunks of odd length (a LIST, a bext, an iXML) are followed by a pad byte; a reader that skips the chunk but
/// not the pad misreads everything after it. A float file's fact chunk is skipped too.
#[test]
fn odd_sized_chunks_before_the_data_are_skipped_with_their_pad_byte() {
    let dir = tempfile::tempdir().unwrap();
    let pcm16 = fmt_chunk(PCM, 0, 1, 16_000, 16, 16);
    let float = fmt_chunk(FLOAT, 0, 1, 16_000, 32, 32);
    let float_x = fmt_chunk(EXTENSIBLE, FLOAT, 1, 16_000, 32, 32);
    let fact = 5u32.to_le_bytes().to_vec();
    let list = (*b"LIST", odd_payload(b"INFO"));
    for (name, chunks, expected) in [
        (
            "list16.wav",
            vec![
                (*b"fmt ", pcm16.clone()),
                list.clone(),
                (*b"data", encode(16, false)),
            ],
            wav_bytes(PCM, 0, 1, 16_000, 16, &encode(16, false)),
        ),
        (
            "bext-first16.wav",
            vec![
                (*b"bext", odd_payload(b"BEXT")),
                (*b"fmt ", pcm16.clone()),
                (*b"iXML", b"<BWFXML/>".to_vec()),
                (*b"data", encode(16, false)),
            ],
            wav_bytes(PCM, 0, 1, 16_000, 16, &encode(16, false)),
        ),
        (
            "fact-float.wav",
            vec![
                (*b"fmt ", float.clone()),
                (*b"fact", fact.clone()),
                (*b"data", encode(32, true)),
            ],
            wav_bytes(FLOAT, 0, 1, 16_000, 32, &encode(32, true)),
        ),
        (
            "fact-list-float-x.wav",
            vec![
                (*b"fmt ", float_x.clone()),
                (*b"fact", fact.clone()),
                list.clone(),
                (*b"data", encode(32, true)),
            ],
            wav_bytes(FLOAT, 0, 1, 16_000, 32, &encode(32, true)),
        ),
        (
            "list24.wav",
            vec![
                (*b"fmt ", fmt_chunk(PCM, 0, 1, 16_000, 24, 24)),
                list.clone(),
                (*b"data", encode(24, false)),
                // Chunks after the data are not read.
                list.clone(),
            ],
            wav_bytes(PCM, 0, 1, 16_000, 24, &encode(24, false)),
        ),
    ] {
        let plain = write(dir.path(), &format!("plain-{name}"), &expected);
        let (plain_info, plain_samples) = read_wav(&plain, ChannelSelect::Mix).unwrap();
        assert_eq!(plain_samples, VALUES.to_vec(), "{name}");
        let p = write(dir.path(), name, &riff(&chunks));
        let (info, samples) =
            read_wav(&p, ChannelSelect::Mix).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((info, samples), (plain_info, plain_samples), "{name}");
        assert_eq!(read_wav_info(&p).unwrap(), info, "{name}");
        assert_eq!(check_wav(&p).unwrap(), info, "{name}");
    }

    // Some writers leave the pad byte out: their files are read too (the next chunk's id starts where the pad byte
    // should be).
    for (name, first, second) in [
        ("unpadded-list.wav", (*b"fmt ", pcm16.clone()), list.clone()),
        (
            "unpadded-bext.wav",
            (*b"bext", odd_payload(b"BEXT")),
            (*b"fmt ", pcm16.clone()),
        ),
    ] {
        let mut bytes = riff(&[first.clone(), second.clone(), (*b"data", encode(16, false))]);
        let pad = if first.1.len() % 2 == 1 {
            12 + 8 + first.1.len()
        } else {
            12 + 8 + first.1.len() + 8 + second.1.len()
        };
        assert_eq!(bytes.remove(pad), 0, "{name}: the pad byte");
        let riff_size = (bytes.len() - 8) as u32;
        bytes[4..8].copy_from_slice(&riff_size.to_le_bytes());
        let p = write(dir.path(), name, &bytes);
        let (info, samples) =
            read_wav(&p, ChannelSelect::Mix).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((info.frames, samples), (5, VALUES.to_vec()), "{name}");
    }
}

/// A header that claims far more data than the file holds (here 4 GiB, after one second of audio) is reported as
/// the truncation it is, without first reserving memory for the claim (the cap on this binary's allocations fails
/// any reservation of gigabytes).
#[test]
fn an_overstated_data_length_is_a_truncation_not_a_huge_allocation() {
    let dir = tempfile::tempdir().unwrap();
    // The odd length too: not whole frames, but beyond the file's end, so a truncation (it was called "not a whole
    // number of 2-byte frames", which sent the user looking at the wrong thing).
    for (name, format, channels, bits, length) in [
        ("over16.wav", PCM, 1, 16, 0xFFFF_FFF0u32),
        ("over16-odd.wav", PCM, 1, 16, 0x7FFF_FFFF),
        ("over24.wav", PCM, 1, 24, 0xFFFF_FFF0),
        ("over-float-stereo.wav", FLOAT, 2, 32, 0xFFFF_FFF0),
        ("over16-stereo-x.wav", EXTENSIBLE, 2, 16, 0xFFFF_FFF0),
    ] {
        let block = u32::from(channels) * u32::from(bits) / 8;
        let data = vec![0u8; 16_000 * block as usize];
        let mut bytes = wav_bytes(format, PCM, channels, 16_000, bits, &data);
        let at = bytes.len() - data.len() - 4;
        bytes[at..at + 4].copy_from_slice(&length.to_le_bytes());
        let p = write(dir.path(), name, &bytes);
        let expected = u64::from(length / block);
        assert_eq!(read_wav_info(&p).unwrap().frames, expected, "{name}");
        for e in [
            read_wav(&p, ChannelSelect::Mix).unwrap_err(),
            read_wav(&p, ChannelSelect::Index(0)).unwrap_err(),
            check_wav(&p).unwrap_err(),
        ] {
            assert!(
                matches!(e, WavError::Truncated { expected: x, got: 16_000, .. } if x == expected),
                "{name}: {e}"
            );
            assert!(e.to_string().contains(name), "{e}");
        }
    }
}

/// An empty file, one cut inside its header and a valid encoding that is not supported each get a message that
/// says which, not an I/O error ("cannot open") or a parser's complaint.
#[test]
fn header_problems_are_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let every_reader = |p: &Path| {
        [
            read_wav(p, ChannelSelect::Mix).unwrap_err(),
            read_wav_info(p).unwrap_err(),
            check_wav(p).unwrap_err(),
            WavBlocks::open(p).err().unwrap(),
        ]
    };

    let empty = write(dir.path(), "empty.wav", b"");
    for e in every_reader(&empty) {
        let text = e.to_string();
        assert!(matches!(e, WavError::Corrupt { .. }), "{text}");
        assert!(
            text.contains("empty.wav") && text.contains("empty") && !text.contains("cannot open"),
            "{text}"
        );
    }

    // The 44-byte header of a plain 16-bit file, cut in the RIFF header, in the fmt chunk and in the data chunk's
    // header.
    let good = wav_bytes(PCM, 0, 1, 16_000, 16, &encode(16, false));
    for cut in [3, 11, 20, 30, 40, 43] {
        let name = format!("cut{cut}.wav");
        let p = write(dir.path(), &name, &good[..cut]);
        for e in every_reader(&p) {
            let text = e.to_string();
            assert!(matches!(e, WavError::Corrupt { .. }), "{text}");
            assert!(
                text.contains(&name)
                    && text.contains("unexpected end of file inside the header")
                    && !text.contains("cannot open"),
                "{text}"
            );
        }
    }
    // A block align wider than the samples (16-bit mono, block align 4, and a byte rate to match): read by the
    // block align every other sample was dropped without a word (half the length, the pitch doubled); other
    // readers read it by the sample size. It contradicts itself: refused by every reader.
    let mut wide_fmt = fmt_chunk(PCM, 0, 1, 16_000, 16, 16);
    wide_fmt[8..12].copy_from_slice(&64_000u32.to_le_bytes());
    wide_fmt[12..14].copy_from_slice(&4u16.to_le_bytes());
    let wide = riff(&[(*b"fmt ", wide_fmt), (*b"data", encode(16, false))]);
    let p = write(dir.path(), "wide_block.wav", &wide);
    for e in every_reader(&p) {
        let text = e.to_string();
        assert!(matches!(e, WavError::Corrupt { .. }), "{text}");
        assert!(
            text.contains("wide_block.wav")
                && text.contains("block align 4 gives each of 1 channel(s) a 4-byte slot, but its samples are 16-bit"),
            "{text}"
        );
    }
    // A data chunk and no fmt chunk at all: said so, not that the data chunk comes first.
    let no_fmt = riff(&[(*b"data", encode(16, false))]);
    let p = write(dir.path(), "no_fmt.wav", &no_fmt);
    for e in every_reader(&p) {
        let text = e.to_string();
        assert!(matches!(e, WavError::Corrupt { .. }), "{text}");
        assert!(
            text.contains("no_fmt.wav")
                && text.contains("no fmt chunk")
                && !text.contains("comes before"),
            "{text}"
        );
    }
    // Another audio format under a .wav name: named, with how to convert it; anything else is "no RIFF header".
    for (name, head, what) in [
        (
            "flac.wav",
            &b"fLaC\0\0\0\x22\x10\x00\x10\x00"[..],
            "a FLAC file",
        ),
        ("ogg.wav", &b"OggS\0\x02\0\0\0\0\0\0"[..], "an Ogg file"),
        ("id3.wav", &b"ID3\x04\0\0\0\0\0\0\0\0"[..], "an MP3 file"),
        (
            "mpeg.wav",
            &[0xFF, 0xFB, 0x90, 0x64, 0, 0, 0, 0, 0, 0, 0, 0][..],
            "an MP3 file",
        ),
        (
            "text.wav",
            &b"hello world\n"[..],
            "does not start with `RIFF`",
        ),
    ] {
        let p = write(dir.path(), name, head);
        for e in every_reader(&p) {
            let text = e.to_string();
            assert!(matches!(e, WavError::Corrupt { .. }), "{text}");
            assert!(
                text.contains(name) && text.contains("no RIFF header") && text.contains(what),
                "{text}"
            );
            assert_eq!(text.contains("ffmpeg -i"), name != "text.wav", "{text}");
        }
    }
    // Two fmt chunks (which one holds?) are refused, not the last one taken.
    let two = riff(&[
        (*b"fmt ", fmt_chunk(PCM, 0, 1, 16_000, 16, 16)),
        (*b"fmt ", fmt_chunk(PCM, 0, 2, 48_000, 16, 16)),
        (*b"data", encode(16, false)),
    ]);
    let p = write(dir.path(), "two_fmt.wav", &two);
    for e in every_reader(&p) {
        let text = e.to_string();
        assert!(matches!(e, WavError::Corrupt { .. }), "{text}");
        assert!(
            text.contains("two_fmt.wav") && text.contains("two fmt chunks"),
            "{text}"
        );
    }

    // Cut after the header: the samples are missing, which is a truncation.
    let p = write(dir.path(), "cut44.wav", &good[..44]);
    assert!(matches!(
        read_wav(&p, ChannelSelect::Mix).unwrap_err(),
        WavError::Truncated {
            expected: 5,
            got: 0,
            ..
        }
    ));

    // 16-bit float (valid, rare) is refused by name with what is supported, by every reader.
    for (name, bytes) in [
        ("f16.wav", wav_bytes(FLOAT, 0, 1, 16_000, 16, &[0u8; 10])),
        (
            "f16x.wav",
            wav_bytes(EXTENSIBLE, FLOAT, 1, 16_000, 16, &[0u8; 10]),
        ),
    ] {
        let p = write(dir.path(), name, &bytes);
        for e in every_reader(&p) {
            let text = e.to_string();
            assert!(matches!(e, WavError::Unsupported { .. }), "{text}");
            assert!(
                text.contains(name)
                    && text.contains("float samples of 16 bits")
                    && text.contains("float 32/64-bit are supported"),
                "{text}"
            );
        }
    }
}

/// An RF64 (or BW64) file: `magic`, then a ds64 chunk giving the data chunk's length and the 64-bit lengths of
/// `table`, then `chunks`. A chunk's 32-bit length is the one given with it (0xFFFFFFFF: "in the ds64 chunk"), or
/// its body's when `None`.
fn wide_riff(
    magic: &[u8; 4],
    data_len: u64,
    table: &[([u8; 4], u64)],
    chunks: &[([u8; 4], Vec<u8>, Option<u32>)],
) -> Vec<u8> {
    let mut ds64 = Vec::new();
    ds64.extend_from_slice(&u64::MAX.to_le_bytes()); // the RIFF length: never read
    ds64.extend_from_slice(&data_len.to_le_bytes());
    ds64.extend_from_slice(&0u64.to_le_bytes()); // sample count (of a `fact` chunk): never read
    ds64.extend_from_slice(&(table.len() as u32).to_le_bytes());
    for (id, size) in table {
        ds64.extend_from_slice(id);
        ds64.extend_from_slice(&size.to_le_bytes());
    }
    let mut out = magic.to_vec();
    out.extend_from_slice(&u32::MAX.to_le_bytes());
    out.extend_from_slice(b"WAVE");
    out.extend_from_slice(b"ds64");
    out.extend_from_slice(&(ds64.len() as u32).to_le_bytes());
    out.extend_from_slice(&ds64);
    for (id, body, size) in chunks {
        out.extend_from_slice(id);
        out.extend_from_slice(&size.unwrap_or(body.len() as u32).to_le_bytes());
        out.extend_from_slice(body);
        if body.len() % 2 == 1 {
            out.push(0);
        }
    }
    out
}

/// RF64 and BW64, the WAV variants recorders switch to past 4 GiB (a shift of 48 kHz stereo is 5.5 GB), read like
/// plain WAV: the data chunk's length from the ds64 chunk (where its header says 0xFFFFFFFF) or from its header
/// (a writer that keeps a small file's real length there), another chunk's from the ds64 chunk's table.
#[test]
fn rf64_and_bw64_files_read_like_plain_wav() {
    let dir = tempfile::tempdir().unwrap();
    let fmt = |format, bits| fmt_chunk(format, PCM, 1, 16_000, bits, bits);
    let junk = (*b"JUNK", vec![7u8; 11], Some(u32::MAX));
    for (name, bytes) in [
        (
            "rf64-16.wav",
            wide_riff(
                b"RF64",
                10,
                &[],
                &[
                    (*b"fmt ", fmt(PCM, 16), None),
                    (*b"data", encode(16, false), Some(u32::MAX)),
                ],
            ),
        ),
        (
            "bw64-float.wav",
            wide_riff(
                b"BW64",
                20,
                &[],
                &[
                    (*b"fmt ", fmt(FLOAT, 32), None),
                    (*b"data", encode(32, true), Some(u32::MAX)),
                ],
            ),
        ),
        (
            "rf64-24-extensible-real-length.wav",
            wide_riff(
                b"RF64",
                15,
                &[],
                &[
                    (
                        *b"fmt ",
                        fmt_chunk(EXTENSIBLE, PCM, 1, 16_000, 24, 24),
                        None,
                    ),
                    (*b"data", encode(24, false), None),
                ],
            ),
        ),
        (
            "rf64-table.wav",
            wide_riff(
                b"RF64",
                40,
                &[(*b"JUNK", 11)],
                &[
                    (*b"fmt ", fmt(FLOAT, 64), None),
                    junk.clone(),
                    (*b"data", encode(64, true), Some(u32::MAX)),
                ],
            ),
        ),
    ] {
        let p = write(dir.path(), name, &bytes);
        let (info, samples) =
            read_wav(&p, ChannelSelect::Mix).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((info.frames, samples), (5, VALUES.to_vec()), "{name}");
        check_wav(&p).unwrap_or_else(|e| panic!("{name}: {e}"));
    }

    // What is wrong in an RF64 header is named.
    for (name, bytes, says) in [
        (
            "no-ds64.wav",
            {
                let mut b = riff(&[(*b"fmt ", fmt(PCM, 16)), (*b"data", encode(16, false))]);
                b[..4].copy_from_slice(b"RF64");
                b
            },
            "the file is RF64, but its first chunk is `fmt `, not the ds64 chunk",
        ),
        (
            "not-in-table.wav",
            wide_riff(
                b"RF64",
                10,
                &[],
                &[
                    (*b"fmt ", fmt(PCM, 16), None),
                    junk.clone(),
                    (*b"data", encode(16, false), Some(u32::MAX)),
                ],
            ),
            "the `JUNK` chunk's length is in the ds64 chunk (0xFFFFFFFF here), but that chunk does not give it",
        ),
        (
            "streamed.wav",
            wide_riff(
                b"RF64",
                u64::MAX,
                &[],
                &[
                    (*b"fmt ", fmt(PCM, 16), None),
                    (*b"data", encode(16, false), Some(u32::MAX)),
                ],
            ),
            "the header gives no data length (0xFFFFFFFFFFFFFFFF)",
        ),
        (
            "short-ds64.wav",
            {
                let mut b = b"RF64\xff\xff\xff\xffWAVEds64\x10\x00\x00\x00".to_vec();
                b.extend_from_slice(&[0u8; 16]);
                b
            },
            "its ds64 chunk is 16 bytes, too short",
        ),
        (
            "cut-ds64.wav",
            wide_riff(b"RF64", 10, &[], &[])[..30].to_vec(),
            "unexpected end of file inside the header",
        ),
    ] {
        let p = write(dir.path(), name, &bytes);
        for e in [
            read_wav(&p, ChannelSelect::Mix).unwrap_err(),
            read_wav_info(&p).unwrap_err(),
            check_wav(&p).unwrap_err(),
        ] {
            let text = e.to_string();
            assert!(matches!(e, WavError::Corrupt { .. }), "{text}");
            assert!(text.contains(name) && text.contains(says), "{text}");
        }
    }
}

/// Lengths past 4 GiB, in sparse files that take no disk: an RF64 file's 64-bit length is read whole, and a plain
/// WAV written past 4 GiB (its 32-bit length wrapped around) is refused saying so, not read up to the wrapped length
/// as if the rest of the recording did not exist. A plain file that fills most of its 4 GiB is read as it says.
#[test]
fn lengths_past_four_gibibytes() {
    let dir = tempfile::tempdir().unwrap();
    let five = 5u64 << 30;
    let sparse = |name: &str, header: Vec<u8>, data: u64| {
        let p = dir.path().join(name);
        std::fs::write(&p, &header).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(header.len() as u64 + data)
            .unwrap();
        p
    };
    let fmt16 = fmt_chunk(PCM, PCM, 1, 16_000, 16, 16);
    // A header whose data chunk claims `claimed` bytes of which none are written here.
    let plain = |claimed: u32| {
        let mut b = riff(&[(*b"fmt ", fmt16.clone()), (*b"data", Vec::new())]);
        let at = b.len() - 4;
        b[at..].copy_from_slice(&claimed.to_le_bytes());
        b
    };

    let rf64 = sparse(
        "shift.wav",
        wide_riff(
            b"RF64",
            five,
            &[],
            &[
                (*b"fmt ", fmt16.clone(), None),
                (*b"data", Vec::new(), Some(u32::MAX)),
            ],
        ),
        five,
    );
    let mut blocks = WavBlocks::open(&rf64).unwrap();
    assert_eq!(blocks.info().frames, five / 2);
    let mut out = Vec::new();
    assert_eq!(blocks.read_into(&mut out, 16_000).unwrap(), 16_000);
    assert!(out.iter().all(|&v| v == 0.0));

    let wrapped = sparse("wrapped.wav", plain((five - (4 << 30)) as u32), five);
    for e in [
        read_wav_info(&wrapped).unwrap_err(),
        WavBlocks::open(&wrapped).err().unwrap(),
    ] {
        let text = e.to_string();
        assert!(matches!(e, WavError::Corrupt { .. }), "{text}");
        assert!(
            text.contains("wrapped.wav")
                && text.contains(
                    "header says 1073741824 bytes, but the file goes on for 4294967296 bytes more"
                )
                && text.contains("-rf64 auto"),
            "{text}"
        );
    }

    let big = 0xF000_0000u32;
    let nearly_full = sparse("nearly-full.wav", plain(big), u64::from(big));
    assert_eq!(
        read_wav_info(&nearly_full).unwrap().frames,
        u64::from(big) / 2
    );
}

/// Every single-byte corruption and every truncation of a set of valid files (plain PCM of each depth, float,
/// EXTENSIBLE, stereo, an odd chunk before the data, RF64), read by every reader the trainer and the daemon use.
/// None may panic or abort (this binary's allocator refuses gigabyte reservations), and what they accept must be
/// usable: a file that `check_wav` (what `sonitor validate` and the daemon's start run) passes is read whole by
/// `read_wav` with the frames the check announced, the block reader (the daemon's replay) delivers the same
/// samples, and every sample read is a finite number.
#[test]
fn no_corruption_or_cut_of_a_valid_file_panics_and_what_passes_reads_whole() {
    let dir = tempfile::tempdir().unwrap();
    let stereo16: Vec<u8> = encode(16, false)
        .chunks(2)
        .flat_map(|s| [s[0], s[1], s[1], s[0]])
        .collect();
    let list = (*b"LIST", odd_payload(b"INFO"));
    let fmt16 = fmt_chunk(PCM, 0, 1, 16_000, 16, 16);
    let bases: Vec<(&str, Vec<u8>)> = vec![
        ("pcm8", wav_bytes(PCM, 0, 1, 16_000, 8, &encode(8, false))),
        (
            "pcm16",
            wav_bytes(PCM, 0, 1, 16_000, 16, &encode(16, false)),
        ),
        (
            "pcm24",
            wav_bytes(PCM, 0, 1, 16_000, 24, &encode(24, false)),
        ),
        (
            "pcm32",
            wav_bytes(PCM, 0, 1, 16_000, 32, &encode(32, false)),
        ),
        (
            "float32",
            wav_bytes(FLOAT, 0, 1, 16_000, 32, &encode(32, true)),
        ),
        (
            "float64",
            wav_bytes(FLOAT, 0, 1, 16_000, 64, &encode(64, true)),
        ),
        (
            "stereo16-x",
            wav_bytes(EXTENSIBLE, PCM, 2, 16_000, 16, &stereo16),
        ),
        (
            "list16",
            riff(&[
                (*b"fmt ", fmt16.clone()),
                list,
                (*b"data", encode(16, false)),
            ]),
        ),
        (
            "rf64-16",
            wide_riff(
                b"RF64",
                10,
                &[],
                &[
                    (*b"fmt ", fmt16, None),
                    (*b"data", encode(16, false), Some(u32::MAX)),
                ],
            ),
        ),
    ];
    let mut variants = 0;
    let mut accepted = 0;
    for (base, good) in &bases {
        // The base file itself is valid: the corruptions start from something every reader takes.
        let p = write(dir.path(), &format!("{base}.wav"), good);
        read_wav(&p, ChannelSelect::Mix).unwrap_or_else(|e| panic!("{base}: {e}"));
        let mut mutants: Vec<(String, Vec<u8>)> = (0..good.len())
            .map(|n| (format!("{base} cut to {n} bytes"), good[..n].to_vec()))
            .collect();
        for at in 0..good.len() {
            let b = good[at];
            for v in [0x00, 0xFF, b ^ 0x01, b ^ 0x80, b.wrapping_add(2)] {
                if v != b {
                    let mut m = good.clone();
                    m[at] = v;
                    mutants.push((format!("{base} with byte {at} {b:#04x} -> {v:#04x}"), m));
                }
            }
        }
        for (what, bytes) in mutants {
            variants += 1;
            let p = write(dir.path(), "mutant.wav", &bytes);
            if read_back_checked(&p, &what) {
                accepted += 1;
            }
        }
    }
    eprintln!(
        "{variants} variants of {} files, {accepted} read",
        bases.len()
    );
    // Most corruptions of a header are refused; some (a sample's value, the byte rate nobody reads) are not.
    assert!(
        accepted > 0 && accepted < variants,
        "{accepted} of {variants} variants accepted"
    );
}

/// Reads `p` with every reader; panics (failing the test) on a broken promise. True when `read_wav` took it.
fn read_back_checked(p: &Path, what: &str) -> bool {
    let checked = check_wav(p);
    let info = read_wav_info(p);
    let whole = read_wav(p, ChannelSelect::Mix);
    for select in [ChannelSelect::Index(0), ChannelSelect::Index(1)] {
        if let Ok((_, samples)) = read_wav(p, select) {
            assert!(samples.iter().all(|x| x.is_finite()), "{what}: {select:?}");
        }
    }
    if let Ok(samples) = load_mono(p, ChannelSelect::Mix, 16_000) {
        assert!(samples.iter().all(|x| x.is_finite()), "{what}: load_mono");
    }
    let streamed = WavBlocks::open(p).and_then(|mut b| {
        let mut got = Vec::new();
        while b.read_into(&mut got, 3)? > 0 {}
        Ok(got)
    });
    if let Ok(check) = &checked {
        let (read_info, _) = whole
            .as_ref()
            .unwrap_or_else(|e| panic!("{what}: check_wav passed it, read_wav refused it: {e}"));
        assert_eq!(read_info, check, "{what}");
        assert_eq!(info.as_ref().ok(), Some(check), "{what}");
    }
    let Ok((read_info, samples)) = &whole else {
        return false;
    };
    assert!(samples.iter().all(|x| x.is_finite()), "{what}");
    assert_eq!(samples.len() as u64, read_info.frames, "{what}");
    let streamed = streamed
        .unwrap_or_else(|e| panic!("{what}: read_wav took it, the block reader refused it: {e}"));
    let mut mono = Vec::new();
    to_mono(
        &streamed,
        read_info.channels as usize,
        ChannelSelect::Mix,
        &mut mono,
    );
    assert_eq!(&mono, samples, "{what}: the block reader");
    true
}

/// A file cut short is known as such when it is opened (`cut_short`), with the error the reading would meet at the
/// cut: what a looped replay checks at the start of each pass, so that a file truncated in place stays down instead
/// of being played up to the cut again and again. A whole file, with or without a chunk after its data, is not cut.
#[test]
fn a_file_cut_short_is_known_when_it_is_opened() {
    let dir = tempfile::tempdir().unwrap();
    let data = vec![0u8; 1_000 * 4];
    let good = wav_bytes(PCM, 0, 2, 16_000, 16, &data);
    let whole = write(dir.path(), "whole.wav", &good);
    assert!(WavBlocks::open(&whole).unwrap().cut_short().is_none());
    let mut trailed = good.clone();
    trailed.extend_from_slice(b"LIST\x04\x00\x00\x00abcd");
    let trailed = write(dir.path(), "trailed.wav", &trailed);
    assert!(WavBlocks::open(&trailed).unwrap().cut_short().is_none());

    // 600 frames and half of one.
    let cut = write(dir.path(), "cut.wav", &good[..good.len() - 400 * 4 + 2]);
    let mut blocks = WavBlocks::open(&cut).unwrap();
    let early = blocks.cut_short().expect("cut short");
    assert!(
        matches!(
            early,
            WavError::Truncated {
                expected: 1_000,
                got: 600,
                ..
            }
        ),
        "{early}"
    );
    let mut out = Vec::new();
    let met = loop {
        match blocks.read_into(&mut out, 256) {
            Ok(0) => panic!("read to the end of a cut file"),
            Ok(_) => assert!(blocks.cut_short().is_some()),
            Err(e) => break e,
        }
    };
    assert_eq!(met.to_string(), early.to_string());
}
