//! The learner: a method made of parts, learning objects one step at a time. A `Learner` is the
//! object prototypes (which object an image shows), a list of scorers (the method's maps; see
//! [`crate::scorer`]) and the calibrator (per-object normalisation, fusion, thresholds, verdict).
//!
//! Base step (section 5) and incremental steps are the same call: every scorer learns the step's
//! new objects, the prototypes add them, and the calibrator fits them on held-out good images.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use iuf_model::{LearnedClass, ModelMeta};
use serde::{Deserialize, Serialize};

use crate::calibrate::{Calibrator, ObjectNorms, ThresholdRule, ThresholdSetting, Verdict};
use crate::config::{Strategy, TrainConfig};
use crate::error::{Error, Result};
use crate::feature_store::BackboneId;
use crate::progress::{NoProgress, Progress};
use crate::prototypes::{self, Prototypes};
use crate::scorer::{self, Scorer, Step, Trained};
use crate::step::FeatureKind;

use crate::step::{ImageFeatures, EVAL_BATCH};
pub use crate::step::{LossLog, Predictions, StepData, StepRecord};

/// Everything the learner keeps in the model file besides tensors (`ModelMeta::extra`).
/// (The merge of models learned apart, [`crate::merge`], reads and writes it too.)
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LearnerState {
    pub(crate) strategy: Strategy,
    pub(crate) train_config: TrainConfig,
    pub(crate) steps: Vec<StepRecord>,
    /// Per object, the 101 quantiles (0, 0.01, .., 1) of its held-out good images' scores.
    pub(crate) calibration: BTreeMap<String, Vec<f32>>,
    /// Images accumulated in each Gram matrix.
    pub(crate) gram_counts: Vec<u64>,
    /// sha256 of the backbone weights the features came from (absent in older files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) backbone_weights: Option<String>,
    /// Per object, the normalisation of each scorer's map (methods with a memory).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) norms: BTreeMap<String, ObjectNorms>,
    /// Per object, the good images its statistics and its calibration were computed from (absent
    /// in files written before good images could be added).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) images: BTreeMap<String, ObjectImages>,
    /// Per object, a threshold set after learning (`iuf threshold`), with who set it when.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) threshold_settings: BTreeMap<String, ThresholdSetting>,
    /// Good images added to learned objects, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) good_added: Vec<GoodAdded>,
}

/// The good images an object was learned from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectImages {
    /// Training images (its memory, Gaussian and prototype).
    pub train: u64,
    /// Held-out images (its normalisation and score sketch).
    pub holdout: u64,
    /// Training images whose cross-fitted scores are in its score sketch too
    /// (`calibration.folds`; 0 in files written before).
    #[serde(default)]
    pub cross_fitted: u64,
}

/// Good images added to a learned object ([`Learner::add_good`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoodAdded {
    pub object: String,
    /// Images added to its statistics, and held out to recalibrate it.
    pub train: u64,
    pub holdout: u64,
    /// Its threshold (at the model's quantile, or its set rule) before and after.
    pub threshold_before: Option<f32>,
    pub threshold_after: Option<f32>,
    pub seconds: f64,
    /// RFC 3339 UTC.
    pub at: String,
}

/// A model that learns objects step by step: prototypes, scorers and a calibrator.
pub struct Learner {
    cfg: TrainConfig,
    strategy: Strategy,
    device: Device,
    meta: ModelMeta,
    state: LearnerState,
    /// The method's scorers, in the order their maps are fused.
    scorers: Vec<Box<dyn Scorer>>,
    calibrator: Calibrator,
    /// None before the first step (and in files that predate them).
    prototypes: Option<Prototypes>,
    /// Opened to inspect images only ([`Learner::load_bytes_for_inspection`]): the statistics
    /// that updates need were not read, so it can neither learn nor be saved.
    inspection_only: bool,
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
        let cfg = cfg.for_strategy(strategy);
        cfg.check()?;
        if class_names.len() > cfg.model.num_classes {
            return Err(Error::Config(format!(
                "{} classes but the model has room for K = {}",
                class_names.len(),
                cfg.model.num_classes
            )));
        }
        if cfg.tiles.is_some() && !strategy.uses_memory() {
            return Err(Error::Config(format!(
                "the tiled view is a memory of the tiles' patches; `{strategy}` keeps no memory (use --method memory)"
            )));
        }
        let scorers = scorer::scorers(strategy, &cfg, device, None)?;
        let mut meta = ModelMeta::new(cfg.model.clone(), backbone.name.clone(), class_names);
        meta.network = scorers.iter().any(|s| s.varmap().is_some());
        meta.extra = serde_json::json!({});
        let state = LearnerState {
            strategy,
            train_config: cfg.clone(),
            steps: vec![],
            calibration: BTreeMap::new(),
            gram_counts: vec![],
            backbone_weights: Some(backbone.weights_digest.clone()),
            norms: BTreeMap::new(),
            images: BTreeMap::new(),
            threshold_settings: BTreeMap::new(),
            good_added: Vec::new(),
        };
        Ok(Self {
            calibrator: Calibrator::new(strategy.normalises_maps())
                .with_margin(cfg.calibration.score_margin),
            cfg,
            strategy,
            device: device.clone(),
            meta,
            state,
            scorers,
            prototypes: None,
            inspection_only: false,
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

    /// [`Learner::load_bytes`] for inspecting images only (`iuf serve`): the tensors kept for
    /// updating an object exactly (the Gaussians' image counts and scatter matrices, 14 of the
    /// default 22 MiB per object) are checked against the file's digest but not read, so a
    /// replica holds and copies only what scoring reads. Such a learner scores exactly as one
    /// loaded whole; it refuses to learn, to add images and to be saved.
    pub fn load_bytes_for_inspection(path: &Path, bytes: &[u8], device: &Device) -> Result<Self> {
        let loaded =
            iuf_model::load_model_bytes_except(path, bytes, device, &scorer::is_update_statistic)?;
        let mut learner = Self::from_loaded(path, loaded, device)?;
        learner.inspection_only = true;
        Ok(learner)
    }

    /// Refuses a change to a learner opened for inspection only.
    fn check_changeable(&self, what: &str) -> Result<()> {
        if self.inspection_only {
            return Err(Error::Config(format!(
                "cannot {what}: this model was opened to inspect images only (without the \
                 statistics updates need); load it whole (`Learner::load`)"
            )));
        }
        Ok(())
    }

    fn from_loaded(path: &Path, loaded: iuf_model::LoadedModel, device: &Device) -> Result<Self> {
        let mut state: LearnerState =
            serde_json::from_value(loaded.meta.extra.clone()).map_err(|e| Error::RunDir {
                path: path.to_path_buf(),
                msg: format!(
                    "not a model written by the iuf learner (metadata `extra` does not parse: {e})"
                ),
            })?;
        // The calibration lives in the calibrator; the state gets it back when saved.
        let mut calibrator = Calibrator::new(state.strategy.normalises_maps())
            .with_margin(state.train_config.calibration.score_margin);
        calibrator.sketches = std::mem::take(&mut state.calibration);
        calibrator.norms = std::mem::take(&mut state.norms);
        calibrator.settings = std::mem::take(&mut state.threshold_settings);
        Ok(Self {
            scorers: scorer::scorers(state.strategy, &state.train_config, device, Some(&loaded))?,
            prototypes: Prototypes::from_state(&loaded.state),
            calibrator,
            cfg: state.train_config.clone(),
            strategy: state.strategy,
            device: device.clone(),
            meta: loaded.meta,
            state,
            inspection_only: false,
        })
    }

    /// Writes the model file (atomically).
    pub fn save(&self, path: &Path) -> Result<()> {
        self.check_changeable("save it")?;
        let mut tensors = Vec::new();
        for s in &self.scorers {
            tensors.extend(s.state(&self.cfg)?);
        }
        if let Some(p) = &self.prototypes {
            tensors.extend(p.to_state());
        }
        let mut st = self.state.clone();
        st.gram_counts = self.scorers.iter().flat_map(|s| s.gram_counts()).collect();
        st.calibration = self.calibrator.sketches.clone();
        st.norms = self.calibrator.norms.clone();
        st.threshold_settings = self.calibrator.settings.clone();
        let mut meta = self.meta.clone();
        meta.extra = serde_json::to_value(&st)
            .map_err(|e| Error::Msg(format!("serialising learner state: {e}")))?;
        let empty = VarMap::new();
        let varmap = self
            .scorers
            .iter()
            .find_map(|s| s.varmap())
            .unwrap_or(&empty);
        iuf_model::save_model(path, varmap, &meta, &tensors)?;
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
        if cfg.tiles != self.cfg.tiles {
            return Err(Error::Config(
                "the tiled view (tiles) is fixed when the model is created".into(),
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

    /// The device the model lives on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The backbone features the method's scorers read.
    pub fn features(&self) -> FeatureKind {
        if self.scorers.iter().any(|s| s.features().memory()) {
            FeatureKind::AlignAndMemory
        } else {
            FeatureKind::Align
        }
    }

    /// The side of the square input images (the token grid times the backbone's stride 16).
    pub fn image_size(&self) -> usize {
        self.meta.config.image_size()
    }

    /// Where the tiled view's tiles lie (models with one).
    pub fn tiling(&self) -> Option<iuf_data::image::tiles::Tiling> {
        self.cfg.tiles.as_ref().map(|t| t.tiling)
    }

    /// Side of the anomaly maps: the whole view's image size, or with a tiled view the working
    /// image at the tiles' scale ([`TileConfig::map_side`](crate::config::TileConfig::map_side)).
    pub fn map_size(&self) -> usize {
        match &self.cfg.tiles {
            Some(t) => t.map_side(self.image_size()),
            None => self.image_size(),
        }
    }

    /// The method's scorers, in the order their maps are fused.
    pub fn scorers(&self) -> &[Box<dyn Scorer>] {
        &self.scorers
    }

    /// The calibrator: normalisations, thresholds, verdicts.
    pub fn calibrator(&self) -> &Calibrator {
        &self.calibrator
    }

    /// Whether the model has a reconstruction network.
    pub fn has_network(&self) -> bool {
        self.scorers.iter().any(|s| s.varmap().is_some())
    }

    /// The network's parameter count (0 for methods without one).
    pub fn parameters(&self) -> usize {
        self.scorers.iter().map(|s| s.parameters()).sum()
    }

    /// Patches in the memory of each object (empty for models without one).
    pub fn memory_sizes(&self) -> BTreeMap<String, usize> {
        self.learned_classes()
            .into_iter()
            .filter_map(|c| {
                let n = self.scorers.iter().find_map(|s| s.patches(&c))?;
                Some((c, n))
            })
            .collect()
    }

    /// The map normalisation of `class`, by scorer name (methods with a memory).
    pub fn norms(&self, class: &str) -> Option<&ObjectNorms> {
        self.calibrator.norms(class)
    }

    /// Threshold of `class` at quantile `q` of its held-out good scores.
    pub fn threshold(&self, class: &str, q: f64) -> Option<f32> {
        self.calibrator.threshold(class, q)
    }

    /// The verdict on every image of `pred` at threshold quantile `q`: object, probability,
    /// score, threshold, decision.
    pub fn verdicts(&self, pred: &Predictions, q: f64) -> Vec<Verdict> {
        pred.objects
            .iter()
            .zip(&pred.scores)
            .map(|((o, p), &s)| self.calibrator.verdict(o, *p, s, q))
            .collect()
    }

    /// Learns `new_classes` from `train` (step `step` of a protocol), then calibrates them on
    /// `holdout` (good images never trained on).
    pub fn learn_step(
        &mut self,
        step: usize,
        new_classes: &[String],
        train: &StepData<'_>,
        holdout: Option<&StepData<'_>>,
        progress: &dyn Progress,
    ) -> Result<StepRecord> {
        self.check_changeable("learn")?;
        let n = train.check_training(step, new_classes)?;
        let new = self.register(new_classes)?;
        let start = Instant::now();
        let info = Step {
            index: step,
            new: &new,
            is_base: self.meta.learned.is_empty(),
            cfg: &self.cfg,
            strategy: self.strategy,
            progress,
        };
        let mut trained: Option<Trained> = None;
        for s in &mut self.scorers {
            if let Some(t) = s.learn(&info, train)? {
                trained = Some(t);
            }
        }
        let train_seconds = start.elapsed().as_secs_f64();
        self.prototypes = Some(Prototypes::add(
            self.prototypes.as_ref(),
            self.cfg.model.num_classes,
            &new,
            train.features,
            train.class_ids,
        )?);
        for (c, id) in &new {
            self.meta.learned.push(LearnedClass {
                class: c.clone(),
                step,
            });
            let count = |ids: &[u32]| ids.iter().filter(|&&i| i == *id).count() as u64;
            self.state.images.insert(
                c.clone(),
                ObjectImages {
                    train: count(train.class_ids),
                    holdout: holdout.map_or(0, |h| count(h.class_ids)),
                    cross_fitted: 0,
                },
            );
        }
        // Calibration is part of learning: f32 whatever the inference precision.
        iuf_bf16::scoped(None, || {
            self.calibrate(step, &new, train, holdout, progress)
        })?;
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

    /// Adds good images to the learned object `object` (a memory method's): its memory becomes a
    /// coreset of its old memory and the new images' patches (the tiled view's too), its
    /// Gaussian and prototype are updated exactly from their stored statistics, and its
    /// threshold is recalibrated from its old held-out scores (the sketch) pooled with the
    /// scores of `holdout`, the added images held out (scored by the updated model). Its map
    /// normalisation is kept: it is the unit the old held-out scores are in. No other object's
    /// memory, Gaussian, normalisation or threshold changes.
    ///
    /// `train` and `holdout` hold only `object`'s images (their class ids are not read).
    pub fn add_good(
        &mut self,
        object: &str,
        train: &StepData<'_>,
        holdout: Option<&StepData<'_>>,
    ) -> Result<GoodAdded> {
        let start = Instant::now();
        let id = self.check_add_good(object)?;
        let n = train.features.dim(0)?;
        if n == 0 {
            return Err(Error::Msg(format!("no good images to add to `{object}`")));
        }
        let before = self.threshold(object, self.cfg.calibration.quantile);
        let old = self.state.images[object];
        let cfg = self.cfg.clone();
        for s in &mut self.scorers {
            if s.knows(object) {
                s.add_good(object, &cfg, train)?;
            }
        }
        if let Some(p) = &self.prototypes {
            self.prototypes = Some(p.merge(id, old.train, train.features)?);
        }
        let mut held = 0;
        if let Some(h) = holdout {
            held = h.features.dim(0)? as u64;
            if held > 0 {
                iuf_bf16::scoped(None, || {
                    self.recalibrate(object, old.holdout + old.cross_fitted, h)
                })?;
            }
        }
        self.state.images.insert(
            object.to_string(),
            ObjectImages {
                train: old.train + n as u64,
                holdout: old.holdout + held,
                cross_fitted: old.cross_fitted,
            },
        );
        let record = GoodAdded {
            object: object.to_string(),
            train: n as u64,
            holdout: held,
            threshold_before: before,
            threshold_after: self.threshold(object, self.cfg.calibration.quantile),
            seconds: start.elapsed().as_secs_f64(),
            at: crate::calibrate::rfc3339_utc(std::time::SystemTime::now()),
        };
        self.state.good_added.push(record.clone());
        Ok(record)
    }

    /// Why good images cannot be added to `object`, if they cannot: an object not learned, a
    /// method with a network, a model written before the statistics were kept. Returns its
    /// class id.
    pub fn check_add_good(&self, object: &str) -> Result<u32> {
        self.check_changeable("add good images")?;
        if !self.meta.learned.iter().any(|l| l.class == object) {
            return Err(Error::Config(format!(
                "the model has not learned `{object}` (it knows {:?}); learn it first",
                self.learned_classes()
            )));
        }
        if self.has_network() || !self.strategy.uses_memory() {
            return Err(Error::Config(format!(
                "adding good images is for the memory methods (`memory`): a `{}` model's maps come \
                 from a trained network, which more good images would have to retrain; learn \
                 the object again instead",
                self.strategy
            )));
        }
        if !self.state.images.contains_key(object) {
            return Err(Error::Config(format!(
                "the model does not record how many images `{object}` was learned from (it was \
                 written before good images could be added): learn `{object}` again from all its \
                 good images to add images later"
            )));
        }
        for s in &self.scorers {
            if s.knows(object) {
                s.can_add_good(object)?;
            }
        }
        self.class_id(object)
            .ok_or_else(|| Error::Msg(format!("`{object}` has no class id")))
    }

    /// The good images each object's statistics and calibration come from (objects learned
    /// before the counts were kept are missing).
    pub fn object_images(&self) -> &BTreeMap<String, ObjectImages> {
        &self.state.images
    }

    /// Good images added to learned objects, in order.
    pub fn good_added(&self) -> &[GoodAdded] {
        &self.state.good_added
    }

    /// Sets `object`'s threshold by `rule`, recording `by` and the time; the verdicts of every
    /// caller use it from then on (in place of the quantile they ask for).
    pub fn set_threshold(
        &mut self,
        object: &str,
        rule: ThresholdRule,
        by: &str,
    ) -> Result<ThresholdSetting> {
        if !self.meta.learned.iter().any(|l| l.class == object) {
            return Err(Error::Config(format!(
                "the model has not learned `{object}` (it knows {:?})",
                self.learned_classes()
            )));
        }
        let at = crate::calibrate::rfc3339_utc(std::time::SystemTime::now());
        let setting = self
            .calibrator
            .set_threshold(object, rule, at, by.to_string())?;
        self.meta
            .thresholds
            .insert(object.to_string(), setting.value);
        Ok(setting)
    }

    /// The new threshold of `object` from its old sketch (of `n_old` held-out images) and the
    /// scores of `holdout` (its added images held out), as inspection scores them.
    fn recalibrate(&mut self, object: &str, n_old: u64, holdout: &StepData<'_>) -> Result<()> {
        let n = holdout.features.dim(0)?;
        let as_object = vec![object.to_string(); n];
        let maps = self.scorer_maps(holdout, Some(&as_object))?;
        if self.calibrator.norms(object).is_none() {
            // Learned without held-out images: the added ones give the normalisation.
            let named: Vec<(&str, &Tensor)> = maps.iter().map(|(s, _, m)| (*s, m)).collect();
            self.calibrator.fit_norms(object, &named)?;
        }
        let recognised = match self.object_probs(holdout.features)? {
            Some(p) => prototypes::recognised(&p, &self.meta.class_names)?,
            None => as_object.clone(),
        };
        let rescore = |rows: &Tensor| -> Result<Vec<f32>> {
            let theirs = holdout.select(rows)?;
            Ok(self
                .predict_in_scope(&theirs.view(), None, &NoProgress)?
                .scores)
        };
        let scores = self
            .calibrator
            .holdout_scores(object, &maps, &recognised, rescore)?;
        let q = self.cfg.calibration.quantile;
        if let Some(t) = self.calibrator.merge_scores(object, n_old, &scores, q) {
            let t = self.calibrator.threshold(object, q).unwrap_or(t);
            self.meta.thresholds.insert(object.to_string(), t);
        }
        Ok(())
    }

    /// Checks that `new_classes` are new and gives each a class id (a new object takes the next
    /// free slot of the K the model was created with).
    fn register(&mut self, new_classes: &[String]) -> Result<Vec<(String, u32)>> {
        let mut new = Vec::new();
        for c in new_classes {
            if self.meta.learned.iter().any(|l| &l.class == c) {
                return Err(Error::Config(format!(
                    "the model has already learned `{c}`; an object is learned once"
                )));
            }
            if self.class_id(c).is_none() {
                if self.meta.class_names.len() >= self.cfg.model.num_classes {
                    return Err(Error::Config(format!(
                        "cannot learn `{c}`: the model was created for at most K = {} objects and knows {:?}",
                        self.cfg.model.num_classes, self.meta.class_names
                    )));
                }
                self.meta.class_names.push(c.clone());
            }
            new.push((c.clone(), self.class_id(c).expect("registered")));
        }
        Ok(new)
    }

    /// Per new object, from its good images never trained on: the normalisation of each
    /// scorer's map (methods that fuse) and the threshold.
    ///
    /// The held-out images are mapped by every scorer once, as the object they belong to; an
    /// image that inspection would take for another object (the prototypes disagree) is scored
    /// again as that object, so the threshold sees what inspection will see. Their maps give the
    /// normalisation. With `calibration.folds` K >= 2 (methods without a network), every
    /// training image is scored too, by the method learned again without it (K-fold cross-fitting,
    /// [`Self::cross_fitted_scores`]): the threshold is then read from held-out and training
    /// images together, a quantile of hundreds of scores instead of the maximum of a few dozen.
    fn calibrate(
        &mut self,
        step: usize,
        new: &[(String, u32)],
        train: &StepData<'_>,
        holdout: Option<&StepData<'_>>,
        progress: &dyn Progress,
    ) -> Result<()> {
        let folds = self.cross_fitting_folds();
        let held_images = match holdout {
            Some(h) => h.features.dim(0)?,
            None => 0,
        };
        if holdout.is_none() && folds == 0 {
            return Ok(());
        }
        if held_images == 0 && folds == 0 {
            if self.calibrator.normalises() {
                tracing::warn!(
                    "no held-out good images for {}: maps are not normalised and no threshold is set",
                    new.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>().join(", ")
                );
            }
            return Ok(());
        }
        // Every scorer maps each object's held-out images once, as that object; the maps give
        // the normalisations of all new objects first, then (fused) the thresholds.
        let mut held = Vec::new();
        for (c, id) in new {
            let Some(h) = holdout else { continue };
            let rows = Step::rows(*id, h.class_ids, h.features.device())?;
            if rows.dim(0)? == 0 {
                continue;
            }
            let mine = h.select(&rows)?;
            let as_c = vec![c.clone(); rows.dim(0)?];
            let maps = self.scorer_maps(&mine.view(), Some(&as_c))?;
            let named: Vec<(&str, &Tensor)> = maps.iter().map(|(s, _, m)| (*s, m)).collect();
            self.calibrator.fit_norms(c, &named)?;
            held.push((c, mine, maps));
        }
        let mut scores: BTreeMap<&str, Vec<f32>> = BTreeMap::new();
        for (c, mine, maps) in held {
            let recognised = match self.object_probs(&mine.align)? {
                Some(p) => prototypes::recognised(&p, &self.meta.class_names)?,
                None => vec![c.clone(); mine.align.dim(0)?],
            };
            let rescore = |rows: &Tensor| -> Result<Vec<f32>> {
                let theirs = mine.view().select(rows)?;
                Ok(self
                    .predict_in_scope(&theirs.view(), None, &NoProgress)?
                    .scores)
            };
            let s = self
                .calibrator
                .holdout_scores(c, &maps, &recognised, rescore)?;
            scores.insert(c, s);
        }
        for (c, id) in new {
            let crossed = if folds >= 2 {
                self.cross_fitted_scores(step, (c, *id), train, folds, progress)?
            } else {
                Vec::new()
            };
            if let Some(images) = self.state.images.get_mut(c) {
                images.cross_fitted = crossed.len() as u64;
            }
            let mine = scores.entry(c).or_default();
            mine.extend(crossed);
            if mine.is_empty() {
                if self.calibrator.normalises() {
                    tracing::warn!(
                        "no held-out good images for {c} and too few to cross-fit: its maps are \
                         not normalised and no threshold is set"
                    );
                }
                continue;
            }
            let q = self.cfg.calibration.quantile;
            if let Some(t) = self.calibrator.fit_scores(c, std::mem::take(mine), q) {
                self.meta.thresholds.insert(c.clone(), t);
            }
        }
        Ok(())
    }

    /// The K-fold cross-fitting folds of calibration: `calibration.folds` for methods without a
    /// network (a fold learns the object's memory and Gaussian again, seconds), 0 (held-out
    /// images only) for those with one (a fold would train the network again).
    fn cross_fitting_folds(&self) -> usize {
        match self.cfg.calibration.folds {
            k if k >= 2 && !self.has_network() && !self.strategy.trains_network() => k,
            _ => 0,
        }
    }

    /// The scores of the training images of `object` (class id `id`), each by the method learned
    /// without it: the images are dealt into `folds` folds (image i into fold i mod K); for each
    /// fold, fresh scorers learn the object from the other folds' images and map this fold's,
    /// which the calibrator fuses with the object's normalisation and scores. An object with
    /// fewer than 2 K training images gets none (too few to leave a fifth out). When the object
    /// has no normalisation yet (no held-out images), the first fold's first maps give it.
    fn cross_fitted_scores(
        &mut self,
        step: usize,
        (object, id): (&String, u32),
        train: &StepData<'_>,
        folds: usize,
        progress: &dyn Progress,
    ) -> Result<Vec<f32>> {
        let device = train.features.device().clone();
        let rows: Vec<u32> = (0..train.class_ids.len() as u32)
            .filter(|&i| train.class_ids[i as usize] == id)
            .collect();
        let n = rows.len();
        if n < 2 * folds {
            tracing::info!(
                class = %object,
                images = n,
                "too few training images to cross-fit the threshold ({} needed): held-out images only",
                2 * folds
            );
            return Ok(Vec::new());
        }
        let started = Instant::now();
        progress.start(
            &format!("calibrating {object} ({folds} folds)"),
            folds as u64,
        );
        let one = [(object.clone(), id)];
        let mut out = Vec::with_capacity(n);
        for k in 0..folds {
            // Image i of the object goes to fold i mod K: learned from by the other folds.
            let (mut fit, mut score) = (Vec::new(), Vec::new());
            for (i, &r) in rows.iter().enumerate() {
                if i % folds == k {
                    score.push(r);
                } else {
                    fit.push(r);
                }
            }
            let pick = |v: &[u32]| -> Result<Tensor> {
                Ok(Tensor::from_vec(v.to_vec(), v.len(), &device)?)
            };
            let fit_x = train.select(&pick(&fit)?)?;
            let ids = vec![id; fit.len()];
            let mut scorers = scorer::scorers(self.strategy, &self.cfg, &device, None)?;
            let info = Step {
                index: step,
                new: &one,
                is_base: true,
                cfg: &self.cfg,
                strategy: self.strategy,
                progress: &NoProgress,
            };
            for s in &mut scorers {
                s.learn(&info, &fit_x.with_ids(&ids))?;
            }
            drop(fit_x);
            let score_x = train.select(&pick(&score)?)?;
            let score_x = score_x.view();
            let total = score.len();
            for start in (0..total).step_by(EVAL_BATCH) {
                let len = EVAL_BATCH.min(total - start);
                let part = score_x.narrow(start, len)?;
                let as_object = vec![object.clone(); len];
                let maps: Vec<(&'static str, f64, Tensor)> = self
                    .outputs_of(&scorers, &part.view(), Some(&as_object))?
                    .into_iter()
                    .map(|(s, w, m)| (s, w, m.maps))
                    .collect();
                if self.calibrator.norms(object).is_none() {
                    let named: Vec<(&str, &Tensor)> =
                        maps.iter().map(|(s, _, m)| (*s, m)).collect();
                    self.calibrator.fit_norms(object, &named)?;
                }
                let fused = self.calibrator.fuse(&as_object, &maps)?;
                out.extend(self.calibrator.scores(&fused)?);
            }
            progress.inc(1);
        }
        progress.finish();
        tracing::info!(
            class = %object,
            images = n,
            folds,
            seconds = started.elapsed().as_secs_f64(),
            "threshold cross-fitted"
        );
        Ok(out)
    }

    /// Every scorer's maps of `x` (those that know every image's object), with its name and
    /// fusion weight, in the method's order; each image scored as `objects[i]`.
    fn scorer_maps(
        &self,
        x: &StepData<'_>,
        objects: Option<&[String]>,
    ) -> Result<Vec<(&'static str, f64, Tensor)>> {
        Ok(self
            .scorer_outputs(x, objects)?
            .into_iter()
            .map(|(s, w, m)| (s, w, m.maps))
            .collect())
    }

    fn scorer_outputs(
        &self,
        x: &StepData<'_>,
        objects: Option<&[String]>,
    ) -> Result<Vec<(&'static str, f64, scorer::Maps)>> {
        self.outputs_of(&self.scorers, x, objects)
    }

    /// [`Self::scorer_outputs`] of another list of this method's scorers (the cross-fitting
    /// folds').
    fn outputs_of(
        &self,
        scorers: &[Box<dyn Scorer>],
        x: &StepData<'_>,
        objects: Option<&[String]>,
    ) -> Result<Vec<(&'static str, f64, scorer::Maps)>> {
        let (_, _, gh, gw) = x.features.dims4()?;
        let whole = (gh * iuf_model::MAP_STRIDE, gw * iuf_model::MAP_STRIDE);
        let fused = match &self.cfg.tiles {
            Some(_) => (self.map_size(), self.map_size()),
            None => whole,
        };
        let mut out = Vec::new();
        for s in scorers {
            // A scorer joins only when it knows every image's object (a model file may hold
            // objects learned before it had this scorer).
            if let Some(objects) = objects {
                if !objects.iter().all(|o| s.knows(o)) {
                    continue;
                }
            }
            let mut maps = s.maps(&scorer::Batch {
                cfg: &self.cfg,
                images: x,
                objects,
                size: if s.tiled() { fused } else { whole },
            })?;
            if !s.tiled() && fused != whole {
                // The whole view's map, smoothed at its own scale, brought to the fused size.
                maps.maps = maps
                    .maps
                    .unsqueeze(1)?
                    .upsample_bilinear2d(fused.0, fused.1, true)?
                    .squeeze(1)?;
            }
            out.push((s.name(), s.weight(&self.cfg), maps));
        }
        Ok(out)
    }

    /// `[n, K]` object probabilities from the prototypes over the learned objects (None when
    /// the model has none).
    fn object_probs(&self, features: &Tensor) -> Result<Option<Tensor>> {
        let Some(p) = &self.prototypes else {
            return Ok(None);
        };
        let ids: Vec<usize> = self.learned_ids().into_iter().map(|(_, i)| i).collect();
        p.probs(features, &ids)
    }

    /// The learned objects with their class ids, in learning order.
    fn learned_ids(&self) -> Vec<(String, usize)> {
        self.meta
            .learned
            .iter()
            .filter_map(|l| Some((l.class.clone(), self.class_id(&l.class)? as usize)))
            .collect()
    }

    /// Anomaly maps at the input image size, image scores and class probabilities of `features`
    /// (`[N, C, g, g]`, unstandardised). Evaluation mode, batched. For models with a memory use
    /// [`Learner::predict_images`].
    pub fn predict(&self, features: &Tensor) -> Result<Predictions> {
        self.predict_images(features, None, &NoProgress)
    }

    /// Maps, scores and object probabilities of images given by their `feature_align`
    /// `[N, C, g, g]` and, for methods that read them, their memory features `[N, C_m, 2g, 2g]`.
    ///
    /// Each image's object is recognised by the prototypes; per-object scorers score it against
    /// that object, and the calibrator fuses the scorers' maps with that object's statistics.
    /// Reports finished images to `progress`.
    pub fn predict_images(
        &self,
        features: &Tensor,
        memory: Option<&Tensor>,
        progress: &dyn Progress,
    ) -> Result<Predictions> {
        self.predict_images_as(features, memory, None, progress)
    }

    /// [`Learner::predict_images`] with every image's object given (`Some`) instead of
    /// recognised: its scorers' statistics and normalisation are used whatever the image shows.
    pub fn predict_images_as(
        &self,
        features: &Tensor,
        memory: Option<&Tensor>,
        object: Option<&str>,
        progress: &dyn Progress,
    ) -> Result<Predictions> {
        let x = ImageFeatures {
            align: features.clone(),
            memory: memory.cloned(),
            tiles: None,
        };
        self.predict_features(&x, object, progress)
    }

    /// Maps, scores and object probabilities of images given by their features in every view
    /// the model reads (`feature_align`; the whole view's memory features for methods with a
    /// memory; the tiles' for models with a tiled view), each judged as `object` when given,
    /// else as the object the prototypes recognise. Reports finished images to `progress`.
    pub fn predict_features(
        &self,
        x: &ImageFeatures,
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
        let x = StepData::to_score(x, self.features(), self.tiling().is_some(), self.strategy)?;
        let cpu = self.cfg.precision.resolve()?;
        iuf_bf16::scoped(cpu, || self.predict_in_scope(&x, object, progress))
    }

    /// [`Learner::predict_images_as`] in the precision of the caller's `iuf_bf16` scope.
    fn predict_in_scope(
        &self,
        x: &StepData<'_>,
        object: Option<&str>,
        progress: &dyn Progress,
    ) -> Result<Predictions> {
        let n = x.features.dim(0)?;
        let (_, _, gh, gw) = x.features.dims4()?;
        let (h, w) = match &self.cfg.tiles {
            Some(_) => (self.map_size(), self.map_size()),
            None => (gh * iuf_model::MAP_STRIDE, gw * iuf_model::MAP_STRIDE),
        };
        let k = self.cfg.model.num_classes;
        let (mut maps, mut scores, mut objects) = (Vec::new(), Vec::with_capacity(n), Vec::new());
        let (mut class_probs, mut object_probs) = (Vec::new(), Vec::new());
        for start in (0..n).step_by(EVAL_BATCH) {
            let len = EVAL_BATCH.min(n - start);
            let batch = x.narrow(start, len)?;
            let probs = self.object_probs(&batch.align)?;
            let names = match (object, &probs) {
                (Some(o), _) => Some(vec![o.to_string(); len]),
                (None, Some(p)) => Some(prototypes::recognised(p, &self.meta.class_names)?),
                (None, None) => None,
            };
            if names.is_none() && self.calibrator.normalises() {
                return Err(Error::Msg(
                    "the model has not learned any object yet".into(),
                ));
            }
            let outputs = self.scorer_outputs(&batch.view(), names.as_deref())?;
            let discriminator = outputs.iter().find_map(|(_, _, m)| m.class_probs.clone());
            let parts: Vec<(&str, f64, Tensor)> = outputs
                .into_iter()
                .map(|(s, wgt, m)| (s, wgt, m.maps))
                .collect();
            let fused = self
                .calibrator
                .fuse(names.as_deref().unwrap_or(&[]), &parts)?;
            scores.extend(self.calibrator.scores(&fused)?);
            maps.push(fused.detach().to_device(&Device::Cpu)?);
            let probs = match (probs, &discriminator) {
                (Some(p), _) => p,
                (None, Some(d)) => d.clone(),
                (None, None) => Tensor::zeros((len, k), DType::F32, &Device::Cpu)?,
            };
            objects.extend(prototypes::judged_as(&probs, &self.learned_ids(), object)?);
            class_probs.push(discriminator.unwrap_or_else(|| probs.clone()));
            object_probs.push(probs);
            progress.inc(len as u64);
        }
        if n == 0 {
            let none = Tensor::zeros((0, k), DType::F32, &Device::Cpu)?;
            return Ok(Predictions {
                maps: Tensor::zeros((0, h, w), DType::F32, &Device::Cpu)?,
                scores,
                class_probs: none.clone(),
                object_probs: none,
                objects,
            });
        }
        Ok(Predictions {
            maps: Tensor::cat(&maps, 0)?,
            scores,
            class_probs: Tensor::cat(&class_probs, 0)?,
            object_probs: Tensor::cat(&object_probs, 0)?,
            objects,
        })
    }
}
