//! Shared by the parity tests (`export_parity.rs`, `prune.rs`, `upgrade.rs`).

/// [`sonitor_train::infer::relative_error`], asserting what a parity test needs for it to mean anything: equal
/// lengths and a reference that is not (near) zero.
pub fn relative_error(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let norm = want.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
    assert!(norm > 1e-3, "degenerate embedding {want:?}");
    sonitor_train::infer::relative_error(got, want)
}
