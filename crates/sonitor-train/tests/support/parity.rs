//! Shared by the parity tests (`export_parity.rs`, `prune.rs`).

/// ‖got − want‖ / ‖want‖; panics on a length mismatch or a degenerate (near-zero) reference.
pub fn relative_error(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let norm = want.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
    let diff = got
        .iter()
        .zip(want)
        .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    assert!(norm > 1e-3, "degenerate embedding {want:?}");
    diff / norm
}
