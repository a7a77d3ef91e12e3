//! The on-disk outbox: alarm messages are written here (and fsynced) *before* anything is published, and
//! removed only when the broker has acknowledged them (QoS 1 PUBACK). It survives a daemon restart and a broker
//! outage; the publisher replays it in order on every connect.
//!
//! Layout: one JSON file per message, `<dir>/<seq:020>.json`, written whole or not at all
//! (`sonitor_core::atomic_file`: a temporary name, fsync, rename), so a crash leaves either the whole message or
//! nothing. The sequence number orders the replay. The outbox is bounded: beyond `max` messages the oldest are
//! deleted and counted as dropped (a broker unreachable for thousands of alarm transitions; the retained state
//! republished on connect still tells the truth).
//!
//! A message whose file cannot be written (a full disk, a read-only remount) is kept in memory only: it is still
//! published, in order, and counted (`sonitor_outbox_unpersisted_messages_total`); each later push writes it
//! again once the disk takes writes again. Only what is still in memory only when the daemon stops is lost, and
//! the daemon says so. Nothing tries to remove the file of a message that never had one: on a read-only
//! filesystem that removal fails too (Linux checks the mount before looking the name up), and its error read as
//! if a written message were stuck on disk.

use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sonitor_core::atomic_file;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutMessage {
    pub topic: String,
    pub payload: String,
    pub retain: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    #[serde(flatten)]
    pub msg: OutMessage,
}

#[derive(Debug, thiserror::Error)]
#[error("outbox {path}: {source}")]
pub struct OutboxError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

#[derive(Debug)]
pub struct Outbox {
    dir: PathBuf,
    records: VecDeque<Record>,
    next_seq: u64,
    max: usize,
    dropped: u64,
    /// Waiting messages that have no file: their write failed.
    memory_only: BTreeSet<u64>,
    /// Messages whose write failed, since the outbox was opened.
    unpersisted: u64,
}

/// Why `msg` could never be published (`None`: it can): a topic MQTT does not publish to (empty, a wildcard, a NUL),
/// or more bytes than the client sends ([`super::mqtt::MAX_OUTGOING`]). Such a message at the head of the outbox
/// would hold every alarm behind it for ever (the client refuses it, or ends the connection on it, again and
/// again), so it never enters the outbox, and one found there is set aside.
pub fn unpublishable(msg: &OutMessage) -> Option<String> {
    let t = &msg.topic;
    if t.is_empty() || t.contains(['+', '#', '\0']) || t.len() > usize::from(u16::MAX) {
        let shown: String = t.chars().take(80).collect();
        return Some(format!(
            "its topic {shown:?} is no topic a message can be published to"
        ));
    }
    // Fixed header (up to 5 bytes), the topic's length (2) and packet id (2).
    let size = t.len() + msg.payload.len() + 9;
    (size > super::mqtt::MAX_OUTGOING).then(|| {
        format!(
            "its {size} bytes are more than the {} this client sends",
            super::mqtt::MAX_OUTGOING
        )
    })
}

fn file_name(seq: u64) -> String {
    format!("{seq:020}.json")
}

impl Outbox {
    /// Opens (creating) the outbox directory and loads the messages left by a previous run, in order.
    /// Unreadable files are renamed `*.bad` and reported in the log, never silently deleted; a file this user may not
    /// read (another user's) is left in place, its number kept.
    pub fn open(dir: &Path, max: usize) -> Result<Outbox, OutboxError> {
        let err = |source| OutboxError {
            path: dir.to_path_buf(),
            source,
        };
        if let Err(e) = std::fs::create_dir_all(dir) {
            // A state filesystem mounted read-only (or full) before the outbox was ever made: nothing waits in it,
            // and the daemon runs with its messages in memory (each push says so), as when the disk fails later;
            // the first push once it can be made makes it ([`Outbox::write_again_if_gone`]).
            if crate::config::is_passing(&e) {
                log::warn!(
                    "outbox {}: cannot be created ({e}): alarm messages are kept in memory only until it can be",
                    dir.display()
                );
                return Ok(Self::with(dir, max, Vec::new(), 1));
            }
            return Err(err(e));
        }
        let mut records = Vec::new();
        // The highest number of a message left unread.
        let mut left = 0u64;
        for entry in std::fs::read_dir(dir).map_err(err)? {
            let path = entry.map_err(err)?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.ends_with(".tmp") {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            if !name.ends_with(".json") {
                continue;
            }
            let text = match std::fs::read_to_string(&path) {
                // Not this user's to read (`validate` names it first): left in place for an owner to give back.
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    log::error!(
                        "outbox: {}: {e}; left where it is, not sent",
                        path.display()
                    );
                    // Its number stays taken: a new message must not replace it.
                    let seq = name.trim_end_matches(".json").parse::<u64>().unwrap_or(0);
                    left = left.max(seq);
                    continue;
                }
                t => t.ok(),
            };
            let parsed = text.and_then(|t| serde_json::from_str::<Record>(&t).ok());
            match parsed {
                Some(r) => match unpublishable(&r.msg) {
                    None => records.push(r),
                    Some(why) => {
                        log::error!(
                            "outbox: {}: {why}: it could never be published, and would hold every alarm behind \
                             it; moved aside as .bad",
                            path.display()
                        );
                        let _ = std::fs::rename(&path, path.with_extension("bad"));
                    }
                },
                None => {
                    log::error!(
                        "outbox: {} is unreadable; moved aside as .bad",
                        path.display()
                    );
                    let _ = std::fs::rename(&path, path.with_extension("bad"));
                }
            }
        }
        records.sort_by_key(|r| r.seq);
        let next_seq = records
            .last()
            .map_or(1, |r| r.seq.saturating_add(1))
            .max(left.saturating_add(1));
        Ok(Self::with(dir, max, records, next_seq))
    }

    /// An outbox in `dir` holding `records` (in order), numbering on from `next_seq`.
    fn with(dir: &Path, max: usize, records: Vec<Record>, next_seq: u64) -> Outbox {
        Outbox {
            dir: dir.to_path_buf(),
            records: records.into(),
            next_seq,
            max: max.max(1),
            dropped: 0,
            memory_only: BTreeSet::new(),
            unpersisted: 0,
        }
    }

    /// Appends messages durably (fsync of each file and of the directory) and returns their sequence numbers.
    ///
    /// A message whose file cannot be written (disk full, a read-only remount) is still queued in memory, so
    /// it is published and acknowledged like the others; it is only not durable across a restart, and counted
    /// ([`Outbox::unpersisted`]). The first such error is returned after every message has been queued.
    /// Messages kept in memory only by an earlier push are written first, once the disk takes them.
    pub fn push(&mut self, msgs: Vec<OutMessage>) -> Result<Vec<u64>, OutboxError> {
        self.write_again_if_gone();
        self.write_memory_only();
        let mut seqs = Vec::with_capacity(msgs.len());
        let mut first_error = None;
        for msg in msgs {
            if let Some(why) = unpublishable(&msg) {
                // A bug: the daemon's own messages are checked where their parts are (names, model ids).
                log::error!(
                    "outbox: a message to {:?} is dropped: {why}; it could never be published",
                    msg.topic.chars().take(80).collect::<String>()
                );
                self.dropped += 1;
                continue;
            }
            let seq = self.next_seq;
            self.next_seq = self.next_seq.saturating_add(1);
            let rec = Record { seq, msg };
            if let Err(e) = self.write(&rec) {
                first_error.get_or_insert(e);
                self.memory_only.insert(seq);
                self.unpersisted += 1;
            }
            self.records.push_back(rec);
            seqs.push(seq);
        }
        // The renames are durable once the directory is synced.
        let _ = atomic_file::sync_dir(&self.dir);
        while self.records.len() > self.max {
            if let Some(old) = self.records.pop_front() {
                self.dropped += 1;
                let never_written = self.memory_only.remove(&old.seq);
                // The first drops one by one, then at each power of two: a broker away for hours under a fast
                // replay wrote a line a message (2 700 in 70 s), which journald's rate limit would have cut
                // together with the alarms' own lines. The count is in sonitor_outbox_dropped_messages_total.
                if self.dropped <= 16 || self.dropped.is_power_of_two() {
                    log::warn!(
                        "outbox full ({} messages): dropping the oldest, message {} ({} on {}){}; {} dropped \
                         since the start{}",
                        self.max,
                        old.seq,
                        old.msg.payload,
                        old.msg.topic,
                        if never_written {
                            ", which was never written to disk"
                        } else {
                            ""
                        },
                        self.dropped,
                        if self.dropped >= 16 {
                            " (from here on logged at each power of two)"
                        } else {
                            ""
                        }
                    );
                }
                if never_written {
                    continue;
                }
                if let Err(e) = self.remove_file(old.seq) {
                    log::warn!(
                        "outbox: cannot remove the file of dropped message {}: {e}; it will be published after \
                         the next restart after all",
                        old.seq
                    );
                }
            }
        }
        first_error.map_or(Ok(seqs), Err)
    }

    /// Writes the messages kept in memory only, oldest first, until one fails (the disk still refuses). Each
    /// push does it first; the daemon once more as it stops.
    pub fn write_memory_only(&mut self) {
        let written = self.write_kept();
        if written > 0 {
            log::info!(
                "outbox: the disk takes writes again: {written} message(s) kept in memory only are written to \
                 disk now ({} still in memory only)",
                self.memory_only.len()
            );
        }
    }

    /// Writes the messages kept in memory only, oldest first, until one fails; returns how many were written.
    fn write_kept(&mut self) -> usize {
        let mut written = 0;
        while let Some(&seq) = self.memory_only.first() {
            let Ok(i) = self.records.binary_search_by_key(&seq, |r| r.seq) else {
                self.memory_only.remove(&seq);
                continue;
            };
            if self.write(&self.records[i]).is_err() {
                break;
            }
            self.memory_only.remove(&seq);
            written += 1;
        }
        if written > 0 {
            let _ = atomic_file::sync_dir(&self.dir);
        }
        written
    }

    /// The outbox directory deleted under the daemon (with the state directory: `rm -rf /var/lib/sonitor/*`): made
    /// again, with every message still waiting written to it again. They were on disk, and nothing rewrote them: a
    /// stop said they waited in a directory no longer there, and a start never published them (an `end` came
    /// without its `start`). Until written again, each is in memory only, as after a failed write: a stop names
    /// those it loses. Returns how many were written.
    pub fn write_again_if_gone(&mut self) -> usize {
        match std::fs::metadata(&self.dir) {
            // Deleted, or a directory above it replaced: its files went with it.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) => {}
            // There; or something else in its place, or a disk that cannot say (the writes fail, and keep what
            // they cannot write in memory).
            _ => return 0,
        }
        let waiting = self.records.len();
        let gone: Vec<u64> = self
            .records
            .iter()
            .map(|r| r.seq)
            .filter(|seq| !self.memory_only.contains(seq))
            .collect();
        let first_time = !gone.is_empty();
        self.memory_only.extend(gone);
        if let Err(e) = std::fs::create_dir_all(&self.dir) {
            if first_time {
                log::error!(
                    "outbox {}: the directory is gone (deleted while sonitor runs) and cannot be made again ({e}): \
                     the {waiting} message(s) waiting are kept in memory only, lost if sonitor stops before the \
                     broker has them",
                    self.dir.display()
                );
            }
            return 0;
        }
        let written = self.write_kept();
        log::warn!(
            "outbox {}: the directory was not there (deleted while sonitor runs, or not to be made on a read-only \
             filesystem until now): made again, with {written} of the {waiting} message(s) waiting written to it{}",
            self.dir.display(),
            match self.memory_only.len() {
                0 => String::new(),
                n => format!(" ({n} still in memory only: the disk refuses them)"),
            }
        );
        written
    }

    /// One record to its file, whole or not at all ([`atomic_file`]).
    fn write(&self, rec: &Record) -> Result<(), OutboxError> {
        let path = self.dir.join(file_name(rec.seq));
        serde_json::to_vec(rec)
            .map_err(std::io::Error::other)
            .and_then(|text| atomic_file::write(&path, &text))
            .map_err(|source| OutboxError { path, source })
    }

    /// Removes the file of message `seq`; one already gone is no error.
    fn remove_file(&self, seq: u64) -> std::io::Result<()> {
        match std::fs::remove_file(self.dir.join(file_name(seq))) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The broker acknowledged message `seq`: forget it, and remove its file if it has one.
    /// Returns the message, if it was waiting.
    pub fn ack(&mut self, seq: u64) -> Option<OutMessage> {
        let i = self.records.iter().position(|r| r.seq == seq)?;
        let acked = self.records.remove(i).map(|r| r.msg);
        if self.memory_only.remove(&seq) {
            log::info!(
                "outbox: message {seq}, which could not be written to disk, is delivered (acknowledged by the \
                 broker)"
            );
        } else if let Err(e) = self.remove_file(seq) {
            log::warn!(
                "outbox: message {seq} is delivered (acknowledged by the broker) but its file {} cannot be \
                 removed: {e}; it will be published again after a restart (a duplicate) unless the file is \
                 removed",
                self.dir.join(file_name(seq)).display()
            );
        }
        acked
    }

    /// Messages waiting, oldest first.
    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.records.iter()
    }

    /// The first waiting message with a sequence number above `after` (or the first of all).
    pub fn next_after(&self, after: Option<u64>) -> Option<&Record> {
        self.records
            .iter()
            .find(|r| after.is_none_or(|a| r.seq > a))
    }

    /// The directory the messages are written to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// How many more messages it takes before it drops its oldest.
    pub fn room(&self) -> usize {
        self.max.saturating_sub(self.records.len())
    }

    /// Messages dropped because the outbox was full, since it was opened.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Messages whose file could not be written, since the outbox was opened (each was kept in memory).
    pub fn unpersisted(&self) -> u64 {
        self.unpersisted
    }

    /// Waiting messages that are in memory only (their write failed): lost if the daemon stops before the
    /// broker acknowledges them. Oldest first.
    pub fn memory_only(&self) -> impl Iterator<Item = &Record> {
        self.records
            .iter()
            .filter(|r| self.memory_only.contains(&r.seq))
    }

    /// How many waiting messages are in memory only.
    pub fn memory_only_len(&self) -> usize {
        self.memory_only.len()
    }

    /// Whether a message for `topic` is waiting.
    pub fn has_topic(&self, topic: &str) -> bool {
        self.records.iter().any(|r| r.msg.topic == topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(topic: &str, payload: &str) -> OutMessage {
        OutMessage {
            topic: topic.into(),
            payload: payload.into(),
            retain: true,
        }
    }

    #[test]
    fn survives_reopening_in_order() {
        let d = tempfile::tempdir().unwrap();
        {
            let mut o = Outbox::open(d.path(), 100).unwrap();
            o.push(vec![m("a", "ON"), m("e", "start")]).unwrap();
            o.push(vec![m("a", "OFF")]).unwrap();
            o.ack(1);
        }
        let o = Outbox::open(d.path(), 100).unwrap();
        let v: Vec<_> = o
            .records()
            .map(|r| (r.seq, r.msg.payload.clone()))
            .collect();
        assert_eq!(v, vec![(2, "start".into()), (3, "OFF".into())]);
        assert_eq!(o.next_after(Some(2)).unwrap().seq, 3);
        assert!(o.has_topic("a"));
        let mut o = o;
        assert_eq!(o.push(vec![m("x", "y")]).unwrap(), vec![4]);
    }

    #[test]
    fn is_bounded_and_counts_drops() {
        let d = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(d.path(), 3).unwrap();
        for i in 0..5 {
            o.push(vec![m("t", &i.to_string())]).unwrap();
        }
        assert_eq!(o.len(), 3);
        assert_eq!(o.dropped(), 2);
        assert_eq!(o.records().next().unwrap().msg.payload, "2");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 3);
    }

    #[test]
    fn a_message_that_cannot_be_written_is_still_queued() {
        // The outbox directory becomes a file under the daemon (a full or remounted disk gives the same error
        // path): the push reports it, and both messages still wait to be published, in order.
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("outbox");
        let mut o = Outbox::open(&dir, 10).unwrap();
        o.push(vec![m("a", "ON")]).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::write(&dir, "x").unwrap();
        let err = o.push(vec![m("a", "OFF"), m("e", "end")]).unwrap_err();
        assert!(
            err.to_string().contains("00000000000000000002.json"),
            "{err}"
        );
        let v: Vec<_> = o
            .records()
            .map(|r| (r.seq, r.msg.payload.clone()))
            .collect();
        assert_eq!(
            v,
            vec![(1, "ON".into()), (2, "OFF".into()), (3, "end".into())]
        );
        // Acknowledging a message that never reached the disk just forgets it.
        o.ack(2);
        assert_eq!(o.len(), 2);
    }

    /// The outbox directory deleted under the daemon (with the state directory: a clean-up of /var/lib/sonitor/*)
    /// is made again by the next write, so that messages are durable again; so is one that could not be made at
    /// the start (a read-only filesystem, writable since).
    #[test]
    fn a_deleted_outbox_directory_is_made_again() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("state").join("outbox");
        let mut o = Outbox::open(&dir, 10).unwrap();
        o.push(vec![m("a", "ON")]).unwrap();
        std::fs::remove_dir_all(d.path().join("state")).unwrap();
        o.push(vec![m("a", "OFF")]).unwrap();
        assert!(dir.join(file_name(2)).is_file());
        assert_eq!(o.unpersisted(), 0);
        // The message that waited on disk before is written again with it (it was lost: a stop said it waited
        // in a directory no longer there).
        assert!(dir.join(file_name(1)).is_file());
        // And without a new message: a stop (or the lock's check) writes them again.
        std::fs::remove_dir_all(d.path().join("state")).unwrap();
        assert_eq!(o.write_again_if_gone(), 2);
        assert_eq!(o.write_again_if_gone(), 0);
        let reopened = Outbox::open(&dir, 10).unwrap();
        assert_eq!(reopened.len(), 2);
        // Deleted, and the directory cannot be made again (a file where it was: ENOTDIR, for root too): the
        // messages are in memory only, as after a failed write, so a stop names them as lost (it said they waited
        // on disk); written once it can be made.
        std::fs::remove_dir_all(d.path().join("state")).unwrap();
        std::fs::write(d.path().join("state"), "").unwrap();
        assert_eq!(o.write_again_if_gone(), 0);
        assert_eq!(o.memory_only_len(), 2);
        assert_eq!(o.write_again_if_gone(), 0);
        std::fs::remove_file(d.path().join("state")).unwrap();
        assert_eq!(o.write_again_if_gone(), 2);
        assert_eq!(o.memory_only_len(), 0);
        assert_eq!(Outbox::open(&dir, 10).unwrap().len(), 2);
    }

    #[test]
    fn corrupt_files_are_set_aside_and_temporaries_removed() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(file_name(7)), "{not json").unwrap();
        // Valid JSON, but never publishable: a wildcard topic, or more than the client sends. Set aside too, or
        // they would hold every alarm behind them.
        let never = [
            m("sonitor/t1/pump-1/#", "ON"),
            m(
                "sonitor/t1/pump-1/events",
                &"x".repeat(super::super::mqtt::MAX_OUTGOING),
            ),
        ];
        for (i, msg) in never.iter().enumerate() {
            let rec = Record {
                seq: 3 + i as u64,
                msg: msg.clone(),
            };
            std::fs::write(
                d.path().join(file_name(rec.seq)),
                serde_json::to_string(&rec).unwrap(),
            )
            .unwrap();
            assert!(unpublishable(msg).is_some());
        }
        assert!(unpublishable(&m("sonitor/t1/pump-1/events", "{}")).is_none());
        std::fs::write(d.path().join("00000000000000000008.tmp"), "x").unwrap();
        let o = Outbox::open(d.path(), 10).unwrap();
        assert!(o.is_empty());
        for seq in [3, 4, 7] {
            assert!(d.path().join(format!("{seq:020}.bad")).exists(), "{seq}");
        }
        assert!(!d.path().join("00000000000000000008.tmp").exists());
    }
}
