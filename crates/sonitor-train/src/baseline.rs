//! The non-learned baseline: every learned model must beat it, honestly, on the same data.
//!
//! Per clip: the mean over frames of the raw log-mel spectrogram (the shared features' `log_mel_frames`, no mean
//! subtraction), a 128-dimensional summary of the clip's spectral envelope. Per machine type and section:
//! the mean of the source-domain normal training clips, the mean of the (few) target-domain ones, and one
//! covariance estimated from the source clips around their mean, shrunk towards a scaled identity
//! (`(1-α)·Σ + α·tr(Σ)/d·I`, α = [`SHRINKAGE`]) so that 300 clips in 128 dimensions give a stable inverse.
//! The anomaly score of a test clip is its Mahalanobis distance to the nearer of the two domain means.

use std::path::{Path, PathBuf};

use anyhow::Context;
use sonitor_core::dcase::{self, Clip, Domain, Split};
use sonitor_core::features::{FeatureExtractor, FeatureParams};
use sonitor_core::{metrics, parallel, score};

/// Weight of the identity target in the covariance shrinkage.
pub const SHRINKAGE: f64 = 0.1;

#[derive(clap::Args, Debug, Clone)]
pub struct BaselineArgs {
    /// Data set root (DCASE layout).
    #[arg(long)]
    pub data: PathBuf,
    /// Directory to write the DCASE submission files into (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Print the metrics as one JSON object. Test clips without labels give no metrics: the object then says
    /// why, as `eval --json`'s does.
    #[arg(long)]
    pub json: bool,
}

/// Mean log-mel vector of every clip, computed on all cores. Errors name the clip.
pub fn clip_vectors(clips: &[&Clip], params: &FeatureParams) -> anyhow::Result<Vec<Vec<f64>>> {
    parallel::map_with_state(
        clips,
        || anyhow::Ok((FeatureExtractor::new(params.clone())?, Vec::new())),
        |(fx, frames), clip| {
            let audio = crate::data::load_clip(clip, params)?;
            mean_log_mel(fx, frames, &audio)
                .with_context(|| format!("{}: too short", clip.path.display()))
        },
    )
}

/// The mean over frames of `audio`'s raw log-mel spectrogram; `frames` is scratch space.
pub fn mean_log_mel(
    fx: &mut FeatureExtractor,
    frames: &mut Vec<f32>,
    audio: &[f32],
) -> anyhow::Result<Vec<f64>> {
    let n_mels = fx.params().n_mels;
    frames.clear();
    let n = fx.log_mel_frames(audio, frames);
    anyhow::ensure!(
        n > 0,
        "{} samples, fewer than one STFT frame of {}",
        audio.len(),
        fx.params().n_fft
    );
    let mut mean = vec![0.0f64; n_mels];
    for row in frames.chunks_exact(n_mels) {
        for (m, v) in mean.iter_mut().zip(row) {
            *m += *v as f64 / n as f64;
        }
    }
    Ok(mean)
}

/// Lower-triangular Cholesky factor of a symmetric positive-definite matrix (row-major, d×d).
fn cholesky(a: &[f64], d: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i * d + k] * l[j * d + k]).sum();
            if i == j {
                let v = a[i * d + i] - s;
                if v <= 0.0 {
                    return None;
                }
                l[i * d + i] = v.sqrt();
            } else {
                l[i * d + j] = (a[i * d + j] - s) / l[j * d + j];
            }
        }
    }
    Some(l)
}

/// A fitted baseline for one section.
#[derive(Debug, Clone)]
pub struct SectionModel {
    means: Vec<Vec<f64>>,
    /// The covariance's Cholesky factor, packed by rows as a bundle stores it ([`sonitor_core::score::Baseline::cholesky`]).
    cholesky: Vec<f64>,
}

impl SectionModel {
    /// Fits on the source-domain vectors (covariance and one mean) and the target-domain ones (a second mean).
    pub fn fit(source: &[Vec<f64>], target: &[Vec<f64>]) -> anyhow::Result<Self> {
        anyhow::ensure!(
            source.len() >= 2,
            "need at least 2 source-domain normal training clips, got {}",
            source.len()
        );
        let d = source[0].len();
        let mean_of = |v: &[Vec<f64>]| {
            let mut m = vec![0.0; d];
            for x in v {
                for (a, b) in m.iter_mut().zip(x) {
                    *a += b / v.len() as f64;
                }
            }
            m
        };
        let mu = mean_of(source);
        let mut cov = vec![0.0; d * d];
        for x in source {
            for i in 0..d {
                let di = x[i] - mu[i];
                for j in 0..=i {
                    cov[i * d + j] += di * (x[j] - mu[j]) / (source.len() - 1) as f64;
                }
            }
        }
        let trace: f64 = (0..d).map(|i| cov[i * d + i]).sum();
        let ridge = SHRINKAGE * (trace / d as f64).max(1e-12);
        for i in 0..d {
            for j in 0..=i {
                let v = (1.0 - SHRINKAGE) * cov[i * d + j] + if i == j { ridge } else { 0.0 };
                cov[i * d + j] = v;
                cov[j * d + i] = v;
            }
        }
        let chol = cholesky(&cov, d).context("covariance is not positive definite")?;
        let mut means = vec![mu];
        if !target.is_empty() {
            means.push(mean_of(target));
        }
        Ok(Self {
            means,
            cholesky: (0..d)
                .flat_map(|i| chol[i * d..=i * d + i].to_vec())
                .collect(),
        })
    }

    /// Mahalanobis distance to the nearer domain mean (the daemon's function,
    /// [`sonitor_core::score::mahalanobis_nearest`]).
    pub fn score(&self, x: &[f64]) -> f64 {
        score::mahalanobis_nearest(x, &self.means, &[], &self.cholesky, &mut Vec::new())
    }

    /// The domain means and the packed factor, as a bundle's [`sonitor_core::score::Baseline`] stores them.
    pub fn parts(&self) -> (Vec<Vec<f64>>, Vec<f64>) {
        (self.means.clone(), self.cholesky.clone())
    }
}

/// A section's normal training clips, split by domain: source (and clips whose names give no domain), target.
pub fn training_domains<'a>(
    data: &'a dcase::Dataset,
    machine_type: &'a str,
    section: u16,
) -> (Vec<&'a Clip>, Vec<&'a Clip>) {
    data.clips_of(machine_type, section, Split::Train)
        .partition(|c| c.name.domain != Some(Domain::Target))
}

/// Scores every test clip of every section and writes the submission files into `out`. Returns the files.
pub fn score_dataset(
    data: &dcase::Dataset,
    out: &Path,
    params: &FeatureParams,
) -> anyhow::Result<Vec<PathBuf>> {
    crate::data::train_clips(data)?;
    crate::train::make_out_dir(out, "--out", "nothing was scored")?;
    let mut written = Vec::new();
    for (machine_type, section) in data.sections() {
        let test: Vec<&Clip> = data.clips_of(&machine_type, section, Split::Test).collect();
        if test.is_empty() {
            continue;
        }
        let (source, target) = training_domains(data, &machine_type, section);
        let (source_v, target_v) = (
            clip_vectors(&source, params)?,
            clip_vectors(&target, params)?,
        );
        let model = SectionModel::fit(&source_v, &target_v)
            .with_context(|| format!("{machine_type} section {section:02}"))?;
        let rows: Vec<(String, f64)> = test
            .iter()
            .zip(clip_vectors(&test, params)?)
            .map(|(c, v)| (c.file_name().to_string(), model.score(&v)))
            .collect();
        let path = dcase::write_submission(out, &machine_type, section, &rows)?;
        // The DCASE baseline's decision rule: a gamma distribution fitted to the training clips' scores, its
        // 90th percentile.
        let train_scores: Vec<f64> = source_v
            .iter()
            .chain(&target_v)
            .map(|v| model.score(v))
            .collect();
        let threshold = crate::threshold::Gamma::fit(&train_scores)
            .map(|g| g.quantile(0.9))
            .with_context(|| {
                format!("{machine_type} section {section:02}: fitting the decision threshold")
            })?;
        let decisions: Vec<(String, bool)> = rows
            .iter()
            .map(|(n, s)| (n.clone(), *s > threshold))
            .collect();
        dcase::write_decisions(out, &machine_type, section, &decisions)?;
        eprintln!(
            "{machine_type} section {section:02}: {} source + {} target training clips, {} test clips scored",
            source.len(),
            target.len(),
            rows.len()
        );
        written.push(path);
    }
    anyhow::ensure!(
        !written.is_empty(),
        "{}: no test clips to score",
        data.root.display()
    );
    Ok(written)
}

pub fn run(a: &BaselineArgs) -> anyhow::Result<()> {
    crate::train::check_is_dir(&a.out, "--out")?;
    let data = dcase::scan(&a.data)?;
    let started = std::time::Instant::now();
    let files = score_dataset(&data, &a.out, &FeatureParams::default())?;
    eprintln!(
        "scored in {:.1} s; submission files in {}",
        started.elapsed().as_secs_f64(),
        a.out.display()
    );
    let counts = crate::eval::unlabelled_test_clips(&data);
    if counts.0 > 0 {
        let files: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
        return crate::eval::print_no_metrics(counts, &a.out, &files, a.json);
    }
    let report = metrics::evaluate_submission(&data, &a.out)?;
    crate::cli::print_report(&report, a.json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cholesky_reconstructs() {
        let a = [4.0, 2.0, 0.4, 2.0, 5.0, 1.0, 0.4, 1.0, 3.0];
        let l = cholesky(&a, 3).unwrap();
        for i in 0..3 {
            for j in 0..3 {
                let v: f64 = (0..3).map(|k| l[i * 3 + k] * l[j * 3 + k]).sum();
                assert!((v - a[i * 3 + j]).abs() < 1e-12);
            }
        }
        assert!(cholesky(&[1.0, 2.0, 2.0, 1.0], 2).is_none());
    }

    #[test]
    fn mahalanobis_respects_the_spread() {
        // Wide spread along x, narrow along y: a step in y is more anomalous than the same step in x.
        let source: Vec<Vec<f64>> = (0..200)
            .map(|i| {
                let t = i as f64 / 200.0 * std::f64::consts::TAU;
                vec![3.0 * t.cos(), 0.3 * (3.0 * t).sin()]
            })
            .collect();
        let m = SectionModel::fit(&source, &[]).unwrap();
        assert!(m.score(&[0.0, 1.0]) > 2.0 * m.score(&[1.0, 0.0]));
        // A target mean makes clips near it normal.
        let m2 = SectionModel::fit(&source, &[vec![10.0, 10.0], vec![10.2, 9.8]]).unwrap();
        assert!(m2.score(&[10.1, 10.0]) < m.score(&[10.1, 10.0]) / 5.0);
    }

    #[test]
    fn too_few_clips_is_an_error() {
        assert!(SectionModel::fit(&[vec![1.0]], &[]).is_err());
    }
}
