//! Evidence clips: a WAV of the audio around an alarm onset, kept in the state directory with retention by
//! count, age and total size (oldest deleted first).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::config::{free_space, outbox_bytes, ClipsConfig, Config};
use crate::window::ClipAudio;

/// Writes the clip as 16-bit PCM (creating its directory), whole or not at all: a write that fails (a full disk)
/// leaves no partial WAV under the name the alarm events give, and gives the space back. Its errors name the path.
pub fn write_clip(c: &ClipAudio) -> anyhow::Result<()> {
    if let Some(dir) = c.path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("{}: cannot create the directory: {e}", dir.display()))?;
    }
    Ok(sonitor_core::audio::write_wav_i16_whole(
        &c.path,
        &c.samples,
        c.sample_rate,
    )?)
}

/// Clips waiting for the clip writer thread; one more is refused ([`hand_over`]).
pub const CLIP_QUEUE: usize = 8;

/// Hands a clip to the clip writer thread's queue (at most [`CLIP_QUEUE`] clips), waiting for room if `wait` (at
/// a stop, when nothing else is left to do). A clip it cannot take comes back with the reason, for the log.
pub fn hand_over(
    writer: &crossbeam_channel::Sender<ClipAudio>,
    c: ClipAudio,
    wait: bool,
) -> Result<(), (ClipAudio, String)> {
    if wait {
        return writer
            .send(c)
            .map_err(|e| (e.0, "the clip writer has stopped".to_string()));
    }
    writer.try_send(c).map_err(|e| {
        let why = if e.is_full() {
            format!("the clip writer still has {CLIP_QUEUE} clips to write (a slow or full disk?)")
        } else {
            "the clip writer has stopped".to_string()
        };
        (e.into_inner(), why)
    })
}

/// The id of an alarm event, `<node>-<machine>-<millis>-<seq>`: the node and machine names, when the alarm was raised
/// (milliseconds since the Unix epoch) and the machine's transition count. It names the event in the alarm messages
/// and the event's clip ([`clip_path`]); [`is_clip_name`] reads it back.
pub fn event_id(node: &str, machine: &str, millis: u128, seq: u64) -> String {
    format!("{node}-{machine}-{millis}-{seq}")
}

/// Where the clip of alarm event `event_id` ([`event_id`]) of `machine` is written. Retention
/// ([`enforce_retention`]) lists exactly the files of this shape.
pub fn clip_path(dir: &Path, machine: &str, event_id: &str) -> PathBuf {
    dir.join(machine).join(format!("{event_id}.wav"))
}

/// What [`clip_files`] finds under a clips directory.
#[derive(Default)]
struct Found {
    /// The daemon's clips: path, modification time, length.
    clips: Vec<(PathBuf, SystemTime, u64)>,
    /// Temporary files of the daemon's clips (`<clip>.wav.tmp`, see [`write_clip`]): path, modification time. A
    /// write leaves none behind unless the process died during it.
    temps: Vec<(PathBuf, SystemTime)>,
}

/// This node's clips: `<dir>/<machine>/<node>-<machine>-<millis>-<seq>.wav` ([`clip_path`]), and their temporary
/// files. Nothing else under `dir` is ever listed, so a `clips.dir` pointed at a folder that also holds other
/// recordings (`2024/take-2024-06-01.wav` has the shape of a clip of a node `take`) or other nodes' clips loses
/// none of them.
fn clip_files(dir: &Path, node: &str) -> Found {
    let mut found = Found::default();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return found;
    };
    for machine_dir in rd.flatten() {
        if !machine_dir.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let Some(machine) = machine_dir.file_name().to_str().map(String::from) else {
            continue;
        };
        let Ok(files) = std::fs::read_dir(machine_dir.path()) else {
            continue;
        };
        for e in files.flatten() {
            let p = e.path();
            let Ok(md) = e.metadata() else { continue };
            if !md.is_file() {
                continue;
            }
            let modified = md.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            if is_clip_name(&p, node, &machine) {
                found.clips.push((p, modified, md.len()));
            } else if p.extension().is_some_and(|x| x == "tmp")
                && is_clip_name(&p.with_extension(""), node, &machine)
            {
                found.temps.push((p, modified));
            }
        }
    }
    found
}

/// `<node>-<machine>-<millis>-<seq>.wav`: an [`event_id`] of `node` and `machine` plus `.wav`, as the daemon names a
/// clip (the last two fields are numbers).
fn is_clip_name(p: &Path, node: &str, machine: &str) -> bool {
    if p.extension().is_none_or(|x| x != "wav") {
        return false;
    }
    let Some(stem) = p.file_stem().and_then(|s| s.to_str()) else {
        return false;
    };
    let mut tail = stem.rsplitn(3, '-');
    let (Some(seq), Some(millis), Some(head)) = (tail.next(), tail.next(), tail.next()) else {
        return false;
    };
    let numeric = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
    numeric(seq)
        && numeric(millis)
        && head
            .strip_prefix(node)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|m| m == machine)
}

/// Bytes of node `node`'s clips under `dir` (what the retention counts against `clips.max_bytes`).
fn held_bytes(dir: &Path, node: &str) -> u64 {
    clip_files(dir, node).clips.iter().map(|f| f.2).sum()
}

/// A warning when the clips' filesystem cannot take `clips.max_bytes` of clips: the retention removes old clips
/// only once they reach that size, so the disk would fill first. On the state directory's filesystem (the
/// default, `<state_dir>/clips`) a full disk also stops the outbox from keeping alarms, so a full outbox's room
/// is counted too. `None` when there is room, clips are off, or the free space cannot be read.
pub fn low_space_warning(cfg: &Config) -> Option<String> {
    if !cfg.clips.enabled {
        return None;
    }
    let dir = cfg.clips_dir();
    let free = free_space(&dir)?;
    let shares_state = free_space(&cfg.state_dir).is_some_and(|s| s.dev == free.dev);
    let outbox = if shares_state {
        outbox_bytes(&free, cfg.mqtt.outbox_max)
    } else {
        0
    };
    clips_room(
        free.bytes,
        held_bytes(&dir, &cfg.node_id),
        cfg.clips.max_bytes,
        outbox,
    )
    .map(|why| format!("clips.dir {}: {why}", dir.display()))
}

/// Whether `free` bytes plus the `held` bytes of clips already kept can take `max_bytes` of clips and the
/// `outbox` bytes of a full outbox on the same filesystem (0 on another); the warning if not.
fn clips_room(free: u64, held: u64, max_bytes: u64, outbox: u64) -> Option<String> {
    let room = free.saturating_add(held);
    if room >= max_bytes.saturating_add(outbox) {
        return None;
    }
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let (outbox_note, outbox_harm) = if outbox > 0 {
        (
            format!(
                ", and a full outbox on the same filesystem needs {:.1} MiB",
                mib(outbox)
            ),
            "the outbox could then not keep alarms while the broker is unreachable, and ",
        )
    } else {
        (String::new(), "")
    };
    let fits = room.saturating_sub(outbox);
    let lower = if fits > 0 {
        format!("lower clips.max_bytes to at most {:.1} MiB, ", mib(fits))
    } else {
        String::new()
    };
    Some(format!(
        "clips.max_bytes = {:.1} MiB, but its filesystem has {:.1} MiB free and the clips kept there hold \
         {:.1} MiB{outbox_note}: clips would fill the disk before the retention removes any; {outbox_harm}new \
         clips could not be written. To fix it, {lower}free space there, or set clips.dir to another filesystem (one \
         the service may write: ReadWritePaths= under the shipped unit)",
        mib(max_bytes),
        mib(free),
        mib(held),
    ))
}

/// How long a clip's temporary file may stand before the retention takes it for the leftover of a daemon that died
/// while writing it (a clip is written in well under a second; another daemon sharing `clips.dir` may be writing
/// one right now).
const STALE_TEMP: Duration = Duration::from_secs(600);

/// How often the clip writer applies the retention while no clip comes, so that clips older than `max_age` go
/// even when no alarm is raised for months: a quarter of `max_age`, between 15 s and an hour.
pub fn retention_interval(cfg: &ClipsConfig) -> Duration {
    (cfg.max_age / 4).clamp(Duration::from_secs(15), Duration::from_secs(3600))
}

/// The clips this process wrote, with when on the monotonic clock: the retention's ages and order for them do not
/// depend on the wall clock. A Raspberry Pi has no real-time clock: it boots at the time saved at its last
/// shutdown and jumps to the true time when NTP answers, days later on a network that was down. By their
/// modification times, clips written before that jump would look days older than they are and be deleted as
/// past `clips.max_age` at once; after a jump backwards, the newest clips would sort before older ones and be the
/// first to go over `clips.max_count`. Clips of earlier runs are known by their modification times only.
#[derive(Debug, Default)]
pub struct Retention {
    /// The node whose clips these are ([`clip_files`]).
    node: String,
    written: std::collections::HashMap<PathBuf, Instant>,
}

impl Retention {
    /// The retention of node `node`'s clips.
    pub fn new(node: &str) -> Self {
        Retention {
            node: node.to_string(),
            ..Default::default()
        }
    }

    /// Notes a clip this process has just written.
    pub fn written(&mut self, path: &Path) {
        self.written.insert(path.to_path_buf(), Instant::now());
    }

    /// Deletes the oldest clips until the count, age and size limits hold, and clip temporary files older than
    /// [`STALE_TEMP`]; logs what it deleted and returns how many clips that was. Clips written by this process
    /// are the newest (whatever their modification times say), in the order they were written, and their age is
    /// the time since they were written on the monotonic clock. The clips in `open` (of alarm events still on:
    /// the evidence of the alarm that matters most now, which its end event will name) are never deleted; they
    /// count against the limits, so other clips go first.
    pub fn enforce(
        &mut self,
        dir: &Path,
        cfg: &ClipsConfig,
        open: &std::collections::BTreeSet<PathBuf>,
    ) -> usize {
        let Found { clips, temps } = clip_files(dir, &self.node);
        let now = SystemTime::now();
        // An earlier run's clip written while the clock was wrong (a Pi in 1970 until NTP answers) has no age to
        // go by: it is kept past `max_age` and counted as the newest of the earlier runs' (it is most likely of
        // the last one, before NTP). Its age from that time deleted the evidence of the alarms of the last boot
        // at the next start, or as soon as NTP answered.
        let floor = SystemTime::UNIX_EPOCH + Duration::from_secs(crate::clock::EARLIEST_TRUE_UNIX);
        let age = |t: SystemTime| (t >= floor).then(|| now.duration_since(t).unwrap_or_default());
        // (path, age if known, length, written by an earlier run), newest first: this run's clips, then the others.
        let mut clips: Vec<(PathBuf, Option<Duration>, u64, bool)> = clips
            .into_iter()
            .map(|(path, modified, len)| match self.written.get(&path) {
                Some(w) => (path, Some(w.elapsed()), len, false),
                None => (path, age(modified), len, true),
            })
            .collect();
        clips.sort_by_key(|c| (c.3, c.1.unwrap_or_default()));
        let mut kept_bytes = 0u64;
        let mut remaining = std::collections::HashSet::new();
        let (mut old, mut many, mut big) = (0, 0, 0);
        let mut failed: Option<(usize, String)> = None;
        for (i, (path, clip_age, len, _)) in clips.iter().enumerate() {
            let too_old = clip_age.is_some_and(|a| a > cfg.max_age);
            let too_many = i >= cfg.max_count;
            let too_big = kept_bytes + len > cfg.max_bytes;
            if (too_old || too_many || too_big) && !open.contains(path) {
                match std::fs::remove_file(path) {
                    Ok(()) if too_old => old += 1,
                    Ok(()) if too_many => many += 1,
                    Ok(()) => big += 1,
                    Err(e) => {
                        let f =
                            failed.get_or_insert_with(|| (0, format!("{}: {e}", path.display())));
                        f.0 += 1;
                        remaining.insert(path);
                    }
                }
            } else {
                kept_bytes += len;
                remaining.insert(path);
            }
        }
        // Only the clips still there (not removed now, nor by hand) are remembered.
        self.written.retain(|p, _| remaining.contains(p));
        // One line a pass (every `retention_interval` while the problem lasts), however many clips it concerns.
        if let Some((n, first)) = failed {
            log::warn!(
                "clips: the retention cannot remove {n} clip(s) past its limits (first: {first}); they stay \
                 until it can"
            );
        }
        let deleted = old + many + big;
        if deleted > 0 {
            log::info!(
                "clips: retention removed {deleted} clip(s): {old} older than clips.max_age, {many} over \
                 clips.max_count, {big} over clips.max_bytes"
            );
        }
        for (path, modified) in temps {
            if age(modified).is_none_or(|a| a > STALE_TEMP) && std::fs::remove_file(&path).is_ok() {
                log::info!(
                    "clips: removed {}, left by a clip write that never finished",
                    path.display()
                );
            }
        }
        deleted
    }
}

/// [`Retention::enforce`] of node `node`'s clips for a process that has written none of them, no event open.
pub fn enforce_retention(dir: &Path, node: &str, cfg: &ClipsConfig) -> usize {
    Retention::new(node).enforce(dir, cfg, &Default::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clip_the_writer_cannot_take_comes_back_with_the_reason() {
        let clip = |n: usize| ClipAudio {
            machine: 0,
            path: PathBuf::from(format!("c{n}.wav")),
            samples: vec![0.0; 4],
            sample_rate: 16_000,
        };
        let (tx, rx) = crossbeam_channel::bounded(CLIP_QUEUE);
        for n in 0..CLIP_QUEUE {
            hand_over(&tx, clip(n), false)
                .map_err(|(_, why)| why)
                .unwrap();
        }
        // The writer is a queue behind: the next clip is not waited for.
        let (back, why) = hand_over(&tx, clip(99), false).unwrap_err();
        assert_eq!(back.path, PathBuf::from("c99.wav"));
        assert!(why.contains("still has 8 clips to write"), "{why}");
        // The writer has stopped: refused, waiting or not, instead of blocking the daemon's loop.
        drop(rx);
        for wait in [false, true] {
            let (_, why) = hand_over(&tx, clip(100), wait).unwrap_err();
            assert_eq!(why, "the clip writer has stopped");
        }
    }

    #[test]
    fn too_little_room_for_the_clips_is_warned() {
        let mib = 1024 * 1024;
        // Room: free space plus what the clips already hold, for max_bytes and a full outbox.
        assert_eq!(clips_room(600 * mib, 0, 500 * mib, 40 * mib), None);
        assert_eq!(clips_room(100 * mib, 450 * mib, 500 * mib, 40 * mib), None);
        let w = clips_room(300 * mib, 20 * mib, 500 * mib, 40 * mib).unwrap();
        assert!(
            w.contains("clips.max_bytes = 500.0 MiB, but its filesystem has 300.0 MiB free")
                && w.contains(
                    "hold 20.0 MiB, and a full outbox on the same filesystem needs 40.0 MiB"
                )
                && w.contains("the outbox could then not keep alarms")
                && w.contains("lower clips.max_bytes to at most 280.0 MiB"),
            "{w}"
        );
        // On a filesystem of its own: the outbox is not named.
        let w = clips_room(300 * mib, 0, 500 * mib, 0).unwrap();
        assert!(
            !w.contains("outbox") && w.contains("at most 300.0 MiB"),
            "{w}"
        );
        // A full disk: nothing to lower max_bytes to.
        let w = clips_room(0, 0, 500 * mib, 40 * mib).unwrap();
        assert!(
            w.contains("To fix it, free space there") && !w.contains("at most"),
            "{w}"
        );
        // The clips counted are the daemon's own, in `<dir>/<machine>/`.
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("pump-1")).unwrap();
        std::fs::write(d.path().join("pump-1/n-pump-1-1-1.wav"), [0u8; 1000]).unwrap();
        std::fs::write(d.path().join("pump-1/notes.txt"), [0u8; 5000]).unwrap();
        assert_eq!(held_bytes(d.path(), "n"), 1000);
    }

    #[test]
    fn a_clip_that_cannot_be_written_leaves_nothing_behind() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("pump-1").join("n-pump-1-1-1.wav");
        let clip = |path: &Path| ClipAudio {
            machine: 0,
            path: path.to_path_buf(),
            samples: vec![0.1; 16_000],
            sample_rate: 16_000,
        };
        // Something in the way of the temporary file: the write fails, no partial clip has the final name.
        std::fs::create_dir_all(sonitor_core::atomic_file::temp_path(&path)).unwrap();
        assert!(write_clip(&clip(&path)).is_err());
        assert!(!path.exists());
        std::fs::remove_dir(sonitor_core::atomic_file::temp_path(&path)).unwrap();
        write_clip(&clip(&path)).unwrap();
        let info = sonitor_core::audio::read_wav_info(&path).unwrap();
        assert_eq!(info.frames, 16_000);
        assert!(!sonitor_core::atomic_file::temp_path(&path).exists());
    }

    /// Writes machine `m`'s 0.1-s clip `<name>.wav` under `dir` and gives it the modification time `t`.
    fn clip_dated(dir: &Path, name: &str, t: SystemTime) -> PathBuf {
        let c = ClipAudio {
            machine: 0,
            path: dir.join("m").join(format!("{name}.wav")),
            samples: vec![0.1; 1600],
            sample_rate: 16_000,
        };
        write_clip(&c).unwrap();
        let f = std::fs::File::options().write(true).open(&c.path).unwrap();
        f.set_modified(t).unwrap();
        c.path
    }

    #[test]
    fn writes_and_keeps_only_the_newest() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..5 {
            let t = SystemTime::now() - Duration::from_secs(100 - i * 10);
            clip_dated(d.path(), &format!("n1-m-{i}-{i}"), t);
        }
        let cfg = ClipsConfig {
            max_count: 3,
            ..Default::default()
        };
        assert_eq!(enforce_retention(d.path(), "n1", &cfg), 2);
        assert!(!d.path().join("m/n1-m-0-0.wav").exists());
        assert!(!d.path().join("m/n1-m-1-1.wav").exists());
        assert!(d.path().join("m/n1-m-4-4.wav").exists());
        let cfg = ClipsConfig {
            max_age: Duration::from_secs(75),
            ..Default::default()
        };
        assert_eq!(enforce_retention(d.path(), "n1", &cfg), 1, "e2 is 80 s old");
        let cfg = ClipsConfig {
            max_bytes: 4000,
            ..Default::default()
        };
        assert_eq!(
            enforce_retention(d.path(), "n1", &cfg),
            1,
            "two 3.2 kB clips exceed 4 kB"
        );
        assert!(d.path().join("m/n1-m-4-4.wav").exists());
    }

    /// The clips of a boot whose clock read 1970 until NTP answered (a Pi without a real-time clock), found by the
    /// next start: their times say 56 years, which is no age. They stay past `max_age` (all were deleted at once),
    /// and under `max_count` an earlier run's clip with a true time goes first.
    #[test]
    fn clips_written_before_the_clock_was_set_are_not_aged_by_it() {
        let d = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let in_1970 = SystemTime::UNIX_EPOCH + Duration::from_secs(600);
        let exists = |name: &str| d.path().join("m").join(format!("{name}.wav")).exists();
        clip_dated(d.path(), "n1-m-1-1", in_1970);
        clip_dated(d.path(), "n1-m-2-2", in_1970 + Duration::from_secs(60));
        clip_dated(d.path(), "n1-m-3-3", now - Duration::from_secs(600));
        let cfg = ClipsConfig {
            max_age: Duration::from_secs(86_400),
            ..Default::default()
        };
        assert_eq!(enforce_retention(d.path(), "n1", &cfg), 0);
        assert!(exists("n1-m-1-1") && exists("n1-m-2-2") && exists("n1-m-3-3"));
        let cfg = ClipsConfig {
            max_count: 2,
            ..cfg
        };
        assert_eq!(enforce_retention(d.path(), "n1", &cfg), 1);
        assert!(!exists("n1-m-3-3"), "the clip with a true time goes first");
        // A clip time that is true still ages it.
        clip_dated(d.path(), "n1-m-4-4", now - Duration::from_secs(2 * 86_400));
        let cfg = ClipsConfig {
            max_count: 10,
            ..cfg
        };
        assert_eq!(enforce_retention(d.path(), "n1", &cfg), 1);
        assert!(!exists("n1-m-4-4") && exists("n1-m-1-1"));
    }

    #[test]
    fn the_clips_of_this_run_survive_a_jump_of_the_wall_clock() {
        let d = tempfile::tempdir().unwrap();
        let day = Duration::from_secs(86_400);
        let now = SystemTime::now();
        let mut retention = Retention::new("n1");
        // (clip, written by this run, modification time)
        let clips = [
            // Written this run before NTP moved the clock ten days forward: its time says ten days old.
            ("n1-m-1-1", true, now - 10 * day),
            // Written this run after the clock was set back an hour: its time says it is older than...
            ("n1-m-2-2", true, now - Duration::from_secs(3600)),
            // ...this clip of an earlier run, written while the clock ran an hour fast.
            ("n1-m-3-3", false, now + Duration::from_secs(60)),
            // An earlier run's clip that is really two days old.
            ("n1-m-4-4", false, now - 2 * day),
        ];
        for (name, this_run, t) in clips {
            let path = clip_dated(d.path(), name, t);
            if this_run {
                // What the clip thread notes right after writing it.
                retention.written(&path);
            }
        }
        let exists = |name: &str| d.path().join("m").join(format!("{name}.wav")).exists();
        let cfg = ClipsConfig {
            max_age: day,
            ..Default::default()
        };
        assert_eq!(retention.enforce(d.path(), &cfg, &Default::default()), 1);
        assert!(
            !exists("n1-m-4-4"),
            "two days old by its time, and of an earlier run"
        );
        assert!(
            exists("n1-m-1-1"),
            "written seconds ago, whatever its time says"
        );
        // Over max_count the earlier run's clip goes first, though its time is the latest.
        let cfg = ClipsConfig {
            max_count: 2,
            ..cfg
        };
        assert_eq!(retention.enforce(d.path(), &cfg, &Default::default()), 1);
        assert!(!exists("n1-m-3-3"));
        assert!(exists("n1-m-1-1") && exists("n1-m-2-2"));
        // Within this run, the later written clip is the newer one.
        let cfg = ClipsConfig {
            max_count: 1,
            ..cfg
        };
        assert_eq!(retention.enforce(d.path(), &cfg, &Default::default()), 1);
        assert!(exists("n1-m-2-2") && !exists("n1-m-1-1"));
        // A process that wrote none of them goes by their times: the clip's hour-old time is within max_age.
        assert_eq!(enforce_retention(d.path(), "n1", &cfg), 0);
    }

    #[test]
    fn retention_recognises_the_clip_of_every_event_id() {
        let dir = Path::new("/state/clips");
        for (node, machine) in [("n1", "m"), ("line-2", "press-7"), ("a", "b-c-d")] {
            let id = event_id(node, machine, 1_700_000_000_123, 42);
            assert_eq!(id, format!("{node}-{machine}-1700000000123-42"));
            let p = clip_path(dir, machine, &id);
            assert_eq!(p, dir.join(machine).join(format!("{id}.wav")));
            assert!(is_clip_name(&p, node, machine), "{}", p.display());
            assert!(!is_clip_name(&p, node, "other"), "{}", p.display());
            assert!(!is_clip_name(&p, "other", machine), "{}", p.display());
        }
    }

    #[test]
    fn only_the_daemons_own_clips_are_ever_deleted() {
        // clips.dir pointed at a folder of other recordings and other nodes' clips: old files of every other shape
        // stay, and so do files that only look like a clip of another node (a date-named take in a year folder).
        let d = tempfile::tempdir().unwrap();
        let old = SystemTime::now() - Duration::from_secs(1000);
        let files = [
            "recording.wav",
            "m/recording.wav",
            "m/n1-other-5-1.wav",
            "m/n1-m-5.wav",
            "m/n1-m-x-1.wav",
            "m/deeper/n1-m-5-1.wav",
            "m/n1-m-5-1.txt",
            "m/n1-m-5-1.wav",
            "m/node-a-m-7-2.wav",
            "2024/take-2024-06-01.wav",
            "line-3/press-line-3-0001-2.wav",
            "m/n1-m-8-1.wav",
            "m/recording.wav.tmp",
            "m/n1-m-6-1.wav.tmp",
            "m/n1-m-6-2.wav.tmp",
        ];
        for f in files {
            let p = d.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, b"RIFF").unwrap();
            // A clip's temporary file written a minute ago may be another daemon's clip being written now.
            let age = if f == "m/n1-m-6-2.wav.tmp" {
                SystemTime::now() - Duration::from_secs(60)
            } else {
                old
            };
            std::fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(age)
                .unwrap();
        }
        let cfg = ClipsConfig {
            max_age: Duration::from_secs(60),
            ..Default::default()
        };
        // The clip of an alarm event still on stays, past max_age or not.
        let open = [d.path().join("m/n1-m-8-1.wav")].into_iter().collect();
        assert_eq!(
            Retention::new("n1").enforce(d.path(), &cfg, &open),
            1,
            "clips deleted"
        );
        for f in files {
            // This node's clip past max_age, and the temporary file of one of its clips whose write never finished.
            let gone = ["m/n1-m-5-1.wav", "m/n1-m-6-1.wav.tmp"].contains(&f);
            assert_eq!(d.path().join(f).exists(), !gone, "{f}");
        }
    }

    #[test]
    fn retention_runs_often_enough_for_max_age_and_seldom_enough_to_cost_nothing() {
        let every = |age: u64| {
            retention_interval(&ClipsConfig {
                max_age: Duration::from_secs(age),
                ..Default::default()
            })
        };
        assert_eq!(every(60), Duration::from_secs(15));
        assert_eq!(every(3600), Duration::from_secs(900));
        assert_eq!(every(30 * 86_400), Duration::from_secs(3600));
    }
}
