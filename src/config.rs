//! The daemon's configuration: one TOML file plus `SONITOR_…` environment overrides, read with the `config`
//! crate into typed structs, then checked by [`Config::static_problems`] (what the file alone says) and
//! [`crate::check::check`] (files, bundles, sections, channels, devices, ports), which name every problem they find
//! instead of stopping at the first one.
//!
//! Environment overrides use `__` between levels: `SONITOR_MQTT__HOST=127.0.0.1`,
//! `SONITOR_MQTT__PASSWORD=…`, `SONITOR_NODE_ID=press-7`. Only variables whose first level is a known section
//! are read, so unrelated `SONITOR_*` variables (e.g. `SONITOR_PYTHON`) are ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sonitor_core::detect::{self, DetectorParams};

/// Exit status for a configuration problem (`EX_CONFIG` from sysexits.h); systemd does not restart on it when
/// the unit says `RestartPreventExitStatus=78`.
pub const EXIT_CONFIG: i32 = 78;

/// The longest machine name or node_id: they are part of MQTT topics, file names and metric labels.
pub const NAME_MAX: usize = 64;

/// Top-level values that environment variables may override.
const ENV_VALUES: &[&str] = &["node_id", "state_dir", "log_level"];

/// Sections whose settings environment variables may override (`SONITOR_<SECTION>__<KEY>`).
const ENV_SECTIONS: &[&str] = &["mqtt", "metrics", "clips", "health", "pipeline"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Identifies this device in MQTT topics (`<prefix>/<node_id>/…`). Letters, digits, `-` and `_`.
    pub node_id: String,
    /// Where the outbox, alarm state and clips are kept (systemd: `StateDirectory=sonitor` gives
    /// `/var/lib/sonitor`).
    pub state_dir: PathBuf,
    /// `error`, `warn`, `info`, `debug` or `trace`.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    #[serde(default)]
    pub devices: Vec<DeviceConfig>,
    #[serde(default)]
    pub machines: Vec<MachineConfig>,
    #[serde(default)]
    pub mqtt: MqttConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub clips: ClipsConfig,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub pipeline: PipelineConfig,
}

fn default_log_level() -> String {
    "info".into()
}

/// Where audio comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", try_from = "String")]
pub enum SourceKind {
    /// A capture device through cpal (ALSA on Linux).
    Capture,
    /// A WAV file replayed in real time or as fast as possible.
    File,
}

/// What a file source does at the end of its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", try_from = "String")]
pub enum AtEnd {
    /// Keep the daemon running without audio from this source (it will be reported as stalled).
    Stop,
    /// Start the file again.
    Loop,
    /// Drain the pipeline and exit the daemon (offline checks).
    Exit,
}

/// A value of a setting with a fixed set of values, or an error that lists them (the `config` crate's own
/// message for an unknown enum variant does not).
fn one_of<T: Copy>(value: &str, choices: &[(&str, T)]) -> Result<T, String> {
    choices
        .iter()
        .find(|(name, _)| *name == value)
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
            format!("'{value}' is not one of: {}", names.join(", "))
        })
}

impl TryFrom<String> for SourceKind {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        one_of(&s, &[("capture", Self::Capture), ("file", Self::File)])
    }
}

impl TryFrom<String> for AtEnd {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        one_of(
            &s,
            &[
                ("stop", Self::Stop),
                ("loop", Self::Loop),
                ("exit", Self::Exit),
            ],
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Name machines refer to.
    pub name: String,
    pub source: SourceKind,
    /// Capture: the cpal device id (`alsa:hw:CARD=U192k,DEV=0`, as `sonitor devices` prints it), or `default`.
    #[serde(default)]
    pub device: Option<String>,
    /// Capture: channels to open (default: the device's default configuration).
    #[serde(default)]
    pub channels: Option<u16>,
    /// Capture: sample rate to ask for (default: the model's rate when supported, else the device default).
    #[serde(default)]
    pub sample_rate: Option<u32>,
    /// Capture: frames per callback (default: the device's choice).
    #[serde(default)]
    pub buffer_frames: Option<u32>,
    /// File: the WAV to replay.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// File: pace the replay in real time (default) or run as fast as the pipeline allows.
    #[serde(default = "yes")]
    pub realtime: bool,
    /// File: what to do at the end of the file.
    #[serde(default = "default_at_end")]
    pub at_end: AtEnd,
    /// Capture: declare the stream stalled (and reopen it) after this long without frames.
    #[serde(default = "default_stall", with = "humantime_serde")]
    pub stall_timeout: Duration,
    /// Capture: first wait before reopening a failed device; doubles up to `reopen_max`.
    #[serde(default = "default_reopen_min", with = "humantime_serde")]
    pub reopen_min: Duration,
    #[serde(default = "default_reopen_max", with = "humantime_serde")]
    pub reopen_max: Duration,
    /// Seconds of audio the capture ring buffer holds before samples are dropped (and counted).
    #[serde(default = "default_ring_seconds")]
    pub ring_seconds: f32,
}

fn yes() -> bool {
    true
}
fn default_at_end() -> AtEnd {
    AtEnd::Stop
}
fn default_stall() -> Duration {
    Duration::from_secs(5)
}
/// The longest wait allowed between two attempts to reopen a device or reach the broker.
pub const MAX_RETRY_WAIT: Duration = Duration::from_secs(3600);

fn default_reopen_min() -> Duration {
    Duration::from_millis(500)
}
fn default_reopen_max() -> Duration {
    Duration::from_secs(30)
}
fn default_ring_seconds() -> f32 {
    4.0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// Used in topics and metrics: letters, digits, `-` and `_`.
    pub name: String,
    /// Name of a `[[devices]]` entry.
    pub device: String,
    /// Channel of that device (0-based).
    #[serde(default)]
    pub channel: u16,
    /// Model bundle directory (made by `sonitor-train`).
    pub bundle: PathBuf,
    /// Section of the bundle, `"<type>/section_SS"` (e.g. `pump/section_00`).
    pub section: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(flatten)]
    pub detector: DetectorConfig,
}

/// Alarm logic of one machine; every value may be changed by SIGHUP without restarting audio.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorConfig {
    /// Score above which a window counts as anomalous (default: the bundle's calibrated threshold).
    #[serde(default)]
    pub threshold: Option<f64>,
    /// Score below which a window counts as normal again while the alarm is on (hysteresis; default: the
    /// threshold).
    #[serde(default)]
    pub threshold_off: Option<f64>,
    /// Raise when `raise_k` of the last `raise_n` windows are above the threshold.
    #[serde(default = "default_raise_k")]
    pub raise_k: usize,
    #[serde(default = "default_raise_n")]
    pub raise_n: usize,
    /// Clear when `clear_m` of the last `clear_n` windows are below `threshold_off`.
    #[serde(default = "default_clear_m")]
    pub clear_m: usize,
    #[serde(default = "default_clear_n")]
    pub clear_n: usize,
    /// An alarm stays on at least this long.
    #[serde(default, with = "humantime_serde")]
    pub min_duration: Duration,
    /// After an alarm clears, no new alarm for this long.
    #[serde(default, with = "humantime_serde")]
    pub cooldown: Duration,
    /// The machine counts as not running in a window whose level (RMS over the window, dBFS) is below this: such a
    /// window is not judged against the threshold, and an alarm that is on ends (reason `idle`). Unset: every
    /// window is judged. The levels of the machine running and standing are in `sonitor_window_level_dbfs`.
    #[serde(default)]
    pub idle_below_dbfs: Option<f32>,
    /// A machine that counts as not running counts as running again only from a window whose level is at least
    /// `idle_below_dbfs` + this many dB: a level that hovers at `idle_below_dbfs` would otherwise flip the machine
    /// between running and not running each window, and end and raise its alarm again and again.
    #[serde(default = "default_idle_hysteresis_db")]
    pub idle_hysteresis_db: f32,
}

/// How [`denied`] begins, which [`ConfigError::permission_denied`] looks for.
const DENIED: &str = "permission denied: this user (uid";

/// What to say of a configuration file `path` this user may not read: who is asking, and the two ways out.
fn denied(path: &Path, what: &str) -> String {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    let advice = sonitor_core::regular_file::readable_advice(path);
    if crate::journal::stderr_is_journal() {
        // The service's own start, its stderr the journal: no other user runs the service; the file must become
        // readable to this one (the journal said "run the command as a user that may (e.g. with sudo)").
        format!("{DENIED} {uid}, the service's user) {what}; {advice}")
    } else {
        format!("{DENIED} {uid}) {what}; run the command as a user that may (e.g. with sudo), or {advice}")
    }
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            threshold: None,
            threshold_off: None,
            raise_k: default_raise_k(),
            raise_n: default_raise_n(),
            clear_m: default_clear_m(),
            clear_n: default_clear_n(),
            min_duration: Duration::ZERO,
            cooldown: Duration::ZERO,
            idle_below_dbfs: None,
            idle_hysteresis_db: default_idle_hysteresis_db(),
        }
    }
}

fn default_idle_hysteresis_db() -> f32 {
    crate::detect::DEFAULT_IDLE_HYSTERESIS_DB
}

fn default_raise_k() -> usize {
    detect::DEFAULT_RAISE_K
}
fn default_raise_n() -> usize {
    detect::DEFAULT_RAISE_N
}
fn default_clear_m() -> usize {
    detect::DEFAULT_CLEAR_M
}
fn default_clear_n() -> usize {
    detect::DEFAULT_CLEAR_N
}

impl DetectorConfig {
    /// The detector's parameters, with the bundle's calibrated threshold where none is configured.
    pub fn params(&self, bundle_threshold: f64) -> DetectorParams {
        let on = self.threshold.unwrap_or(bundle_threshold);
        DetectorParams {
            threshold_on: on,
            threshold_off: self.threshold_off.unwrap_or(on).min(on),
            raise_k: self.raise_k.max(1),
            raise_n: self.raise_n.max(self.raise_k).max(1),
            clear_m: self.clear_m.max(1),
            clear_n: self.clear_n.max(self.clear_m).max(1),
            min_duration_ms: self.min_duration.as_millis() as u64,
            cooldown_ms: self.cooldown.as_millis() as u64,
        }
    }

    /// What sets the threshold in force over the bundle's, as a log names it (`threshold_override`: the threshold
    /// a `threshold/set` command left, which [`Self::params_with_override`] puts before the file's): "the
    /// threshold 0.07 of a threshold/set command"; `None` when the bundle's is in force.
    pub fn threshold_set(&self, threshold_override: Option<f64>) -> Option<String> {
        match (threshold_override, self.threshold) {
            (Some(t), _) => Some(format!("the threshold {t} of a threshold/set command")),
            (None, Some(t)) => Some(format!("the threshold {t} of the configuration file")),
            (None, None) => None,
        }
    }

    /// The detector's parameters with a threshold set by MQTT (`threshold/set`) in place of the file's (or the
    /// bundle's). The off-threshold keeps the ratio off/on in force without the override (0.06 / 0.03, then
    /// 0.02 → 0.01), so that it stays in (0, on] wherever the threshold moves: keeping the difference instead
    /// gave -0.01 there, below every score (cosine distances are >= 0), and the alarm could never clear.
    pub fn params_with_override(
        &self,
        bundle_threshold: f64,
        threshold_override: Option<f64>,
    ) -> DetectorParams {
        let mut p = self.params(bundle_threshold);
        if let Some(t) = threshold_override {
            let ratio = p.threshold_off / p.threshold_on;
            // Both are validated in (0, 2) with off <= on, so the ratio is in (0, 1]; anything else: none.
            let ratio = if ratio > 0.0 && ratio <= 1.0 {
                ratio
            } else {
                1.0
            };
            p.threshold_on = t;
            p.threshold_off = (t * ratio).min(t);
        }
        p
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_mqtt_host")]
    pub host: String,
    #[serde(default = "default_mqtt_port")]
    pub port: u16,
    /// Default: `sonitor-<node_id>`.
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// Read the password from this file (e.g. a systemd credential) instead of the config.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Topic prefix: topics are `<prefix>/<node_id>/…`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    #[serde(default = "default_keep_alive", with = "humantime_serde")]
    pub keep_alive: Duration,
    /// Minimum interval between two `…/score` telemetry messages of a machine (QoS 0).
    #[serde(default = "default_score_interval", with = "humantime_serde")]
    pub score_interval: Duration,
    #[serde(default = "default_reconnect_min", with = "humantime_serde")]
    pub reconnect_min: Duration,
    #[serde(default = "default_reconnect_max", with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// Most alarm messages the on-disk outbox keeps while the broker is unreachable; beyond it the oldest are
    /// dropped and counted (`sonitor_outbox_dropped_messages_total`).
    #[serde(default = "default_outbox_max")]
    pub outbox_max: usize,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub discovery: DiscoveryConfig,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            host: default_mqtt_host(),
            port: default_mqtt_port(),
            client_id: None,
            username: None,
            password: None,
            password_file: None,
            prefix: default_prefix(),
            keep_alive: default_keep_alive(),
            score_interval: default_score_interval(),
            reconnect_min: default_reconnect_min(),
            reconnect_max: default_reconnect_max(),
            outbox_max: default_outbox_max(),
            tls: TlsConfig::default(),
            discovery: DiscoveryConfig::default(),
        }
    }
}

fn default_mqtt_host() -> String {
    "127.0.0.1".into()
}
fn default_mqtt_port() -> u16 {
    1883
}
fn default_prefix() -> String {
    "sonitor".into()
}
fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}
fn default_score_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_reconnect_min() -> Duration {
    Duration::from_millis(500)
}
fn default_reconnect_max() -> Duration {
    Duration::from_secs(60)
}
fn default_outbox_max() -> usize {
    10_000
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    #[serde(default)]
    pub enabled: bool,
    /// PEM file with the CA certificate(s) that signed the broker's certificate (default: the system's roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key for mutual TLS.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "default_discovery_prefix")]
    pub prefix: String,
    /// How long Home Assistant's mute switch mutes a machine (its `mute/set` message): a maintenance visit, a
    /// shift. Other durations are a `mute/set` message away.
    #[serde(default = "default_discovery_mute", with = "humantime_serde")]
    pub mute: Duration,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            prefix: default_discovery_prefix(),
            mute: default_discovery_mute(),
        }
    }
}

fn default_discovery_mute() -> Duration {
    Duration::from_secs(3600)
}

fn default_discovery_prefix() -> String {
    "homeassistant".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Loopback address of the Prometheus text endpoint (`GET /metrics`).
    #[serde(default = "default_metrics_listen")]
    pub listen: String,
}

impl MetricsConfig {
    /// Where the metrics are served: `None` when they are off, or when `listen` is not an address:port (which
    /// `validate` names).
    pub fn addr(&self) -> Option<SocketAddr> {
        self.enabled.then(|| self.listen.parse().ok()).flatten()
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: default_metrics_listen(),
        }
    }
}

fn default_metrics_listen() -> String {
    "127.0.0.1:9464".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipsConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Default: `<state_dir>/clips`.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Seconds of audio kept before the onset window.
    #[serde(default = "default_pre")]
    pub pre_seconds: f32,
    /// Seconds of audio after the onset.
    #[serde(default = "default_post")]
    pub post_seconds: f32,
    /// Retention: at most this many clips, …
    #[serde(default = "default_max_count")]
    pub max_count: usize,
    /// … none older than this, …
    #[serde(default = "default_max_age", with = "humantime_serde")]
    pub max_age: Duration,
    /// … and at most this many bytes in all.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
}

impl Default for ClipsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: None,
            pre_seconds: default_pre(),
            post_seconds: default_post(),
            max_count: default_max_count(),
            max_age: default_max_age(),
            max_bytes: default_max_bytes(),
        }
    }
}

fn default_pre() -> f32 {
    5.0
}
fn default_post() -> f32 {
    5.0
}
fn default_max_count() -> usize {
    200
}
fn default_max_age() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}
fn default_max_bytes() -> u64 {
    500 * 1024 * 1024
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// A channel whose RMS stays below this level (dBFS) for `silence_after` is reported silent.
    #[serde(default = "default_silence_dbfs")]
    pub silence_dbfs: f32,
    #[serde(default = "default_silence_after", with = "humantime_serde")]
    pub silence_after: Duration,
    /// A second in which more than this fraction of samples is at full scale counts as clipping.
    #[serde(default = "default_clip_fraction")]
    pub clipping_fraction: f32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            silence_dbfs: default_silence_dbfs(),
            silence_after: default_silence_after(),
            clipping_fraction: default_clip_fraction(),
        }
    }
}

fn default_silence_dbfs() -> f32 {
    -70.0
}
fn default_silence_after() -> Duration {
    Duration::from_secs(30)
}
fn default_clip_fraction() -> f32 {
    0.01
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Windows waiting for features / inference beyond one per machine (a hop brings one window of each machine
    /// at once); beyond it windows are dropped, counted and logged.
    #[serde(default = "default_queue")]
    pub queue: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            queue: default_queue(),
        }
    }
}

fn default_queue() -> usize {
    8
}

/// A configuration that could not be read at all (syntax, types, unknown keys, durations).
#[derive(Debug, thiserror::Error)]
#[error("{path}: {}", reasons.join("; "))]
pub struct ConfigError {
    pub path: PathBuf,
    /// One or more (every bad duration is named at once).
    pub reasons: Vec<String>,
}

impl ConfigError {
    /// Whether the file was refused because this user may not read it ([`denied`]).
    pub fn permission_denied(&self) -> bool {
        self.reasons.iter().any(|r| r.starts_with(DENIED))
    }

    /// One line per reason, each with the file's path (`sonitor validate` lists them).
    pub fn problems(&self) -> Vec<String> {
        self.reasons
            .iter()
            .map(|r| format!("{}: {r}", self.path.display()))
            .collect()
    }
}

/// What a setting must be, for the settings whose bad values the typed read would refuse without their key or
/// without saying what to write.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Duration,
    /// A score, with an example.
    Score(&'static str),
    /// A whole number of windows, with an example.
    Windows(&'static str),
    /// A level in dBFS, with an example.
    Dbfs(&'static str),
    /// A difference of levels in dB, with an example.
    Db(&'static str),
}

/// Every such setting, by its path in the file; `[]` stands for each entry of an array of tables. Durations
/// because the typed read does not say what a duration looks like; the detector's numbers because they are
/// flattened into each machine, and the typed read names only `machines[N]` for them.
const CHECKED_KEYS: &[(&str, Expect)] = &[
    ("devices[].stall_timeout", Expect::Duration),
    ("devices[].reopen_min", Expect::Duration),
    ("devices[].reopen_max", Expect::Duration),
    ("machines[].min_duration", Expect::Duration),
    ("machines[].cooldown", Expect::Duration),
    ("machines[].threshold", Expect::Score("0.42")),
    ("machines[].threshold_off", Expect::Score("0.38")),
    ("machines[].raise_k", Expect::Windows("3")),
    ("machines[].raise_n", Expect::Windows("5")),
    ("machines[].clear_m", Expect::Windows("3")),
    ("machines[].clear_n", Expect::Windows("5")),
    ("machines[].idle_below_dbfs", Expect::Dbfs("-50")),
    ("machines[].idle_hysteresis_db", Expect::Db("3")),
    ("mqtt.keep_alive", Expect::Duration),
    ("mqtt.discovery.mute", Expect::Duration),
    ("mqtt.score_interval", Expect::Duration),
    ("mqtt.reconnect_min", Expect::Duration),
    ("mqtt.reconnect_max", Expect::Duration),
    ("clips.max_age", Expect::Duration),
    ("health.silence_after", Expect::Duration),
];

/// What a valid duration looks like, for the message that refuses one.
const DURATION_HELP: &str =
    "write a number and a unit in quotes, e.g. \"500ms\", \"30s\", \"5m\", \"2h\" or \"1h 30m\"";

impl Expect {
    /// Why `value` is not what the setting must be, and what to write instead; `None` when it is. As strict as
    /// the typed read: through the flattening a number in quotes or a fraction of a window count is refused too.
    fn refuse(self, value: &serde_json::Value) -> Option<(String, String)> {
        let want = match self {
            Expect::Duration => {
                let why = match value {
                    serde_json::Value::String(s) => match humantime::parse_duration(s) {
                        Ok(_) => return None,
                        Err(e) => format!("is not a duration ({e})"),
                    },
                    _ => "is not a duration (a duration is text, in quotes)".to_string(),
                };
                return Some((why, DURATION_HELP.to_string()));
            }
            // A JSON null is TOML's nan or inf, which the typed read takes (and `static_problems` refuses).
            Expect::Score(_) | Expect::Dbfs(_) | Expect::Db(_) if value.is_null() => return None,
            Expect::Score(_) | Expect::Dbfs(_) | Expect::Db(_)
                if serde_json::from_value::<f64>(value.clone()).is_ok() =>
            {
                return None
            }
            Expect::Windows(_) if serde_json::from_value::<usize>(value.clone()).is_ok() => {
                return None
            }
            Expect::Score(e) => format!("a score, e.g. {e}"),
            Expect::Windows(e) => format!("a whole number of windows, e.g. {e}"),
            Expect::Dbfs(e) => format!("a level in dBFS, e.g. {e}"),
            Expect::Db(e) => format!("a number of dB, e.g. {e}"),
        };
        let quoted = if value.is_string() {
            " (without quotes)"
        } else {
            ""
        };
        Some(("is not valid".to_string(), format!("write {want}{quoted}")))
    }
}

/// Every setting of [`CHECKED_KEYS`] in `tree` (the file with the environment applied) that is not what it must
/// be, each named by its key path (`machines[1].min_duration`, with the machine's name), its value and what to
/// write instead. `from_env` maps a key path to the environment variable that set it.
fn value_problems(tree: &serde_json::Value, from_env: &BTreeMap<String, String>) -> Vec<String> {
    let mut p = Vec::new();
    let mut check = |at: String, key: &str, value: &serde_json::Value, expect: Expect| {
        if let Some((why, help)) = expect.refuse(value) {
            let var = set_by(from_env, key).unwrap_or_default();
            p.push(format!("{at}{key} = {value} {why}{var}: {help}"));
        }
    };
    for &(key, expect) in CHECKED_KEYS {
        match key.split_once("[].") {
            Some((array, field)) => {
                let Some(entries) = tree.get(array).and_then(|a| a.as_array()) else {
                    continue;
                };
                for (i, entry) in entries.iter().enumerate() {
                    let Some(value) = entry.get(field) else {
                        continue;
                    };
                    let at = entry_label(array, entry).unwrap_or_default();
                    check(at, &format!("{array}[{i}].{field}"), value, expect);
                }
            }
            None => {
                let value = key.split('.').try_fold(tree, |node, part| node.get(part));
                if let Some(value) = value {
                    check(String::new(), key, value, expect);
                }
            }
        }
    }
    p
}

/// `[machines]` written for `[[machines]]`, or `[[mqtt]]` for `[mqtt]`: one bracket pair too few or too many,
/// which the typed read called "invalid type: map, expected a sequence for key `machines`" (and "expected a
/// boolean for key `mqtt[0]`").
fn table_shape_problems(tree: &serde_json::Value) -> Vec<String> {
    let mut p = Vec::new();
    for array in ["devices", "machines"] {
        if tree.get(array).is_some_and(|v| v.is_object()) {
            p.push(format!(
                "[{array}] is one table, and {array} are a list: write [[{array}]] (two brackets) above each one"
            ));
        }
    }
    for table in ENV_SECTIONS {
        if tree.get(*table).is_some_and(|v| v.is_array()) {
            p.push(format!(
                "[[{table}]] makes a list, and there is one {table} section: write [{table}] (one bracket)"
            ));
        }
    }
    p
}

/// The keys every `[[machines]]` entry must have (those of [`MachineConfig`] without a default).
const MACHINE_REQUIRED: &[&str] = &["name", "device", "bundle", "section"];

/// The keys a `[[machines]]` entry may have: its own and its detector's (flattened into it), read from the structs.
fn machine_keys() -> Vec<String> {
    let m = MachineConfig {
        name: String::new(),
        device: String::new(),
        channel: 0,
        bundle: PathBuf::new(),
        section: String::new(),
        enabled: true,
        detector: DetectorConfig::default(),
    };
    match serde_json::to_value(m) {
        Ok(serde_json::Value::Object(o)) => o.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

/// The key of `known` that `key` most likely misspells: the same but for case, or at most two letters added,
/// removed, changed or swapped (one for keys of four letters or fewer).
fn likely_meant<'a>(key: &str, known: &'a [String]) -> Option<&'a str> {
    let key = key.to_ascii_lowercase();
    let allowed = if key.len() <= 4 { 1 } else { 2 };
    known
        .iter()
        .map(|k| (edit_distance(&key, k), k))
        .filter(|(d, _)| *d <= allowed)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.as_str())
}

/// Letters added, removed or changed, and neighbours swapped, to make `b` of `a` (optimal string alignment).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// Every `[[machines]]` entry's unknown keys, each with the key it likely misspells and the keys a machine has,
/// and its missing required keys. The typed read named neither well: a machine's detector settings are flattened
/// into it, so an unknown key came without the list of known ones, and a misspelt required key came out as
/// `missing configuration field "machines[0]section"`.
fn machine_key_problems(tree: &serde_json::Value) -> Vec<String> {
    let mut p = Vec::new();
    let Some(machines) = tree.get("machines").and_then(|m| m.as_array()) else {
        return p;
    };
    let known = machine_keys();
    for (i, entry) in machines.iter().enumerate() {
        let Some(keys) = entry.as_object() else {
            continue;
        };
        let at = entry_label("machines", entry).unwrap_or_default();
        let mut explained = Vec::new();
        for key in keys.keys().filter(|k| !known.contains(k)) {
            let meant = likely_meant(key, &known);
            let hint = match meant {
                Some(m) if !keys.contains_key(m) => format!("did you mean `{m}`? "),
                _ => String::new(),
            };
            explained.extend(meant.filter(|m| !keys.contains_key(*m)));
            p.push(format!(
                "{at}machines[{i}] has an unknown key `{key}`: {hint}(a machine's keys: {})",
                known.join(", ")
            ));
        }
        for key in MACHINE_REQUIRED
            .iter()
            .filter(|k| !keys.contains_key(**k) && !explained.contains(k))
        {
            p.push(format!(
                "{at}machines[{i}] has no `{key}`, which every machine needs ({})",
                MACHINE_REQUIRED.join(", ")
            ));
        }
    }
    p
}

/// `machine 'pump-3': ` for an entry of the array of tables `array` (`machines`) that has a name: the prefix the other
/// problems of an entry are named with.
fn entry_label(array: &str, entry: &serde_json::Value) -> Option<String> {
    let name = entry.get("name")?.as_str()?;
    Some(format!("{} '{name}': ", array.trim_end_matches('s')))
}

/// Every value of `raw` (the file with the environment applied, each value of the type it was written with) whose
/// type is not the one its setting has in `typed` (the configuration the typed read made of it, serialised
/// back), by its key path, its value and what to write instead. A whole number where a number is wanted is
/// fine; a fraction where a whole number is wanted, text where a number or true/false is wanted, and a number
/// or true/false where text is wanted are not. Values set by the environment (text by nature, `from_env`) are
/// left to the typed read; a password is not repeated in the message.
fn type_problems(
    raw: &serde_json::Value,
    typed: &serde_json::Value,
    from_env: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut p = Vec::new();
    type_walk(raw, typed, "", "", from_env, &mut p);
    p
}

/// [`type_problems`] below `key` (its path so far); `at` names the device or machine an entry belongs to.
fn type_walk(
    raw: &serde_json::Value,
    typed: &serde_json::Value,
    key: &str,
    at: &str,
    from_env: &BTreeMap<String, String>,
    p: &mut Vec<String>,
) {
    use serde_json::Value;
    match (raw, typed) {
        (Value::Object(r), Value::Object(t)) => {
            for (k, rv) in r {
                let Some(tv) = t.get(k) else { continue };
                let path = if key.is_empty() {
                    k.clone()
                } else {
                    format!("{key}.{k}")
                };
                type_walk(rv, tv, &path, at, from_env, p);
            }
        }
        (Value::Array(r), Value::Array(t)) => {
            for (i, (rv, tv)) in r.iter().zip(t).enumerate() {
                let at = entry_label(key, rv).unwrap_or_else(|| at.to_string());
                type_walk(rv, tv, &format!("{key}[{i}]"), &at, from_env, p);
            }
        }
        _ => {
            if from_env.contains_key(key) {
                return;
            }
            let whole = |v: &Value| v.is_i64() || v.is_u64();
            let written = match raw {
                Value::Null => "(nan or inf)".to_string(),
                _ if key.ends_with("password") => "…".to_string(),
                _ => raw.to_string(),
            };
            let (why, help) = match typed {
                Value::Bool(_) if !raw.is_boolean() => {
                    ("is not true or false", "write true or false".to_string())
                }
                Value::Number(_) if whole(typed) && !whole(raw) => {
                    ("is not a whole number", "write a whole number".to_string())
                }
                // A fraction, or TOML's nan or inf (null here), where a fraction may be.
                Value::Number(_) if !(raw.is_number() || raw.is_null()) => {
                    ("is not a number", "write a number".to_string())
                }
                Value::String(_) if !raw.is_string() => (
                    "is not text",
                    format!("write it in quotes, e.g. \"{written}\""),
                ),
                _ => return,
            };
            let (why, help) = if raw.is_string() {
                ("is text", format!("{help} (without quotes)"))
            } else {
                (why, help)
            };
            p.push(format!("{at}{key} = {written} {why}: {help}"));
        }
    }
}

/// Environment variables that override the file: `SONITOR_<SECTION>__<KEY>` for known sections.
fn env_overrides<I: IntoIterator<Item = (String, String)>>(vars: I) -> BTreeMap<String, String> {
    vars.into_iter()
        .filter(|(k, _)| {
            k.strip_prefix("SONITOR_").is_some_and(|rest| {
                let first = rest.split("__").next().unwrap_or("").to_ascii_lowercase();
                ENV_VALUES.contains(&first.as_str()) || ENV_SECTIONS.contains(&first.as_str())
            })
        })
        .collect()
}

/// Every setting's key path (`mqtt.tls.ca_file`) that an environment variable may set: the top-level values and
/// the values of the known sections, nested tables included.
fn env_settable_keys() -> Vec<String> {
    fn walk(v: &serde_json::Value, path: String, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    walk(v, format!("{path}.{k}"), out);
                }
            }
            _ => out.push(path),
        }
    }
    let mut out: Vec<String> = ENV_VALUES.iter().map(|v| v.to_string()).collect();
    for &name in ENV_SECTIONS {
        let defaults = match name {
            "mqtt" => serde_json::to_value(MqttConfig::default()),
            "metrics" => serde_json::to_value(MetricsConfig::default()),
            "clips" => serde_json::to_value(ClipsConfig::default()),
            "health" => serde_json::to_value(HealthConfig::default()),
            "pipeline" => serde_json::to_value(PipelineConfig::default()),
            _ => continue,
        };
        if let Ok(v) = defaults {
            walk(&v, name.to_string(), &mut out);
        }
    }
    out
}

/// `SONITOR_…` variables that are meant for a setting but would not be read, each named with the spelling that
/// is: a single `_` between levels (`SONITOR_MQTT_ENABLED` for `SONITOR_MQTT__ENABLED`), or a known section with
/// a key it does not have. Others (`SONITOR_PYTHON`) are not the daemon's and are left alone.
fn env_misspellings(vars: &[(String, String)]) -> Vec<String> {
    let read = env_overrides(vars.iter().cloned());
    let keys = env_settable_keys();
    let var_of = |key: &str| format!("SONITOR_{}", key.to_ascii_uppercase().replace('.', "__"));
    let mut p = Vec::new();
    for (var, _) in vars {
        let Some(rest) = var.strip_prefix("SONITOR_") else {
            continue;
        };
        if read.contains_key(var) {
            // Read, but for a key its section lacks: named here, with the variable, or the typed read would blame
            // the file for an "unknown field".
            let key = rest.to_ascii_lowercase().replace("__", ".");
            let known = keys.iter().any(|k| {
                *k == key || k.starts_with(&format!("{key}.")) || key.starts_with(&format!("{k}."))
            });
            if let Some((section, field)) = key.split_once('.').filter(|_| !known) {
                if ENV_SECTIONS.contains(&section) {
                    p.push(format!(
                        "the environment variable {var} sets {key}, and [{section}] has no key `{field}` (its \
                         keys: {}): correct or unset the variable",
                        keys.iter()
                            .filter_map(|k| k.strip_prefix(&format!("{section}.")))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
            }
            continue;
        }
        let rest = rest.to_ascii_lowercase();
        let flat = rest.replace("__", "_");
        if let Some(key) = keys.iter().find(|k| k.replace('.', "_") == flat) {
            p.push(format!(
                "the environment variable {var} is not read: write {} to set {key} (`__` between levels)",
                var_of(key)
            ));
        } else if let Some(section) = ENV_SECTIONS
            .iter()
            .copied()
            .find(|s| rest.starts_with(&format!("{s}_")))
        {
            p.push(format!(
                "the environment variable {var} is not read: a setting of [{section}] is set by \
                 SONITOR_{}__<KEY>, and [{section}] has no key it could mean (its keys: {})",
                section.to_ascii_uppercase(),
                keys.iter()
                    .filter_map(|k| k.strip_prefix(&format!("{section}.")))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        } else if let Some((first, _)) = rest.split_once("__") {
            // `__` is the override's own syntax, so the variable was meant for a setting: a section that has no
            // environment override (`[[machines]]`, `[[devices]]`) or a misspelled one.
            let sections = ENV_SECTIONS.join(", ");
            let values = ENV_VALUES.join(", ");
            let why = if matches!(first, "machines" | "machine" | "devices" | "device") {
                "machines and devices are set in the configuration file only".to_string()
            } else {
                format!("there is no section [{first}]")
            };
            p.push(format!(
                "the environment variable {var} is not read: {why}; the environment sets the sections \
                 {sections} (SONITOR_<SECTION>__<KEY>) and the values {values} (SONITOR_<NAME>)"
            ));
        }
    }
    p
}

/// Keys of the `[[devices]]` entries in `tree` (the file as written) that their `source` never reads: the
/// capture keys on a file source, the file keys on a capture source. Each is named with its device and source
/// rather than ignored, so that a setting meant to matter (a sample rate, a stall timeout) is not silently dropped.
fn source_key_problems(tree: &serde_json::Value) -> Vec<String> {
    const CAPTURE_ONLY: &[&str] = &[
        "device",
        "channels",
        "sample_rate",
        "buffer_frames",
        "stall_timeout",
    ];
    const FILE_ONLY: &[&str] = &["path", "realtime", "at_end"];
    let mut p = Vec::new();
    let Some(devices) = tree.get("devices").and_then(|d| d.as_array()) else {
        return p;
    };
    for (i, entry) in devices.iter().enumerate() {
        let (unread, this, other, why) = match entry.get("source").and_then(|s| s.as_str()) {
            Some("file") => (
                CAPTURE_ONLY,
                "file",
                "capture",
                "a file is played with its own channels and sample rate",
            ),
            Some("capture") => (
                FILE_ONLY,
                "capture",
                "file",
                "a capture device is opened by `device`",
            ),
            _ => continue,
        };
        let at = entry_label("devices", entry).unwrap_or_default();
        for key in unread.iter().filter(|k| entry.get(**k).is_some()) {
            p.push(format!(
                "{at}devices[{i}].{key} is only read when `source = \"{other}\"`; this device has `source = \
                 \"{this}\"` ({why}): remove it"
            ));
        }
    }
    p
}

/// ` (set by the environment variable SONITOR_…)` when `from_env` (key path → variable) says a variable set `key`.
fn set_by(from_env: &BTreeMap<String, String>, key: &str) -> Option<String> {
    from_env
        .get(key)
        .map(|v| format!(" (set by the environment variable {v})"))
}

/// The config crate's message, with the key path written as the file's readers write it: the crate drops the dot
/// after an array index (`devices[0]ring_seconds`), which reads as a typo for a key that does not exist. The
/// crate then names where the value came from: the file again, by a path relative to the working directory
/// (dropped: the error leads with the path as given), or "the environment" (kept, with the variable's name from
/// `from_env`, which maps a key path to the variable that set it).
fn config_crate_message(e: &config::ConfigError, from_env: &BTreeMap<String, String>) -> String {
    let msg = e.to_string();
    if let Some(key) = msg
        .strip_prefix("missing configuration field \"")
        .and_then(|k| k.strip_suffix('"'))
    {
        return format!("`{}` is missing and has no default: set it", key_path(key));
    }
    let marker = "for key `";
    let Some(start) = msg.find(marker).map(|i| i + marker.len()) else {
        return msg;
    };
    let Some(len) = msg[start..].find('`') else {
        return msg;
    };
    let fixed = key_path(&msg[start..start + len]);
    if let Some((value, help)) = out_of_range(&msg[..start]) {
        let help = range_of(&fixed).unwrap_or(help);
        let var = set_by(from_env, &fixed.to_ascii_lowercase()).unwrap_or_default();
        return format!("{fixed} = {value} {help}{var}");
    }
    let rest = &msg[start + len..];
    let origin = match rest.find(" in ") {
        Some(i) if rest[i..].starts_with(" in the environment") => {
            match set_by(from_env, &fixed.to_ascii_lowercase()) {
                Some(var) => format!("{}{var}", &rest[..i]),
                None => rest.to_string(),
            }
        }
        Some(i) => rest[..i].to_string(),
        None => rest.to_string(),
    };
    format!("{}{fixed}{origin}", &msg[..start])
}

/// A key path as the config crate writes it in its messages (`devices[0]name`), with the dot it leaves out after
/// an index (`devices[0].name`).
fn key_path(key: &str) -> String {
    let mut fixed = String::with_capacity(key.len() + 4);
    let mut chars = key.chars().peekable();
    while let Some(c) = chars.next() {
        fixed.push(c);
        if c == ']'
            && chars
                .peek()
                .is_some_and(|n| n.is_alphanumeric() || *n == '_')
        {
            fixed.push('.');
        }
    }
    fixed
}

/// What to write for a device setting whose value does not fit its type, in the limits the checks after the read
/// apply (review33: `channels = 100000` was told "from 0 to 65535", and 0 is refused; `sample_rate = -16000` "0 or
/// more"), or `None` for the type's own limits.
fn range_of(key: &str) -> Option<String> {
    let (_, name) = key.rsplit_once('.')?;
    key.starts_with("devices[").then_some(())?;
    use sonitor_core::audio::wav::{MAX_SAMPLE_RATE as max, MIN_SAMPLE_RATE as min};
    Some(match name {
        "channels" => "is out of range: write a whole number of channels from 1 to 65535 (leave it out for \
                       the device's default)"
            .to_string(),
        "sample_rate" => format!(
            "is out of range: write a rate from {min} to {max} Hz (leave it out for the model's rate, or the \
             device's default)"
        ),
        "buffer_frames" => "is out of range: write a whole number of frames from 1 to 4294967295 (leave it out \
                            for the device's choice)"
            .to_string(),
        _ => return None,
    })
}

/// The value and what to write instead, from the config crate's message for a whole number beyond its setting's
/// range (`port = 99999`: "invalid type: 64-bit unsigned integer `99999`, expected an unsigned 16 bit integer"),
/// which reads as if the type were wrong.
fn out_of_range(msg: &str) -> Option<(String, String)> {
    let rest = msg.strip_prefix("invalid type: ")?;
    let (_, rest) = rest.split_once("integer `")?;
    let (value, rest) = rest.split_once("`, expected ")?;
    let (signed, rest) = match rest.strip_prefix("an unsigned ") {
        Some(r) => (false, r),
        None => (true, rest.strip_prefix("a signed ")?),
    };
    let bits: u32 = rest.split(' ').next()?.parse().ok()?;
    if !(8..=64).contains(&bits) {
        return None;
    }
    let (min, max) = if signed {
        (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1)
    } else {
        (0, (1i128 << bits) - 1)
    };
    // A 64-bit setting's limit (18446744073709551615) is no number anyone means to write: what is wrong is a sign.
    let help = if bits == 64 && !signed {
        "is out of range: write a whole number, 0 or more".to_string()
    } else {
        format!("is out of range: write a whole number from {min} to {max}")
    };
    Some((value.to_string(), help))
}

impl Config {
    /// Reads the file and the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// Reads the file and the given environment (tests pass their own).
    pub fn load_with_env<I: IntoIterator<Item = (String, String)>>(
        path: &Path,
        env: I,
    ) -> Result<Config, ConfigError> {
        let err = |reason: String| ConfigError {
            path: path.to_path_buf(),
            reasons: vec![reason],
        };
        // One look at what is there: a directory, a FIFO or a device (the config crate would call the last two
        // "not found", and an open would wait for a writer), or nothing.
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => {
                return Err(err("is a directory, not a configuration file".into()))
            }
            Ok(m) if !m.is_file() => {
                return Err(err(format!(
                    "{}, not a configuration file",
                    sonitor_core::regular_file::NOT_A_FILE
                )))
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(err(denied(path, "may not look into a folder above it")))
            }
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(err(format!("cannot look it up: {e}")))
            }
            Err(_) => {
                return Err(err(
                    "no such file (another configuration: --config FILE; a first one: start from \
                     configs/sonitor.toml, /usr/share/doc/sonitor/examples/ in the package)"
                        .into(),
                ))
            }
        }
        // The config crate says only "Permission denied (os error 13)" of a file this user may not read.
        if let Err(e) = std::fs::File::open(path) {
            return Err(err(if e.kind() == std::io::ErrorKind::PermissionDenied {
                denied(path, "may not read it")
            } else {
                format!("cannot read: {e}")
            }));
        }
        let env: Vec<(String, String)> = env.into_iter().collect();
        let misspelled = env_misspellings(&env);
        let overrides = env_overrides(env);
        // Which setting each variable sets (`SONITOR_MQTT__RECONNECT_MAX` → `mqtt.reconnect_max`), to name the
        // variable when its value is refused.
        let from_env: BTreeMap<String, String> = overrides
            .keys()
            .map(|k| {
                (
                    k["SONITOR_".len()..]
                        .to_ascii_lowercase()
                        .replace("__", "."),
                    k.clone(),
                )
            })
            .collect();
        let env = config::Environment::with_prefix("SONITOR")
            .prefix_separator("_")
            .separator("__")
            // Values stay strings until the typed struct asks for a number or a boolean, so a password or a
            // node id of digits ("0123456", "007") arrives as written instead of re-parsed into 123456 or 7.
            .try_parsing(false)
            .source(Some(overrides.into_iter().collect()));
        let built = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .add_source(env)
            .build()
            .map_err(|e| ConfigError {
                path: path.to_path_buf(),
                reasons: [
                    misspelled.clone(),
                    vec![config_crate_message(&e, &from_env)],
                ]
                .concat(),
            })?;
        // Durations and the detector's numbers are checked before the typed read, which names neither the key of
        // a machine's detector setting (they are flattened into the machine) nor what a duration looks like.
        // Refuses the file when a check found problems.
        let refused = |reasons: Vec<String>| {
            if reasons.is_empty() {
                return Ok(());
            }
            Err(ConfigError {
                path: path.to_path_buf(),
                reasons,
            })
        };
        let tree = built.clone().try_deserialize::<serde_json::Value>().ok();
        let mut early = misspelled;
        if let Some(tree) = &tree {
            early.extend(table_shape_problems(tree));
            early.extend(machine_key_problems(tree));
            early.extend(value_problems(tree, &from_env));
        }
        refused(early)?;
        let config = built
            .try_deserialize::<Config>()
            .map_err(|e| err(config_crate_message(&e, &from_env)))?;
        // The typed read converts where the file's type is not the setting's: `channel = 1.5` would become
        // channel 2, `port = 1883.7` port 1884, `enabled = "yes"` true. Each such value is refused instead.
        if let (Some(tree), Ok(typed)) = (&tree, serde_json::to_value(&config)) {
            let mut p = type_problems(tree, &typed, &from_env);
            p.extend(source_key_problems(tree));
            refused(p)?;
        }
        Ok(config)
    }

    /// Where the file puts the state directory, read as loosely as it can be: for `sonitor status`, which looks
    /// for the running daemon (its lock file is there) even when the file as it is now would be refused, a typo
    /// made since the daemon started. `SONITOR_STATE_DIR`, else the file's top-level `state_dir` (when the TOML
    /// does not parse, its line before the first table, a plain quoted string); `None` when none of them says.
    pub fn state_dir_of(path: &Path) -> Option<PathBuf> {
        if let Some(v) = std::env::var_os("SONITOR_STATE_DIR").filter(|v| !v.is_empty()) {
            return Some(v.into());
        }
        // A regular file only: a FIFO held `sonitor status` for ever, /dev/zero grew it past 5 GB.
        let bytes = sonitor_core::regular_file::read(path).ok()?;
        state_dir_in(&String::from_utf8(bytes).ok()?)
    }

    pub fn device(&self, name: &str) -> Option<&DeviceConfig> {
        self.devices.iter().find(|d| d.name == name)
    }

    /// `<prefix>/<node_id>`.
    pub fn topic_base(&self) -> String {
        format!(
            "{}/{}",
            self.mqtt.prefix.trim_end_matches('/'),
            self.node_id
        )
    }

    /// The saved alarm states of every machine.
    pub fn saved_path(&self) -> PathBuf {
        self.state_dir.join("alarms.json")
    }

    /// The alarm messages waiting for the broker.
    pub fn outbox_dir(&self) -> PathBuf {
        self.state_dir.join("outbox")
    }

    pub fn clips_dir(&self) -> PathBuf {
        self.clips
            .dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("clips"))
    }

    /// The paths of the file besides `state_dir` (which [`Config::disk_check`] warns about) that are relative: each
    /// is taken from the directory sonitor starts in (/ under systemd), not from the file's, so a configuration
    /// that works from a shell may find nothing once installed. One warning naming them all, or none.
    pub fn relative_paths_warning(&self) -> Option<String> {
        let mut relative = Vec::new();
        let mut add = |key: String, p: Option<&Path>| {
            if let Some(p) = p.filter(|p| is_relative(p)) {
                relative.push(format!("{key} = {}", p.display()));
            }
        };
        for (i, d) in self.devices.iter().enumerate() {
            add(format!("devices[{i}].path"), d.path.as_deref());
        }
        for (i, m) in self.machines.iter().enumerate() {
            add(format!("machines[{i}].bundle"), Some(&m.bundle));
        }
        add(
            "mqtt.password_file".into(),
            self.mqtt.password_file.as_deref(),
        );
        let tls = &self.mqtt.tls;
        add("mqtt.tls.ca_file".into(), tls.ca_file.as_deref());
        add("mqtt.tls.client_cert".into(), tls.client_cert.as_deref());
        add("mqtt.tls.client_key".into(), tls.client_key.as_deref());
        add("clips.dir".into(), self.clips.dir.as_deref());
        (!relative.is_empty()).then(|| {
            format!(
                "relative paths, {RELATIVE_TO}: {}; give absolute paths",
                relative.join(", ")
            )
        })
    }

    /// Every problem of the configuration that can be found without opening devices or bundles.
    pub fn static_problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !valid_name(&self.node_id) {
            p.push(format!(
                "node_id '{}' must be 1 to {NAME_MAX} ASCII letters, digits, '-' or '_' (it is part of MQTT topics)",
                self.node_id
            ));
        }
        if !["error", "warn", "info", "debug", "trace"].contains(&self.log_level.as_str()) {
            p.push(format!(
                "log_level '{}' must be one of error, warn, info, debug, trace",
                self.log_level
            ));
        }
        if self.state_dir.as_os_str().is_empty() {
            // Not the working directory (`/` under systemd): the alarm states and the outbox need their own.
            p.push(
                "state_dir is empty: set it to a directory of its own (systemd: /var/lib/sonitor)"
                    .into(),
            );
        }
        if self
            .clips
            .dir
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            // Not the working directory either: clips, and their retention's deletions, would land there.
            p.push(
                "clips.dir is empty: leave it out for <state_dir>/clips, or set it to a directory of its own"
                    .into(),
            );
        }
        if self.machines.is_empty() {
            p.push("no [[machines]]: nothing to monitor".into());
        }
        let mut names = BTreeSet::new();
        for (i, d) in self.devices.iter().enumerate() {
            if d.name.trim().is_empty() {
                p.push(format!(
                    "devices[{i}].name is empty: each device needs a name for its machines' `device`"
                ));
            }
            if !names.insert(d.name.clone()) {
                p.push(format!("device '{}' is defined twice", d.name));
            }
            let at = format!("device '{}'", d.name);
            match d.source {
                SourceKind::File => match &d.path {
                    None => p.push(format!("{at}: a file source needs `path`")),
                    Some(path) if path.as_os_str().is_empty() => {
                        p.push(format!("{at}: `path` is empty"))
                    }
                    // A looped file not there yet is waited for, as a capture device away at the start is
                    // (`check` warns): one missing recording kept a whole node from starting, and systemd does not
                    // restart after exit 78, nor could a reload change anything else (review35).
                    Some(path) if d.at_end == AtEnd::Loop && file_absent(path) => {}
                    Some(path) if !path.is_file() => p.push(format!(
                        "{at}: file {} {}",
                        path.display(),
                        not_a_file(path)
                    )),
                    Some(_) => {}
                },
                SourceKind::Capture => {
                    // No device id has them: "does not exist" said nothing of the space (review33).
                    if let Some(id) = d.device.as_deref().filter(|id| id.trim() != *id) {
                        p.push(format!(
                            "{at}: device {id:?} has spaces around it, which no device id has: write {:?}",
                            id.trim()
                        ));
                    }
                    if d.channels == Some(0) {
                        p.push(format!("{at}: channels must be at least 1"));
                    }
                    if let Some(rate) = d.sample_rate {
                        use sonitor_core::audio::wav::{
                            MAX_SAMPLE_RATE as max, MIN_SAMPLE_RATE as min,
                        };
                        if !(min..=max).contains(&rate) {
                            p.push(format!(
                                "{at}: sample_rate {rate} Hz must be between {min} and {max} Hz (leave it out for \
                                 the model's rate, or the device's default)"
                            ));
                        }
                    }
                    if d.buffer_frames == Some(0) {
                        p.push(format!(
                            "{at}: buffer_frames must be at least 1 (leave it out for the device's choice)"
                        ));
                    }
                    if d.stall_timeout < Duration::from_millis(500) {
                        p.push(format!(
                            "{at}: stall_timeout ({}) must be at least 500ms: shorter, a healthy stream between \
                             two callbacks looks stalled and is reopened again and again",
                            humantime::format_duration(d.stall_timeout)
                        ));
                    }
                }
            }
            if d.reopen_min.is_zero() || d.reopen_min > d.reopen_max {
                p.push(format!(
                    "{at}: need 0 < reopen_min ({:?}) <= reopen_max ({:?})",
                    d.reopen_min, d.reopen_max
                ));
            }
            if d.reopen_max > MAX_RETRY_WAIT {
                p.push(format!(
                    "{at}: reopen_max ({:?}) must be at most {MAX_RETRY_WAIT:?}: a device that comes back would stay \
                     unheard that long",
                    d.reopen_max
                ));
            }
            if !(d.ring_seconds >= 0.1 && d.ring_seconds <= 120.0) {
                p.push(format!(
                    "{at}: ring_seconds = {} must be between 0.1 and 120",
                    d.ring_seconds
                ));
            }
        }
        let mut mnames = BTreeSet::new();
        for m in &self.machines {
            let at = format!("machine '{}'", m.name);
            if !valid_name(&m.name) {
                p.push(format!(
                    "{at}: the name must be 1 to {NAME_MAX} ASCII letters, digits, '-' or '_' (it is part of MQTT topics)"
                ));
            }
            if !mnames.insert(m.name.clone()) {
                p.push(format!("{at} is defined twice"));
            }
            if self.device(&m.device).is_none() {
                p.push(format!(
                    "{at}: device '{}' is not defined (defined: {})",
                    m.device,
                    list(self.devices.iter().map(|d| d.name.as_str()))
                ));
            }
            let manifest = m.bundle.join(sonitor_core::bundle::MANIFEST_FILE);
            if manifest.exists() && !manifest.is_file() {
                p.push(format!(
                    "{at}: bundle {}: its {} is not a regular file (a FIFO, a device or a directory)",
                    m.bundle.display(),
                    sonitor_core::bundle::MANIFEST_FILE
                ));
            } else if !manifest.is_file() {
                let why = sonitor_core::bundle::not_a_bundle(&m.bundle).unwrap_or_else(|| {
                    format!(
                        "bundle {} has no {}",
                        m.bundle.display(),
                        sonitor_core::bundle::MANIFEST_FILE
                    )
                });
                let relative = if is_relative(&m.bundle) {
                    format!(" (a relative path, {RELATIVE_TO})")
                } else {
                    String::new()
                };
                p.push(format!("{at}: {why}{relative}"));
            }
            p.extend(
                m.detector
                    .problems()
                    .into_iter()
                    .map(|e| format!("{at}: {e}")),
            );
        }
        let q = &self.mqtt;
        // With MQTT off too: the outbox keeps the alarm messages for a start with it on.
        if q.outbox_max < 10 {
            p.push("mqtt.outbox_max must be at least 10".into());
        }
        if q.enabled {
            if q.host.trim().is_empty() {
                p.push("mqtt.host is empty".into());
            }
            if q.port == 0 {
                p.push("mqtt.port must be 1..65535".into());
            }
            p.extend(topic_prefix_problem("mqtt.prefix", &q.prefix, "sonitor"));
            if q.reconnect_min.is_zero() || q.reconnect_min > q.reconnect_max {
                p.push(format!(
                    "mqtt: need 0 < reconnect_min <= reconnect_max (reconnect_min {:?}, reconnect_max {:?})",
                    q.reconnect_min, q.reconnect_max
                ));
            }
            if q.reconnect_max > MAX_RETRY_WAIT {
                p.push(format!(
                    "mqtt.reconnect_max ({:?}) must be at most {MAX_RETRY_WAIT:?}: alarms would wait that long for a \
                     broker that is back",
                    q.reconnect_max
                ));
            }
            if q.keep_alive < Duration::from_secs(1)
                || q.keep_alive > Duration::from_secs(u16::MAX.into())
            {
                p.push(format!(
                    "mqtt.keep_alive ({:?}) must be between 1s and 65535s (MQTT carries it in 16 bits)",
                    q.keep_alive
                ));
            } else if q.keep_alive.subsec_nanos() != 0 {
                // The connection announces whole seconds (1900ms as 1 s) while rumqttc pings at the value given:
                // the broker, allowing 1.5 × 1 s, closed the connection every few seconds (review30).
                p.push(format!(
                    "mqtt.keep_alive ({:?}) must be whole seconds (MQTT carries it in seconds): write {}s",
                    q.keep_alive,
                    q.keep_alive.as_secs()
                ));
            }
            if q.password.is_some() && q.password_file.is_some() {
                p.push("mqtt: give `password` or `password_file`, not both".into());
            }
            if let Some(f) = &q.password_file {
                if !f.is_file() {
                    p.push(format!(
                        "mqtt.password_file {} {}",
                        f.display(),
                        not_a_file(f)
                    ));
                }
            }
            if (q.password.is_some() || q.password_file.is_some()) && q.username.is_none() {
                p.push("mqtt: a password needs a username".into());
            }
            for (what, f) in [
                ("ca_file", &q.tls.ca_file),
                ("client_cert", &q.tls.client_cert),
                ("client_key", &q.tls.client_key),
            ] {
                if let Some(f) = f {
                    if !q.tls.enabled {
                        p.push(format!(
                            "mqtt.tls.{what} is set but mqtt.tls.enabled is false"
                        ));
                    } else if !f.is_file() {
                        p.push(format!("mqtt.tls.{what} {} {}", f.display(), not_a_file(f)));
                    }
                }
            }
            if q.tls.client_cert.is_some() != q.tls.client_key.is_some() {
                p.push("mqtt.tls: client_cert and client_key go together".into());
            }
            if q.discovery.enabled {
                p.extend(topic_prefix_problem(
                    "mqtt.discovery.prefix",
                    &q.discovery.prefix,
                    "homeassistant",
                ));
            }
            // Checked with discovery off too: switching it on later must not meet a refusal.
            use crate::publish::mqtt::{MAX_MUTE, MAX_MUTE_DAYS};
            let mute = q.discovery.mute;
            if mute < Duration::from_secs(60) || mute > MAX_MUTE {
                let given = crate::publish::mqtt::duration_in_days(mute);
                p.push(format!(
                    "mqtt.discovery.mute ({given}) must be between 1m (the switch's mute would end before anyone \
                     saw it on) and {MAX_MUTE_DAYS} days (the longest a mute/set command takes)"
                ));
            }
        }
        if self.metrics.enabled {
            match self.metrics.listen.parse::<SocketAddr>() {
                Err(_) => p.push(format!(
                    "metrics.listen '{}' is not an address:port (e.g. 127.0.0.1:9464)",
                    self.metrics.listen
                )),
                Ok(a) if !a.ip().is_loopback() => p.push(format!(
                    "metrics.listen '{}' must be a loopback address (put a reverse proxy in front to expose it)",
                    self.metrics.listen
                )),
                Ok(_) => {}
            }
        }
        let c = &self.clips;
        if c.enabled {
            if !(c.pre_seconds >= 0.0 && c.pre_seconds <= 60.0) {
                p.push("clips.pre_seconds must be between 0 and 60".into());
            }
            if !(c.post_seconds >= 0.0 && c.post_seconds <= 60.0) {
                p.push("clips.post_seconds must be between 0 and 60".into());
            }
            if c.max_count == 0 {
                p.push("clips.max_count must be at least 1".into());
            }
            // Below these a clip would be deleted as soon as it is written, while its event still names it.
            if c.max_bytes < 1024 * 1024 {
                p.push(format!(
                    "clips.max_bytes ({}) must be at least 1048576 (1 MiB)",
                    c.max_bytes
                ));
            }
            if c.max_age < Duration::from_secs(60) {
                p.push(format!(
                    "clips.max_age ({:?}) must be at least 1m",
                    c.max_age
                ));
            }
        }
        let h = &self.health;
        if !(h.silence_dbfs < 0.0 && h.silence_dbfs > -200.0) {
            p.push("health.silence_dbfs must be between -200 and 0".into());
        }
        if !(h.clipping_fraction > 0.0 && h.clipping_fraction <= 1.0) {
            p.push("health.clipping_fraction must be in (0, 1]".into());
        }
        if self.pipeline.queue == 0 || self.pipeline.queue > 1024 {
            p.push("pipeline.queue must be 1..1024".into());
        }
        p
    }

    /// What an earlier run left in the state directory that this user cannot use, though the directory itself
    /// takes files: the lock file (`run` could not start, every restart failing alike), the saved alarm states
    /// (every machine would start with its alarm off), the outbox or a message in it (every alarm kept in memory
    /// only, delivered ones sent again at each start, or one set aside unsent). A `sudo sonitor run` before the
    /// service's own user leaves them so (with a umask of 027, unreadable too); where entries of another user are
    /// there, the problem names them all with the one `chown` that mends them, not one per start.
    fn left_unwritable(&self) -> Option<String> {
        let problem = self.first_left_unwritable()?;
        Some(match self.foreign_entries() {
            // The first failure without its own advice: the chown covers it.
            Some(foreign) => format!("{}; {foreign}", split_advice(&problem).0),
            None => problem,
        })
    }

    /// The entries of the state directory (its own, the outbox's, the clips' two levels) that another user owns:
    /// what to say of them, `None` where there are none.
    fn foreign_entries(&self) -> Option<String> {
        use std::os::unix::fs::MetadataExt as _;
        // SAFETY: geteuid and getegid have no preconditions and cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let list = |dir: &Path| -> Vec<PathBuf> {
            std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .take(10_000)
                .map(|e| e.path())
                .collect()
        };
        let mut entries = list(&self.state_dir);
        for dir in [self.outbox_dir(), self.clips_dir()] {
            if dir.starts_with(&self.state_dir) {
                let inside = list(&dir);
                if dir == self.clips_dir() {
                    for machine in inside.iter().filter(|p| p.is_dir()) {
                        entries.extend(list(machine));
                    }
                }
                entries.extend(inside);
            }
        }
        entries.sort();
        let mut owners = BTreeSet::new();
        let mut foreign = Vec::new();
        for p in &entries {
            if let Ok(m) = std::fs::symlink_metadata(p) {
                if m.uid() != uid {
                    owners.insert(m.uid());
                    foreign.push(p);
                }
            }
        }
        foreign.first()?;
        let who = match owners.iter().collect::<Vec<_>>()[..] {
            [0] => "root: a `sudo sonitor run`?".to_string(),
            [one] => format!("uid {one}"),
            _ => format!(
                "uids {}",
                owners
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        const SHOWN: usize = 4;
        let shown: Vec<String> = foreign
            .iter()
            .take(SHOWN)
            .map(|p| {
                p.strip_prefix(&self.state_dir)
                    .unwrap_or(p)
                    .display()
                    .to_string()
            })
            .collect();
        let more = match foreign.len().saturating_sub(SHOWN) {
            0 => String::new(),
            n => format!(" and {n} more"),
        };
        Some(format!(
            "{} in it {} to another user ({who}): {}{more}; give them all to the user sonitor runs as (uid {uid}) \
             while no sonitor runs: `sudo chown -R {uid}:{gid} {}`",
            match foreign.len() {
                1 => "1 entry".to_string(),
                n => format!("{n} entries"),
            },
            if foreign.len() == 1 { "belongs" } else { "belong" },
            shown.join(", "),
            self.state_dir.display()
        ))
    }

    /// The clip folders in the state directory that exist and take no file (the first): the warning, with what it
    /// means and what to do.
    fn clip_folders_unwritable(&self) -> Option<String> {
        let clips = self.clips_dir();
        if !clips.is_dir() {
            return None;
        }
        let machines = std::fs::read_dir(&clips).into_iter().flatten().flatten();
        let dirs =
            std::iter::once(clips.clone()).chain(machines.map(|e| e.path()).filter(|p| p.is_dir()));
        for dir in dirs {
            if let Err(e) = check_writable_dir(&dir, "clips.dir") {
                let (what, advice) = split_advice(&e);
                let advice = match self.foreign_entries() {
                    Some(foreign) => format!("state_dir {}: {foreign}", self.state_dir.display()),
                    None => advice.to_string(),
                };
                return Some(format!(
                    "clip folder {}: {what}: evidence clips will not be written there (the alarms still are); \
                     {advice}",
                    dir.display()
                ));
            }
        }
        None
    }

    /// [`Self::left_unwritable`]'s checks, the first that fails.
    fn first_left_unwritable(&self) -> Option<String> {
        // `what`: "open PATH to write", "read PATH".
        let refused = |what: String, e: std::io::Error| {
            Some(format!("cannot {what}: {e}; {}", left_by_another_user(&e)))
        };
        let lock = self.state_dir.join(crate::state_lock::LOCK_FILE);
        if lock.exists() {
            match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&lock)
            {
                // A read-only filesystem: the lock is taken read-only (`state_lock::acquire`), and the disk check
                // warns.
                Err(e) if e.kind() == std::io::ErrorKind::ReadOnlyFilesystem => {}
                Err(e) => return refused(format!("open {} to write", lock.display()), e),
                Ok(_) => {}
            }
        }
        // Read at the start: one unreadable would start every machine with its alarm off, its open event lost.
        let saved = self.saved_path();
        if saved.exists() {
            if let Err(e) = std::fs::File::open(&saved) {
                return refused(format!("read {}", saved.display()), e);
            }
        }
        let outbox = self.outbox_dir();
        if outbox.is_dir() {
            if let Err(e) = check_writable_dir(&outbox, "state_dir") {
                return Some(format!("{}: {e}", outbox.display()));
            }
            // Each waiting message is read at the start: one that cannot be would be set aside, never sent.
            let unreadable = std::fs::read_dir(&outbox).ok().and_then(|entries| {
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "json"))
                    .find_map(|p| std::fs::File::open(&p).err().map(|e| (p, e)))
            });
            if let Some((p, e)) = unreadable {
                return refused(format!("read {}", p.display()), e);
            }
        }
        None
    }

    /// The state directory's write check ([`check_writable_dir`], one probe) and the warnings about room on disk,
    /// for `validate`, the start of `run` and a reload: a directory that cannot serve is a problem; a full disk,
    /// less room than a full outbox or `clips.max_bytes` takes, or a relative state_dir, a warning. `missing`:
    /// whether a directory that does not exist yet is created (`run`) or left as it is ([`MissingDirs::Probe`],
    /// `validate`).
    pub fn disk_check(&self, missing: MissingDirs) -> DiskCheck {
        let probe = |dir: &Path, key: &str| match missing {
            MissingDirs::Create => check_writable_dir(dir, key),
            MissingDirs::Probe => check_creatable_dir(dir, key),
        };
        let relative = is_relative(&self.state_dir).then(|| {
            format!(
                "state_dir {} is relative: it is {RELATIVE_TO}; give an absolute path",
                self.state_dir.display()
            )
        });
        let state = |s: String| format!("state_dir {}: {s}", self.state_dir.display());
        // Before anything is written there (the probe below is removed, but a start writes on).
        if missing == MissingDirs::Create {
            if let Some(p) = root_in_anothers_dir(&self.state_dir) {
                return DiskCheck {
                    problem: Some(state(p)),
                    warnings: relative.into_iter().collect(),
                };
            }
        }
        let state_warning = match probe(&self.state_dir, "state_dir") {
            Err(e) => {
                return DiskCheck {
                    problem: Some(state(e)),
                    warnings: relative.into_iter().collect(),
                }
            }
            Ok(_) if let Some(p) = self.left_unwritable() => {
                return DiskCheck {
                    problem: Some(state(p)),
                    warnings: relative.into_iter().collect(),
                }
            }
            // A full state filesystem says more than its free space would.
            Ok(Some(full)) => Some(state(full)),
            Ok(None) => free_space(&self.state_dir)
                .and_then(|free| low_space(&free, self.mqtt.outbox_max))
                .map(state),
        };
        // A clips folder elsewhere (another disk) may not take files: clips would not be written, the alarms
        // still are, so it is a warning. The same of the clip folders in the state directory (the clips folder
        // and each machine's), which only another user's run leaves so: naming them is the state directory's
        // business, refusing to watch the machines for them is not.
        let dir = self.clips_dir();
        let clips_warning = if !self.clips.enabled {
            None
        } else if dir.starts_with(&self.state_dir) {
            self.clip_folders_unwritable()
        } else {
            probe(&dir, "clips.dir").err().map(|e| {
                format!(
                    "clips.dir {}: {e}: evidence clips will not be written there (the alarms still are). Under \
                     the shipped systemd unit every path outside the state directory is read-only \
                     (ProtectSystem=strict): add ReadWritePaths={} in a drop-in",
                    dir.display(),
                    dir.display()
                )
            })
        };
        DiskCheck {
            problem: None,
            warnings: [
                relative,
                state_warning,
                clips_warning,
                crate::clips::low_space_warning(self),
            ]
            .into_iter()
            .flatten()
            .collect(),
        }
    }
}

/// [`Config::state_dir_of`] on the file's text.
fn state_dir_in(text: &str) -> Option<PathBuf> {
    let parsed = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .build();
    if let Ok(c) = parsed {
        return c.get_string("state_dir").ok().map(PathBuf::from);
    }
    text.lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with('['))
        .find_map(|l| {
            let v = l
                .strip_prefix("state_dir")?
                .trim_start()
                .strip_prefix('=')?;
            let v = v.split('#').next()?.trim();
            let q = v.chars().next().filter(|q| *q == '"' || *q == '\'')?;
            let inner = v.strip_prefix(q)?.strip_suffix(q)?;
            (!inner.is_empty() && !inner.contains(['\\', '"', '\''])).then(|| PathBuf::from(inner))
        })
}

impl DetectorConfig {
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.raise_k == 0 || self.raise_k > self.raise_n {
            p.push(format!(
                "need 1 <= raise_k ({}) <= raise_n ({})",
                self.raise_k, self.raise_n
            ));
        }
        if self.clear_m == 0 || self.clear_m > self.clear_n {
            p.push(format!(
                "need 1 <= clear_m ({}) <= clear_n ({})",
                self.clear_m, self.clear_n
            ));
        }
        if self.raise_n > 1000 || self.clear_n > 1000 {
            p.push("raise_n and clear_n must be at most 1000".into());
        }
        for (key, value) in [
            ("threshold", self.threshold),
            ("threshold_off", self.threshold_off),
        ] {
            if let Some(why) = value.and_then(sonitor_core::score::threshold_problem) {
                p.push(format!("{key} {why}"));
            }
        }
        if let Some(level) = self.idle_below_dbfs {
            if !(level > -200.0 && level < 0.0) {
                p.push(format!(
                    "idle_below_dbfs ({level}) must be a level between -200 and 0 dBFS"
                ));
            }
        }
        let h = self.idle_hysteresis_db;
        if !(0.0..=40.0).contains(&h) {
            p.push(format!(
                "idle_hysteresis_db ({h}) must be a number of dB between 0 and 40 (0: none)"
            ));
        } else if let Some(level) = self.idle_below_dbfs.filter(|l| *l > -200.0 && *l < 0.0) {
            // A window's level is at most 0 dBFS: a machine that stopped would never count as running again, and
            // would go unwatched for good.
            if level + h >= 0.0 {
                p.push(format!(
                    "idle_below_dbfs ({level}) + idle_hysteresis_db ({h}) must stay below 0 dBFS, the loudest a \
                     window can be: a machine that stopped would never count as running again"
                ));
            }
        }
        // Compared only when both are valid: a refused threshold is not in force.
        let valid = |t: f64| sonitor_core::score::threshold_problem(t).is_none();
        if let (Some(on), Some(off)) = (
            self.threshold.filter(|&t| valid(t)),
            self.threshold_off.filter(|&t| valid(t)),
        ) {
            if off > on {
                p.push(threshold_off_above(off, on));
            }
        }
        p
    }
}

/// What differs between the running configuration and a reloaded one that SIGHUP does not apply: everything
/// but the machines' detector settings, `enabled`, `bundle` and `section` (their models: the reload applies a
/// model whose feature parameters are the running ones and names the others, `Controller::reload`) and
/// `mqtt.score_interval`. Each entry names the setting, for a log line saying that it takes effect at the next
/// restart.
pub fn changes_needing_restart(old: &Config, new: &Config) -> Vec<String> {
    let mut c = Vec::new();
    if old.node_id != new.node_id {
        c.push("node_id".to_string());
    }
    if old.state_dir != new.state_dir {
        c.push("state_dir".into());
    }
    if old.log_level != new.log_level {
        c.push("log_level".into());
    }
    if old.devices != new.devices {
        c.push("[[devices]]".into());
    }
    let mqtt = |m: &MqttConfig| MqttConfig {
        score_interval: Duration::ZERO,
        ..m.clone()
    };
    if mqtt(&old.mqtt) != mqtt(&new.mqtt) {
        c.push("[mqtt] (other than score_interval)".into());
    }
    for (name, changed) in [
        ("[metrics]", old.metrics != new.metrics),
        ("[clips]", old.clips != new.clips),
        ("[health]", old.health != new.health),
        ("[pipeline]", old.pipeline != new.pipeline),
    ] {
        if changed {
            c.push(name.into());
        }
    }
    for nm in &new.machines {
        match old.machines.iter().find(|m| m.name == nm.name) {
            None => c.push(format!("new machine '{}'", nm.name)),
            Some(m) => {
                if m.device != nm.device || m.channel != nm.channel {
                    c.push(format!("machine '{}': device/channel", nm.name));
                }
            }
        }
    }
    c
}

/// Why `prefix`, the setting `key`, cannot begin MQTT topics, with an example of one that can; `None` when it can.
/// Topics are `<prefix>/…` with a trailing `/` of the prefix dropped: the prefix must have a level, and no level
/// may be empty (`a//b`) or hold a wildcard (`+`, `#`, which no published topic may contain) or U+0000.
fn topic_prefix_problem(key: &str, prefix: &str, example: &str) -> Option<String> {
    let levels = prefix.trim_end_matches('/');
    if levels.starts_with('$') {
        // MQTT 4.7.2: topics beginning with '$' are the broker's own; mosquitto drops a client's publish there
        // without a word, so every alarm would be lost while the daemon reports them sent.
        return Some(format!(
            "{key} '{prefix}' must not begin with '$': topics beginning with '$' are the broker's ($SYS), and it \
             discards what clients publish there (e.g. \"{example}\")"
        ));
    }
    let ok = !levels.is_empty()
        && !prefix.contains(['+', '#', '\0'])
        && !levels
            .strip_prefix('/')
            .unwrap_or(levels)
            .split('/')
            .any(str::is_empty);
    (!ok).then(|| {
        format!(
            "{key} '{prefix}' must be one or more topic levels separated by '/', none of them empty, without '+' \
             or '#' (e.g. \"{example}\")"
        )
    })
}

/// Why `path`, which should name a file, does not: it does not exist, or it is a directory or something else.
/// Whether nothing is at `path` (not even a dangling link's target), as opposed to something that is not a
/// readable file: a folder, one this user may not pass, a loop of links.
pub(crate) fn file_absent(path: &Path) -> bool {
    path.metadata()
        .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
}

fn not_a_file(path: &Path) -> String {
    match path.metadata() {
        Ok(m) if m.is_dir() => "is a directory, not a file".into(),
        Ok(_) => "is not a regular file".into(),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => format!(
            "cannot be reached: this user may not pass a folder on its way; {}",
            sonitor_core::regular_file::readable_advice(path)
        ),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            "is a loop of symbolic links that never reaches a file".into()
        }
        Err(_) => "does not exist".into(),
    }
}

/// The refusal of a `threshold_off` above the threshold `on` in force, saying what to write instead: one wording
/// for the machine's own threshold and the bundle's ([`crate::check::threshold_off_above_bundle`]).
pub(crate) fn threshold_off_above(off: f64, on: f64) -> String {
    format!(
        "threshold_off ({off}) is above the threshold in force ({on}): it must be at most the threshold (an alarm \
         clears once scores fall below threshold_off)"
    )
}

/// ASCII letters, digits, `-`, `_`, at most [`NAME_MAX`] of them.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= NAME_MAX
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn list<'a>(it: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<&str> = it.collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// Bytes of the probe file [`check_writable_dir`] writes: one block of a usual filesystem, more than an outbox
/// message takes, so that a filesystem without room for one is found.
const PROBE_BYTES: usize = 4096;

/// Where a relative path of the file leads, as the warnings about them say.
const RELATIVE_TO: &str =
    "taken from the directory sonitor starts in (/ under systemd), not from the configuration file's";

/// Whether a path of the file is relative: taken from the directory sonitor starts in, whatever the file says (an
/// empty one is not: it is a problem of its own).
fn is_relative(p: &Path) -> bool {
    p.is_relative() && !p.as_os_str().is_empty()
}

/// What [`Config::disk_check`] does with a state or clips directory that does not exist yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingDirs {
    /// Creates it ([`check_writable_dir`]): `run`, a reload and the demo write there next.
    Create,
    /// Leaves it missing and shows that it could be made ([`check_creatable_dir`]): `validate`, a check that
    /// keeps nothing it writes.
    Probe,
}

/// [`check_writable_dir`] that leaves the filesystem as it found it. A directory that exists is probed in place
/// (the probe file is removed). A missing one stays missing: a probe directory made in its nearest existing
/// ancestor, written to and removed, shows that it can be created and take a file, with the same errors as
/// `run` would meet.
pub fn check_creatable_dir(dir: &Path, key: &str) -> Result<Option<String>, String> {
    if dir.symlink_metadata().is_ok() {
        return check_writable_dir(dir, key);
    }
    let base = sonitor_core::regular_file::nearest_existing(dir).unwrap_or(Path::new("/"));
    let probe = base.join(format!(".sonitor-probe-{}.d", std::process::id()));
    std::fs::create_dir(&probe)
        .map_err(|e| format!("cannot create the directory: {e}; {}", what_to_do(&e, key)))?;
    let checked = check_writable_dir(&probe, key);
    std::fs::remove_dir(&probe).map_err(|e| {
        format!(
            "cannot remove the test directory {} it made: {e}; remove it by hand and check the permissions of {}",
            probe.display(),
            base.display()
        )
    })?;
    checked
}

/// Creates the directory if needed (as `run` does) and checks that it takes a write that reaches the disk: a
/// probe file with content, fsynced, then removed. An empty file, as this check once wrote, is created on a
/// full filesystem too. The probe is removed whatever happens after it was created.
///
/// `Err`: the directory cannot serve (it cannot be created, is read-only, or not the user's to write), with the
/// OS error and what to do; the configuration is refused. `Ok(Some(warning))`: it is on a full filesystem (or
/// over a quota). That is a state of the disk, not of the configuration, and it passes once space is freed: the
/// daemon starts, keeps alarm transitions it cannot write in memory and publishes them, so refusing to start
/// (exit 78, which systemd does not restart) would silence the machine for good after a crash on a full disk.
pub fn check_writable_dir(dir: &Path, key: &str) -> Result<Option<String>, String> {
    use std::io::Write;
    // Said as such: creating it over a file only says "File exists".
    if std::fs::metadata(dir).is_ok_and(|m| !m.is_dir()) {
        return Err(format!(
            "is a file, not a directory: set {key} to a directory (made if it does not exist), or move the file"
        ));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create the directory: {e}; {}", what_to_do(&e, key)))?;
    let probe = dir.join(format!(".sonitor-probe-{}", std::process::id()));
    let written = std::fs::File::create(&probe).map(|mut file| {
        let written = file
            .write_all(&[b'.'; PROBE_BYTES])
            .and_then(|()| file.sync_all());
        drop(file);
        let removed = std::fs::remove_file(&probe).map_err(|e| {
            format!(
                "cannot remove the test file {} it wrote: {e}; remove it by hand and check the directory's \
                 permissions",
                probe.display()
            )
        });
        written.map(|()| removed)
    });
    let failed = match written {
        Ok(Ok(removed)) => return removed.map(|()| None),
        Ok(Err(e)) => (
            e,
            format!("cannot write a {PROBE_BYTES}-byte test file in it"),
        ),
        Err(e) => (e, "cannot create a file in it".to_string()),
    };
    let (e, what) = failed;
    if is_passing(&e) {
        let until = if e.kind() == std::io::ErrorKind::ReadOnlyFilesystem {
            "it is writable again"
        } else {
            "it has room"
        };
        Ok(Some(format!(
            "{what}: {e}: alarm transitions will be kept in memory only until {until} (published when the \
             broker is reachable, lost if sonitor stops before that); {}",
            what_to_do(&e, key)
        )))
    } else {
        Err(format!("{what}: {e}; {}", what_to_do(&e, key)))
    }
}

/// A directory check's message ([`check_writable_dir`], [`Config::left_unwritable`]'s) as what failed and what to do
/// about it (`WHAT; ADVICE`), so that advice that knows more (another user's entries) can replace the second.
fn split_advice(message: &str) -> (&str, &str) {
    message.split_once("; ").unwrap_or((message, ""))
}

/// Why a daemon run as root must not write in `state_dir`, `None` where it may: the directory exists and belongs to
/// another user, the one the service runs as (systemd's `StateDirectory=`). What root writes there (the lock, the
/// saved states, the outbox, clips) would be root's, which that user cannot write: the service then refused to
/// start (exit 78) until someone found every such file (review23).
#[cfg(unix)]
fn root_in_anothers_dir(state_dir: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let m = std::fs::metadata(state_dir).ok()?;
    let (uid, gid) = (m.uid(), m.gid());
    (uid != 0).then(|| {
        format!(
            "belongs to uid {uid} (with the shipped unit, the user the service runs as), and this sonitor runs as \
             root: what it wrote there (the lock, the alarm states, the outbox, clips) would be root's, which that \
             user cannot write, and a sonitor run as that user, the service too, would refuse to start after it. \
             Run this one as that user (the service stopped: `sudo setpriv --reuid={uid} --regid={gid} \
             --clear-groups sonitor …`), or give it a state directory of its own (state_dir; for `sonitor demo`, \
             --out)"
        )
    })
}

#[cfg(not(unix))]
fn root_in_anothers_dir(_state_dir: &Path) -> Option<String> {
    None
}

/// A full filesystem, an exceeded quota, or one mounted read-only (ext4's `errors=remount-ro` after an SD card's
/// fault, until fsck and a reboot): a state of the disk, not of the configuration. Refusing to start on one (exit
/// 78, which the unit never restarts) left every machine unwatched after the next restart.
pub(crate) fn is_passing(e: &std::io::Error) -> bool {
    is_full(e) || e.kind() == std::io::ErrorKind::ReadOnlyFilesystem
}

/// A full filesystem or an exceeded quota.
pub(crate) fn is_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// What [`Config::disk_check`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct DiskCheck {
    /// The state directory cannot serve (read-only, no permission, cannot be created).
    pub problem: Option<String>,
    pub warnings: Vec<String>,
}

/// What a full outbox takes on the filesystem of `free`: one block per message.
pub(crate) fn outbox_bytes(free: &FreeSpace, outbox_max: usize) -> u64 {
    (outbox_max as u64).saturating_mul(free.block)
}

/// Room left on a filesystem, for an unprivileged user.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct FreeSpace {
    pub bytes: u64,
    /// `None` where the filesystem does not count inodes (btrfs reports none).
    pub inodes: Option<u64>,
    pub block: u64,
    /// The device the path lies on (`st_dev`), to tell whether two directories share a filesystem.
    pub dev: u64,
}

/// The room left on the filesystem that holds `path`, or would hold it once created (its nearest existing
/// ancestor is asked).
#[cfg(unix)]
pub(crate) fn free_space(path: &Path) -> Option<FreeSpace> {
    use std::os::unix::fs::MetadataExt;
    let existing = path.ancestors().find(|p| p.exists())?;
    let dev = std::fs::metadata(existing).ok()?.dev();
    statvfs(existing, dev)
}

#[cfg(unix)]
fn statvfs(dir: &Path, dev: u64) -> Option<FreeSpace> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs only writes the struct it is given; `path` is NUL-terminated and outlives the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast)] // the field types differ between targets
    let (bavail, frsize, bsize, files, favail) = (
        st.f_bavail as u64,
        st.f_frsize as u64,
        st.f_bsize as u64,
        st.f_files as u64,
        st.f_favail as u64,
    );
    Some(FreeSpace {
        bytes: bavail.saturating_mul(frsize),
        inodes: (files > 0).then_some(favail),
        // The allocation unit; f_bsize is the preferred I/O size (1 MiB on some NFS mounts).
        block: if frsize > 0 { frsize } else { bsize }.max(512),
        dev,
    })
}

#[cfg(not(unix))]
pub(crate) fn free_space(_dir: &Path) -> Option<FreeSpace> {
    None
}

/// Why the filesystem of `free` has too little room for a full outbox (`outbox_max` messages of one block and
/// one inode each): while the broker is unreachable the outbox would fill it, and alarms beyond that point
/// would no longer survive a restart. `None` when there is room.
fn low_space(free: &FreeSpace, outbox_max: usize) -> Option<String> {
    let messages = outbox_max as u64;
    let need = outbox_bytes(free, outbox_max);
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let consequence = "while the broker is unreachable the outbox could fill it, and alarms after that would be \
                       kept in memory only (lost if sonitor stops before the broker is back): free space there, \
                       or lower mqtt.outbox_max";
    if free.bytes < need {
        return Some(format!(
            "only {:.1} MiB free on its filesystem, less than a full outbox takes ({:.1} MiB: mqtt.outbox_max = \
             {messages} messages of a {}-byte block each); {consequence}",
            mib(free.bytes),
            mib(need),
            free.block
        ));
    }
    match free.inodes {
        Some(inodes) if inodes < messages => Some(format!(
            "only {inodes} free inodes on its filesystem, fewer than a full outbox takes (mqtt.outbox_max = \
             {messages} messages of one file each); {consequence}"
        )),
        _ => None,
    }
}

/// What the engineer can do about an error writing the directory set by `key` (`state_dir`, which holds the alarm
/// state and the alarms not yet acknowledged by the broker, or `clips.dir`).
/// What to do about a file in the state directory this user cannot write (`e`).
fn left_by_another_user(e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        "another user (root, by a `sudo sonitor run`?) owns it: give it to the user sonitor runs as (`sudo chown -R \
         USER STATE_DIR`), or remove it while no sonitor runs"
            .into()
    } else {
        what_to_do(e, "state_dir")
    }
}

fn what_to_do(e: &std::io::Error, key: &str) -> String {
    use std::io::ErrorKind;
    let state = key == "state_dir";
    match e.kind() {
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => format!(
            "free space on its filesystem{} or set {key} to a directory on another one",
            if state {
                " (clips are kept there too unless clips.dir says otherwise)"
            } else {
                ""
            }
        ),
        ErrorKind::ReadOnlyFilesystem => format!(
            "its filesystem is mounted read-only: remount it read-write, or set {key} to a directory on a writable \
             filesystem"
        ),
        ErrorKind::PermissionDenied if state => "give the user sonitor runs as write access to it (the systemd \
             unit's StateDirectory=sonitor does, for /var/lib/sonitor), or set state_dir to a directory that user \
             owns; a check run as yourself meets this on the service's directory: run it as `sudo sonitor …`"
            .into(),
        ErrorKind::PermissionDenied => format!(
            "give the user sonitor runs as write access to it, or set {key} to a directory that user owns"
        ),
        _ if state => {
            "set state_dir to a writable directory (systemd: StateDirectory=sonitor gives /var/lib/sonitor)".into()
        }
        _ => format!("set {key} to a writable directory"),
    }
}

/// A path as a TOML basic string, for configuration files written by programs (`sonitor demo`, `sonitor-bench`):
/// backslashes and quotes escaped.
pub fn toml_path(p: &Path) -> String {
    format!(
        "\"{}\"",
        p.display()
            .to_string()
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `sonitor status` finds the running daemon's state directory in a file it would refuse: one with a key
    /// misspelled, and one whose TOML does not parse (its top-level line); not in a table, nor without quotes.
    #[test]
    fn the_state_directory_is_found_in_a_file_that_would_be_refused() {
        let found = |t: &str| state_dir_in(t).map(|p| p.display().to_string());
        let typo = "node_id = \"n\"\nstate_dir = \"/var/lib/sonitor\"\n[mqtt]\nhots = \"x\"\n";
        assert_eq!(found(typo).as_deref(), Some("/var/lib/sonitor"));
        let broken =
            "node_id = \"n\nstate_dir = '/srv/s' # here\n[[machines]\nstate_dir = \"/no\"\n";
        assert!(
            found(broken).is_some_and(|p| p == "/srv/s"),
            "{:?}",
            found(broken)
        );
        for none in [
            "node_id = \"n\n[x]\nstate_dir = \"/in/a/table\"\n",
            "node_id = \"n\nstate_dir = /bare\n",
            "node_id = \"n\nstate_dir = \"/a\\\\b\"\n",
        ] {
            assert_eq!(found(none), None, "{none:?}");
        }
        assert_eq!(
            found("state_dir = \"/ok\" \nnode_id = \"n\"\n[mqtt]\nhost = [\n").as_deref(),
            Some("/ok")
        );
    }

    #[test]
    fn detector_params_default_to_the_bundle_threshold() {
        let c = DetectorConfig::default();
        let p = c.params(0.42);
        assert_eq!((p.threshold_on, p.threshold_off), (0.42, 0.42));
        // What eval replays on test clips is what an unconfigured machine runs.
        assert_eq!(p, DetectorParams::defaults_with_threshold(0.42));
        let c = DetectorConfig {
            threshold: Some(0.6),
            threshold_off: Some(0.5),
            ..Default::default()
        };
        let p = c.params(0.42);
        assert_eq!((p.threshold_on, p.threshold_off), (0.6, 0.5));
    }

    /// A reload's log names what keeps a bundle's new threshold from being the one in force.
    #[test]
    fn what_sets_the_threshold_over_the_bundle_is_named() {
        let mut file = DetectorConfig::default();
        assert_eq!(file.threshold_set(None), None);
        file.threshold = Some(0.07);
        assert_eq!(
            file.threshold_set(None).as_deref(),
            Some("the threshold 0.07 of the configuration file")
        );
        assert_eq!(
            file.threshold_set(Some(0.09)).as_deref(),
            Some("the threshold 0.09 of a threshold/set command")
        );
    }

    /// A threshold set by MQTT below the file's hysteresis gap (0.06 / 0.03, then 0.02) used to give an
    /// off-threshold of -0.01, below every score (cosine distances are >= 0): the alarm could never clear.
    #[test]
    fn a_threshold_set_by_mqtt_keeps_the_off_threshold_in_0_on() {
        let c = DetectorConfig {
            threshold: Some(0.06),
            threshold_off: Some(0.03),
            ..Default::default()
        };
        let p = c.params_with_override(0.42, Some(0.02));
        assert_eq!(p.threshold_on, 0.02);
        assert!(
            p.threshold_off > 0.0 && p.threshold_off <= p.threshold_on,
            "{p:?}"
        );
        // The file's ratio off/on (here 1/2) is kept, whichever way the threshold moves.
        assert!((p.threshold_off - 0.01).abs() < 1e-12, "{p:?}");
        let p = c.params_with_override(0.42, Some(1.5));
        assert!((p.threshold_off - 0.75).abs() < 1e-12, "{p:?}");
        // Without hysteresis in the file there is none with the override; none set: the file's values.
        let p = DetectorConfig::default().params_with_override(0.42, Some(0.3));
        assert_eq!((p.threshold_on, p.threshold_off), (0.3, 0.3));
        assert_eq!(c.params_with_override(0.42, None), c.params(0.42));
        // The bundle's threshold with the file's threshold_off below it: the same ratio.
        let c = DetectorConfig {
            threshold_off: Some(0.21),
            ..Default::default()
        };
        let p = c.params_with_override(0.42, Some(0.1));
        assert!((p.threshold_off - 0.05).abs() < 1e-12, "{p:?}");
    }

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("sonitor.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Why the configuration `text`, written in `dir`, is refused.
    fn refusal(dir: &Path, text: &str) -> String {
        Config::load_with_env(&write(dir, text), [])
            .unwrap_err()
            .to_string()
    }

    fn minimal(dir: &Path) -> String {
        format!(
            r#"
node_id = "n1"
state_dir = "{}"
[[devices]]
name = "mic"
source = "capture"
device = "default"
[[machines]]
name = "pump-1"
device = "mic"
bundle = "{}"
section = "pump/section_00"
raise_k = 2
min_duration = "3s"
"#,
            dir.join("state").display(),
            dir.join("bundle").display()
        )
    }

    /// Relative paths other than state_dir are named in one warning, each by its key; absolute ones are not.
    #[test]
    fn relative_paths_are_named_in_one_warning() {
        let d = tempfile::tempdir().unwrap();
        let c = Config::load_with_env(&write(d.path(), &minimal(d.path())), []).unwrap();
        assert_eq!(c.relative_paths_warning(), None);
        let text = minimal(d.path()).replace(
            &format!("bundle = \"{}\"", d.path().join("bundle").display()),
            "bundle = \"models/pump\"",
        ) + "[clips]\ndir = \"clips\"\n[mqtt]\npassword_file = \"/run/secret\"\n";
        let c = Config::load_with_env(&write(d.path(), &text), []).unwrap();
        assert_eq!(
            c.relative_paths_warning().as_deref(),
            Some(
                "relative paths, taken from the directory sonitor starts in (/ under systemd), not from the \
                 configuration file's: machines[0].bundle = models/pump, clips.dir = clips; give absolute paths"
            )
        );
    }

    /// Two unknown keys in one table: the same one is named at every load, the first in the file (review24 saw
    /// `username` at one run and `password_file` at the next: the config crate's tables were hash maps).
    #[test]
    fn of_several_unknown_keys_the_first_in_the_file_is_named_every_time() {
        let d = tempfile::tempdir().unwrap();
        let text = format!(
            "{}\n[metrics]\nusername = \"u\"\npassword_file = \"/p\"\nzone = 1\n",
            minimal(d.path())
        );
        let path = write(d.path(), &text);
        for _ in 0..10 {
            let e = Config::load_with_env(&path, []).unwrap_err().to_string();
            assert!(e.contains("unknown field `username`"), "{e}");
        }
    }

    #[test]
    fn reads_toml_with_defaults_and_durations() {
        let d = tempfile::tempdir().unwrap();
        let c = Config::load_with_env(&write(d.path(), &minimal(d.path())), []).unwrap();
        assert_eq!(c.machines[0].detector.raise_k, 2);
        assert_eq!(c.machines[0].detector.raise_n, 5);
        assert_eq!(c.machines[0].detector.min_duration, Duration::from_secs(3));
        assert_eq!(c.mqtt.port, 1883);
        assert_eq!(c.topic_base(), "sonitor/n1");
        assert!(c.devices[0].realtime);
    }

    #[test]
    fn environment_overrides_known_sections_only() {
        let d = tempfile::tempdir().unwrap();
        let env = [
            ("SONITOR_MQTT__PORT".to_string(), "2883".to_string()),
            ("SONITOR_MQTT__PASSWORD".to_string(), "s3cret".to_string()),
            ("SONITOR_NODE_ID".to_string(), "n2".to_string()),
            ("SONITOR_PYTHON".to_string(), "/usr/bin/python3".to_string()),
        ];
        let c = Config::load_with_env(&write(d.path(), &minimal(d.path())), env).unwrap();
        assert_eq!(c.mqtt.port, 2883);
        assert_eq!(c.mqtt.password.as_deref(), Some("s3cret"));
        assert_eq!(c.node_id, "n2");

        // Digits stay the text they are where the configuration wants text; numbers and booleans still parse.
        let env = [
            ("SONITOR_MQTT__PASSWORD".to_string(), "0123456".to_string()),
            ("SONITOR_NODE_ID".to_string(), "007".to_string()),
            ("SONITOR_MQTT__PREFIX".to_string(), "1.50".to_string()),
            ("SONITOR_MQTT__ENABLED".to_string(), "false".to_string()),
            ("SONITOR_MQTT__KEEP_ALIVE".to_string(), "45s".to_string()),
        ];
        let c = Config::load_with_env(&write(d.path(), &minimal(d.path())), env).unwrap();
        assert_eq!(c.mqtt.password.as_deref(), Some("0123456"));
        assert_eq!(c.node_id, "007");
        assert_eq!(c.mqtt.prefix, "1.50");
        assert!(!c.mqtt.enabled);
        assert_eq!(c.mqtt.keep_alive, Duration::from_secs(45));
    }

    #[test]
    fn unknown_keys_and_bad_types_are_named() {
        let d = tempfile::tempdir().unwrap();
        // The error a configuration text (with the given environment) is refused with.
        let refused = |text: &str, env: &[(&str, &str)]| {
            let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
            Config::load_with_env(&write(d.path(), text), env)
                .unwrap_err()
                .to_string()
        };
        let text = minimal(d.path()).replace("raise_k = 2", "raise_kk = 2");
        let e = refused(&text, &[]);
        assert!(e.contains("raise_kk"), "{e}");
        // The detector's settings are flattened into the machine: each bad one is named by its key (the typed
        // read names only `machines[0]`), all at once, as strictly as that read takes them.
        let text = minimal(d.path()).replace(
            "raise_k = 2",
            "raise_k = \"two\"\nthreshold = \"high\"\nthreshold_off = \"0.3\"\nclear_n = 2.5\nclear_m = -1",
        );
        let e = refused(&text, &[]);
        assert_named(
            &e,
            &[
                "machine 'pump-1': machines[0].raise_k = \"two\" is not valid: write a whole number of windows, \
                 e.g. 3 (without quotes)",
                "machines[0].threshold = \"high\" is not valid: write a score, e.g. 0.42 (without quotes)",
                "machines[0].threshold_off = \"0.3\" is not valid",
                "machines[0].clear_n = 2.5 is not valid: write a whole number of windows, e.g. 5",
                "machines[0].clear_m = -1 is not valid",
            ],
        );
        // What the typed read takes, this check takes too: an integer threshold.
        let text = minimal(d.path()).replace("raise_k = 2", "raise_k = 2\nthreshold = 1");
        let c = Config::load_with_env(&write(d.path(), &text), []).unwrap();
        assert_eq!(c.machines[0].detector.threshold, Some(1.0));
        // The idle level: a number of dBFS, below 0.
        let text = minimal(d.path()).replace("raise_k = 2", "raise_k = 2\nidle_below_dbfs = -45");
        let c = Config::load_with_env(&write(d.path(), &text), []).unwrap();
        assert_eq!(c.machines[0].detector.idle_below_dbfs, Some(-45.0));
        let text =
            minimal(d.path()).replace("raise_k = 2", "raise_k = 2\nidle_below_dbfs = \"-45\"");
        let e = refused(&text, &[]);
        assert!(
            e.contains("machines[0].idle_below_dbfs = \"-45\" is not valid: write a level in dBFS, e.g. -50 (without quotes)"),
            "{e}"
        );
        for bad in ["12", "-250", "nan"] {
            let text = minimal(d.path()).replace(
                "raise_k = 2",
                &format!("raise_k = 2\nidle_below_dbfs = {bad}"),
            );
            let c = Config::load_with_env(&write(d.path(), &text), []).unwrap();
            let e = c.static_problems().join("\n");
            assert!(
                e.contains("must be a level between -200 and 0 dBFS"),
                "{bad}: {e}"
            );
        }
        // Its hysteresis: 3 dB unless set, a number of dB from 0 to 40.
        assert_eq!(c.machines[0].detector.idle_hysteresis_db, 3.0);
        let text = minimal(d.path()).replace("raise_k = 2", "raise_k = 2\nidle_hysteresis_db = 6");
        let c = Config::load_with_env(&write(d.path(), &text), []).unwrap();
        assert_eq!(c.machines[0].detector.idle_hysteresis_db, 6.0);
        let text =
            minimal(d.path()).replace("raise_k = 2", "raise_k = 2\nidle_hysteresis_db = \"3dB\"");
        let e = refused(&text, &[]);
        assert!(
            e.contains("machines[0].idle_hysteresis_db = \"3dB\" is not valid: write a number of dB, e.g. 3 (without quotes)"),
            "{e}"
        );
        // A limit to run again at 0 dBFS or above: a stopped machine would never run again (review24).
        for (level, h) in [("-20", "25"), ("-1", "3"), ("-5", "5")] {
            let text = minimal(d.path()).replace(
                "raise_k = 2",
                &format!("raise_k = 2\nidle_below_dbfs = {level}\nidle_hysteresis_db = {h}"),
            );
            let c = Config::load_with_env(&write(d.path(), &text), []).unwrap();
            let e = c.static_problems().join("\n");
            assert!(
                e.contains(&format!(
                    "idle_below_dbfs ({level}) + idle_hysteresis_db ({h}) must stay below 0 dBFS"
                )),
                "{level} {h}: {e}"
            );
        }
        for bad in ["-1", "41", "nan"] {
            let text = minimal(d.path()).replace(
                "raise_k = 2",
                &format!("raise_k = 2\nidle_hysteresis_db = {bad}"),
            );
            let c = Config::load_with_env(&write(d.path(), &text), []).unwrap();
            let e = c.static_problems().join("\n");
            assert!(
                e.contains("idle_hysteresis_db")
                    && e.contains("must be a number of dB between 0 and 40"),
                "{bad}: {e}"
            );
        }
        // A key inside an array of tables is written with its dot (the config crate drops it).
        let text = minimal(d.path()).replace(
            "device = \"default\"",
            "device = \"default\"\nring_seconds = \"four\"",
        );
        let e = refused(&text, &[]);
        assert!(e.contains("`devices[0].ring_seconds`"), "{e}");
        assert!(!e.contains("` in "), "{e}");
        // A value from the environment is blamed on its variable, not on the file.
        let e = refused(&minimal(d.path()), &[("SONITOR_MQTT__PORT", "abc")]);
        assert!(
            e.contains("`mqtt.port` (set by the environment variable SONITOR_MQTT__PORT)"),
            "{e}"
        );
        // A whole number beyond its setting's range is said so (it read "invalid type: 64-bit unsigned integer
        // `99999`, expected an unsigned 16 bit integer"), from the file or from a variable.
        let e = refused(&(minimal(d.path()) + "[mqtt]\nport = 99999\n"), &[]);
        assert!(
            e.contains("mqtt.port = 99999 is out of range: write a whole number from 0 to 65535")
                && !e.contains("invalid type"),
            "{e}"
        );
        let e = refused(&minimal(d.path()), &[("SONITOR_MQTT__PORT", "99999")]);
        assert!(
            e.contains(
                "mqtt.port = 99999 is out of range: write a whole number from 0 to 65535 (set by the \
                 environment variable SONITOR_MQTT__PORT)"
            ),
            "{e}"
        );
        let e = refused(&(minimal(d.path()) + "[mqtt]\nport = -1\n"), &[]);
        assert!(e.contains("mqtt.port = -1 is out of range"), "{e}");
        // A 64-bit one is not given its limit (it read "from 0 to 18446744073709551615").
        let e = refused(
            &minimal(d.path()).replace("raise_k = 2", "raise_k = 2\nchannel = -1"),
            &[],
        );
        assert!(
            e.contains("channel = -1 is out of range: write a whole number, 0 or more")
                && !e.contains("1844674"),
            "{e}"
        );
        // A device's numbers are given the limits the checks apply, not their type's (review33).
        for (set, says) in [
            (
                "channels = 100000",
                "channels = 100000 is out of range: write a whole number of channels from 1 to 65535",
            ),
            (
                "sample_rate = -16000",
                "sample_rate = -16000 is out of range: write a rate from 8000 to 768000 Hz",
            ),
            (
                "buffer_frames = -1",
                "buffer_frames = -1 is out of range: write a whole number of frames from 1 to 4294967295",
            ),
        ] {
            let e = refused(
                &minimal(d.path()).replace(
                    "device = \"default\"",
                    &format!("device = \"default\"\n{set}"),
                ),
                &[],
            );
            assert!(e.contains(says), "{e}");
        }
        // A setting with a fixed set of values lists them.
        let text = minimal(d.path()).replace(
            "source = \"capture\"",
            "source = \"file\"\nat_end = \"rewind\"",
        );
        let e = refused(&text, &[]);
        assert!(
            e.contains("'rewind' is not one of: stop, loop, exit"),
            "{e}"
        );
        let e = refused("node_id = [1,", &[]);
        assert!(e.contains("sonitor.toml"), "{e}");
    }

    #[test]
    fn a_value_of_the_wrong_type_is_refused_not_converted() {
        let d = tempfile::tempdir().unwrap();
        let refused = |text: &str| {
            Config::load_with_env(&write(d.path(), text), [])
                .unwrap_err()
                .to_string()
        };
        // The typed read alone takes each of these, converted: channel 2, port 1884, enabled, host "10".
        let text = minimal(d.path()).replace(
            "raise_k = 2",
            "raise_k = 2\nchannel = 1.5\nenabled = \"yes\"",
        )
            + "[mqtt]\nport = 1883.7\nhost = 10\noutbox_max = \"100\"\npassword = 123456\n";
        let e = refused(&text);
        assert_named(
            &e,
            &[
                "machine 'pump-1': machines[0].channel = 1.5 is not a whole number: write a whole number",
                "machine 'pump-1': machines[0].enabled = \"yes\" is text: write true or false (without quotes)",
                "mqtt.port = 1883.7 is not a whole number",
                "mqtt.host = 10 is not text: write it in quotes, e.g. \"10\"",
                "mqtt.outbox_max = \"100\" is text: write a whole number (without quotes)",
                "mqtt.password = … is not text",
            ],
        );
        assert!(!e.contains("123456"), "a password is not repeated: {e}");
        let text = minimal(d.path()).replace("raise_k = 2", "raise_k = 2\nchannel = nan");
        let e = refused(&text);
        assert!(
            e.contains("machines[0].channel = (nan or inf) is not a whole number"),
            "{e}"
        );
        let text = minimal(d.path()) + "[clips]\npre_seconds = true\n";
        let e = refused(&text);
        assert!(
            e.contains("clips.pre_seconds = true is not a number"),
            "{e}"
        );

        // A whole number where a fraction may be is fine; so is a value the environment sets (text by nature).
        let text = minimal(d.path()).replace(
            "device = \"default\"",
            "device = \"default\"\nring_seconds = 4",
        ) + "[clips]\npre_seconds = 3\n";
        let env = [("SONITOR_MQTT__PORT".to_string(), "2883".to_string())];
        let c = Config::load_with_env(&write(d.path(), &text), env).unwrap();
        assert_eq!((c.devices[0].ring_seconds, c.clips.pre_seconds), (4.0, 3.0));
        assert_eq!(c.mqtt.port, 2883);
    }

    /// Every static problem of a configuration text, one per line.
    fn problems(dir: &Path, text: &str) -> String {
        Config::load_with_env(&write(dir, text), [])
            .unwrap()
            .static_problems()
            .join("\n")
    }

    /// Asserts that `problems` names each of `expected`.
    fn assert_named(problems: &str, expected: &[&str]) {
        for expect in expected {
            assert!(
                problems.contains(expect),
                "expected '{expect}' in:\n{problems}"
            );
        }
    }

    /// MQTT carries the keep-alive in whole seconds: 1900ms went out as 1 s while rumqttc pinged every 1.9 s, and
    /// the broker closed the connection every few seconds (review30). A fraction is refused, the fix named.
    #[test]
    fn a_keep_alive_of_a_fraction_of_a_second_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let with = |k: &str| {
            problems(
                d.path(),
                &(minimal(d.path()) + &format!("[mqtt]\nkeep_alive = \"{k}\"\n")),
            )
        };
        assert_named(
            &with("1900ms"),
            &["mqtt.keep_alive (1.9s) must be whole seconds (MQTT carries it in seconds): write 1s"],
        );
        for whole in ["2s", "1m"] {
            assert!(!with(whole).contains("keep_alive"), "{}", with(whole));
        }
    }

    #[test]
    fn a_bad_duration_is_named_by_its_key_and_value() {
        let d = tempfile::tempdir().unwrap();
        let second = "[[machines]]\nname = \"pump-3\"\ndevice = \"mic\"\nbundle = \"b\"\n\
                      section = \"pump/section_00\"\nmin_duration = \"2s\"\ncooldown = \"1m\"\n";
        let good = minimal(d.path()) + second;
        for (from, to, expected) in [
            (
                "min_duration = \"2s\"",
                "min_duration = \"forever\"",
                "machine 'pump-3': machines[1].min_duration = \"forever\" is not a duration",
            ),
            (
                "cooldown = \"1m\"",
                "cooldown = \"3 parsecs\"",
                "machine 'pump-3': machines[1].cooldown = \"3 parsecs\" is not a duration (unknown time unit",
            ),
            (
                "device = \"default\"",
                "device = \"default\"\nreopen_max = \"soon\"",
                "device 'mic': devices[0].reopen_max = \"soon\" is not a duration",
            ),
            (
                "node_id = \"n1\"",
                "node_id = \"n1\"\n[mqtt]\nreconnect_max = \"30\"",
                "mqtt.reconnect_max = \"30\" is not a duration (time unit needed",
            ),
            (
                "node_id = \"n1\"",
                "node_id = \"n1\"\n[clips]\nmax_age = 5",
                "clips.max_age = 5 is not a duration (a duration is text, in quotes)",
            ),
            (
                "node_id = \"n1\"",
                "node_id = \"n1\"\n[health]\nsilence_after = \"\"",
                "health.silence_after = \"\" is not a duration",
            ),
        ] {
            assert!(good.contains(from), "{from}");
            let text = good.replacen(from, to, 1);
            let e = Config::load_with_env(&write(d.path(), &text), [])
                .unwrap_err()
                .to_string();
            assert!(e.contains(expected), "expected '{expected}' in: {e}");
            assert!(e.contains("e.g. \"500ms\", \"30s\""), "{e}");
        }
        // Set by the environment: the variable is named.
        let env = [("SONITOR_MQTT__KEEP_ALIVE".to_string(), "soon".to_string())];
        let e = Config::load_with_env(&write(d.path(), &good), env)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("mqtt.keep_alive = \"soon\" is not a duration")
                && e.contains("set by the environment variable SONITOR_MQTT__KEEP_ALIVE"),
            "{e}"
        );
        // Every bad duration at once, not only the first.
        let text = good
            .replace("min_duration = \"3s\"", "min_duration = \"3\"")
            .replace("cooldown = \"1m\"", "cooldown = \"a while\"");
        let e = Config::load_with_env(&write(d.path(), &text), [])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("machines[0].min_duration") && e.contains("machines[1].cooldown"),
            "{e}"
        );
        // Valid durations still read as before.
        let c = Config::load_with_env(&write(d.path(), &good), []).unwrap();
        assert_eq!(c.machines[1].detector.cooldown, Duration::from_secs(60));
    }

    /// The durations checked by name are exactly the configuration's durations: one added to a struct without
    /// its key in `CHECKED_KEYS` would be refused without its key again.
    #[test]
    fn every_duration_setting_is_checked_by_name() {
        fn walk(v: &serde_json::Value, path: String, found: &mut BTreeSet<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    for (k, v) in m {
                        let sep = if path.is_empty() { "" } else { "." };
                        walk(v, format!("{path}{sep}{k}"), found);
                    }
                }
                serde_json::Value::Array(a) => {
                    for v in a {
                        walk(v, format!("{path}[]"), found);
                    }
                }
                serde_json::Value::String(s) if humantime::parse_duration(s).is_ok() => {
                    found.insert(path);
                }
                _ => {}
            }
        }
        let d = tempfile::tempdir().unwrap();
        let c = Config::load_with_env(&write(d.path(), &minimal(d.path())), []).unwrap();
        let mut found = BTreeSet::new();
        walk(
            &serde_json::to_value(&c).unwrap(),
            String::new(),
            &mut found,
        );
        let listed: BTreeSet<String> = CHECKED_KEYS
            .iter()
            .filter(|(_, e)| *e == Expect::Duration)
            .map(|(k, _)| k.to_string())
            .collect();
        assert_eq!(found, listed);
    }

    /// Root writes through permission bits, so as root (as these tests run in some containers) the directory
    /// that cannot take a write is one under a regular file; otherwise a directory without write permission.
    #[test]
    fn a_state_dir_that_cannot_take_a_write_is_named_with_what_to_do() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let (state, expected): (PathBuf, &[&str]) = if root {
            std::fs::write(d.path().join("file"), "x").unwrap();
            (
                d.path().join("file").join("state"),
                &[
                    "cannot create the directory",
                    "Not a directory",
                    "set state_dir to a writable directory",
                ],
            )
        } else {
            let dir = d.path().join("read-only");
            std::fs::create_dir(&dir).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).unwrap();
            (
                dir,
                &[
                    "cannot create a file in it",
                    "Permission denied",
                    "give the user sonitor runs as write access",
                ],
            )
        };
        let text = minimal(d.path()).replace(
            &format!("state_dir = \"{}\"", d.path().join("state").display()),
            &format!("state_dir = \"{}\"", state.display()),
        );
        let p = Config::load_with_env(&write(d.path(), &text), [])
            .unwrap()
            .disk_check(MissingDirs::Create)
            .problem
            .unwrap_or_default();
        assert_named(&p, &[&format!("state_dir {}: ", state.display())]);
        assert_named(&p, expected);
        if !root {
            assert_eq!(std::fs::read_dir(&state).unwrap().count(), 0);
            std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        // A file where the directory should be is said to be one (it said "cannot create the directory: File
        // exists"), by `run` and by `validate`.
        let file = d.path().join("a-file");
        std::fs::write(&file, "x").unwrap();
        for check in [check_writable_dir, check_creatable_dir] {
            let e = check(&file, "state_dir").unwrap_err();
            assert!(
                e.starts_with("is a file, not a directory: set state_dir to a directory"),
                "{e}"
            );
        }
        // A writable directory passes, and keeps no probe file.
        let ok = d.path().join("state");
        assert_eq!(check_writable_dir(&ok, "state_dir"), Ok(None));
        assert_eq!(std::fs::read_dir(&ok).unwrap().count(), 0);
    }

    /// `validate` writes nothing it keeps: missing state and clips directories stay missing, and one that could
    /// not be made is refused with the words `run` would meet.
    #[test]
    fn a_check_that_keeps_nothing_leaves_missing_directories_missing() {
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("state");
        let clips = d.path().join("disk2/sonitor/clips");
        // max_bytes at its least, so that the host's free space (the check of whether clips fit) plays no part.
        let text = format!(
            "{}\n[clips]\ndir = \"{}\"\nmax_bytes = 1048576\n",
            minimal(d.path()),
            clips.display()
        );
        let cfg = Config::load_with_env(&write(d.path(), &text), []).unwrap();
        let before: std::collections::BTreeSet<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        let check = cfg.disk_check(MissingDirs::Probe);
        assert_eq!(check.problem, None);
        assert!(
            check.warnings.iter().all(|w| !w.contains("clips.dir")),
            "{:?}",
            check.warnings
        );
        let after: std::collections::BTreeSet<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(after, before, "neither directory made, no probe left");
        assert!(!state.exists() && !clips.exists());
        // `run`'s check makes them.
        assert_eq!(cfg.disk_check(MissingDirs::Create).problem, None);
        assert!(state.is_dir() && clips.is_dir());
        // An existing directory is probed in place and keeps no probe file.
        assert_eq!(check_creatable_dir(&state, "state_dir"), Ok(None));
        assert_eq!(std::fs::read_dir(&state).unwrap().count(), 0);
        // Under a regular file no directory can be made (root or not): refused as `run` would refuse it.
        std::fs::write(d.path().join("a-file"), b"").unwrap();
        let under_file = d.path().join("a-file/x/state");
        let e = check_creatable_dir(&under_file, "state_dir").unwrap_err();
        assert_named(
            &e,
            &[
                "cannot create the directory",
                "Not a directory",
                "set state_dir to a writable directory",
            ],
        );
        assert_eq!(e, check_writable_dir(&under_file, "state_dir").unwrap_err());
        // The advice names the setting that chose the directory.
        let e = check_creatable_dir(&under_file, "clips.dir").unwrap_err();
        assert_named(&e, &["set clips.dir to a writable directory"]);
        assert!(!e.contains("state_dir"), "{e}");
    }

    #[test]
    fn a_clips_dir_elsewhere_that_cannot_take_a_file_is_warned_with_the_units_remedy() {
        let d = tempfile::tempdir().unwrap();
        // Under a file: no directory can be made there, root or not.
        std::fs::write(d.path().join("a-file"), b"").unwrap();
        let clips = d.path().join("a-file/clips");
        let text = format!(
            "{}\n[clips]\ndir = \"{}\"\n",
            minimal(d.path()),
            clips.display()
        );
        let check = Config::load_with_env(&write(d.path(), &text), [])
            .unwrap()
            .disk_check(MissingDirs::Create);
        assert_eq!(check.problem, None, "the alarms do not need the clips");
        let w = check.warnings.join("\n");
        assert_named(
            &w,
            &[
                &format!("clips.dir {}: ", clips.display()),
                "evidence clips will not be written there",
                &format!("ReadWritePaths={}", clips.display()),
            ],
        );
        // In the state directory (the default), the state directory's own check covers it. (max_bytes at its
        // least, so that the host's free space plays no part.)
        let in_state = format!("{}\n[clips]\nmax_bytes = 1048576\n", minimal(d.path()));
        let check = Config::load_with_env(&write(d.path(), &in_state), [])
            .unwrap()
            .disk_check(MissingDirs::Create);
        assert!(
            check.warnings.iter().all(|w| !w.contains("clips.dir")),
            "{:?}",
            check.warnings
        );
    }

    #[test]
    fn too_little_room_for_a_full_outbox_is_warned() {
        let mib = 1024 * 1024;
        let free = |bytes, inodes| FreeSpace {
            bytes,
            inodes,
            block: 4096,
            dev: 1,
        };
        let w = low_space(&free(mib, Some(1_000_000)), 10_000).unwrap();
        assert!(
            w.contains("only 1.0 MiB free")
                && w.contains(
                    "39.1 MiB: mqtt.outbox_max = 10000 messages of a 4096-byte block each"
                )
                && w.contains("lower mqtt.outbox_max"),
            "{w}"
        );
        let w = low_space(&free(1024 * mib, Some(500)), 10_000).unwrap();
        assert!(w.contains("only 500 free inodes"), "{w}");
        assert_eq!(low_space(&free(1024 * mib, Some(1_000_000)), 10_000), None);
        assert_eq!(low_space(&free(1024 * mib, None), 10_000), None);
        assert_eq!(low_space(&free(mib, None), 100), None);
    }

    #[test]
    fn a_reload_names_what_needs_a_restart() {
        let d = tempfile::tempdir().unwrap();
        let old = Config::load_with_env(&write(d.path(), &minimal(d.path())), []).unwrap();
        let mut new = old.clone();
        // What SIGHUP applies is not reported.
        new.machines[0].detector.threshold = Some(0.3);
        new.machines[0].enabled = false;
        new.mqtt.score_interval = Duration::from_secs(99);
        new.machines[0].section = "fan/section_01".into();
        new.machines[0].bundle = d.path().join("other-bundle");
        assert!(changes_needing_restart(&old, &new).is_empty());
        // What it does not apply is, by name.
        new.node_id = "other".into();
        new.mqtt.port = 1884;
        new.machines[0].channel = 1;
        let mut added = new.machines[0].clone();
        added.name = "press-2".into();
        new.machines.push(added);
        let c = changes_needing_restart(&old, &new).join("; ");
        for expected in [
            "node_id",
            "[mqtt] (other than score_interval)",
            "machine 'pump-1': device/channel",
            "new machine 'press-2'",
        ] {
            assert!(c.contains(expected), "'{expected}' not in: {c}");
        }
    }

    #[test]
    fn numbers_that_would_break_the_daemon_are_refused() {
        // Each accepted value would fail at run time: a stream reopened every 100 ms, a zero-sized device
        // buffer, keep-alive silently truncated to 16 bits (0: off), clips deleted as soon as written, an alarm
        // that can never clear.
        let d = tempfile::tempdir().unwrap();
        let text = minimal(d.path())
            .replace(
                "device = \"default\"",
                "device = \"default\"\nstall_timeout = \"0s\"\nbuffer_frames = 0\nreopen_max = \"2h\"\n\
                 sample_rate = 4294967295",
            )
            .replace("raise_k = 2", "raise_k = 2\nthreshold = 2.5\nthreshold_off = -inf")
            + "[mqtt]\nkeep_alive = \"70000s\"\nreconnect_min = \"1s\"\nreconnect_max = \"500000000000years\"\n\
               [clips]\nmax_bytes = 0\nmax_age = \"0s\"\n";
        // A device id with a space around it (review33: "does not exist", and nothing of the space).
        assert_named(
            &problems(
                d.path(),
                &minimal(d.path()).replace("device = \"default\"", "device = \"alsa:mic1 \""),
            ),
            &["device \"alsa:mic1 \" has spaces around it, which no device id has: write \"alsa:mic1\""],
        );
        assert_named(
            &problems(d.path(), &text),
            &[
                "stall_timeout (0s) must be at least 500ms",
                "buffer_frames must be at least 1",
                "sample_rate 4294967295 Hz must be between 8000 and 768000 Hz",
                "threshold_off -inf is not a number",
                "threshold 2.5 is outside (0, 2)",
                "reopen_max (7200s) must be at most 3600s",
                "mqtt.keep_alive (70000s) must be between 1s and 65535s",
                "mqtt.reconnect_max (",
                "must be at most 3600s",
                "clips.max_bytes (0) must be at least 1048576",
                "clips.max_age (0ns) must be at least 1m",
            ],
        );
        // A refused threshold is not compared with threshold_off: one problem, not a second, misleading one.
        let text = minimal(d.path()).replace(
            "raise_k = 2",
            "raise_k = 2\nthreshold = 0\nthreshold_off = 0.04",
        );
        let p = problems(d.path(), &text);
        assert!(p.contains("threshold 0 is outside (0, 2)"), "{p}");
        assert!(!p.contains("threshold_off (0.04) is above"), "{p}");
        // The defaults pass these checks.
        let p = problems(d.path(), &minimal(d.path()));
        for absent in [
            "stall_timeout",
            "buffer_frames",
            "sample_rate",
            "keep_alive",
            "clips.max",
            "threshold_off",
        ] {
            assert!(!p.contains(absent), "'{absent}' in:\n{p}");
        }
    }

    #[test]
    fn static_problems_are_all_named() {
        let d = tempfile::tempdir().unwrap();
        let text = minimal(d.path())
            .replace("device = \"mic\"", "device = \"nope\"")
            .replace(
                "raise_k = 2",
                "raise_k = 9\nthreshold = 0.5\nthreshold_off = 0.7",
            )
            .replace("name = \"pump-1\"", "name = \"pump/1\"")
            + "[metrics]\nlisten = \"0.0.0.0:9464\"\n";
        assert_named(
            &problems(d.path(), &text),
            &[
                "device 'nope' is not defined",
                "raise_k (9) <= raise_n (5)",
                "threshold_off (0.7)",
                "the name must be",
                "bundle",
                "the folder does not exist",
                "loopback",
            ],
        );
    }

    /// A bundle path that is no bundle says why: a folder that does not exist, a folder of bundles (naming the
    /// one meant), and for a relative path where it is taken from.
    #[test]
    fn a_bundle_path_that_is_no_bundle_says_why_and_where_it_looked() {
        let d = tempfile::tempdir().unwrap();
        let bundle = d.path().join("bundle");
        let text = minimal(d.path());
        let p = problems(d.path(), &text);
        assert!(
            p.contains(&format!(
                "bundle {}: the folder does not exist",
                bundle.display()
            )),
            "{p}"
        );
        assert!(!p.contains("manifest.json"), "{p}");
        assert!(!p.contains("relative path"), "{p}");
        std::fs::create_dir_all(bundle.join("default")).unwrap();
        std::fs::write(bundle.join("default/manifest.json"), "{}").unwrap();
        let p = problems(d.path(), &text);
        let meant = bundle.join("default");
        assert!(
            p.contains(&format!("did you mean {}?", meant.display())),
            "{p}"
        );
        let text = text.replace(
            &format!("bundle = \"{}\"", bundle.display()),
            "bundle = \"no/such/bundle\"",
        );
        let p = problems(d.path(), &text);
        assert!(
            p.contains("bundle no/such/bundle: the folder does not exist (a relative path, taken from the directory sonitor starts in"),
            "{p}"
        );
    }

    /// A variable of the right form that sets a key its section lacks is named as the cause (the typed read
    /// blamed the file: "sonitor.toml: unknown field `hots`").
    #[test]
    fn an_unknown_key_set_by_the_environment_names_the_variable() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), &minimal(d.path()));
        let e = Config::load_with_env(&p, [("SONITOR_MQTT__HOTS".to_string(), "x".to_string())])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("the environment variable SONITOR_MQTT__HOTS sets mqtt.hots, and [mqtt] has no key `hots`"),
            "{e}"
        );
        assert!(e.contains("host"), "{e}");
        // A nested key that exists is read as before.
        let c = Config::load_with_env(
            &p,
            [
                ("SONITOR_MQTT__HOST".to_string(), "broker".to_string()),
                (
                    "SONITOR_MQTT__TLS__CA_FILE".to_string(),
                    "/etc/ca.pem".to_string(),
                ),
            ],
        );
        assert!(c.is_ok(), "{:?}", c.err().map(|e| e.to_string()));
    }

    /// A machine's misspelt key names the key it likely means and the keys a machine has, and a missing one is
    /// named by its path. The typed read said `unknown field `raise_kk` for key `machines[0]`` without the known
    /// keys (the detector's are flattened into the machine), and `missing configuration field
    /// "machines[0]section"` for a misspelt `section`.
    #[test]
    fn a_machine_key_misspelt_or_missing_is_named_with_what_was_meant() {
        let d = tempfile::tempdir().unwrap();
        let base = minimal(d.path());
        let refused = |text: String| refusal(d.path(), &text);
        let e = refused(base.replace("section = ", "secton = "));
        assert!(
            e.contains("machine 'pump-1': machines[0] has an unknown key `secton`: did you mean `section`?"),
            "{e}"
        );
        assert!(
            e.contains("threshold_off") && e.contains("idle_below_dbfs"),
            "{e}"
        );
        // One problem for one typo: not a missing `section` besides.
        assert!(!e.contains("has no `section`"), "{e}");
        for (typo, meant) in [
            ("Raise_K", "raise_k"),
            ("raise_kk", "raise_k"),
            ("coldown", "cooldown"),
        ] {
            let e = refused(base.replace("raise_k = 2", &format!("{typo} = 2")));
            assert!(
                e.contains(&format!("unknown key `{typo}`: did you mean `{meant}`?")),
                "{e}"
            );
        }
        // A key it may mean that the machine already has is not offered.
        let e = refused(base.replace("raise_k = 2", "raise_k = 2\nraise_kk = 2"));
        assert!(
            e.contains("unknown key `raise_kk`: (a machine's keys"),
            "{e}"
        );
        let e = refused(base.replace("raise_k = 2", "loudness = 2"));
        assert!(
            e.contains("unknown key `loudness`: (a machine's keys: ")
                && !e.contains("did you mean"),
            "{e}"
        );
        let bundle_line = format!("bundle = \"{}\"\n", d.path().join("bundle").display());
        let e = refused(base.replace(&bundle_line, ""));
        assert!(
            e.contains("machine 'pump-1': machines[0] has no `bundle`, which every machine needs"),
            "{e}"
        );
        // Elsewhere the config crate's message, with the dot it leaves out of the path.
        let e = refused(base.replacen("name = \"mic\"\n", "", 1));
        assert!(
            e.contains("`devices[0].name` is missing and has no default"),
            "{e}"
        );
    }

    /// One bracket pair too few (`[machines]`) or too many (`[[mqtt]]`) is named with what to write: the typed
    /// read said "invalid type: map, expected a sequence".
    #[test]
    fn a_table_written_as_a_list_or_a_list_as_a_table_says_which_brackets() {
        let d = tempfile::tempdir().unwrap();
        let base = format!("{}[mqtt]\nenabled = false\n", minimal(d.path()));
        let refused = |text: String| refusal(d.path(), &text);
        let e = refused(base.replace("[[machines]]", "[machines]"));
        assert!(
            e.contains("[machines] is one table, and machines are a list: write [[machines]]"),
            "{e}"
        );
        assert!(!e.contains("invalid type"), "{e}");
        let e = refused(base.replace("[[devices]]", "[devices]"));
        assert!(e.contains("write [[devices]] (two brackets)"), "{e}");
        let e = refused(base.replace("[mqtt]", "[[mqtt]]"));
        assert!(
            e.contains("[[mqtt]] makes a list, and there is one mqtt section: write [mqtt]"),
            "{e}"
        );
        assert!(!e.contains("invalid type"), "{e}");
        assert!(Config::load_with_env(&write(d.path(), &base), []).is_ok());
    }

    #[test]
    fn misspellings_are_a_few_letters_added_removed_changed_or_swapped() {
        assert_eq!(edit_distance("section", "section"), 0);
        assert_eq!(edit_distance("secton", "section"), 1);
        assert_eq!(edit_distance("sectoin", "section"), 1);
        assert_eq!(edit_distance("raise_kk", "raise_k"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        let known: Vec<String> = ["raise_k", "raise_n", "name"].map(String::from).to_vec();
        assert_eq!(likely_meant("RAISE_K", &known), Some("raise_k"));
        assert_eq!(likely_meant("nmae", &known), Some("name"));
        assert_eq!(likely_meant("nm", &known), None);
        assert_eq!(likely_meant("loudness", &known), None);
    }

    /// A `SONITOR_…` variable meant for a setting but spelled so that it is not read (one `_` between levels, a
    /// key the section lacks) is refused with the spelling that is read, instead of being dropped silently.
    #[test]
    fn misspelled_environment_variables_are_named_with_the_right_spelling() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), &minimal(d.path()));
        let vars = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let e = Config::load_with_env(
            &p,
            vars(&[
                ("SONITOR_MQTT_ENABLED", "false"),
                ("SONITOR_MQTT_TLS__CA_FILE", "/etc/ca.pem"),
                ("SONITOR_NODE__ID", "n2"),
                ("SONITOR_CLIPS_HOW_MANY", "3"),
                ("SONITOR_MQT__HOST", "broker.local"),
                ("SONITOR_MACHINES__PUMP__THRESHOLD", "0.1"),
                ("SONITOR_PYTHON", "/usr/bin/python3"),
                ("SONITOR_FONT", "/usr/share/fonts/x.ttf"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert_named(
            &e,
            &[
                "SONITOR_MQTT_ENABLED is not read: write SONITOR_MQTT__ENABLED to set mqtt.enabled",
                "SONITOR_MQTT_TLS__CA_FILE is not read: write SONITOR_MQTT__TLS__CA_FILE to set mqtt.tls.ca_file",
                "SONITOR_NODE__ID is not read: write SONITOR_NODE_ID to set node_id",
                "SONITOR_CLIPS_HOW_MANY is not read: a setting of [clips] is set by SONITOR_CLIPS__<KEY>",
                "max_count",
                "SONITOR_MQT__HOST is not read: there is no section [mqt]; the environment sets the sections mqtt,",
                "SONITOR_MACHINES__PUMP__THRESHOLD is not read: machines and devices are set in the configuration \
                 file only",
            ],
        );
        assert!(!e.contains("PYTHON") && !e.contains("FONT"), "{e}");
        // Spelled right, the same settings are read.
        let c = Config::load_with_env(
            &p,
            vars(&[
                ("SONITOR_MQTT__ENABLED", "false"),
                ("SONITOR_MQTT__TLS__CA_FILE", "/etc/ca.pem"),
                ("SONITOR_PYTHON", "/usr/bin/python3"),
            ]),
        )
        .unwrap();
        assert!(!c.mqtt.enabled);
        assert_eq!(
            c.mqtt.tls.ca_file.as_deref(),
            Some(Path::new("/etc/ca.pem"))
        );
    }

    /// A device key that its source never reads (a capture setting on a file source, a file setting on a capture
    /// device) is refused, named with the device and its source, instead of being ignored.
    #[test]
    fn keys_the_source_does_not_read_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let text = minimal(d.path())
            .replace(
                "device = \"default\"\n",
                "device = \"default\"\nrealtime = false\nat_end = \"loop\"\n",
            )
            .replace(
                "[[machines]]",
                "[[devices]]\nname = \"replay\"\nsource = \"file\"\npath = \"/x.wav\"\nsample_rate = 48000\n\
                 stall_timeout = \"1s\"\nreopen_min = \"1s\"\n[[machines]]",
            );
        let e = Config::load_with_env(&write(d.path(), &text), [])
            .unwrap_err()
            .to_string();
        assert_named(
            &e,
            &[
                "device 'mic': devices[0].realtime is only read when `source = \"file\"`; this device has \
                 `source = \"capture\"`",
                "device 'mic': devices[0].at_end is only read",
                "device 'replay': devices[1].sample_rate is only read when `source = \"capture\"`; this device \
                 has `source = \"file\"` (a file is played with its own channels and sample rate): remove it",
                "device 'replay': devices[1].stall_timeout is only read",
            ],
        );
        // Keys both sources read (reopen_min) are not named.
        assert!(!e.contains("reopen_min"), "{e}");
        assert!(!e.contains("devices[1].path"), "{e}");
    }

    /// Both topic prefixes are checked alike: an empty level, a wildcard, or nothing at all would give topics
    /// that no subscriber (Home Assistant's discovery among them) matches, or that the broker refuses.
    #[test]
    fn topic_prefixes_are_checked_alike() {
        let d = tempfile::tempdir().unwrap();
        // Topics beginning with '$' are the broker's: mosquitto drops a client's publish there, silently.
        let levels = "must be one or more topic levels";
        let dollar = "must not begin with '$'";
        for (bad, says) in [
            ("", levels),
            ("/", levels),
            ("//ha", levels),
            ("home//assistant", levels),
            ("home/+", levels),
            ("#", levels),
            ("$SYS", dollar),
            ("$SYS/ha", dollar),
            ("$share/x", dollar),
        ] {
            for (table, key) in [
                ("[mqtt]\n", "mqtt.prefix"),
                (
                    "[mqtt.discovery]\nenabled = true\n",
                    "mqtt.discovery.prefix",
                ),
            ] {
                let text = format!("{}{table}prefix = \"{bad}\"\n", minimal(d.path()));
                assert_named(
                    &problems(d.path(), &text),
                    &[&format!("{key} '{bad}' {says}")],
                );
            }
        }
        // A trailing '/' is dropped where topics are made; a leading one is a legal (empty) first level, and '$'
        // is only the broker's at the very start of a topic.
        for good in ["home/assistant/", "/ha", "ha", "/$SYS", "plant/$x"] {
            let text = format!(
                "{}[mqtt]\nprefix = \"{good}\"\n[mqtt.discovery]\nenabled = true\nprefix = \"{good}\"\n",
                minimal(d.path())
            );
            let p = problems(d.path(), &text);
            assert!(!p.contains("prefix"), "{good}: {p}");
        }
    }

    /// Settings that would send files to the working directory (`/` under systemd) or name something else than a
    /// file are refused with what they are; a name too long says how long a name may be.
    #[test]
    fn an_empty_clips_dir_a_directory_for_a_file_and_a_long_name_are_named() {
        let d = tempfile::tempdir().unwrap();
        let text = format!("{}[clips]\ndir = \"\"\n", minimal(d.path()));
        assert_named(
            &problems(d.path(), &text),
            &["clips.dir is empty: leave it out for <state_dir>/clips"],
        );
        let text = format!(
            "{}[mqtt]\nusername = \"u\"\npassword_file = \"{}\"\n",
            minimal(d.path()),
            d.path().display()
        );
        assert_named(
            &problems(d.path(), &text),
            &[&format!(
                "mqtt.password_file {} is a directory, not a file",
                d.path().display()
            )],
        );
        let missing = d.path().join("nope");
        let text = format!(
            "{}[mqtt]\nusername = \"u\"\npassword_file = \"{}\"\n",
            minimal(d.path()),
            missing.display()
        );
        assert_named(
            &problems(d.path(), &text),
            &[&format!(
                "mqtt.password_file {} does not exist",
                missing.display()
            )],
        );
        let long = "p".repeat(NAME_MAX + 1);
        let text = minimal(d.path()).replace("name = \"pump-1\"", &format!("name = \"{long}\""));
        assert_named(
            &problems(d.path(), &text),
            &[&format!(
                "machine '{long}': the name must be 1 to 64 ASCII letters, digits, '-' or '_'"
            )],
        );
    }

    /// Home Assistant's mute switch mutes for `mqtt.discovery.mute`: a duration a `mute/set` command would take.
    #[test]
    fn the_discovery_mute_is_a_duration_a_mute_command_takes() {
        let d = tempfile::tempdir().unwrap();
        let with = |mute: &str| {
            format!(
                "{}[mqtt.discovery]\nenabled = true\nmute = \"{mute}\"\n",
                minimal(d.path())
            )
        };
        let c = Config::load_with_env(&write(d.path(), &with("8h")), []).unwrap();
        assert_eq!(c.mqtt.discovery.mute, Duration::from_secs(8 * 3600));
        let c = Config::load_with_env(&write(d.path(), &minimal(d.path())), []).unwrap();
        assert_eq!(c.mqtt.discovery.mute, Duration::from_secs(3600));
        assert_named(
            &problems(d.path(), &with("30s")),
            &["mqtt.discovery.mute (30s) must be between 1m (the switch's mute would end before anyone saw it on) and 366 days"],
        );
        assert_named(
            &problems(d.path(), &with("400days")),
            &[
                "mqtt.discovery.mute (400d) must be between 1m",
                "and 366 days (the longest",
            ],
        );
        let e = Config::load_with_env(&write(d.path(), &with("a shift")), [])
            .unwrap_err()
            .to_string();
        assert_named(&e, &["mqtt.discovery.mute = \"a shift\" is not a duration"]);
    }
}
