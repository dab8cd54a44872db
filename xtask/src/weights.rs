//! `cargo xtask weights` and `cargo xtask convert` (owner: the iuf-backbone issue).
#[derive(clap::Args)]
pub struct WeightsArgs {}
#[derive(clap::Args)]
pub struct ConvertArgs {}
pub fn run_weights(_args: WeightsArgs) -> anyhow::Result<()> {
    anyhow::bail!("`cargo xtask weights` is not built yet")
}
pub fn run_convert(_args: ConvertArgs) -> anyhow::Result<()> {
    anyhow::bail!("`cargo xtask convert` is not built yet")
}
