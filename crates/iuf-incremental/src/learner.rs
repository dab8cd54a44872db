//! The learner: a model plus everything it needs to keep learning new objects (Gram matrices, penalty
//! importance, feature standardisation, calibration), one training step at a time.
//!
//! Base step (section 5): AdamW, step LR schedule, global gradient-norm clip, loss
//! L_rec + lambda_ce L_ce + lambda_sc L_sc (4.3). Incremental steps of the IUF family: the same losses,
//! plain SGD with the 4.6 projection and the 4.5 pull. Baselines: AdamW every step, plus their penalty.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use iuf_model::{IufModel, LearnedClass, Mode, ModelMeta};
use serde::{Deserialize, Serialize};

use crate::calibrate::{linear_quantile, score_sketch, MapNorm, ObjectNorms};
use crate::config::{Strategy, TrainConfig};
use crate::error::{Error, Result};
use crate::feature_store::BackboneId;
use crate::memory::ObjectMemories;
use crate::penalty::Importance;
use crate::progress::{NoProgress, Progress};
use crate::projection::Gram;
use crate::seeded_init::seeded_var_builder;

const GRAM_PREFIX: &str = "state.gram.";
const MEAN_KEY: &str = "state.standardize.mean";
const STD_KEY: &str = "state.standardize.std";
const PROTO_MEAN_KEY: &str = "state.prototype.mean";
const PROTO_SPREAD_KEY: &str = "state.prototype.spread";
/// Images per forward pass when evaluating or accumulating statistics.
pub(crate) const EVAL_BATCH: usize = 16;

/// The training images of one step: `feature_align` and class ids (indices into the class list).
pub struct StepData<'a> {
    /// `[N, C, g, g]`, unstandardised, on the learner's device.
    pub features: &'a Tensor,
    /// The memory features `[N, C_m, 2g, 2g]` of the same images (needed by methods with a
    /// memory; see [`Learner::uses_memory`]).
    pub memory: Option<&'a Tensor>,
    /// Class id of every image.
    pub class_ids: &'a [u32],
}

/// What one step did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Step index in the protocol (0 = base).
    pub step: usize,
    /// Objects learned in this step.
    pub classes: Vec<String>,
    /// Training images used.
    pub images: usize,
    /// Epochs run.
    pub epochs: usize,
    /// Optimiser used (`adamw`, `constrained-sgd`).
    pub optimizer: String,
    /// Mean training losses of the last epoch.
    pub final_loss: LossLog,
    /// Wall time of the step's training, seconds.
    pub train_seconds: f64,
}

/// Mean loss terms over an epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LossLog {
    /// Total loss.
    pub total: f64,
    /// Reconstruction MSE.
    pub rec: f64,
    /// Discriminator cross-entropy.
    pub ce: f64,
    /// Semantic compression loss.
    pub sc: f64,
    /// Quadratic penalty (EWC / MAS / SI).
    pub penalty: f64,
}

/// Everything the learner keeps in the model file besides tensors (`ModelMeta::extra`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LearnerState {
    strategy: Strategy,
    train_config: TrainConfig,
    steps: Vec<StepRecord>,
    /// Per object, the 101 quantiles (0, 0.01, .., 1) of its held-out good images' scores.
    calibration: BTreeMap<String, Vec<f32>>,
    /// Images accumulated in each Gram matrix.
    gram_counts: Vec<u64>,
    /// sha256 of the backbone weights the features came from (absent in older files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    backbone_weights: Option<String>,
    /// Per object, the normalisation of each scorer's map (methods with a memory).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    norms: BTreeMap<String, ObjectNorms>,
}

/// Anomaly maps and scores of a batch of images.
pub struct Predictions {
    /// `[N, S, S]` anomaly maps at the input image size, on the CPU.
    pub maps: Tensor,
    /// Image scores (section 6).
    pub scores: Vec<f32>,
    /// Class probabilities from the discriminator, `[N, K]`, on the CPU.
    pub class_probs: Tensor,
    /// Which learned object each image shows, `[N, K]` probabilities on the CPU: from the object
    /// prototypes in the frozen backbone's feature space when the model has them (they cannot be
    /// forgotten), else the discriminator's `class_probs`. Objects not learned get 0.
    pub object_probs: Tensor,
}

/// A model that learns objects step by step.
///
/// A method is a composition of parts, each in its own module: the reconstruction trainer with its
/// update rule (`recon`, absent for `memory`), the memory builder (`memory`, for `memory` and
/// `iuf+memory`), object recognition by prototypes, and the calibrator (`calibrate`).
pub struct Learner {
    pub(crate) cfg: TrainConfig,
    pub(crate) strategy: Strategy,
    pub(crate) device: Device,
    pub(crate) varmap: VarMap,
    /// The reconstruction network (None for `memory`).
    pub(crate) model: Option<IufModel>,
    pub(crate) meta: ModelMeta,
    state: LearnerState,
    pub(crate) grams: Vec<Gram>,
    pub(crate) importance: Importance,
    pub(crate) standardize: Option<(Tensor, Tensor)>,
    /// Per-object memories (empty unless the method uses them).
    memories: ObjectMemories,
    /// Per object slot: the mean token-mean backbone feature of its training images `[K, C]` and
    /// their mean squared distance to it `[K]` (0 for slots not learned). Fixed size.
    prototypes: Option<(Tensor, Tensor)>,
}

impl Learner {
    /// A fresh model for `class_names` (the protocol's fixed class list, index = class id).
    pub fn new(
        cfg: &TrainConfig,
        strategy: Strategy,
        backbone: &BackboneId,
        class_names: Vec<String>,
        device: &Device,
    ) -> Result<Self> {
        if !strategy.is_trained() {
            return Err(Error::Config(format!(
                "`{strategy}` is a reference baseline for protocol runs (`iuf bench`), not a trainable model"
            )));
        }
        let cfg = cfg.for_strategy(strategy);
        cfg.check()?;
        if class_names.len() > cfg.model.num_classes {
            return Err(Error::Config(format!(
                "{} classes but the model has room for K = {}",
                class_names.len(),
                cfg.model.num_classes
            )));
        }
        let varmap = VarMap::new();
        let model = if strategy.trains_network() {
            Some(IufModel::new(
                &cfg.model,
                seeded_var_builder(&varmap, cfg.seed, device),
            )?)
        } else {
            None
        };
        let d = cfg.model.transformer.hidden_dim;
        let grams = model.as_ref().map_or_else(Vec::new, |m| {
            m.constrained_layers()
                .iter()
                .map(|_| Gram::zeros(d))
                .collect()
        });
        let mut meta = ModelMeta::new(cfg.model.clone(), backbone.name.clone(), class_names);
        meta.network = model.is_some();
        meta.extra = serde_json::json!({});
        let state = LearnerState {
            strategy,
            train_config: cfg.clone(),
            steps: vec![],
            calibration: BTreeMap::new(),
            gram_counts: vec![],
            backbone_weights: Some(backbone.weights_digest.clone()),
            norms: BTreeMap::new(),
        };
        Ok(Self {
            cfg,
            strategy,
            device: device.clone(),
            varmap,
            model,
            meta,
            state,
            grams,
            importance: Importance::default(),
            standardize: None,
            memories: ObjectMemories::new(),
            prototypes: None,
        })
    }

    /// Loads a model file written by [`Learner::save`].
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        Self::from_loaded(path, iuf_model::load_model(path, device)?, device)
    }

    /// [`Learner::load`] on the file's bytes already read (`path` names it in messages).
    pub fn load_bytes(path: &Path, bytes: &[u8], device: &Device) -> Result<Self> {
        Self::from_loaded(
            path,
            iuf_model::load_model_bytes(path, bytes, device)?,
            device,
        )
    }

    /// The network's parameter count (0 for methods without one).
    pub fn parameters(&self) -> usize {
        self.varmap.all_vars().iter().map(|v| v.elem_count()).sum()
    }

    fn from_loaded(path: &Path, loaded: iuf_model::LoadedModel, device: &Device) -> Result<Self> {
        let state: LearnerState =
            serde_json::from_value(loaded.meta.extra.clone()).map_err(|e| Error::RunDir {
                path: path.to_path_buf(),
                msg: format!(
                    "not a model written by the iuf learner (metadata `extra` does not parse: {e})"
                ),
            })?;
        let model = if loaded.meta.network {
            Some(loaded.model()?)
        } else {
            None
        };
        let find = |name: &str| {
            loaded
                .state
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.clone())
        };
        let layers = model
            .as_ref()
            .map_or_else(Vec::new, |m| m.constrained_layers());
        let d = loaded.meta.config.transformer.hidden_dim;
        let mut grams = Vec::with_capacity(layers.len());
        for (i, layer) in layers.iter().enumerate() {
            let count = state.gram_counts.get(i).copied().unwrap_or(0);
            grams.push(match find(&format!("{GRAM_PREFIX}{layer}")) {
                Some(t) => Gram::from_tensor(&t, count)?,
                None => Gram::zeros(d),
            });
        }
        let standardize = match (find(MEAN_KEY), find(STD_KEY)) {
            (Some(m), Some(s)) => Some((m.reshape((1, (), 1, 1))?, s.reshape((1, (), 1, 1))?)),
            _ => None,
        };
        Ok(Self {
            cfg: state.train_config.clone(),
            strategy: state.strategy,
            device: device.clone(),
            importance: Importance::from_state(&loaded.state),
            varmap: loaded.varmap,
            model,
            meta: loaded.meta,
            state,
            grams,
            standardize,
            memories: ObjectMemories::from_state(&loaded.state, device)?,
            prototypes: match (find(PROTO_MEAN_KEY), find(PROTO_SPREAD_KEY)) {
                (Some(m), Some(s)) => Some((m, s)),
                _ => None,
            },
        })
    }

    /// Writes the model file (atomically).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut state_tensors = Vec::new();
        let layers = self
            .model
            .as_ref()
            .map_or_else(Vec::new, |m| m.constrained_layers());
        for (layer, g) in layers.iter().zip(&self.grams) {
            if g.count > 0 {
                state_tensors.push((format!("{GRAM_PREFIX}{layer}"), g.to_tensor(&Device::Cpu)?));
            }
        }
        if let Some((m, s)) = &self.standardize {
            state_tensors.push((MEAN_KEY.to_string(), m.flatten_all()?));
            state_tensors.push((STD_KEY.to_string(), s.flatten_all()?));
        }
        if let Some((m, s)) = &self.prototypes {
            state_tensors.push((PROTO_MEAN_KEY.to_string(), m.clone()));
            state_tensors.push((PROTO_SPREAD_KEY.to_string(), s.clone()));
        }
        state_tensors.extend(self.importance.to_state());
        state_tensors.extend(self.memories.to_state(self.cfg.memory.f16)?);
        let mut meta = self.meta.clone();
        let mut st = self.state.clone();
        st.gram_counts = self.grams.iter().map(|g| g.count).collect();
        meta.extra = serde_json::to_value(&st)
            .map_err(|e| Error::Msg(format!("serialising learner state: {e}")))?;
        iuf_model::save_model(path, &self.varmap, &meta, &state_tensors)?;
        Ok(())
    }

    /// The strategy this model is trained with.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// The training configuration (after the strategy's adjustments).
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// Replaces the schedule of the steps still to come (epochs, learning rates, loss weights,
    /// calibration, seed), e.g. more epochs for a hard new object. The network and the feature
    /// standardisation are fixed once the model exists; changing them is an error.
    pub fn set_config(&mut self, cfg: &TrainConfig) -> Result<()> {
        let cfg = cfg.for_strategy(self.strategy);
        cfg.check()?;
        if cfg.model != self.cfg.model {
            return Err(Error::Config(
                "the network configuration (model) cannot change after the model is created".into(),
            ));
        }
        if cfg.standardize_features != self.cfg.standardize_features {
            return Err(Error::Config(
                "standardize_features is fixed when the model is created".into(),
            ));
        }
        self.state.train_config = cfg.clone();
        self.cfg = cfg;
        Ok(())
    }

    /// How inference multiplies from now on (evaluation and prediction; learning stays f32).
    /// `Bf16` on a CPU without AVX-512 BF16 is an error and changes nothing.
    pub fn set_precision(&mut self, precision: iuf_model::Precision) -> Result<()> {
        precision.resolve()?;
        self.cfg.precision = precision;
        self.state.train_config.precision = precision;
        Ok(())
    }

    /// Model metadata: config, backbone, classes, learned classes and their steps, thresholds.
    pub fn meta(&self) -> &ModelMeta {
        &self.meta
    }

    /// sha256 of the backbone weights the model was trained on (None for files that predate it).
    pub fn backbone_weights(&self) -> Option<&str> {
        self.state.backbone_weights.as_deref()
    }

    /// Every finished step.
    pub fn steps(&self) -> &[StepRecord] {
        &self.state.steps
    }

    /// Objects learned so far, in learning order.
    pub fn learned_classes(&self) -> Vec<String> {
        self.meta.learned.iter().map(|l| l.class.clone()).collect()
    }

    /// The class id of `name` in the model's fixed class list.
    pub fn class_id(&self, name: &str) -> Option<u32> {
        self.meta
            .class_names
            .iter()
            .position(|c| c == name)
            .map(|i| i as u32)
    }

    /// Threshold of `class` at quantile `q` of its held-out good scores.
    pub fn threshold(&self, class: &str, q: f64) -> Option<f32> {
        linear_quantile(self.state.calibration.get(class)?, q)
    }

    /// The device the model lives on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Learns `new_classes` from `train` (step `step` of a protocol), then calibrates their thresholds
    /// on `holdout` (good images never trained on) and updates the Gram matrices / importance.
    pub fn learn_step(
        &mut self,
        step: usize,
        new_classes: &[String],
        train: &StepData<'_>,
        holdout: Option<&StepData<'_>>,
        progress: &dyn Progress,
    ) -> Result<StepRecord> {
        let n = train.features.dim(0)?;
        if n == 0 {
            return Err(Error::Msg(format!(
                "step {step}: no training images for {}",
                new_classes.join(", ")
            )));
        }
        if train.class_ids.len() != n {
            return Err(Error::Msg(format!(
                "step {step}: {n} feature maps but {} class ids",
                train.class_ids.len()
            )));
        }
        for c in new_classes {
            if self.meta.learned.iter().any(|l| &l.class == c) {
                return Err(Error::Config(format!(
                    "the model has already learned `{c}`; an object is learned once"
                )));
            }
            if self.class_id(c).is_none() {
                // A new object takes the next free slot of the K the model was created with.
                if self.meta.class_names.len() >= self.cfg.model.num_classes {
                    return Err(Error::Config(format!(
                        "cannot learn `{c}`: the model was created for at most K = {} objects and knows {:?}",
                        self.cfg.model.num_classes, self.meta.class_names
                    )));
                }
                self.meta.class_names.push(c.clone());
            }
        }
        let start = Instant::now();
        let trained = if self.model.is_some() {
            Some(self.train_reconstruction(step, new_classes, train, progress)?)
        } else {
            None
        };
        if self.strategy.uses_memory() {
            self.build_memories(new_classes, train)?;
        }
        let train_seconds = start.elapsed().as_secs_f64();
        self.add_prototypes(new_classes, train)?;
        for c in new_classes {
            self.meta.learned.push(LearnedClass {
                class: c.clone(),
                step,
            });
        }
        if let Some(h) = holdout {
            self.calibrate(new_classes, h)?;
        }
        let record = StepRecord {
            step,
            classes: new_classes.to_vec(),
            images: n,
            epochs: trained.as_ref().map_or(0, |t| t.epochs),
            optimizer: trained.as_ref().map_or("none", |t| t.optimizer).to_string(),
            final_loss: trained.map(|t| t.last).unwrap_or_default(),
            train_seconds,
        };
        self.state.steps.push(record.clone());
        Ok(record)
    }

    /// Object prototypes of `classes` from their training images (section 4.1's role, done where
    /// nothing drifts: the frozen backbone's features). The discriminator's head, trained only on
    /// the newest objects in an incremental step, learns to call everything the newest object.
    fn add_prototypes(&mut self, classes: &[String], train: &StepData<'_>) -> Result<()> {
        let k = self.cfg.model.num_classes;
        let pooled = train
            .features
            .flatten_from(2)?
            .mean(2)?
            .to_dtype(DType::F64)?
            .to_device(&Device::Cpu)?; // [N, C]
        let c = pooled.dim(1)?;
        let (mut means, mut spreads) = match &self.prototypes {
            Some((m, s)) => (m.to_vec2::<f32>()?, s.to_vec1::<f32>()?),
            None => (vec![vec![0f32; c]; k], vec![0f32; k]),
        };
        for name in classes {
            let id = self.class_id(name).expect("registered in learn_step") as usize;
            let rows: Vec<u32> = (0..train.class_ids.len() as u32)
                .filter(|&i| train.class_ids[i as usize] as usize == id)
                .collect();
            if rows.is_empty() {
                continue;
            }
            let mine = pooled.index_select(&Tensor::new(rows.as_slice(), &Device::Cpu)?, 0)?;
            let mean = mine.mean_keepdim(0)?; // [1, C]
            let spread = mine
                .broadcast_sub(&mean)?
                .sqr()?
                .sum(1)?
                .mean_all()?
                .to_scalar::<f64>()?;
            means[id] = mean.squeeze(0)?.to_dtype(DType::F32)?.to_vec1()?;
            spreads[id] = spread as f32;
        }
        self.prototypes = Some((
            Tensor::new(means, &Device::Cpu)?,
            Tensor::new(spreads, &Device::Cpu)?,
        ));
        Ok(())
    }

    /// `[N, K]` object probabilities from the prototypes: a softmax over the learned objects of
    /// `-d^2 / (2 s)`, with d the distance to each prototype and s the mean within-object spread.
    fn prototype_probs(&self, features: &Tensor) -> Result<Option<Tensor>> {
        let Some((means, spreads)) = &self.prototypes else {
            return Ok(None);
        };
        let learned: Vec<usize> = self
            .meta
            .learned
            .iter()
            .filter_map(|l| self.class_id(&l.class))
            .map(|i| i as usize)
            .collect();
        let spreads: Vec<f32> = spreads.to_vec1()?;
        let s =
            learned.iter().map(|&i| spreads[i] as f64).sum::<f64>() / learned.len().max(1) as f64;
        if learned.is_empty() {
            return Ok(None);
        }
        // Objects learned from a single image each have no spread; any positive scale ranks alike.
        let s = if s > 0.0 { s } else { 1.0 };
        let x = features
            .flatten_from(2)?
            .mean(2)?
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?; // [n, C]
        let d2 = x
            .unsqueeze(1)?
            .broadcast_sub(&means.unsqueeze(0)?)?
            .sqr()?
            .sum(2)?; // [n, K]
        let k = means.dim(0)?;
        let mask: Vec<f32> = (0..k)
            .map(|i| {
                if learned.contains(&i) {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
            .collect();
        let logits = (d2 * (-0.5 / s))?.broadcast_add(&Tensor::new(mask, &Device::Cpu)?)?;
        Ok(Some(candle_nn::ops::softmax_last_dim(&logits)?))
    }

    /// Builds the memory of every new object from its own training images.
    fn build_memories(&mut self, classes: &[String], train: &StepData<'_>) -> Result<()> {
        let memory = train.memory.ok_or_else(|| {
            Error::Msg(format!(
                "`{}` needs the memory features of the training images",
                self.strategy
            ))
        })?;
        for c in classes {
            let rows = self.rows_of(c, train.class_ids)?;
            let mine = memory.index_select(&rows, 0)?;
            let t = Instant::now();
            self.memories.build(c, &mine, &self.cfg.memory)?;
            if self.cfg.fusion.gaussian > 0.0 {
                let align = train.features.index_select(&rows, 0)?;
                self.memories
                    .fit_gaussian(c, &align, &self.cfg.gaussian, self.cfg.memory.f16)?;
            }
            tracing::info!(
                class = %c,
                images = mine.dim(0)?,
                patches = self.memories.get(c).map_or(0, |m| m.len()),
                seconds = t.elapsed().as_secs_f64(),
                "memory built"
            );
        }
        Ok(())
    }

    /// Indices (on the learner's device) of the images of `class` among `class_ids`.
    fn rows_of(&self, class: &str, class_ids: &[u32]) -> Result<Tensor> {
        let id = self
            .class_id(class)
            .ok_or_else(|| Error::Msg(format!("`{class}` is not one of the model's objects")))?;
        let rows: Vec<u32> = (0..class_ids.len() as u32)
            .filter(|&i| class_ids[i as usize] == id)
            .collect();
        let n = rows.len();
        Ok(Tensor::from_vec(rows, n, &self.device)?)
    }

    /// Per new object: the normalisation of each scorer's map (methods with a memory) and the
    /// threshold, from its held-out good images.
    fn calibrate(&mut self, classes: &[String], holdout: &StepData<'_>) -> Result<()> {
        if holdout.features.dim(0)? == 0 {
            if self.strategy.uses_memory() {
                tracing::warn!(
                    "no held-out good images for {}: maps are not normalised and no threshold is set",
                    classes.join(", ")
                );
            }
            return Ok(());
        }
        let (_, _, gh, gw) = holdout.features.dims4()?;
        let size = (gh * iuf_model::MAP_STRIDE, gw * iuf_model::MAP_STRIDE);
        if self.strategy.uses_memory() {
            for c in classes {
                let rows = self.rows_of(c, holdout.class_ids)?;
                let n = rows.dim(0)?;
                if n == 0 {
                    continue;
                }
                let features = holdout.features.index_select(&rows, 0)?;
                let reconstruction = match &self.model {
                    Some(_) => {
                        MapNorm::of_good_maps(&self.reconstruction_maps(&features, size)?.0)?
                    }
                    None => None,
                };
                let memory = holdout.memory.ok_or_else(|| {
                    Error::Msg("calibration needs the hold-out images' memory features".into())
                })?;
                let objects = vec![c.clone(); n];
                let (maps, gauss) =
                    self.memory_maps(&memory.index_select(&rows, 0)?, &features, &objects, size)?;
                let norms = ObjectNorms {
                    reconstruction,
                    memory: MapNorm::of_good_maps(&maps)?,
                    gaussian: gauss
                        .map(|g| MapNorm::of_good_maps(&g))
                        .transpose()?
                        .flatten(),
                };
                self.state.norms.insert(c.clone(), norms);
            }
        }
        // Calibration is part of learning: f32 whatever the inference precision.
        let pred = iuf_bf16::scoped(None, || {
            self.predict_images_in_scope(holdout.features, holdout.memory, None, &NoProgress)
        })?;
        for c in classes {
            let id = self.class_id(c).expect("checked in learn_step");
            let scores: Vec<f32> = holdout
                .class_ids
                .iter()
                .zip(&pred.scores)
                .filter(|(&k, _)| k == id)
                .map(|(_, &s)| s)
                .collect();
            let scores = score_sketch(scores);
            if let Some(t) = linear_quantile(&scores, self.cfg.calibration.quantile) {
                self.meta.thresholds.insert(c.clone(), t);
            }
            self.state.calibration.insert(c.clone(), scores);
        }
        Ok(())
    }

    /// Whether the model keeps per-object memories (then [`Learner::predict_images`] needs the
    /// memory features).
    pub fn uses_memory(&self) -> bool {
        self.strategy.uses_memory()
    }

    /// Whether the model has a reconstruction network.
    pub fn has_network(&self) -> bool {
        self.model.is_some()
    }

    /// Patches in the memory of each object (empty for models without one).
    pub fn memory_sizes(&self) -> BTreeMap<String, usize> {
        self.memories
            .classes()
            .into_iter()
            .map(|c| {
                let n = self.memories.get(&c).map_or(0, |m| m.len());
                (c, n)
            })
            .collect()
    }

    /// The map normalisation of `class` (methods with a memory).
    pub fn norms(&self, class: &str) -> Option<&ObjectNorms> {
        self.state.norms.get(class)
    }

    /// Anomaly maps at the input image size, image scores and class probabilities of `features`
    /// (`[N, C, g, g]`, unstandardised). Evaluation mode, batched. For models with a memory use
    /// [`Learner::predict_images`].
    pub fn predict(&self, features: &Tensor) -> Result<Predictions> {
        self.predict_images(features, None, &NoProgress)
    }

    /// Maps, scores and object probabilities of images given by their `feature_align`
    /// `[N, C, g, g]` and, for models with a memory, their memory features `[N, C_m, 2g, 2g]`.
    ///
    /// Each image's object is recognised by the prototypes; its memory map comes from that
    /// object's memory, and with a network too, both maps are normalised with that object's
    /// statistics and combined with the `fusion` weights. Reports finished images to `progress`.
    pub fn predict_images(
        &self,
        features: &Tensor,
        memory: Option<&Tensor>,
        progress: &dyn Progress,
    ) -> Result<Predictions> {
        self.predict_images_as(features, memory, None, progress)
    }

    /// [`Learner::predict_images`] with every image's object given (`Some`) instead of
    /// recognised: its memory and normalisation are used whatever the image shows.
    pub fn predict_images_as(
        &self,
        features: &Tensor,
        memory: Option<&Tensor>,
        object: Option<&str>,
        progress: &dyn Progress,
    ) -> Result<Predictions> {
        let cpu = self.cfg.precision.resolve()?;
        iuf_bf16::scoped(cpu, || {
            self.predict_images_in_scope(features, memory, object, progress)
        })
    }

    /// [`Learner::predict_images_as`] in the precision of the caller's `iuf_bf16` scope (f32
    /// outside one).
    fn predict_images_in_scope(
        &self,
        features: &Tensor,
        memory: Option<&Tensor>,
        object: Option<&str>,
        progress: &dyn Progress,
    ) -> Result<Predictions> {
        if let Some(o) = object {
            if !self.meta.learned.iter().any(|l| l.class == o) {
                return Err(Error::Msg(format!(
                    "the model has not learned `{o}` (it knows {:?})",
                    self.learned_classes()
                )));
            }
        }
        let n = features.dim(0)?;
        let (_, _, gh, gw) = features.dims4()?;
        let size = (gh * iuf_model::MAP_STRIDE, gw * iuf_model::MAP_STRIDE);
        let (h, w) = size;
        let k = self.cfg.model.num_classes;
        if n == 0 {
            let none = Tensor::zeros((0, k), DType::F32, &Device::Cpu)?;
            return Ok(Predictions {
                maps: Tensor::zeros((0, h, w), DType::F32, &Device::Cpu)?,
                scores: vec![],
                class_probs: none.clone(),
                object_probs: none,
            });
        }
        let memory = match (self.uses_memory(), memory) {
            (true, Some(m)) if m.dim(0)? == n => Some(m),
            (true, Some(m)) => {
                return Err(Error::Msg(format!(
                    "{n} images but {} memory feature maps",
                    m.dim(0)?
                )))
            }
            (true, None) => {
                return Err(Error::Msg(format!(
                    "a `{}` model needs the images' memory features",
                    self.strategy
                )))
            }
            (false, _) => None,
        };
        let (mut maps, mut scores) = (Vec::new(), Vec::with_capacity(n));
        let (mut class_probs, mut object_probs) = (Vec::new(), Vec::new());
        for start in (0..n).step_by(EVAL_BATCH) {
            let len = EVAL_BATCH.min(n - start);
            let x = features.narrow(0, start, len)?;
            let rec = match &self.model {
                Some(_) => Some(self.reconstruction_maps(&x, size)?),
                None => None,
            };
            let objects = self.prototype_probs(&x)?;
            let map = match memory {
                None => rec
                    .as_ref()
                    .expect("a model without memory has a network")
                    .0
                    .clone(),
                Some(mem) => {
                    let probs = objects.as_ref().ok_or_else(|| {
                        Error::Msg("the model has not learned any object yet".into())
                    })?;
                    let names = match object {
                        Some(o) => vec![o.to_string(); len],
                        None => self.recognised(probs)?,
                    };
                    let (mem_maps, gauss) =
                        self.memory_maps(&mem.narrow(0, start, len)?, &x, &names, size)?;
                    self.fuse(
                        &names,
                        rec.as_ref().map(|r| &r.0),
                        &mem_maps,
                        gauss.as_ref(),
                    )?
                }
            };
            scores.extend(
                iuf_model::image_scores(&map, iuf_model::SCORE_POOL)?
                    .to_dtype(DType::F32)?
                    .to_vec1::<f32>()?,
            );
            maps.push(map.detach().to_device(&Device::Cpu)?);
            let objects = match (objects, &rec) {
                (Some(o), _) => o,
                (None, Some(r)) => r.1.clone(),
                (None, None) => Tensor::zeros((len, k), DType::F32, &Device::Cpu)?,
            };
            class_probs.push(rec.map_or_else(|| objects.clone(), |r| r.1));
            object_probs.push(objects);
            progress.inc(len as u64);
        }
        Ok(Predictions {
            maps: Tensor::cat(&maps, 0)?,
            scores,
            class_probs: Tensor::cat(&class_probs, 0)?,
            object_probs: Tensor::cat(&object_probs, 0)?,
        })
    }

    /// The reconstruction network's maps `[n, H, W]` and class probabilities `[n, K]` (CPU).
    fn reconstruction_maps(&self, x: &Tensor, size: (usize, usize)) -> Result<(Tensor, Tensor)> {
        let model = self.model.as_ref().expect("callers check for a network");
        let len = x.dim(0)?;
        let out = model.forward(&self.standardized(x)?, &mut Mode::Eval)?;
        let map = iuf_model::anomaly_map(&out.pred, size)?;
        // Detached: a kept map must not keep its batch's whole forward graph (every activation)
        // alive through the op history that links it to the parameters.
        let map = map.reshape((len, size.0, size.1))?.detach();
        let probs = candle_nn::ops::softmax_last_dim(&out.logits)?
            .detach()
            .to_device(&Device::Cpu)?;
        Ok((map, probs))
    }

    /// Memory maps `[n, H, W]` of images whose objects are `objects` (one name per image): each
    /// image is scored against its object's memory, upsampled like the reconstruction map and
    /// smoothed; and the same for the objects' Gaussians on `align`, when the model fits them.
    fn memory_maps(
        &self,
        memory: &Tensor,
        align: &Tensor,
        objects: &[String],
        size: (usize, usize),
    ) -> Result<(Tensor, Option<Tensor>)> {
        let mut out: Vec<Option<Tensor>> = vec![None; objects.len()];
        let mut gauss: Vec<Option<Tensor>> = vec![None; objects.len()];
        let mut distinct: Vec<&String> = objects.iter().collect();
        distinct.sort();
        distinct.dedup();
        for object in distinct {
            let idx: Vec<u32> = (0..objects.len() as u32)
                .filter(|&i| &objects[i as usize] == object)
                .collect();
            let rows = Tensor::from_vec(idx.clone(), idx.len(), memory.device())?;
            let raw = self
                .memories
                .raw_maps(object, &memory.index_select(&rows, 0)?)?;
            let maps = iuf_model::anomaly_map(&raw, size)?.squeeze(1)?;
            let maps = iuf_model::gaussian_blur(&maps, self.cfg.memory.blur_sigma)?;
            for (j, &i) in idx.iter().enumerate() {
                out[i as usize] = Some(maps.get(j)?);
            }
            let g = self
                .memories
                .gaussian_maps(object, &align.index_select(&rows, 0)?)?;
            if let Some(g) = g {
                let g = iuf_model::anomaly_map(&g, size)?.squeeze(1)?;
                let g = iuf_model::gaussian_blur(&g, self.cfg.memory.blur_sigma)?;
                for (j, &i) in idx.iter().enumerate() {
                    gauss[i as usize] = Some(g.get(j)?);
                }
            }
        }
        let out: Vec<Tensor> = out.into_iter().map(|t| t.expect("every image")).collect();
        // Gaussian maps only when every image's object has one (all objects fit one, or none).
        let gauss = if gauss.iter().all(Option::is_some) {
            let g: Vec<Tensor> = gauss.into_iter().flatten().collect();
            Some(Tensor::stack(&g, 0)?)
        } else {
            None
        };
        Ok((Tensor::stack(&out, 0)?, gauss))
    }

    /// Names of the most probable learned object of each image, from `[n, K]` probabilities.
    fn recognised(&self, probs: &Tensor) -> Result<Vec<String>> {
        let best: Vec<u32> = probs.argmax(1)?.to_vec1()?;
        best.iter()
            .map(|&i| {
                self.meta
                    .class_names
                    .get(i as usize)
                    .cloned()
                    .ok_or_else(|| {
                        Error::Msg(format!(
                            "object {i} recognised, but the model has no name for it"
                        ))
                    })
            })
            .collect()
    }

    /// The final map of images whose objects are `objects`: each scorer's map (the memory's, and
    /// where present the Gaussian's and the reconstruction's) normalised with the object's own
    /// statistics, weighted with `fusion` and summed.
    fn fuse(
        &self,
        objects: &[String],
        rec: Option<&Tensor>,
        mem: &Tensor,
        gauss: Option<&Tensor>,
    ) -> Result<Tensor> {
        let norm_of = |pick: fn(&ObjectNorms) -> Option<MapNorm>| -> Result<(Tensor, Tensor)> {
            let (mut med, mut scale) = (Vec::new(), Vec::new());
            for o in objects {
                let n = self
                    .state
                    .norms
                    .get(o)
                    .and_then(pick)
                    .unwrap_or(MapNorm::IDENTITY);
                med.push(n.median);
                scale.push(n.scale);
            }
            let len = objects.len();
            Ok((
                Tensor::from_vec(med, (len, 1, 1), mem.device())?,
                Tensor::from_vec(scale, (len, 1, 1), mem.device())?,
            ))
        };
        let normalised = |map: &Tensor, (med, scale): (Tensor, Tensor)| -> Result<Tensor> {
            Ok(map.broadcast_sub(&med)?.broadcast_div(&scale)?)
        };
        let f = &self.cfg.fusion;
        let mut fused = (normalised(mem, norm_of(|n| n.memory)?)? * f.memory)?;
        if let Some(g) = gauss {
            fused = (fused + (normalised(g, norm_of(|n| n.gaussian)?)? * f.gaussian)?)?;
        }
        if let Some(rec) = rec {
            let z = normalised(
                &rec.to_device(mem.device())?,
                norm_of(|n| n.reconstruction)?,
            )?;
            fused = (fused + (z * f.reconstruction)?)?;
        }
        Ok(fused)
    }
}
