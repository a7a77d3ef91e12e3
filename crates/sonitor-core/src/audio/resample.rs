//! Band-limited sample-rate conversion (rubato's synchronous FFT resampler).
//!
//! [`resample`] converts a whole clip; [`StreamResampler`] converts an unbounded stream chunk by chunk (the
//! daemon's 44.1/48 kHz devices). Both compensate the resampler's delay so that output sample `n` corresponds
//! to input time `n / rate_out`.

use rubato::{FftFixedInOut, Resampler};

#[derive(Debug, thiserror::Error)]
pub enum ResampleError {
    #[error("cannot resample from {from} Hz to {to} Hz: {reason}")]
    Setup { from: u32, to: u32, reason: String },
    #[error("resampler failed: {0}")]
    Process(String),
}

/// Chunk size (input frames) the resampler works in, about; [`chunk_for`] makes it a multiple of the rates' ratio
/// whose FFTs are fast.
const CHUNK: usize = 1024;

/// The input chunk for `from` → `to` Hz: rubato's FFT resampler transforms `2 · k · from / gcd` and
/// `2 · k · to / gcd` points for a chunk of `k · from / gcd` frames. `k` is the smallest 5-smooth number (factors 2,
/// 3 and 5 only) that gives at least [`CHUNK`] frames: a `k` with a larger prime factor makes both FFTs slow (48 kHz
/// → 16 kHz with `k` = ⌈1024 / 3⌉ = 342 = 2·3²·19 spent most of the resampler's time in a scalar 19-point
/// butterfly). Rates whose `k` was already smooth (44.1, 22.05, 11.025, 32 and 8 kHz to 16 kHz) keep their chunk,
/// and with it their output bit for bit.
fn chunk_for(from: u32, to: u32) -> usize {
    let min_chunk = (from / gcd(from, to)) as usize;
    let mut k = CHUNK.div_ceil(min_chunk);
    while !is_5_smooth(k) {
        k += 1;
    }
    k * min_chunk
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn is_5_smooth(mut n: usize) -> bool {
    for p in [2, 3, 5] {
        while n.is_multiple_of(p) {
            n /= p;
        }
    }
    n == 1
}

/// Converts a whole mono clip from `from` Hz to `to` Hz. The output has `round(len * to / from)` samples.
pub fn resample(samples: &[f32], from: u32, to: u32) -> Result<Vec<f32>, ResampleError> {
    if from == to {
        return Ok(samples.to_vec());
    }
    let mut stream = StreamResampler::new(from, to)?;
    let mut out = Vec::with_capacity(output_len(samples.len() as u64, from, to) as usize + CHUNK);
    stream.push(samples, &mut out)?;
    stream.finish(&mut out)?;
    Ok(out)
}

/// The number of output samples `len` input samples make: `round(len · to / from)`.
fn output_len(len: u64, from: u32, to: u32) -> u64 {
    (len * to as u64 + from as u64 / 2) / from as u64
}

/// A resampler for a stream delivered in pieces of any size.
pub struct StreamResampler {
    inner: FftFixedInOut<f32>,
    pending: Vec<f32>,
    in_buf: Vec<Vec<f32>>,
    out_buf: Vec<Vec<f32>>,
    /// Output samples still to discard to compensate the filter delay.
    skip: usize,
    from: u32,
    to: u32,
    /// Input samples pushed since the stream began.
    fed: u64,
    /// Output samples appended since the stream began.
    emitted: u64,
}

impl StreamResampler {
    pub fn new(from: u32, to: u32) -> Result<Self, ResampleError> {
        if from == 0 || to == 0 {
            return Err(ResampleError::Setup {
                from,
                to,
                reason: "sample rates must be positive".into(),
            });
        }
        let inner = FftFixedInOut::<f32>::new(from as usize, to as usize, chunk_for(from, to), 1)
            .map_err(|e| ResampleError::Setup {
            from,
            to,
            reason: e.to_string(),
        })?;
        let skip = inner.output_delay();
        let in_buf = vec![vec![0.0; inner.input_frames_max()]];
        let out_buf = vec![vec![0.0; inner.output_frames_max()]];
        Ok(Self {
            pending: Vec::with_capacity(inner.input_frames_max() * 2),
            inner,
            in_buf,
            out_buf,
            skip,
            from,
            to,
            fed: 0,
            emitted: 0,
        })
    }

    /// Input frames consumed per internal step.
    pub fn chunk_in(&self) -> usize {
        self.inner.input_frames_next()
    }

    /// Feeds samples; appends every output sample that is complete to `out`.
    pub fn push(&mut self, samples: &[f32], out: &mut Vec<f32>) -> Result<(), ResampleError> {
        self.fed += samples.len() as u64;
        self.pending.extend_from_slice(samples);
        let n = self.inner.input_frames_next();
        let mut start = 0;
        while self.pending.len() - start >= n {
            self.in_buf[0][..n].copy_from_slice(&self.pending[start..start + n]);
            self.step(n, out)?;
            start += n;
        }
        self.pending.drain(..start);
        Ok(())
    }

    /// Ends the stream: flushes the tail (zero-padded) so that every input sample has produced its output, and
    /// appends exactly as many samples as make the stream's output `round(input · to / from)` samples long, as
    /// [`resample`] gives for the whole stream at once. The resampler then starts a new stream (fresh filter
    /// state and delay), so audio after a gap is not blended with the audio before it.
    pub fn finish(&mut self, out: &mut Vec<f32>) -> Result<(), ResampleError> {
        let expected = output_len(self.fed, self.from, self.to);
        let start = out.len();
        let n = self.inner.input_frames_next();
        // The pending tail plus enough zeros to push the filter delay out.
        let mut remaining = self.pending.len()
            + self.inner.output_delay() * n / self.inner.output_frames_next()
            + n;
        let tail = std::mem::take(&mut self.pending);
        let mut tail_pos = 0;
        while remaining > 0 {
            let buf = &mut self.in_buf[0][..n];
            buf.fill(0.0);
            let take = (tail.len() - tail_pos).min(n);
            buf[..take].copy_from_slice(&tail[tail_pos..tail_pos + take]);
            tail_pos += take;
            self.step(n, out)?;
            remaining = remaining.saturating_sub(n);
        }
        // The zeros' own output beyond the stream's length is not audio.
        let excess = (self.emitted.saturating_sub(expected) as usize).min(out.len() - start);
        out.truncate(out.len() - excess);
        self.inner.reset();
        self.skip = self.inner.output_delay();
        self.pending = tail;
        self.pending.clear();
        self.fed = 0;
        self.emitted = 0;
        Ok(())
    }

    fn step(&mut self, n: usize, out: &mut Vec<f32>) -> Result<(), ResampleError> {
        let (_, produced) = self
            .inner
            .process_into_buffer(&[&self.in_buf[0][..n]], &mut self.out_buf, None)
            .map_err(|e| ResampleError::Process(e.to_string()))?;
        let produced = &self.out_buf[0][..produced];
        let drop = self.skip.min(produced.len());
        self.skip -= drop;
        out.extend_from_slice(&produced[drop..]);
        self.emitted += (produced.len() - drop) as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_give_smooth_ffts_and_keep_the_rates_that_had_them() {
        // k = chunk / (from / gcd): 5-smooth, and the smallest such k with at least CHUNK frames.
        for (from, to, chunk) in [
            (48_000, 16_000, 360 * 3),
            (96_000, 16_000, 180 * 6),
            (24_000, 16_000, 360 * 3),
            // Unchanged from rubato's own rounding of 1024 frames.
            (44_100, 16_000, 3 * 441),
            (22_050, 16_000, 3 * 441),
            (11_025, 16_000, 3 * 441),
            (32_000, 16_000, 1024),
            (8_000, 16_000, 1024),
            // Up to 44.1 kHz: rubato's k = 7 becomes 8.
            (16_000, 44_100, 8 * 160),
        ] {
            assert_eq!(chunk_for(from, to), chunk, "{from} -> {to}");
            let min = (from / gcd(from, to)) as usize;
            assert!(is_5_smooth(chunk / min) && chunk >= CHUNK, "{from} -> {to}");
        }
    }

    fn sine(freq: f32, rate: u32, secs: f32) -> Vec<f32> {
        (0..(rate as f32 * secs) as usize)
            .map(|i| (2.0 * std::f32::consts::PI * freq * i as f32 / rate as f32).sin())
            .collect()
    }

    /// Amplitude and lead (in output samples) of a sine of frequency `f` in `y`, by quadrature correlation.
    fn amplitude_and_lead(y: &[f32], f: f64, rate: u32) -> (f64, f64) {
        let w = 2.0 * std::f64::consts::PI * f / rate as f64;
        let (mut s, mut c) = (0.0, 0.0);
        let range = 1000..y.len() - 1000;
        let n_used = range.len() as f64;
        for n in range {
            s += y[n] as f64 * (w * n as f64).sin();
            c += y[n] as f64 * (w * n as f64).cos();
        }
        (2.0 * (s * s + c * c).sqrt() / n_used, c.atan2(s) / w)
    }

    #[test]
    fn keeps_frequency_amplitude_and_timing() {
        let pairs = [
            (44_100, 16_000),
            (48_000, 16_000),
            (11_025, 16_000),
            (8_000, 16_000),
            (16_000, 44_100),
        ];
        for &(from, to) in &pairs {
            for f in [200.0, 1000.0, 3000.0] {
                let x = sine(f as f32, from, 1.0);
                let y = resample(&x, from, to).unwrap();
                assert_eq!(y.len(), to as usize, "{from}->{to}");
                let (amp, lead) = amplitude_and_lead(&y, f, to);
                assert!(
                    (amp - 1.0).abs() < 2e-3,
                    "{from}->{to} {f} Hz: amplitude {amp}"
                );
                // The filter delay is compensated to within half an input sample (rubato's FFT resampler has a
                // half-sample offset for some rate pairs; irrelevant for magnitude features).
                let lead_in = lead * from as f64 / to as f64;
                assert!(
                    lead_in.abs() <= 0.51,
                    "{from}->{to} {f} Hz: lead of {lead_in} input samples"
                );
            }
        }
    }

    #[test]
    fn removes_content_above_the_new_nyquist() {
        // 12 kHz at 48 kHz cannot exist at 16 kHz (Nyquist 8 kHz): it must be filtered, not aliased to 4 kHz.
        let x = sine(12_000.0, 48_000, 1.0);
        let y = resample(&x, 48_000, 16_000).unwrap();
        let rms = (y[500..15_500].iter().map(|v| v * v).sum::<f32>() / 15_000.0).sqrt();
        assert!(rms < 1e-3, "aliased energy, rms {rms}");
    }

    #[test]
    fn streaming_equals_one_shot() {
        let x = sine(440.0, 48_000, 0.7);
        let whole = resample(&x, 48_000, 16_000).unwrap();
        let mut s = StreamResampler::new(48_000, 16_000).unwrap();
        let mut out = Vec::new();
        for piece in x.chunks(333) {
            s.push(piece, &mut out).unwrap();
        }
        s.finish(&mut out).unwrap();
        assert_eq!(out, whole);
    }

    #[test]
    fn a_finished_stream_has_its_exact_length_and_the_next_starts_afresh() {
        let mut s = StreamResampler::new(48_000, 16_000).unwrap();
        // Lengths that divide evenly and not, shorter than one internal chunk and longer than many.
        for len in [480_000, 48_001, 100, 3 * 1024 + 7] {
            let x = sine(440.0, 48_000, len as f32 / 48_000.0);
            let x = &x[..len.min(x.len())];
            let mut out = Vec::new();
            for piece in x.chunks(4_000) {
                s.push(piece, &mut out).unwrap();
            }
            s.finish(&mut out).unwrap();
            assert_eq!(
                out.len() as u64,
                output_len(x.len() as u64, 48_000, 16_000),
                "{len}"
            );
            // Each stream after a finish equals a fresh resampler's: nothing of the previous one leaks in.
            assert_eq!(out, resample(x, 48_000, 16_000).unwrap(), "{len}");
        }
    }

    #[test]
    fn rejects_zero_rate() {
        assert!(resample(&[0.0; 10], 0, 16_000).is_err());
    }
}
