//! Files that must be regular files: a recording, a bundle's graph and manifest, a data set's `synth.json`. A
//! FIFO in one's place made its open wait for a writer for ever (`validate`, `eval` and the daemon's start hung,
//! deaf to SIGTERM), and a device's may never end: such a path is refused before it is opened, with an error of
//! kind [`std::io::ErrorKind::InvalidInput`] that [`is_not_a_file`] recognises.

use std::io::Read;
use std::path::Path;

/// What the refusal says.
pub const NOT_A_FILE: &str = "not a regular file (a FIFO, a device or a directory)";

/// The nearest of `path` and its ancestors that is there (a dangling link counts), where a directory that does not
/// exist yet would be made: the working directory (".") for a relative path none of whose ancestors is. `None`
/// only where not even "/" is.
pub fn nearest_existing(path: &Path) -> Option<&Path> {
    path.ancestors()
        .map(or_here)
        .find(|a| a.symlink_metadata().is_ok())
}

/// An ancestor as a path to open: a relative path's last ancestor, "", is the working directory.
fn or_here(ancestor: &Path) -> &Path {
    if ancestor.as_os_str().is_empty() {
        Path::new(".")
    } else {
        ancestor
    }
}

/// The folder on the way to `path` that this user may not pass (search), so that `path` cannot be reached: the
/// nearest to the root in which looking up the next name is refused. `None` where no folder on the way bars it (the
/// file itself is unreadable, or the way ends earlier for another reason).
pub fn barring_folder(path: &Path) -> Option<&Path> {
    let way: Vec<&Path> = path.ancestors().collect();
    for pair in way.windows(2).rev() {
        let (child, parent) = (pair[0], pair[1]);
        match child.symlink_metadata() {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Some(or_here(parent))
            }
            Err(_) => return None,
        }
    }
    None
}

/// What to do about a file `path` that the user sonitor runs as may not read (copied as root under umask 077, read
/// by the service's own user, or kept behind a folder only root may pass): the one wording of the configuration's,
/// a bundle's, a recording's and the password file's messages. Where a folder on the way bars this user
/// ([`barring_folder`]), that folder is named: "a folder on its way" left the reader to find which.
pub fn readable_advice(path: &Path) -> String {
    advice(path, barring_folder(path))
}

/// [`readable_advice`] for `path`, whose barring folder (if any) the caller has looked up.
fn advice(path: &Path, barring: Option<&Path>) -> String {
    match barring {
        Some(folder) => format!(
            "make the folder {} on its way passable by the user sonitor runs as (`chmod a+x {}`, or chown it to \
             that user)",
            folder.display(),
            folder.display()
        ),
        None => format!(
            "make it readable by the user sonitor runs as (`chmod a+r {}` and `a+x` its folders, or chown it to \
             that user)",
            path.display()
        ),
    }
}

/// What to add to an error reading `path`: where this user may not, [`readable_advice`]; nothing for any other
/// error.
pub fn denied_hint(e: &std::io::Error, path: &Path) -> String {
    if e.kind() != std::io::ErrorKind::PermissionDenied {
        return String::new();
    }
    let barring = barring_folder(path);
    let who = if barring.is_some() {
        "this user may not pass a folder on its way"
    } else {
        "this user may not read it"
    };
    format!(" ({who}: {})", advice(path, barring))
}

/// Opens `path` for reading if it is a regular file (after following links).
pub fn open(path: &Path) -> std::io::Result<std::fs::File> {
    if !std::fs::metadata(path)?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            NOT_A_FILE,
        ));
    }
    std::fs::File::open(path)
}

/// The bytes of `path` if it is a regular file ([`open`]).
pub fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    open(path)?.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Whether `e` is [`open`]'s refusal of a path that is not a regular file.
pub fn is_not_a_file(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::InvalidInput && e.to_string() == NOT_A_FILE
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    /// Where a directory that is not there would be made: its nearest ancestor that is, the working directory for
    /// a relative path.
    #[test]
    fn the_nearest_existing_ancestor_is_where_a_directory_would_be_made() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(nearest_existing(&d.path().join("a/b")), Some(d.path()));
        assert_eq!(nearest_existing(d.path()), Some(d.path()));
        assert_eq!(
            nearest_existing(Path::new("no-such-dir-here/x")),
            Some(Path::new("."))
        );
    }

    /// A way no folder bars: `None`, whether the file is there or not (a missing name ends the walk).
    #[test]
    fn no_barring_folder_where_none_bars_the_way() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("x");
        std::fs::write(&file, b"abc").unwrap();
        assert_eq!(barring_folder(&file), None);
        assert_eq!(barring_folder(&d.path().join("none/deeper/x")), None);
        assert_eq!(barring_folder(Path::new("no-such-dir-here/x")), None);
        assert!(readable_advice(&file).contains(&format!("chmod a+r {}", file.display())));
    }

    /// A file this user may not read says what to do (the WAV input, the MQTT password file: review23 found them
    /// bare "Permission denied"); other errors are left as they are.
    #[test]
    fn a_file_this_user_may_not_read_says_what_to_do() {
        use std::io::{Error, ErrorKind};
        let e = crate::audio::wav::WavError::Open {
            path: "/srv/rec.wav".into(),
            error: Error::from(ErrorKind::PermissionDenied),
        }
        .to_string();
        assert!(
            e.starts_with("/srv/rec.wav: cannot open: permission denied")
                && e.contains("make it readable by the user sonitor runs as"),
            "{e}"
        );
        assert_eq!(
            denied_hint(&Error::from(ErrorKind::NotFound), Path::new("/srv/rec.wav")),
            ""
        );
    }

    #[test]
    fn a_fifo_or_a_directory_is_refused_before_it_is_opened() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("f");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo");
        for p in [fifo.as_path(), d.path()] {
            let e = read(p).unwrap_err();
            assert!(is_not_a_file(&e), "{e}");
        }
        let file = d.path().join("x");
        std::fs::write(&file, b"abc").unwrap();
        assert_eq!(read(&file).unwrap(), b"abc");
        let e = read(&d.path().join("none")).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        assert!(!is_not_a_file(&e));
    }
}
