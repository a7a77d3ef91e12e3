//! The reader stage: one thread per input takes the captured audio from the input's ring ([`crate::capture`])
//! and cuts each machine's windows from it:
//!
//! ```text
//! ring (per input) → reader thread: channel → resample → windows, health, clip history
//!                  → [bounded] → features ([`crate::features`]) → [bounded] → embed and score ([`crate::embed`])
//!                  → [bounded] → detectors ([`crate::detect`])
//! ```
//!
//! It also watches each channel's health (silence, clipping) and keeps the history from which an alarm's evidence
//! clip is cut. When features or inference fall behind, `try_send` fails and the window is dropped and counted
//! (`sonitor_dropped_windows_total`): memory stays bounded and capture is never blocked.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, SendTimeoutError, Sender, TrySendError};
use ringbuf::traits::{Consumer, Observer};
use sonitor_core::audio::StreamResampler;
use sonitor_core::features::FeatureParams;

use crate::capture::StreamHandle;
use crate::config::HealthConfig;
use crate::metrics::{MachineMetrics, Metrics};

/// A machine as the pipeline sees it.
#[derive(Debug, Clone)]
pub struct MachineTap {
    /// Index in the configuration (and in `Metrics::machines`).
    pub machine: usize,
    pub channel: usize,
    pub features: FeatureParams,
    /// Seconds of model-rate audio kept for evidence clips.
    pub history_seconds: f32,
    /// A file replayed as fast as possible: wait for the pipeline instead of dropping windows.
    pub lossless: bool,
    /// How far (stream time) a lossless replay may run ahead of the last window the daemon has handled
    /// (`MachineMetrics::handled_ms`): an alarm's clip asks for audio from before the window that raised it,
    /// and what is further back than the history has been dropped. `None`: no limit (no clips).
    pub max_lead: Option<Duration>,
}

pub struct WindowMsg {
    pub machine: usize,
    /// Stream time of the window's end (ms, model rate).
    pub t_end_ms: u64,
    pub samples: Vec<f32>,
    pub lossless: bool,
}

/// Logs a window dropped on a full queue (at the 1st, 2nd, 4th, … of its machine: `n`): the features or inference
/// thread does not keep up. Before, only `sonitor_dropped_windows_total` said so, and the machine's `NO_SCORES`
/// blamed gaps in its audio.
pub(crate) fn log_dropped_window(m: &MachineMetrics, t_end_ms: u64, n: u64, towards: &str) {
    log::warn!(
        "{}: window at {t_end_ms} ms dropped, {n} so far (sonitor_dropped_windows_total): the queue towards {towards} \
         is full, as the features and inference threads do not keep up with the machines' windows (too many \
         machines or too large a model for this CPU, or the process was held up); the machine is not watched over \
         the windows dropped",
        m.name
    );
}

/// The level of a window: RMS over its samples about their mean, in dBFS ([`rms_dbfs`]). A DC offset is no sound:
/// a window of one value repeated (digital silence, an input stuck at a value) is at the floor, [`FLOOR_DBFS`].
pub fn window_level_dbfs(samples: &[f32]) -> f32 {
    let (sum, _, _) = energy_and_clipped(samples);
    let mean = sum / samples.len().max(1) as f64;
    // Two passes: every deviation from the mean of equal samples is exactly 0.
    let mut sq = [0f64; 8];
    let chunks = samples.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (acc, &x) in sq.iter_mut().zip(c) {
            let d = f64::from(x) - mean;
            *acc += d * d;
        }
    }
    let total = sq.iter().sum::<f64>()
        + tail
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>();
    rms_dbfs(total, samples.len())
}

/// The level [`rms_dbfs`] gives no sound at all.
pub const FLOOR_DBFS: f32 = -200.0;

/// Below this level a window holds no signal to judge: quieter than any microphone's own noise (a 24-bit
/// interface's is about -110 dBFS), so digital silence, an input stuck at one value, or one whose only change is
/// a bit flipping now and then: a muted, dead or stuck input.
pub const NO_SIGNAL_BELOW_DBFS: f32 = -120.0;

/// The RMS level of `n` samples whose squares sum to `sum_sq`, in dBFS (full scale = 1.0); -200 for digital
/// silence (or no samples). The channel health's per-second level and a window's level alike.
fn rms_dbfs(sum_sq: f64, n: usize) -> f32 {
    let rms = (sum_sq / n.max(1) as f64).sqrt();
    if rms > 0.0 {
        (20.0 * rms.log10()).max(f64::from(FLOOR_DBFS)) as f32
    } else {
        FLOOR_DBFS
    }
}

/// Health of a machine's channel, sent when it changes.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthMsg {
    pub machine: usize,
    pub silent: bool,
    pub clipping: bool,
    pub rms_dbfs: f32,
}

/// Ask the reader for the audio around an alarm onset.
#[derive(Debug, Clone)]
pub struct ClipRequest {
    pub machine: usize,
    /// Stream time (ms) of the end of the window that raised the alarm.
    pub onset_end_ms: u64,
    pub pre_seconds: f32,
    pub post_seconds: f32,
    pub path: PathBuf,
}

/// Audio for a clip, ready to be written.
pub struct ClipAudio {
    pub machine: usize,
    pub path: PathBuf,
    pub samples: Vec<f32>,
    pub sample_rate: u32,
}

/// Messages from a reader thread besides windows.
pub enum ReaderEvent {
    Health(HealthMsg),
    Clip(ClipAudio),
    /// A clip asked for that cannot be made (none of its audio is left): its event must not name it.
    ClipDropped {
        path: PathBuf,
    },
    /// A new stream of the machine's input began: `unfed` says why it cannot feed the machine (its channel is not
    /// in the stream, its rate cannot be converted), `None` when it can. Sent for each machine at each stream.
    Fed {
        machine: usize,
        unfed: Option<String>,
    },
    /// The input's file ended (`at_end = "exit"`) and all its windows were cut.
    Finished {
        input: usize,
    },
}

struct TapState {
    tap: MachineTap,
    rate: RateConversion,
    /// The tap's channel of a multi-channel block (a mono block is used as it is).
    mono: Vec<f32>,
    resampled: Vec<f32>,
    /// Model-rate audio, oldest first: the clip history and whatever the next windows still need. One copy
    /// of each sample serves both; windows are cut from it and the front is dropped once neither needs it.
    audio: VecDeque<f32>,
    /// Model-rate samples of history kept for evidence clips (`MachineTap::history_seconds`).
    keep: usize,
    /// Stream position (model-rate samples) of the next window's first sample.
    next_window: u64,
    /// Model-rate samples ever appended (stream position of the end of `audio`).
    total: u64,
    // Health over 1-second blocks at the input rate.
    block_sum: f64,
    block_sq: f64,
    block_clipped: usize,
    block_n: usize,
    silent_for: Duration,
    silent: bool,
    clipping: bool,
    pending_clips: Vec<ClipRequest>,
}

/// How a stream's audio reaches the model's rate.
enum RateConversion {
    /// The stream is at the model's rate.
    None,
    Resample(Box<StreamResampler>),
    /// No resampler for this pair of rates: audio at the wrong rate would be scored as if it were right, so the
    /// machine gets no windows until a stream at a usable rate is opened. Holds the resampler's refusal.
    Unusable(String),
}

impl TapState {
    fn new(tap: MachineTap) -> Self {
        let keep = (tap.history_seconds.max(0.0) * tap.features.sample_rate as f32) as usize;
        TapState {
            rate: RateConversion::None,
            mono: Vec::new(),
            resampled: Vec::new(),
            audio: VecDeque::with_capacity(keep.max(tap.features.window_samples) + 8192),
            keep,
            next_window: 0,
            total: 0,
            block_sum: 0.0,
            block_sq: 0.0,
            block_clipped: 0,
            block_n: 0,
            silent_for: Duration::ZERO,
            silent: false,
            clipping: false,
            pending_clips: Vec::new(),
            tap,
        }
    }

    /// Stream position of `audio[0]`.
    fn audio_start(&self) -> u64 {
        self.total - self.audio.len() as u64
    }

    /// Whether this machine gets windows from a stream of `channels` channels: its channel exists and the
    /// stream's rate can be brought to the model's.
    fn takes(&self, channels: usize) -> bool {
        self.tap.channel < channels && !matches!(self.rate, RateConversion::Unusable(_))
    }
}

/// The front of `scratch` that holds whole frames of `channels` samples: about 8192 samples, at least one
/// frame (grown for streams of very many channels).
fn whole_frames(scratch: &mut Vec<f32>, channels: usize) -> &mut [f32] {
    let len = (8192 / channels).max(1) * channels;
    if scratch.len() < len {
        scratch.resize(len, 0.0);
    }
    &mut scratch[..len]
}

/// Appends `audio[start..start + len]` to `dst`: at most two slice copies (the ring may wrap).
/// The caller guarantees `start + len <= audio.len()`.
fn extend_from_ring(dst: &mut Vec<f32>, audio: &VecDeque<f32>, start: usize, len: usize) {
    let (a, b) = audio.as_slices();
    if start < a.len() {
        let end = (start + len).min(a.len());
        dst.extend_from_slice(&a[start..end]);
        dst.extend_from_slice(&b[..len - (end - start)]);
    } else {
        let from = start - a.len();
        dst.extend_from_slice(&b[from..from + len]);
    }
}

/// Sends an event that must not be dropped (a stream's `Fed`, an input's `Finished`): waits while the queue is full
/// (the main loop held, by a reload building graphs), beating the reader's watchdog, and gives up only when the
/// daemon stops. A blocking send held the reader there through a stop, whose drain of this queue comes after the
/// readers are joined: the stop then ran to its deadline (status 70).
fn send_unless_stopped(
    events: &Sender<ReaderEvent>,
    mut event: ReaderEvent,
    stop: &AtomicBool,
    beats: &crate::metrics::Counter,
) {
    loop {
        match events.send_timeout(event, Duration::from_millis(100)) {
            Ok(()) | Err(SendTimeoutError::Disconnected(_)) => return,
            Err(SendTimeoutError::Timeout(back)) => {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                beats.inc();
                event = back;
            }
        }
    }
}

/// Reader of one input: runs until `stop`. A file that has been fully cut is reported with
/// [`ReaderEvent::Finished`]; the reader then waits for another stream (a file that loops is reopened).
#[allow(clippy::too_many_arguments)]
pub fn spawn_reader(
    input: usize,
    name: String,
    taps: Vec<MachineTap>,
    streams: Receiver<StreamHandle>,
    windows: Sender<WindowMsg>,
    recycled: Receiver<Vec<f32>>,
    clip_requests: Receiver<ClipRequest>,
    events: Sender<ReaderEvent>,
    health: HealthConfig,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("reader-{name}"))
        .spawn(move || {
            let mut states: Vec<TapState> = taps.into_iter().map(TapState::new).collect();
            let mut current: Option<StreamHandle> = None;
            // A stream that arrived while the reader was waiting for one.
            let mut arrived: Option<StreamHandle> = None;
            let mut scratch = vec![0.0f32; 8192];
            // Where the reader stands in the current stream, and its next gap.
            let mut cursor = GapCursor::default();
            // Only a replay as fast as possible, with clips, is ever held.
            let mut lead = states
                .iter()
                .any(|s| s.tap.lossless && s.tap.max_lead.is_some())
                .then(LeadGuard::default);
            let to = Outputs {
                windows: &windows,
                recycled: &recycled,
                events: &events,
                metrics: &metrics,
                input,
            };
            loop {
                metrics.inputs[input].reader_beats.inc();
                crate::fault::hang("reader");
                if stop.load(Ordering::SeqCst) {
                    // The daemon is stopping: no more audio comes. Clips still waiting for theirs (and requests
                    // just made) are written with what there is, the ring's last audio included; the daemon
                    // writes them out before it exits.
                    crate::fault::point("reader-stopping");
                    take_clip_requests(&mut states, &clip_requests);
                    if let Some(stream) = current.as_mut() {
                        drain_for_clips(&mut states, stream, &mut scratch);
                    }
                    serve_all_clips(&mut states, &events, &metrics, Some(CutShort::Stopping));
                    return;
                }
                // A new stream (first open or reopen): drain the old ring, then switch.
                if let Some(new) = arrived.take().or_else(|| streams.try_recv().ok()) {
                    if let Some(mut old) = current.take() {
                        while read_block(
                            &mut states,
                            &mut old,
                            &mut cursor,
                            &mut scratch,
                            &health,
                            &to,
                        ) > 0
                        {}
                        end_stream(&mut states, &windows, &recycled, &events, &metrics);
                    }
                    for (machine, unfed) in start_stream(&mut states, new.sample_rate, new.channels)
                    {
                        send_unless_stopped(
                            &events,
                            ReaderEvent::Fed { machine, unfed },
                            &stop,
                            &metrics.inputs[input].reader_beats,
                        );
                    }
                    let input = format!("input {name}");
                    for s in &states {
                        let m = &metrics.machines[s.tap.machine].name;
                        let model_rate = s.tap.features.sample_rate;
                        if let Some(w) =
                            below_model_rate_unsaid(m, &input, new.sample_rate, model_rate)
                        {
                            log::warn!("{w}");
                        }
                    }
                    cursor = GapCursor::default();
                    current = Some(new);
                }
                if take_clip_requests(&mut states, &clip_requests) {
                    // Their audio may all be here already: a file replayed faster than windows are scored can
                    // have ended (no more audio to trigger it) before the alarm asked for the clip. Between
                    // streams (a device lost and not yet back) no more is coming: they go as they stand.
                    let cut_short = current.is_none().then_some(CutShort::StreamEnded);
                    serve_all_clips(&mut states, &events, &metrics, cut_short);
                }
                if lead.as_mut().is_some_and(|l| {
                    l.holds(
                        &states,
                        current.as_ref().map(|c| c.channels),
                        &metrics,
                        &name,
                    )
                }) {
                    std::thread::sleep(LEAD_POLL);
                    continue;
                }
                let Some(stream) = current.as_mut() else {
                    match streams.recv_timeout(MAX_IDLE_SLEEP) {
                        Ok(new) => arrived = Some(new),
                        Err(RecvTimeoutError::Timeout) => {}
                        // No source left to open a stream: nothing to do until `stop`.
                        Err(RecvTimeoutError::Disconnected) => std::thread::sleep(MAX_IDLE_SLEEP),
                    }
                    continue;
                };
                crate::fault::point("reader");
                let n = read_block(&mut states, stream, &mut cursor, &mut scratch, &health, &to);
                if n == 0 {
                    // The flag first, then the ring: the source sets it after its last write.
                    if !stream.end.is_open() && stream.consumer.is_empty() {
                        end_stream(&mut states, &windows, &recycled, &events, &metrics);
                        if stream.end.is_finished() {
                            send_unless_stopped(
                                &events,
                                ReaderEvent::Finished { input },
                                &stop,
                                &metrics.inputs[input].reader_beats,
                            );
                        }
                        current = None;
                        continue;
                    }
                    std::thread::sleep(idle_sleep(&states, stream));
                }
            }
        })
}

/// How often a reader held back by [`LeadGuard`] looks again: 2 ms is 2 s of audio at 1 000× real time, well
/// within the lead's margin.
const LEAD_POLL: Duration = Duration::from_millis(2);

/// How long a reader waits for windows on their way that do not move at all (a daemon stuck) before it goes on
/// regardless. Windows dropped anywhere count as settled, so a failing model never holds it.
const LEAD_STALL: Duration = Duration::from_secs(30);

/// Keeps a file replayed as fast as possible within [`MachineTap::max_lead`] of the windows the daemon has
/// handled, so that every alarm's clip finds its audio in the history: at about 1 000× real time, with alarms
/// coming by the dozen a second and the broker down, the replay ran minutes ahead and thousands of clips were
/// dropped. The audio waits in the file, not in memory. A machine is waited for only while windows of it are on
/// their way (cut, not yet handled or dropped: `MachineMetrics::settled`), so that one whose windows are all
/// dropped, or whose hop is longer than the lead, never holds the replay; a daemon whose windows do not move for
/// [`LEAD_STALL`] is passed by, said in the log, and waited for again once they move.
#[derive(Default)]
struct LeadGuard {
    /// Since when the reader has been held, and the settled windows then.
    held: Option<(Instant, u64)>,
    /// The settled windows at which it stopped holding: not held again until they move.
    given_up_at: Option<u64>,
}

impl LeadGuard {
    /// Whether the reader should wait before reading on: a lossless machine with a `max_lead`, taking audio from
    /// the current stream (of `channels` channels), has windows on their way and stands further ahead of its last
    /// handled window than its lead.
    fn holds(
        &mut self,
        states: &[TapState],
        channels: Option<usize>,
        metrics: &Metrics,
        name: &str,
    ) -> bool {
        let Some(channels) = channels else {
            self.held = None;
            return false;
        };
        let ahead = states.iter().any(|s| {
            let m = &metrics.machines[s.tap.machine];
            s.tap.lossless
                && s.takes(channels)
                && s.tap.max_lead.is_some_and(|lead| {
                    let at_ms = s.total * 1000 / u64::from(s.tap.features.sample_rate.max(1));
                    m.windows_on_their_way()
                        && at_ms.saturating_sub(m.handled_ms.load(Ordering::Acquire))
                            > lead.as_millis() as u64
                })
        });
        if !ahead {
            self.held = None;
            return false;
        }
        let settled: u64 = states
            .iter()
            .map(|s| metrics.machines[s.tap.machine].settled.get())
            .fold(0, u64::wrapping_add);
        if self.given_up_at == Some(settled) {
            return false;
        }
        match self.held {
            Some((since, at)) if at == settled => {
                if since.elapsed() < LEAD_STALL {
                    return true;
                }
                log::warn!(
                    "input {name}: the replay waited {} s for windows the daemon did not handle; it goes on (clips \
                     of alarms further back than the history are dropped)",
                    LEAD_STALL.as_secs()
                );
                self.given_up_at = Some(settled);
                self.held = None;
                false
            }
            _ => {
                self.held = Some((Instant::now(), settled));
                true
            }
        }
    }
}

/// Where the reader's audio goes, for [`read_block`].
struct Outputs<'a> {
    windows: &'a Sender<WindowMsg>,
    recycled: &'a Receiver<Vec<f32>>,
    events: &'a Sender<ReaderEvent>,
    metrics: &'a Metrics,
    /// The input's index (in `Metrics::inputs`).
    input: usize,
}

/// Where the reader stands in a stream, and the stream's gaps ahead ([`StreamHandle::gaps`]).
#[derive(Default)]
struct GapCursor {
    /// Frames popped from the stream's ring so far.
    read: u64,
    /// Gaps not yet reached, in order.
    ahead: VecDeque<u64>,
    /// The last gap handled: the same place marked twice (a full ring, then an xrun there) is one gap.
    last: Option<u64>,
}

impl GapCursor {
    /// Takes the gaps marked so far. Called after a pop: a gap is marked before any audio after it is written,
    /// so every gap inside what was popped is known by then (checked before the pop, one marked in between
    /// would be crossed).
    fn collect(&mut self, gaps: &Receiver<u64>) {
        for g in gaps.try_iter() {
            if g >= self.read && Some(g) != self.last && !self.ahead.contains(&g) {
                let at = self.ahead.partition_point(|&a| a < g);
                self.ahead.insert(at, g);
            }
        }
    }

    /// Frames that may be processed before the next gap: `max` if none comes within them.
    fn frames_before_gap(&self, max: usize) -> usize {
        self.ahead.front().map_or(max, |&g| {
            usize::try_from(g - self.read).map_or(max, |n| n.min(max))
        })
    }

    /// Counts `frames` processed; true when the reader stands at a gap (also for `frames` = 0: a gap marked just
    /// where the reader stood, after it had read everything before it).
    fn advance(&mut self, frames: usize) -> bool {
        self.read += frames as u64;
        if self.ahead.front() == Some(&self.read) {
            self.ahead.pop_front();
            self.last = Some(self.read);
            return true;
        }
        false
    }
}

/// Reads what the stream's ring holds, up to about 8192 samples, into the machines' windows and histories; at each
/// gap inside it, starts their windows again ([`after_gap`]). Returns the samples read.
fn read_block(
    states: &mut [TapState],
    stream: &mut StreamHandle,
    cursor: &mut GapCursor,
    scratch: &mut Vec<f32>,
    health: &HealthConfig,
    to: &Outputs,
) -> usize {
    let ch = stream.channels.max(1);
    let dropped = |states: &[TapState]| -> u64 {
        states
            .iter()
            .map(|s| to.metrics.machines[s.tap.machine].dropped_windows.get())
            .sum()
    };
    let dropped_before = dropped(states);
    let n = stream.consumer.pop_slice(whole_frames(scratch, ch));
    cursor.collect(&stream.gaps);
    if cursor.advance(0) {
        after_gap(states, to);
    }
    let frames = n / ch;
    let mut done = 0;
    while done < frames {
        let take = cursor.frames_before_gap(frames - done);
        process(
            states,
            &scratch[done * ch..(done + take) * ch],
            ch,
            stream.sample_rate,
            to.windows,
            to.recycled,
            to.events,
            health,
            to.metrics,
        );
        done += take;
        if cursor.advance(take) {
            after_gap(states, to);
        }
    }
    // A full queue takes the windows of the machines cut first and drops the rest, the same machines' at every
    // hop while it stays full: the next block cuts from the next machine on, so that what a CPU that does not keep
    // up loses is spread over every machine instead of leaving some never watched.
    if states.len() > 1 && dropped(states) > dropped_before {
        states.rotate_left(1);
    }
    n
}

/// A gap in an input's audio (its ring was full, or the device overran): what came before it goes into windows
/// as at the end of a stream, and the windows start again after it, as for a new stream. A window across the gap
/// would join two sounds the machine never made in a row (a click), and be scored as such. Clip histories keep
/// both sides: they are evidence, not scored.
fn after_gap(states: &mut [TapState], to: &Outputs) {
    flush_resamplers(states, to.windows, to.recycled, to.events, to.metrics);
    for s in states.iter_mut() {
        s.next_window = s.total;
    }
    to.metrics.inputs[to.input].gaps.inc();
}

/// A new stream of the input (its first, or a device or file opened again): each machine gets the rate
/// conversion this stream needs, and its windows start again at the stream's first sample. Audio from before
/// the gap and after it never share a window: the splice would be scored as a sound the machine made (the
/// clip history keeps both sides, as it is only evidence). At the first stream nothing has been cut yet.
/// Returns, for each machine, why this stream cannot feed it (`None`: it can), for the controller to say.
fn start_stream(
    states: &mut [TapState],
    sample_rate: u32,
    channels: usize,
) -> Vec<(usize, Option<String>)> {
    let mut fed = Vec::with_capacity(states.len());
    for s in states.iter_mut() {
        let model_rate = s.tap.features.sample_rate;
        s.rate = if sample_rate == model_rate {
            RateConversion::None
        } else {
            match StreamResampler::new(sample_rate, model_rate) {
                Ok(r) => RateConversion::Resample(Box::new(r)),
                Err(e) => RateConversion::Unusable(format!("{e}")),
            }
        };
        // Said by the controller, which names the machine and sets its health.
        let unfed = if s.tap.channel >= channels {
            Some(format!(
                "has {channels} channel(s), not its channel {}: set `channels` on the device or the machine's \
                 `channel`",
                s.tap.channel
            ))
        } else if let RateConversion::Unusable(e) = &s.rate {
            Some(format!(
                "is sampled at {sample_rate} Hz, which cannot be converted to its model's {model_rate} Hz ({e}): \
                 set the device's `sample_rate`"
            ))
        } else {
            None
        };
        fed.push((s.tap.machine, unfed));
        s.next_window = s.total;
    }
    fed
}

/// The machines and input rates [`below_model_rate`] has warned of in this process: a stream opened at a rate
/// the start's check already named is not warned of again ([`below_model_rate_unsaid`]).
static BELOW_RATE_SAID: std::sync::Mutex<Vec<(String, u32)>> = std::sync::Mutex::new(Vec::new());

/// A machine's input sampled below its model's rate: upsampled, it leaves the top of the band the model learned
/// empty (an 8 kHz microphone gives a 16 kHz model nothing above 4 kHz), which scores as a sound the machine never
/// made. Said by `validate`, by the check at a start and a reload, and when a stream opens at a rate not said
/// before in the process (a capture device that did not answer the start's check, or reopened at another rate);
/// not refused, as the machine is better watched badly than not at all until someone changes the device.
pub fn below_model_rate(
    machine: &str,
    input: &str,
    input_rate: u32,
    model_rate: u32,
) -> Option<String> {
    if input_rate >= model_rate {
        return None;
    }
    let said = (machine.to_string(), input_rate);
    let mut known = BELOW_RATE_SAID.lock().unwrap_or_else(|e| e.into_inner());
    if !known.contains(&said) {
        known.push(said);
    }
    Some(format!(
        "machine '{machine}': its input ({input}) is sampled at {input_rate} Hz, below its model's {model_rate} Hz: \
         the model's band above {} Hz gets no sound, so its scores are not those of the recordings it learned from \
         and may raise false alarms; capture or record at {model_rate} Hz or more",
        input_rate / 2
    ))
}

/// [`below_model_rate`], `None` when this machine and rate were warned of before in this process.
fn below_model_rate_unsaid(
    machine: &str,
    input: &str,
    input_rate: u32,
    model_rate: u32,
) -> Option<String> {
    let said = BELOW_RATE_SAID
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(&(machine.to_string(), input_rate));
    (!said)
        .then(|| below_model_rate(machine, input, input_rate, model_rate))
        .flatten()
}

/// A warning for a machine whose input (`input`, at `input_rate`) is resampled down to its model's rate and whose
/// bundle's level `baseline` scores mel bands above [`sonitor_core::score::BASELINE_BAND_LIMIT`] of that rate (a
/// bundle combined before the limit): the resampler's filter cuts the top of the band (23–44 dB off 7.8–8 kHz at
/// 16 kHz), which a baseline fitted on audio made at 16 kHz reads as a fault on every window.
pub fn baseline_cut_by_resampling(
    machine: &str,
    input: &str,
    input_rate: u32,
    features: &sonitor_core::features::FeatureParams,
    baseline: &sonitor_core::score::Baseline,
) -> Option<String> {
    let limit = sonitor_core::score::baseline_bands(features);
    (input_rate > features.sample_rate && baseline.bands() > limit).then(|| {
        format!(
            "machine '{machine}': its input ({input}) is resampled from {input_rate} Hz to its model's {} Hz, whose \
             filter cuts the top of the band, and its bundle's level baseline scores {} mel bands, up to {} Hz: if \
             the bundle learned from audio made at {} Hz (the synthetic set, most data sets), every window may score \
             above its threshold. Make the combined bundle again with this version's `sonitor-train combine` (its \
             baseline keeps the {limit} bands up to {:.0} Hz), and check its scores on a few minutes of normal \
             sound (its `score` topic)",
            features.sample_rate,
            baseline.bands(),
            features.fmax_hz,
            features.sample_rate,
            sonitor_core::score::BASELINE_BAND_LIMIT * f64::from(features.sample_rate),
        )
    })
}

/// How often the reader looks at its ring when it is empty and the source is not paced (a file replayed as fast
/// as possible, whose producer waits for room).
const POLL: Duration = Duration::from_millis(5);

/// The longest the reader sleeps: how soon it sees `stop`, a clip request or a new stream.
const MAX_IDLE_SLEEP: Duration = Duration::from_millis(250);

/// How long the reader may sleep once its ring is empty. A paced source delivers its sample rate and no faster,
/// so nothing needs the reader before the next window of one of its machines is complete. Polling every 5 ms
/// instead (200 wake-ups a second) cost more CPU than the features and inference of every window together
/// (`sonitor-bench live`). Bounded by a quarter of the ring, so that it cannot fill while the reader sleeps, and by
/// [`MAX_IDLE_SLEEP`]; at least [`POLL`].
fn idle_sleep(states: &[TapState], stream: &StreamHandle) -> Duration {
    if !stream.paced {
        return POLL;
    }
    let rate = f64::from(stream.sample_rate.max(1));
    let ring_s = stream.consumer.capacity().get() as f64 / stream.channels.max(1) as f64 / rate;
    let until_window = states
        .iter()
        .filter(|s| s.takes(stream.channels))
        .map(|s| {
            let p = &s.tap.features;
            let missing = (s.next_window + p.window_samples as u64).saturating_sub(s.total);
            missing as f64 / f64::from(p.sample_rate.max(1))
        })
        .fold(f64::INFINITY, f64::min);
    let secs = until_window
        .min(ring_s / 4.0)
        .min(MAX_IDLE_SLEEP.as_secs_f64())
        .max(POLL.as_secs_f64());
    Duration::from_secs_f64(secs)
}

#[allow(clippy::too_many_arguments)]
fn process(
    states: &mut [TapState],
    interleaved: &[f32],
    channels: usize,
    input_rate: u32,
    windows: &Sender<WindowMsg>,
    recycled: &Receiver<Vec<f32>>,
    events: &Sender<ReaderEvent>,
    health: &HealthConfig,
    metrics: &Metrics,
) {
    for_each_tap(states, interleaved, channels, |s, mono| {
        // Health at the input rate, per 1-second block.
        let mut rest: &[f32] = mono;
        while !rest.is_empty() {
            let take = rest
                .len()
                .min((input_rate as usize).saturating_sub(s.block_n).max(1));
            let (block, tail) = rest.split_at(take);
            rest = tail;
            let (sum, sq, clipped) = energy_and_clipped(block);
            s.block_sum += sum;
            s.block_sq += sq;
            s.block_clipped += clipped;
            s.block_n += block.len();
            if s.block_n >= input_rate as usize {
                // About the block's mean: an input stuck at a value is as silent as one at 0.
                let n = s.block_n as f64;
                let dbfs = rms_dbfs(
                    (s.block_sq - s.block_sum * s.block_sum / n).max(0.0),
                    s.block_n,
                );
                let clipping = s.block_clipped as f32 / s.block_n as f32 > health.clipping_fraction;
                if dbfs < health.silence_dbfs {
                    s.silent_for += Duration::from_secs(1);
                } else {
                    s.silent_for = Duration::ZERO;
                }
                let silent = s.silent_for >= health.silence_after;
                // Kept as said only once the controller has it: on a full queue it is said again a block later
                // (the controller would otherwise keep the old health until the next change).
                if (silent != s.silent || clipping != s.clipping)
                    && events
                        .try_send(ReaderEvent::Health(HealthMsg {
                            machine: s.tap.machine,
                            silent,
                            clipping,
                            rms_dbfs: dbfs,
                        }))
                        .is_ok()
                {
                    s.silent = silent;
                    s.clipping = clipping;
                }
                let m = &metrics.machines[s.tap.machine];
                m.silent.set(u64::from(silent));
                m.clipping.set(u64::from(clipping));
                s.block_sum = 0.0;
                s.block_sq = 0.0;
                s.block_clipped = 0;
                s.block_n = 0;
            }
        }
        at_model_rate(s, mono, |s, audio| {
            append_model_audio(s, audio, windows, recycled, events, metrics)
        });
    });
}

/// Calls `f` with each machine that takes this stream ([`TapState::takes`]) and its channel's samples of
/// `interleaved`.
fn for_each_tap(
    states: &mut [TapState],
    interleaved: &[f32],
    channels: usize,
    mut f: impl FnMut(&mut TapState, &[f32]),
) {
    for s in states.iter_mut() {
        if !s.takes(channels) {
            continue;
        }
        // The channel's samples, in a buffer taken out of the state for the call (so that the state can be
        // updated while they are read) and put back at the end.
        let mut mono_buf = std::mem::take(&mut s.mono);
        let mono: &[f32] = if channels == 1 {
            interleaved
        } else {
            mono_buf.clear();
            // `takes` checked the channel against the stream's (cpal counts channels in a u16).
            let channel = sonitor_core::audio::ChannelSelect::Index(s.tap.channel as u16);
            sonitor_core::audio::to_mono(interleaved, channels, channel, &mut mono_buf);
            &mono_buf
        };
        f(s, mono);
        s.mono = mono_buf;
    }
}

/// Brings one machine's input-rate samples to the model's rate and calls `f` with them.
fn at_model_rate(s: &mut TapState, mono: &[f32], f: impl FnOnce(&mut TapState, &[f32])) {
    match &mut s.rate {
        RateConversion::Resample(r) => {
            let mut resampled = std::mem::take(&mut s.resampled);
            resampled.clear();
            match r.push(mono, &mut resampled) {
                Ok(()) => f(s, &resampled),
                Err(e) => log::error!("resampling failed: {e}"),
            }
            s.resampled = resampled;
        }
        RateConversion::None | RateConversion::Unusable(_) => f(s, mono),
    }
}

/// At a stop: the audio still in the stream's ring (up to the reader's longest sleep, [`MAX_IDLE_SLEEP`]) goes
/// into the history of the machines that wait for a clip, so that their clips end where the capture did. No
/// windows are cut from it (the scoring threads are stopping), and it takes only what the ring held when it
/// started: a source still writing cannot keep it.
fn drain_for_clips(states: &mut [TapState], stream: &mut StreamHandle, scratch: &mut Vec<f32>) {
    if states.iter().all(|s| s.pending_clips.is_empty()) {
        return;
    }
    let ch = stream.channels.max(1);
    let mut left = stream.consumer.occupied_len() / ch * ch;
    let keep = |s: &mut TapState, audio: &[f32]| {
        s.audio.extend(audio);
        s.total += audio.len() as u64;
    };
    while left > 0 {
        let buf = whole_frames(scratch, ch);
        let take = buf.len().min(left);
        let n = stream.consumer.pop_slice(&mut buf[..take]);
        if n == 0 {
            break;
        }
        left -= n;
        for_each_tap(states, &scratch[..n], ch, |s, mono| {
            if !s.pending_clips.is_empty() {
                at_model_rate(s, mono, keep);
            }
        });
    }
    // What the resamplers still hold: the end of the stream, as for a stream that ends.
    for s in states.iter_mut().filter(|s| !s.pending_clips.is_empty()) {
        finish_resampler(s, keep);
    }
}

/// Moves the clip requests that arrived into their machines' pending lists; true if there were any.
fn take_clip_requests(states: &mut [TapState], requests: &Receiver<ClipRequest>) -> bool {
    let mut any = false;
    while let Ok(req) = requests.try_recv() {
        if let Some(s) = states.iter_mut().find(|s| s.tap.machine == req.machine) {
            s.pending_clips.push(req);
            any = true;
        }
    }
    any
}

/// The end of a stream: its last samples go into windows ([`flush_resamplers`]), and the clips still waiting
/// for audio after their onset are served with what there is. A device that comes back starts a new stream
/// after a gap, so the rest of a clip would not be the sound that followed the onset.
fn end_stream(
    states: &mut [TapState],
    windows: &Sender<WindowMsg>,
    recycled: &Receiver<Vec<f32>>,
    events: &Sender<ReaderEvent>,
    metrics: &Metrics,
) {
    flush_resamplers(states, windows, recycled, events, metrics);
    serve_all_clips(states, events, metrics, Some(CutShort::StreamEnded));
}

/// The end of a stream (a file's last block, or a device closed before it is reopened): every machine whose
/// audio is resampled gets the resampler's tail, so that the stream's last samples reach its windows and clips
/// as they do at the model's own rate, where nothing is held back.
fn flush_resamplers(
    states: &mut [TapState],
    windows: &Sender<WindowMsg>,
    recycled: &Receiver<Vec<f32>>,
    events: &Sender<ReaderEvent>,
    metrics: &Metrics,
) {
    for s in states.iter_mut() {
        finish_resampler(s, |s, tail| {
            append_model_audio(s, tail, windows, recycled, events, metrics)
        });
    }
}

/// Ends a resampled machine's stream: `f` gets what its resampler still holds (nothing happens at the model's
/// rate, where nothing is held back).
fn finish_resampler(s: &mut TapState, f: impl FnOnce(&mut TapState, &[f32])) {
    if let RateConversion::Resample(r) = &mut s.rate {
        let mut tail = std::mem::take(&mut s.resampled);
        tail.clear();
        match r.finish(&mut tail) {
            Ok(()) => f(s, &tail),
            Err(e) => log::error!("resampling the end of the stream failed: {e}"),
        }
        s.resampled = tail;
    }
}

/// Appends model-rate audio to a machine's history, serves pending clips from it and cuts every window that is
/// complete.
fn append_model_audio(
    s: &mut TapState,
    model_audio: &[f32],
    windows: &Sender<WindowMsg>,
    recycled: &Receiver<Vec<f32>>,
    events: &Sender<ReaderEvent>,
    metrics: &Metrics,
) {
    s.audio.extend(model_audio);
    s.total += model_audio.len() as u64;
    serve_clips(s, events, metrics, None);

    let p = &s.tap.features;
    let rate = p.sample_rate as u64;
    let (window, hop) = (p.window_samples, p.window_hop_samples as u64);
    // A machine a reload removed (`detect::Controller::retire`) keeps its audio history, for a clip still
    // waiting for its audio, but no window of it is cut: nothing would judge it, and its features and inference
    // are most of the pipeline's work.
    let retired = metrics.machines[s.tap.machine]
        .removed
        .load(std::sync::atomic::Ordering::Relaxed);
    while s.total >= s.next_window + window as u64 {
        if retired {
            s.next_window += hop;
            continue;
        }
        let end = s.next_window + window as u64;
        let mut v = recycled.try_recv().unwrap_or_default();
        v.clear();
        let start = (s.next_window - s.audio_start()) as usize;
        extend_from_ring(&mut v, &s.audio, start, window);
        let m = &metrics.machines[s.tap.machine];
        m.windows.inc();
        let t_end_ms = end * 1000 / rate;
        let msg = WindowMsg {
            machine: s.tap.machine,
            t_end_ms,
            samples: v,
            lossless: s.tap.lossless,
        };
        let sent = if s.tap.lossless {
            windows.send(msg).is_ok()
        } else {
            match windows.try_send(msg) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
            }
        };
        if !sent {
            if let Some(n) = m.window_dropped() {
                log_dropped_window(m, t_end_ms, n, "features");
            }
        }
        s.next_window += hop;
    }
    // Drop what neither the next window nor the clip history needs.
    let oldest_needed = s.next_window.min(s.total.saturating_sub(s.keep as u64));
    let drop = oldest_needed.saturating_sub(s.audio_start()) as usize;
    s.audio.drain(..drop.min(s.audio.len()));
}

/// The level at or beyond which a sample counts as clipped: the lowest of the capture formats' positive full
/// scales, 8-bit's 127/128 (a `u8` rail reads 0.992, and was not counted at ±0.999); every other format's rail
/// is above it.
const CLIPPED_AT: f32 = 127.0 / 128.0;

/// Sum of squares (in f64) and the number of samples at or beyond ±[`CLIPPED_AT`] (clipped), in eight lanes so
/// that the compiler vectorises it: this runs over every captured sample.
fn energy_and_clipped(xs: &[f32]) -> (f64, f64, usize) {
    let mut sum = [0f64; 8];
    let mut sq = [0f64; 8];
    let mut clipped = 0usize;
    let chunks = xs.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for ((s, acc), &x) in sum.iter_mut().zip(sq.iter_mut()).zip(c) {
            *s += f64::from(x);
            *acc += f64::from(x) * f64::from(x);
        }
        clipped += c.iter().filter(|x| x.abs() >= CLIPPED_AT).count();
    }
    let mut total_sum: f64 = sum.iter().sum();
    let mut total: f64 = sq.iter().sum();
    for &x in tail {
        total_sum += f64::from(x);
        total += f64::from(x) * f64::from(x);
        clipped += usize::from(x.abs() >= CLIPPED_AT);
    }
    (total_sum, total, clipped)
}

/// Why a clip is served before its `post_seconds` have been captured.
#[derive(Clone, Copy)]
enum CutShort {
    /// The input's stream ended (a device lost, a replayed file at its end): no more audio is coming on it.
    StreamEnded,
    /// The daemon is stopping.
    Stopping,
}

/// [`serve_clips`] for every machine of the input.
fn serve_all_clips(
    states: &mut [TapState],
    events: &Sender<ReaderEvent>,
    metrics: &Metrics,
    cut_short: Option<CutShort>,
) {
    for s in states.iter_mut() {
        serve_clips(s, events, metrics, cut_short);
    }
}

/// Hands out clip audio once `post_seconds` after the onset have been captured, or, with `cut_short`, at once
/// with the audio there is.
fn serve_clips(
    s: &mut TapState,
    events: &Sender<ReaderEvent>,
    metrics: &Metrics,
    cut_short: Option<CutShort>,
) {
    if s.pending_clips.is_empty() {
        return;
    }
    let rate = s.tap.features.sample_rate as u64;
    let window = s.tap.features.window_samples as u64;
    let hist_start = s.audio_start();
    let mut i = 0;
    while i < s.pending_clips.len() {
        let r = &s.pending_clips[i];
        let onset_end = r.onset_end_ms * rate / 1000;
        let start = onset_end
            .saturating_sub(window)
            .saturating_sub((r.pre_seconds as f64 * rate as f64) as u64);
        let mut end = onset_end + (r.post_seconds as f64 * rate as f64) as u64;
        if s.total < end {
            let Some(why) = cut_short else {
                i += 1;
                continue;
            };
            log::warn!(
                "clip {}: {} {:.1} s after the alarm's onset window of the {:.1} s asked for; the clip is \
                 written with the audio there is",
                r.path.display(),
                match why {
                    CutShort::StreamEnded => "the input's audio ended",
                    CutShort::Stopping => "the daemon stopped",
                },
                s.total.saturating_sub(onset_end) as f64 / rate as f64,
                r.post_seconds
            );
            end = s.total;
        }
        let r = s.pending_clips.swap_remove(i);
        let from = start.max(hist_start);
        if from >= end {
            metrics.clips_dropped.inc();
            log::warn!(
                "clip {}: none of its audio is left in the history; dropped, and its event goes on without it",
                r.path.display()
            );
            let _ = events.try_send(ReaderEvent::ClipDropped { path: r.path });
            continue;
        }
        let mut samples = Vec::with_capacity((end - from) as usize);
        extend_from_ring(
            &mut samples,
            &s.audio,
            (from - hist_start) as usize,
            (end - from) as usize,
        );
        if let Err(e) = events.try_send(ReaderEvent::Clip(ClipAudio {
            machine: r.machine,
            path: r.path,
            samples,
            sample_rate: rate as u32,
        })) {
            metrics.clips_dropped.inc();
            if let ReaderEvent::Clip(c) = e.into_inner() {
                // The controller is that far behind: it cannot be told either, and its event names the clip.
                log::warn!(
                    "clip {}: the daemon's event queue is full; dropped (sonitor_clips_dropped_total)",
                    c.path.display()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event the reader must not drop waits while the queue is full, and is delivered once there is room; a stop
    /// ends the wait (the stop drains the queue only after joining the readers), and the wait beats the reader's
    /// watchdog.
    #[test]
    fn an_event_waits_for_room_until_the_daemon_stops() {
        let (tx, rx) = crossbeam_channel::bounded(1);
        tx.send(ReaderEvent::Finished { input: 7 }).unwrap();
        let stop = AtomicBool::new(false);
        let beats = crate::metrics::Counter::default();
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(350));
                assert!(matches!(rx.recv(), Ok(ReaderEvent::Finished { input: 7 })));
            });
            let fed = ReaderEvent::Fed {
                machine: 3,
                unfed: None,
            };
            send_unless_stopped(&tx, fed, &stop, &beats);
        });
        assert!(matches!(
            rx.try_recv(),
            Ok(ReaderEvent::Fed { machine: 3, .. })
        ));
        assert!(beats.get() >= 2, "{}", beats.get());

        tx.send(ReaderEvent::Finished { input: 7 }).unwrap();
        let t0 = Instant::now();
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(200));
                stop.store(true, Ordering::SeqCst);
            });
            send_unless_stopped(&tx, ReaderEvent::Finished { input: 8 }, &stop, &beats);
        });
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert!(matches!(
            rx.try_recv(),
            Ok(ReaderEvent::Finished { input: 7 })
        ));
        assert!(rx.try_recv().is_err());
    }

    /// A bundle combined before the band limit, its baseline over all 128 bands, is named for an input resampled
    /// down to 16 kHz, not for one at 16 kHz; one combined since (123 bands) is named for neither.
    #[test]
    fn a_baseline_over_the_bands_resampling_cuts_is_named() {
        let p = FeatureParams::default();
        let baseline = |bands: usize| sonitor_core::score::Baseline {
            means: vec![vec![0.0; bands]],
            cholesky: (0..bands * (bands + 1) / 2).map(|_| 1.0).collect(),
            domain_offsets: Vec::new(),
            distance_median: 1.0,
            distance_spread: 1.0,
            score_median: 0.1,
            score_spread: 0.1,
            weight: 0.5,
        };
        let warn =
            |rate, bands| baseline_cut_by_resampling("m1", "mic", rate, &p, &baseline(bands));
        let w = warn(48_000, 128).expect("48 kHz, 128 bands");
        assert!(
            w.contains("resampled from 48000 Hz") && w.contains("123 bands up to 7200 Hz"),
            "{w}"
        );
        assert!(warn(44_100, 128).is_some());
        assert_eq!(warn(16_000, 128), None);
        assert_eq!(warn(48_000, 123), None);
    }

    fn tap_state(lossless: bool) -> TapState {
        let features = FeatureParams {
            window_samples: 8000,
            window_hop_samples: 4000,
            n_mels: 32,
            ..FeatureParams::default()
        };
        TapState::new(MachineTap {
            machine: 0,
            channel: 1,
            features,
            history_seconds: 10.0,
            lossless,
            max_lead: None,
        })
    }

    /// What `process` produced from some pieces of interleaved 16 kHz audio.
    struct Fed {
        metrics: Metrics,
        windows: Vec<WindowMsg>,
        events: Vec<ReaderEvent>,
    }

    impl Fed {
        /// The samples of the clip served (the first, if several were).
        fn clip(&self) -> &Vec<f32> {
            self.events
                .iter()
                .find_map(|e| match e {
                    ReaderEvent::Clip(c) => Some(&c.samples),
                    _ => None,
                })
                .expect("the clip is served")
        }
    }

    /// Feeds `pieces` of 16 kHz audio through `process` with a window queue of `queue` (windows beyond it are
    /// dropped).
    fn feed<'a>(
        states: &mut [TapState],
        pieces: impl IntoIterator<Item = &'a [f32]>,
        channels: usize,
        queue: usize,
    ) -> Fed {
        feed_at(states, pieces, channels, 16_000, queue)
    }

    /// [`feed`] at an input rate of `rate`.
    fn feed_at<'a>(
        states: &mut [TapState],
        pieces: impl IntoIterator<Item = &'a [f32]>,
        channels: usize,
        rate: u32,
        queue: usize,
    ) -> Fed {
        let health = HealthConfig::default();
        reader_step(queue, |windows, recycled, events, metrics| {
            for piece in pieces {
                process(
                    states, piece, channels, rate, windows, recycled, events, &health, metrics,
                );
            }
        })
    }

    /// What one step of the reader (`step`, given its queues and metrics) produced, with a window queue of
    /// `queue`.
    fn reader_step(
        queue: usize,
        step: impl FnOnce(&Sender<WindowMsg>, &Receiver<Vec<f32>>, &Sender<ReaderEvent>, &Metrics),
    ) -> Fed {
        let metrics = Metrics::new(&["in".into()], &["m".into()]);
        let (wtx, wrx) = crossbeam_channel::bounded(queue);
        let (_rtx, rrx) = crossbeam_channel::bounded::<Vec<f32>>(4);
        let (etx, erx) = crossbeam_channel::bounded(64);
        step(&wtx, &rrx, &etx, &metrics);
        Fed {
            windows: wrx.try_iter().collect(),
            events: erx.try_iter().collect(),
            metrics,
        }
    }

    fn stream(paced: bool, channels: usize, ring_frames: usize) -> StreamHandle {
        stream_holding(paced, channels, ring_frames, &[])
    }

    /// A 16 kHz stream whose ring (`ring_frames` frames) already holds the interleaved `audio`.
    fn stream_holding(
        paced: bool,
        channels: usize,
        ring_frames: usize,
        audio: &[f32],
    ) -> StreamHandle {
        let (mut sink, stream) = stream_and_sink(paced, channels, ring_frames);
        sink.write(audio);
        stream
    }

    /// A 16 kHz stream with a ring of `ring_frames` frames, and the sink that writes into it.
    fn stream_and_sink(
        paced: bool,
        channels: usize,
        ring_frames: usize,
    ) -> (crate::capture::RtSink, StreamHandle) {
        let (sink, consumer) = crate::capture::RtSink::new(
            ring_frames * channels,
            channels,
            Default::default(),
            Default::default(),
        );
        let stream = StreamHandle {
            consumer,
            sample_rate: 16_000,
            channels,
            end: Arc::default(),
            paced,
            gaps: sink.gaps(),
        };
        (sink, stream)
    }

    #[test]
    fn an_idle_reader_sleeps_until_the_next_window_is_due() {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let mut s = tap_state(false);
        let ring = stream(true, 2, 64_000);
        // 8000-sample windows at 16 kHz: 7 900 samples missing is 494 ms, more than the cap.
        s.total = 100;
        assert_eq!(idle_sleep(std::slice::from_ref(&s), &ring), MAX_IDLE_SLEEP);
        // 160 samples missing: 10 ms; 10 missing: the 5 ms floor.
        s.total = 7_840;
        assert!((ms(idle_sleep(std::slice::from_ref(&s), &ring)) - 10.0).abs() < 1e-6);
        s.total = 7_990;
        assert_eq!(idle_sleep(std::slice::from_ref(&s), &ring), POLL);
        // The nearest of two machines' windows counts.
        let mut far = tap_state(false);
        far.total = 100;
        s.total = 7_840;
        assert!((ms(idle_sleep(&[far, s], &ring)) - 10.0).abs() < 1e-6);
        // A small ring (0.2 s) bounds the sleep to a quarter of it, so that it cannot fill meanwhile.
        let s = tap_state(false);
        assert!(
            (ms(idle_sleep(
                std::slice::from_ref(&s),
                &stream(true, 2, 3_200)
            )) - 50.0)
                .abs()
                < 1e-6
        );
        // A file replayed as fast as possible is polled.
        assert_eq!(
            idle_sleep(std::slice::from_ref(&s), &stream(false, 2, 64_000)),
            POLL
        );
        // A machine whose channel the stream lacks waits for nothing.
        assert_eq!(
            idle_sleep(std::slice::from_ref(&s), &stream(true, 1, 64_000)),
            MAX_IDLE_SLEEP
        );
    }

    #[test]
    fn a_windows_level_is_its_sound_not_its_offset() {
        // Digital silence, and an input stuck at 0.9 (a DC offset, no sound), are at the floor: no signal.
        for v in [0.0f32, 0.9, -0.25] {
            assert_eq!(window_level_dbfs(&vec![v; 32_003]), FLOOR_DBFS, "{v}");
        }
        // A tone at 0.1 peak (-23.0 dBFS RMS) reads the same with or without an offset of 0.5.
        let tone: Vec<f32> = (0..32_000).map(|i| (i as f32 * 0.05).sin() * 0.1).collect();
        let offset: Vec<f32> = tone.iter().map(|x| x + 0.5).collect();
        let (a, b) = (window_level_dbfs(&tone), window_level_dbfs(&offset));
        assert!((a + 23.0).abs() < 0.1 && (a - b).abs() < 0.01, "{a} {b}");
    }

    #[test]
    fn energy_and_clipped_equals_the_per_sample_sums() {
        // Lengths around the 8-lane chunks, values on both sides of the clipping level.
        for n in [0usize, 1, 7, 8, 9, 31, 1000] {
            let xs: Vec<f32> = (0..n)
                .map(|i| ((i as f32 * 0.37).sin() * 1.2).clamp(-1.0, 1.0))
                .collect();
            let want_sum: f64 = xs.iter().map(|&x| f64::from(x)).sum();
            let want_sq: f64 = xs.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
            let want_clipped = xs.iter().filter(|x| x.abs() >= CLIPPED_AT).count();
            let (sum, sq, clipped) = energy_and_clipped(&xs);
            assert!((sum - want_sum).abs() <= 1e-9 * want_sq.max(1.0), "n={n}");
            assert!((sq - want_sq).abs() <= 1e-9 * want_sq.max(1.0), "n={n}");
            assert_eq!(clipped, want_clipped, "n={n}");
        }
    }

    #[test]
    fn every_capture_formats_rails_count_as_clipped() {
        use crate::capture::ToF32;
        let rails = [
            (i16::MAX.to_f32(), i16::MIN.to_f32()),
            (i32::MAX.to_f32(), i32::MIN.to_f32()),
            (
                cpal::I24::new((1 << 23) - 1).unwrap().to_f32(),
                cpal::I24::new(-(1 << 23)).unwrap().to_f32(),
            ),
            (u16::MAX.to_f32(), u16::MIN.to_f32()),
            (u8::MAX.to_f32(), u8::MIN.to_f32()),
            (1.0f32, -1.0f32),
        ];
        for (high, low) in rails {
            assert_eq!(energy_and_clipped(&[high, low]).2, 2, "{high} {low}");
        }
        // One step below the 8-bit rail is not.
        assert_eq!(energy_and_clipped(&[254u8.to_f32()]).2, 0);
    }

    #[test]
    fn windows_health_and_clips_from_interleaved_audio() {
        let mut states = vec![tap_state(false)];
        states[0].pending_clips.push(ClipRequest {
            machine: 0,
            onset_end_ms: 1000,
            pre_seconds: 0.5,
            post_seconds: 0.5,
            path: "x.wav".into(),
        });
        // Two channels at 16 kHz: channel 0 silent, channel 1 a full-scale square wave (clipping), 3 s, fed in
        // uneven pieces.
        let frames = 48_000;
        let mut inter = Vec::with_capacity(frames * 2);
        for i in 0..frames {
            inter.push(0.0);
            inter.push(if (i / 8) % 2 == 0 { 1.0 } else { -1.0 });
        }
        let fed = feed(&mut states, inter.chunks(2 * 777), 2, 64);
        let metrics = &fed.metrics;
        let ends: Vec<u64> = fed
            .windows
            .iter()
            .map(|w| {
                assert_eq!(w.samples.len(), 8000);
                w.t_end_ms
            })
            .collect();
        assert_eq!(ends, (0..11).map(|k| 500 + 250 * k).collect::<Vec<u64>>());
        assert_eq!(metrics.machines[0].windows.get(), 11);
        let mut clipping_reported = false;
        let mut clip_len = None;
        for e in &fed.events {
            match e {
                ReaderEvent::Health(h) => clipping_reported |= h.clipping && !h.silent,
                ReaderEvent::Clip(c) => clip_len = Some(c.samples.len()),
                ReaderEvent::Finished { .. }
                | ReaderEvent::ClipDropped { .. }
                | ReaderEvent::Fed { .. } => {}
            }
        }
        assert!(clipping_reported);
        assert_eq!(metrics.machines[0].clipping.get(), 1);
        // From 1000 − 500 (window) − 500 (pre) = 0 ms to 1000 + 500 (post) ms.
        assert_eq!(clip_len, Some(24_000));
    }

    #[test]
    fn a_machine_retired_by_a_reload_gets_no_more_windows_but_its_clip_gets_its_audio() {
        // A ramp on the only channel: the clip's samples name themselves.
        let signal: Vec<f32> = (0..40_000).map(|i| i as f32).collect();
        let mut state = tap_state(false);
        state.tap.channel = 0;
        let mut states = vec![state];
        let health = HealthConfig::default();
        let fed = reader_step(64, |windows, recycled, events, metrics| {
            let run = |states: &mut [TapState], xs: &[f32]| {
                process(
                    states, xs, 1, 16_000, windows, recycled, events, &health, metrics,
                )
            };
            run(&mut states, &signal[..16_000]);
            // The alarm raised by the window ending at 1 s waits for its clip's post-seconds when the reload
            // retires the machine.
            states[0].pending_clips.push(ClipRequest {
                machine: 0,
                onset_end_ms: 1000,
                pre_seconds: 0.25,
                post_seconds: 0.75,
                path: "x.wav".into(),
            });
            metrics.machines[0]
                .removed
                .store(true, std::sync::atomic::Ordering::Relaxed);
            run(&mut states, &signal[16_000..]);
        });
        let ends: Vec<u64> = fed.windows.iter().map(|w| w.t_end_ms).collect();
        assert_eq!(ends, [500, 750, 1000], "no window after the retirement");
        assert_eq!(fed.metrics.machines[0].windows.get(), 3);
        // From 1000 − 500 (window) − 250 (pre) ms to 1000 + 750 (post) ms.
        assert!(fed.clip()[..] == signal[4_000..28_000]);
    }

    #[test]
    fn windows_and_clips_carry_the_channels_samples_in_order() {
        // A ramp that names every sample, so that any sample lost, doubled or shifted shows. Mono (the block
        // used as it is) and the second of three channels, in pieces that do not divide the hop; histories
        // long enough for the clip (as the daemon sizes them), both shorter than the stream, so the ring
        // wraps and is trimmed.
        let signal: Vec<f32> = (0..40_000).map(|i| i as f32).collect();
        for (channels, channel, history_seconds) in
            [(1usize, 0usize, 1.5f32), (3, 1, 1.5), (1, 0, 2.0)]
        {
            let mut state = tap_state(false);
            state.tap.channel = channel;
            state = TapState::new(MachineTap {
                history_seconds,
                ..state.tap
            });
            let mut states = vec![state];
            // Onset window ending at 1.5 s: the clip runs from 1.5 − 0.5 (window) − 0.25 s to 1.5 + 0.25 s.
            states[0].pending_clips.push(ClipRequest {
                machine: 0,
                onset_end_ms: 1500,
                pre_seconds: 0.25,
                post_seconds: 0.25,
                path: "x.wav".into(),
            });
            let inter: Vec<f32> = signal
                .iter()
                .flat_map(|&x| (0..channels).map(move |c| if c == channel { x } else { -1.0 }))
                .collect();
            let fed = feed(&mut states, inter.chunks(channels * 1234), channels, 64);
            let windows = &fed.windows;
            assert_eq!(windows.len(), 9, "{channels} channel(s)");
            for (k, w) in windows.iter().enumerate() {
                let start = 4000 * k;
                assert_eq!(
                    w.samples,
                    signal[start..start + 8000],
                    "window {k}, {channels} channel(s)"
                );
                assert_eq!(w.t_end_ms, (start as u64 + 8000) / 16);
            }
            let clip = fed.clip();
            assert!(
                clip[..] == signal[12_000..28_000],
                "clip, {channels} channel(s): {} samples from {:?}",
                clip.len(),
                clip.first()
            );
            // What is kept: the history, or the samples the next window needs, whichever reaches back further.
            let s = &states[0];
            let keep = (history_seconds * 16_000.0) as u64;
            assert_eq!(s.audio_start(), s.next_window.min(40_000 - keep));
            assert!(s
                .audio
                .iter()
                .copied()
                .eq(signal[s.audio_start() as usize..].iter().copied()));
        }
    }

    #[test]
    fn a_resampled_stream_is_cut_to_its_last_window_when_it_ends() {
        // 2 s at 48 kHz, mono, in pieces: at 16 kHz the windows end at 0.5, 0.75, …, 2.0 s. The resampler holds
        // back its filter's delay and an unfinished chunk, so the window that ends with the stream needs the
        // flush at its end; without it that window (and a clip's last samples) would be lost.
        let x: Vec<f32> = (0..96_000)
            .map(|i| (i as f32 * 0.0523).sin() * 0.3 + ((i * 7 % 13) as f32 - 6.0) / 60.0)
            .collect();
        let mut states = vec![TapState::new(MachineTap {
            channel: 0,
            ..tap_state(true).tap
        })];
        states[0].rate =
            RateConversion::Resample(Box::new(StreamResampler::new(48_000, 16_000).unwrap()));
        let before_end = feed_at(&mut states, x.chunks(4_321), 1, 48_000, 64).windows;
        let at_end =
            reader_step(64, |w, r, e, m| flush_resamplers(&mut states, w, r, e, m)).windows;
        assert!(!at_end.is_empty(), "the last window waits for the flush");
        assert_eq!(before_end.len() + at_end.len(), 7);
        let last = at_end.last().unwrap();
        assert_eq!(last.t_end_ms, 2_000);
        // The same samples as the whole recording resampled at once: the tail is audio, not padding.
        let whole = sonitor_core::audio::resample(&x, 48_000, 16_000).unwrap();
        assert_eq!(whole.len(), 32_000);
        assert_eq!(last.samples, whole[24_000..]);
        assert_eq!(states[0].total, 32_000);
    }

    /// Each stream says, machine by machine, whether it can feed it: a stream without the machine's channel
    /// (review33: a device that appeared with 2 channels for a machine on channel 3) cannot, and the controller
    /// says so by the machine's name.
    #[test]
    fn a_stream_says_which_machines_it_cannot_feed() {
        let on = |channel| {
            TapState::new(MachineTap {
                channel,
                ..tap_state(true).tap
            })
        };
        let mut states = vec![on(0), on(3)];
        states[1].tap.machine = 1;
        let fed = start_stream(&mut states, 16_000, 2);
        assert_eq!(fed[0], (0, None));
        assert_eq!(fed[1].0, 1);
        assert!(
            fed[1].1.as_deref().is_some_and(
                |why| why.starts_with("has 2 channel(s), not its channel 3: set `channels`")
            ),
            "{fed:?}"
        );
        assert!(!states[1].takes(2) && states[0].takes(2));
        let fed = start_stream(&mut states, 16_000, 4);
        assert_eq!(fed, vec![(0, None), (1, None)]);
    }

    #[test]
    fn at_a_stop_the_rings_last_audio_ends_the_waiting_clips() {
        // A ramp that names every sample. 1.25 s reached the machines' histories; the last 0.5 s is still in the
        // ring when the daemon stops. The clip asked for (0 to 2 s) is cut short at 1.75 s, not at 1.25 s.
        let signal: Vec<f32> = (0..28_000).map(|i| i as f32).collect();
        let machine = |history_seconds| {
            TapState::new(MachineTap {
                channel: 0,
                history_seconds,
                ..tap_state(true).tap
            })
        };
        let mut states = vec![machine(3.0), machine(3.0)];
        states[0].pending_clips.push(ClipRequest {
            machine: 0,
            onset_end_ms: 1000,
            pre_seconds: 0.5,
            post_seconds: 1.0,
            path: "x.wav".into(),
        });
        start_stream(&mut states, 16_000, 1);
        feed(&mut states, signal[..20_000].chunks(1_000), 1, 64);
        let mut ring = stream_holding(true, 1, 16_000, &signal[20_000..]);
        drain_for_clips(&mut states, &mut ring, &mut Vec::new());
        assert!(ring.consumer.is_empty());
        // Only the machine that waits for a clip takes it; no window is cut from it.
        assert_eq!((states[0].total, states[1].total), (28_000, 20_000));
        assert_eq!(states[0].next_window, states[1].next_window);
        let fed = reader_step(64, |_, _, e, m| {
            serve_all_clips(&mut states, e, m, Some(CutShort::Stopping))
        });
        let clip = fed.clip();
        assert!(clip[..] == signal[..], "{} samples", clip.len());
        assert!(states[0].pending_clips.is_empty());
    }

    /// A 16 kHz ramp that names every sample, read from one stream's ring as the reader does: 1.3 s, a loss marked
    /// in the ring, 1.0 s more. With `caught_up`, the reader has emptied the ring before the mark comes (the usual
    /// overrun: the mark is at the very place the reader stands), and the place is marked twice (a full ring, then
    /// the xrun). Returns what was fed and the machine's state.
    fn read_across_a_gap(caught_up: bool) -> (Vec<f32>, Fed, Vec<TapState>) {
        let signal: Vec<f32> = (0..36_800).map(|i| i as f32).collect();
        let mut states = vec![TapState::new(MachineTap {
            channel: 0,
            history_seconds: 3.0,
            ..tap_state(true).tap
        })];
        start_stream(&mut states, 16_000, 1);
        let (mut sink, mut stream) = stream_and_sink(true, 1, 40_000);
        let mut cursor = GapCursor::default();
        let health = HealthConfig::default();
        let fed = reader_step(64, |w, r, e, m| {
            let to = Outputs {
                windows: w,
                recycled: r,
                events: e,
                metrics: m,
                input: 0,
            };
            let mut scratch = Vec::new();
            // Reads of at most 8 192 samples: one that holds the gap is split there.
            let mut read_all = |states: &mut [TapState], stream: &mut StreamHandle| {
                while read_block(states, stream, &mut cursor, &mut scratch, &health, &to) > 0 {}
            };
            sink.write(&signal[..20_800]);
            if caught_up {
                read_all(&mut states, &mut stream);
                sink.gap_marker().mark();
            }
            sink.gap_marker().mark();
            sink.write(&signal[20_800..]);
            read_all(&mut states, &mut stream);
        });
        (signal, fed, states)
    }

    #[test]
    fn no_window_joins_the_audio_on_both_sides_of_a_gap() {
        // The windows start again after the gap (a 0.5 s window needs 8 000 samples after it); the clip history
        // keeps both sides. Whether the reader meets the mark inside a block or where it stands.
        for caught_up in [false, true] {
            let (signal, fed, states) = read_across_a_gap(caught_up);
            let starts: Vec<u64> = fed.windows.iter().map(|w| w.samples[0] as u64).collect();
            assert_eq!(
                starts,
                [0, 4_000, 8_000, 12_000, 20_800, 24_800, 28_800],
                "caught up: {caught_up}"
            );
            for w in &fed.windows {
                assert_eq!(w.samples, signal[w.samples[0] as usize..][..8_000]);
            }
            assert_eq!(
                fed.metrics.inputs[0].gaps.get(),
                1,
                "caught up: {caught_up}"
            );
            assert!(states[0].audio.iter().copied().eq(signal.iter().copied()));
        }
    }

    #[test]
    fn a_clip_whose_audio_is_gone_is_dropped_and_said_so() {
        // A 1 s history, 5 s of audio, then a clip asked for around 1 s: nothing of it is left.
        let mut states = vec![TapState::new(MachineTap {
            channel: 0,
            history_seconds: 1.0,
            ..tap_state(true).tap
        })];
        let audio = vec![0.1f32; 80_000];
        feed(&mut states, audio.chunks(4_000), 1, 64);
        states[0].pending_clips.push(ClipRequest {
            machine: 0,
            onset_end_ms: 1000,
            pre_seconds: 0.5,
            post_seconds: 0.5,
            path: "gone.wav".into(),
        });
        let fed = reader_step(64, |_, _, e, m| serve_all_clips(&mut states, e, m, None));
        let dropped: Vec<&PathBuf> = fed
            .events
            .iter()
            .filter_map(|e| match e {
                ReaderEvent::ClipDropped { path } => Some(path),
                _ => None,
            })
            .collect();
        assert_eq!(dropped, [&PathBuf::from("gone.wav")]);
        assert_eq!(fed.metrics.clips_dropped.get(), 1);
        assert!(states[0].pending_clips.is_empty());
    }

    #[test]
    fn windows_start_again_with_a_new_stream() {
        // A ramp that names every sample; 1.3 s of a first stream, then a second (a device opened again after
        // a gap): no window holds samples of both.
        let signal: Vec<f32> = (0..36_800).map(|i| i as f32).collect();
        let mut states = vec![TapState::new(MachineTap {
            channel: 0,
            ..tap_state(true).tap
        })];
        start_stream(&mut states, 16_000, 1);
        let first = feed(&mut states, signal[..20_800].chunks(1_000), 1, 64).windows;
        start_stream(&mut states, 16_000, 1);
        let second = feed(&mut states, signal[20_800..].chunks(1_000), 1, 64).windows;
        let starts = |ws: &[WindowMsg]| ws.iter().map(|w| w.samples[0] as u64).collect::<Vec<_>>();
        assert_eq!(starts(&first), [0, 4_000, 8_000, 12_000]);
        assert_eq!(starts(&second), [20_800, 24_800, 28_800]);
        for w in first.iter().chain(&second) {
            assert_eq!(w.samples, signal[w.samples[0] as usize..][..8_000]);
            assert_eq!(w.t_end_ms, (w.samples[0] as u64 + 8_000) / 16);
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_windows() {
        let mut states = vec![tap_state(false)];
        let inter: Vec<f32> = (0..2 * 48_000)
            .map(|i| ((i * 31 % 200) as f32 - 100.0) / 400.0)
            .collect();
        let fed = feed(&mut states, [&inter[..]], 2, 2);
        assert_eq!(fed.windows.len(), 2);
        assert_eq!(fed.metrics.machines[0].windows.get(), 11);
        assert_eq!(fed.metrics.machines[0].dropped_windows.get(), 9);
    }

    /// A queue that stays full drops the windows of the machines cut last: with the machines always cut in one
    /// order, the same ones lost every window and were never watched. The reader cuts from the next machine after
    /// a block that dropped windows, so every machine gets its share.
    #[test]
    fn a_full_queue_spreads_its_drops_over_the_machines() {
        let names: Vec<String> = (0..4).map(|i| format!("m{i}")).collect();
        let metrics = Metrics::new(&["in".into()], &names);
        let mut states: Vec<TapState> = (0..4)
            .map(|machine| {
                TapState::new(MachineTap {
                    machine,
                    channel: 0,
                    ..tap_state(false).tap
                })
            })
            .collect();
        start_stream(&mut states, 16_000, 1);
        let audio: Vec<f32> = (0..160_000)
            .map(|i| ((i * 31 % 200) as f32 - 100.0) / 400.0)
            .collect();
        let mut stream = stream_holding(false, 1, audio.len(), &audio);
        // Room for two windows, taken between blocks: a consumer that keeps up with half a machine.
        let (wtx, wrx) = crossbeam_channel::bounded(2);
        let (_rtx, rrx) = crossbeam_channel::bounded::<Vec<f32>>(4);
        let (etx, _erx) = crossbeam_channel::bounded(1024);
        let to = Outputs {
            windows: &wtx,
            recycled: &rrx,
            events: &etx,
            metrics: &metrics,
            input: 0,
        };
        let mut cursor = GapCursor::default();
        let mut scratch = vec![0.0f32; 8192];
        let mut got = [0usize; 4];
        while read_block(
            &mut states,
            &mut stream,
            &mut cursor,
            &mut scratch,
            &HealthConfig::default(),
            &to,
        ) > 0
        {
            for w in wrx.try_iter() {
                got[w.machine] += 1;
            }
        }
        let dropped: u64 = metrics
            .machines
            .iter()
            .map(|m| m.dropped_windows.get())
            .sum();
        assert!(dropped > 0, "{got:?}");
        assert!(got.iter().all(|&n| n >= 2), "windows per machine: {got:?}");
    }

    /// A reader thread for one machine (channel 0 of a 16 kHz mono input, [`tap_state`]'s windows), and the
    /// channels around it.
    struct Rig {
        streams: Sender<StreamHandle>,
        windows: Receiver<WindowMsg>,
        clips: Sender<ClipRequest>,
        events: Receiver<ReaderEvent>,
        _recycled: Sender<Vec<f32>>,
        metrics: Arc<Metrics>,
        stop: Arc<AtomicBool>,
        reader: std::thread::JoinHandle<()>,
    }

    impl Rig {
        fn start() -> Rig {
            Rig::start_with(None)
        }

        /// With the tap's [`MachineTap::max_lead`].
        fn start_with(max_lead: Option<Duration>) -> Rig {
            let mut tap = tap_state(true).tap;
            tap.channel = 0;
            tap.max_lead = max_lead;
            let metrics = Arc::new(Metrics::new(&["in".into()], &["m".into()]));
            let (stx, srx) = crossbeam_channel::bounded(1);
            let (wtx, wrx) = crossbeam_channel::bounded(64);
            let (rtx, rrx) = crossbeam_channel::bounded::<Vec<f32>>(4);
            let (ctx, crx) = crossbeam_channel::bounded(4);
            let (etx, erx) = crossbeam_channel::bounded(64);
            let stop = Arc::new(AtomicBool::new(false));
            let reader = spawn_reader(
                0,
                "in".into(),
                vec![tap],
                srx,
                wtx,
                rrx,
                crx,
                etx,
                HealthConfig::default(),
                metrics.clone(),
                stop.clone(),
            )
            .unwrap();
            Rig {
                streams: stx,
                windows: wrx,
                clips: ctx,
                events: erx,
                _recycled: rtx,
                metrics,
                stop,
                reader,
            }
        }

        /// Hands the reader a stream whose ring already holds `seconds` of audio; returns its end flag.
        fn stream(&self, seconds: f32, paced: bool) -> Arc<crate::capture::StreamEnd> {
            let n = (seconds * 16_000.0) as usize;
            let handle = stream_holding(paced, 1, n.max(1024), &vec![0.1f32; n]);
            let end = handle.end.clone();
            self.streams.send(handle).unwrap();
            end
        }

        /// Asks for the clip of the window that ended at `onset_end_ms`, 0.25 s before it and `post_seconds` after.
        fn ask_clip(&self, onset_end_ms: u64, post_seconds: f32) {
            self.clips
                .send(ClipRequest {
                    machine: 0,
                    onset_end_ms,
                    pre_seconds: 0.25,
                    post_seconds,
                    path: "x.wav".into(),
                })
                .unwrap();
        }

        /// The reader's next event other than health and news of a stream's channels, if one comes within `wait`.
        fn next_within(&self, wait: Duration) -> Option<ReaderEvent> {
            let until = std::time::Instant::now() + wait;
            loop {
                let left = until.saturating_duration_since(std::time::Instant::now());
                match self.events.recv_timeout(left) {
                    Ok(ReaderEvent::Health(_) | ReaderEvent::Fed { .. }) => continue,
                    Ok(e) => return Some(e),
                    Err(_) => return None,
                }
            }
        }

        /// The number of samples of the next event, which must be a clip.
        fn next_clip_len(&self) -> usize {
            match self.next_within(Duration::from_secs(5)) {
                Some(ReaderEvent::Clip(c)) => c.samples.len(),
                Some(_) => panic!("not a clip"),
                None => panic!("no clip from the reader"),
            }
        }

        fn stop(self) {
            self.stop.store(true, Ordering::SeqCst);
            self.reader.join().unwrap();
        }
    }

    /// A file replayed as fast as possible reads on only as far as `max_lead` beyond the last window the daemon
    /// has handled, so that an alarm's clip still finds its audio in the history; windows dropped on their way
    /// (a failing model) do not hold it.
    #[test]
    fn a_fast_replay_stays_within_its_lead_of_the_handled_windows() {
        let rig = Rig::start_with(Some(Duration::from_secs(1)));
        let m = &rig.metrics.machines[0];
        // 10 s of audio, the file not at its end. Windows of 0.5 s every 0.25 s; the reader reads 8192 samples
        // (0.512 s) at a time.
        let _end = rig.stream(10.0, false);
        // The ends of the next `n` windows, then nothing more for 300 ms (held).
        let next = |n: usize| -> Vec<u64> {
            let v: Vec<u64> = (0..n)
                .map(|_| {
                    rig.windows
                        .recv_timeout(Duration::from_secs(10))
                        .expect("a window")
                        .t_end_ms
                })
                .collect();
            let more = rig.windows.recv_timeout(Duration::from_millis(300));
            assert!(more.is_err(), "{v:?} then {:?}", more.map(|w| w.t_end_ms));
            v
        };
        // Nothing handled: it stops once it stands more than 1 s in (after two reads, 1.024 s).
        assert_eq!(next(3), [500, 750, 1000]);
        // Handled up to there: it reads on, to 1 s beyond (2.048 s).
        m.handled_ms.store(1000, Ordering::Release);
        m.settled.add(3);
        assert_eq!(next(4), [1250, 1500, 1750, 2000]);
        // Those four dropped on their way (not handled): nothing on its way any more, so it reads one block; its
        // two windows are on their way, 1.5 s past what was handled, and it holds again.
        m.settled.add(4);
        assert_eq!(next(2), [2250, 2500]);
        // Every window dropped from here on (a model failing): the replay goes to its end.
        m.settled.add(2);
        let rest: Vec<u64> = std::iter::from_fn(|| {
            let w = rig.windows.recv_timeout(Duration::from_secs(10)).ok()?;
            m.settled.inc();
            Some(w.t_end_ms)
        })
        .take_while(|&t| t < 10_000)
        .collect();
        assert_eq!(rest.first(), Some(&2750));
        assert_eq!(rest.last(), Some(&9750));
        rig.stop();
    }

    /// A file replayed faster than its windows are scored can end, and its reader finish, before the alarm asks for
    /// its clip: the clip is served from the history then, not left waiting for audio that will never come.
    #[test]
    fn a_clip_asked_for_after_the_file_ended_is_served_from_history() {
        let rig = Rig::start();
        rig.stream(3.0, false).finish();
        assert!(matches!(
            rig.next_within(Duration::from_secs(5)),
            Some(ReaderEvent::Finished { input: 0 })
        ));
        assert_eq!(
            rig.windows.try_iter().count(),
            11,
            "3 s of 0.5 s windows every 0.25 s"
        );
        // The alarm of the window that ended at 2 s asks for its clip only now.
        rig.ask_clip(2000, 0.5);
        assert_eq!(rig.next_clip_len(), 20_000, "0.25 + 0.5 + 0.5 s");
        rig.stop();
    }

    /// A device lost right after an alarm (the machine's power failed, the microphone with it) ends its stream:
    /// the clip waiting for the seconds after the onset is written with the audio there is, not kept waiting for
    /// a device that may never come back. The stream is over, not the input: nothing reports it finished.
    #[test]
    fn a_clip_whose_stream_ends_before_its_post_seconds_is_written_as_it_stands() {
        let rig = Rig::start();
        let end = rig.stream(1.0, true);
        rig.ask_clip(1000, 2.0);
        assert!(
            rig.next_within(Duration::from_millis(300)).is_none(),
            "the clip waits while the stream may still bring its audio"
        );
        end.close();
        assert_eq!(
            rig.next_clip_len(),
            12_000,
            "0.25 + 0.5 s, nothing after the onset"
        );
        // Between streams a new request cannot wait for audio either.
        rig.ask_clip(900, 2.0);
        assert_eq!(rig.next_clip_len(), 12_000 + 1_600, "0.25 + 0.5 + 0.1 s");
        assert!(rig.next_within(Duration::from_millis(100)).is_none());
        rig.stop();
    }

    /// A daemon that stops during an alarm: the reader serves the clip still waiting for its post-onset audio
    /// with what there is, as it stops (the daemon then writes it before it exits).
    #[test]
    fn a_stopping_reader_serves_the_clips_still_waiting() {
        let rig = Rig::start();
        let _end = rig.stream(1.5, true);
        rig.ask_clip(1000, 5.0);
        assert!(rig.next_within(Duration::from_millis(300)).is_none());
        let events = rig.events.clone();
        rig.stop();
        let clips: Vec<usize> = events
            .try_iter()
            .filter_map(|e| match e {
                ReaderEvent::Clip(c) => Some(c.samples.len()),
                _ => None,
            })
            .collect();
        assert_eq!(clips, [20_000], "0.25 + 0.5 + 0.5 s");
    }
}
