//! One module per subcommand; each has its clap `Args` and a `run`.

pub mod bench;
pub mod demo;
pub mod eval;
pub mod info;
pub mod learn;
pub mod merge;
pub mod predict;
pub mod sign;
pub mod threshold;
pub mod train;
pub mod watch;

use std::io::Write;

use anyhow::{Context, Result};
use serde::Serialize;

/// Prints `value` as pretty JSON on stdout.
pub fn print_json<T: Serialize>(value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).context("serialising the JSON output")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}").context("writing to stdout")?;
    Ok(())
}
