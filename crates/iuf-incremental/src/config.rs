//! Training configuration: schedules, loss weights, strategies and presets (section 5).

use serde::{Deserialize, Serialize};

use iuf_data::image::tiles::Tiling;
use iuf_model::{GaussianConfig, MemoryConfig, ModelConfig, OasaMode, Precision};

use crate::error::{Error, Result};
use crate::scl::{SclConfig, SclTail};

/// How the model learns across steps. `iuf` and its ablations follow the paper's Table 2;
/// the rest are the baselines of section 8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Strategy {
    /// Everything: OASA, the compression loss, and the constrained update (4.5 + 4.6).
    #[serde(rename = "iuf")]
    Iuf,
    /// IUF without object-aware self-attention.
    #[serde(rename = "iuf-no-oasa")]
    IufNoOasa,
    /// IUF without the semantic compression loss.
    #[serde(rename = "iuf-no-scl")]
    IufNoScl,
    /// IUF without the updating strategy (no pull toward old weights, no gradient projection).
    #[serde(rename = "iuf-no-update")]
    IufNoUpdate,
    /// Plain UniAD trained on each step's objects in turn, no protection.
    #[serde(rename = "finetune")]
    Finetune,
    /// Plain UniAD trained on every object at once: the upper bound.
    #[serde(rename = "joint")]
    Joint,
    /// Fine-tuning plus an elastic-weight-consolidation penalty (Fisher importance).
    #[serde(rename = "ewc")]
    Ewc,
    /// Fine-tuning plus a memory-aware-synapses penalty (output-sensitivity importance).
    #[serde(rename = "mas")]
    Mas,
    /// Fine-tuning plus a synaptic-intelligence penalty (path-integral importance).
    #[serde(rename = "si")]
    Si,
    /// Not a trained model: the distance to each object's mean feature per position (the floor
    /// every trained model must beat; see `scorer::ClassMeans`).
    #[serde(rename = "class-mean")]
    ClassMean,
    /// No network: a per-object memory of normal patch features (section 10). An object is learned
    /// in seconds from its own good images and nothing learned before can change.
    #[serde(rename = "memory")]
    Memory,
    /// IUF's reconstruction and the per-object memory, each map normalised per object on held-out
    /// good images, then combined with the weights of `fusion`.
    #[serde(rename = "iuf+memory")]
    IufMemory,
}

/// The quadratic penalty family of EWC, MAS and SI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Penalty {
    /// Fisher information (squared gradients of the training loss).
    Ewc,
    /// Sensitivity of the squared output norm.
    Mas,
    /// Path integral of gradient times update.
    Si,
}

impl Strategy {
    /// Every strategy, in the order reports list them.
    pub const ALL: [Strategy; 12] = [
        Strategy::Memory,
        Strategy::IufMemory,
        Strategy::Iuf,
        Strategy::IufNoOasa,
        Strategy::IufNoScl,
        Strategy::IufNoUpdate,
        Strategy::Finetune,
        Strategy::Joint,
        Strategy::Ewc,
        Strategy::Mas,
        Strategy::Si,
        Strategy::ClassMean,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Iuf => "iuf",
            Strategy::IufNoOasa => "iuf-no-oasa",
            Strategy::IufNoScl => "iuf-no-scl",
            Strategy::IufNoUpdate => "iuf-no-update",
            Strategy::Finetune => "finetune",
            Strategy::Joint => "joint",
            Strategy::Ewc => "ewc",
            Strategy::Mas => "mas",
            Strategy::Si => "si",
            Strategy::ClassMean => "class-mean",
            Strategy::Memory => "memory",
            Strategy::IufMemory => "iuf+memory",
        }
    }

    /// Parses a command-line name.
    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|m| m.name() == s.trim())
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|m| m.name()).collect();
                Error::Config(format!("unknown method `{s}`; known: {}", names.join(", ")))
            })
    }

    /// Whether the method belongs to the IUF family (discriminator-conditioned, constrained SGD).
    pub fn is_iuf(self) -> bool {
        matches!(
            self,
            Strategy::Iuf
                | Strategy::IufNoOasa
                | Strategy::IufNoScl
                | Strategy::IufNoUpdate
                | Strategy::IufMemory
        )
    }

    /// Whether the method learns anything beyond per-object statistics of the frozen features
    /// (every method but the `class-mean` reference).
    pub fn is_trained(self) -> bool {
        self != Strategy::ClassMean
    }

    /// Whether each scorer's map is normalised per object on held-out good images and the maps
    /// fused (methods with a memory, section 10); the others use their one map as it is.
    pub fn normalises_maps(self) -> bool {
        self.uses_memory()
    }

    /// Whether evaluation gives every test image its true object instead of recognising it: the
    /// `class-mean` reference is defined with the oracle (issue 6).
    pub fn oracle_object(self) -> bool {
        self == Strategy::ClassMean
    }

    /// Whether the method trains the reconstruction network.
    pub fn trains_network(self) -> bool {
        !matches!(self, Strategy::ClassMean | Strategy::Memory)
    }

    /// Whether the method keeps a per-object memory of patch features.
    pub fn uses_memory(self) -> bool {
        matches!(self, Strategy::Memory | Strategy::IufMemory)
    }

    /// Object-aware self-attention on (section 4.2).
    pub fn oasa(self) -> OasaMode {
        match self {
            Strategy::Iuf | Strategy::IufNoScl | Strategy::IufNoUpdate | Strategy::IufMemory => {
                OasaMode::On
            }
            _ => OasaMode::Off,
        }
    }

    /// The semantic compression loss is used (section 4.4).
    pub fn uses_scl(self) -> bool {
        matches!(
            self,
            Strategy::Iuf | Strategy::IufNoOasa | Strategy::IufNoUpdate | Strategy::IufMemory
        )
    }

    /// Incremental steps pull toward old weights and project gradients (sections 4.5, 4.6).
    pub fn uses_update(self) -> bool {
        matches!(
            self,
            Strategy::Iuf | Strategy::IufNoOasa | Strategy::IufNoScl | Strategy::IufMemory
        )
    }

    /// The quadratic penalty, if any.
    pub fn penalty(self) -> Option<Penalty> {
        match self {
            Strategy::Ewc => Some(Penalty::Ewc),
            Strategy::Mas => Some(Penalty::Mas),
            Strategy::Si => Some(Penalty::Si),
            _ => None,
        }
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The base step's optimiser and schedule: AdamW with a step learning-rate decay (section 5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaseSchedule {
    /// Passes over the step's training images.
    pub epochs: usize,
    /// AdamW learning rate.
    pub lr: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// AdamW betas.
    pub betas: [f64; 2],
    /// Multiply the learning rate by `lr_gamma` every `lr_step_epochs` epochs.
    pub lr_step_epochs: usize,
    /// The decay factor.
    pub lr_gamma: f64,
    /// Linear warm-up over this many epochs (0: none; the reference has none).
    pub warmup_epochs: usize,
}

/// How an incremental step turns (projected) gradients into updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IncrementalOptimizer {
    /// The reference: SGD on the projected gradient (section 4.6), optionally with momentum.
    #[default]
    Sgd,
    /// Adam (betas of the base schedule, no weight decay) whose *update* of a constrained layer is
    /// projected, as in Adam-NSCL: projecting the gradient would be undone by Adam's per-coordinate
    /// scaling, projecting the update keeps the constrained directions fixed.
    Adam,
}

/// Incremental steps: by default plain SGD on the projected gradient, as in the reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncrementalSchedule {
    /// Passes over the new objects' training images.
    pub epochs: usize,
    /// Learning rate (reference SGD: 1.0, after clipping the global gradient norm; with `adam`,
    /// something like 1e-4: Adam's steps do not scale with the gradient).
    pub lr: f64,
    /// Section 4.5: `theta = (1 - alpha) theta + alpha theta_old` before every optimiser step.
    pub pull_alpha: f64,
    /// SGD momentum (reference: 0). Compatible with the projection, which is fixed within a step.
    #[serde(default)]
    pub momentum: f64,
    /// The update rule (default: the reference's SGD).
    #[serde(default)]
    pub optimizer: IncrementalOptimizer,
}

/// Weights of the loss terms (section 4.3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossWeights {
    /// Cross-entropy of the discriminator.
    pub ce: f64,
    /// Semantic compression loss (0 turns it off).
    pub sc: f64,
}

/// Strength of the quadratic penalties of the EWC / MAS / SI baselines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PenaltyConfig {
    /// EWC's lambda.
    pub ewc_lambda: f64,
    /// MAS's lambda.
    pub mas_lambda: f64,
    /// SI's c.
    pub si_c: f64,
    /// SI's damping xi.
    pub si_xi: f64,
    /// Batches used to estimate the Fisher / MAS importance at the end of a step (0: all).
    pub importance_batches: usize,
}

/// Held-out good images used to calibrate each object's decision threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationConfig {
    /// Fraction of each object's training images held out (never trained on).
    pub holdout_fraction: f64,
    /// At least this many held out per object (when the object has enough images).
    pub holdout_min: usize,
    /// Default quantile of held-out good scores used as the threshold.
    pub quantile: f64,
    /// Fraction of the fused map's side left out on every side when the image score is taken
    /// (0: the whole map, the default). For products whose edges vary between good images and
    /// whose defects never lie there (`docs/results/mvtec-mini/border.md`: it costs a product
    /// whose defects do lie on its edges); the maps and heatmaps keep the whole image.
    #[serde(default)]
    pub score_margin: f64,
    /// K-fold cross-fitting of the threshold (methods without a network): every training image
    /// is also scored by the method learned again without it, K times over disjoint fifths (for
    /// K = 5), and the threshold is read from those scores with the held-out images'. A quantile
    /// of a few dozen held-out scores is their maximum, which unseen good images exceed far more
    /// often than the nominal rate (`docs/results/line/`). 0 (model files written before it
    /// existed): held-out images only. Costs K more learnings of the object's memory.
    #[serde(default)]
    pub folds: usize,
}

/// Everything that decides how a model is trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Name of the preset this came from (`paper`, `cpu`, `tiny`), for reports.
    pub preset: String,
    /// The network.
    pub model: ModelConfig,
    /// Images per batch.
    pub batch_size: usize,
    /// Seed of every random draw (init, shuffling, jitter, dropout, hold-out split).
    pub seed: u64,
    /// Global gradient-norm clip (0: none).
    pub clip_grad_norm: f64,
    /// Base step.
    pub base: BaseSchedule,
    /// Incremental steps of the IUF family.
    pub incremental: IncrementalSchedule,
    /// Epochs of incremental steps for the fine-tuning baselines (AdamW, base schedule's lr).
    pub finetune_epochs: usize,
    /// Loss weights.
    pub loss: LossWeights,
    /// Semantic compression loss.
    pub scl: SclConfig,
    /// EWC / MAS / SI.
    pub penalty: PenaltyConfig,
    /// Threshold calibration.
    pub calibration: CalibrationConfig,
    /// Standardise each feature channel with the mean/std of the first step's training features,
    /// fixed for the rest of the protocol.
    pub standardize_features: bool,
    /// The per-object memory (methods `memory` and `iuf+memory`).
    #[serde(default)]
    pub memory: MemoryConfig,
    /// The per-position Gaussian fitted beside the memory when `fusion.gaussian` > 0.
    #[serde(default)]
    pub gaussian: GaussianConfig,
    /// How the maps of several scorers are combined (methods with a memory).
    #[serde(default)]
    pub fusion: FusionConfig,
    /// How inference multiplies (evaluation and prediction): `f32` (default), `bf16` (an error
    /// on a CPU without AVX-512 BF16) or `auto`. `bf16` on a CPU with AMX also trains the
    /// reconstruction network in mixed precision (bf16 products of the linear layers, f32 master
    /// weights, gradients and optimizer); `auto` trains in f32, and calibration is always f32.
    #[serde(default)]
    pub precision: Precision,
    /// The tiled view beside the whole image (methods with a memory): tiles cut from the image at
    /// a working resolution, each through the backbone, with their own memory and normalisation,
    /// stitched and fused with the whole view's maps. `None` (the default, and every model file
    /// written before it existed): the whole image only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tiles: Option<TileConfig>,
}

/// The tiled view of a model: where the tiles lie, how their memory is kept, and the weight of
/// its map in the fused map.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TileConfig {
    /// The working resolution, tile side and least overlap, in working pixels.
    #[serde(flatten)]
    pub tiling: Tiling,
    /// One memory per tile position (products that lie in the same place in every image)
    /// instead of one memory shared by every position.
    #[serde(default)]
    pub per_position: bool,
    /// Weight of the tiled view's normalised map in the fused map (the whole view's scorers keep
    /// theirs).
    pub weight: f64,
    /// Most patches of the tiled view's memory per object (per position with `per_position`).
    pub patches: usize,
}

impl TileConfig {
    /// Tiles of `tile` pixels with at least `overlap` pixels of overlap over the image resized to
    /// `input`, one shared memory, weight 1, the memory's patch budget.
    pub fn new(input: usize, tile: usize, overlap: usize, memory: &MemoryConfig) -> Self {
        Self {
            tiling: Tiling {
                input,
                tile,
                overlap,
            },
            per_position: false,
            weight: 1.0,
            patches: memory.patches,
        }
    }

    /// Side of the fused map of a model whose whole view is `image_size` pixels: the working
    /// image at the scale a tile has in the backbone (`input * image_size / tile`), so a tile's
    /// feature cell covers as many map pixels as a whole-view cell does in its 224-pixel map.
    pub fn map_side(&self, image_size: usize) -> usize {
        let t = &self.tiling;
        ((t.input * image_size) as f64 / t.tile as f64).round() as usize
    }

    /// Rejects settings that cannot work.
    pub fn check(&self, image_size: usize) -> Result<()> {
        self.tiling
            .check()
            .map_err(|e| Error::Config(e.to_string()))?;
        let side = self.map_side(image_size);
        if side > 2048 {
            return Err(Error::Config(format!(
                "tiles of {} px over a {} px image give a {side} px map (at most 2048): use larger tiles or a smaller working resolution",
                self.tiling.tile, self.tiling.input
            )));
        }
        if !(self.weight > 0.0 && self.weight.is_finite()) || self.patches == 0 {
            return Err(Error::Config(format!(
                "tiles: weight must be > 0 and patches >= 1, found weight {} and patches {}",
                self.weight, self.patches
            )));
        }
        Ok(())
    }
}

/// Weights of the per-object normalised maps in the fused map (section 10: each scorer's map minus
/// the median of the object's held-out good pixels, divided by their 99th percentile minus the
/// median).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FusionConfig {
    /// Weight of the memory's nearest-neighbour map.
    pub memory: f64,
    /// Weight of the reconstruction network's map (`iuf+memory`).
    pub reconstruction: f64,
    /// Weight of the per-position Gaussian's map (0: no Gaussian is fitted).
    #[serde(default)]
    pub gaussian: f64,
}

impl Default for FusionConfig {
    fn default() -> Self {
        Self {
            memory: 1.0,
            reconstruction: 1.0,
            gaussian: 1.0,
        }
    }
}

impl TrainConfig {
    /// The paper's recipe (GPUs): D 256, 4+4 layers, 1600 base epochs, batch 24.
    pub fn paper(in_channels: usize, num_classes: usize) -> Self {
        let model = ModelConfig::paper(in_channels, num_classes);
        let d = model.transformer.hidden_dim;
        Self {
            preset: "paper".into(),
            model,
            batch_size: 24,
            seed: 0,
            clip_grad_norm: 0.1,
            base: BaseSchedule {
                epochs: 1600,
                lr: 1e-4,
                weight_decay: 1e-4,
                betas: [0.9, 0.999],
                lr_step_epochs: 800,
                lr_gamma: 0.1,
                warmup_epochs: 0,
            },
            incremental: IncrementalSchedule {
                epochs: 500,
                lr: 1.0,
                pull_alpha: 0.05,
                momentum: 0.0,
                optimizer: IncrementalOptimizer::Sgd,
            },
            finetune_epochs: 500,
            loss: LossWeights { ce: 1.0, sc: 10.0 },
            scl: SclConfig::reference(d),
            penalty: PenaltyConfig {
                ewc_lambda: 1e4,
                mas_lambda: 1.0,
                si_c: 1.0,
                si_xi: 1e-3,
                importance_batches: 0,
            },
            calibration: CalibrationConfig {
                holdout_fraction: 0.1,
                holdout_min: 4,
                quantile: 0.99,
                score_margin: 0.0,
                folds: 5,
            },
            standardize_features: false,
            memory: MemoryConfig::default(),
            gaussian: GaussianConfig::default(),
            fusion: FusionConfig::default(),
            precision: Precision::default(),
            tiles: None,
        }
    }

    /// A 2-core CPU recipe: a protocol of a few objects in minutes.
    pub fn cpu(in_channels: usize, num_classes: usize) -> Self {
        let model = ModelConfig::cpu(in_channels, num_classes);
        let d = model.transformer.hidden_dim;
        Self {
            preset: "cpu".into(),
            model,
            batch_size: 16,
            // 30 base epochs: joint on the mvtec-mini protocol measured .794 / .900 (image / pixel
            // AUROC) after 10 epochs, .826 / .905 after 20 and .841 / .908 after 30; 30 is what the
            // 20-minute budget of a protocol on 2 cores allows (docs/results/mvtec-mini/tuning.md).
            base: BaseSchedule {
                epochs: 30,
                lr: 1e-3,
                lr_step_epochs: 24,
                warmup_epochs: 1,
                ..Self::paper(in_channels, num_classes).base
            },
            incremental: IncrementalSchedule {
                epochs: 8,
                lr: 1.0,
                pull_alpha: 0.05,
                momentum: 0.0,
                optimizer: IncrementalOptimizer::Sgd,
            },
            finetune_epochs: 8,
            scl: SclConfig {
                tail: SclTail::Threshold {
                    tau: 0.1 / d as f64,
                },
                buffer_rows: 768,
            },
            // The Fisher information of the reconstruction loss is tiny (penalty 0.006 against a
            // loss of 0.17 at lambda 1e4): on the mvtec-mini protocol EWC forgot like fine-tuning
            // at 1e4 and 1e6, and kept old objects at 1e8-1e12 (image / pixel FM .001 / .079 at
            // 1e8, .004 / .012 at 1e12; docs/results/mvtec-mini/tuning.md).
            penalty: PenaltyConfig {
                ewc_lambda: 1e12,
                ..Self::paper(in_channels, num_classes).penalty
            },
            standardize_features: true,
            ..Self::paper(in_channels, num_classes)
        }
    }

    /// Tiny and fast, for tests.
    pub fn tiny(in_channels: usize, num_classes: usize) -> Self {
        let model = ModelConfig::tiny(in_channels, num_classes);
        let d = model.transformer.hidden_dim;
        Self {
            preset: "tiny".into(),
            model,
            batch_size: 4,
            base: BaseSchedule {
                epochs: 2,
                lr: 1e-3,
                lr_step_epochs: 100,
                ..Self::paper(in_channels, num_classes).base
            },
            incremental: IncrementalSchedule {
                epochs: 2,
                lr: 1.0,
                pull_alpha: 0.05,
                momentum: 0.0,
                optimizer: IncrementalOptimizer::Sgd,
            },
            finetune_epochs: 2,
            scl: SclConfig {
                tail: SclTail::Threshold {
                    tau: 0.1 / d as f64,
                },
                buffer_rows: 64,
            },
            calibration: CalibrationConfig {
                holdout_fraction: 0.2,
                holdout_min: 1,
                quantile: 0.99,
                score_margin: 0.0,
                folds: 5,
            },
            ..Self::paper(in_channels, num_classes)
        }
    }

    /// A preset by name.
    pub fn preset(name: &str, in_channels: usize, num_classes: usize) -> Result<Self> {
        match name {
            "paper" => Ok(Self::paper(in_channels, num_classes)),
            "cpu" => Ok(Self::cpu(in_channels, num_classes)),
            "tiny" => Ok(Self::tiny(in_channels, num_classes)),
            other => Err(Error::Config(format!(
                "unknown preset `{other}`; known: paper, cpu, tiny"
            ))),
        }
    }

    /// The configuration a strategy actually trains with (OASA on/off, SCL weight).
    pub fn for_strategy(&self, strategy: Strategy) -> Self {
        let mut cfg = self.clone();
        cfg.model.oasa = strategy.oasa();
        if !strategy.uses_scl() {
            cfg.loss.sc = 0.0;
        }
        cfg
    }

    /// Checks every value once; afterwards the config is trusted.
    pub fn check(&self) -> Result<()> {
        self.model.check()?;
        let bad = |m: String| Err(Error::Config(m));
        if self.batch_size == 0 {
            return bad("batch_size must be > 0".into());
        }
        if self.base.epochs == 0 {
            return bad("base.epochs must be > 0".into());
        }
        if !(self.base.lr > 0.0 && self.incremental.lr > 0.0) {
            return bad(format!(
                "learning rates must be > 0, found base {} incremental {}",
                self.base.lr, self.incremental.lr
            ));
        }
        if self.base.lr_step_epochs == 0 {
            return bad("base.lr_step_epochs must be > 0".into());
        }
        if !(0.0..1.0).contains(&self.incremental.momentum) {
            return bad(format!(
                "incremental.momentum must lie in [0, 1), found {}",
                self.incremental.momentum
            ));
        }
        if !(0.0..=1.0).contains(&self.incremental.pull_alpha) {
            return bad(format!(
                "incremental.pull_alpha must lie in [0, 1], found {}",
                self.incremental.pull_alpha
            ));
        }
        if self.loss.ce < 0.0 || self.loss.sc < 0.0 || self.clip_grad_norm < 0.0 {
            return bad("loss weights and clip_grad_norm must be >= 0".into());
        }
        if !(0.0..0.9).contains(&self.calibration.holdout_fraction)
            || !(0.0..=1.0).contains(&self.calibration.quantile)
        {
            return bad(format!(
                "calibration.holdout_fraction must lie in [0, 0.9) and quantile in [0, 1], found {} and {}",
                self.calibration.holdout_fraction, self.calibration.quantile
            ));
        }
        if !(0.0..=0.25).contains(&self.calibration.score_margin) {
            return bad(format!(
                "calibration.score_margin must lie in [0, 0.25] (a fraction of the map's side left \
                 out on every side), found {}",
                self.calibration.score_margin
            ));
        }
        if self.calibration.folds == 1 {
            return bad(
                "calibration.folds must be 0 (held-out images only) or at least 2 (K-fold \
                 cross-fitting), found 1"
                    .into(),
            );
        }
        if self.loss.sc > 0.0 && self.model.transformer.num_decoder_layers < 2 {
            return bad("the semantic compression loss needs at least 2 decoder layers".into());
        }
        self.memory
            .check()
            .map_err(|e| Error::Config(e.to_string()))?;
        let f = &self.fusion;
        if !(f.memory >= 0.0 && f.reconstruction >= 0.0 && f.gaussian >= 0.0)
            || f.memory + f.gaussian <= 0.0
        {
            return bad(format!(
                "fusion weights must be >= 0 and memory + gaussian > 0, found memory {} reconstruction {} gaussian {}",
                f.memory, f.reconstruction, f.gaussian
            ));
        }
        if let Some(t) = &self.tiles {
            t.check(self.model.image_size())?;
        }
        if self.gaussian.shrinkage.is_nan() || self.gaussian.shrinkage <= 0.0 {
            return bad(format!(
                "gaussian.shrinkage must be > 0, found {}",
                self.gaussian.shrinkage
            ));
        }
        Ok(())
    }
}
