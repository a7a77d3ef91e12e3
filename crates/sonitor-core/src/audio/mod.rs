//! Audio input: WAV decoding ([`wav`]) and band-limited sample-rate conversion ([`resample`](mod@resample)).

pub mod resample;
pub mod wav;

pub use resample::{resample, ResampleError, StreamResampler};
pub use wav::{
    check_wav, read_wav, read_wav_info, to_i16, to_mono, write_wav_f32_whole, write_wav_i16,
    write_wav_i16_whole, ChannelSelect, WavBlocks, WavError, WavInfo,
};

/// Reads a WAV file as mono `f32` samples in [-1, 1) at `target_rate`, selecting `channel` (or the mean of all
/// channels) and resampling with a band-limited resampler when the file's rate differs.
pub fn load_mono(
    path: &std::path::Path,
    channel: ChannelSelect,
    target_rate: u32,
) -> Result<Vec<f32>, WavError> {
    let (info, samples) = read_wav(path, channel)?;
    if info.sample_rate == target_rate {
        return Ok(samples);
    }
    resample(&samples, info.sample_rate, target_rate).map_err(|e| WavError::Resample {
        path: path.to_path_buf(),
        error: e,
    })
}
