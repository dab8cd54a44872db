//! The learner: a model plus everything it needs to keep learning new objects (Gram matrices, penalty
//! importance, feature standardisation, calibration), one training step at a time.
//!
//! Base step (section 5): AdamW, step LR schedule, global gradient-norm clip, loss
//! L_rec + lambda_ce L_ce + lambda_sc L_sc (4.3). Incremental steps of the IUF family: the same losses,
//! plain SGD with the 4.6 projection and the 4.5 pull. Baselines: AdamW every step, plus their penalty.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};
use iuf_model::{IufModel, LearnedClass, Mode, ModelMeta};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::config::{IncrementalOptimizer, Penalty, Strategy, TrainConfig};
use crate::error::{Error, Result};
use crate::feature_store::BackboneId;
use crate::optim::{clip_grad_norm, step_lr, ConstrainedSgd, ConstrainedSgdConfig};
use crate::penalty::{GradAccumulator, GradStat, Importance, PathIntegral};
use crate::progress::Progress;
use crate::projection::{GradientProjector, Gram};
use crate::scl::SclBuffer;
use crate::seeded_init::seeded_var_builder;

const GRAM_PREFIX: &str = "state.gram.";
const MEAN_KEY: &str = "state.standardize.mean";
const STD_KEY: &str = "state.standardize.std";
const PROTO_MEAN_KEY: &str = "state.prototype.mean";
const PROTO_SPREAD_KEY: &str = "state.prototype.spread";
/// Images per forward pass when evaluating or accumulating statistics.
const EVAL_BATCH: usize = 16;

/// The training images of one step: `feature_align` and class ids (indices into the class list).
pub struct StepData<'a> {
    /// `[N, C, g, g]`, unstandardised, on the learner's device.
    pub features: &'a Tensor,
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
pub struct Learner {
    cfg: TrainConfig,
    strategy: Strategy,
    device: Device,
    varmap: VarMap,
    model: IufModel,
    meta: ModelMeta,
    state: LearnerState,
    grams: Vec<Gram>,
    importance: Importance,
    standardize: Option<(Tensor, Tensor)>,
    /// Per object slot: the mean token-mean backbone feature of its training images `[K, C]` and
    /// their mean squared distance to it `[K]` (0 for slots not learned). Fixed size.
    prototypes: Option<(Tensor, Tensor)>,
}

fn linear_quantile(sorted: &[f32], q: f64) -> Option<f32> {
    if sorted.is_empty() {
        return None;
    }
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let t = (pos - lo as f64) as f32;
    Some(sorted[lo] * (1.0 - t) + sorted[hi] * t)
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
        let model = IufModel::new(&cfg.model, seeded_var_builder(&varmap, cfg.seed, device))?;
        let d = cfg.model.transformer.hidden_dim;
        let grams = model
            .constrained_layers()
            .iter()
            .map(|_| Gram::zeros(d))
            .collect();
        let mut meta = ModelMeta::new(cfg.model.clone(), backbone.name.clone(), class_names);
        meta.extra = serde_json::json!({});
        let state = LearnerState {
            strategy,
            train_config: cfg.clone(),
            steps: vec![],
            calibration: BTreeMap::new(),
            gram_counts: vec![],
            backbone_weights: Some(backbone.weights_digest.clone()),
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
            prototypes: None,
        })
    }

    /// Loads a model file written by [`Learner::save`].
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let loaded = iuf_model::load_model(path, device)?;
        let state: LearnerState =
            serde_json::from_value(loaded.meta.extra.clone()).map_err(|e| Error::RunDir {
                path: path.to_path_buf(),
                msg: format!(
                    "not a model written by the iuf learner (metadata `extra` does not parse: {e})"
                ),
            })?;
        let model = loaded.model()?;
        let find = |name: &str| {
            loaded
                .state
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.clone())
        };
        let layers = model.constrained_layers();
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
            prototypes: match (find(PROTO_MEAN_KEY), find(PROTO_SPREAD_KEY)) {
                (Some(m), Some(s)) => Some((m, s)),
                _ => None,
            },
        })
    }

    /// Writes the model file (atomically).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut state_tensors = Vec::new();
        for (layer, g) in self.model.constrained_layers().iter().zip(&self.grams) {
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

    /// Trainable parameters in name order.
    fn params(&self) -> Vec<(String, Var)> {
        let data = self.varmap.data().lock().expect("VarMap lock poisoned");
        let mut v: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn standardized(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match &self.standardize {
            Some((m, s)) => x.broadcast_sub(m)?.broadcast_div(s)?,
            None => x.clone(),
        })
    }

    fn fit_standardization(&mut self, features: &Tensor) -> Result<()> {
        let c = features.dim(1)?;
        let flat = features
            .transpose(0, 1)?
            .reshape((c, ()))?
            .to_dtype(DType::F64)?;
        let mean = flat.mean_keepdim(1)?;
        let var = flat.broadcast_sub(&mean)?.sqr()?.mean_keepdim(1)?;
        let std = (var.sqrt()? + 1e-6)?;
        self.standardize = Some((
            mean.to_dtype(DType::F32)?.reshape((1, c, 1, 1))?,
            std.to_dtype(DType::F32)?.reshape((1, c, 1, 1))?,
        ));
        Ok(())
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
        let is_base = self.meta.learned.is_empty();
        if is_base && self.cfg.standardize_features {
            self.fit_standardization(train.features)?;
        }
        let params = self.params();
        let vars: Vec<Var> = params.iter().map(|(_, v)| v.clone()).collect();
        let incremental_iuf = !is_base && self.strategy.is_iuf();
        let (epochs, mut opt, opt_name) = if incremental_iuf {
            let pull = if self.strategy.uses_update() {
                self.cfg.incremental.pull_alpha
            } else {
                0.0
            };
            let mut sgd = ConstrainedSgd::new(
                vars.clone(),
                ConstrainedSgdConfig {
                    lr: self.cfg.incremental.lr,
                    pull_alpha: pull,
                    momentum: self.cfg.incremental.momentum,
                    adam: match self.cfg.incremental.optimizer {
                        IncrementalOptimizer::Sgd => None,
                        IncrementalOptimizer::Adam => {
                            Some((self.cfg.base.betas[0], self.cfg.base.betas[1]))
                        }
                    },
                },
            )?;
            if self.strategy.uses_update() {
                for (layer, gram) in self.model.constrained_layers().iter().zip(&self.grams) {
                    if let Some(p) = GradientProjector::from_gram(gram, &self.device)? {
                        for suffix in ["weight", "bias"] {
                            let name = format!("{layer}.{suffix}");
                            let var = params.iter().find(|(n, _)| *n == name).map(|(_, v)| v).ok_or_else(|| {
                                Error::Msg(format!("constrained layer parameter `{name}` not found in the model"))
                            })?;
                            sgd.set_projector(var, p.clone());
                        }
                    }
                }
            }
            (
                self.cfg.incremental.epochs,
                StepOptimizer::Sgd(sgd),
                match self.cfg.incremental.optimizer {
                    IncrementalOptimizer::Sgd => "constrained-sgd",
                    IncrementalOptimizer::Adam => "constrained-adam",
                },
            )
        } else {
            let b = &self.cfg.base;
            let adam = AdamW::new(
                vars.clone(),
                ParamsAdamW {
                    lr: b.lr,
                    beta1: b.betas[0],
                    beta2: b.betas[1],
                    eps: 1e-8,
                    weight_decay: b.weight_decay,
                },
            )?;
            let epochs = if is_base {
                b.epochs
            } else {
                self.cfg.finetune_epochs
            };
            (epochs, StepOptimizer::AdamW(adam), "adamw")
        };
        let penalty = self.strategy.penalty();
        let penalty_lambda = match penalty {
            Some(Penalty::Ewc) => self.cfg.penalty.ewc_lambda,
            Some(Penalty::Mas) => self.cfg.penalty.mas_lambda,
            Some(Penalty::Si) => self.cfg.penalty.si_c,
            None => 0.0,
        };
        let mut path_integral = match penalty {
            Some(Penalty::Si) => Some(PathIntegral::begin_step(&params)?),
            _ => None,
        };
        let mut rng = StdRng::seed_from_u64(
            self.cfg.seed ^ (0x9E37_79B9_7F4A_7C15u64.wrapping_mul(step as u64 + 1)),
        );
        let mut scl = SclBuffer::default();
        let bs = self.cfg.batch_size.min(n);
        let batches_per_epoch = n.div_ceil(bs);
        progress.start(
            &format!("step {step}: training {}", new_classes.join(",")),
            (epochs * batches_per_epoch) as u64,
        );
        let mut last = LossLog::default();
        for epoch in 0..epochs {
            let order = iuf_data::batch::shuffled_batches(
                n,
                bs,
                self.cfg
                    .seed
                    .wrapping_add((step as u64) << 32)
                    .wrapping_add(epoch as u64),
            );
            let mut sum = LossLog::default();
            for (bi, idx) in order.iter().enumerate() {
                if let StepOptimizer::AdamW(a) = &mut opt {
                    let b = &self.cfg.base;
                    let base_lr = b.lr;
                    a.set_learning_rate(step_lr(
                        base_lr,
                        epoch,
                        bi as f64 / batches_per_epoch as f64,
                        b.warmup_epochs,
                        b.lr_step_epochs,
                        b.lr_gamma,
                    ));
                }
                let idx_t = Tensor::from_vec(
                    idx.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                    idx.len(),
                    &self.device,
                )?;
                let x = self.standardized(&train.features.index_select(&idx_t, 0)?)?;
                let labels: Vec<u32> = idx.iter().map(|&i| train.class_ids[i]).collect();
                let labels = Tensor::from_vec(labels, idx.len(), &self.device)?;
                let out = self.model.forward(&x, &mut Mode::Train(&mut rng))?;
                let rec = (&out.feature_rec - &x)?.sqr()?.mean_all()?;
                let ce = candle_nn::loss::cross_entropy(&out.logits, &labels)?;
                let mut loss = (&rec + (&ce * self.cfg.loss.ce)?)?;
                let mut log = LossLog {
                    rec: rec.to_scalar::<f32>()? as f64,
                    ce: ce.to_scalar::<f32>()? as f64,
                    ..Default::default()
                };
                if self.cfg.loss.sc > 0.0 {
                    let sc = scl.loss(&out.intermediate, &self.cfg.scl)?;
                    log.sc = sc.to_scalar::<f32>()? as f64;
                    loss = (loss + (sc * self.cfg.loss.sc)?)?;
                }
                if penalty.is_some() {
                    if let Some(p) = self.importance.penalty(&params, penalty_lambda)? {
                        log.penalty = p.to_scalar::<f32>()? as f64;
                        loss = (loss + p)?;
                    }
                }
                log.total = loss.to_scalar::<f32>()? as f64;
                if !log.total.is_finite() {
                    return Err(Error::Msg(format!(
                        "step {step}, epoch {epoch}: the loss diverged ({:?}); lower the learning rate",
                        log
                    )));
                }
                let mut grads = loss.backward()?;
                clip_grad_norm(&mut grads, &vars, self.cfg.clip_grad_norm)?;
                if let Some(pi) = &mut path_integral {
                    pi.before_update(&params)?;
                }
                match &mut opt {
                    StepOptimizer::AdamW(a) => a.step(&grads)?,
                    StepOptimizer::Sgd(s) => s.step(&grads)?,
                }
                if let Some(pi) = &mut path_integral {
                    pi.after_update(&grads, &params)?;
                }
                sum.total += log.total;
                sum.rec += log.rec;
                sum.ce += log.ce;
                sum.sc += log.sc;
                sum.penalty += log.penalty;
                progress.inc(1);
            }
            let k = order.len().max(1) as f64;
            last = LossLog {
                total: sum.total / k,
                rec: sum.rec / k,
                ce: sum.ce / k,
                sc: sum.sc / k,
                penalty: sum.penalty / k,
            };
            progress.message(&format!(
                "epoch {}/{epochs} loss {:.4} (rec {:.4} ce {:.3} sc {:.4})",
                epoch + 1,
                last.total,
                last.rec,
                last.ce,
                last.sc
            ));
            tracing::info!(
                step,
                epoch,
                total = last.total,
                rec = last.rec,
                ce = last.ce,
                sc = last.sc,
                penalty = last.penalty,
                "epoch done"
            );
        }
        progress.finish();
        let train_seconds = start.elapsed().as_secs_f64();

        // End of step: statistics the next step needs (computed on this step's images only).
        if self.strategy.uses_update() {
            self.accumulate_grams(train.features)?;
        }
        match penalty {
            Some(Penalty::Si) => {
                let omega = path_integral
                    .take()
                    .expect("SI tracks its path")
                    .finish(&params, self.cfg.penalty.si_xi)?;
                self.importance.add_step(omega, &params)?;
            }
            Some(p @ (Penalty::Ewc | Penalty::Mas)) => {
                let omega = self.importance_estimate(train.features, p, &params)?;
                self.importance.add_step(omega, &params)?;
            }
            None => {}
        }
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
            epochs,
            optimizer: opt_name.to_string(),
            final_loss: last,
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
        if learned.is_empty() || s <= 0.0 {
            return Ok(None);
        }
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

    fn accumulate_grams(&mut self, features: &Tensor) -> Result<()> {
        let n = features.dim(0)?;
        for start in (0..n).step_by(EVAL_BATCH) {
            let len = EVAL_BATCH.min(n - start);
            let x = self.standardized(&features.narrow(0, start, len)?)?;
            let out = self.model.forward(&x, &mut Mode::Eval)?;
            for (g, f) in self.grams.iter_mut().zip(&out.ffn_outputs) {
                g.accumulate(&f.mean(1)?.detach())?;
            }
        }
        Ok(())
    }

    fn importance_estimate(
        &self,
        features: &Tensor,
        p: Penalty,
        params: &[(String, Var)],
    ) -> Result<BTreeMap<String, Tensor>> {
        let n = features.dim(0)?;
        let mut acc = GradAccumulator::default();
        let limit = match self.cfg.penalty.importance_batches {
            0 => usize::MAX,
            k => k,
        };
        for start in (0..n).step_by(EVAL_BATCH).take(limit) {
            let len = EVAL_BATCH.min(n - start);
            let x = self.standardized(&features.narrow(0, start, len)?)?;
            let out = self.model.forward(&x, &mut Mode::Eval)?;
            let (objective, stat) = match p {
                Penalty::Ewc => (
                    (&out.feature_rec - &x)?.sqr()?.mean_all()?,
                    GradStat::Square,
                ),
                // MAS: sensitivity of the squared L2 norm of the output.
                _ => (
                    out.feature_rec.sqr()?.sum(D::Minus1)?.mean_all()?,
                    GradStat::Abs,
                ),
            };
            acc.add(&objective.backward()?, params, stat)?;
        }
        acc.finish()
    }

    fn calibrate(&mut self, classes: &[String], holdout: &StepData<'_>) -> Result<()> {
        if holdout.features.dim(0)? == 0 {
            return Ok(());
        }
        let pred = self.predict(holdout.features)?;
        for c in classes {
            let id = self.class_id(c).expect("checked in learn_step");
            let mut scores: Vec<f32> = holdout
                .class_ids
                .iter()
                .zip(&pred.scores)
                .filter(|(&k, _)| k == id)
                .map(|(_, &s)| s)
                .collect();
            scores.sort_by(f32::total_cmp);
            // A fixed-size sketch (101 quantiles), so the file does not grow with hold-out images.
            let scores: Vec<f32> = if scores.is_empty() {
                scores
            } else {
                (0..=100)
                    .filter_map(|i| linear_quantile(&scores, i as f64 / 100.0))
                    .collect()
            };
            if let Some(t) = linear_quantile(&scores, self.cfg.calibration.quantile) {
                self.meta.thresholds.insert(c.clone(), t);
            }
            self.state.calibration.insert(c.clone(), scores);
        }
        Ok(())
    }

    /// Anomaly maps at the input image size, image scores and class probabilities of `features`
    /// (`[N, C, g, g]`, unstandardised). Evaluation mode, batched.
    pub fn predict(&self, features: &Tensor) -> Result<Predictions> {
        self.predict_with(features, &crate::progress::NoProgress)
    }

    /// [`Learner::predict`], reporting each finished image to `progress` (`inc` only: the caller
    /// starts and finishes the phase).
    pub fn predict_with(&self, features: &Tensor, progress: &dyn Progress) -> Result<Predictions> {
        let n = features.dim(0)?;
        let (_, _, gh, gw) = features.dims4()?;
        let (h, w) = (gh * iuf_model::MAP_STRIDE, gw * iuf_model::MAP_STRIDE);
        let mut maps = Vec::new();
        let mut scores = Vec::with_capacity(n);
        let mut probs = Vec::new();
        for start in (0..n).step_by(EVAL_BATCH) {
            let len = EVAL_BATCH.min(n - start);
            let x = self.standardized(&features.narrow(0, start, len)?)?;
            let out = self.model.forward(&x, &mut Mode::Eval)?;
            let map = iuf_model::anomaly_map(&out.pred, (h, w))?;
            scores.extend(
                iuf_model::image_scores(&map, iuf_model::SCORE_POOL)?
                    .to_dtype(DType::F32)?
                    .to_vec1::<f32>()?,
            );
            // Detached: a kept map must not keep its batch's whole forward graph (every activation)
            // alive through the op history that links it to the parameters.
            maps.push(map.reshape((len, h, w))?.detach().to_device(&Device::Cpu)?);
            probs.push(
                candle_nn::ops::softmax_last_dim(&out.logits)?
                    .detach()
                    .to_device(&Device::Cpu)?,
            );
            progress.inc(len as u64);
        }
        if n == 0 {
            let none = Tensor::zeros((0, self.cfg.model.num_classes), DType::F32, &Device::Cpu)?;
            return Ok(Predictions {
                maps: Tensor::zeros((0, h, w), DType::F32, &Device::Cpu)?,
                scores,
                class_probs: none.clone(),
                object_probs: none,
            });
        }
        let class_probs = Tensor::cat(&probs, 0)?;
        Ok(Predictions {
            maps: Tensor::cat(&maps, 0)?,
            scores,
            object_probs: self
                .prototype_probs(features)?
                .unwrap_or_else(|| class_probs.clone()),
            class_probs,
        })
    }
}

enum StepOptimizer {
    AdamW(AdamW),
    Sgd(ConstrainedSgd),
}

#[cfg(test)]
mod tests {
    use super::linear_quantile;

    #[test]
    fn quantile_interpolates() {
        assert_eq!(linear_quantile(&[], 0.5), None);
        assert_eq!(linear_quantile(&[1.0, 3.0], 0.5), Some(2.0));
        assert_eq!(linear_quantile(&[1.0, 3.0, 7.0], 1.0), Some(7.0));
    }
}
