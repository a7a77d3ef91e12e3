//! Synthetic factory data set generator (placeholder, being written).
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct SynthArgs {
    /// Output directory (DCASE 2023 layout).
    #[arg(long)]
    pub out: PathBuf,
    /// Seed: the same seed gives the same data set, byte for byte.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(_args: &SynthArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
