//! Audio sources. Both kinds deliver interleaved `f32` frames into a `ringbuf` SPSC buffer read by the
//! input's reader thread ([`crate::window`]):
//!
//! - capture through cpal (ALSA on Linux): the real-time callback only converts and copies into the ring
//!   ([`RtSink`]); it never locks, allocates, logs or blocks, and counts what does not fit. A supervisor thread
//!   opens the stream, watches it (errors reported by cpal, frames that stop advancing) and reopens it with
//!   exponential backoff, handing each new ring to the reader;
//! - a WAV file replayed in real time or as fast as the reader drains it.

#[cfg(target_os = "linux")]
pub mod alsa_log;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use crossbeam_channel::{Receiver, Sender};
use ringbuf::traits::{Producer, Split};
use ringbuf::{HeapCons, HeapProd, HeapRb};

use crate::config::{AtEnd, DeviceConfig};
use crate::metrics::{Counter, InputMetrics};

/// A freshly opened stream, handed to the reader thread.
pub struct StreamHandle {
    pub consumer: HeapCons<f32>,
    pub sample_rate: u32,
    pub channels: usize,
    /// Set by the source when no more audio will come on this stream.
    pub end: Arc<StreamEnd>,
    /// The source delivers audio at its sample rate (a sound card, a file paced in real time), so the reader may
    /// sleep until a window's worth has arrived. False for a file replayed as fast as possible.
    pub paced: bool,
    /// Where audio was lost inside the stream ([`RtSink::gaps`]).
    pub gaps: Receiver<u64>,
}

/// Whether more audio will come on a stream. The source sets it after its last write into the ring; the reader
/// ends the stream once the ring is empty: it flushes the stream's last samples into windows and writes the
/// evidence clips still waiting for audio with what there is, as no more is coming on this stream.
#[derive(Debug, Default)]
pub struct StreamEnd(AtomicU8);

impl StreamEnd {
    const OPEN: u8 = 0;
    const CLOSED: u8 = 1;
    const FINISHED: u8 = 2;

    /// The stream is over, and the input may come back as a new stream: a device that failed or stalled (its
    /// supervisor reopens it), a replayed file that stopped at its end (`at_end = "stop"`).
    pub fn close(&self) {
        let _ =
            self.0
                .compare_exchange(Self::OPEN, Self::CLOSED, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// A replayed file ended with `at_end = "exit"`: the reader reports the input finished.
    pub fn finish(&self) {
        self.0.store(Self::FINISHED, Ordering::SeqCst);
    }

    pub fn is_open(&self) -> bool {
        self.0.load(Ordering::SeqCst) == Self::OPEN
    }

    pub fn is_finished(&self) -> bool {
        self.0.load(Ordering::SeqCst) == Self::FINISHED
    }
}

/// What a source reports besides audio.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceEvent {
    /// The input delivers audio: on a new stream, handed to the reader next (`new_stream`), or on the same one
    /// (a looped file readable again after a failed pass).
    Opened {
        input: usize,
        description: String,
        new_stream: bool,
    },
    Failed {
        input: usize,
        reason: String,
    },
    Stalled {
        input: usize,
    },
    Ended {
        input: usize,
    },
}

/// The real-time side of a capture stream: what the cpal callback owns.
pub struct RtSink {
    producer: HeapProd<f32>,
    channels: usize,
    frames: Arc<Counter>,
    dropped: Arc<Counter>,
    /// Frames stored in this ring since the stream began; written by the callback only.
    stored: Arc<AtomicU64>,
    gap_tx: Sender<u64>,
    gap_rx: Receiver<u64>,
    /// The last gap sent: a ring that stays full sends one, not one per callback.
    last_gap: Option<u64>,
}

/// Gaps not yet read that a stream keeps; one more is not recorded (its window joins the two sides). The reader
/// reads them at every pass, at least every 250 ms.
const GAP_QUEUE: usize = 64;

/// Marks a gap in a stream's audio at the sink's current position, from outside the audio callback: cpal's
/// error callback, when the device reports an overrun (xrun) and recovers from it. Allocation-free.
#[derive(Clone)]
pub struct GapMarker {
    stored: Arc<AtomicU64>,
    tx: Sender<u64>,
}

impl GapMarker {
    pub fn mark(&self) {
        let _ = self.tx.try_send(self.stored.load(Ordering::Acquire));
    }
}

/// What a stream error means for the stream (cpal says, with its error kinds, whether the stream goes on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStreamError {
    /// An overrun: audio was lost, and the backend has already restarted the stream. Counted, and a gap is
    /// marked so that no window joins the two sides; the stream is kept. Not logged from cpal's audio thread
    /// (the supervisor logs the count).
    Gap,
    /// The default device's route changed and the stream follows it (not on ALSA): another microphone may be
    /// listening now. Logged, and a gap is marked; the stream is kept.
    Rerouted,
    /// Real-time scheduling refused: the stream runs, with more risk of overruns. Logged.
    Note,
    /// Anything else: the stream is closed and opened again with backoff.
    Reopen,
}

pub fn on_stream_error(kind: cpal::ErrorKind) -> OnStreamError {
    use cpal::ErrorKind as K;
    match kind {
        K::Xrun => OnStreamError::Gap,
        K::DeviceChanged => OnStreamError::Rerouted,
        K::RealtimeDenied => OnStreamError::Note,
        _ => OnStreamError::Reopen,
    }
}

/// A sample type the callback can store as `f32`.
pub trait ToF32: Copy {
    fn to_f32(self) -> f32;
}
impl ToF32 for f32 {
    #[inline]
    fn to_f32(self) -> f32 {
        self
    }
}
impl ToF32 for i16 {
    #[inline]
    fn to_f32(self) -> f32 {
        self as f32 / 32768.0
    }
}
impl ToF32 for i32 {
    #[inline]
    fn to_f32(self) -> f32 {
        (self as f64 / 2_147_483_648.0) as f32
    }
}
impl ToF32 for u16 {
    #[inline]
    fn to_f32(self) -> f32 {
        (self as f32 - 32768.0) / 32768.0
    }
}
impl ToF32 for cpal::I24 {
    #[inline]
    fn to_f32(self) -> f32 {
        self.inner() as f32 / 8_388_608.0
    }
}
impl ToF32 for u8 {
    #[inline]
    fn to_f32(self) -> f32 {
        (self as f32 - 128.0) / 128.0
    }
}

impl RtSink {
    /// A ring of `capacity` samples; returns the sink (for the callback) and the consumer (for the reader).
    pub fn new(
        capacity: usize,
        channels: usize,
        frames: Arc<Counter>,
        dropped: Arc<Counter>,
    ) -> (RtSink, HeapCons<f32>) {
        let (producer, consumer) = HeapRb::<f32>::new(capacity.max(channels.max(1))).split();
        let (gap_tx, gap_rx) = crossbeam_channel::bounded(GAP_QUEUE);
        (
            RtSink {
                producer,
                channels: channels.max(1),
                frames,
                dropped,
                stored: Arc::default(),
                gap_tx,
                gap_rx,
                last_gap: None,
            },
            consumer,
        )
    }

    /// Where audio was lost inside this stream: for each loss, the number of frames the ring had taken before it
    /// (so the reader knows where, in what it pops, the audio stops being continuous). For the reader, in the
    /// [`StreamHandle`].
    pub fn gaps(&self) -> Receiver<u64> {
        self.gap_rx.clone()
    }

    /// A handle that marks a gap from outside the callback ([`GapMarker`]).
    pub fn gap_marker(&self) -> GapMarker {
        GapMarker {
            stored: self.stored.clone(),
            tx: self.gap_tx.clone(),
        }
    }

    /// The callback body: converts and copies `data` into the ring; counts frames and what did not fit.
    /// No locks, no allocation, no I/O.
    #[inline]
    pub fn write<T: ToF32>(&mut self, data: &[T]) {
        // Whole frames only, so that the reader never sees channels shifted.
        let vacant = self.producer.vacant_len();
        let fit = data.len().min(vacant - vacant % self.channels);
        let stored = self
            .producer
            .push_iter(data[..fit].iter().map(|s| s.to_f32()));
        let at = self.stored.load(Ordering::Relaxed) + (stored / self.channels) as u64;
        self.stored.store(at, Ordering::Release);
        if stored < data.len() {
            self.dropped.add((data.len() - stored) as u64);
            if self.last_gap != Some(at) {
                self.last_gap = Some(at);
                let _ = self.gap_tx.try_send(at);
            }
        }
        self.frames.add((data.len() / self.channels) as u64);
    }
}

/// One line per capture device with its supported input configurations (`sonitor devices`).
/// [`list_devices`] on a thread of its own, waited for `within`: a device whose open blocks (an ALSA plugin that
/// waits on something) would hold the listing, and the command, for ever.
pub fn list_devices_within(within: Duration) -> anyhow::Result<String> {
    with_stderr_logged(|| answer_within("devices".into(), within, list_devices)).unwrap_or_else(|| {
        Err(anyhow::anyhow!(
            "the listing did not end within {} s: a device does not answer when asked (an ALSA plugin that waits \
             on something: a network, Bluetooth, a FIFO?); `aplay -L` names the PCMs without opening them",
            within.as_secs()
        ))
    })
}

/// Runs `f` with the process's standard error (fd 2) sent to a temporary file, then logs what was written there at
/// debug. Listing the devices opens every ALSA PCM, and libjack, which the ALSA `jack` plugin loads, prints on its
/// own ("Cannot connect to server socket", "jack server is not running or cannot be started") where ALSA's error
/// handler does not reach: on a machine without a JACK server that read as a failure of `sonitor devices`. Where
/// fd 2 cannot be redirected, `f` runs as it is.
fn with_stderr_logged<T>(f: impl FnOnce() -> T) -> T {
    use std::io::{Read, Seek};
    use std::os::fd::AsRawFd;
    let Ok(mut file) = tempfile::tempfile() else {
        return f();
    };
    // SAFETY: dup/dup2/close on descriptors this function owns (the copy of fd 2) or that stay open (fd 2, the
    // file); fd 2 is given back before the file is dropped.
    let saved = unsafe { libc::dup(2) };
    if saved < 0 {
        return f();
    }
    if unsafe { libc::dup2(file.as_raw_fd(), 2) } < 0 {
        unsafe { libc::close(saved) };
        return f();
    }
    let out = f();
    unsafe {
        libc::dup2(saved, 2);
        libc::close(saved);
    }
    let mut said = String::new();
    if file.rewind().is_ok() && file.read_to_string(&mut said).is_ok() {
        for line in said.lines().filter(|l| !l.trim().is_empty()) {
            log::debug!("audio library: {line}");
        }
    }
    out
}

pub fn list_devices() -> anyhow::Result<String> {
    let mut s = String::new();
    for host_id in cpal::available_hosts() {
        let host = match cpal::host_from_id(host_id) {
            Ok(h) => h,
            Err(e) => {
                s.push_str(&format!("host {host_id:?}: unavailable ({e})\n"));
                continue;
            }
        };
        let default_id = host.default_input_device().and_then(|d| d.id().ok());
        s.push_str(&format!("host {}\n", host_id.name()));
        let devices = host.input_devices().map_err(|e| anyhow::anyhow!("{e}"))?;
        for d in devices {
            let Ok(id) = d.id() else { continue };
            let Ok(configs) = d.supported_input_configs() else {
                continue;
            };
            // One line per rate range and sample format, the channel counts as ranges: a plugin such as
            // ALSA's `null` offers every count from 1 to 64 in every format.
            let mut by_rate_format: std::collections::BTreeMap<(u32, u32, String), Vec<u16>> =
                Default::default();
            for c in configs {
                by_rate_format
                    .entry((
                        c.min_sample_rate(),
                        c.max_sample_rate(),
                        c.sample_format().to_string(),
                    ))
                    .or_default()
                    .push(c.channels());
            }
            let configs: Vec<String> = by_rate_format
                .into_iter()
                .map(|((lo, hi, format), channels)| {
                    format!("{} ch, {lo}-{hi} Hz, {format}", ranges(channels))
                })
                .collect();
            if configs.is_empty() {
                continue;
            }
            let mark = if Some(&id) == default_id.as_ref() {
                " (default)"
            } else {
                ""
            };
            s.push_str(&format!("  device = \"{id}\"{mark}\n      {}\n", d));
            for c in configs {
                s.push_str(&format!("      {c}\n"));
            }
        }
    }
    Ok(s)
}

/// Channel counts as a short list of ranges: `[1, 2, 3, 4, 6]` → `1-4, 6`.
fn ranges(mut v: Vec<u16>) -> String {
    v.sort_unstable();
    v.dedup();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            v[i].to_string()
        } else {
            format!("{}-{}", v[i], v[j])
        });
        i = j + 1;
    }
    out.join(", ")
}

/// Why [`find_device`] found no device, in two kinds: the caller retries the first, not the second.
#[derive(Debug, thiserror::Error)]
pub enum FindError {
    /// The device is not there now (unplugged, not yet enumerated at boot, no sound card): it may appear later.
    #[error("capture device '{spec}' does not exist (see `sonitor devices` for the ids)")]
    Absent { spec: String },
    /// The system has no default input device now: as [`FindError::Absent`].
    #[error("there is no default input device")]
    NoDefault,
    /// The id cannot name a device (an unknown host, a malformed id): it never will.
    #[error("device '{spec}': {why}")]
    Invalid { spec: String, why: String },
}

impl FindError {
    /// Whether the device may yet appear, so that opening it again later can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Absent { .. } | Self::NoDefault)
    }
}

/// Why [`choose_config`] settled no configuration: the device could not be asked (cpal's error, whose kind says
/// whether it may pass), or it answered and offers nothing the file asks for (channels, rate, format).
#[derive(Debug, thiserror::Error)]
pub enum ChooseError {
    #[error("{what}: {}", .source.to_string().trim_end_matches('.'))]
    Asking {
        what: &'static str,
        source: cpal::Error,
    },
    #[error("{0:#}")]
    Unsuitable(anyhow::Error),
}

impl ChooseError {
    /// Whether asking the device again later can succeed: it is not there (the system's `default` PCM with no
    /// sound card, a USB microphone not yet enumerated) or busy with another program. What cpal 0.18's ALSA
    /// backend reports for these calls: not available (ENOENT, ENODEV), busy (EBUSY, EAGAIN), permission denied,
    /// unsupported, or a backend error for any other errno.
    pub fn is_retryable(&self) -> bool {
        use cpal::ErrorKind as K;
        matches!(self, Self::Asking { source, .. }
            if matches!(source.kind(), K::DeviceNotAvailable | K::DeviceBusy | K::HostUnavailable))
    }

    /// A failure cpal cannot name (`BackendError`): on Linux, most often ALSA's pulse or pipewire plugin finding
    /// no sound server to talk to (refused: nothing says it will start).
    pub fn is_backend(&self) -> bool {
        matches!(self, Self::Asking { source, .. } if source.kind() == cpal::ErrorKind::BackendError)
    }
}

/// Finds the configured capture device: `default`, a full id (`alsa:hw:CARD=…`), or an ALSA PCM name.
pub fn find_device(spec: &str) -> Result<cpal::Device, FindError> {
    let host = cpal::default_host();
    if spec == "default" {
        return host.default_input_device().ok_or(FindError::NoDefault);
    }
    let id_text = if spec.contains(':')
        && spec
            .split(':')
            .next()
            .is_some_and(|h| h == "alsa" || h == "jack" || h == "pulseaudio" || h == "pipewire")
    {
        spec.to_string()
    } else {
        format!("{}:{spec}", host.id().name())
    };
    let invalid = |why: String| FindError::Invalid {
        spec: spec.to_string(),
        why,
    };
    // An empty id, or a host with no name after it, names no device now or later: refused, not waited for
    // (review27: `device = ""` started a daemon that retried it for ever).
    if spec.trim().is_empty()
        || id_text
            .split_once(':')
            .is_some_and(|(_, n)| n.trim().is_empty())
    {
        return Err(invalid(
            "names no device (`default`, or an id that `sonitor devices` lists)".into(),
        ));
    }
    let id: cpal::DeviceId = id_text.parse().map_err(|e| invalid(format!("{e}")))?;
    let host = cpal::host_from_id(id.host()).map_err(|e| invalid(format!("{e}")))?;
    host.device_by_id(&id).ok_or_else(|| FindError::Absent {
        spec: spec.to_string(),
    })
}

/// Why [`probe`] settled no configuration: the device is not found, or not usable as the file asks.
#[derive(Debug)]
pub enum ProbeError {
    Find(FindError),
    Choose(ChooseError),
}

/// How long [`probe`] waits for a device's answer.
pub const PROBE_WAIT: Duration = Duration::from_secs(10);

/// [`find_device`] then [`choose_config`] for `cfg`'s device `spec` (and a stream opened and closed when it sets
/// `buffer_frames`: [`buffer_frames_taken`]), on a thread of their own, waited for
/// `within`: an ALSA plugin whose open blocks (a PCM on a network, on Bluetooth, on a FIFO nobody writes) held
/// `validate` and the daemon's start for ever, deaf to SIGTERM. `None`: no answer in time; the thread is left to
/// its call, and ends with the process.
pub fn probe(
    spec: &str,
    cfg: &DeviceConfig,
    model_rate: u32,
    within: Duration,
) -> Option<Result<(cpal::StreamConfig, cpal::SampleFormat), ProbeError>> {
    let (spec, cfg) = (spec.to_string(), cfg.clone());
    answer_within(format!("probe-{}", cfg.name), within, move || {
        let dev = find_device(&spec).map_err(ProbeError::Find)?;
        let (sc, format) = choose_config(&dev, &cfg, model_rate).map_err(ProbeError::Choose)?;
        if let Some(n) = cfg.buffer_frames {
            buffer_frames_taken(&dev, &sc, format, n).map_err(ProbeError::Choose)?;
        }
        Ok((sc, format))
    })
}

/// Whether the device takes `buffer_frames = n` with `sc` and `format`: only opening a stream tells (ALSA narrows
/// the period sizes it offers once rate, channels and format are set, and what it lists beforehand is wider).
/// One it refuses was accepted by `validate`, and then every open of `run` was refused and retried for ever
/// (review33). A stream that cannot be opened for another reason (the device busy, held by the running daemon at
/// a reload) is not this check's concern: the open that matters says it. The stream is opened only when the file
/// sets `buffer_frames`: a shared device (dsnoop, a sound server, ALSA's `file` plugin, which truncates its
/// output file) is then opened once more at each check.
fn buffer_frames_taken(
    dev: &cpal::Device,
    sc: &cpal::StreamConfig,
    format: cpal::SampleFormat,
    n: u32,
) -> Result<(), ChooseError> {
    match dev.build_input_stream_raw(
        *sc,
        format,
        |_: &cpal::Data, _: &cpal::InputCallbackInfo| {},
        |_| {},
        Some(Duration::from_secs(2)),
    ) {
        // cpal's own checks of the size, which name it. Any other EINVAL of the audio stack is UnsupportedConfig
        // too (a USB device still settling at boot): not blamed on buffer_frames, nor made a refusal of the
        // file (exit 78, not restarted), review34.
        Err(e)
            if e.kind() == cpal::ErrorKind::UnsupportedConfig
                && e.to_string().contains("Buffer size") =>
        {
            Err(ChooseError::Unsuitable(anyhow::anyhow!(
                "buffer_frames {n} is refused by the device ({}); leave buffer_frames out for the device's \
                 default, or set a smaller one",
                e.to_string().trim_end_matches('.')
            )))
        }
        _ => Ok(()),
    }
}

/// `ask` on a thread of its own (`name`), its answer waited for `within`: `None` when it does not come (the
/// thread is left to its call, and ends with the process) or the thread cannot start. For the audio stack's
/// calls, which an ALSA plugin can block for ever.
fn answer_within<T: Send + 'static>(
    name: String,
    within: Duration,
    ask: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let _ = tx.send(ask());
        })
        .ok()?;
    rx.recv_timeout(within).ok()
}

/// The stream configuration to open: channels, rate and sample format.
/// The sample formats the capture callback converts, in order of preference.
const CAPTURE_FORMATS: [cpal::SampleFormat; 6] = {
    use cpal::SampleFormat as F;
    [F::I16, F::F32, F::I32, F::I24, F::U16, F::U8]
};

pub fn choose_config(
    device: &cpal::Device,
    cfg: &DeviceConfig,
    model_rate: u32,
) -> Result<(cpal::StreamConfig, cpal::SampleFormat), ChooseError> {
    let default = device
        .default_input_config()
        .map_err(|source| ChooseError::Asking {
            what: "no input configuration",
            source,
        })?;
    let channels = cfg.channels.unwrap_or(default.channels());
    let ranges: Vec<cpal::SupportedStreamConfigRange> = device
        .supported_input_configs()
        .map_err(|source| ChooseError::Asking {
            what: "cannot list its configurations",
            source,
        })?
        .filter(|r| r.channels() == channels)
        .collect();
    if ranges.is_empty() {
        return Err(ChooseError::Unsuitable(anyhow::anyhow!(
            "the device has no input configuration with {channels} channel(s)"
        )));
    }
    let (rate, format) = rate_and_format(
        &ranges,
        channels,
        cfg.sample_rate,
        model_rate,
        default.sample_rate(),
    )
    .map_err(ChooseError::Unsuitable)?;
    let buffer_size = match cfg.buffer_frames {
        // Whether the device takes it, only an open tells ([`buffer_frames_taken`], in the probe).
        Some(n) => cpal::BufferSize::Fixed(n),
        None => cpal::BufferSize::Default,
    };
    Ok((
        cpal::StreamConfig {
            channels,
            sample_rate: rate,
            buffer_size,
        },
        format,
    ))
}

/// The rate (the configured one, else the model's, else the device's default) and the first sample format of
/// [`CAPTURE_FORMATS`] that the device offers at it, among its configurations with the wanted channel count.
fn rate_and_format(
    ranges: &[cpal::SupportedStreamConfigRange],
    channels: u16,
    wanted: Option<u32>,
    model_rate: u32,
    default_rate: u32,
) -> anyhow::Result<(u32, cpal::SampleFormat)> {
    let fits = |r: &cpal::SupportedStreamConfigRange, rate: u32| {
        r.min_sample_rate() <= rate && rate <= r.max_sample_rate()
    };
    let rate = match wanted {
        Some(r) if !ranges.iter().any(|x| fits(x, r)) => {
            let offered =
                listed(
                    ranges
                        .iter()
                        .map(|x| match (x.min_sample_rate(), x.max_sample_rate()) {
                            (lo, hi) if lo == hi => format!("{lo}"),
                            (lo, hi) => format!("{lo}-{hi}"),
                        }),
                );
            anyhow::bail!(
                "sample_rate {r} Hz is not offered with {channels} channel(s) (the device offers {} Hz); leave \
                 sample_rate out to let sonitor choose, or use a 'plughw:' device, which converts",
                offered
            );
        }
        Some(r) => r,
        None if ranges.iter().any(|r| fits(r, model_rate)) => model_rate,
        None if ranges.iter().any(|r| fits(r, default_rate)) => default_rate,
        None => ranges.first().map_or(model_rate, |r| r.max_sample_rate()),
    };
    let format = CAPTURE_FORMATS
        .into_iter()
        .find(|f| ranges.iter().any(|r| r.sample_format() == *f && fits(r, rate)))
        .ok_or_else(|| {
            let offered = listed(ranges.iter().map(|r| r.sample_format().to_string()));
            anyhow::anyhow!(
                "no sample format sonitor reads (i16, f32, i32, i24, u16, u8) at {rate} Hz with {channels} \
                 channel(s); the device offers {offered}; a 'plughw:' device converts"
            )
        })?;
    Ok((rate, format))
}

/// `items` sorted, each once, joined with commas: what a device offers, for a refusal.
fn listed(items: impl Iterator<Item = String>) -> String {
    let mut v: Vec<String> = items.collect();
    v.sort();
    v.dedup();
    v.join(", ")
}

/// Opens the stream and starts it; the callback writes into a fresh ring.
fn open_capture(
    cfg: &DeviceConfig,
    model_rate: u32,
    metrics: &InputMetrics,
    failed: Arc<AtomicBool>,
) -> anyhow::Result<(cpal::Stream, StreamHandle, String)> {
    let spec = cfg.device.as_deref().unwrap_or("default");
    let device = find_device(spec)?;
    let (sc, format) = choose_config(&device, cfg, model_rate)
        .map_err(|e| anyhow::anyhow!("capture device '{spec}': {e}"))?;
    let capacity = (sc.sample_rate as f32 * cfg.ring_seconds) as usize * sc.channels as usize;
    let (mut sink, consumer) = RtSink::new(
        capacity,
        sc.channels as usize,
        metrics.frames.clone(),
        metrics.dropped_samples.clone(),
    );
    let gaps = sink.gaps();
    let marker = sink.gap_marker();
    let xruns = metrics.xruns.clone();
    // cpal calls this from its audio thread (on ALSA, between two data callbacks): an overrun, which can come
    // often on a loaded Pi, is only counted; rarer errors are logged.
    let on_error = move |e: cpal::Error| match on_stream_error(e.kind()) {
        OnStreamError::Gap => {
            xruns.inc();
            marker.mark();
        }
        OnStreamError::Rerouted => {
            log::warn!("capture: {e}; the stream follows the new default device");
            marker.mark();
        }
        OnStreamError::Note => log::warn!("capture: {e}"),
        OnStreamError::Reopen => {
            log::warn!("capture: stream error: {e}");
            failed.store(true, Ordering::SeqCst);
        }
    };
    let timeout = Some(Duration::from_secs(5));
    use cpal::SampleFormat as F;
    let stream = match format {
        F::I16 => {
            device.build_input_stream::<i16, _, _>(sc, move |d, _| sink.write(d), on_error, timeout)
        }
        F::F32 => {
            device.build_input_stream::<f32, _, _>(sc, move |d, _| sink.write(d), on_error, timeout)
        }
        F::I32 => {
            device.build_input_stream::<i32, _, _>(sc, move |d, _| sink.write(d), on_error, timeout)
        }
        F::I24 => device.build_input_stream::<cpal::I24, _, _>(
            sc,
            move |d, _| sink.write(d),
            on_error,
            timeout,
        ),
        F::U16 => {
            device.build_input_stream::<u16, _, _>(sc, move |d, _| sink.write(d), on_error, timeout)
        }
        F::U8 => {
            device.build_input_stream::<u8, _, _>(sc, move |d, _| sink.write(d), on_error, timeout)
        }
        other => {
            anyhow::bail!("capture device '{spec}': sample format {other} is not read by sonitor")
        }
    }
    .map_err(|e| anyhow::anyhow!("capture device '{spec}': cannot open the stream: {e}"))?;
    stream
        .play()
        .map_err(|e| anyhow::anyhow!("capture device '{spec}': cannot start the stream: {e}"))?;
    let description = format!(
        "{spec}: {} ch, {} Hz, {format}",
        sc.channels, sc.sample_rate
    );
    Ok((
        stream,
        StreamHandle {
            consumer,
            sample_rate: sc.sample_rate,
            channels: sc.channels as usize,
            end: Arc::default(),
            paced: true,
            gaps,
        },
        description,
    ))
}

/// Runs the capture supervisor of input `index` until `stop`: opens, watches, reopens with backoff.
#[allow(clippy::too_many_arguments)]
pub fn spawn_capture(
    index: usize,
    cfg: DeviceConfig,
    model_rate: u32,
    metrics: Arc<crate::metrics::Metrics>,
    streams: Sender<StreamHandle>,
    events: Sender<SourceEvent>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("capture-{}", cfg.name))
        .spawn(move || {
            let m = &metrics.inputs[index];
            let mut backoff = cfg.reopen_min;
            let mut first = true;
            while !stop.load(Ordering::SeqCst) {
                let failed = Arc::new(AtomicBool::new(false));
                let opening = |since| *m.opening_since.lock().unwrap_or_else(|e| e.into_inner()) = since;
                opening(Some(Instant::now()));
                let Some(opened) =
                    open_waiting(index, &cfg, model_rate, &metrics, failed.clone(), &stop)
                else {
                    // Stopped while the open had not returned: its thread is left to it.
                    return;
                };
                opening(None);
                match opened {
                    Ok((stream, handle, description)) => {
                        if !first {
                            m.reopens.inc();
                        }
                        first = false;
                        let _ = events.send(SourceEvent::Opened {
                            input: index,
                            description,
                            new_stream: true,
                        });
                        let end = handle.end.clone();
                        if streams.send(handle).is_err() {
                            return;
                        }
                        let mut last_frames = m.frames.get();
                        let mut last_progress = Instant::now();
                        let mut healthy_since = Instant::now();
                        let mut last_xruns = m.xruns.get();
                        loop {
                            std::thread::sleep(Duration::from_millis(100));
                            if stop.load(Ordering::SeqCst) {
                                close_waiting(&cfg, stream, m, &end, &stop);
                                return;
                            }
                            let x = m.xruns.get();
                            if x != last_xruns {
                                // The first, then at each power of two: a device that overruns every few
                                // seconds does not flood the journal.
                                if crate::metrics::log_due(last_xruns, x) {
                                    log::warn!(
                                        "capture {}: the device overran {x} time(s) so far (audio lost, the \
                                         stream kept; windows start again after each gap; \
                                         sonitor_input_xruns_total). A busy CPU or a small buffer: a larger \
                                         `buffer_frames` helps",
                                        cfg.name
                                    );
                                }
                                last_xruns = x;
                            }
                            let f = m.frames.get();
                            if f != last_frames {
                                last_frames = f;
                                last_progress = Instant::now();
                                m.up.set(1);
                            }
                            if failed.load(Ordering::SeqCst) {
                                m.errors.inc();
                                let _ = events.send(SourceEvent::Failed {
                                    input: index,
                                    reason: "the stream reported an error (device unplugged?)"
                                        .into(),
                                });
                                break;
                            }
                            if last_progress.elapsed() >= cfg.stall_timeout {
                                let _ = events.send(SourceEvent::Stalled { input: index });
                                break;
                            }
                            if healthy_since.elapsed() > Duration::from_secs(60) {
                                backoff = cfg.reopen_min;
                                healthy_since = Instant::now();
                            }
                        }
                        m.up.set(0);
                        close_waiting(&cfg, stream, m, &end, &stop);
                    }
                    Err(e) => input_failed(index, m, &events, format!("{e:#}")),
                }
                // Back off before reopening; wake up early to stop.
                back_off(&mut backoff, &cfg, &stop, m);
            }
        })
}

/// How long a stream's close may take before its supervisor says that the audio stack holds it, and ends the
/// stream for the reader without it ([`close_waiting`]).
pub const CLOSE_STUCK_AFTER: Duration = Duration::from_secs(5);

/// How long a stop waits for a stream's close before it leaves the close to its thread.
const CLOSE_AT_STOP: Duration = Duration::from_secs(2);

/// Closes `stream` (input `cfg`) on a thread of its own and waits for it, raising the input's `retry_beats`
/// meanwhile. cpal's drop joins the stream's capture thread, and a driver or plugin that blocks that thread (a USB
/// microphone's driver hung on its removal; ALSA's `file` plugin writing into a pipe nobody reads) held the
/// supervisor with it: systemd's watchdog was fed no more and restarted the whole daemon, every machine with it,
/// and a stop waited for the supervisor until its deadline (status 70).
///
/// `end` is closed once the close has returned (after the stream's last callback, so the reader ends the stream
/// once it has read the ring), or once it has not for [`CLOSE_STUCK_AFTER`] (said once, counted in
/// `stuck_closes`): the reader then writes the stream's clips with what there is instead of waiting too. The
/// supervisor opens the device again only after the close has returned: a device the audio stack still holds
/// would hardly open, and each try could leave one more thread behind. On `stop`, the close is waited for
/// [`CLOSE_AT_STOP`] at most, then left to its thread (the process's exit ends it).
fn close_waiting(
    cfg: &DeviceConfig,
    stream: cpal::Stream,
    m: &InputMetrics,
    end: &StreamEnd,
    stop: &AtomicBool,
) {
    let (tx, rx) = crossbeam_channel::bounded::<()>(1);
    // Should no thread start, the closure is dropped here, and the stream with it: closed on this thread.
    let _ = std::thread::Builder::new()
        .name(format!("close-{}", cfg.name))
        .spawn(move || {
            drop(stream);
            let _ = tx.send(());
        });
    let t0 = Instant::now();
    let mut stuck = false;
    let mut stopped: Option<Instant> = None;
    loop {
        m.retry_beats.inc();
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(()) | Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                end.close();
                if stuck {
                    log::info!(
                        "input {}: its stream's close returned after {:.0} s{}",
                        cfg.name,
                        t0.elapsed().as_secs_f64(),
                        if stopped.is_some() {
                            ""
                        } else {
                            "; opening the device again"
                        }
                    );
                }
                return;
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
        }
        if stop.load(Ordering::SeqCst)
            && stopped.get_or_insert_with(Instant::now).elapsed() >= CLOSE_AT_STOP
        {
            end.close();
            log::warn!(
                "input {}: its stream's close has not returned after {:.0} s; left to the audio stack, the stop \
                 goes on",
                cfg.name,
                t0.elapsed().as_secs_f64()
            );
            return;
        }
        if !stuck && t0.elapsed() >= CLOSE_STUCK_AFTER {
            stuck = true;
            m.stuck_closes.inc();
            end.close();
            log::warn!(
                "input {}: closing its stream has not returned for {} s: the audio stack holds it (a driver hung \
                 on a device pulled out, an ALSA plugin blocked on its output?); its machines get no audio until \
                 it returns, the others are watched as before (sonitor_input_stuck_closes_total). If it does not \
                 return, unplug the device (a driver hung in the kernel holds it until then, or a reboot)",
                cfg.name,
                CLOSE_STUCK_AFTER.as_secs()
            );
        }
    }
}

/// [`open_capture`] of input `index` on a thread of its own, waited for until it answers or `stop` is set (`None`),
/// raising the input's `retry_beats` meanwhile: an open that never returns (an ALSA plugin that waits on a
/// network, on Bluetooth, on a FIFO nobody writes) is the device's trouble, like a microphone unplugged. It held
/// the supervisor, which starved systemd's watchdog when no other input delivered audio, and the restart that
/// followed every ~40 s took the node offline on MQTT without freeing the device. One open at a time: a second is
/// asked only once the first has answered.
fn open_waiting(
    index: usize,
    cfg: &DeviceConfig,
    model_rate: u32,
    metrics: &Arc<crate::metrics::Metrics>,
    failed: Arc<AtomicBool>,
    stop: &AtomicBool,
) -> Option<anyhow::Result<(cpal::Stream, StreamHandle, String)>> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let (cfg2, m2) = (cfg.clone(), metrics.clone());
    let asked = std::thread::Builder::new()
        .name(format!("open-{}", cfg.name))
        .spawn(move || {
            let _ = tx.send(open_capture(&cfg2, model_rate, &m2.inputs[index], failed));
        });
    if let Err(e) = asked {
        return Some(Err(anyhow::anyhow!(
            "cannot start a thread to open the device: {e}"
        )));
    }
    let beat = &metrics.inputs[index].retry_beats;
    loop {
        beat.inc();
        if stop.load(Ordering::SeqCst) {
            return None;
        }
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(opened) => return Some(opened),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                return Some(Err(anyhow::anyhow!(
                    "opening the device failed inside the audio stack (its thread ended without an answer)"
                )))
            }
        }
    }
}

/// Sleeps `wait` (a reopen backoff) in steps of at most 50 ms, raising `beat` at each; false as soon as `stop` is
/// set.
fn wait_unless_stopped(wait: Duration, stop: &AtomicBool, beat: &Counter) -> bool {
    let until = Instant::now().checked_add(wait);
    while until.is_none_or(|u| Instant::now() < u) {
        beat.inc();
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50).min(wait));
    }
    !stop.load(Ordering::SeqCst)
}

/// Waits, with the input's backoff, for a looped file absent at the start to be there and readable; `None` when
/// told to stop first. Each try that fails says why (`SourceEvent::Failed`: its machines are `NO_AUDIO` with that
/// reason; a repeated reason is logged once).
fn wait_for_file(
    index: usize,
    cfg: &DeviceConfig,
    path: &Path,
    m: &InputMetrics,
    events: &Sender<SourceEvent>,
    stop: &AtomicBool,
) -> Option<sonitor_core::audio::WavInfo> {
    let mut backoff = cfg.reopen_min;
    loop {
        let reason = match sonitor_core::audio::read_wav_info(path) {
            Ok(info) => return Some(info),
            Err(_) if crate::config::file_absent(path) => format!(
                "{}: the file does not exist (yet); its machines get audio once it is there",
                path.display()
            ),
            Err(e) => e.to_string(),
        };
        input_failed(index, m, events, reason);
        if !back_off(&mut backoff, cfg, stop, m) {
            return None;
        }
    }
}

/// Input `index` could not be opened or read (`reason`): down, counted, and said to the controller, whose
/// machines on it read `NO_AUDIO` with that reason.
fn input_failed(index: usize, m: &InputMetrics, events: &Sender<SourceEvent>, reason: String) {
    m.up.set(0);
    m.errors.inc();
    let _ = events.send(SourceEvent::Failed {
        input: index,
        reason,
    });
}

/// Waits out the input's reopen `backoff` ([`wait_unless_stopped`]; false when told to stop), then doubles it up to
/// `reopen_max`.
fn back_off(
    backoff: &mut Duration,
    cfg: &DeviceConfig,
    stop: &AtomicBool,
    m: &InputMetrics,
) -> bool {
    let go_on = wait_unless_stopped(*backoff, stop, &m.retry_beats);
    *backoff = backoff.saturating_mul(2).min(cfg.reopen_max);
    go_on
}

/// Replays a WAV file (all channels, interleaved) into a ring, paced in real time or as fast as the reader
/// drains it (then nothing is ever dropped).
pub fn spawn_file(
    index: usize,
    cfg: DeviceConfig,
    metrics: Arc<crate::metrics::Metrics>,
    streams: Sender<StreamHandle>,
    events: Sender<SourceEvent>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let path: PathBuf = cfg
        .path
        .clone()
        .ok_or_else(|| anyhow::anyhow!("device '{}': a file source needs `path`", cfg.name))?;
    // Only the header: `run`'s configuration check (`check::check`) has already read the data to its end and
    // refused a corrupt or truncated recording. The replay streams it block by block in constant memory; a read
    // error there still ends the input with `SourceEvent::Failed`.
    // A looped file not there yet is waited for, as a capture device away at the start is (`check` warned).
    let looped = cfg.at_end == AtEnd::Loop;
    let first = match sonitor_core::audio::read_wav_info(&path) {
        Err(_) if looped && crate::config::file_absent(&path) => None,
        header => Some(header?),
    };
    let handle = std::thread::Builder::new()
        .name(format!("file-{}", cfg.name))
        .spawn(move || {
            let m = &metrics.inputs[index];
            let Some(info) = first.or_else(|| wait_for_file(index, &cfg, &path, m, &events, &stop))
            else {
                return;
            };
            let channels = info.channels as usize;
            let frames = info.frames as usize;
            let rate = info.sample_rate;
            let capacity = ((rate as f32 * cfg.ring_seconds) as usize).max(1024) * channels;
            let (mut sink, consumer) = RtSink::new(
                capacity,
                channels,
                m.frames.clone(),
                m.dropped_samples.clone(),
            );
            let end: Arc<StreamEnd> = Arc::default();
            let _ = events.send(SourceEvent::Opened {
                input: index,
                description: format!(
                    "{}: {} ch, {} Hz, {:.1} s{}",
                    path.display(),
                    channels,
                    rate,
                    frames as f64 / rate as f64,
                    if cfg.realtime {
                        ""
                    } else {
                        ", as fast as possible"
                    }
                ),
                new_stream: true,
            });
            if streams
                .send(StreamHandle {
                    consumer,
                    sample_rate: rate,
                    channels,
                    end: end.clone(),
                    paced: cfg.realtime,
                    gaps: sink.gaps(),
                })
                .is_err()
            {
                return;
            }
            m.up.set(1);
            // Paced: 100 ms blocks, each written when its last sample is due, as a sound card hands over a
            // period once it has been recorded (smaller blocks only wake the daemon more often). As fast as
            // possible: 20 ms blocks. Never more than half the ring.
            let block_frames = if cfg.realtime {
                rate as usize / 10
            } else {
                rate as usize / 50
            };
            let block = block_frames.min(capacity / channels.max(1) / 2).max(1) * channels;
            // Paced: frame `n` is due at `base.0 + (n - base.1) / rate`. After a failed pass the clock starts again
            // where the replay does: kept from the first start, the replay made up for the time the file was away
            // at full speed, overflowed its ring, and counted that as dropped samples.
            let base = std::cell::Cell::new((Instant::now(), 0u64));
            let mut sent_frames: u64 = 0;
            let mut buf: Vec<f32> = Vec::with_capacity(block);
            // After a failed pass (loop mode), the next pass that opens the file says so.
            let recovering = std::cell::Cell::new(false);
            // A looped file's end joins its start: for the windows, that is a gap.
            let pass_gap = sink.gap_marker();
            // One pass over the file: Ok(false) when told to stop.
            let mut play_once = || -> Result<bool, sonitor_core::audio::WavError> {
                let mut wav = sonitor_core::audio::WavBlocks::open(&path)?;
                if sent_frames > 0 {
                    pass_gap.mark();
                }
                let mut frames_this_pass = 0u64;
                // Each pass reads the header again: a file replaced by one of another format would be read as
                // the old one (stereo samples as mono ones: wrong scores, false alarms).
                let now = wav.info();
                if (now.channels as usize, now.sample_rate) != (channels, rate) {
                    return Err(sonitor_core::audio::WavError::Changed {
                        path: path.clone(),
                        reason: format!(
                            "the file changed format since start-up: {} ch, {} Hz, was {channels} ch, {rate} Hz \
                             (restart sonitor to replay it)",
                            now.channels, now.sample_rate
                        ),
                    });
                }
                // A file cut short since start-up (truncated in place, or being written again) is refused at
                // the start of each pass while it stays so: played, each pass would end at the cut, the next one
                // be called readable again, and its machines' health go OK and NO_AUDIO in turn.
                if let Some(cut) = wav.cut_short() {
                    return Err(cut);
                }
                if recovering.replace(false) {
                    m.up.set(1);
                    m.reopens.inc();
                    base.set((Instant::now(), sent_frames));
                    let _ = events.send(SourceEvent::Opened {
                        input: index,
                        description: format!("{}: readable again", path.display()),
                        new_stream: false,
                    });
                }
                loop {
                    if stop.load(Ordering::SeqCst) {
                        return Ok(false);
                    }
                    buf.clear();
                    if wav.read_into(&mut buf, block)? == 0 {
                        if frames_this_pass == 0 {
                            // A file emptied since start-up: a looped replay would reopen it at once, for ever.
                            return Err(sonitor_core::audio::WavError::Corrupt {
                                path: path.clone(),
                                reason: "it holds no audio now (0 frames); it had some at start-up".into(),
                            });
                        }
                        return Ok(true);
                    }
                    // Whole frames only (a data chunk that ends inside a frame).
                    let n = buf.len() - buf.len() % channels;
                    if cfg.realtime {
                        let end = sent_frames + (n / channels) as u64;
                        let (t0, n0) = base.get();
                        let due = t0 + Duration::from_secs_f64((end - n0) as f64 / rate as f64);
                        let now = Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                    } else {
                        // Lossless: wait for room.
                        while sink.producer.vacant_len() < n {
                            if stop.load(Ordering::SeqCst) {
                                return Ok(false);
                            }
                            std::thread::sleep(Duration::from_millis(2));
                        }
                    }
                    sink.write(&buf[..n]);
                    sent_frames += (n / channels) as u64;
                    frames_this_pass += (n / channels) as u64;
                }
            };
            let mut backoff = cfg.reopen_min;
            loop {
                match play_once() {
                    Ok(true) => backoff = cfg.reopen_min,
                    Ok(false) => return,
                    // The file changed since start-up (it was checked then): the block that met the problem
                    // is dropped and the problem reported. A looped replay tries again with backoff, as a
                    // capture device is reopened; otherwise the replay ends.
                    Err(e) => {
                        input_failed(index, m, &events, e.to_string());
                        if cfg.at_end != AtEnd::Loop {
                            break;
                        }
                        recovering.set(true);
                        if !back_off(&mut backoff, &cfg, &stop, m) {
                            return;
                        }
                        continue;
                    }
                }
                match cfg.at_end {
                    AtEnd::Loop => continue,
                    AtEnd::Stop | AtEnd::Exit => break,
                }
            }
            m.up.set(0);
            if cfg.at_end == AtEnd::Exit {
                end.finish();
            } else {
                end.close();
            }
            let _ = events.send(SourceEvent::Ended { input: index });
            // `at_end = "stop"`: the input is down as configured, and no restart would bring more of it than
            // the same file again. Its supervisor goes on turning, as one waiting for a device that is away
            // does, so that systemd's watchdog is fed while the daemon's other threads turn.
            if cfg.at_end == AtEnd::Stop {
                wait_unless_stopped(Duration::MAX, &stop, &m.retry_beats);
            }
        })?;
    Ok(handle)
}

use ringbuf::traits::Observer;

#[cfg(test)]
mod tests {
    use super::{on_stream_error, ranges, OnStreamError, RtSink};
    use ringbuf::traits::Consumer;

    /// An id that names nothing is refused (not retried for ever); an id of the right form that is not there
    /// now may appear later.
    #[test]
    fn an_empty_device_id_is_refused_not_waited_for() {
        for spec in ["", "  ", "alsa:", "alsa: "] {
            let Err(e) = super::find_device(spec) else {
                panic!("{spec:?} was found")
            };
            assert!(
                !e.is_retryable() && e.to_string().contains("names no device"),
                "{spec:?}: {e}"
            );
        }
    }

    #[test]
    fn an_overrun_keeps_the_stream_and_other_errors_reopen_it() {
        use cpal::ErrorKind as K;
        assert_eq!(on_stream_error(K::Xrun), OnStreamError::Gap);
        assert_eq!(on_stream_error(K::DeviceChanged), OnStreamError::Rerouted);
        assert_eq!(on_stream_error(K::RealtimeDenied), OnStreamError::Note);
        for k in [
            K::DeviceNotAvailable,
            K::DeviceBusy,
            K::StreamInvalidated,
            K::BackendError,
            K::PermissionDenied,
            K::Other,
        ] {
            assert_eq!(on_stream_error(k), OnStreamError::Reopen, "{k:?}");
        }
    }

    #[test]
    fn the_rate_and_format_are_chosen_or_the_refusal_says_what_the_device_offers() {
        use super::rate_and_format;
        use cpal::SampleFormat as F;
        let range = |lo, hi, f| {
            cpal::SupportedStreamConfigRange::new(1, lo, hi, cpal::SupportedBufferSize::Unknown, f)
        };
        // A 24-bit-only interface at 44.1/48 kHz: the model's 16 kHz is not offered, the default is taken.
        let i24 = [range(44_100, 44_100, F::I24), range(48_000, 48_000, F::I24)];
        assert_eq!(
            rate_and_format(&i24, 1, None, 16_000, 48_000).unwrap(),
            (48_000, F::I24)
        );
        let e = rate_and_format(&i24, 1, Some(16_000), 16_000, 48_000)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sample_rate 16000 Hz is not offered") && e.contains("44100, 48000 Hz"),
            "{e}"
        );
        // i16 is preferred where it is offered.
        let both = [range(8_000, 96_000, F::F32), range(8_000, 96_000, F::I16)];
        assert_eq!(
            rate_and_format(&both, 1, None, 16_000, 48_000).unwrap(),
            (16_000, F::I16)
        );
        let e = rate_and_format(&[range(8_000, 48_000, F::F64)], 1, None, 16_000, 48_000)
            .unwrap_err()
            .to_string();
        assert!(e.contains("the device offers f64"), "{e}");
    }

    #[test]
    fn every_capture_format_converts_full_scale_to_one() {
        use super::ToF32;
        assert_eq!(16_384i16.to_f32(), 0.5);
        assert_eq!((-32_768i16).to_f32(), -1.0);
        assert_eq!((1i32 << 30).to_f32(), 0.5);
        assert_eq!(cpal::I24::new(1 << 22).unwrap().to_f32(), 0.5);
        assert_eq!(cpal::I24::new(-(1 << 23)).unwrap().to_f32(), -1.0);
        assert_eq!(49_152u16.to_f32(), 0.5);
        assert_eq!(192u8.to_f32(), 0.5);
        assert_eq!(0u8.to_f32(), -1.0);
        assert_eq!(128u8.to_f32(), 0.0);
    }

    #[test]
    fn a_full_ring_and_an_xrun_mark_where_the_audio_breaks() {
        // Two channels, a ring of 10 frames.
        let (mut sink, mut ring) = RtSink::new(20, 2, Default::default(), Default::default());
        let gaps = sink.gaps();
        let xrun = sink.gap_marker();
        let block = [0.5f32; 16];
        sink.write(&block); // 8 frames stored
        assert!(gaps.try_recv().is_err(), "no loss, no gap");
        sink.write(&block); // 2 stored, 6 lost: the audio breaks after frame 10
        sink.write(&block); // nothing stored: the same place, not marked again
        assert_eq!(gaps.try_iter().collect::<Vec<_>>(), [10]);
        let mut out = [0f32; 20];
        assert_eq!(ring.pop_slice(&mut out), 20);
        sink.write(&block[..6]); // 3 more frames, then the device overruns
        xrun.mark();
        sink.write(&block); // 7 stored, 1 lost: a break after frame 20
        assert_eq!(gaps.try_iter().collect::<Vec<_>>(), [13, 20]);
    }

    #[test]
    fn channel_counts_are_listed_as_ranges() {
        assert_eq!(ranges((1..=64).rev().collect()), "1-64");
        assert_eq!(ranges(vec![1, 2, 3, 4, 6, 8, 9, 2]), "1-4, 6, 8-9");
        assert_eq!(ranges(vec![2]), "2");
        assert_eq!(ranges(vec![]), "");
    }
}
