//! `cargo xtask download`: public dataset archives (owner: the iuf-data issue).
#[derive(clap::Args)]
pub struct Args {}
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`cargo xtask download` is not built yet")
}
