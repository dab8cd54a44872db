//! The reconstruction trainer: one step of training the transformer (section 5) with the update
//! rule of the method (IUF's constrained SGD with the 4.5 pull and 4.6 projection, AdamW, and the
//! EWC / MAS / SI penalties), and the statistics the next step needs (Gram matrices, importance).

use std::collections::BTreeMap;

use candle_core::{DType, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use iuf_model::{IufModel, Mode};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::config::{IncrementalOptimizer, Penalty};
use crate::error::{Error, Result};
use crate::learner::{Learner, LossLog, StepData, EVAL_BATCH};
use crate::optim::{clip_grad_norm, step_lr, ConstrainedSgd, ConstrainedSgdConfig};
use crate::penalty::{GradAccumulator, GradStat, PathIntegral};
use crate::progress::Progress;
use crate::projection::GradientProjector;
use crate::scl::SclBuffer;

/// What one step of reconstruction training did.
pub(crate) struct TrainedStep {
    pub(crate) epochs: usize,
    pub(crate) optimizer: &'static str,
    pub(crate) last: LossLog,
}

impl Learner {
    fn network(&self) -> Result<&IufModel> {
        self.model
            .as_ref()
            .ok_or_else(|| Error::Msg(format!("`{}` has no reconstruction network", self.strategy)))
    }

    /// Trainable parameters in name order.
    fn params(&self) -> Vec<(String, Var)> {
        let data = self.varmap.data().lock().expect("VarMap lock poisoned");
        let mut v: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    pub(crate) fn standardized(&self, x: &Tensor) -> Result<Tensor> {
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

    /// Trains the reconstruction network on `train` as step `step` (base step: AdamW; incremental
    /// steps: the method's update rule), then updates the Gram matrices and penalty importance.
    pub(crate) fn train_reconstruction(
        &mut self,
        step: usize,
        new_classes: &[String],
        train: &StepData<'_>,
        progress: &dyn Progress,
    ) -> Result<TrainedStep> {
        let n = train.features.dim(0)?;
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
                for (layer, gram) in self.network()?.constrained_layers().iter().zip(&self.grams) {
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
        // Mixed precision (bf16 products of the linear layers, f32 everything else) when the
        // configuration asks for bf16 and the CPU has AMX; the end-of-step statistics below
        // (Gram matrices, importance) stay f32.
        let mixed = self.cfg.precision.resolve_training()?;
        let last = iuf_model::ops::mixed_precision_training(mixed, || -> Result<LossLog> {
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
                    let out = self.network()?.forward(&x, &mut Mode::Train(&mut rng))?;
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
            Ok(last)
        })?;
        progress.finish();

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
        Ok(TrainedStep {
            epochs,
            optimizer: opt_name,
            last,
        })
    }

    fn accumulate_grams(&mut self, features: &Tensor) -> Result<()> {
        let n = features.dim(0)?;
        for start in (0..n).step_by(EVAL_BATCH) {
            let len = EVAL_BATCH.min(n - start);
            let x = self.standardized(&features.narrow(0, start, len)?)?;
            let out = self.network()?.forward(&x, &mut Mode::Eval)?;
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
            let out = self.network()?.forward(&x, &mut Mode::Eval)?;
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
}

enum StepOptimizer {
    AdamW(AdamW),
    Sgd(ConstrainedSgd),
}
