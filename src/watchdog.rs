//! The systemd watchdog: how often the main loop checks it, and whether the daemon has made progress since the
//! last ping ([`watchdog_fed`]): a daemon that runs but no longer scores, reads, writes clips or publishes is
//! not fed, and systemd restarts it.

use std::time::Duration;

use crate::metrics::Metrics;

/// The counters the watchdog compares with their values at its last ping ([`watchdog_fed`]); the default is
/// every count at zero (before the first ping).
#[derive(Debug, Default)]
pub(crate) struct WatchMarks {
    /// Frames delivered by every input.
    pub(crate) frames: u64,
    /// Windows scored, every machine.
    pub(crate) inferences: u64,
    /// Per input: its supervisor's turns while it waits to reopen it.
    pub(crate) retry_beats: Vec<u64>,
    /// The turns of every thread that must keep turning: each input's reader, then the clip writer, then the
    /// MQTT publisher when there is one.
    pub(crate) turns: Vec<u64>,
}

impl WatchMarks {
    pub(crate) fn read(metrics: &Metrics, with_mqtt: bool) -> Self {
        let readers = metrics.inputs.iter().map(|i| i.reader_beats.get());
        let mqtt = with_mqtt.then(|| metrics.mqtt_beats.get());
        Self {
            frames: metrics.inputs.iter().map(|i| i.frames.get()).sum(),
            inferences: metrics.machines.iter().map(|m| m.inferences.get()).sum(),
            retry_beats: metrics.inputs.iter().map(|i| i.retry_beats.get()).collect(),
            turns: readers
                .chain([metrics.clips_beats.get()])
                .chain(mqtt)
                .collect(),
        }
    }
}

/// Whether the daemon has made progress since the last watchdog ping (`now` against `at_ping`): frames advanced
/// and the pipeline either scored windows or has none waiting (`idle`: a window hop longer than the watchdog
/// period leaves it waiting for audio, not stuck), or no input is open and every input's supervisor has visibly
/// waited to reopen it since (or, a replayed file stopped at its end as configured, waits for the stop). Frames
/// that came before an input went away do not count against the waiting.
/// Either way every input's reader must have turned since: a reader stuck cuts no more windows, which the
/// pipeline alone would take for `idle`. And so must the clip writer and the MQTT publisher: one stuck drops
/// every clip, the other leaves every alarm in the outbox, and neither shows in the audio's progress.
pub(crate) fn watchdog_fed(
    now: &WatchMarks,
    at_ping: &WatchMarks,
    idle: bool,
    any_open: bool,
) -> bool {
    // A count the marks at the ping lack (the default's, before the first ping) was zero.
    let advanced = |n: &[u64], t: &[u64]| {
        n.iter()
            .enumerate()
            .all(|(i, n)| *n > t.get(i).copied().unwrap_or(0))
    };
    let scoring = now.frames > at_ping.frames && (now.inferences > at_ping.inferences || idle);
    let waiting = !any_open && advanced(&now.retry_beats, &at_ping.retry_beats);
    (scoring || waiting) && advanced(&now.turns, &at_ping.turns)
}

/// How often the watchdog is checked: a quarter of the systemd watchdog period (`WATCHDOG_USEC`), so that a check
/// that finds no progress yet is followed by three more before systemd gives up (at half, one such check left a
/// gap of a whole period), when the watchdog applies to this process (as `sd_watchdog_enabled(3)`: a
/// `WATCHDOG_PID` naming another process disables it; none means this one).
pub(crate) fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Some(pid) = std::env::var("WATCHDOG_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
    {
        if pid != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 4))
}

/// Whether no window cut by a reader is still on its way (in features, inference or the score queue). Counted by
/// the windows settled, failures included: inferences and drops leave out a window whose features or inference
/// failed, so after one such window this said "busy" for the daemon's life (each stop waited its whole drain, and
/// the watchdog lost its idle case).
pub(crate) fn win_queue_empty(metrics: &Metrics) -> bool {
    metrics.machines.iter().all(|m| !m.windows_on_their_way())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_window_leaves_the_queue_empty_once_settled() {
        let metrics = Metrics::new(&["mic".into()], &["pump-1".into()]);
        let m = &metrics.machines[0];
        for _ in 0..3 {
            m.windows.inc();
        }
        // One scored, one dropped on a full queue, one whose inference failed.
        m.inferences.inc();
        m.settled.inc();
        m.window_dropped();
        assert!(!win_queue_empty(&metrics));
        m.settled.inc();
        assert!(win_queue_empty(&metrics));
    }

    #[test]
    fn the_watchdog_is_fed_by_scoring_or_by_waiting_for_a_device_that_is_away() {
        let m = |frames, inferences, retry: &[u64], readers: &[u64]| WatchMarks {
            frames,
            inferences,
            retry_beats: retry.to_vec(),
            // The readers' turns, then the clip writer's and the MQTT publisher's: with the first reader's, unless
            // a case sets them.
            turns: [readers, &[readers[0]; 2]].concat(),
        };
        let ping = m(8, 4, &[0], &[5]);
        // Frames and inferences since the last ping: scoring.
        assert!(watchdog_fed(&m(10, 5, &[0], &[9]), &ping, false, true));
        // Frames but no inference since the last ping, windows waiting, the input open: a pipeline that stopped
        // scoring.
        assert!(!watchdog_fed(&m(10, 4, &[0], &[9]), &ping, false, true));
        // Frames, no window waiting: a window hop longer than the period, the next window not yet complete.
        assert!(watchdog_fed(&m(10, 4, &[0], &[9]), &ping, true, true));
        // The same with the reader stuck: no window is waiting because none is cut any more.
        assert!(!watchdog_fed(&m(10, 4, &[0], &[5]), &ping, true, true));
        // No frames at all with the input open (a stalled device, until the supervisor closes it): not fed.
        assert!(!watchdog_fed(&m(8, 4, &[0], &[9]), &ping, true, true));
        // The input went away after some frames came: its supervisor retrying feeds it.
        let ping = m(8, 4, &[3], &[5]);
        assert!(watchdog_fed(&m(10, 4, &[7], &[9]), &ping, false, false));
        // Not with its reader stuck.
        assert!(!watchdog_fed(&m(10, 4, &[7], &[5]), &ping, false, false));
        // A supervisor that stopped retrying (stuck in the audio stack) does not.
        let ping = m(8, 4, &[3, 3], &[5, 5]);
        assert!(!watchdog_fed(
            &m(8, 4, &[7, 3], &[9, 9]),
            &ping,
            false,
            false
        ));
        // Two inputs, one reader stuck: the other input's scoring does not hide it.
        assert!(watchdog_fed(
            &m(10, 5, &[3, 3], &[9, 9]),
            &ping,
            false,
            true
        ));
        assert!(!watchdog_fed(
            &m(10, 5, &[3, 3], &[9, 5]),
            &ping,
            false,
            true
        ));
        // Scoring, every reader turning, and the clip writer or the MQTT publisher stuck: not fed, since one
        // drops every clip and the other keeps every alarm in the outbox.
        let ping = m(8, 4, &[0], &[5]);
        let threads = |beats: &[u64], now: WatchMarks| WatchMarks {
            turns: [&now.turns[..1], beats].concat(),
            ..now
        };
        assert!(watchdog_fed(
            &threads(&[6, 6], m(10, 5, &[0], &[9])),
            &ping,
            false,
            true
        ));
        assert!(!watchdog_fed(
            &threads(&[5, 9], m(10, 5, &[0], &[9])),
            &ping,
            false,
            true
        ));
        assert!(!watchdog_fed(
            &threads(&[9, 5], m(10, 5, &[0], &[9])),
            &ping,
            false,
            true
        ));
        // Before the first ping every count stood at zero: a reader that never turned starves it.
        let start = WatchMarks::default();
        assert!(watchdog_fed(&m(10, 5, &[0], &[9]), &start, false, true));
        assert!(!watchdog_fed(&m(10, 5, &[0], &[0]), &start, false, true));
        // The same while waiting for a device that is away.
        let ping = m(8, 4, &[3], &[5]);
        assert!(!watchdog_fed(
            &threads(&[9, 5], m(10, 4, &[7], &[9])),
            &ping,
            false,
            false
        ));
    }
}
