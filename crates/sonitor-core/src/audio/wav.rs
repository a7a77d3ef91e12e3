//! WAV decoding into normalised `f32` samples.
//!
//! Supported: integer PCM at 8, 16, 24 and 32 bits, IEEE float at 32 bits, plain `WAVE_FORMAT_PCM` /
//! `WAVE_FORMAT_IEEE_FLOAT` headers and `WAVE_FORMAT_EXTENSIBLE` headers, any channel count. Every error names
//! the file, so that a maintenance engineer can find the corrupt recording among thousands.

use std::path::{Path, PathBuf};

/// Which channel of a multi-channel file to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelSelect {
    /// The mean of all channels (the identity for mono files).
    #[default]
    Mix,
    /// One channel, counted from 0.
    Index(u16),
}

/// What the header of a WAV file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WavInfo {
    pub sample_rate: u32,
    pub channels: u16,
    pub bits_per_sample: u16,
    pub float: bool,
    /// Frames (samples per channel) the header announces.
    pub frames: u64,
}

impl WavInfo {
    pub fn duration_seconds(&self) -> f64 {
        self.frames as f64 / self.sample_rate as f64
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WavError {
    // The cause is in the message and not a `source()`, or `{:#}` (anyhow) would print it twice.
    #[error("{path}: cannot open: {error}")]
    Open {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: not a readable WAV file: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "{path}: truncated: the header announces {expected} frames but the data ends after {got}"
    )]
    Truncated {
        path: PathBuf,
        expected: u64,
        got: u64,
    },
    #[error("{path}: unsupported encoding: {reason}")]
    Unsupported { path: PathBuf, reason: String },
    #[error("{path}: channel {channel} requested but the file has {channels} channel(s)")]
    NoSuchChannel {
        path: PathBuf,
        channel: u16,
        channels: u16,
    },
    #[error("{path}: cannot write: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("{path}: resampling failed: {error}")]
    Resample {
        path: PathBuf,
        error: super::resample::ResampleError,
    },
}

fn classify(path: &Path, err: hound::Error) -> WavError {
    let path = path.to_path_buf();
    match err {
        hound::Error::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => WavError::Corrupt {
            path,
            reason: "unexpected end of file inside the header".into(),
        },
        hound::Error::IoError(e) => WavError::Open { path, error: e },
        hound::Error::FormatError(reason) => WavError::Corrupt {
            path,
            reason: reason.to_string(),
        },
        hound::Error::Unsupported => WavError::Unsupported {
            path,
            reason: "format tag or sample layout not supported (PCM 8/16/24/32-bit and float 32-bit are)".into(),
        },
        other => WavError::Corrupt {
            path,
            reason: other.to_string(),
        },
    }
}

/// Reads only the header.
pub fn read_wav_info(path: &Path) -> Result<WavInfo, WavError> {
    let reader = open(path)?;
    Ok(info_of(&reader))
}

/// Reads the header and checks the data to its end without keeping it ([`WavBlocks::check_to_end`]): the errors a
/// full read would meet, before any of it is used.
pub fn check_wav(path: &Path) -> Result<WavInfo, WavError> {
    let blocks = WavBlocks::open(path)?;
    let info = blocks.info();
    blocks.check_to_end()?;
    Ok(info)
}

fn open(path: &Path) -> Result<hound::WavReader<std::io::BufReader<std::fs::File>>, WavError> {
    let file = std::fs::File::open(path).map_err(|e| WavError::Open {
        path: path.to_path_buf(),
        error: e,
    })?;
    let reader =
        hound::WavReader::new(std::io::BufReader::new(file)).map_err(|e| classify(path, e));
    // A recorder that streams to a pipe cannot go back to write the lengths: it leaves 0xFFFFFFFF (or 0) in the
    // data chunk's header. hound then reports an error, no samples, or about 4 GiB of them; only then is the
    // chunk list read again to say which it is (a well-formed file is not read twice).
    let suspect = match &reader {
        Err(_) => true,
        Ok(r) => {
            let block =
                u64::from(r.spec().channels) * u64::from(r.spec().bits_per_sample).div_ceil(8);
            let bytes = u64::from(r.duration()) * block;
            bytes == 0 || bytes + block > u64::from(u32::MAX)
        }
    };
    match (reader, suspect.then(|| data_chunk(path)).flatten()) {
        (_, Some((_, u32::MAX))) => Err(unknown_length(path, &"0xFFFFFFFF")),
        (Err(e), Some((_, 0))) => Err(unknown_length(path, &e)),
        (Ok(_), Some((data_at, 0))) if file_len(path) > data_at => {
            Err(unknown_length(path, &"0 frames"))
        }
        (r, _) => r,
    }
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

fn unknown_length(path: &Path, what: &dyn std::fmt::Display) -> WavError {
    WavError::Corrupt {
        path: path.to_path_buf(),
        reason: format!(
            "the header gives no data length ({what}), as a recorder streaming to a pipe leaves it: rewrite the \
             header, e.g. `sox in.wav out.wav` or `ffmpeg -i in.wav out.wav`"
        ),
    }
}

/// Where the `data` chunk's samples start and the length its header announces, read from the RIFF chunk list
/// directly (hound does not say). `None` when the file has no such chunk in its first 64 KiB.
fn data_chunk(path: &Path) -> Option<(u64, u32)> {
    use std::io::Read;
    let mut head = Vec::with_capacity(1 << 16);
    std::fs::File::open(path)
        .ok()?
        .take(1 << 16)
        .read_to_end(&mut head)
        .ok()?;
    if head.len() < 12 || &head[0..4] != b"RIFF" || &head[8..12] != b"WAVE" {
        return None;
    }
    let mut at = 12usize;
    while at + 8 <= head.len() {
        let size = u32::from_le_bytes(head[at + 4..at + 8].try_into().ok()?);
        if &head[at..at + 4] == b"data" {
            return Some(((at + 8) as u64, size));
        }
        // Chunks are padded to an even length.
        at = at
            .checked_add(8)?
            .checked_add(size as usize + (size as usize & 1))?;
    }
    None
}

fn info_of<R: std::io::Read>(reader: &hound::WavReader<R>) -> WavInfo {
    let spec = reader.spec();
    WavInfo {
        sample_rate: spec.sample_rate,
        channels: spec.channels,
        bits_per_sample: spec.bits_per_sample,
        float: spec.sample_format == hound::SampleFormat::Float,
        frames: reader.duration() as u64,
    }
}

/// The highest sample rate a WAV may declare (professional audio interfaces go to 384 kHz).
pub const MAX_SAMPLE_RATE: u32 = 768_000;
/// The most channels a WAV may declare (multi-channel interfaces and arrays stay well below).
pub const MAX_CHANNELS: u16 = 256;

/// A WAV file decoded block by block into interleaved `f32` samples (the decoding of [`read_wav`]), so that a
/// long recording is replayed in constant memory. Header problems are reported by [`WavBlocks::open`]; a truncated
/// data chunk or a sample that is not a finite number by the [`WavBlocks::read_into`] that reaches it.
pub struct WavBlocks {
    source: Source,
    path: PathBuf,
    info: WavInfo,
    /// Interleaved samples read so far.
    read: u64,
}

/// How the samples are decoded. 16-bit PCM, by far the most common recording format, is converted from the raw
/// bytes in bulk (hound's per-sample iterator was a quarter of the daemon's CPU time replaying a file); the other
/// formats go through hound.
enum Source {
    Pcm16 {
        reader: std::io::BufReader<std::fs::File>,
        /// Bytes of the data chunk not read yet.
        remaining: u64,
        bytes: Vec<u8>,
    },
    /// Integer PCM scaled by 1 / 2^(bits-1).
    Int {
        reader: hound::WavReader<std::io::BufReader<std::fs::File>>,
        scale: f64,
    },
    Float(hound::WavReader<std::io::BufReader<std::fs::File>>),
}

impl WavBlocks {
    pub fn open(path: &Path) -> Result<Self, WavError> {
        let reader = open(path)?;
        let info = info_of(&reader);
        let corrupt = |reason: &str| WavError::Corrupt {
            path: path.to_path_buf(),
            reason: reason.into(),
        };
        let unsupported = |reason: String| WavError::Unsupported {
            path: path.to_path_buf(),
            reason,
        };
        if info.channels == 0 {
            return Err(corrupt("header says 0 channels"));
        }
        if info.sample_rate == 0 {
            return Err(corrupt("header says sample rate 0"));
        }
        // Beyond these the header is damaged, or the file is no microphone recording: a replay would size its
        // buffers and resampler from them.
        if info.sample_rate > MAX_SAMPLE_RATE {
            return Err(unsupported(format!(
                "sample rate {} Hz (at most {MAX_SAMPLE_RATE} Hz is supported)",
                info.sample_rate
            )));
        }
        if info.channels > MAX_CHANNELS {
            return Err(unsupported(format!(
                "{} channels (at most {MAX_CHANNELS} are supported)",
                info.channels
            )));
        }
        let source = match (info.float, info.bits_per_sample) {
            (false, 16) => Source::Pcm16 {
                remaining: info.frames * info.channels as u64 * 2,
                // WavReader::new stops at the start of the data chunk.
                reader: reader.into_inner(),
                bytes: Vec::new(),
            },
            (false, bits @ (8 | 24 | 32)) => Source::Int {
                reader,
                scale: 1.0 / (1u64 << (bits - 1)) as f64,
            },
            (true, 32) => Source::Float(reader),
            (float, bits) => {
                return Err(unsupported(format!(
                    "{} samples of {bits} bits (PCM 8/16/24/32-bit and float 32-bit are supported)",
                    if float { "float" } else { "integer" }
                )))
            }
        };
        Ok(Self {
            source,
            path: path.to_path_buf(),
            info,
            read: 0,
        })
    }

    pub fn info(&self) -> WavInfo {
        self.info
    }

    fn truncated(&self) -> WavError {
        WavError::Truncated {
            path: self.path.clone(),
            expected: self.info.frames,
            got: self.read / self.info.channels as u64,
        }
    }

    /// Checks the rest of the data chunk without keeping it: the errors [`Self::read_into`] would meet. For 16-bit
    /// PCM, where a sample cannot be invalid, the file's length is enough; other formats are decoded.
    pub fn check_to_end(mut self) -> Result<(), WavError> {
        if let Source::Pcm16 {
            reader, remaining, ..
        } = &mut self.source
        {
            let io = |e| WavError::Open {
                path: self.path.clone(),
                error: e,
            };
            let at = std::io::Seek::stream_position(reader).map_err(io)?;
            let len = reader.get_ref().metadata().map_err(io)?.len();
            let available = len.saturating_sub(at);
            if available < *remaining {
                self.read += available / 2;
                return Err(self.truncated());
            }
            return Ok(());
        }
        let mut scratch = Vec::with_capacity(1 << 16);
        loop {
            scratch.clear();
            if self.read_into(&mut scratch, 1 << 16)? == 0 {
                return Ok(());
            }
        }
    }

    /// Appends up to `max` interleaved samples to `out` and returns how many; 0 at the end of the data.
    pub fn read_into(&mut self, out: &mut Vec<f32>, max: usize) -> Result<usize, WavError> {
        let before = out.len();
        let failed = match &mut self.source {
            Source::Pcm16 {
                reader,
                remaining,
                bytes,
            } => {
                use std::io::Read;
                let want = (*remaining).min(max.saturating_mul(2) as u64);
                bytes.clear();
                let got = reader.take(want).read_to_end(bytes);
                *remaining -= bytes.len() as u64;
                out.extend(
                    bytes
                        .chunks_exact(2)
                        .map(|b| i16::from_le_bytes([b[0], b[1]]) as f32 / 32768.0),
                );
                match got {
                    Err(e) => Some(hound::Error::IoError(e)),
                    // The data chunk ends before the header says it does.
                    Ok(n) if (n as u64) < want => Some(hound::Error::IoError(
                        std::io::ErrorKind::UnexpectedEof.into(),
                    )),
                    Ok(_) => None,
                }
            }
            Source::Int { reader, scale } => {
                let scale = *scale;
                pull(reader, max, out, |v: i32| (v as f64 * scale) as f32)
            }
            Source::Float(reader) => {
                let failed = pull(reader, max, out, |v: f32| v);
                // Only a float sample can be invalid.
                if let Some(bad) = out[before..].iter().position(|v| !v.is_finite()) {
                    return Err(WavError::Corrupt {
                        path: self.path.clone(),
                        reason: format!("sample {} is not a finite number", self.read + bad as u64),
                    });
                }
                failed
            }
        };
        let n = out.len() - before;
        self.read += n as u64;
        match failed {
            // hound reports a short data chunk as an I/O error ("failed to read enough bytes").
            Some(hound::Error::IoError(_)) => Err(self.truncated()),
            Some(e) => Err(classify(&self.path, e)),
            None if n == 0 && self.read < self.info.frames * self.info.channels as u64 => {
                Err(self.truncated())
            }
            None => Ok(n),
        }
    }
}

/// Appends up to `max` samples of hound's iterator to `out`, converted; returns the error that stopped it, if any.
fn pull<S: hound::Sample>(
    reader: &mut hound::WavReader<std::io::BufReader<std::fs::File>>,
    max: usize,
    out: &mut Vec<f32>,
    convert: impl Fn(S) -> f32,
) -> Option<hound::Error> {
    for s in reader.samples::<S>().take(max) {
        match s {
            Ok(v) => out.push(convert(v)),
            Err(e) => return Some(e),
        }
    }
    None
}

/// Reads a whole WAV file as `f32` samples normalised to [-1, 1), keeping the file's sample rate.
///
/// Integer samples are divided by 2^(bits-1); float samples are taken as they are.
pub fn read_wav(path: &Path, channel: ChannelSelect) -> Result<(WavInfo, Vec<f32>), WavError> {
    let mut blocks = WavBlocks::open(path)?;
    let info = blocks.info();
    if let ChannelSelect::Index(c) = channel {
        if c >= info.channels {
            return Err(WavError::NoSuchChannel {
                path: path.to_path_buf(),
                channel: c,
                channels: info.channels,
            });
        }
    }
    let n_ch = info.channels as usize;
    let mut interleaved: Vec<f32> = Vec::with_capacity(info.frames as usize * n_ch);
    // Bounded blocks: one block of raw bytes at a time beside the decoded samples, not a copy of the whole file.
    while blocks.read_into(&mut interleaved, 1 << 16)? > 0 {}
    if n_ch == 1 {
        return Ok((info, interleaved));
    }
    let mut mono = Vec::with_capacity(info.frames as usize);
    to_mono(&interleaved, n_ch, channel, &mut mono);
    Ok((info, mono))
}

/// Appends to `out` the mono samples of whole frames of `interleaved` audio with `channels` channels: the channel
/// `channel` selects, or the mean of all of them. Every reader of WAV audio ([`read_wav`], streaming readers) takes
/// its mono signal this way.
pub fn to_mono(interleaved: &[f32], channels: usize, channel: ChannelSelect, out: &mut Vec<f32>) {
    match channel {
        _ if channels <= 1 => out.extend_from_slice(interleaved),
        ChannelSelect::Index(c) => out.extend(
            interleaved
                .iter()
                .skip(c as usize)
                .step_by(channels)
                .copied(),
        ),
        ChannelSelect::Mix => out.extend(
            interleaved
                .chunks_exact(channels)
                .map(|f| f.iter().sum::<f32>() / channels as f32),
        ),
    }
}

/// Writes mono 16-bit PCM, clipping to [-1, 1]. Used for data sets.
pub fn write_wav_i16(path: &Path, samples: &[f32], sample_rate: u32) -> Result<(), WavError> {
    let bytes = encode_wav_i16(path, samples, sample_rate)?;
    std::fs::write(path, bytes).map_err(|e| WavError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// [`write_wav_i16`], whole or not at all ([`crate::atomic_file::write`]): a write that fails (a full disk) leaves
/// no partial WAV under `path` and no temporary file. Evidence clips and imported clips are written this way.
pub fn write_wav_i16_whole(path: &Path, samples: &[f32], sample_rate: u32) -> Result<(), WavError> {
    let bytes = encode_wav_i16(path, samples, sample_rate)?;
    crate::atomic_file::write(path, &bytes).map_err(|e| WavError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// The bytes of a mono 16-bit PCM WAV file of `samples` (clipped to [-1, 1]); `path` names it in errors.
fn encode_wav_i16(path: &Path, samples: &[f32], sample_rate: u32) -> Result<Vec<u8>, WavError> {
    let err = |e: hound::Error| WavError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut bytes = std::io::Cursor::new(Vec::with_capacity(44 + samples.len() * 2));
    let mut w = hound::WavWriter::new(&mut bytes, spec).map_err(err)?;
    {
        let mut w16 = w.get_i16_writer(samples.len() as u32);
        for &s in samples {
            let v = (s.clamp(-1.0, 1.0) * 32767.0).round() as i16;
            w16.write_sample(v);
        }
        w16.flush().map_err(err)?;
    }
    w.finalize().map_err(err)?;
    Ok(bytes.into_inner())
}
