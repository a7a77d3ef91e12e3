//! `fit --force` (and `prune --force`): replacing what a bundle directory holds without losing it to a run that
//! fails.
//!
//! The old bundle stays where it is, usable by the daemon and `eval`, for as long as the new run allows:
//!
//! 1. At the start, only the old checkpoints (`checkpoint/`, and `checkpoint.old/` or `checkpoint.new/` of an
//!    interrupted save) move into `OUT/.replaced/`: the new run writes its own checkpoint there every epoch.
//! 2. When the new bundle is ready to be written, the old `manifest.json`, `model.onnx` and the scores written
//!    beside them by default (`scores/` of `eval`, `scores-combined/` of `combine`: scores of the old model, which
//!    the new one would not give) join them.
//! 3. Once the new bundle is written, `OUT/.replaced/` is removed.
//!
//! A run that returns an error (bad data, a refused setting, a loss that diverged, a full disk) undoes what it did:
//! it removes what it wrote in the place of each entry it set aside and moves the old ones back. A run that is
//! killed (Ctrl-C, a crash, a power cut) leaves `OUT/.replaced/`; every later run into `OUT` then refuses it
//! ([`check_no_leftover`]), naming it and saying how to restore or discard it, except `--resume`, which continues
//! the new run from its checkpoint and completes the replacement ([`Replacement::resumed`]).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::Context;
use sonitor_core::atomic_file;

use crate::checkpoint;

/// Where the entries being replaced wait, inside the bundle directory (so that moving them is a rename).
pub const DIR: &str = ".replaced";

/// `OUT/.replaced`.
pub fn backup_dir(out: &Path) -> PathBuf {
    out.join(DIR)
}

/// The entries a new run writes from its first epoch on: the checkpoint's directories.
fn checkpoint_names(out: &Path) -> Vec<OsString> {
    checkpoint::all_dirs(out)
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_os_string()))
        .collect()
}

/// The files of the bundle itself.
pub const BUNDLE_FILES: [&str; 2] = [
    sonitor_core::bundle::MANIFEST_FILE,
    sonitor_core::bundle::DEFAULT_ONNX_FILE,
];

/// The entries that make the bundle itself, and the scores `eval` and `combine` write beside it by default.
fn bundle_names() -> Vec<OsString> {
    BUNDLE_FILES
        .iter()
        .chain(&[
            crate::eval::DEFAULT_SCORES_DIR,
            crate::combine::DEFAULT_OUT_DIR,
        ])
        .map(OsString::from)
        .collect()
}

fn names_in(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut v = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<Vec<_>>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    v.sort();
    Ok(v)
}

/// How to put back by hand what a replacement set aside in `backup`: one wording for every message that asks it.
pub fn how_to_put_back(backup: &Path, out: &Path) -> String {
    format!(
        "move everything in {} into {}, replacing what is there of the same name (remove a folder there first: `mv` \
         does not merge folders), and remove {}",
        backup.display(),
        out.display(),
        backup.display()
    )
}

/// Refuses `out` while it holds the entries an interrupted replacement set aside: a new run would mix its files
/// with them, and a second `--force` would have nowhere to keep the first one's old bundle.
pub fn check_no_leftover(out: &Path, flag: &str) -> anyhow::Result<()> {
    let backup = backup_dir(out);
    if !backup.exists() {
        return Ok(());
    }
    let held = names_in(&backup)?;
    // Stopped before it moved anything: what `out` holds is the old bundle, whole (its checkpoint included, which
    // `--resume` would have taken for the new run's and trained on).
    if held.is_empty() {
        anyhow::bail!(
            "{flag} {}: {} is empty: a --force run was stopped before it set anything aside, so {} still holds its \
             old bundle as it was. Remove {} (rmdir) and run again.",
            out.display(),
            backup.display(),
            out.display(),
            backup.display()
        );
    }
    // The old manifest set aside and a new one in its place: the run wrote its bundle (step 3 failed).
    let manifest = sonitor_core::bundle::MANIFEST_FILE;
    let bundle_written = out.join(manifest).exists() && backup.join(manifest).exists();
    // --resume needs the new run's checkpoint; a run killed before its first epoch wrote none.
    let finish = if bundle_written {
        format!(
            "The new bundle was written but removing the old one failed: remove {} once you no longer need it.",
            backup.display()
        )
    } else if checkpoint::find(out).join(checkpoint::STATE_FILE).exists() {
        if checkpoint::read_state(&checkpoint::find(out)).is_ok_and(|s| s.pruned) {
            "That run was a `prune`, which cannot be continued: run it again once the old bundle is back or given \
             up (below)."
                .to_string()
        } else {
            format!(
                "To finish that run, continue it with `sonitor-train fit --resume --out {}` and its --data (which \
                 removes {} once the new bundle is written).",
                out.display(),
                backup.display()
            )
        }
    } else {
        "That run was stopped before it wrote a checkpoint, so it cannot be resumed.".to_string()
    };
    anyhow::bail!(
        "{flag} {}: {} holds what a --force run set aside from it ({}): the bundle it was replacing. {finish} To go \
         back to the old bundle, {}. To give the old bundle up, remove {}.",
        out.display(),
        backup.display(),
        held.join(", "),
        how_to_put_back(&backup, out),
        backup.display()
    )
}

/// One entry that a run has dealt with: moved into the backup (`moved`), or found absent or already kept there.
/// Either way what is in `OUT` under its name from then on is the new run's.
struct Entry {
    name: OsString,
    moved: bool,
}

/// A replacement in progress; see the module's documentation.
pub struct Replacement {
    out: PathBuf,
    backup: PathBuf,
    /// This run began the replacement (`--force`), rather than continuing an interrupted one (`--resume`): an
    /// error then puts everything back and removes the backup.
    owned: bool,
    /// What this run has set aside, in order.
    done: Vec<Entry>,
}

impl Replacement {
    /// `--force`: sets the old checkpoints of `out` aside (step 1). [`check_no_leftover`] must have passed. On an
    /// error, what was moved is moved back.
    pub fn begin(out: &Path) -> anyhow::Result<Self> {
        let mut r = Self {
            out: out.to_path_buf(),
            backup: backup_dir(out),
            owned: true,
            done: Vec::new(),
        };
        match r.set_aside(&checkpoint_names(out)) {
            Ok(()) => Ok(r),
            Err(e) => Err(r.undo(e)),
        }
    }

    /// `--resume` of a run that began a replacement and was killed: `Some` when `out` holds its backup.
    /// An empty backup (the run stopped before it set anything aside) is no replacement to finish: it is removed,
    /// and `out` holds its old bundle as it was.
    pub fn resumed(out: &Path) -> Option<Self> {
        let backup = backup_dir(out);
        if std::fs::remove_dir(&backup).is_ok() {
            eprintln!(
                "note: {} was empty (a --force run stopped before it set anything aside, before it trained): \
                 removed; what {} holds is from before that run",
                backup.display(),
                out.display()
            );
            return None;
        }
        backup.is_dir().then(|| Self {
            out: out.to_path_buf(),
            backup,
            owned: false,
            done: Vec::new(),
        })
    }

    /// Where the old entries wait.
    pub fn backup(&self) -> &Path {
        &self.backup
    }

    /// Whether anything of the old bundle is set aside (by this run or the interrupted one it continues).
    pub fn holds_anything(&self) -> bool {
        std::fs::read_dir(&self.backup).is_ok_and(|mut d| d.next().is_some())
    }

    /// Step 2: sets the old bundle's files (and `scores/`, `scores-combined/`) aside, just before the new ones are
    /// written.
    pub fn set_aside_bundle(&mut self) -> anyhow::Result<()> {
        self.set_aside(&bundle_names())
    }

    /// Moves each of `names` that `out` holds into the backup. An entry the backup already holds is the old one
    /// (kept by the interrupted run `--resume` continues): what `out` holds under that name is that run's, and is
    /// removed.
    fn set_aside(&mut self, names: &[OsString]) -> anyhow::Result<()> {
        for name in names {
            let (here, kept) = (self.out.join(name), self.backup.join(name));
            let moved = exists(&here) && !exists(&kept);
            if moved {
                std::fs::create_dir_all(&self.backup)
                    .with_context(|| format!("--force: creating {}", self.backup.display()))?;
                std::fs::rename(&here, &kept).with_context(|| {
                    format!(
                        "--force: moving {} aside into {}",
                        here.display(),
                        self.backup.display()
                    )
                })?;
            } else if exists(&kept) {
                remove(&here)?;
            }
            self.done.push(Entry {
                name: name.clone(),
                moved,
            });
        }
        self.sync()
    }

    fn sync(&self) -> anyhow::Result<()> {
        for d in [&self.backup, &self.out] {
            if d.is_dir() {
                atomic_file::sync_dir(d).with_context(|| format!("syncing {}", d.display()))?;
            }
        }
        Ok(())
    }

    /// Step 3, once the new bundle is written: removes the old entries.
    pub fn finish(self) -> anyhow::Result<()> {
        if exists(&self.backup) {
            std::fs::remove_dir_all(&self.backup).with_context(|| {
                format!(
                    "the new bundle is written, but removing the old one in {} failed; remove it by hand",
                    self.backup.display()
                )
            })?;
        }
        Ok(())
    }

    /// After the run failed with `error`: removes what it wrote under the names it dealt with, moves back what it
    /// set aside and, when it began the replacement, removes the (then empty) backup. Returns `error`, with what
    /// to do by hand when putting the old entries back failed too.
    pub fn undo(self, error: anyhow::Error) -> anyhow::Error {
        match self.put_back() {
            Ok(()) => error,
            Err(e) => error.context(format!(
                "the run failed, and putting the old bundle back failed too ({e:#}): what is left of it is in {}; \
                 {}",
                self.backup.display(),
                how_to_put_back(&self.backup, &self.out)
            )),
        }
    }

    fn put_back(&self) -> anyhow::Result<()> {
        for e in self.done.iter().rev() {
            let here = self.out.join(&e.name);
            remove(&here)?;
            if e.moved {
                let kept = self.backup.join(&e.name);
                std::fs::rename(&kept, &here).with_context(|| {
                    format!("moving {} back to {}", kept.display(), here.display())
                })?;
            }
        }
        if self.owned && exists(&self.backup) {
            // Only when empty: anything still in it is the old bundle's.
            std::fs::remove_dir(&self.backup)
                .with_context(|| format!("removing {}", self.backup.display()))?;
        }
        self.sync()
    }
}

/// Whether anything is at `p` (a dangling symbolic link too).
fn exists(p: &Path) -> bool {
    p.symlink_metadata().is_ok()
}

/// Removes whatever is at `p` (nothing if nothing is).
fn remove(p: &Path) -> anyhow::Result<()> {
    let Ok(meta) = p.symlink_metadata() else {
        return Ok(());
    };
    let removed = if meta.is_dir() {
        std::fs::remove_dir_all(p)
    } else {
        std::fs::remove_file(p)
    };
    removed.with_context(|| format!("removing {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Every file under `dir` (relative path → content).
    fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        let mut m = BTreeMap::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let rel = p.strip_prefix(dir).unwrap().display().to_string();
                    m.insert(rel, std::fs::read(&p).unwrap());
                }
            }
        }
        m
    }

    fn old_bundle(out: &Path) {
        std::fs::create_dir_all(out.join("checkpoint")).unwrap();
        std::fs::create_dir_all(out.join("scores")).unwrap();
        std::fs::create_dir_all(out.join("scores-combined/model")).unwrap();
        for f in [
            "manifest.json",
            "model.onnx",
            "checkpoint/state.json",
            "scores/a.csv",
            "scores-combined/a.csv",
            "scores-combined/model/a.csv",
            "notes.txt",
        ] {
            std::fs::write(out.join(f), format!("old {f}")).unwrap();
        }
    }

    /// What a new run writes: a checkpoint from the first epoch on, a bundle at the end.
    fn new_checkpoint(out: &Path) {
        std::fs::create_dir_all(out.join("checkpoint")).unwrap();
        std::fs::write(out.join("checkpoint/state.json"), "new").unwrap();
    }

    #[test]
    fn the_old_bundle_stays_in_place_until_the_new_one_is_written() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path();
        old_bundle(out);
        let mut r = Replacement::begin(out).unwrap();
        // Only the checkpoint has moved: the bundle is still usable where it was.
        assert_eq!(names_in(r.backup()).unwrap(), ["checkpoint"]);
        assert_eq!(
            std::fs::read(out.join("manifest.json")).unwrap(),
            b"old manifest.json"
        );
        assert!(check_no_leftover(out, "--out").is_err());
        new_checkpoint(out);
        r.set_aside_bundle().unwrap();
        // The scores `eval` and `combine` wrote of the old model go with it.
        assert_eq!(
            names_in(r.backup()).unwrap(),
            [
                "checkpoint",
                "manifest.json",
                "model.onnx",
                "scores",
                "scores-combined"
            ]
        );
        std::fs::write(out.join("manifest.json"), "new").unwrap();
        r.finish().unwrap();
        assert_eq!(
            names_in(out).unwrap(),
            ["checkpoint", "manifest.json", "notes.txt"]
        );
        check_no_leftover(out, "--out").unwrap();
    }

    #[test]
    fn a_failed_run_is_undone_at_either_step() {
        for step in [1, 2] {
            let d = tempfile::tempdir().unwrap();
            let out = d.path();
            old_bundle(out);
            let before = files(out);
            let mut r = Replacement::begin(out).unwrap();
            new_checkpoint(out);
            if step == 2 {
                r.set_aside_bundle().unwrap();
                // A bundle write that failed half-way.
                std::fs::write(out.join("model.onnx"), "new").unwrap();
            }
            let e = r.undo(anyhow::anyhow!("disk full"));
            assert_eq!(e.to_string(), "disk full");
            assert_eq!(files(out), before, "step {step}");
            assert!(!backup_dir(out).exists());
        }
    }

    #[test]
    fn a_leftover_backup_after_a_written_bundle_is_named_as_such() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path();
        std::fs::create_dir(out.join(DIR)).unwrap();
        std::fs::write(out.join(DIR).join("manifest.json"), "old").unwrap();
        std::fs::write(out.join("manifest.json"), "new").unwrap();
        let e = format!("{:#}", check_no_leftover(out, "--out").unwrap_err());
        assert!(
            e.contains("The new bundle was written but removing the old one failed")
                && !e.contains("--resume"),
            "{e}"
        );
    }

    /// A --force run stopped after it made its backup and before it moved anything into it: `out` holds the old
    /// bundle whole. A new run is told so (it was told to resume, which took the old checkpoint for the new
    /// run's), and `--resume` finds no replacement to finish.
    #[test]
    fn an_empty_backup_is_no_replacement() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path();
        std::fs::write(out.join("manifest.json"), "old").unwrap();
        std::fs::create_dir(out.join(DIR)).unwrap();
        let e = format!("{:#}", check_no_leftover(out, "--out").unwrap_err());
        assert!(
            e.contains("is empty: a --force run was stopped before it set anything aside")
                && e.contains("rmdir")
                && !e.contains("--resume"),
            "{e}"
        );
        assert!(Replacement::resumed(out).is_none());
        assert!(!out.join(DIR).exists());
        check_no_leftover(out, "--out").unwrap();
    }

    #[test]
    fn an_empty_out_needs_no_backup() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("new");
        let mut r = Replacement::begin(&out).unwrap();
        r.set_aside_bundle().unwrap();
        assert!(!out.exists() && !r.holds_anything());
        let e = r.undo(anyhow::anyhow!("bad data"));
        assert_eq!(e.to_string(), "bad data");
        assert!(!out.exists());
    }

    /// A run killed after step 2 left its backup and a partial new bundle; `--resume` completes the replacement,
    /// never replacing the old entries with the killed run's, and an error of the resumed run leaves the backup.
    #[test]
    fn a_resumed_replacement_keeps_the_old_entries_it_finds() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path();
        old_bundle(out);
        let mut r = Replacement::begin(out).unwrap();
        new_checkpoint(out);
        r.set_aside_bundle().unwrap();
        std::fs::write(out.join("model.onnx"), "killed run's").unwrap();
        drop(r);
        let kept = files(&backup_dir(out));
        let e = check_no_leftover(out, "--out").unwrap_err().to_string();
        assert!(
            e.contains(".replaced")
                && e.contains("(checkpoint, manifest.json, model.onnx, scores, scores-combined)")
                && e.contains("--resume")
                && e.contains("move everything in"),
            "{e}"
        );

        let mut r = Replacement::resumed(out).unwrap();
        r.set_aside_bundle().unwrap();
        assert!(!out.join("model.onnx").exists());
        let e = r.undo(anyhow::anyhow!("loss diverged"));
        assert_eq!(e.to_string(), "loss diverged");
        assert_eq!(files(&backup_dir(out)), kept);
        assert_eq!(
            std::fs::read(out.join("checkpoint/state.json")).unwrap(),
            b"new"
        );

        let mut r = Replacement::resumed(out).unwrap();
        r.set_aside_bundle().unwrap();
        std::fs::write(out.join("manifest.json"), "new").unwrap();
        r.finish().unwrap();
        assert!(!backup_dir(out).exists());
        assert!(Replacement::resumed(out).is_none());
    }
}
