//! `sonitor-train import`: long recordings of a machine cut into the clips of a data set in the DCASE layout, the
//! one `fit`, `eval` and `baseline` read. A maintenance engineer records a machine running normally for half an
//! hour (per operating condition); this names and cuts it:
//!
//! ```text
//! sonitor-train import --data MY_DATA --type pump --attrs load_50 pump-2026-12-01.wav
//!   → MY_DATA/pump/train/section_00_source_train_normal_0000_load_50.wav …   (10-s clips, 16 kHz mono 16-bit)
//!     MY_DATA/pump/imported.csv                                               (which recording, from when)
//! ```
//!
//! Clips are numbered on from the highest index already there for the same section, domain, split and condition,
//! so several recordings (and conditions) go into one data set by running it again; no existing file is ever
//! replaced, and a recording already imported (the log lists it) is refused rather than learned twice. Every
//! recording is checked to its end before anything is written. A recording's tail shorter than a clip is left out
//! (and said), and so is a clip of digital silence (a muted input records nothing to learn). A clip whose samples
//! go beyond full scale (a float recording's headroom) is written as 32-bit float, as recorded, not clipped.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use sonitor_core::audio::{self, ChannelSelect};
use sonitor_core::dcase::{ClipName, Condition, Domain, Split};

/// The rate of the written clips, the features' rate.
const RATE: u32 = 16_000;

#[derive(clap::Args, Debug, Clone)]
pub struct ImportArgs {
    /// Data set root to add the clips to (created when missing).
    #[arg(long)]
    pub data: PathBuf,
    /// Machine type: the data set's folder, and the first half of the daemon's `section = "<type>/section_SS"`.
    /// Letters, digits, '-' and '_'.
    #[arg(long = "type")]
    pub machine_type: String,
    /// Section number (one machine, or one group of alike machines, per section).
    #[arg(long, default_value_t = 0)]
    pub section: u16,
    /// The operating condition while recording, as `key_value` pairs joined by '_' (`load_50_speed_1450`): what
    /// `fit --labels attribute` learns to tell apart. Empty: none.
    #[arg(long, default_value = "")]
    pub attrs: String,
    /// `source`, or `target` for the few clips of a new condition (DCASE's domain shift).
    #[arg(long, default_value = "source", value_parser = ["source", "target"])]
    pub domain: String,
    /// `train` (normal clips to learn from) or `test` (labelled clips for `eval`).
    #[arg(long, default_value = "train", value_parser = ["train", "test"])]
    pub split: String,
    /// `normal`, or `anomaly` for a recording of a known fault (test clips only).
    #[arg(long, default_value = "normal", value_parser = ["normal", "anomaly"])]
    pub condition: String,
    /// Length of each clip in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub clip_seconds: f64,
    /// The channel of a multichannel recording to take, counted from 0 (default: the mean of all channels).
    #[arg(long)]
    pub channel: Option<u16>,
    /// The recordings (WAV: PCM 8/16/24/32-bit or float, RF64 past 4 GiB, any rate: resampled to 16 kHz).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// What an import wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Imported {
    /// The clips written, in order.
    pub clips: Vec<PathBuf>,
    /// Seconds of the recordings left out: tails shorter than a clip and silent clips.
    pub left_out_seconds: f64,
    /// Clips left out as digital silence.
    pub silent: usize,
    /// Clips with samples beyond full scale (a float recording's headroom), written as 32-bit float instead of
    /// 16-bit PCM, which would clip them.
    pub float_clips: usize,
    /// The largest magnitude among those clips' samples (0 when none).
    pub float_peak: f32,
    /// Warnings to print, one per recording of several channels mixed without `--channel` (as `fit` warns of
    /// multichannel training clips): the daemon scores one channel, not their mix.
    pub warnings: Vec<String>,
}

pub fn run(a: &ImportArgs) -> anyhow::Result<()> {
    let r = import(a)?;
    for w in &r.warnings {
        eprintln!("{w}");
    }
    let first = r
        .clips
        .first()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy());
    let last = r
        .clips
        .last()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy());
    let none = match (first, last) {
        (Some(f), Some(l)) => {
            println!(
                "{}: {} clip(s) of {} s from {} recording(s): {f} … {l}",
                a.data.join(&a.machine_type).join(&a.split).display(),
                r.clips.len(),
                a.clip_seconds,
                a.files.len()
            );
            None
        }
        _ if r.silent > 0 => Some(
            "no clip was written: every clip was digital silence once written in 16 bits (a muted input, or a \
             recording too quiet for 16-bit clips)"
                .to_string(),
        ),
        _ => Some(format!(
            "no clip was written: every recording is shorter than one clip of {} s (an empty data chunk \
             included): give longer recordings or a shorter --clip-seconds",
            a.clip_seconds
        )),
    };
    if r.float_clips > 0 {
        println!(
            "{} clip(s) go beyond full scale (peak {:.3}, {:+.1} dBFS): written as 32-bit float WAV, as recorded, \
             instead of clipped to 16 bits",
            r.float_clips,
            r.float_peak,
            20.0 * r.float_peak.log10()
        );
    }
    if r.left_out_seconds > 0.0 {
        println!(
            "left out: {:.1} s ({} silent clip(s); the rest tails shorter than a clip)",
            r.left_out_seconds, r.silent
        );
    }
    match none {
        Some(why) => anyhow::bail!(why),
        None => Ok(()),
    }
}

/// Checks the arguments and every recording, then cuts and writes the clips. Returns what it wrote.
pub fn import(a: &ImportArgs) -> anyhow::Result<Imported> {
    let ok_name = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !ok_name(&a.machine_type) {
        bail!(
            "--type '{}': use letters, digits, '-' and '_' (it names a folder and the daemon's section)",
            a.machine_type
        );
    }
    if !a.attrs.is_empty()
        && !a.attrs.split('_').all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        })
    {
        bail!(
            "--attrs '{}': key_value pairs joined by '_' (e.g. load_50_speed_1450), each part letters, digits, \
             '-' or '.'",
            a.attrs
        );
    }
    // A key without its value (`load`, `load_50_speed`) would be read back as pairs shifted by one: `fit --labels
    // attribute` and the DCASE attribute columns take the parts two by two.
    let parts = a.attrs.split('_').count();
    if !a.attrs.is_empty() && parts % 2 == 1 {
        bail!(
            "--attrs '{}': key_value pairs joined by '_' (e.g. load_50_speed_1450), but its {parts} part(s) are an \
             odd number: give each key its value ('{}_VALUE'?)",
            a.attrs,
            a.attrs
        );
    }
    let domain = if a.domain == "target" {
        Domain::Target
    } else {
        Domain::Source
    };
    let split = if a.split == "test" {
        Split::Test
    } else {
        Split::Train
    };
    let condition = if a.condition == "anomaly" {
        Condition::Anomaly
    } else {
        Condition::Normal
    };
    if split == Split::Train && condition == Condition::Anomaly {
        bail!(
            "--condition anomaly with --split train: train/ holds normal clips only (fit would learn the fault as \
             normal); import a fault's recording with --split test"
        );
    }
    let clip_len = (a.clip_seconds * f64::from(RATE)).round();
    if !(clip_len >= 1024.0 && clip_len <= f64::from(RATE) * 3600.0) {
        bail!(
            "--clip-seconds {}: between 0.064 s (one STFT frame) and an hour",
            a.clip_seconds
        );
    }
    let clip_len = clip_len as usize;
    let clip_seconds = clip_len as f64 / f64::from(RATE);
    let channel = a.channel.map_or(ChannelSelect::Mix, ChannelSelect::Index);
    // Every recording checked to its end (and its channel there) before anything is written.
    let mut infos = Vec::with_capacity(a.files.len());
    for f in &a.files {
        let info = audio::check_wav(f)?;
        if let Some(c) = a.channel {
            if c >= info.channels {
                bail!(
                    "{}: --channel {c}, but the recording has {} channel(s) (counted from 0)",
                    f.display(),
                    info.channels
                );
            }
        }
        infos.push(info);
    }

    // Not into a set that `synth` did not finish: its next run, which finishes it, replaces its clips.
    sonitor_core::dcase::check_finished(&a.data)?;
    let type_dir = a.data.join(&a.machine_type);
    let log_path = type_dir.join("imported.csv");
    // The log names each recording wherever the command was run from. A recording imported before (or named twice)
    // would be learned twice over: refused, nothing written.
    // Each recording's field in the log: its canonical path, quoted as CSV needs.
    let recorded: Vec<String> = a
        .files
        .iter()
        .map(|f| {
            let p = std::fs::canonicalize(f).unwrap_or_else(|_| f.clone());
            csv_field(&p.display().to_string())
        })
        .collect();
    let logged = std::fs::read_to_string(&log_path).unwrap_or_default();
    for (i, r) in recorded.iter().enumerate() {
        // Its lines' `start_seconds,seconds`.
        let listed: Vec<(f64, f64)> = logged
            .lines()
            .filter_map(|l| l.split_once(','))
            .filter_map(|(_, rest)| rest.strip_prefix(r.as_str())?.strip_prefix(','))
            .map(|t| {
                let mut n = t.split(',').map(|v| v.trim().parse::<f64>().unwrap_or(0.0));
                (n.next().unwrap_or(0.0), n.next().unwrap_or(0.0))
            })
            .collect();
        if !listed.is_empty() {
            // An import stopped part-way (killed, a full disk) lists the clips it wrote: say how far it got, or
            // "already imported" reads as the whole recording learned.
            let reached = listed.iter().map(|(s, n)| s + n).fold(0.0, f64::max);
            let length = infos[i].duration_seconds();
            let short = if length - reached >= clip_seconds {
                format!(
                    ", {} clip(s) up to {reached:.0} s of its {length:.0} s: an import stopped part-way, or \
                     silence at its end, left out",
                    listed.len()
                )
            } else {
                String::new()
            };
            bail!(
                "{}: already imported ({} lists its clips{short}); nothing written. To import it again, remove \
                 its lines there and its clips first",
                a.files[i].display(),
                log_path.display()
            );
        }
        if recorded[..i].contains(r) {
            bail!("{}: named twice; nothing written", a.files[i].display());
        }
    }
    let dir = type_dir.join(split.as_str());
    crate::train::make_out_dir(&dir, "--data", "nothing was imported")?;
    let mut index = next_index(&dir, a.section, domain, split, condition)?;
    let new_log = !log_path.exists();
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    if new_log {
        writeln!(log, "file_name,recording,start_seconds,seconds")?;
    }
    let mut out = Imported {
        clips: Vec::new(),
        left_out_seconds: 0.0,
        silent: 0,
        float_clips: 0,
        float_peak: 0.0,
        warnings: a
            .files
            .iter()
            .zip(&infos)
            .filter(|(_, info)| a.channel.is_none() && info.channels > 1)
            .map(|(f, info)| {
                format!(
                    "warning: {}: its {} channels are mixed (their mean), while the daemon scores one channel of \
                     its input (each machine's `channel`), which hears the machine otherwise; import the channel \
                     the machine will be heard on with --channel N (counted from 0)",
                    f.display(),
                    info.channels
                )
            })
            .chain(
                a.files
                    .iter()
                    .zip(&infos)
                    .filter(|(_, info)| info.sample_rate < RATE)
                    .map(|(f, info)| {
                        format!(
                            "warning: {}: recorded at {} Hz, below the clips' {RATE} Hz: upsampled, it has nothing \
                             above {} Hz, which the machine's sound at full rate has; the model learns that gap \
                             and may raise false alarms on it: record at {RATE} Hz or more",
                            f.display(),
                            info.sample_rate,
                            info.sample_rate / 2
                        )
                    }),
            )
            .collect(),
    };
    for (f, recorded) in a.files.iter().zip(&recorded) {
        let mut clips = Clips::new(f, channel, clip_len)?;
        let mut k = 0u32;
        while let Some(clip) = clips.next_clip()? {
            let start = f64::from(k) * clip_seconds;
            k += 1;
            // Silent as written: a recording quieter than 16 bits resolve gives clips of zeros.
            if crate::data::is_digital_silence(clip) {
                out.silent += 1;
                out.left_out_seconds += clip_seconds;
                continue;
            }
            let name = ClipName::format(a.section, domain, split, condition, index, &a.attrs);
            let path = dir.join(&name);
            // Never replaces a clip: the index is past every one of this kind, but another run may be writing.
            if path.exists() {
                bail!("{}: already there; nothing replaced", path.display());
            }
            // Beyond full scale (a float recorder's headroom, a loud impact): 16 bits would flatten its peaks, and
            // the same recording placed in train/ is read unclipped.
            let peak = clip.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            if peak > 1.0 {
                audio::write_wav_f32_whole(&path, clip, RATE)?;
                out.float_clips += 1;
                out.float_peak = out.float_peak.max(peak);
            } else {
                audio::write_wav_i16_whole(&path, clip, RATE)?;
            }
            // One write per line: an import killed here leaves the log's lines whole.
            let line = format!(
                "{}/{}/{name},{},{:.3},{:.3}\n",
                a.machine_type,
                split.as_str(),
                recorded,
                start,
                clip_seconds
            );
            log.write_all(line.as_bytes())
                .with_context(|| format!("writing {}", log_path.display()))?;
            out.clips.push(path);
            index += 1;
        }
        out.left_out_seconds += clips.pending.len() as f64 / f64::from(RATE);
    }
    log.flush()?;
    Ok(out)
}

/// A recording read block by block as 16 kHz mono clips: memory stays at a block and a clip however long the
/// recording (a whole shift at 48 kHz in stereo would be gigabytes read at once).
struct Clips {
    blocks: audio::WavBlocks,
    channels: usize,
    channel: ChannelSelect,
    resampler: Option<audio::StreamResampler>,
    clip_len: usize,
    /// 16 kHz samples read and not yet handed out as a clip; at the end, the tail shorter than a clip.
    pending: Vec<f32>,
    /// The clip handed out last (its samples were at the front of `pending`).
    handed: usize,
    interleaved: Vec<f32>,
    mono: Vec<f32>,
    ended: bool,
}

impl Clips {
    fn new(path: &Path, channel: ChannelSelect, clip_len: usize) -> anyhow::Result<Clips> {
        let blocks = audio::WavBlocks::open(path)?;
        let info = blocks.info();
        let resampler = (info.sample_rate != RATE)
            .then(|| audio::StreamResampler::new(info.sample_rate, RATE))
            .transpose()
            .with_context(|| format!("{}: resampling to {RATE} Hz", path.display()))?;
        Ok(Clips {
            blocks,
            channels: usize::from(info.channels.max(1)),
            channel,
            resampler,
            clip_len,
            pending: Vec::new(),
            handed: 0,
            interleaved: Vec::new(),
            mono: Vec::new(),
            ended: false,
        })
    }

    /// The next whole clip, `None` at the end of the recording (its tail stays in `pending`).
    fn next_clip(&mut self) -> anyhow::Result<Option<&[f32]>> {
        self.pending.drain(..self.handed);
        self.handed = 0;
        while self.pending.len() < self.clip_len && !self.ended {
            self.interleaved.clear();
            let frames = (1 << 16) / self.channels;
            if self
                .blocks
                .read_into(&mut self.interleaved, frames * self.channels)?
                == 0
            {
                self.ended = true;
                if let Some(r) = &mut self.resampler {
                    r.finish(&mut self.pending)?;
                }
                break;
            }
            self.mono.clear();
            audio::to_mono(
                &self.interleaved,
                self.channels,
                self.channel,
                &mut self.mono,
            );
            match &mut self.resampler {
                Some(r) => r.push(&self.mono, &mut self.pending)?,
                None => self.pending.extend_from_slice(&self.mono),
            }
        }
        if self.pending.len() < self.clip_len {
            return Ok(None);
        }
        self.handed = self.clip_len;
        Ok(Some(&self.pending[..self.clip_len]))
    }
}

/// The index after the highest of the clips in `dir` with this section, domain, split and condition (0 when none).
fn next_index(
    dir: &Path,
    section: u16,
    domain: Domain,
    split: Split,
    condition: Condition,
) -> anyhow::Result<u32> {
    let mut next = 0;
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        let Ok(n) = ClipName::parse(&e.file_name().to_string_lossy()) else {
            continue;
        };
        if n.section == section
            && n.domain == Some(domain)
            && n.split == Some(split)
            && n.condition == Some(condition)
        {
            next = next.max(n.index + 1);
        }
    }
    Ok(next)
}

/// A CSV field, quoted when it holds a comma, a quote or a line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
