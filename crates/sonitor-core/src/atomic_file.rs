//! Files replaced whole or not at all: the new content is written under a temporary name beside the
//! destination (the file name with `.tmp` appended), fsynced, then renamed over it. A crash, or a write that
//! fails half-way (a full disk), leaves the previous file as it was; the temporary file of a failed write is
//! removed. The daemon's saved state, its outbox messages and the model bundle are written this way.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Where the new content of `dest` is written before it replaces `dest`: its file name with `.tmp` appended.
pub fn temp_path(dest: &Path) -> PathBuf {
    let mut name = dest
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    dest.with_file_name(name)
}

/// Replaces `dest` with `bytes`, whole or not at all.
pub fn write(dest: &Path, bytes: &[u8]) -> std::io::Result<()> {
    Staged::write(dest, bytes)?.commit()
}

/// [`write`](fn@write), then an fsync of the directory, so that the replacement itself survives a power loss that
/// follows at once (the daemon's saved machine states: an open alarm event, a mute, a threshold set over MQTT).
pub fn write_durable(dest: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write(dest, bytes)?;
    sync_dir(parent_dir(dest))
}

/// The directory `path` lies in; `.` for a bare file name.
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// The new content of a file, written and fsynced under [`temp_path`] but not yet in place. Several files can
/// be staged before any is committed, so that a full disk is found before anything is replaced. Dropped without
/// [`Staged::commit`], the temporary file is removed.
#[must_use = "a staged file is removed unless it is committed"]
#[derive(Debug)]
pub struct Staged {
    tmp: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl Staged {
    pub fn write(dest: &Path, bytes: &[u8]) -> std::io::Result<Self> {
        let staged = Staged {
            tmp: temp_path(dest),
            dest: dest.to_path_buf(),
            committed: false,
        };
        let mut f = std::fs::File::create(&staged.tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        Ok(staged)
    }

    /// Renames the staged content over the destination.
    pub fn commit(mut self) -> std::io::Result<()> {
        std::fs::rename(&self.tmp, &self.dest)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            // Only a file: a directory in the way (which made the write fail) is not ours to remove.
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// fsync of a directory, so that the renames done in it survive a power loss.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_write_replaces_the_whole_file_and_leaves_nothing_else() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("state.json");
        write(&f, b"a long first version").unwrap();
        write(&f, b"short").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"short");
        assert_eq!(names(d.path()), ["state.json"]);
        assert_eq!(temp_path(&f), d.path().join("state.json.tmp"));
        write_durable(&f, b"durable").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"durable");
        assert_eq!(names(d.path()), ["state.json"]);
        assert_eq!(parent_dir(Path::new("alarms.json")), Path::new("."));
        assert_eq!(parent_dir(&f), d.path());
    }

    #[test]
    fn a_failed_write_leaves_the_old_file() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("model.onnx");
        write(&f, b"old").unwrap();
        // Something in the way of the temporary file: the write fails before the old file is touched.
        std::fs::create_dir(temp_path(&f)).unwrap();
        assert!(write(&f, b"new").is_err());
        assert_eq!(std::fs::read(&f).unwrap(), b"old");
        assert!(
            temp_path(&f).is_dir(),
            "a directory in the way is left alone"
        );
    }

    #[test]
    fn a_staged_file_that_is_not_committed_is_removed() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("manifest.json");
        write(&f, b"old").unwrap();
        let staged = Staged::write(&f, b"new").unwrap();
        assert_eq!(std::fs::read(temp_path(&f)).unwrap(), b"new");
        drop(staged);
        assert_eq!(names(d.path()), ["manifest.json"]);
        assert_eq!(std::fs::read(&f).unwrap(), b"old");
        sync_dir(d.path()).unwrap();
    }
}
