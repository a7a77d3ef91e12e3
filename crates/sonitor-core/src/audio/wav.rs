//! WAV decoding into normalised `f32` samples.
//!
//! Supported: integer PCM at 8, 16, 24 and 32 bits, IEEE float at 32 and 64 bits (what `scipy.io.wavfile.write`
//! writes for a float64 array), plain `WAVE_FORMAT_PCM` /
//! `WAVE_FORMAT_IEEE_FLOAT` headers and `WAVE_FORMAT_EXTENSIBLE` headers (whose samples may be narrower than their
//! slot, e.g. 24 valid bits in 32: stored left-justified), any channel count, any other chunks (LIST, bext, iXML,
//! fact, ...) before the data, and the RF64/BW64 variants that recorders write past 4 GiB (64-bit lengths in a
//! `ds64` chunk). The header is read here, the samples decoded from the raw bytes (hound only
//! writes). Every error names the file, so that a maintenance engineer can find the corrupt recording among
//! thousands.

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
    #[error(
        "{path}: cannot open: {error}{}",
        crate::regular_file::denied_hint(error, path)
    )]
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
    /// A replayed file whose format is no longer the one it had at start-up (a looped file replaced).
    #[error("{path}: {reason}")]
    Changed { path: PathBuf, reason: String },
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

fn corrupt(path: &Path, reason: impl Into<String>) -> WavError {
    WavError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn unsupported(path: &Path, reason: impl Into<String>) -> WavError {
    WavError::Unsupported {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// What the messages about an unsupported encoding add: what is supported, and how to get there.
const SUPPORTED: &str = "PCM 8/16/24/32-bit and float 32/64-bit are supported: convert the file, e.g. \
                         `sox in.wav -e signed-integer -b 16 out.wav` or `ffmpeg -i in.wav -c:a pcm_s16le out.wav`";

/// Reads only the header.
pub fn read_wav_info(path: &Path) -> Result<WavInfo, WavError> {
    Ok(WavBlocks::open(path)?.info())
}

/// Reads the header and checks the data to its end without keeping it ([`WavBlocks::check_to_end`]): the errors a
/// full read would meet, before any of it is used.
pub fn check_wav(path: &Path) -> Result<WavInfo, WavError> {
    let blocks = WavBlocks::open(path)?;
    let info = blocks.info();
    blocks.check_to_end()?;
    Ok(info)
}

/// How a sample is stored: the slot it takes in a frame (block align / channels) and its type. A sample narrower
/// than its slot (24 valid bits in 32, 16 in 32: `WAVE_FORMAT_EXTENSIBLE`'s valid bits) is stored left-justified,
/// its unused low bits zero, so reading the whole slot as an integer of the slot's width and scaling by that
/// width's full scale gives the sample exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    /// 8-bit PCM, unsigned (128 is silence).
    U8,
    I16,
    I24,
    I32,
    F32,
    F64,
}

impl Encoding {
    /// Whether samples are IEEE floats, which can be NaN or infinite.
    fn is_float(self) -> bool {
        matches!(self, Encoding::F32 | Encoding::F64)
    }

    /// Bytes a sample takes.
    fn width(self) -> usize {
        match self {
            Encoding::U8 => 1,
            Encoding::I16 => 2,
            Encoding::I24 => 3,
            Encoding::I32 | Encoding::F32 => 4,
            Encoding::F64 => 8,
        }
    }

    /// Appends the samples of the whole slots in `bytes` to `out`, integers divided by 2^(slot bits - 1). 16-bit
    /// PCM, by far the most common recording format, is why this is done in bulk (hound's per-sample iterator was a
    /// quarter of the daemon's CPU time replaying a file).
    fn decode(self, bytes: &[u8], out: &mut Vec<f32>) {
        match self {
            Encoding::U8 => out.extend(bytes.iter().map(|&b| (f32::from(b) - 128.0) / 128.0)),
            Encoding::I16 => out.extend(
                bytes
                    .as_chunks::<2>()
                    .0
                    .iter()
                    .map(|&s| f32::from(i16::from_le_bytes(s)) / 32_768.0),
            ),
            Encoding::I24 => {
                out.extend(
                    bytes.as_chunks::<3>().0.iter().map(|&[a, b, c]| {
                        (i32::from_le_bytes([0, a, b, c]) >> 8) as f32 / 8_388_608.0
                    }),
                )
            }
            Encoding::I32 => out.extend(
                bytes
                    .as_chunks::<4>()
                    .0
                    .iter()
                    .map(|&s| (f64::from(i32::from_le_bytes(s)) / 2_147_483_648.0) as f32),
            ),
            Encoding::F32 => out.extend(
                bytes
                    .as_chunks::<4>()
                    .0
                    .iter()
                    .map(|&s| f32::from_le_bytes(s)),
            ),
            Encoding::F64 => out.extend(
                bytes
                    .as_chunks::<8>()
                    .0
                    .iter()
                    .map(|&s| f64::from_le_bytes(s) as f32),
            ),
        }
    }
}

/// What the fmt chunk says.
struct Format {
    sample_rate: u32,
    channels: u16,
    /// Bytes a frame takes.
    block_align: u16,
    /// Valid bits of a sample.
    bits: u16,
    float: bool,
    encoding: Encoding,
}

const WAVE_FORMAT_PCM: u16 = 0x0001;
const WAVE_FORMAT_IEEE_FLOAT: u16 = 0x0003;
const WAVE_FORMAT_EXTENSIBLE: u16 = 0xFFFE;
/// The last 14 bytes of the `KSDATAFORMAT_SUBTYPE_*` GUIDs that carry a plain format tag in their first two.
const KSDATAFORMAT_SUFFIX: [u8; 14] = [
    0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xAA, 0x00, 0x38, 0x9B, 0x71,
];

/// The little-endian `u16` at `at` (0 beyond the end, which callers rule out by the length they check).
fn le16(bytes: &[u8], at: usize) -> u16 {
    bytes
        .get(at..)
        .and_then(<[u8]>::first_chunk)
        .map_or(0, |&b| u16::from_le_bytes(b))
}

/// The little-endian `u32` at `at` (0 beyond the end, which callers rule out by the length they check).
fn le32(bytes: &[u8], at: usize) -> u32 {
    bytes
        .get(at..)
        .and_then(<[u8]>::first_chunk)
        .map_or(0, |&b| u32::from_le_bytes(b))
}

/// The little-endian `u64` at `at` (0 beyond the end, which callers rule out by the length they check).
fn le64(bytes: &[u8], at: usize) -> u64 {
    bytes
        .get(at..)
        .and_then(<[u8]>::first_chunk)
        .map_or(0, |&b| u64::from_le_bytes(b))
}

/// A format tag as a user may know it.
fn format_name(tag: u16) -> String {
    let name = match tag {
        0x0002 => Some("Microsoft ADPCM"),
        0x0006 => Some("A-law"),
        0x0007 => Some("mu-law"),
        0x0011 => Some("IMA ADPCM"),
        0x0031 => Some("GSM 6.10"),
        0x0050 => Some("MPEG audio"),
        0x0055 => Some("MP3"),
        _ => None,
    };
    match name {
        Some(name) => format!("{name} (format tag {tag:#06x})"),
        None => format!("format tag {tag:#06x}"),
    }
}

/// Reads the fmt chunk's first (up to 40) bytes: which encoding, and whether this reader takes it.
fn parse_format(path: &Path, fmt: &[u8]) -> Result<Format, WavError> {
    if fmt.len() < 16 {
        return Err(corrupt(
            path,
            format!(
                "the fmt chunk is {} bytes long, too short for a WAV header (16 at least)",
                fmt.len()
            ),
        ));
    }
    let tag = le16(fmt, 0);
    let channels = le16(fmt, 2);
    let sample_rate = le32(fmt, 4);
    let block_align = le16(fmt, 12);
    let slot_bits = le16(fmt, 14);
    if channels == 0 {
        return Err(corrupt(path, "header says 0 channels"));
    }
    if sample_rate == 0 {
        return Err(corrupt(path, "header says sample rate 0"));
    }
    // Beyond these the header is damaged, or the file is no microphone recording: a replay would size its buffers
    // and resampler from them.
    if sample_rate > MAX_SAMPLE_RATE {
        return Err(unsupported(
            path,
            format!("sample rate {sample_rate} Hz (at most {MAX_SAMPLE_RATE} Hz is supported)"),
        ));
    }
    if sample_rate < MIN_SAMPLE_RATE {
        return Err(unsupported(
            path,
            format!(
                "sample rate {sample_rate} Hz (at least {MIN_SAMPLE_RATE} Hz: below, a recording holds too little \
                 of the band a machine is heard in; a damaged header?)"
            ),
        ));
    }
    if channels > MAX_CHANNELS {
        return Err(unsupported(
            path,
            format!("{channels} channels (at most {MAX_CHANNELS} are supported)"),
        ));
    }
    let (float, bits) = match tag {
        WAVE_FORMAT_PCM => (false, slot_bits),
        WAVE_FORMAT_IEEE_FLOAT => (true, slot_bits),
        WAVE_FORMAT_EXTENSIBLE => {
            if fmt.len() < 40 {
                return Err(corrupt(
                    path,
                    format!(
                        "the fmt chunk of this WAVE_FORMAT_EXTENSIBLE file is {} bytes long, too short for its \
                         header (40)",
                        fmt.len()
                    ),
                ));
            }
            let valid_bits = le16(fmt, 18);
            let sub = le16(fmt, 24);
            if fmt.get(26..40) != Some(&KSDATAFORMAT_SUFFIX[..]) {
                return Err(unsupported(
                    path,
                    format!(
                        "WAVE_FORMAT_EXTENSIBLE with the sub-format GUID {} ({SUPPORTED})",
                        fmt.get(24..40)
                            .unwrap_or_default()
                            .iter()
                            .map(|b| format!("{b:02x}"))
                            .collect::<String>()
                    ),
                ));
            }
            let float = match sub {
                WAVE_FORMAT_PCM => false,
                WAVE_FORMAT_IEEE_FLOAT => true,
                other => {
                    return Err(unsupported(
                        path,
                        format!(
                            "{} in a WAVE_FORMAT_EXTENSIBLE header ({SUPPORTED})",
                            format_name(other)
                        ),
                    ))
                }
            };
            // 0 valid bits: a writer that left the field empty; the slot's bits are meant.
            (
                float,
                if valid_bits == 0 {
                    slot_bits
                } else {
                    valid_bits
                },
            )
        }
        other => {
            return Err(unsupported(
                path,
                format!("{} ({SUPPORTED})", format_name(other)),
            ))
        }
    };
    // The layout of the data is the block align's: a frame of `channels` slots of equal width.
    if block_align == 0 || !block_align.is_multiple_of(channels) {
        return Err(corrupt(
            path,
            format!(
                "block align {block_align} is not a whole number of bytes for each of {channels} channel(s)"
            ),
        ));
    }
    let slot = block_align / channels;
    if bits == 0 {
        return Err(corrupt(path, "bits per sample is 0"));
    }
    if u32::from(bits) > u32::from(slot) * 8 {
        return Err(corrupt(
            path,
            format!(
                "{bits}-bit samples do not fit in the {slot}-byte slots that block align {block_align} gives each \
                 of {channels} channel(s)"
            ),
        ));
    }
    // Wider slots than the header's sample size (16-bit samples, block align 4 in mono) contradict it: read by the
    // block align, every other sample is dropped (half the length, pitch doubled); read by the sample size, as
    // some readers do, the byte rate is wrong. Which was meant cannot be told: refused, not guessed.
    if u32::from(slot) > u32::from(slot_bits).div_ceil(8) {
        return Err(corrupt(
            path,
            format!(
                "block align {block_align} gives each of {channels} channel(s) a {slot}-byte slot, but its samples \
                 are {slot_bits}-bit: a header that contradicts itself. Rewrite it with the format meant, e.g. \
                 `sox in.wav -b 16 out.wav`"
            ),
        ));
    }
    let encoding = match (float, slot) {
        (false, 1) => Encoding::U8,
        (false, 2) => Encoding::I16,
        (false, 3) => Encoding::I24,
        (false, 4) => Encoding::I32,
        (true, 4) if bits == 32 => Encoding::F32,
        (true, 8) if bits == 64 => Encoding::F64,
        (float, slot) => {
            return Err(unsupported(
                path,
                format!(
                    "{} samples of {bits} bits{} ({SUPPORTED})",
                    if float { "float" } else { "integer" },
                    if u32::from(bits) == u32::from(slot) * 8 {
                        String::new()
                    } else {
                        format!(" in {slot}-byte slots")
                    }
                ),
            ));
        }
    };
    Ok(Format {
        sample_rate,
        channels,
        block_align,
        bits,
        float,
        encoding,
    })
}

/// Reads into `buf` until it is full or the file ends; returns the bytes read.
fn fill(reader: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while let Some(rest) = buf.get_mut(n..).filter(|r| !r.is_empty()) {
        match reader.read(rest) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A WAV file opened and its header read: the reader stands at the first sample.
struct Opened {
    reader: std::io::BufReader<std::fs::File>,
    format: Format,
    /// Where the data chunk's samples start.
    data_at: u64,
    /// The data chunk's length as its header gives it.
    data_len: u64,
    file_len: u64,
}

/// Opens `path` and reads the RIFF chunk list up to the `data` chunk, skipping every other chunk (LIST, bext, iXML,
/// fact, ...) with the pad byte that follows one of odd length (or without it, for a writer that left it out).
fn open(path: &Path) -> Result<Opened, WavError> {
    let io = |error| WavError::Open {
        path: path.to_path_buf(),
        error,
    };
    // A FIFO's open waits for a writer (and a device's may never end): refused before opening.
    let file = crate::regular_file::open(path).map_err(|e| {
        if crate::regular_file::is_not_a_file(&e) {
            corrupt(
                path,
                "not a regular file (a directory, a FIFO or a device): a recording must be a file",
            )
        } else {
            io(e)
        }
    })?;
    let file_len = file.metadata().map_err(io)?.len();
    if file_len == 0 {
        return Err(corrupt(path, "the file is empty (0 bytes)"));
    }
    let mut reader = std::io::BufReader::new(file);
    let cut = || {
        corrupt(
            path,
            format!(
                "unexpected end of file inside the header: the file ends after {file_len} bytes, before its \
                 data chunk (a copy or a recording cut short?)"
            ),
        )
    };
    let mut riff = [0u8; 12];
    let n = fill(&mut reader, &mut riff).map_err(io)?;
    let magic = riff.get(..n.min(4)).unwrap_or_default();
    // RF64 (EBU Tech 3306) and BW64 (ITU-R BS.2088): the WAV variants for recordings over 4 GiB, whose 64-bit
    // lengths are in a `ds64` chunk.
    let wide = magic == b"RF64" || magic == b"BW64";
    if magic == b"RIFX" {
        return Err(unsupported(
            path,
            format!("big-endian samples (a RIFX file) ({SUPPORTED})"),
        ));
    }
    if !wide && !b"RIFF".starts_with(magic) {
        return Err(corrupt(path, no_riff(riff.get(..n).unwrap_or_default())));
    }
    if n < riff.len() {
        return Err(cut());
    }
    if riff[8..12] != *b"WAVE" {
        return Err(corrupt(
            path,
            format!(
                "a RIFF file of type `{}`, not WAVE",
                riff[8..12].escape_ascii()
            ),
        ));
    }
    let mut format = None;
    // An RF64/BW64 file's 64-bit lengths, from its ds64 chunk.
    let mut ds64: Option<Ds64> = None;
    // Where the previous chunk's body ends (the next chunk's header, or the pad byte before it).
    let mut at: u64 = 12;
    // Whether that body has an odd length: a pad byte follows it, which its size does not count.
    let mut odd = false;
    loop {
        let mut head = [0u8; 9];
        let want = if odd { 9 } else { 8 };
        let n = fill(&mut reader, head.get_mut(..want).unwrap_or_default()).map_err(io)?;
        // Some writers leave the pad byte out: where it should be, the next chunk's id starts. Taken so only when
        // the byte is not 0 and the id read after it is no id while the one read from it is.
        let unpadded =
            odd && head[0] != 0 && is_chunk_id(&head[..4]) && !(n >= 5 && is_chunk_id(&head[1..5]));
        let start = usize::from(odd && !unpadded);
        let Some(header) = head.get(start..start + 8).filter(|_| n >= start + 8) else {
            return Err(cut());
        };
        let id = &header[..4];
        let size32 = le32(header, 4);
        at += start as u64 + 8;
        // The byte read beyond the header when the pad byte was left out.
        reader
            .seek_relative(start as i64 + 8 - n as i64)
            .map_err(io)?;
        if wide && ds64.is_none() {
            if id != b"ds64" {
                return Err(corrupt(
                    path,
                    format!(
                        "the file is {}, but its first chunk is `{}`, not the ds64 chunk that holds its lengths",
                        magic.escape_ascii(),
                        id.escape_ascii()
                    ),
                ));
            }
            ds64 = Some(read_ds64(path, &mut reader, size32, &cut)?);
            at += u64::from(size32);
            odd = size32 % 2 == 1;
            continue;
        }
        // In an RF64 file a length that does not fit 32 bits is written 0xFFFFFFFF and given in the ds64 chunk.
        let size = match &ds64 {
            Some(wide) if size32 == u32::MAX => wide.size_of(id).ok_or_else(|| {
                corrupt(
                    path,
                    format!(
                        "the `{}` chunk's length is in the ds64 chunk (0xFFFFFFFF here), but that chunk does not \
                         give it",
                        id.escape_ascii()
                    ),
                )
            })?,
            _ => u64::from(size32),
        };
        if id == b"data" {
            let Some(format) = format else {
                return Err(corrupt(
                    path,
                    "no fmt chunk before the data chunk: the file does not say how its samples are stored \
                     (rate, channels, sample format); write it again as a WAV file",
                ));
            };
            let length = match ds64 {
                Some(_) => DataLength::Wide(size),
                None => DataLength::Plain(size32),
            };
            return data_chunk(path, reader, format, at, length, file_len);
        }
        let mut skip = size;
        if id == b"fmt " {
            if format.is_some() {
                return Err(corrupt(
                    path,
                    "two fmt chunks: the file says twice, perhaps differently, how its samples are stored",
                ));
            }
            let mut body = [0u8; 40];
            let want = body.len().min(size as usize);
            let body = body.get_mut(..want).unwrap_or_default();
            if fill(&mut reader, body).map_err(io)? < want {
                return Err(cut());
            }
            format = Some(parse_format(path, body)?);
            skip -= want as u64;
        }
        // Past the end of the file when a chunk is cut: the next header's read says so.
        reader.seek_relative(skip as i64).map_err(io)?;
        at += size;
        odd = size % 2 == 1;
    }
}

/// The message for a file that does not start with `RIFF`: what it is when its first bytes are another audio
/// format's magic (FLAC, Ogg, MP3), and how to convert it.
fn no_riff(head: &[u8]) -> String {
    let what = if head.starts_with(b"fLaC") {
        Some("a FLAC file")
    } else if head.starts_with(b"OggS") {
        Some("an Ogg file (Vorbis, Opus or FLAC)")
    } else if head.starts_with(b"ID3") || matches!(head, [0xFF, b, ..] if b & 0xE0 == 0xE0) {
        Some("an MP3 file")
    } else {
        None
    };
    match what {
        Some(what) => format!(
            "no RIFF header: this is {what}, not a WAV file, whatever its name; convert it, e.g. \
             `ffmpeg -i in.flac -ar 16000 out.wav` or `sox in.flac -r 16000 out.wav`"
        ),
        None => {
            "no RIFF header: the file does not start with `RIFF`, as a WAV file does".to_string()
        }
    }
}

/// Whether `id` can be a chunk's id: four printable ASCII characters (space included, as in `fmt `).
fn is_chunk_id(id: &[u8]) -> bool {
    id.len() == 4 && id.iter().all(|b| (b' '..=b'~').contains(b))
}

/// What an RF64/BW64 file's ds64 chunk says.
struct Ds64 {
    data: u64,
    /// The lengths of other chunks over 4 GiB (rare: a huge `JUNK` or `iXML`).
    table: Vec<([u8; 4], u64)>,
}

impl Ds64 {
    fn size_of(&self, id: &[u8]) -> Option<u64> {
        if id == b"data" {
            return Some(self.data);
        }
        self.table
            .iter()
            .find(|(table_id, _)| table_id == id)
            .map(|&(_, size)| size)
    }
}

/// Reads the body of a ds64 chunk of `size` bytes: RIFF length, data length and sample count (64 bits each), then
/// a table of other chunks' 64-bit lengths. The reader ends at the body's end.
fn read_ds64(
    path: &Path,
    reader: &mut std::io::BufReader<std::fs::File>,
    size: u32,
    cut: &dyn Fn() -> WavError,
) -> Result<Ds64, WavError> {
    let io = |error| WavError::Open {
        path: path.to_path_buf(),
        error,
    };
    if size < 24 {
        return Err(corrupt(
            path,
            format!("its ds64 chunk is {size} bytes, too short for the 24 bytes of lengths it must hold"),
        ));
    }
    let mut head = [0u8; 28];
    let want = head.len().min(size as usize);
    if fill(reader, &mut head[..want]).map_err(io)? < want {
        return Err(cut());
    }
    let data = le64(&head, 8);
    let entries = if want == 28 { le32(&head, 24) } else { 0 };
    let mut rest = u64::from(size) - want as u64;
    let mut table = Vec::new();
    // Each entry is a chunk id and its 64-bit length; the chunk's own size bounds how many are read.
    for _ in 0..entries {
        if rest < 12 {
            break;
        }
        let mut entry = [0u8; 12];
        if fill(reader, &mut entry).map_err(io)? < entry.len() {
            return Err(cut());
        }
        rest -= 12;
        let id = [entry[0], entry[1], entry[2], entry[3]];
        table.push((id, le64(&entry, 4)));
    }
    reader.seek_relative(rest as i64).map_err(io)?;
    Ok(Ds64 { data, table })
}

/// The data chunk's length as the file gives it.
#[derive(Clone, Copy)]
enum DataLength {
    /// A plain RIFF file's 32-bit length.
    Plain(u32),
    /// An RF64/BW64 file's 64-bit length, from its ds64 chunk.
    Wide(u64),
}

/// Checks what the data chunk's header says (its samples start at `data_at`).
fn data_chunk(
    path: &Path,
    reader: std::io::BufReader<std::fs::File>,
    format: Format,
    data_at: u64,
    length: DataLength,
    file_len: u64,
) -> Result<Opened, WavError> {
    // A recorder that streams to a pipe cannot go back to write the lengths: it leaves 0xFFFFFFFF (or 0) in the
    // data chunk's header, and all ones in an RF64 file's ds64 chunk.
    let data_len = match length {
        DataLength::Plain(u32::MAX) => return Err(unknown_length(path, &"0xFFFFFFFF")),
        DataLength::Wide(u64::MAX) => return Err(unknown_length(path, &"0xFFFFFFFFFFFFFFFF")),
        DataLength::Plain(len) => u64::from(len),
        DataLength::Wide(len) => len,
    };
    if data_len == 0 && file_len > data_at {
        return Err(unknown_length(path, &"0 frames"));
    }
    // A plain WAV has 32-bit lengths: a writer that went on past 4 GiB without switching to RF64 leaves the length
    // modulo 2^32, and reading only that much would silently drop the rest of the recording. No chunk after the
    // data is anywhere near 4 GiB, so a file that long after the announced data is such a recording.
    let after = file_len.saturating_sub(data_at).saturating_sub(data_len);
    if matches!(length, DataLength::Plain(_)) && after >= 1 << 32 {
        return Err(corrupt(
            path,
            format!(
                "the data chunk's header says {data_len} bytes, but the file goes on for {after} bytes more: a \
                 recording over 4 GiB written as plain WAV, whose 32-bit length wrapped around. Rewrite it as \
                 RF64, e.g. `ffmpeg -ignore_length 1 -i in.wav -c copy -rf64 auto out.wav`, or split it"
            ),
        ));
    }
    let block = u64::from(format.block_align);
    // A data length beyond the file's end is a truncation, whatever its remainder (said when the reading reaches
    // the cut): only a length the file holds must be whole frames.
    if !data_len.is_multiple_of(block) && data_at.saturating_add(data_len) <= file_len {
        return Err(corrupt(
            path,
            format!(
                "the data chunk's length, {data_len} bytes, is not a whole number of {block}-byte frames \
                 ({} channel(s) of {} bytes)",
                format.channels,
                format.encoding.width()
            ),
        ));
    }
    Ok(Opened {
        reader,
        format,
        data_at,
        data_len,
        file_len,
    })
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

/// The highest sample rate a WAV may declare (professional audio interfaces go to 384 kHz).
pub const MAX_SAMPLE_RATE: u32 = 768_000;
/// The lowest sample rate a WAV (or a capture device) may have: telephone audio's, the lowest audio interfaces offer.
pub const MIN_SAMPLE_RATE: u32 = 8_000;
/// The largest float sample taken (+24 dBFS): a float WAV's full scale is ±1; a few overs are kept, while samples
/// of thousands are a file on another scale (integers stored as floats) and would be scored as a deafening sound.
pub const MAX_FLOAT_SAMPLE: f32 = 16.0;
/// The most channels a WAV may declare (multi-channel interfaces and arrays stay well below).
pub const MAX_CHANNELS: u16 = 256;

/// A WAV file decoded block by block into interleaved `f32` samples (the decoding of [`read_wav`]), so that a
/// long recording is replayed in constant memory. Header problems are reported by [`WavBlocks::open`]; a truncated
/// data chunk or a sample that is not a finite number by the [`WavBlocks::read_into`] that reaches it.
pub struct WavBlocks {
    reader: std::io::BufReader<std::fs::File>,
    encoding: Encoding,
    /// Bytes of the data chunk not read yet.
    remaining: u64,
    /// Bytes of the data chunk the file held when it was opened (at most the length its header announces).
    present: u64,
    /// The raw bytes of the block being decoded.
    bytes: Vec<u8>,
    path: PathBuf,
    info: WavInfo,
    /// Interleaved samples read so far.
    read: u64,
}

impl WavBlocks {
    pub fn open(path: &Path) -> Result<Self, WavError> {
        let Opened {
            reader,
            format,
            data_at,
            data_len,
            file_len,
        } = open(path)?;
        Ok(Self {
            reader,
            encoding: format.encoding,
            remaining: data_len,
            present: data_len.min(file_len.saturating_sub(data_at)),
            bytes: Vec::new(),
            path: path.to_path_buf(),
            info: WavInfo {
                sample_rate: format.sample_rate,
                channels: format.channels,
                bits_per_sample: format.bits,
                float: format.float,
                frames: data_len / u64::from(format.block_align),
            },
            read: 0,
        })
    }

    pub fn info(&self) -> WavInfo {
        self.info
    }

    /// The truncation [`Self::read_into`] will meet, known from the file's length when it was opened: `None` when
    /// the file held the whole data chunk its header announces. A file cut short in place, or one being written
    /// again, is so refused before any of it is taken.
    pub fn cut_short(&self) -> Option<WavError> {
        let width = self.encoding.width() as u64;
        let announced = self.remaining + self.read * width;
        (self.present < announced).then(|| WavError::Truncated {
            path: self.path.clone(),
            expected: self.info.frames,
            got: self.present / width / u64::from(self.info.channels.max(1)),
        })
    }

    fn truncated(&self) -> WavError {
        WavError::Truncated {
            path: self.path.clone(),
            expected: self.info.frames,
            got: self.read / self.info.channels as u64,
        }
    }

    /// Checks the rest of the data chunk without keeping it: the errors [`Self::read_into`] would meet. For integer
    /// PCM, where a sample cannot be invalid, the file's length is enough; float samples are decoded.
    pub fn check_to_end(mut self) -> Result<(), WavError> {
        if !self.encoding.is_float() {
            use std::io::Seek;
            let io = |e| WavError::Open {
                path: self.path.clone(),
                error: e,
            };
            let at = self.reader.stream_position().map_err(io)?;
            let len = self.reader.get_ref().metadata().map_err(io)?.len();
            let available = len.saturating_sub(at);
            if available < self.remaining {
                self.read += available / self.encoding.width() as u64;
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

    /// Appends up to `max` interleaved samples to `out` and returns how many; 0 at the end of the data (or when
    /// `max` is 0).
    pub fn read_into(&mut self, out: &mut Vec<f32>, max: usize) -> Result<usize, WavError> {
        use std::io::Read;
        let width = self.encoding.width() as u64;
        let want = self.remaining.min((max as u64).saturating_mul(width));
        if want == 0 {
            return Ok(0);
        }
        self.bytes.clear();
        // Only what arrives is stored: a header's length is not trusted to size a buffer.
        let got = self.reader.by_ref().take(want).read_to_end(&mut self.bytes);
        self.remaining -= self.bytes.len() as u64;
        let before = out.len();
        // A sample cut by the end of the file is dropped.
        self.encoding.decode(&self.bytes, out);
        // Only a float sample can be invalid (a 64-bit one also when beyond the range of f32), or far off scale.
        if self.encoding.is_float() {
            if let Some(bad) = out[before..]
                .iter()
                .position(|v| v.is_nan() || v.abs() > MAX_FLOAT_SAMPLE)
            {
                let value = out[before + bad];
                let at = self.read + bad as u64;
                // 16.0001 as such, 1e30 as 1e30.
                let shown = if value.abs() < 1e6 {
                    format!("{value}")
                } else {
                    format!("{value:e}")
                };
                let reason = if value.is_finite() {
                    format!(
                        "sample {at} is {shown}, beyond ±{MAX_FLOAT_SAMPLE} (+24 dBFS): a float WAV's full scale \
                         is ±1, so these samples are on another scale (integers written as floats?)"
                    )
                } else {
                    format!("sample {at} is not a finite number")
                };
                return Err(corrupt(&self.path, reason));
            }
        }
        let n = out.len() - before;
        self.read += n as u64;
        match got {
            Err(error) => Err(WavError::Open {
                path: self.path.clone(),
                error,
            }),
            // The data chunk ends before the header says it does.
            Ok(got) if (got as u64) < want => Err(self.truncated()),
            Ok(_) => Ok(n),
        }
    }

    /// Samples the data chunk held when the file was opened: what its header announces, or less when the file ends
    /// first. What a buffer for the whole file may be sized by.
    fn samples_present(&self) -> u64 {
        self.present / self.encoding.width() as u64
    }
}

/// Reads a whole WAV file as `f32` samples normalised to [-1, 1), keeping the file's sample rate.
///
/// Integer samples are divided by 2^(bits-1), for the bits of their slot (a sample narrower than its slot, stored
/// left-justified, is so read exactly); float samples are taken as they are.
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
    // Sized by what the file holds, not by what its header claims: a header that overstates the data (4 GiB of it
    // in a file of one second) is a truncation to report, not an allocation to attempt.
    let mut interleaved: Vec<f32> = Vec::new();
    let present = usize::try_from(blocks.samples_present()).unwrap_or(usize::MAX);
    // More than this process can address (a file of gigabytes on a 32-bit Pi): an error naming it, not an abort.
    interleaved
        .try_reserve_exact(present)
        .map_err(|e| WavError::Unsupported {
            path: path.to_path_buf(),
            reason: format!(
                "{present} samples do not fit in memory here ({e}); split the recording into shorter files"
            ),
        })?;
    // Bounded blocks: one block of raw bytes at a time beside the decoded samples, not a copy of the whole file.
    while blocks.read_into(&mut interleaved, 1 << 16)? > 0 {}
    if n_ch == 1 {
        return Ok((info, interleaved));
    }
    let mut mono = Vec::with_capacity(interleaved.len() / n_ch);
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
    let bytes = encode_wav(path, samples, sample_rate, false)?;
    std::fs::write(path, bytes).map_err(|e| WavError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// [`write_wav_i16`], whole or not at all ([`crate::atomic_file::write`]): a write that fails (a full disk) leaves
/// no partial WAV under `path` and no temporary file. Evidence clips and imported clips are written this way.
pub fn write_wav_i16_whole(path: &Path, samples: &[f32], sample_rate: u32) -> Result<(), WavError> {
    write_whole(path, &encode_wav(path, samples, sample_rate, false)?)
}

/// Mono 32-bit float WAV, whole or not at all, like [`write_wav_i16_whole`]: for audio beyond full scale (a
/// float recorder's headroom), which 16 bits would clip: the samples are stored as given.
pub fn write_wav_f32_whole(path: &Path, samples: &[f32], sample_rate: u32) -> Result<(), WavError> {
    write_whole(path, &encode_wav(path, samples, sample_rate, true)?)
}

fn write_whole(path: &Path, bytes: &[u8]) -> Result<(), WavError> {
    crate::atomic_file::write(path, bytes).map_err(|e| WavError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// A sample as a 16-bit WAV stores it (full scale ±1, clamped, rounded).
pub fn to_i16(sample: f32) -> i16 {
    (sample.clamp(-1.0, 1.0) * 32767.0).round() as i16
}

/// The bytes of a mono WAV file of `samples`: 16-bit PCM (clipped to [-1, 1]), or with `float` 32-bit float as
/// given; `path` names it in errors.
fn encode_wav(
    path: &Path,
    samples: &[f32],
    sample_rate: u32,
    float: bool,
) -> Result<Vec<u8>, WavError> {
    let err = |e: hound::Error| WavError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let (bits, format) = if float {
        (32, hound::SampleFormat::Float)
    } else {
        (16, hound::SampleFormat::Int)
    };
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate,
        bits_per_sample: bits,
        sample_format: format,
    };
    let mut bytes = std::io::Cursor::new(Vec::with_capacity(
        58 + samples.len() * usize::from(bits / 8),
    ));
    let mut w = hound::WavWriter::new(&mut bytes, spec).map_err(err)?;
    if float {
        for &s in samples {
            w.write_sample(s).map_err(err)?;
        }
    } else {
        let mut w16 = w.get_i16_writer(samples.len() as u32);
        for &s in samples {
            w16.write_sample(to_i16(s));
        }
        w16.flush().map_err(err)?;
    }
    w.finalize().map_err(err)?;
    Ok(bytes.into_inner())
}
