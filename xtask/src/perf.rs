//! `cargo xtask perf` (owner: the performance issue).
#[derive(clap::Args)]
pub struct Args {}
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`cargo xtask perf` is not built yet")
}
