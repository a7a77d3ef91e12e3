//! MQTT publishing (DESIGN.md §6) in two parts:
//!
//! - [`Session`]: a pure state machine that decides what to publish when — on connect (status `online`, this
//!   process's [`NodeIdentity`] on `node`, retained state, then the outbox replay in order), on each acknowledgement (the next outbox messages), on
//!   a disconnect (forget in-flight bookkeeping: the outbox still has everything). It never touches the network
//!   and is unit-tested alone.
//! - [`spawn`]: the thread that owns the rumqttc client handle and drives its event loop, feeding events into
//!   the session and executing its actions; reconnects back off exponentially.
//!
//! Acknowledgement tracking: rumqttc assigns packet ids itself and reports each with an
//! `Outgoing::Publish(pkid)` event, in the order the publish requests were made. The session records, for every
//! request, which outbox message (if any) it carried, and pairs them with those events; a PUBACK for a pkid then
//! identifies the outbox message to delete. With a clean session nothing is retransmitted by rumqttc across
//! connections, so on every connect the pairing starts afresh and the outbox is replayed from its oldest message
//! (consumers dedupe on `event_id`; the retained alarm ends in the right state because the order is kept).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use rumqttc::{
    Client, ConnectionError, Event, LastWill, MqttOptions, Outgoing, Packet, QoS, Transport,
};

use crate::config::{Config, MqttConfig};
use crate::metrics::{LogBudget, Metrics};
use crate::publish::outbox::{OutMessage, Outbox};

/// What the rest of the daemon asks the publisher to do.
#[derive(Debug, Clone, PartialEq)]
pub enum ToMqtt {
    /// New messages were written to the outbox.
    OutboxChanged,
    /// The current value of a retained topic: published now (QoS 1) when `publish_now`, and republished on
    /// every connect unless a message for the topic is still waiting in the outbox.
    Retained {
        topic: String,
        payload: String,
        publish_now: bool,
    },
    /// A one-off message (score telemetry: QoS 0; not kept while disconnected).
    Transient {
        topic: String,
        payload: String,
        qos1: bool,
    },
    /// A command published on `topic` was refused for `why` (a machine not watched here): answered on its
    /// `…/refused` topic, within the one budget of answers ([`answer_refusal`]).
    Refused { topic: String, why: String },
    /// Stop: give the outbox a moment to drain, publish `stopped` and disconnect once it is acknowledged;
    /// without that acknowledgement, close the connection without DISCONNECT so that the broker publishes the
    /// last will (`offline`). Either way the retained `status` stops saying `online` ([`STOP_TIMEOUT`]).
    Shutdown,
}

/// A command received on a `…/set` topic.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// `None`: back to the configured/bundle threshold.
    Threshold {
        machine: String,
        value: Option<f64>,
    },
    /// Zero duration unmutes.
    Mute {
        machine: String,
        duration: Duration,
    },
    Enabled {
        machine: String,
        enabled: bool,
    },
}

impl Command {
    pub(crate) fn machine(&self) -> &str {
        match self {
            Command::Threshold { machine, .. }
            | Command::Mute { machine, .. }
            | Command::Enabled { machine, .. } => machine,
        }
    }

    /// The topic it is published on under `base`: `<base>/<machine>/<setting>/set`.
    pub(crate) fn topic(&self, base: &str) -> String {
        let setting = match self {
            Command::Threshold { .. } => "threshold",
            Command::Mute { .. } => "mute",
            Command::Enabled { .. } => "enabled",
        };
        format!("{base}/{}/{setting}/set", self.machine())
    }

    /// Both set the same thing of the same machine: the later one replaces the earlier.
    fn same_setting(&self, other: &Command) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
            && self.machine() == other.machine()
    }
}

/// A machine name from a command's topic, for the log: as it is when it could be a machine's name, else quoted and
/// cut short (review29: a 5000-character name from a stray publisher went into the log whole, and an empty one
/// showed as nothing).
fn shown_machine(m: &str) -> std::borrow::Cow<'_, str> {
    if crate::config::valid_name(m) {
        m.into()
    } else {
        quoted(m).into()
    }
}

/// A command as the engineer published it: `pump-1: threshold/set 0.12`, `pump-1: mute/set 2h`.
impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let machine = shown_machine(self.machine());
        match self {
            Command::Threshold { value, .. } => match value {
                Some(v) => write!(f, "{machine}: threshold/set {v:?}"),
                None => write!(f, "{machine}: threshold/set default"),
            },
            Command::Mute { duration, .. } if duration.is_zero() => {
                write!(f, "{machine}: mute/set OFF")
            }
            Command::Mute { duration, .. } => {
                write!(f, "{machine}: mute/set {}", duration_in_days(*duration))
            }
            Command::Enabled { enabled, .. } => write!(
                f,
                "{machine}: enabled/set {}",
                if *enabled { "ON" } else { "OFF" }
            ),
        }
    }
}

/// `d` as a mute command takes it, counted in days at most (`366d`, `1d 2h`, `1m 30s`): humantime's own format
/// counts in its years and months of 365.25 and 30.44 days, and wrote a mute of 366 days as `1year 18h`.
pub fn duration_in_days(d: Duration) -> String {
    let days = d.as_secs() / 86_400;
    let rest = d - Duration::from_secs(days * 86_400);
    match (days, rest.is_zero()) {
        (0, _) => humantime::format_duration(rest).to_string(),
        (_, true) => format!("{days}d"),
        (_, false) => format!("{days}d {}", humantime::format_duration(rest)),
    }
}

/// The longest mute a command may ask for. A longer one is almost certainly a typo, and its end could not be
/// shown as a date; a machine that should not be watched at all is switched off with `enabled`.
pub const MAX_MUTE: Duration = Duration::from_secs(MAX_MUTE_DAYS * 24 * 3600);
/// [`MAX_MUTE`] in days, as the messages give it.
pub const MAX_MUTE_DAYS: u64 = 366;

fn mute_too_long(p: &str) -> String {
    format!(
        "mute {p} is longer than the maximum of {MAX_MUTE_DAYS} days; use enabled OFF to stop watching a machine"
    )
}

/// `s` as a Rust string literal (control characters escaped), cut to its first 40 characters.
pub fn quoted(s: &str) -> String {
    quoted_up_to(s, 40)
}

/// `topic` as [`quoted`], whole up to 200 characters: fit to paste into a shell command.
fn shown_topic(topic: &str) -> String {
    quoted_up_to(topic, 200)
}

/// `s` as a Rust string literal, cut to its first `max` characters (`…` marks a cut).
fn quoted_up_to(s: &str, max: usize) -> String {
    let head: String = s.chars().take(max).collect();
    let cut = if s.chars().nth(max).is_some() {
        "…"
    } else {
        ""
    };
    format!("{head:?}{cut}")
}

/// A message on a command topic that is not applied ([`incoming_command`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Ignored {
    /// The log's line.
    pub line: String,
    /// Why a command was refused, for the answer on its `…/refused` topic ([`refused_topic`]); `None` for an
    /// empty message, which is no command and gets no answer.
    pub refused: Option<String>,
}

impl Ignored {
    /// `Info` for an empty message (no command: a retained one deleted), `Warn` for a command refused.
    pub fn level(&self) -> log::Level {
        if self.refused.is_some() {
            log::Level::Warn
        } else {
            log::Level::Info
        }
    }
}

/// Where the daemon answers a command it refuses: `<base>/<machine>/<setting>/refused` for a command published on
/// `<base>/<machine>/<setting>/set`. The maintenance engineer who sent it, from a dashboard or `mosquitto_pub`,
/// cannot read the daemon's log; without an answer a mistyped value (`0,05`) or machine name looked accepted and
/// simply did nothing.
pub fn refused_topic(topic: &str) -> Option<String> {
    let stem = topic.strip_suffix("/set")?;
    (!stem.is_empty()).then(|| format!("{stem}/refused"))
}

/// What to do with a message received on a command topic: the command, or why it is ignored and how loud to say
/// so. A command is applied once, when it is published: one delivered with the retain flag is a retained message
/// that the broker sends again on every connection (a `mute/set` would clear real alarms at each reconnect), so it
/// is ignored with a warning that says how to delete it. An empty payload is no command: it is how a retained
/// message is deleted, and subscribers receive the deletion.
pub fn incoming_command(
    base: &str,
    topic: &str,
    payload: &[u8],
    retain: bool,
) -> Result<Command, Ignored> {
    let payload = String::from_utf8_lossy(payload);
    if payload.trim().is_empty() {
        return Err(Ignored {
            line: format!(
                "mqtt: empty message on {}: no command (an empty message deletes a retained one)",
                shown_topic(topic)
            ),
            refused: None,
        });
    }
    let why = if retain {
        format!(
            "a retained command is not applied: commands are applied once, when published, and a retained one would \
             be applied again at every connection; publish commands without the retain flag, and delete this one \
             with `mosquitto_pub -r -n -t {}`",
            shown_topic(topic)
        )
    } else {
        match parse_command(base, topic, &payload) {
            Ok(c) => return Ok(c),
            Err(e) => e,
        }
    };
    Err(Ignored {
        line: format!("mqtt: ignored message on {}: {why}", shown_topic(topic)),
        refused: Some(why),
    })
}

/// Parses a command publish; `Err` names what is wrong (logged, and ignored).
pub fn parse_command(base: &str, topic: &str, payload: &str) -> Result<Command, String> {
    let rest = topic
        .strip_prefix(base)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(|| format!("topic {} is not under {base}", shown_topic(topic)))?;
    let parts: Vec<&str> = rest.split('/').collect();
    let [machine, what, "set"] = parts.as_slice() else {
        return Err(format!(
            "topic {} is not a command topic",
            shown_topic(topic)
        ));
    };
    let machine = machine.to_string();
    let p = payload.trim();
    if p.is_empty() {
        return Err("an empty message is no command".into());
    }
    // What a publisher sent goes into the log quoted and cut short: a payload cannot forge log lines.
    let q = quoted(p);
    match *what {
        "threshold" => {
            if p.eq_ignore_ascii_case("default") {
                return Ok(Command::Threshold {
                    machine,
                    value: None,
                });
            }
            let v: f64 = p
                .parse()
                .map_err(|_| format!("threshold {q} is not a number (or 'default')"))?;
            if let Some(why) = sonitor_core::score::threshold_problem(v) {
                return Err(format!("threshold {why}"));
            }
            Ok(Command::Threshold {
                machine,
                value: Some(v),
            })
        }
        "mute" => {
            let duration = if ["off", "false", "0"].contains(&p.to_ascii_lowercase().as_str()) {
                Duration::ZERO
            } else if let Ok(secs) = p.parse::<f64>() {
                if !(secs.is_finite() && secs >= 0.0) {
                    return Err(format!("mute {q} is not a duration"));
                }
                if secs > MAX_MUTE.as_secs_f64() {
                    return Err(mute_too_long(&q));
                }
                Duration::from_secs_f64(secs)
            } else {
                humantime::parse_duration(p)
                    .map_err(|e| format!("mute {q} is not a duration (e.g. 30m, 3600): {e}"))?
            };
            if duration > MAX_MUTE {
                return Err(mute_too_long(&q));
            }
            Ok(Command::Mute { machine, duration })
        }
        "enabled" => {
            let enabled = match p.to_ascii_lowercase().as_str() {
                "on" | "true" | "1" => true,
                "off" | "false" | "0" => false,
                _ => {
                    return Err(format!(
                        "enabled {q} must be ON or OFF (or true/false, 1/0)"
                    ))
                }
            };
            Ok(Command::Enabled { machine, enabled })
        }
        other => Err(format!("unknown command {}", quoted(other))),
    }
}

/// Which process publishes under a node's topics: announced, retained, on `<base>/node` at every connect. Two
/// daemons with one `node_id` (a configuration copied to a second device, a `sonitor run` started by hand beside
/// the service) overwrite each other's retained alarm states and mix their events under one topic tree, and with
/// one client id the broker closes either one's connection whenever the other connects; the announcement is how
/// each finds the other ([`Session::on_node_message`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NodeIdentity {
    /// Random, new at every start of the daemon.
    pub instance: String,
    pub host: String,
    /// The kernel's boot id: the same on one device until it reboots, different on a device cloned from the same
    /// image (whose host name and machine id are the same).
    #[serde(default)]
    pub boot_id: String,
    pub pid: u32,
    pub started_at: String,
    pub version: String,
}

/// The host's name, as uname(2) gives it.
fn host_name() -> Option<String> {
    // SAFETY: uname(2) fills the zeroed struct it is given; its fields are NUL-terminated arrays.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return None;
    }
    let bytes: Vec<u8> = u
        .nodename
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    Some(String::from_utf8_lossy(&bytes).trim().to_string())
}

impl NodeIdentity {
    pub fn of_this_process() -> Self {
        use std::hash::BuildHasher;
        let now = std::time::SystemTime::now();
        let nanos = now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        // A randomly keyed hash (std's SipHash keys come from the OS's random source).
        let instance =
            std::collections::hash_map::RandomState::new().hash_one((std::process::id(), nanos));
        // uname(2), not /proc/sys: a unit's ProcSubset=pid hides that.
        let host = host_name()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "unknown".into());
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|b| b.trim().to_string())
            .unwrap_or_default();
        Self {
            instance: format!("{instance:016x}"),
            host,
            boot_id,
            pid: std::process::id(),
            started_at: crate::clock::rfc3339(now, false),
            version: crate::VERSION.into(),
        }
    }
}

impl std::fmt::Display for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "host {}, boot {}, pid {}, started {}, version {}",
            quoted(&self.host),
            quoted(self.boot_id.get(..8).unwrap_or(&self.boot_id)),
            self.pid,
            quoted(&self.started_at),
            quoted(&self.version)
        )
    }
}

/// What the session wants done.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Publish {
        topic: String,
        payload: String,
        retain: bool,
        qos1: bool,
        /// The outbox message this publish carries.
        seq: Option<u64>,
    },
}

/// What a publish request carries, for pairing rumqttc's packet ids with what their PUBACKs acknowledge.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Carried {
    Nothing,
    /// An outbox message (its sequence number).
    Outbox(u64),
    /// The retained `stopped` status of a stop.
    Stopped,
    /// This process's announcement on `node`.
    Node,
}

impl Carried {
    /// The outbox message's sequence number, for an outbox message.
    fn outbox_seq(self) -> Option<u64> {
        match self {
            Carried::Outbox(seq) => Some(seq),
            Carried::Nothing | Carried::Stopped | Carried::Node => None,
        }
    }
}

/// Where the `stopped` status of a stop stands on this connection.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
enum StopState {
    #[default]
    NotSent,
    /// Handed to the client, its packet id not yet known.
    Requested,
    Sent(u16),
    Acknowledged,
}

/// A publish the session asks for; a QoS 1 one held back until fewer are in flight ([`IN_FLIGHT_MAX`]).
#[derive(Debug)]
struct Held {
    topic: String,
    payload: String,
    retain: bool,
    carried: Carried,
}

impl Held {
    /// A retained topic's value (not an outbox message, `stopped` or the announcement): the session keeps the
    /// latest of each, so a later one replaces it and a connection publishes it again.
    fn is_value(&self) -> bool {
        self.retain && self.carried == Carried::Nothing
    }
}

/// QoS 1 publishes in flight at once (handed to rumqttc and not acknowledged): the rest wait in the session, in
/// order. Under rumqttc's own limit (`set_inflight(100)`, shared with the subscriptions' packet ids), which once
/// reached makes it read no request at all: not the next publish, nor the DISCONNECT of a reconnection. A connection
/// of ten machines with Home Assistant discovery (12 retained values each) reached it at once, and against a broker
/// that acknowledged nothing the daemon stayed connected, its alarms unsent, for ever (review30).
pub const IN_FLIGHT_MAX: usize = 64;

/// The publisher's state machine (see the module documentation).
#[derive(Debug)]
pub struct Session {
    connected: bool,
    /// One entry per publish request made on this connection and not yet reported by `Outgoing::Publish`, and
    /// whether it is QoS 1.
    requested: VecDeque<(Carried, bool)>,
    /// Every QoS 1 publish sent on this connection and not yet acknowledged, by packet id: what it carried (an
    /// outbox message's sequence number, retained values, `status`, the announcement).
    unacked: HashMap<u16, Carried>,
    /// QoS 1 publishes waiting for fewer in flight, in the order they were asked for ([`IN_FLIGHT_MAX`]).
    held: VecDeque<Held>,
    /// Since when the QoS 1 publishes in flight have waited without the broker acknowledging any of them: the
    /// first was sent then, or the last acknowledgement came then ([`Self::acks_stalled_for`]).
    acks_awaited_since: Option<Instant>,
    /// The last outbox message sent on this connection.
    last_sent: Option<u64>,
    window: usize,
    retained: BTreeMap<String, String>,
    /// The retained values handed to the client on this connection, by topic: a value the broker already holds
    /// from this connection is not published again (a command that ends an alarm published the machine's whole
    /// retained group twice, once for the transition and once for the command).
    sent_retained: HashMap<String, String>,
    status_topic: String,
    stop: StopState,
    node: NodeWatch,
}

/// This process's announcement on `node` and what it has learnt from that topic.
#[derive(Debug)]
struct NodeWatch {
    topic: String,
    me: NodeIdentity,
    payload: String,
    /// The packet id of this connection's announcement, once sent.
    sent: Option<u16>,
    /// Whether the broker acknowledged an announcement of this process (on any connection).
    acknowledged: bool,
    /// The other processes seen announcing themselves, each reported once: the last [`SEEN_KEPT`] (a twin in a
    /// restart loop announces a new instance at every start).
    seen: VecDeque<String>,
    /// When another process's announcement last came.
    seen_at: Option<Instant>,
    /// Whether this process's own announcement has come back on this connection: the broker delivers what this
    /// client publishes under its node's topics (an ACL or a size limit may make it drop them in silence).
    echoed: bool,
}

/// How many other processes' instances a session remembers (each is logged when first seen).
const SEEN_KEPT: usize = 16;

/// Another process publishing under this node's topics ([`Session::on_node_message`]).
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConflict {
    pub other: NodeIdentity,
    /// Whether this process had not heard of it before (it is logged then).
    pub new: bool,
}

/// The size the `node` announcement is padded to: what configs/README.md asks the broker to let through. Its echo
/// ([`Session::own_echo`]) then also proves a message size limit that would drop this daemon's largest messages
/// absent, not only one under the announcement's own 200 bytes.
pub const NODE_PAYLOAD_BYTES: usize = 4096;

/// `me` as JSON, padded with trailing spaces (still one JSON value) to [`NODE_PAYLOAD_BYTES`].
fn padded_announcement(me: &NodeIdentity) -> String {
    let json = serde_json::to_string(me).unwrap_or_default();
    format!("{json:<NODE_PAYLOAD_BYTES$}")
}

impl Session {
    /// `window`: outbox messages in flight at once. `base`: the node's topic prefix (`<prefix>/<node_id>`).
    pub fn new(base: &str, window: usize, me: NodeIdentity) -> Self {
        Self {
            connected: false,
            requested: VecDeque::new(),
            unacked: HashMap::new(),
            held: VecDeque::new(),
            acks_awaited_since: None,
            last_sent: None,
            window: window.max(1),
            retained: BTreeMap::new(),
            sent_retained: HashMap::new(),
            status_topic: format!("{base}/status"),
            stop: StopState::NotSent,
            node: NodeWatch {
                topic: format!("{base}/node"),
                payload: padded_announcement(&me),
                me,
                sent: None,
                acknowledged: false,
                seen: VecDeque::new(),
                seen_at: None,
                echoed: false,
            },
        }
    }

    /// A message on the `node` topic (subscribed to before the announcement goes out): `Some` when it shows
    /// another process publishing under this node's topics. Certain evidence only:
    /// - another process's announcement delivered live (not as the retained value at subscription): it
    ///   connected while this one is subscribed;
    /// - another process's announcement as the retained value on a later connection of this process after the
    ///   broker had acknowledged this process's own: someone announced after it. With one client id that is
    ///   how the two see each other (never connected at once).
    ///
    /// The retained announcement found at this process's first connection is usually its own previous start's
    /// (a restart, a crash) and proves nothing. Nor does, at a later connection, a retained announcement made on
    /// this boot of this device (same boot id) by a process that is not running (`alive(pid)` false): a broker
    /// that crashed before it saved this process's announcement comes back with the previous start's. Another
    /// boot id is another device (a clone of this one's image has its host name) or this one before a reboot
    /// (only if the broker also lost the newer announcement): taken for a second daemon. Nor does a live one from a
    /// process of this boot that is not running: the previous start's own announcement, queued for its persistent
    /// session (the same client id) when it was killed before the broker delivered it back, and delivered to this
    /// start as a live message (seen under qemu, where the killed start was slow). An empty message (a deletion) or
    /// one that is not an announcement is ignored.
    pub fn on_node_message(
        &mut self,
        payload: &[u8],
        retain: bool,
        alive: &dyn Fn(u32) -> bool,
    ) -> Option<NodeConflict> {
        let other: NodeIdentity = serde_json::from_slice(payload).ok()?;
        if other.instance == self.node.me.instance {
            self.node.echoed = true;
            return None;
        }
        let same_boot = !self.node.me.boot_id.is_empty() && other.boot_id == self.node.me.boot_id;
        if same_boot && !alive(other.pid) {
            return None;
        }
        if retain && !self.node.acknowledged {
            return None;
        }
        self.node.seen_at = Some(Instant::now());
        let new = !self.node.seen.contains(&other.instance);
        if new {
            if self.node.seen.len() == SEEN_KEPT {
                self.node.seen.pop_front();
            }
            self.node.seen.push_back(other.instance.clone());
        }
        Some(NodeConflict { other, new })
    }

    /// Whether another process was seen announcing itself under this node's topics within `within`.
    pub fn another_seen(&self, within: Duration) -> bool {
        self.node.seen_at.is_some_and(|t| t.elapsed() <= within)
    }

    /// Whether this process's own announcement has come back since the connection began.
    pub fn own_echo(&self) -> bool {
        self.node.echoed
    }

    /// Where this process announces itself (`<base>/node`).
    pub fn node_topic(&self) -> &str {
        &self.node.topic
    }

    /// What this process announces on `node`.
    pub fn identity(&self) -> &NodeIdentity {
        &self.node.me
    }

    /// This process's announcement again (retained), so that a process that announced itself after it sees it
    /// live: asked for once per newly seen process, so two daemons do not answer each other for ever.
    pub fn announce(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        if self.connected {
            let (topic, payload) = (self.node.topic.clone(), self.node.payload.clone());
            self.publish(&mut out, &topic, &payload, true, true, Carried::Node);
        }
        out
    }

    pub fn connected(&self) -> bool {
        self.connected
    }

    fn publish(
        &mut self,
        out: &mut Vec<Action>,
        topic: &str,
        payload: &str,
        retain: bool,
        qos1: bool,
        carried: Carried,
    ) {
        if retain {
            self.sent_retained
                .insert(topic.to_string(), payload.to_string());
        }
        let p = Held {
            topic: topic.to_string(),
            payload: payload.to_string(),
            retain,
            carried,
        };
        if qos1 && (!self.held.is_empty() || self.in_flight() >= IN_FLIGHT_MAX) {
            // A retained value held supersedes the one of its topic held before it (the latest goes out, once).
            if p.is_value() {
                self.held.retain(|h| !(h.is_value() && h.topic == p.topic));
            }
            self.held.push_back(p);
            return;
        }
        self.send(out, p, qos1);
    }

    /// A publish handed to the client now.
    fn send(&mut self, out: &mut Vec<Action>, p: Held, qos1: bool) {
        self.requested.push_back((p.carried, qos1));
        let seq = p.carried.outbox_seq();
        out.push(Action::Publish {
            topic: p.topic,
            payload: p.payload,
            retain: p.retain,
            qos1,
            seq,
        });
    }

    /// The broker accepted the connection.
    pub fn on_connected(&mut self, outbox: &Outbox) -> Vec<Action> {
        self.connected = true;
        self.sent_retained.clear();
        self.node.sent = None;
        self.node.echoed = false;
        self.requested.clear();
        self.unacked.clear();
        self.held.clear();
        self.acks_awaited_since = None;
        self.last_sent = None;
        self.stop = StopState::NotSent;
        let mut out = Vec::new();
        let status = self.status_topic.clone();
        self.publish(&mut out, &status, "online", true, true, Carried::Nothing);
        out.extend(self.announce());
        let retained: Vec<(String, String)> = self
            .retained
            .iter()
            .filter(|(t, _)| !waits_behind(t, outbox))
            .map(|(t, p)| (t.clone(), p.clone()))
            .collect();
        for (t, p) in retained {
            self.publish(&mut out, &t, &p, true, true, Carried::Nothing);
        }
        out.extend(self.pump(outbox));
        out
    }

    /// The connection was lost (or could not be made).
    pub fn on_disconnected(&mut self) {
        self.connected = false;
        self.sent_retained.clear();
        self.node.sent = None;
        self.requested.clear();
        self.unacked.clear();
        self.held.clear();
        self.acks_awaited_since = None;
        self.last_sent = None;
        self.stop = StopState::NotSent;
    }

    /// rumqttc reports the packet id of the next publish request it sent.
    pub fn on_outgoing_publish(&mut self, pkid: u16) {
        let Some((carried, _)) = self.requested.pop_front() else {
            return;
        };
        if pkid == 0 {
            return;
        }
        if self.unacked.is_empty() {
            self.acks_awaited_since = Some(Instant::now());
        }
        self.unacked.insert(pkid, carried);
        match carried {
            Carried::Stopped => self.stop = StopState::Sent(pkid),
            Carried::Node => self.node.sent = Some(pkid),
            Carried::Outbox(_) | Carried::Nothing => {}
        }
    }

    /// The last publishes asked for, `unsent`, were not handed to the client (its queue was full): the QoS 1
    /// ones wait again, first in line and in their order, for [`Self::release`]; the QoS 0 ones (scores, answers)
    /// are lost. Dropped instead, those taken from the held ones left a gap before the rest (an event's `end`
    /// before its `start`), and with none in flight nothing released them again (review31).
    pub fn unsend(&mut self, unsent: Vec<Action>) {
        let carried: Vec<Option<(Carried, bool)>> =
            unsent.iter().map(|_| self.requested.pop_back()).collect();
        for (action, carried) in unsent.into_iter().rev().zip(carried) {
            let Action::Publish {
                topic,
                payload,
                retain,
                qos1,
                ..
            } = action;
            if let Some((carried, true)) = carried.filter(|_| qos1) {
                self.held.push_front(Held {
                    topic,
                    payload,
                    retain,
                    carried,
                });
            }
        }
    }

    /// The broker acknowledged outbox message `acked`: where it was the last one waiting for its retained topic,
    /// and the value kept for that topic is another (set while it waited, which kept that value from going out
    /// then, out of order), that value goes out now. A machine put back by a reload while the deletions of its
    /// topics waited (the broker away) had its state, threshold and entities wiped by them until a reconnection.
    ///
    /// A machine's `state`, held back while its `alarm` transitions wait ([`waits_behind`]), goes out after the last
    /// of them.
    pub fn outbox_acked(&mut self, acked: &OutMessage, outbox: &Outbox) -> Vec<Action> {
        let mut out = Vec::new();
        if !self.connected || !acked.retain || outbox.has_topic(&acked.topic) {
            return out;
        }
        if let Some(kept) = self
            .retained
            .get(&acked.topic)
            .filter(|kept| **kept != acked.payload)
            .cloned()
        {
            self.publish(&mut out, &acked.topic, &kept, true, true, Carried::Nothing);
        }
        if let Some(machine) = acked.topic.strip_suffix("/alarm") {
            let state = format!("{machine}/state");
            if let Some(kept) = self
                .retained
                .get(&state)
                .filter(|kept| self.sent_retained.get(&state) != Some(*kept))
                .filter(|_| !waits_behind(&state, outbox))
                .cloned()
            {
                self.publish(&mut out, &state, &kept, true, true, Carried::Nothing);
            }
        }
        out
    }

    /// The broker acknowledged `pkid`; returns the outbox message it carried.
    pub fn on_puback(&mut self, pkid: u16) -> Option<u64> {
        if self.stop == StopState::Sent(pkid) {
            self.stop = StopState::Acknowledged;
        }
        if self.node.sent == Some(pkid) {
            self.node.sent = None;
            self.node.acknowledged = true;
        }
        let carried = self.unacked.remove(&pkid)?;
        self.acks_awaited_since = (!self.unacked.is_empty()).then(Instant::now);
        carried.outbox_seq()
    }

    /// The publishes held back for fewer in flight ([`IN_FLIGHT_MAX`]) that may go now, in order: after each
    /// acknowledgement.
    pub fn release(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        while self.connected && self.in_flight() < IN_FLIGHT_MAX {
            let Some(h) = self.held.pop_front() else {
                break;
            };
            self.send(&mut out, h, true);
        }
        out
    }

    /// How long the QoS 1 publishes in flight have waited without any acknowledgement: `None` when none waits.
    pub fn acks_stalled_for(&self) -> Option<Duration> {
        self.acks_awaited_since.map(|t| t.elapsed())
    }

    /// QoS 1 publishes held back for fewer in flight.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// QoS 1 publishes handed to the client and not acknowledged.
    pub fn in_flight(&self) -> usize {
        self.unacked.len() + self.requested.iter().filter(|(_, qos1)| *qos1).count()
    }

    /// Outbox messages sent and not acknowledged, handed to the client, or held: what [`Self::pump`]'s window
    /// counts.
    fn outbox_in_flight(&self) -> usize {
        self.unacked
            .values()
            .chain(self.requested.iter().map(|(c, _)| c))
            .chain(self.held.iter().map(|h| &h.carried))
            .filter(|c| matches!(c, Carried::Outbox(_)))
            .count()
    }

    /// A stop: publishes the retained status `stopped` (QoS 1), once per connection, when connected. The
    /// retained values held for fewer in flight are dropped first (the next start publishes them all): `stopped`
    /// waited behind them, and a large node's stop ran out of time (review31).
    pub fn stop(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        if self.connected && self.stop == StopState::NotSent {
            self.held.retain(|h| !h.is_value());
            let status = self.status_topic.clone();
            self.publish(&mut out, &status, "stopped", true, true, Carried::Stopped);
            self.stop = StopState::Requested;
        }
        out
    }

    /// Whether `stopped` was handed to the client on this connection.
    pub fn stop_requested(&self) -> bool {
        self.stop != StopState::NotSent
    }

    /// Whether the broker acknowledged `stopped`: a clean DISCONNECT (which discards the last will) may follow.
    pub fn stop_acknowledged(&self) -> bool {
        self.stop == StopState::Acknowledged
    }

    /// Sends the next outbox messages, as many as the window allows.
    pub fn pump(&mut self, outbox: &Outbox) -> Vec<Action> {
        let mut out = Vec::new();
        if !self.connected {
            return out;
        }
        while self.outbox_in_flight() < self.window {
            let Some(r) = outbox.next_after(self.last_sent) else {
                break;
            };
            let (topic, payload, retain, seq) = (
                r.msg.topic.clone(),
                r.msg.payload.clone(),
                r.msg.retain,
                r.seq,
            );
            self.last_sent = Some(seq);
            self.publish(
                &mut out,
                &topic,
                &payload,
                retain,
                true,
                Carried::Outbox(seq),
            );
        }
        out
    }

    /// Remembers a retained topic's value; publishes it now when asked and connected, unless messages for the
    /// topic still wait in the outbox (their replay brings the topic up to date, in order), or this connection
    /// already published that value for it (the broker holds it). An empty value (a
    /// deleted topic, a machine removed at a reload) is forgotten: nothing is published for it at a connection.
    pub fn set_retained(
        &mut self,
        topic: String,
        payload: String,
        publish_now: bool,
        outbox: &Outbox,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        if publish_now
            && self.connected
            && !waits_behind(&topic, outbox)
            && self.sent_retained.get(&topic) != Some(&payload)
        {
            self.publish(&mut out, &topic, &payload, true, true, Carried::Nothing);
        }
        if payload.is_empty() {
            self.retained.remove(&topic);
        } else {
            self.retained.insert(topic, payload);
        }
        out
    }

    /// A one-off message, only when connected.
    pub fn transient(&mut self, topic: &str, payload: &str, qos1: bool) -> Vec<Action> {
        let mut out = Vec::new();
        if self.connected {
            self.publish(&mut out, topic, payload, false, qos1, Carried::Nothing);
        }
        out
    }
}

/// Whether a retained `topic` waits for outbox messages to go out first: its own, and for a machine's `state`, its
/// `alarm` transitions. The state is the machine's of now; published at a reconnection before the outbox replayed
/// the transitions of an alarm raised and ended during the outage, it said OFF while the replayed `alarm` said ON,
/// and Home Assistant showed the alarm's attributes contradicting it (review26).
fn waits_behind(topic: &str, outbox: &Outbox) -> bool {
    outbox.has_topic(topic)
        || topic
            .strip_suffix("/state")
            .is_some_and(|machine| outbox.has_topic(&format!("{machine}/alarm")))
}

/// The largest packet read from the broker. The daemon subscribes only to its command topics, whose payloads are
/// a few bytes; a larger packet ends the connection (rumqttc cannot skip it), and one retained on a command topic
/// ended every connection until it was deleted by hand. So the limit is far above any command: one that large is
/// read and refused by name ([`incoming_command`]), and only what is larger still cuts the connection.
const MAX_INCOMING: usize = 1024 * 1024;
/// The largest packet sent: states and events are a few hundred bytes, discovery configurations about 1 KB (a
/// model_id is at most 512 bytes).
pub(crate) const MAX_OUTGOING: usize = 10 * 1024;

/// The MQTT client id: `mqtt.client_id`, else `sonitor-<node_id>`.
pub fn client_id(cfg: &Config) -> String {
    cfg.mqtt
        .client_id
        .clone()
        .unwrap_or_else(|| format!("sonitor-{}", cfg.node_id))
}

/// rumqttc options from the configuration (client id, LWT, credentials, TLS).
pub fn options(cfg: &Config) -> anyhow::Result<MqttOptions> {
    let q: &MqttConfig = &cfg.mqtt;
    let mut o = MqttOptions::new(client_id(cfg), q.host.clone(), q.port);
    o.set_keep_alive(q.keep_alive);
    // A persistent session: the broker keeps this client's command subscriptions and queues the commands
    // published while it is away (a restart, a network break), which it delivers at the reconnection. With a clean
    // session, an `enabled/set` a PLC sent during a restart was acknowledged by the broker and lost without a trace
    // (review26). What this client publishes is not affected: the outbox replays it at every connection.
    o.set_clean_session(false);
    o.set_inflight(100);
    o.set_max_packet_size(MAX_INCOMING, MAX_OUTGOING);
    o.set_last_will(LastWill::new(
        format!("{}/status", cfg.topic_base()),
        "offline",
        QoS::AtLeastOnce,
        true,
    ));
    if let Some(user) = &q.username {
        let password = match (&q.password, &q.password_file) {
            (Some(p), _) => p.clone(),
            (None, Some(f)) => password_of_file(&std::fs::read_to_string(f).map_err(|e| {
                let hint = sonitor_core::regular_file::denied_hint(&e, f);
                anyhow::anyhow!("mqtt.password_file {}: {e}{hint}", f.display())
            })?)
            .map_err(|why| anyhow::anyhow!("mqtt.password_file {}: {why}", f.display()))?,
            (None, None) => String::new(),
        };
        o.set_credentials(user.clone(), password);
    }
    if q.tls.enabled {
        o.set_transport(Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(Arc::new(tls_config(q)?)),
        ));
    }
    Ok(o)
}

/// The password a password file holds: its one line, without the line end. An empty file, or one of several
/// lines (a file of `KEY=value` lines, or a password and a note), is refused: the broker would get the whole text
/// as the password and refuse the connection, which says nothing of why.
fn password_of_file(text: &str) -> Result<String, &'static str> {
    let password = text.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        Err("the file is empty; it must hold the password on one line")
    } else if password.contains(['\n', '\r']) {
        Err("the file holds several lines; it must hold the password alone, on one line")
    } else {
        Ok(password.to_string())
    }
}

/// Whether a DER certificate says it is a CA's: its basicConstraints extension with `cA` TRUE (`Some(true)`), the
/// extension without it (`Some(false)`), or no such extension (`None`: an X.509 v1 certificate, which says
/// nothing). A plain byte search: the extension's OID, then within its few bytes the SEQUENCE that holds the flag.
fn says_ca(der: &[u8]) -> Option<bool> {
    const OID: [u8; 5] = [0x06, 0x03, 0x55, 0x1d, 0x13];
    let at = der.windows(OID.len()).position(|w| w == OID)? + OID.len();
    let rest = &der[at..der.len().min(at + 16)];
    Some(
        rest.windows(5)
            .any(|w| w[0] == 0x30 && w[2] == 0x01 && w[3] == 0x01 && w[4] != 0x00),
    )
}

/// A warning for a `ca_file` whose certificates all say they are not a CA's (basicConstraints CA:FALSE): most
/// likely the broker's own certificate, which fails every connection with `UnknownIssuer`.
pub fn ca_file_warning(q: &MqttConfig) -> Option<String> {
    let path = q.tls.ca_file.as_ref().filter(|_| q.tls.enabled)?;
    let pem = std::fs::read(path).ok()?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .filter_map(Result::ok)
        .collect();
    (!certs.is_empty() && certs.iter().all(|c| says_ca(c.as_ref()) == Some(false))).then(|| {
        format!(
            "mqtt.tls.ca_file {}: its certificate is not a CA's (basicConstraints CA:FALSE), as a broker's own \
             certificate is not: the connection then fails with `UnknownIssuer`; give the certificate of the CA \
             that signed the broker's",
            path.display()
        )
    })
}

/// A rustls client configuration on the `ring` provider (no aws-lc build), with the configured CA (default:
/// the system bundle) and optional client certificate.
pub fn tls_config(q: &MqttConfig) -> anyhow::Result<rustls::ClientConfig> {
    use anyhow::Context;
    let ca_path = q
        .tls
        .ca_file
        .clone()
        .unwrap_or_else(|| "/etc/ssl/certs/ca-certificates.crt".into());
    let read_pem = |p: &std::path::Path| -> anyhow::Result<Vec<u8>> {
        std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
    };
    let mut roots = rustls::RootCertStore::empty();
    let ca = read_pem(&ca_path)?;
    for cert in rustls_pemfile::certs(&mut ca.as_slice()) {
        let cert = cert.with_context(|| format!("{}: not PEM certificates", ca_path.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("{}: unusable CA certificate", ca_path.display()))?;
    }
    if roots.is_empty() {
        anyhow::bail!("{}: no CA certificate found", ca_path.display());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots);
    let config = match (&q.tls.client_cert, &q.tls.client_key) {
        (Some(cert), Some(key)) => {
            let certs = rustls_pemfile::certs(&mut read_pem(cert)?.as_slice())
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("{}: not PEM certificates", cert.display()))?;
            let key_der = rustls_pemfile::private_key(&mut read_pem(key)?.as_slice())
                .with_context(|| format!("{}: not a PEM key", key.display()))?
                .ok_or_else(|| anyhow::anyhow!("{}: no private key found", key.display()))?;
            builder
                .with_client_auth_cert(certs, key_der)
                .context("client certificate and key do not match")?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(config)
}

/// Starts the publisher thread. Commands received on `…/+/…/set` go to `commands`. With a `beat`, the thread
/// turns its loop at least that often, idle or not, and counts each turn (`Metrics::mqtt_beats`), so that the
/// watchdog sees it is not stuck.
pub fn spawn(
    cfg: &Config,
    outbox: Arc<Mutex<Outbox>>,
    rx: Receiver<ToMqtt>,
    commands: Sender<Command>,
    metrics: Arc<Metrics>,
    beat: Option<Duration>,
) -> anyhow::Result<JoinHandle<()>> {
    let opts = options(cfg)?;
    let base = cfg.topic_base();
    let mut q = cfg.mqtt.clone();
    // The id in use, for the messages.
    q.client_id = Some(client_id(cfg));
    let (client, mut connection) = Client::new(opts, 4096);
    connection
        .eventloop
        .network_options
        .set_connection_timeout(10);
    // rumqttc's event loop runs in a thread of its own, blocked until the network, a request or the keep-alive
    // timer has something, so that the publisher can wait on both the daemon and the broker at once. Polling the
    // event loop 100 ms at a time instead (to look at the daemon's requests in between) was 10 wake-ups a second:
    // a paced one-machine daemon's largest cost after the work itself. After a connection error the poller waits
    // for `resume`: the publisher keeps the back-off.
    let (polled_tx, polled) = crossbeam_channel::bounded::<Polled>(64);
    let (resume, resume_rx) = crossbeam_channel::bounded::<()>(1);
    std::thread::Builder::new()
        .name("mqtt-poll".into())
        .spawn(move || loop {
            // Err: every client handle is gone, the publisher has ended.
            let Ok(event) = connection.recv() else { return };
            let failed = event.is_err();
            // A message too large to read, queued for this client's persistent session, would end every
            // connection: the next one starts a clean session, which drops it (the publisher then reconnects at
            // once with a persistent one).
            let purge = event.as_ref().is_err_and(oversized);
            if matches!(event, Ok(Event::Incoming(Packet::ConnAck(_)))) {
                connection.eventloop.mqtt_options.set_clean_session(false);
            }
            if polled_tx.send(event).is_err() || (failed && resume_rx.recv().is_err()) {
                return;
            }
            if failed {
                forget_last_connection(&mut connection.eventloop);
                if purge {
                    connection.eventloop.mqtt_options.set_clean_session(true);
                }
            }
        })?;
    let broker = Broker {
        client,
        polled,
        resume,
    };
    let handle = std::thread::Builder::new()
        .name("mqtt".into())
        .spawn(move || run(broker, q, base, outbox, rx, commands, metrics, beat))?;
    Ok(handle)
}

/// What rumqttc keeps of a connection that ended, dropped before the next: the publisher matches each PUBACK to
/// the outbox message it sent by the order of rumqttc's `Outgoing::Publish` events, from an empty list at each
/// connection, and replays what waits from the outbox (whatever the broker's session kept). rumqttc would send first, on the new
/// connection, the requests made after the error was read and before the publisher knew of it (its channel is
/// drained into `pending` only at the error), and yield the `Outgoing` events of writes that failed: every
/// acknowledgement after them matched the wrong message (one deleted from the outbox undelivered, another never
/// deleted and replayed later, out of order). A packet id left in collision (an acknowledgement that never came)
/// is dropped too: rumqttc keeps it across connections, and every later connection ended in its timeout.
fn forget_last_connection(el: &mut rumqttc::EventLoop) {
    el.clean();
    el.pending.clear();
    el.state.events.clear();
    el.state.collision = None;
}

/// One event of rumqttc's event loop, or the connection error that ended a connection.
type Polled = Result<Event, ConnectionError>;

/// The publisher's side of the connection: the client handle, the events of the poller thread, and the signal
/// that lets it reconnect after an error.
struct Broker {
    client: Client,
    polled: Receiver<Polled>,
    resume: Sender<()>,
}

fn lock(o: &Mutex<Outbox>) -> std::sync::MutexGuard<'_, Outbox> {
    o.lock().unwrap_or_else(|e| e.into_inner())
}

#[allow(clippy::too_many_arguments)]
fn run(
    broker: Broker,
    q: MqttConfig,
    base: String,
    outbox: Arc<Mutex<Outbox>>,
    rx: Receiver<ToMqtt>,
    commands: Sender<Command>,
    metrics: Arc<Metrics>,
    beat: Option<Duration>,
) {
    let Broker {
        client,
        polled,
        resume,
    } = broker;
    let mut session = Session::new(&base, 32, NodeIdentity::of_this_process());
    let node = session.node_topic().to_string();
    let mut backoff = q.reconnect_min;
    let mut retry_at: Option<Instant> = None;
    let mut shutdown_deadline: Option<Instant> = None;
    let mut last_error = String::new();
    // The wait the log named last: a failure that repeats is logged again only when the wait grows, so the
    // log's last line names the wait in force ("retrying in 1s" stood for half a minute of silence at 32 s).
    let mut last_wait_logged = Duration::ZERO;
    let mut connected_at: Option<Instant> = None;
    let endpoint = format!("{}:{}", q.host, q.port);
    let client_id = q.client_id.clone().unwrap_or_default();
    let mut command_log = CommandLog::new();
    let mut answers = refusal_budget();
    let mut waiting = Waiting::default();
    // Connections closed by the broker soon after it accepted them, in a row.
    let mut short_lived = 0u32;
    // The stop's one try to reach the broker, made ([`STOP_TIMEOUT`]).
    let mut stop_retry = false;
    // The next connection is the clean one that drops an oversized message queued for this client ([`oversized`]);
    // once it is made, this daemon ends it itself and reconnects at once with its persistent session. Set by an
    // oversized message's error and cleared only by a connection, as the poller's clean-session flag is: cleared by
    // another error (the clean try failing), the next connection was clean all the same, taken for the persistent
    // one, and the commands sent while the daemon was next away were lost (review30).
    let mut purging = false;
    // This daemon ended the connection itself (the clean one above, or one whose acknowledgements stalled): the
    // next follows at once.
    let mut own_disconnect = false;
    // A broker that takes the QoS 1 messages and acknowledges none of them for this long: reconnected, which sends
    // them again.
    let ack_stall = (q.keep_alive * 3).max(ACK_STALL_MIN);
    // The probe on this daemon's command topics ([`PROBE_MACHINE`]) and whether it came back on this connection.
    let probe = format!("{base}/{PROBE_MACHINE}/mute/set");
    let mut probe_back = false;

    // No wait longer than the beat while a watchdog looks at the turns.
    let at_most = |d: Duration| beat.map_or(d, |b| d.min(b));
    loop {
        metrics.mqtt_beats.inc();
        crate::fault::hang("mqtt");
        // 1. Requests from the daemon.
        loop {
            match rx.try_recv() {
                Ok(ToMqtt::OutboxChanged) => {
                    let a = session.pump(&lock(&outbox));
                    execute(&client, &mut session, a, &metrics);
                }
                Ok(ToMqtt::Retained {
                    topic,
                    payload,
                    publish_now,
                }) => {
                    let a = session.set_retained(topic, payload, publish_now, &lock(&outbox));
                    execute(&client, &mut session, a, &metrics);
                }
                Ok(ToMqtt::Transient {
                    topic,
                    payload,
                    qos1,
                }) => {
                    // A score or an event's passing message is not kept for a later connection: counted.
                    if !session.connected() {
                        metrics.mqtt_dropped.inc();
                    }
                    let a = session.transient(&topic, &payload, qos1);
                    execute(&client, &mut session, a, &metrics);
                }
                Ok(ToMqtt::Refused { topic, why }) => {
                    answer_refusal(&mut answers, &client, &mut session, &metrics, &topic, &why)
                }
                Ok(ToMqtt::Shutdown) | Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    if shutdown_deadline.is_none() {
                        shutdown_deadline = Instant::now().checked_add(STOP_TIMEOUT);
                    }
                    break;
                }
                Err(crossbeam_channel::TryRecvError::Empty) => break,
            }
        }
        {
            let o = lock(&outbox);
            metrics.outbox_depth.set(o.len() as u64);
            metrics.outbox_dropped.set(o.dropped());
            metrics.outbox_unpersisted.set(o.unpersisted());
            metrics.outbox_memory_only.set(o.memory_only_len() as u64);
        }
        metrics.mqtt_connected.set(u64::from(session.connected()));
        // What waits for fewer in flight goes as room allows: after a PUBACK (each event comes back here), or
        // what a full client queue sent back.
        let a = session.release();
        execute(&client, &mut session, a, &metrics);

        // 2. Shutting down. The retained `status` must not say `online` once the daemon has gone, whatever the
        //    outbox still holds (what it holds waits on disk for the next start): `stopped` goes out once the
        //    outbox has drained, or STOP_ACK_WAIT before the deadline if it has not, and a clean DISCONNECT
        //    follows its PUBACK. A DISCONNECT makes the broker discard the last will, so without that PUBACK by
        //    the deadline the connection is dropped without one, and the broker publishes the will `offline`.
        if let Some(deadline) = shutdown_deadline {
            if !session.connected() {
                // Cut off from the broker at the stop (waiting to reconnect): one more try, at once, to leave
                // `stopped`. A broker that was itself restarted keeps `online` retained from before (it publishes
                // no will for the connections its own stop closes), and with the daemon gone nothing else would
                // ever correct it. A try still under way when the deadline comes ends with the process: the
                // broker then publishes this connection's will, `offline`.
                if retry_at.is_some() && !stop_retry {
                    stop_retry = true;
                    retry_at = None;
                    let _ = resume.try_send(());
                } else if retry_at.is_some() {
                    // The stop's try failed, and said why (below).
                    return;
                } else if Instant::now() >= deadline {
                    // A connection still being made (a broker that accepts TCP and does not answer): said, not a
                    // stop silent about `stopped` (review29).
                    log::warn!(
                        "mqtt: {endpoint}: no connection to the broker within {STOP_TIMEOUT:?} of the stop to \
                         publish `stopped` (the retained status stays as the broker last had it; alarm messages \
                         wait in the outbox)"
                    );
                    return;
                }
            }
            if session.stop_acknowledged() {
                disconnect(&client, &polled);
                return;
            }
            let now = Instant::now();
            if now >= deadline {
                log::warn!(
                    "mqtt: the broker has not acknowledged the status `stopped` within {STOP_TIMEOUT:?} of the stop; \
                     closing the connection without DISCONNECT, so that it publishes the last will `offline`"
                );
                // No DISCONNECT is sent. The socket closes when the poller thread next wakes (rumqttc's event loop
                // holds its own request sender, so dropping the client does not end it) or, at the latest, when
                // the process exits right after the stop: the broker then publishes the will.
                return;
            }
            if !session.stop_requested()
                && (lock(&outbox).is_empty()
                    || deadline.saturating_duration_since(now) <= STOP_ACK_WAIT)
            {
                let a = session.stop();
                execute(&client, &mut session, a, &metrics);
            }
        }

        // 3. Waiting before a reconnect attempt: asleep until it is due or the daemon asks for something (each
        //    request comes back through the top of the loop, which keeps the outbox metrics current).
        if let Some(at) = retry_at {
            let now = Instant::now();
            if now < at {
                match rx.recv_timeout(at_most(at - now)) {
                    Ok(m) => {
                        // Remember retained values while waiting; drop transient ones.
                        match m {
                            ToMqtt::Retained { topic, payload, .. } => {
                                session.set_retained(topic, payload, false, &lock(&outbox));
                            }
                            ToMqtt::Shutdown => {
                                shutdown_deadline = Instant::now().checked_add(STOP_TIMEOUT);
                            }
                            ToMqtt::Transient { .. } => metrics.mqtt_dropped.inc(),
                            // No one to answer while the broker is away.
                            ToMqtt::OutboxChanged | ToMqtt::Refused { .. } => {}
                        }
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
                    Err(_) => {}
                }
                continue;
            }
            retry_at = None;
            // The poller reconnects now.
            let _ = resume.try_send(());
        }

        // The broker delivers this client's own announcement back (it subscribes to it): without it, the broker
        // may be dropping what this client publishes, in silence under MQTT 3.1.1 (a denied publish is
        // acknowledged all the same), alarms included.
        if let Some(t) = connected_at {
            let missing =
                session.connected() && !session.own_echo() && t.elapsed() >= OWN_ECHO_WAIT;
            if missing && metrics.mqtt_echo_missing.get() == 0 {
                log::error!(
                    "mqtt: {endpoint}: the broker has not delivered this daemon's own announcement ({}) back within \
                     {} s of connecting: it may drop what this client publishes or reads under {base}/ (an ACL \
                     that denies it, a message size limit under the announcement's {NODE_PAYLOAD_BYTES} bytes), \
                     and the alarms with it, while acknowledging them; \
                     its log says (mosquitto: `Denied PUBLISH`). See configs/README.md, \"Broker permissions\"",
                    session.node_topic(),
                    OWN_ECHO_WAIT.as_secs()
                );
            }
            metrics.mqtt_echo_missing.set(u64::from(missing));
            let unread = session.connected() && !probe_back && t.elapsed() >= OWN_ECHO_WAIT;
            if unread && metrics.mqtt_commands_unread.get() == 0 {
                log::error!(
                    "mqtt: {endpoint}: the broker has not delivered this daemon's probe on its command topics \
                     ({probe}, an empty message) back within {} s of connecting: commands sent to it do not \
                     reach it (an ACL must let it read and write {base}/+/+/set); its log says. See \
                     configs/README.md, \"Broker permissions\"",
                    OWN_ECHO_WAIT.as_secs()
                );
            }
            metrics.mqtt_commands_unread.set(u64::from(unread));
            // Connected, the pings answered, and the alarm messages taken but never acknowledged (review29: a
            // broken broker or proxy; they waited for ever, `status` saying connected).
            if let Some(waited) = session.acks_stalled_for().filter(|w| *w >= ack_stall) {
                if !own_disconnect && client.try_disconnect().is_ok() {
                    own_disconnect = true;
                    metrics.mqtt_ack_stalls.inc();
                    log::error!(
                        "mqtt: {endpoint}: the broker has acknowledged none of the {} message(s) sent to it for {} \
                         s ({} more wait to be sent; {} alarm message(s) in the outbox); reconnecting, which sends \
                         them again (a broker that takes messages and never acknowledges them is faulty: its log \
                         says)",
                        session.in_flight(),
                        waited.as_secs(),
                        session.held(),
                        lock(&outbox).len()
                    );
                }
            }
        }

        command_log.flush();
        waiting.flush(&commands);

        // 4. Wait for the broker or the daemon, whichever comes first (a request is taken in step 1). Nothing else
        //    is due before the shutdown deadline; the connection timeout (10 s) bounds a connection attempt.
        // Commands held back for the daemon's queue go in as it empties.
        let wait = if shutdown_deadline.is_some() || !waiting.held.is_empty() {
            Duration::from_millis(50)
        } else {
            Duration::from_secs(10)
        };
        let mut ready = crossbeam_channel::Select::new();
        let from_broker = ready.recv(&polled);
        // Once shutting down, the daemon's side may be closed, and a closed channel is always ready.
        if shutdown_deadline.is_none() {
            ready.recv(&rx);
        }
        let event = match ready.ready_timeout(at_most(wait)) {
            Ok(i) if i == from_broker => match polled.try_recv() {
                Ok(event) => event,
                Err(crossbeam_channel::TryRecvError::Empty) => continue,
                Err(crossbeam_channel::TryRecvError::Disconnected) => return,
            },
            Ok(_) | Err(_) => continue,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_)))
                if std::mem::take(&mut purging) && client.try_disconnect().is_ok() =>
            {
                log::warn!(
                    "mqtt: connected to {endpoint} with a clean session, which drops the oversized message the \
                     broker held for this client, and with it every command queued for it behind that message or \
                     while it was away (lost: their senders get no answer); reconnecting at once with the \
                     persistent session"
                );
                own_disconnect = true;
            }
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                log::info!("mqtt: connected to {endpoint} ({:?})", ack.code);
                connected_at = Some(Instant::now());
                last_error.clear();
                metrics.mqtt_connects.inc();
                // Subscribed before the announcement goes out, so that what the broker retained there arrives
                // first (see `Session::on_node_message`).
                let _ = client.try_subscribe(node.clone(), QoS::AtLeastOnce);
                let a = session.on_connected(&lock(&outbox));
                execute(&client, &mut session, a, &metrics);
                for what in ["threshold", "mute", "enabled"] {
                    let _ = client.try_subscribe(format!("{base}/+/{what}/set"), QoS::AtLeastOnce);
                }
                // After the subscriptions, which the broker takes in order: an empty message (no command) that
                // must come back, or commands do not reach this daemon (an ACL that lets it write but not read
                // its command topics: review29, every command lost without a word). QoS 0, so that it goes at once
                // and not behind the QoS 1 messages held for fewer in flight (against a broker that acknowledged
                // nothing it was held, and the daemon blamed an ACL).
                probe_back = false;
                let a = session.transient(&probe, "", false);
                execute(&client, &mut session, a, &metrics);
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                // What was held back for fewer in flight goes at the top of the loop, next.
                if let Some(seq) = session.on_puback(ack.pkid) {
                    let mut o = lock(&outbox);
                    let acked = o.ack(seq);
                    let mut a = acked.map_or_else(Vec::new, |m| session.outbox_acked(&m, &o));
                    a.extend(session.pump(&o));
                    drop(o);
                    execute(&client, &mut session, a, &metrics);
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) if p.topic == node => {
                // Under the shipped unit (`ProtectProc=invisible`) another user's process looks not running: a
                // `sonitor run` by hand beside the service is then named by that one, not by the service.
                let alive = |pid: u32| std::path::Path::new(&format!("/proc/{pid}")).exists();
                let conflict = session.on_node_message(&p.payload, p.retain, &alive);
                if session.own_echo() && metrics.mqtt_echo_missing.get() == 1 {
                    metrics.mqtt_echo_missing.set(0);
                    log::info!(
                        "mqtt: the broker delivered this daemon's own announcement back at last"
                    );
                }
                if let Some(seen) = conflict {
                    metrics.mqtt_node_conflicts.inc();
                    if seen.new {
                        log::error!(
                            "mqtt: another sonitor publishes under {base} ({}); this one is {}. Two daemons with one \
                             node_id overwrite each other's retained alarm states and mix their events, and with one \
                             client id the broker closes either one's connection whenever the other connects: give \
                             each device its own node_id",
                            seen.other,
                            session.identity()
                        );
                        // Announced again, so that the other one sees this one live as well.
                        let a = session.announce();
                        execute(&client, &mut session, a, &metrics);
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) if p.topic == probe => {
                probe_back = true;
                if metrics.mqtt_commands_unread.get() == 1 {
                    metrics.mqtt_commands_unread.set(0);
                    log::info!(
                        "mqtt: the broker delivered this daemon's command topics to it at last"
                    );
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                match incoming_command(&base, &p.topic, &p.payload, p.retain) {
                    Ok(c) => waiting.forward(&commands, c, &metrics, &mut command_log),
                    Err(ignored) => {
                        // An empty message (a retained one deleted) is no command; anything else was one, refused,
                        // and answered on its `…/refused` topic.
                        if command_log.allow() {
                            log::log!(ignored.level(), "{}", ignored.line);
                        }
                        if let Some(why) = &ignored.refused {
                            metrics.commands_rejected.inc();
                            answer_refusal(
                                &mut answers,
                                &client,
                                &mut session,
                                &metrics,
                                &p.topic,
                                why,
                            );
                        }
                    }
                }
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => session.on_outgoing_publish(pkid),
            Ok(_) => {}
            Err(e) if std::mem::take(&mut own_disconnect) => {
                // This daemon's own DISCONNECT (of the clean connection, or of one whose acknowledgements stalled):
                // the persistent one follows at once.
                purging |= oversized(&e);
                session.on_disconnected();
                connected_at = None;
                retry_at = Some(Instant::now());
            }
            Err(e) => {
                purging |= oversized(&e);
                let was = session.connected();
                session.on_disconnected();
                // The wait starts again from reconnect_min only after a connection that held. One that drops
                // at once (a broker that closes it, a retained message too large to read on a command topic)
                // keeps doubling the wait instead of reconnecting twice a second.
                let held = connected_at.take().map(|t| t.elapsed());
                if held.is_some_and(|h| h >= STABLE_CONNECTION) {
                    backoff = q.reconnect_min;
                }
                let mut msg = describe(&e, &base);
                if !was {
                    // The port and TLS hints are for a broker never reached in this run: one that answered
                    // before and now does not is hung, not misconfigured (review35).
                    msg.push_str(if metrics.mqtt_connects.get() == 0 {
                        never_connected_hint(&e, q.tls.enabled)
                    } else {
                        reconnect_hint(&e)
                    });
                }
                // Connections the broker closes soon after accepting them, one after another while it accepts
                // each reconnection at once: another client taking the client id (a broker restarting refuses
                // the reconnections in between, which starts the count again).
                short_lived =
                    if was && held.is_some_and(|h| h < STABLE_CONNECTION) && closed_by_peer(&e) {
                        short_lived + 1
                    } else {
                        0
                    };
                if short_lived >= 2 && !session.another_seen(TWIN_RECENT) {
                    msg.push_str(&format!(
                        " (the broker closed it {:.0} s after accepting it, {short_lived} times in a row; a broker \
                         does that when another client connects with the same client id, {}: does one? Or when a \
                         packet is over its size limit, such as this daemon's {NODE_PAYLOAD_BYTES}-byte \
                         announcement: mosquitto's max_packet_size must let 4 KB through, and its log says \
                         'oversize packet')",
                        held.unwrap_or_default().as_secs_f64(),
                        quoted(&client_id)
                    ));
                }
                if session.another_seen(TWIN_RECENT) {
                    msg.push_str(
                        " (another daemon with this node_id was seen, logged above: if it has the same client id, \
                         the broker closes each one's connection when the other connects)",
                    );
                }
                if shutdown_deadline.is_some() {
                    log::warn!(
                        "mqtt: {endpoint}: could not reach the broker at the stop to publish `stopped`: {msg} (the \
                         retained status stays as the broker last had it; alarm messages wait in the outbox)"
                    );
                } else if was || msg != last_error {
                    // Where the outbox could not write them, they wait in memory: said so, not "in the outbox".
                    let waiting = match metrics.outbox_memory_only.get() {
                        0 => "alarm messages wait in the outbox".to_string(),
                        n => format!(
                            "alarm messages wait in the outbox, {n} of them in memory only: it cannot write them"
                        ),
                    };
                    log::warn!(
                        "mqtt: {endpoint}: {msg}; retrying in {:?} ({waiting})",
                        backoff
                    );
                    last_wait_logged = backoff;
                } else if backoff != last_wait_logged {
                    let most = if backoff == q.reconnect_max {
                        " (reconnect_max: every try from now on)"
                    } else {
                        ""
                    };
                    log::warn!(
                        "mqtt: {endpoint}: still failing; retrying in {backoff:?}{most} (alarm messages wait in the \
                         outbox)"
                    );
                    last_wait_logged = backoff;
                }
                last_error = msg;
                retry_at = Instant::now().checked_add(backoff);
                backoff = backoff.saturating_mul(2).min(q.reconnect_max);
            }
        }
    }
}

/// At most this many command lines a [`COMMAND_LOG_WINDOW`]; the others are counted into one line.
const COMMAND_LOG_LINES: u32 = 20;
const COMMAND_LOG_WINDOW: Duration = Duration::from_secs(10);

/// The budget of the answers to refused commands, whoever refused them (the publisher a message it cannot read,
/// the daemon a machine it does not watch): as many as the log's command lines, so that a flood of bad commands is
/// not echoed one for one.
fn refusal_budget() -> LogBudget {
    LogBudget::new(COMMAND_LOG_LINES, COMMAND_LOG_WINDOW)
}

/// Answers the command refused for `why` that was published on `command_topic`, on its `…/refused` topic
/// ([`refused_topic`]), when `answers` allows.
fn answer_refusal(
    answers: &mut LogBudget,
    client: &Client,
    session: &mut Session,
    metrics: &Metrics,
    command_topic: &str,
    why: &str,
) {
    answers.roll();
    if let Some(topic) = refused_topic(command_topic).filter(|_| answers.allow()) {
        let a = session.transient(&topic, why, false);
        execute(client, session, a, metrics);
    }
}

/// Bounds the log lines of commands: a storm of commands (40 000 in 3 s in an adversarial run) wrote a line each,
/// 7 MB of log in which journald's rate limit would have hidden the alarms' lines.
#[derive(Debug)]
struct CommandLog(LogBudget);

impl CommandLog {
    fn new() -> Self {
        Self(LogBudget::new(COMMAND_LOG_LINES, COMMAND_LOG_WINDOW))
    }

    /// Whether one more command line may be written now.
    fn allow(&mut self) -> bool {
        self.flush();
        self.0.allow()
    }

    /// Once the window is over: one line for the commands not logged in it, and a new window.
    fn flush(&mut self) {
        if let Some(n) = self.0.roll() {
            log::warn!(
                "mqtt: {n} more command message(s) in {:?}, not logged one by one (applied, refused or \
                 dropped: sonitor_commands_rejected_total counts the refused, sonitor_commands_dropped_total the \
                 dropped)",
                self.0.window()
            );
        }
    }
}

/// The most commands held back at once ([`Waiting`]): one per machine and setting, for more machines than a node
/// watches; a flood of commands for machine names nobody configured is dropped beyond it.
const MAX_HELD_COMMANDS: usize = 256;

/// Commands on their way to the daemon's loop, which takes them from a bounded queue. When that queue is full (a
/// burst: a dashboard slider publishes every value it passes, a script a thousand), a command waits here, and a
/// later command for the same machine and setting replaces it: the last one published is the one applied. The
/// newest used to be dropped, which left a value from the middle of the burst in force. What is replaced, or
/// cannot be held, is counted in `sonitor_commands_dropped_total`. The publisher never waits for the daemon: it
/// must keep serving the broker.
#[derive(Debug, Default)]
struct Waiting {
    /// In arrival order, at most one per machine and setting.
    held: std::collections::VecDeque<Command>,
}

impl Waiting {
    fn forward(
        &mut self,
        commands: &Sender<Command>,
        c: Command,
        metrics: &Metrics,
        log: &mut CommandLog,
    ) {
        // One line per command message at most, its drop included: a flood is summed up once, not twice.
        let logged = log.allow();
        if logged {
            log::info!("mqtt: command received: {c}");
        }
        self.flush(commands);
        let c = if self.held.is_empty() {
            match commands.try_send(c) {
                Ok(()) => return,
                Err(crossbeam_channel::TrySendError::Full(c)) => c,
                Err(crossbeam_channel::TrySendError::Disconnected(c)) => {
                    metrics.commands_dropped.inc();
                    if logged {
                        log::warn!(
                            "mqtt: command {c} dropped: the daemon no longer takes commands"
                        );
                    }
                    return;
                }
            }
        } else {
            c
        };
        if let Some(slot) = self.held.iter_mut().find(|h| h.same_setting(&c)) {
            metrics.commands_dropped.inc();
            if logged {
                log::info!(
                    "mqtt: command {c} replaces {slot}, which still waited for the daemon's queue ({} commands)",
                    commands.capacity().unwrap_or_default()
                );
            }
            *slot = c;
        } else if self.held.len() < MAX_HELD_COMMANDS {
            self.held.push_back(c);
        } else {
            metrics.commands_dropped.inc();
            if logged {
                log::warn!(
                    "mqtt: command {c} dropped, not applied: {} commands already wait for the daemon; publish it \
                     again",
                    commands.capacity().unwrap_or_default() + self.held.len()
                );
            }
        }
    }

    /// Hands the held commands to the daemon's queue, in order, while it has room.
    fn flush(&mut self, commands: &Sender<Command>) {
        while let Some(c) = self.held.pop_front() {
            match commands.try_send(c) {
                Ok(()) => {}
                Err(crossbeam_channel::TrySendError::Full(c)) => {
                    self.held.push_front(c);
                    return;
                }
                // The daemon is stopping.
                Err(crossbeam_channel::TrySendError::Disconnected(_)) => {
                    self.held.clear();
                    return;
                }
            }
        }
    }
}

/// Hands the session's actions to rumqttc in order. If a request cannot be queued (only possible with thousands
/// waiting), it and the rest are taken back from the session, so that packet ids stay paired with outbox messages
/// and the outbox messages among them are sent again later.
fn execute(client: &Client, session: &mut Session, actions: Vec<Action>, metrics: &Metrics) {
    let mut actions = actions.into_iter();
    while let Some(action) = actions.next() {
        let Action::Publish {
            topic,
            payload,
            retain,
            qos1,
            ..
        } = &action;
        let qos = if *qos1 {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        };
        if let Err(e) = client.try_publish(topic.clone(), qos, *retain, payload.as_bytes().to_vec())
        {
            let unsent: Vec<Action> = std::iter::once(action).chain(actions).collect();
            let lost = unsent
                .iter()
                .filter(|Action::Publish { qos1, .. }| !qos1)
                .count();
            // At the first and at each doubling: 600 machines starting at once wrote 65 lines of it.
            if let Some(after) = metrics.mqtt_dropped.add_log_due(lost as u64) {
                log::warn!(
                    "mqtt: cannot queue a publish to {} ({e}): the MQTT client's queue is full; {after} \
                     message(s) at QoS 0 (scores, answers) lost so far (sonitor_mqtt_dropped_messages_total); \
                     alarm messages and retained values wait in the daemon and go as the queue empties",
                    unsent.first().map_or("", |Action::Publish { topic, .. }| topic.as_str())
                );
            }
            session.unsend(unsent);
            return;
        }
        metrics.mqtt_published.inc();
    }
}

/// How long a stop may take on MQTT: the outbox's drain, then `stopped` and its acknowledgement.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(3);
/// The part of [`STOP_TIMEOUT`] kept for `stopped` to be acknowledged when the outbox has not drained.
const STOP_ACK_WAIT: Duration = Duration::from_secs(1);

/// A clean DISCONNECT (the broker then discards the last will): queued, and given 200 ms to go out.
fn disconnect(client: &Client, polled: &Receiver<Polled>) {
    if client.try_disconnect().is_err() {
        return;
    }
    let until = Instant::now() + Duration::from_millis(200);
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match polled.recv_timeout(left) {
            Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) | Ok(Err(_)) | Err(_) => return,
            Ok(Ok(_)) => {}
        }
    }
}

/// How long a connection must have lasted for its loss to count as a new outage (the reconnect wait starts
/// again from `reconnect_min`).
const STABLE_CONNECTION: Duration = Duration::from_secs(10);

/// How long ago another process's announcement must have come for a connection lost to be blamed on it.
const TWIN_RECENT: Duration = Duration::from_secs(600);

/// How long after connecting this process's own announcement must have come back ([`Session::own_echo`]).
const OWN_ECHO_WAIT: Duration = Duration::from_secs(10);

/// Whether the broker ended a connection without a word (as it does when another client takes the client id).
fn closed_by_peer(e: &ConnectionError) -> bool {
    let text = e.to_string();
    text.contains("closed by peer")
        || text.contains("reset by peer")
        || text.contains("Broken pipe")
}

/// What a connection that never got the broker's CONNACK may mean: a TLS port spoken to in plain MQTT, a plain
/// port in TLS, or a port where something else than MQTT answers. Empty when the error says it already.
fn never_connected_hint(e: &ConnectionError, tls: bool) -> &'static str {
    let text = e.to_string();
    match e {
        ConnectionError::ConnectionRefused(_) => "",
        ConnectionError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => "",
        ConnectionError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => "",
        _ if text.contains("dns") || text.contains("lookup") => "",
        // The handshake got as far as the broker's certificate: the port is right, the trust is not.
        _ if text.contains("CaUsedAsEndEntity") => " (mqtt.tls.ca_file, or the system's CAs, holds the \
                                                     broker's own certificate: give the CA's that signed it)",
        _ if text.contains("certificate") => " (the broker's certificate is not trusted: mqtt.tls.ca_file must \
                                                hold the CA that signed it, and the certificate name mqtt.host)",
        _ if tls => " (with mqtt.tls on: is this the broker's TLS port? a plain MQTT port ends a TLS handshake \
                      this way)",
        _ => " (is this the broker's plain MQTT port? a TLS port, or a server that is no MQTT broker, answers \
              this way; with a TLS port set [mqtt.tls] enabled = true)",
    }
}

/// What a failed reconnection may mean when the broker did answer earlier in this run (its address, port and TLS
/// settings are right).
fn reconnect_hint(e: &ConnectionError) -> &'static str {
    match e {
        ConnectionError::NetworkTimeout => {
            " (the broker takes the connection but does not answer it, and it did \
                                           earlier in this run: is it hung or overloaded?)"
        }
        _ => "",
    }
}

/// The least time without any acknowledgement of the QoS 1 messages in flight before the connection is made again
/// (3 × keep_alive when longer).
const ACK_STALL_MIN: Duration = Duration::from_secs(30);

/// The machine name of the probe on the command topics (`<base>/.probe/mute/set`, an empty message: no command):
/// a `.` is in no machine's name.
pub const PROBE_MACHINE: &str = ".probe";

/// A message from the broker too large for this client to read ([`MAX_INCOMING`]): rumqttc ends the connection.
fn oversized(e: &ConnectionError) -> bool {
    matches!(
        e,
        ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(_),
        ))
    )
}

fn describe(e: &ConnectionError, base: &str) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => format!(
            "the broker refused the connection ({code:?}): check mqtt.username/password and the broker's ACL"
        ),
        ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(n),
        )) => format!(
            "the broker sent a message of {n} bytes, more than the {MAX_INCOMING} this client reads (commands \
             are a few bytes); the next connection starts a clean session, which drops it if the broker had queued \
             it for this client; if it is retained on a topic this daemon subscribes to ({base}/+/threshold/set, \
             {base}/+/mute/set, {base}/+/enabled/set, {base}/node), the broker sends it again on every connection: \
             find it with `mosquitto_sub -v --retained-only -W 2 -t '{base}/#'` and delete it with \
             `mosquitto_pub -r -n -t TOPIC`"
        ),
        ConnectionError::Io(io) => format!("{io}"),
        other => format!("{other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After a connection error nothing of the last connection is sent or yielded on the next: requests made
    /// since (in rumqttc's channel), packets pending, events of failed writes and a packet id in collision.
    #[test]
    fn nothing_of_a_failed_connection_carries_over() {
        let (client, mut connection) =
            rumqttc::Client::new(rumqttc::MqttOptions::new("t", "127.0.0.1", 1), 1);
        let publish = || client.try_publish("a", rumqttc::QoS::AtLeastOnce, false, "x");
        publish().unwrap();
        // The channel (capacity 1) is full.
        assert!(publish().is_err());
        let el = &mut connection.eventloop;
        el.state.collision = Some(rumqttc::Publish::new("b", rumqttc::QoS::AtLeastOnce, "y"));
        el.state
            .events
            .push_back(rumqttc::Event::Outgoing(rumqttc::Outgoing::Publish(7)));
        forget_last_connection(el);
        assert!(el.pending.is_empty());
        assert!(el.state.events.is_empty());
        assert!(el.state.collision.is_none());
        // The request made before is gone from the channel: another fits.
        publish().unwrap();
    }

    /// A command is logged as it would be published, not as a Rust value.
    #[test]
    fn a_command_is_logged_as_published() {
        let b = "sonitor/n1";
        for (what, payload, shown) in [
            ("threshold", "0.42", "pump: threshold/set 0.42"),
            ("threshold", "default", "pump: threshold/set default"),
            ("threshold", "1e-300", "pump: threshold/set 1e-300"),
            ("mute", "90", "pump: mute/set 1m 30s"),
            ("mute", "2h", "pump: mute/set 2h"),
            ("mute", "366d", "pump: mute/set 366d"),
            ("mute", "26h", "pump: mute/set 1d 2h"),
            ("mute", "40days 30s", "pump: mute/set 40d 30s"),
            ("mute", "OFF", "pump: mute/set OFF"),
            ("enabled", "on", "pump: enabled/set ON"),
        ] {
            let c = parse_command(b, &format!("{b}/pump/{what}/set"), payload).unwrap();
            assert_eq!(c.to_string(), shown);
        }
        assert!(mute_too_long("400d").contains("the maximum of 366 days"));
    }

    #[test]
    fn a_password_file_holds_the_password_alone_on_one_line() {
        assert_eq!(password_of_file("s3cret\n").as_deref(), Ok("s3cret"));
        assert_eq!(password_of_file("s3cret\r\n").as_deref(), Ok("s3cret"));
        assert_eq!(
            password_of_file("with space ").as_deref(),
            Ok("with space ")
        );
        assert!(password_of_file("").unwrap_err().contains("empty"));
        assert!(password_of_file("\n").unwrap_err().contains("empty"));
        assert!(password_of_file("a\nb\n")
            .unwrap_err()
            .contains("several lines"));
    }
    use crate::publish::outbox::OutMessage;

    fn msg(t: &str, p: &str) -> OutMessage {
        OutMessage {
            topic: t.into(),
            payload: p.into(),
            retain: true,
        }
    }

    /// `topic=payload` per publish; the announcement on `node` as `node=me`.
    fn topics(a: &[Action]) -> Vec<String> {
        a.iter()
            .map(|Action::Publish { topic, payload, .. }| {
                if topic.ends_with("/node") {
                    let who: NodeIdentity = serde_json::from_str(payload).unwrap();
                    format!("{topic}={}", who.instance)
                } else {
                    format!("{topic}={payload}")
                }
            })
            .collect()
    }

    fn identity(instance: &str) -> NodeIdentity {
        NodeIdentity {
            instance: instance.into(),
            host: "pi-7".into(),
            boot_id: "3f1c0e2a-boot".into(),
            pid: 42,
            started_at: "2026-12-01T10:00:00Z".into(),
            version: "0.1.0".into(),
        }
    }

    impl Session {
        /// [`Session::on_node_message`] with every process running.
        fn on_node_message_alive(&mut self, payload: &[u8], retain: bool) -> Option<NodeConflict> {
            self.on_node_message(payload, retain, &|_| true)
        }
    }

    /// A session of the node `b`, announcing itself as instance `me`.
    fn session(window: usize) -> Session {
        Session::new("b", window, identity("me"))
    }

    #[test]
    fn connect_publishes_status_retained_state_then_the_outbox_and_a_machines_state_after_its_alarms(
    ) {
        let d = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(d.path(), 100).unwrap();
        ob.push(vec![msg("b/m/alarm", "ON"), msg("b/m/events", "start")])
            .unwrap();
        let mut s = session(8);
        assert!(s
            .set_retained("b/m/state".into(), "{}".into(), true, &ob)
            .is_empty());
        assert!(s
            .set_retained("b/m/alarm".into(), "ON".into(), true, &ob)
            .is_empty());
        assert!(s
            .set_retained("b/x/alarm".into(), "OFF".into(), false, &ob)
            .is_empty());
        let a = s.on_connected(&ob);
        // The machine's state waits behind its alarm transitions in the outbox; another's goes out at once.
        assert_eq!(
            topics(&a),
            vec![
                "b/status=online",
                "b/node=me",
                "b/x/alarm=OFF",
                "b/m/alarm=ON",
                "b/m/events=start"
            ]
        );
        for pkid in 1..=5 {
            s.on_outgoing_publish(pkid);
        }
        assert_eq!(s.on_puback(4), Some(1));
        let acked = ob.records().next().unwrap().msg.clone();
        ob.ack(1);
        assert_eq!(topics(&s.outbox_acked(&acked, &ob)), vec!["b/m/state={}"]);
        // Set while connected and no transition waits: at once, not again after a later ack.
        assert_eq!(
            topics(&s.set_retained("b/m/state".into(), "{2}".into(), true, &ob)),
            vec!["b/m/state={2}"]
        );
    }

    /// No more than IN_FLIGHT_MAX QoS 1 publishes are handed to rumqttc unacknowledged (it reads no request past
    /// its own 100, not even a DISCONNECT: review30): the rest wait in the session, in order, and go as the broker
    /// acknowledges; a retained value held is superseded by a later one of its topic; every QoS 1 publish, not
    /// only an alarm message, starts the clock of a broker that acknowledges nothing.
    #[test]
    fn qos1_publishes_past_the_in_flight_limit_wait_in_order() {
        let d = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(d.path(), 100).unwrap();
        let mut s = session(8);
        let n = IN_FLIGHT_MAX + 10;
        for k in 0..n {
            s.set_retained(format!("b/m{k:03}/state"), "{}".into(), false, &ob);
        }
        let a = s.on_connected(&ob);
        // `status`, the announcement, then the first of the retained values.
        assert_eq!(a.len(), IN_FLIGHT_MAX);
        assert_eq!(
            topics(&a)[..3],
            ["b/status=online", "b/node=me", "b/m000/state={}"]
        );
        assert_eq!(
            (s.in_flight(), s.held()),
            (IN_FLIGHT_MAX, n + 2 - IN_FLIGHT_MAX)
        );
        assert_eq!(s.acks_stalled_for(), None, "nothing written yet");
        for pkid in 1..=IN_FLIGHT_MAX as u16 {
            s.on_outgoing_publish(pkid);
        }
        assert!(s.acks_stalled_for().is_some(), "retained values wait too");
        // Asked for while held: behind the rest, and the later value of a held topic replaces the earlier.
        assert!(s
            .set_retained("b/m070/state".into(), "{2}".into(), true, &ob)
            .is_empty());
        ob.push(vec![msg("b/m000/alarm", "ON")]).unwrap();
        assert!(s.pump(&ob).is_empty());
        assert!(s.release().is_empty(), "none acknowledged");
        assert_eq!(s.on_puback(3), None);
        let a = s.release();
        assert_eq!(topics(&a), ["b/m062/state={}"]);
        for pkid in [1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13] {
            s.on_puback(pkid);
        }
        let a = [a, s.release()].concat();
        let expected: Vec<String> = (62..n)
            .filter(|k| *k != 70)
            .map(|k| format!("b/m{k:03}/state={{}}"))
            .chain(["b/m070/state={2}".into(), "b/m000/alarm=ON".into()])
            .collect();
        assert_eq!(topics(&a), expected);
        // Sent and acknowledged: the clock stops once nothing waits.
        for pkid in 1..=100 {
            s.on_outgoing_publish(pkid);
        }
        for pkid in 1..=100 {
            s.on_puback(pkid);
        }
        assert_eq!((s.in_flight(), s.held()), (0, 0));
        assert_eq!(s.acks_stalled_for(), None);
        // A stop drops the retained values held (the next start publishes them): `stopped` waits behind the ones
        // in flight only, not behind every machine's values (review31).
        s.on_disconnected();
        assert_eq!(s.on_connected(&ob).len(), IN_FLIGHT_MAX);
        assert!(s.held() > 0);
        assert!(s.stop().is_empty());
        assert_eq!(s.held(), 2, "the alarm message, then `stopped`");
        for pkid in 1..=IN_FLIGHT_MAX as u16 {
            s.on_outgoing_publish(pkid);
        }
        s.on_puback(1);
        s.on_puback(2);
        assert_eq!(
            topics(&s.release()),
            ["b/m000/alarm=ON", "b/status=stopped"]
        );
    }

    /// A topic deleted (its value empty: a machine removed at a reload) is not published again at the next
    /// connection, neither as its old value nor as a deletion.
    #[test]
    fn a_deleted_retained_topic_is_forgotten() {
        let d = tempfile::tempdir().unwrap();
        let ob = Outbox::open(d.path(), 100).unwrap();
        let mut s = session(8);
        for (topic, value) in [("b/m/state", "{}"), ("b/x/state", "{}"), ("b/x/state", "")] {
            assert!(s
                .set_retained(topic.into(), value.into(), false, &ob)
                .is_empty());
        }
        assert_eq!(
            topics(&s.on_connected(&ob)),
            vec!["b/status=online", "b/node=me", "b/m/state={}"]
        );
    }

    #[test]
    fn acks_remove_outbox_messages_and_the_window_limits_in_flight() {
        let d = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(d.path(), 100).unwrap();
        for i in 0..5 {
            ob.push(vec![msg("t", &i.to_string())]).unwrap();
        }
        let mut s = session(2);
        let a = s.on_connected(&ob);
        assert_eq!(
            topics(&a),
            vec!["b/status=online", "b/node=me", "t=0", "t=1"]
        );
        // rumqttc reports pkids in request order: status → 1, node → 2, t=0 → 3, t=1 → 4.
        for pkid in 1..=4 {
            s.on_outgoing_publish(pkid);
        }
        assert_eq!(s.on_puback(1), None, "status is not an outbox message");
        assert_eq!(s.on_puback(2), None, "nor is the announcement");
        assert_eq!(s.on_puback(3), Some(1));
        ob.ack(1);
        assert_eq!(topics(&s.pump(&ob)), vec!["t=2"]);
        assert!(s.pump(&ob).is_empty(), "window of 2 is full");
        // Disconnect before the rest is acknowledged: the next connect replays from the oldest waiting message.
        s.on_disconnected();
        assert!(s.pump(&ob).is_empty());
        let a = s.on_connected(&ob);
        assert_eq!(
            topics(&a),
            vec!["b/status=online", "b/node=me", "t=1", "t=2"]
        );
    }

    /// A retained value set while an outbox message for its topic waited (a deletion queued when a reload removed
    /// the machine, which a second reload put back) goes out once that message is acknowledged.
    #[test]
    fn a_retained_value_held_back_by_the_outbox_goes_out_after_it() {
        let d = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(d.path(), 100).unwrap();
        ob.push(vec![msg("b/m/state", "")]).unwrap();
        let mut s = session(8);
        let a = s.on_connected(&ob);
        assert_eq!(
            topics(&a),
            vec!["b/status=online", "b/node=me", "b/m/state="]
        );
        for pkid in 1..=3 {
            s.on_outgoing_publish(pkid);
        }
        // Held back: it would go out before the deletion, which would then wipe it.
        assert!(s
            .set_retained("b/m/state".into(), "{new}".into(), true, &ob)
            .is_empty());
        assert_eq!(s.on_puback(3), Some(1));
        let acked = ob.records().next().unwrap().msg.clone();
        ob.ack(1);
        assert_eq!(
            topics(&s.outbox_acked(&acked, &ob)),
            vec!["b/m/state={new}"]
        );
        // A value the acknowledged message already carried is not sent again.
        ob.push(vec![msg("b/m/alarm", "OFF")]).unwrap();
        s.set_retained("b/m/alarm".into(), "OFF".into(), false, &ob);
        let acked = ob.records().next().unwrap().msg.clone();
        ob.ack(2);
        assert!(s.outbox_acked(&acked, &ob).is_empty());
    }

    #[test]
    fn qos0_requests_keep_the_pairing_aligned() {
        let d = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(d.path(), 100).unwrap();
        let mut s = session(8);
        s.on_connected(&ob);
        s.on_outgoing_publish(1);
        s.on_outgoing_publish(2);
        s.transient("score", "0.1", false);
        ob.push(vec![msg("a", "ON")]).unwrap();
        s.pump(&ob);
        s.on_outgoing_publish(0); // the QoS 0 score
        s.on_outgoing_publish(3); // the outbox message
        assert_eq!(s.on_puback(3), Some(1));
    }

    #[test]
    fn publishes_that_could_not_be_queued_are_taken_back_and_resent() {
        let d = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(d.path(), 100).unwrap();
        for i in 0..3 {
            ob.push(vec![msg("t", &i.to_string())]).unwrap();
        }
        let mut s = session(8);
        let a = s.on_connected(&ob);
        assert_eq!(
            topics(&a),
            vec!["b/status=online", "b/node=me", "t=0", "t=1", "t=2"]
        );
        // Only "online", the announcement and "t=0" reached the client: the others wait, in their order.
        s.unsend(a[3..].to_vec());
        assert_eq!(s.held(), 2);
        for pkid in 1..=3 {
            s.on_outgoing_publish(pkid);
        }
        assert_eq!(s.on_puback(3), Some(1));
        ob.ack(1);
        assert!(s.pump(&ob).is_empty(), "they count in the window");
        assert_eq!(topics(&s.release()), vec!["t=1", "t=2"]);
        s.on_outgoing_publish(4);
        s.on_outgoing_publish(5);
        assert_eq!(s.on_puback(4), Some(2));
        assert_eq!(s.on_puback(5), Some(3));
    }

    #[test]
    fn stopped_is_published_once_and_its_puback_is_recognised() {
        let d = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(d.path(), 100).unwrap();
        ob.push(vec![msg("a", "ON")]).unwrap();
        let mut s = session(8);
        assert!(s.stop().is_empty(), "nothing while disconnected");
        let a = s.on_connected(&ob);
        assert_eq!(topics(&a), vec!["b/status=online", "b/node=me", "a=ON"]);
        for pkid in 1..=3 {
            s.on_outgoing_publish(pkid);
        }
        // The outbox has not drained: `stopped` goes out all the same, once.
        assert_eq!(topics(&s.stop()), vec!["b/status=stopped"]);
        assert!(s.stop().is_empty());
        assert!(s.stop_requested() && !s.stop_acknowledged());
        s.on_outgoing_publish(4);
        assert_eq!(s.on_puback(1), None);
        assert!(
            !s.stop_acknowledged(),
            "the PUBACK of `online` is not the one"
        );
        assert_eq!(s.on_puback(4), None);
        assert!(s.stop_acknowledged());
        // A `stopped` that could not be queued is sent again.
        s.on_disconnected();
        s.on_connected(&ob);
        let a = s.stop();
        s.unsend(a);
        assert!(s.stop_requested() && s.stop().is_empty());
        assert_eq!(topics(&s.release()), vec!["b/status=stopped"]);
    }

    #[test]
    fn another_process_announcing_itself_under_the_same_node_is_recognised() {
        let d = tempfile::tempdir().unwrap();
        let ob = Outbox::open(d.path(), 100).unwrap();
        let other = |instance: &str| serde_json::to_vec(&identity(instance)).unwrap();
        let mut s = session(8);
        s.on_connected(&ob);
        // At the first connection the retained announcement is most likely this node's previous start.
        assert_eq!(s.on_node_message_alive(&other("before"), true), None);
        // Its own announcement, delivered back to it: nothing.
        assert_eq!(s.on_node_message_alive(&other("me"), false), None);
        // Not an announcement (a deletion, a stray message): nothing.
        assert_eq!(s.on_node_message_alive(b"", false), None);
        assert_eq!(s.on_node_message_alive(b"online", false), None);
        // Another process announcing itself live: it is connected now.
        let seen = s.on_node_message_alive(&other("twin"), false).unwrap();
        assert_eq!((seen.other.instance.as_str(), seen.new), ("twin", true));
        assert!(!s.on_node_message_alive(&other("twin"), false).unwrap().new);
        assert_eq!(topics(&s.announce()), vec!["b/node=me"]);

        // One client id: the two are never connected at once. After this process's announcement was acknowledged,
        // another's as the retained value at a later connection means that one announced itself since.
        let mut s = session(8);
        s.on_connected(&ob);
        s.on_outgoing_publish(1);
        s.on_outgoing_publish(2);
        assert_eq!(s.on_node_message_alive(&other("twin"), true), None);
        s.on_puback(2);
        s.on_disconnected();
        s.on_connected(&ob);
        assert_eq!(s.on_node_message_alive(&other("me"), true), None);
        // The previous start of this device's daemon on this boot, retained by a broker that lost the later
        // announcement: not running, so not a second daemon. A clone of this device's image (same host name,
        // another boot id), or a running process, is.
        assert_eq!(s.on_node_message(&other("before"), true, &|_| false), None);
        let clone = serde_json::to_vec(&NodeIdentity {
            boot_id: "77aa01b9-boot".into(),
            ..identity("clone")
        })
        .unwrap();
        assert!(s.on_node_message(&clone, true, &|_| false).is_some());
        // The previous start's own announcement, queued for the persistent session it shares with this one and
        // delivered live: not running, so not a second daemon; a running one is.
        assert_eq!(s.on_node_message(&other("queued"), false, &|_| false), None);
        assert!(s
            .on_node_message(&other("queued"), false, &|_| true)
            .is_some());
        let seen = s.on_node_message_alive(&other("twin"), true).unwrap();
        assert!(seen.new);
        // The instances seen are bounded: a twin restarting in a loop does not grow the session.
        for i in 0..100 {
            let twin = format!("t{i}");
            assert!(s.on_node_message_alive(&other(&twin), true).unwrap().new);
        }
        assert_eq!(s.node.seen.len(), SEEN_KEPT);
        // Nothing is announced while disconnected.
        s.on_disconnected();
        assert!(s.announce().is_empty());
    }

    /// A retained value this connection already published is not published again (the group of a machine went
    /// out twice after a `mute/set` that ended its alarm); another value is, and after a reconnection all are.
    #[test]
    fn an_unchanged_retained_value_is_not_published_again() {
        let d = tempfile::tempdir().unwrap();
        let ob = Outbox::open(d.path(), 100).unwrap();
        let mut s = session(8);
        s.on_connected(&ob);
        let set = |s: &mut Session, v: &str| {
            topics(&s.set_retained("b/m/health".into(), v.into(), true, &ob))
        };
        assert_eq!(set(&mut s, "OK"), vec!["b/m/health=OK"]);
        assert!(set(&mut s, "OK").is_empty());
        assert_eq!(set(&mut s, "SILENT"), vec!["b/m/health=SILENT"]);
        assert_eq!(set(&mut s, "OK"), vec!["b/m/health=OK"]);
        s.on_disconnected();
        let a = s.on_connected(&ob);
        assert_eq!(topics(&a).last().unwrap(), "b/m/health=OK");
        assert!(set(&mut s, "OK").is_empty());
        // A request not handed to the client (its queue full): sent again, not once more when set again.
        s.unsend(a[a.len() - 1..].to_vec());
        assert!(set(&mut s, "OK").is_empty());
        assert_eq!(topics(&s.release()), vec!["b/m/health=OK"]);
    }

    #[test]
    fn nothing_is_published_while_disconnected() {
        let d = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(d.path(), 100).unwrap();
        ob.push(vec![msg("a", "ON")]).unwrap();
        let mut s = session(8);
        assert!(s.pump(&ob).is_empty());
        assert!(s.transient("x", "y", false).is_empty());
        assert!(s.set_retained("r".into(), "v".into(), true, &ob).is_empty());
        // Once connected, a retained topic is published at once unless the outbox still holds messages for it.
        s.on_connected(&ob);
        assert!(s
            .set_retained("a".into(), "OFF".into(), true, &ob)
            .is_empty());
        assert_eq!(
            topics(&s.set_retained("r".into(), "w".into(), true, &ob)),
            vec!["r=w"]
        );
    }

    #[test]
    fn commands_are_parsed_or_named() {
        let b = "sonitor/n1";
        assert_eq!(
            parse_command(b, "sonitor/n1/pump/threshold/set", "0.42"),
            Ok(Command::Threshold {
                machine: "pump".into(),
                value: Some(0.42)
            })
        );
        assert_eq!(
            parse_command(b, "sonitor/n1/pump/threshold/set", "default"),
            Ok(Command::Threshold {
                machine: "pump".into(),
                value: None
            })
        );
        assert_eq!(
            parse_command(b, "sonitor/n1/pump/mute/set", "30m"),
            Ok(Command::Mute {
                machine: "pump".into(),
                duration: Duration::from_secs(1800)
            })
        );
        assert_eq!(
            parse_command(b, "sonitor/n1/pump/mute/set", "90"),
            Ok(Command::Mute {
                machine: "pump".into(),
                duration: Duration::from_secs(90)
            })
        );
        assert_eq!(
            parse_command(b, "sonitor/n1/pump/mute/set", "OFF"),
            Ok(Command::Mute {
                machine: "pump".into(),
                duration: Duration::ZERO
            })
        );
        assert_eq!(
            parse_command(b, "sonitor/n1/pump/enabled/set", "OFF"),
            Ok(Command::Enabled {
                machine: "pump".into(),
                enabled: false
            })
        );
        assert!(parse_command(b, "sonitor/n1/pump/threshold/set", "high")
            .unwrap_err()
            .contains("not a number"));
        // Thresholds the score can never cross (or always crosses) are refused like non-numbers.
        for p in ["-1", "0", "2", "1e308", "inf"] {
            let e = parse_command(b, "sonitor/n1/pump/threshold/set", p).unwrap_err();
            assert!(
                e.contains("outside (0, 2)") || e.contains("not a number"),
                "{p}: {e}"
            );
        }
        // A payload cannot forge log lines: control characters are escaped and the text is cut short.
        let forged = format!("x\nsonitor[WARN]: alarm OFF{}", "y".repeat(100));
        let e = parse_command(b, "sonitor/n1/pump/enabled/set", &forged).unwrap_err();
        assert!(
            !e.contains('\n') && e.contains("\\n") && e.contains('…'),
            "{e}"
        );
        assert!(e.len() < 120, "{e}");
        assert!(parse_command(b, "sonitor/n1/pump/enabled/set", "maybe").is_err());
        assert!(parse_command(b, "sonitor/n1/pump/volume/set", "1").is_err());
        assert!(parse_command(b, "other/n1/pump/mute/set", "1").is_err());
        // Mutes beyond a year: refused with the reason, in seconds and in words, however large.
        for p in [
            "1e20",
            "99999999999999999999",
            "31700000",
            "8000y",
            "584942417355y",
        ] {
            let e = parse_command(b, "sonitor/n1/pump/mute/set", p).unwrap_err();
            assert!(
                e.contains("longer than the maximum") || e.contains("not a duration"),
                "{p}: {e}"
            );
        }
        assert!(parse_command(b, "sonitor/n1/pump/mute/set", "366d").is_ok());
        // An empty message deletes a retained one: it is no command (it used to mean `default` / OFF).
        for t in ["threshold", "mute", "enabled"] {
            assert!(parse_command(b, &format!("sonitor/n1/pump/{t}/set"), " ").is_err());
        }
    }

    /// A storm of commands writes at most [`COMMAND_LOG_LINES`] lines a window, and counts the rest.
    #[test]
    fn a_storm_of_commands_does_not_flood_the_log() {
        let mut log = CommandLog::new();
        let allowed = (0..25).filter(|_| log.allow()).count();
        assert_eq!((allowed, log.0.unlogged()), (COMMAND_LOG_LINES as usize, 5));
        log.0.end_window();
        assert!(log.allow());
        assert_eq!((log.0.written(), log.0.unlogged()), (1, 0));
    }

    /// A burst of commands beyond the daemon's queue: the last one published for a machine and setting is the
    /// one applied (the newest was dropped, and a value from the middle of the burst stayed in force), each one
    /// replaced is counted as dropped, other settings keep their place, and a flood beyond the holding room is
    /// dropped and counted.
    #[test]
    fn a_burst_beyond_the_queue_applies_the_last_command_of_each_setting() {
        let (tx, rx) = crossbeam_channel::bounded(2);
        let metrics = Metrics::new(&[], &[]);
        let threshold = |machine: &str, v: f64| Command::Threshold {
            machine: machine.into(),
            value: Some(v),
        };
        let mut log = CommandLog::new();
        let mut waiting = Waiting::default();
        for k in 1..=80 {
            waiting.forward(
                &tx,
                threshold("pump", k as f64 / 1000.0),
                &metrics,
                &mut log,
            );
        }
        let mute = Command::Mute {
            machine: "pump".into(),
            duration: Duration::from_secs(60),
        };
        waiting.forward(&tx, mute.clone(), &metrics, &mut log);
        waiting.forward(&tx, threshold("fan", 0.5), &metrics, &mut log);
        // Two in the queue, 78 replaced one by one by the next.
        assert_eq!(metrics.commands_dropped.get(), 77);
        let mut applied = Vec::new();
        while waiting.held.len() + rx.len() > 0 {
            applied.extend(rx.try_iter());
            waiting.flush(&tx);
        }
        assert_eq!(
            applied,
            [
                threshold("pump", 0.001),
                threshold("pump", 0.002),
                threshold("pump", 0.08),
                mute,
                threshold("fan", 0.5)
            ]
        );
        // Machines nobody configured, by the thousand: held up to the bound, the rest dropped and counted.
        for k in 0..MAX_HELD_COMMANDS + 12 {
            waiting.forward(&tx, threshold(&format!("m{k}"), 0.1), &metrics, &mut log);
        }
        assert_eq!(waiting.held.len(), MAX_HELD_COMMANDS);
        assert_eq!(metrics.commands_dropped.get(), 77 + 10);
        assert!(metrics
            .render()
            .contains("\nsonitor_commands_dropped_total 87\n"));
        // The log summed up each message once: 20 lines, the rest counted once each.
        assert_eq!(
            u64::from(log.0.written()) + log.0.unlogged(),
            82 + MAX_HELD_COMMANDS as u64 + 12
        );
    }

    #[test]
    fn a_commands_machine_is_logged_plain_or_quoted_and_cut() {
        let c = |machine: &str| {
            Command::Mute {
                machine: machine.into(),
                duration: Duration::ZERO,
            }
            .to_string()
        };
        assert_eq!(c("pump-1"), "pump-1: mute/set OFF");
        assert_eq!(c(""), "\"\": mute/set OFF");
        let long = c(&"x".repeat(5000));
        assert!(long.len() < 200 && long.contains('…'), "{long}");
    }

    #[test]
    fn retained_and_empty_command_messages_are_ignored() {
        let b = "sonitor/n1";
        let t = "sonitor/n1/pump/mute/set";
        assert!(incoming_command(b, t, b"10m", false).is_ok());
        let i = incoming_command(b, t, b"10m", true).unwrap_err();
        assert_eq!(i.level(), log::Level::Warn);
        let why = i.refused.unwrap();
        assert!(
            why.contains("mosquitto_pub -r -n -t \"sonitor/n1/pump/mute/set\""),
            "{why}"
        );
        assert!(i.line.ends_with(&why), "{}", i.line);
        // An empty message is no command: logged, not answered.
        let i = incoming_command(b, t, b"", false).unwrap_err();
        assert_eq!(i.level(), log::Level::Info);
        assert!(i.line.contains("no command"), "{}", i.line);
        assert_eq!(i.refused, None);
        let i = incoming_command(b, t, b"0,05", false).unwrap_err();
        assert_eq!(i.level(), log::Level::Warn);
        let why = i.refused.unwrap();
        assert!(
            why.starts_with("mute \"0,05\" is not a duration (e.g. 30m, 3600)"),
            "{why}"
        );
        assert_eq!(
            refused_topic(t).as_deref(),
            Some("sonitor/n1/pump/mute/refused")
        );
        assert_eq!(refused_topic("sonitor/n1/pump/mute/get"), None);
    }

    /// A refused command's topic is logged whole: cut at 40 characters, a longer node or machine name lost the
    /// machine (and the command) the warning was about.
    #[test]
    fn a_refused_commands_topic_is_named_whole() {
        let b = "sonitor/press-line-1";
        let t = "sonitor/press-line-1/hydraulic-pump-north/threshold/set";
        let i = incoming_command(b, t, b"abc", false).unwrap_err();
        assert!(
            i.line.contains(&format!("{t:?}: threshold \"abc\"")),
            "{}",
            i.line
        );
        // The answer says why, without the log's prefix.
        assert_eq!(
            i.refused.as_deref(),
            Some("threshold \"abc\" is not a number (or 'default')")
        );
        let t = "sonitor/press-line-1/hydraulic-pump-north/threshold/get";
        let i = incoming_command(b, t, b"1", false).unwrap_err();
        assert!(
            i.line
                .contains(&format!("topic {t:?} is not a command topic")),
            "{}",
            i.line
        );
    }
}
