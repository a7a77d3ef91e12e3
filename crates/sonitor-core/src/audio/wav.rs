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
    #[error("{path}: cannot open: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
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
    #[error("{path}: resampling failed: {source}")]
    Resample {
        path: PathBuf,
        source: super::resample::ResampleError,
    },
}

fn classify(path: &Path, err: hound::Error) -> WavError {
    let path = path.to_path_buf();
    match err {
        hound::Error::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => WavError::Corrupt {
            path,
            reason: "unexpected end of file inside the header".into(),
        },
        hound::Error::IoError(e) => WavError::Open { path, source: e },
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

fn open(path: &Path) -> Result<hound::WavReader<std::io::BufReader<std::fs::File>>, WavError> {
    let file = std::fs::File::open(path).map_err(|e| WavError::Open {
        path: path.to_path_buf(),
        source: e,
    })?;
    hound::WavReader::new(std::io::BufReader::new(file)).map_err(|e| classify(path, e))
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

/// Reads a whole WAV file as `f32` samples normalised to [-1, 1), keeping the file's sample rate.
///
/// Integer samples are divided by 2^(bits-1); float samples are taken as they are.
pub fn read_wav(path: &Path, channel: ChannelSelect) -> Result<(WavInfo, Vec<f32>), WavError> {
    let mut reader = open(path)?;
    let info = info_of(&reader);
    if info.channels == 0 {
        return Err(WavError::Corrupt {
            path: path.to_path_buf(),
            reason: "header says 0 channels".into(),
        });
    }
    if info.sample_rate == 0 {
        return Err(WavError::Corrupt {
            path: path.to_path_buf(),
            reason: "header says sample rate 0".into(),
        });
    }
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
    let truncated = |got: usize| WavError::Truncated {
        path: path.to_path_buf(),
        expected: info.frames,
        got: (got / n_ch) as u64,
    };
    match (info.float, info.bits_per_sample) {
        (true, 32) => {
            for s in reader.samples::<f32>() {
                match s {
                    Ok(v) => interleaved.push(v),
                    // hound reports a short data chunk as an I/O error ("failed to read enough bytes").
                    Err(hound::Error::IoError(_)) => return Err(truncated(interleaved.len())),
                    Err(e) => return Err(classify(path, e)),
                }
            }
        }
        (false, bits @ (8 | 16 | 24 | 32)) => {
            let scale = 1.0 / (1u64 << (bits - 1)) as f64;
            for s in reader.samples::<i32>() {
                match s {
                    Ok(v) => interleaved.push((v as f64 * scale) as f32),
                    // hound reports a short data chunk as an I/O error ("failed to read enough bytes").
                    Err(hound::Error::IoError(_)) => return Err(truncated(interleaved.len())),
                    Err(e) => return Err(classify(path, e)),
                }
            }
        }
        (float, bits) => {
            return Err(WavError::Unsupported {
                path: path.to_path_buf(),
                reason: format!(
                    "{} samples of {bits} bits (PCM 8/16/24/32-bit and float 32-bit are supported)",
                    if float { "float" } else { "integer" }
                ),
            })
        }
    }
    if (interleaved.len() as u64) < info.frames * n_ch as u64 {
        return Err(truncated(interleaved.len()));
    }
    if let Some(bad) = interleaved.iter().position(|v| !v.is_finite()) {
        return Err(WavError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("sample {bad} is not a finite number"),
        });
    }
    let mono = match channel {
        _ if n_ch == 1 => interleaved,
        ChannelSelect::Index(c) => interleaved
            .iter()
            .skip(c as usize)
            .step_by(n_ch)
            .copied()
            .collect(),
        ChannelSelect::Mix => interleaved
            .chunks_exact(n_ch)
            .map(|f| f.iter().sum::<f32>() / n_ch as f32)
            .collect(),
    };
    Ok((info, mono))
}

/// Writes mono 16-bit PCM, clipping to [-1, 1]. Used for data sets and evidence clips.
pub fn write_wav_i16(path: &Path, samples: &[f32], sample_rate: u32) -> Result<(), WavError> {
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
    let mut w = hound::WavWriter::create(path, spec).map_err(err)?;
    {
        let mut w16 = w.get_i16_writer(samples.len() as u32);
        for &s in samples {
            let v = (s.clamp(-1.0, 1.0) * 32767.0).round() as i16;
            w16.write_sample(v);
        }
        w16.flush().map_err(err)?;
    }
    w.finalize().map_err(err)
}
