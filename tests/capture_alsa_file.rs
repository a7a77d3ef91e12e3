//! Bit-exact capture through cpal and ALSA's `file` PCM (DESIGN.md §5): the daemon's capture supervisor opens
//! `alsa:testmic`, whose input is a raw file, and the samples in the ring are exactly the file's. Also the
//! device listing and the lookup error for a device that does not exist.
//!
//! One test per file: `ALSA_CONFIG_PATH` must be set before ALSA is first used in the process.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringbuf::traits::{Consumer, Observer};
use sonitor::capture::{spawn_capture, SourceEvent, StreamHandle};
use sonitor::config::{AtEnd, DeviceConfig, SourceKind};
use sonitor::metrics::Metrics;

#[test]
fn alsa_file_pcm_is_captured_bit_exactly() {
    let d = tempfile::tempdir().unwrap();
    let n = 12_000usize;
    let samples: Vec<i16> = (0..n)
        .map(|i| ((i as i64 * 7919) % 65_536 - 32_768) as i16)
        .collect();
    let raw = d.path().join("in.raw");
    std::fs::write(
        &raw,
        samples
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    // A configuration of its own, without alsa.conf: alsa.conf runs the hooks of /etc/alsa/conf.d, and where one
    // fails (an aarch64 test under qemu on an x86 host whose conf.d loads the x86-only pulse plugin) ALSA drops the
    // whole configuration ("Unknown PCM testmic"). Hence also the inline slave instead of alsa.conf's `null`.
    let conf = d.path().join("asound.conf");
    std::fs::write(
        &conf,
        format!(
            "pcm.testmic {{\n type file\n slave.pcm {{ type null }}\n file \"/dev/null\"\n infile \"{}\"\n format \"raw\"\n hint {{ show on description \"sonitor test microphone\" }}\n}}\n",
            raw.display()
        ),
    )
    .unwrap();
    std::env::set_var("ALSA_CONFIG_PATH", &conf);

    // The listing names the test PCM; an unknown one is refused with the hint.
    let listing = sonitor::capture::list_devices().unwrap();
    assert!(listing.contains("alsa:testmic"), "{listing}");
    let e = sonitor::capture::find_device("alsa:nope_nope")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("does not exist") && e.contains("sonitor devices"),
        "{e}"
    );

    let cfg = DeviceConfig {
        name: "mic".into(),
        source: SourceKind::Capture,
        device: Some("alsa:testmic".into()),
        channels: Some(1),
        sample_rate: Some(16_000),
        buffer_frames: None,
        path: None,
        realtime: true,
        at_end: AtEnd::Stop,
        stall_timeout: Duration::from_secs(5),
        reopen_min: Duration::from_millis(100),
        reopen_max: Duration::from_secs(1),
        ring_seconds: 1.0,
    };
    let metrics = Arc::new(Metrics::new(&["mic".into()], &[]));
    let (stream_tx, stream_rx) = crossbeam_channel::bounded::<StreamHandle>(4);
    let (ev_tx, ev_rx) = crossbeam_channel::unbounded();
    let stop = Arc::new(AtomicBool::new(false));
    let t = spawn_capture(
        0,
        cfg,
        16_000,
        metrics.clone(),
        stream_tx,
        ev_tx,
        stop.clone(),
    )
    .unwrap();
    let Ok(mut h) = stream_rx.recv_timeout(Duration::from_secs(20)) else {
        // Say why: the supervisor reports every failed open on the event channel.
        let mut events: Vec<SourceEvent> = ev_rx.try_iter().collect();
        events.dedup();
        panic!("the stream did not open within 20 s; supervisor events: {events:?}");
    };
    match ev_rx.recv_timeout(Duration::from_secs(1)).unwrap() {
        SourceEvent::Opened { description, .. } => {
            assert!(description.contains("16000 Hz"), "{description}");
            assert!(description.contains("i16"), "negotiated {description}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!((h.sample_rate, h.channels), (16_000, 1));
    // The file PCM is not paced: the ring fills at once; its first n samples are the file's.
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.consumer.occupied_len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} samples arrived",
            h.consumer.occupied_len()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut got = vec![0.0f32; n];
    assert_eq!(h.consumer.pop_slice(&mut got), n);
    let expected: Vec<f32> = samples.iter().map(|&s| s as f32 / 32768.0).collect();
    let first_diff = got.iter().zip(&expected).position(|(a, b)| a != b);
    assert_eq!(first_diff, None, "captured samples differ from the file");
    // The unpaced source overflows the 1-second ring: the overflow is counted, not blocked on. Natively within
    // milliseconds; under qemu on a busy host it took longer than a fixed 300 ms wait, hence the deadline.
    let deadline = Instant::now() + Duration::from_secs(20);
    while metrics.inputs[0].dropped_samples.get() == 0 {
        assert!(
            Instant::now() < deadline,
            "the unread ring never overflowed: {} frames captured",
            metrics.inputs[0].frames.get()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(metrics.inputs[0].frames.get() >= n as u64);
    stop.store(true, Ordering::SeqCst);
    t.join().unwrap();
}
