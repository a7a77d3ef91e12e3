//! Evidence clips: a WAV of the audio around an alarm onset, kept in the state directory with retention by
//! count, age and total size (oldest deleted first).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::config::ClipsConfig;
use crate::pipeline::ClipAudio;

/// Writes the clip as 16-bit PCM (creating its directory).
pub fn write_clip(c: &ClipAudio) -> anyhow::Result<()> {
    if let Some(dir) = c.path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    sonitor_core::audio::write_wav_i16(&c.path, &c.samples, c.sample_rate)?;
    Ok(())
}

fn wav_files(dir: &Path, out: &mut Vec<(PathBuf, SystemTime, u64)>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(md) = e.metadata() else { continue };
        if md.is_dir() {
            wav_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "wav") {
            out.push((p, md.modified().unwrap_or(SystemTime::UNIX_EPOCH), md.len()));
        }
    }
}

/// Deletes the oldest clips until the count, age and size limits hold; returns how many were deleted.
pub fn enforce_retention(dir: &Path, cfg: &ClipsConfig) -> usize {
    let mut files = Vec::new();
    wav_files(dir, &mut files);
    files.sort_by_key(|f| std::cmp::Reverse(f.1));
    let now = SystemTime::now();
    let mut kept_bytes = 0u64;
    let mut deleted = 0;
    for (i, (path, modified, len)) in files.iter().enumerate() {
        let too_old = now
            .duration_since(*modified)
            .is_ok_and(|age| age > cfg.max_age);
        let too_many = i >= cfg.max_count;
        let too_big = kept_bytes + len > cfg.max_bytes;
        if too_old || too_many || too_big {
            if std::fs::remove_file(path).is_ok() {
                deleted += 1;
            }
        } else {
            kept_bytes += len;
        }
    }
    deleted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_keeps_only_the_newest() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..5 {
            let c = ClipAudio {
                machine: 0,
                path: d.path().join("m").join(format!("e{i}.wav")),
                samples: vec![0.1; 1600],
                sample_rate: 16_000,
            };
            write_clip(&c).unwrap();
            let t = SystemTime::now() - std::time::Duration::from_secs(100 - i * 10);
            let f = std::fs::File::options().write(true).open(&c.path).unwrap();
            f.set_modified(t).unwrap();
        }
        let cfg = ClipsConfig {
            max_count: 3,
            ..Default::default()
        };
        assert_eq!(enforce_retention(d.path(), &cfg), 2);
        assert!(!d.path().join("m/e0.wav").exists());
        assert!(!d.path().join("m/e1.wav").exists());
        assert!(d.path().join("m/e4.wav").exists());
        let cfg = ClipsConfig {
            max_age: std::time::Duration::from_secs(75),
            ..Default::default()
        };
        assert_eq!(enforce_retention(d.path(), &cfg), 1, "e2 is 80 s old");
        let cfg = ClipsConfig {
            max_bytes: 4000,
            ..Default::default()
        };
        assert_eq!(
            enforce_retention(d.path(), &cfg),
            1,
            "two 3.2 kB clips exceed 4 kB"
        );
        assert!(d.path().join("m/e4.wav").exists());
    }
}
