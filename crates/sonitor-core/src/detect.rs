//! The alarm logic of one machine, as pure state: window scores in, alarm transitions out.
//!
//! - A window is *high* when its score is above the on-threshold, *low* when it is below the off-threshold
//!   (hysteresis: off ≤ on; between the two a window is neither).
//! - OFF → ON when `raise_k` of the last `raise_n` windows were high, unless the machine is disabled, muted or
//!   within `cooldown` of the last clear.
//! - ON → OFF when `clear_m` of the last `clear_n` windows were low and the alarm has lasted `min_duration`.
//! - Muting or disabling a machine whose alarm is on ends the alarm (reason `muted` / `disabled`), and so does a
//!   window in which the machine is not running (reason `idle`; [`Detector::idle`]).
//!
//! Time is the stream time of the window's end in milliseconds (audio time, so that a file replayed faster
//! than real time behaves exactly as it would live).

use std::collections::VecDeque;

/// Parameters of a [`Detector`]; all of them may change while it runs ([`Detector::set_params`]).
#[derive(Debug, Clone, PartialEq)]
pub struct DetectorParams {
    pub threshold_on: f64,
    pub threshold_off: f64,
    pub raise_k: usize,
    pub raise_n: usize,
    pub clear_m: usize,
    pub clear_n: usize,
    pub min_duration_ms: u64,
    pub cooldown_ms: u64,
}

/// The daemon's default debounce (`[machines.detector]` in its configuration): raise when 3 of the last 5
/// windows are above the threshold, clear when 4 of the last 5 are below it.
pub const DEFAULT_RAISE_K: usize = 3;
pub const DEFAULT_RAISE_N: usize = 5;
pub const DEFAULT_CLEAR_M: usize = 4;
pub const DEFAULT_CLEAR_N: usize = 5;

impl DetectorParams {
    /// The daemon's defaults around one threshold (no hysteresis, no minimum duration, no cooldown): what a
    /// machine configured with nothing but its bundle gets. `sonitor-train eval` uses it to say how often the
    /// daemon would alarm on the test clips.
    pub fn defaults_with_threshold(threshold: f64) -> Self {
        Self {
            threshold_on: threshold,
            threshold_off: threshold,
            raise_k: DEFAULT_RAISE_K,
            raise_n: DEFAULT_RAISE_N,
            clear_m: DEFAULT_CLEAR_M,
            clear_n: DEFAULT_CLEAR_N,
            min_duration_ms: 0,
            cooldown_ms: 0,
        }
    }
}

/// Why an alarm ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClearReason {
    /// The scores went back below the off-threshold.
    Normal,
    Muted,
    Disabled,
    /// The machine stopped running (its window's level below the machine's idle level): it is not watched
    /// while it stands, and an alarm it still deserves is raised again once it runs.
    Idle,
    /// The machine is no longer in the configuration (removed or renamed): ended by the daemon's next start.
    Removed,
}

impl ClearReason {
    /// The word the MQTT payloads give (`reason` of the end event): the log says the same.
    pub fn as_str(self) -> &'static str {
        match self {
            ClearReason::Normal => "normal",
            ClearReason::Muted => "muted",
            ClearReason::Disabled => "disabled",
            ClearReason::Idle => "idle",
            ClearReason::Removed => "removed",
        }
    }
}

impl std::fmt::Display for ClearReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    Raised {
        at_ms: u64,
        score: f64,
    },
    Cleared {
        at_ms: u64,
        since_ms: u64,
        peak: f64,
        reason: ClearReason,
    },
}

/// The alarm state of a machine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AlarmState {
    Off,
    On { since_ms: u64, peak: f64 },
}

#[derive(Debug, Clone)]
pub struct Detector {
    params: DetectorParams,
    state: AlarmState,
    high: VecDeque<bool>,
    low: VecDeque<bool>,
    last_clear_ms: Option<u64>,
    muted: bool,
    enabled: bool,
    last_t_ms: u64,
}

impl Detector {
    pub fn new(params: DetectorParams) -> Self {
        Self {
            params,
            state: AlarmState::Off,
            high: VecDeque::new(),
            low: VecDeque::new(),
            last_clear_ms: None,
            muted: false,
            enabled: true,
            last_t_ms: 0,
        }
    }

    /// A detector that resumes an alarm that was on when the daemon stopped.
    pub fn resume_on(params: DetectorParams, since_ms: u64, peak: f64) -> Self {
        let mut d = Self::new(params);
        d.state = AlarmState::On { since_ms, peak };
        d
    }

    pub fn params(&self) -> &DetectorParams {
        &self.params
    }

    /// New parameters (SIGHUP, threshold command); the alarm state and the mute survive, the windows restart.
    pub fn set_params(&mut self, params: DetectorParams) {
        if params != self.params {
            self.params = params;
            self.high.clear();
            self.low.clear();
        }
    }

    pub fn state(&self) -> AlarmState {
        self.state
    }

    pub fn is_on(&self) -> bool {
        matches!(self.state, AlarmState::On { .. })
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether the machine is muted ([`Detector::set_muted`]).
    pub fn muted(&self) -> bool {
        self.muted
    }

    /// Enables or disables the machine; disabling ends an active alarm.
    pub fn set_enabled(&mut self, enabled: bool, now_ms: u64) -> Option<Transition> {
        self.enabled = enabled;
        self.high.clear();
        self.low.clear();
        if !enabled {
            return self.force_clear(now_ms, ClearReason::Disabled);
        }
        None
    }

    /// Mutes or unmutes the machine at stream time `now_ms`; muting ends an active alarm, and a muted machine
    /// raises none until it is unmuted. When a mute ends is the caller's to decide, on its own clock: the
    /// daemon's is monotonic, because stream time stops while an input is away.
    pub fn set_muted(&mut self, muted: bool, now_ms: u64) -> Option<Transition> {
        self.last_t_ms = self.last_t_ms.max(now_ms);
        self.muted = muted;
        if !muted {
            return None;
        }
        self.high.clear();
        self.force_clear(now_ms, ClearReason::Muted)
    }

    /// A window at stream time `t_ms` in which the machine is not running (the caller's judgement, from its
    /// level): it counts towards nothing, the windows before it are forgotten (a stop and a start are not
    /// anomalies of the running machine), and an active alarm ends (reason `idle`).
    pub fn idle(&mut self, t_ms: u64) -> Option<Transition> {
        self.last_t_ms = self.last_t_ms.max(t_ms);
        self.high.clear();
        self.low.clear();
        self.force_clear(t_ms, ClearReason::Idle)
    }

    /// The audio stopped (its input away): the windows before it are forgotten, so that they do not add up with
    /// those after it (two high windows before an unplugging and one an hour after it are not three of five). The
    /// alarm stays as it is.
    pub fn forget_recent(&mut self) {
        self.high.clear();
        self.low.clear();
    }

    fn force_clear(&mut self, now_ms: u64, reason: ClearReason) -> Option<Transition> {
        if let AlarmState::On { since_ms, peak } = self.state {
            self.state = AlarmState::Off;
            self.last_clear_ms = Some(now_ms);
            self.low.clear();
            return Some(Transition::Cleared {
                at_ms: now_ms,
                since_ms,
                peak,
                reason,
            });
        }
        None
    }

    fn push(q: &mut VecDeque<bool>, v: bool, n: usize) -> usize {
        q.push_back(v);
        while q.len() > n {
            q.pop_front();
        }
        q.iter().filter(|&&b| b).count()
    }

    /// One window's score at stream time `t_ms`; returns the transition it causes, if any.
    pub fn update(&mut self, t_ms: u64, score: f64) -> Option<Transition> {
        self.last_t_ms = self.last_t_ms.max(t_ms);
        if !self.enabled {
            return None;
        }
        let p = &self.params;
        match self.state {
            AlarmState::Off => {
                let highs = Self::push(&mut self.high, score > p.threshold_on, p.raise_n);
                let muted = self.muted;
                let cooling = self
                    .last_clear_ms
                    .is_some_and(|c| t_ms < c.saturating_add(p.cooldown_ms));
                if highs >= p.raise_k && !muted && !cooling {
                    self.state = AlarmState::On {
                        since_ms: t_ms,
                        peak: score,
                    };
                    self.high.clear();
                    self.low.clear();
                    return Some(Transition::Raised { at_ms: t_ms, score });
                }
                None
            }
            AlarmState::On { since_ms, peak } => {
                let peak = peak.max(score);
                self.state = AlarmState::On { since_ms, peak };
                let lows = Self::push(&mut self.low, score < p.threshold_off, p.clear_n);
                if lows >= p.clear_m && t_ms >= since_ms.saturating_add(p.min_duration_ms) {
                    self.state = AlarmState::Off;
                    self.last_clear_ms = Some(t_ms);
                    self.high.clear();
                    self.low.clear();
                    return Some(Transition::Cleared {
                        at_ms: t_ms,
                        since_ms,
                        peak,
                        reason: ClearReason::Normal,
                    });
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The log's word for why an alarm ended is the payload's (`normal`, not `Normal`).
    #[test]
    fn a_clear_reason_reads_as_its_payload_word() {
        use ClearReason::*;
        for r in [Normal, Muted, Disabled, Idle, Removed] {
            assert_eq!(serde_json::to_value(r).unwrap(), r.to_string());
        }
    }

    fn params() -> DetectorParams {
        DetectorParams {
            threshold_on: 0.5,
            threshold_off: 0.5,
            raise_k: 1,
            raise_n: 1,
            clear_m: 1,
            clear_n: 1,
            min_duration_ms: 0,
            cooldown_ms: 0,
        }
    }

    /// Feeds scores one second apart starting at t = 1000 ms; returns (index, transition) pairs.
    fn run(d: &mut Detector, scores: &[f64]) -> Vec<(usize, Transition)> {
        scores
            .iter()
            .enumerate()
            .filter_map(|(i, &s)| d.update(1000 * (i as u64 + 1), s).map(|t| (i, t)))
            .collect()
    }

    fn kinds(v: &[(usize, Transition)]) -> Vec<(usize, char)> {
        v.iter()
            .map(|(i, t)| {
                (
                    *i,
                    match t {
                        Transition::Raised { .. } => 'R',
                        Transition::Cleared { .. } => 'C',
                    },
                )
            })
            .collect()
    }

    #[test]
    fn single_window_threshold() {
        let mut d = Detector::new(params());
        let t = run(&mut d, &[0.1, 0.6, 0.7, 0.2, 0.1]);
        assert_eq!(kinds(&t), vec![(1, 'R'), (3, 'C')]);
        match &t[1].1 {
            Transition::Cleared {
                since_ms,
                peak,
                reason,
                ..
            } => {
                assert_eq!(*since_ms, 2000);
                assert_eq!(*peak, 0.7);
                assert_eq!(*reason, ClearReason::Normal);
            }
            other => panic!("{other:?}"),
        }
    }

    /// Windows before an outage of the input do not add up with those after it; the alarm stays as it was.
    #[test]
    fn an_outage_restarts_the_debounce_and_keeps_the_alarm() {
        let mut d = Detector::new(DetectorParams {
            raise_k: 2,
            raise_n: 3,
            ..params()
        });
        assert!(d.update(1000, 0.9).is_none());
        d.forget_recent();
        assert!(d.update(3_600_000, 0.9).is_none());
        assert!(matches!(
            d.update(3_601_000, 0.9),
            Some(Transition::Raised { .. })
        ));
        d.forget_recent();
        assert!(d.is_on());
    }

    /// A stopped machine: its idle windows end an active alarm (reason `idle`) and make the debounce start
    /// again, so that the high windows just before a stop and just after a start do not add up to an alarm.
    #[test]
    fn idle_windows_end_the_alarm_and_restart_the_debounce() {
        let mut d = Detector::new(DetectorParams {
            raise_k: 2,
            raise_n: 3,
            ..params()
        });
        assert!(d.update(1000, 0.9).is_none());
        assert!(d.idle(2000).is_none(), "no alarm on: nothing to end");
        // One high window before the stop and one after it are not two of the last three.
        assert!(d.update(3000, 0.9).is_none());
        assert!(matches!(
            d.update(4000, 0.9),
            Some(Transition::Raised { at_ms: 4000, .. })
        ));
        match d.idle(5000) {
            Some(Transition::Cleared {
                at_ms: 5000,
                since_ms: 4000,
                reason: ClearReason::Idle,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        assert!(!d.is_on());
        assert!(d.idle(6000).is_none());
        // Running again and still anomalous: raised again by the debounce.
        assert!(d.update(7000, 0.9).is_none());
        assert!(d.update(8000, 0.9).is_some());
        assert_eq!(
            serde_json::to_string(&ClearReason::Idle).unwrap(),
            "\"idle\""
        );
    }

    #[test]
    fn score_equal_to_threshold_is_not_high() {
        let mut d = Detector::new(params());
        assert!(run(&mut d, &[0.5, 0.5]).is_empty());
    }

    #[test]
    fn k_of_n_ignores_isolated_spikes() {
        let mut d = Detector::new(DetectorParams {
            raise_k: 3,
            raise_n: 5,
            ..params()
        });
        // Spikes 2 of every 5: never 3 in a window of 5.
        let t = run(&mut d, &[0.9, 0.1, 0.1, 0.9, 0.1, 0.1, 0.9, 0.1, 0.1, 0.9]);
        assert!(t.is_empty(), "{t:?}");
        // Three highs within five windows raise on the third.
        let mut d = Detector::new(DetectorParams {
            raise_k: 3,
            raise_n: 5,
            ..params()
        });
        let t = run(&mut d, &[0.9, 0.1, 0.9, 0.1, 0.9]);
        assert_eq!(kinds(&t), vec![(4, 'R')]);
    }

    #[test]
    fn m_of_n_clear_needs_enough_low_windows() {
        let mut d = Detector::new(DetectorParams {
            clear_m: 3,
            clear_n: 4,
            ..params()
        });
        let t = run(&mut d, &[0.9, 0.1, 0.9, 0.1, 0.9, 0.1, 0.1, 0.1]);
        // Lows at 1, 3, 5: windows (2..=5) = [H, L, H, L] → 2 lows; (3..=6) = [L,H,L,L] → 3 lows at index 6.
        assert_eq!(kinds(&t), vec![(0, 'R'), (6, 'C')]);
    }

    #[test]
    fn hysteresis_holds_the_alarm_between_thresholds() {
        let mut d = Detector::new(DetectorParams {
            threshold_on: 0.5,
            threshold_off: 0.3,
            ..params()
        });
        let t = run(&mut d, &[0.6, 0.4, 0.45, 0.35, 0.29, 0.4, 0.49]);
        // 0.4 neither raises nor clears: only 0.29 clears; after that 0.4 and 0.49 stay below on.
        assert_eq!(kinds(&t), vec![(0, 'R'), (4, 'C')]);
    }

    #[test]
    fn min_duration_keeps_the_alarm_on() {
        let mut d = Detector::new(DetectorParams {
            min_duration_ms: 3000,
            ..params()
        });
        let t = run(&mut d, &[0.9, 0.1, 0.1, 0.1, 0.1]);
        // Raised at t=1000; low windows at 2000, 3000 are too early; 4000 is 3 s after onset.
        assert_eq!(kinds(&t), vec![(0, 'R'), (3, 'C')]);
    }

    #[test]
    fn cooldown_blocks_a_new_alarm() {
        let mut d = Detector::new(DetectorParams {
            cooldown_ms: 2500,
            ..params()
        });
        let t = run(&mut d, &[0.9, 0.1, 0.9, 0.9, 0.9, 0.9]);
        // Cleared at 2000; highs at 3000 and 4000 are within 2.5 s; 5000 raises again (window kept while cooling).
        assert_eq!(kinds(&t), vec![(0, 'R'), (1, 'C'), (4, 'R')]);
    }

    #[test]
    fn mute_ends_the_alarm_and_suppresses_new_ones_until_unmuted() {
        let mut d = Detector::new(params());
        assert!(d.update(1000, 0.9).is_some());
        match d.set_muted(true, 1500) {
            Some(Transition::Cleared { at_ms, reason, .. }) => {
                assert_eq!((at_ms, reason), (1500, ClearReason::Muted))
            }
            other => panic!("{other:?}"),
        }
        assert!(d.muted());
        // However long the stream runs: stream time does not end a mute.
        for t in (2000..=60_000).step_by(500) {
            assert_eq!(d.update(t, 0.9), None, "raised at {t} while muted");
        }
        assert_eq!(d.set_muted(false, 60_200), None);
        assert!(!d.muted());
        // The first high window after the mute raises the alarm the mute held back.
        assert!(matches!(
            d.update(60_500, 0.9),
            Some(Transition::Raised { at_ms: 60_500, .. })
        ));
    }

    #[test]
    fn muting_a_quiet_machine_clears_nothing_and_unmuting_lets_it_raise() {
        let mut d = Detector::new(params());
        assert_eq!(d.set_muted(true, 0), None);
        assert_eq!(d.update(1000, 0.9), None);
        assert_eq!(d.update(1500, 0.9), None);
        assert_eq!(d.set_muted(false, 1500), None);
        assert!(d.update(2000, 0.9).is_some());
    }

    #[test]
    fn disable_ends_the_alarm_and_ignores_scores() {
        let mut d = Detector::new(params());
        d.update(1000, 0.9);
        assert!(matches!(
            d.set_enabled(false, 1500),
            Some(Transition::Cleared {
                reason: ClearReason::Disabled,
                ..
            })
        ));
        assert_eq!(d.update(2000, 0.9), None);
        assert_eq!(d.set_enabled(true, 2500), None);
        assert!(d.update(3000, 0.9).is_some());
    }

    #[test]
    fn new_params_keep_the_alarm_state() {
        let mut d = Detector::new(params());
        d.update(1000, 0.9);
        d.set_params(DetectorParams {
            threshold_on: 0.95,
            threshold_off: 0.95,
            ..params()
        });
        assert!(d.is_on());
        // 0.9 is now below the off-threshold: the alarm clears.
        assert!(matches!(
            d.update(2000, 0.9),
            Some(Transition::Cleared { .. })
        ));
    }

    #[test]
    fn resumed_alarm_clears_with_the_original_onset() {
        let mut d = Detector::resume_on(params(), 500, 0.8);
        match d.update(1000, 0.1) {
            Some(Transition::Cleared { since_ms, peak, .. }) => {
                assert_eq!(since_ms, 500);
                assert_eq!(peak, 0.8);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_long_random_run_alternates_transitions() {
        // Property: transitions strictly alternate R, C, R, C … whatever the scores and commands.
        let mut d = Detector::new(DetectorParams {
            threshold_on: 0.5,
            threshold_off: 0.4,
            raise_k: 2,
            raise_n: 3,
            clear_m: 2,
            clear_n: 4,
            min_duration_ms: 1500,
            cooldown_ms: 700,
        });
        let mut x: u64 = 12345;
        let mut on = false;
        for i in 0..5000u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let score = (x >> 40) as f64 / (1u64 << 24) as f64;
            let t = match i % 97 {
                13 => d.set_muted((x >> 60) & 1 == 1, i * 500),
                51 => d.set_enabled(i % 2 == 0, i * 500),
                _ => d.update(i * 500, score),
            };
            match t {
                Some(Transition::Raised { .. }) => {
                    assert!(!on);
                    on = true
                }
                Some(Transition::Cleared { .. }) => {
                    assert!(on);
                    on = false
                }
                None => {}
            }
            assert_eq!(on, d.is_on());
        }
    }
}
