//! One step of training the reconstruction network (section 5) with the update rule of the method:
//! IUF's constrained SGD with the 4.5 pull and 4.6 projection, AdamW, and the EWC / MAS / SI
//! penalties; then the statistics the next step needs (Gram matrices, importance).
//!
//! In four parts: [`StepOptimizer::for_step`] picks and sets up the update rule, [`Trainer::epoch`]
//! feeds it one shuffled pass of batches, [`Trainer::batch_loss`] is the loss of one batch, and
//! [`end_of_step`] accumulates what protects this step's objects later.

use std::collections::BTreeMap;

use candle_core::{Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use iuf_model::Mode;
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::interface::{Step, Trained};
use super::network::Network;
use crate::config::{IncrementalOptimizer, Penalty, Strategy, TrainConfig};
use crate::error::{Error, Result};
use crate::optim::{clip_grad_norm, step_lr, ConstrainedSgd, ConstrainedSgdConfig};
use crate::penalty::{GradAccumulator, GradStat, Importance, PathIntegral};
use crate::projection::{GradientProjector, Gram};
use crate::scl::SclBuffer;
use crate::step::{LossLog, StepData, EVAL_BATCH};

/// The update rule of a step, behind candle's `Optimizer` where it has one.
pub enum StepOptimizer {
    /// Base steps and the fine-tuning baselines: AdamW with the base schedule's learning rate.
    AdamW(AdamW),
    /// Incremental steps of the IUF family: the constrained SGD (or Adam) of sections 4.5-4.6.
    Sgd(ConstrainedSgd),
}

impl StepOptimizer {
    /// The update rule of step `step` of `strategy`, its epochs and its name for the step record.
    /// Incremental IUF steps project the gradients of each constrained layer on the complement of
    /// its Gram matrix's span (when the method uses the update strategy).
    pub fn for_step(
        net: &Network,
        params: &[(String, Var)],
        grams: &[Gram],
        cfg: &TrainConfig,
        strategy: Strategy,
        is_base: bool,
    ) -> Result<(usize, Self, &'static str)> {
        let vars: Vec<Var> = params.iter().map(|(_, v)| v.clone()).collect();
        if !is_base && strategy.is_iuf() {
            let inc = &cfg.incremental;
            let mut sgd = ConstrainedSgd::new(
                vars,
                ConstrainedSgdConfig {
                    lr: inc.lr,
                    pull_alpha: if strategy.uses_update() {
                        inc.pull_alpha
                    } else {
                        0.0
                    },
                    momentum: inc.momentum,
                    adam: match inc.optimizer {
                        IncrementalOptimizer::Sgd => None,
                        IncrementalOptimizer::Adam => Some((cfg.base.betas[0], cfg.base.betas[1])),
                    },
                },
            )?;
            if strategy.uses_update() {
                set_projectors(&mut sgd, net, params, grams)?;
            }
            let name = match inc.optimizer {
                IncrementalOptimizer::Sgd => "constrained-sgd",
                IncrementalOptimizer::Adam => "constrained-adam",
            };
            return Ok((inc.epochs, StepOptimizer::Sgd(sgd), name));
        }
        let b = &cfg.base;
        let adam = AdamW::new(
            vars,
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
            cfg.finetune_epochs
        };
        Ok((epochs, StepOptimizer::AdamW(adam), "adamw"))
    }

    fn step(&mut self, grads: &candle_core::backprop::GradStore) -> Result<()> {
        match self {
            StepOptimizer::AdamW(a) => a.step(grads)?,
            StepOptimizer::Sgd(s) => s.step(grads)?,
        }
        Ok(())
    }
}

/// Section 4.6: each constrained layer's weight and bias get the projector of its Gram matrix.
fn set_projectors(
    sgd: &mut ConstrainedSgd,
    net: &Network,
    params: &[(String, Var)],
    grams: &[Gram],
) -> Result<()> {
    for (layer, gram) in net.model.constrained_layers().iter().zip(grams) {
        let Some(p) = GradientProjector::from_gram(gram, &net.device)? else {
            continue;
        };
        for suffix in ["weight", "bias"] {
            let name = format!("{layer}.{suffix}");
            let var = params
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v)
                .ok_or_else(|| {
                    Error::Msg(format!(
                        "constrained layer parameter `{name}` not found in the model"
                    ))
                })?;
            sgd.set_projector(var, p.clone());
        }
    }
    Ok(())
}

/// The state of one step's training loop.
pub struct Trainer<'a> {
    net: &'a Network,
    cfg: &'a TrainConfig,
    importance: &'a Importance,
    params: Vec<(String, Var)>,
    vars: Vec<Var>,
    opt: StepOptimizer,
    penalty: Option<Penalty>,
    /// The penalty's strength (lambda, or SI's c).
    penalty_lambda: f64,
    path_integral: Option<PathIntegral>,
    rng: StdRng,
    scl: SclBuffer,
}

impl Trainer<'_> {
    /// The loss of one batch of standardised features `x` with class ids `labels`: reconstruction
    /// MSE, the discriminator's cross-entropy, the semantic compression loss (4.4) and the penalty.
    pub fn batch_loss(&mut self, x: &Tensor, labels: &Tensor) -> Result<(Tensor, LossLog)> {
        let out = self.net.model.forward(x, &mut Mode::Train(&mut self.rng))?;
        let rec = (&out.feature_rec - x)?.sqr()?.mean_all()?;
        let ce = candle_nn::loss::cross_entropy(&out.logits, labels)?;
        let mut loss = (&rec + (&ce * self.cfg.loss.ce)?)?;
        let mut log = LossLog {
            rec: rec.to_scalar::<f32>()? as f64,
            ce: ce.to_scalar::<f32>()? as f64,
            ..Default::default()
        };
        if self.cfg.loss.sc > 0.0 {
            let sc = self.scl.loss(&out.intermediate, &self.cfg.scl)?;
            log.sc = sc.to_scalar::<f32>()? as f64;
            loss = (loss + (sc * self.cfg.loss.sc)?)?;
        }
        if self.penalty.is_some() {
            if let Some(p) = self.importance.penalty(&self.params, self.penalty_lambda)? {
                log.penalty = p.to_scalar::<f32>()? as f64;
                loss = (loss + p)?;
            }
        }
        log.total = loss.to_scalar::<f32>()? as f64;
        Ok((loss, log))
    }

    /// One shuffled pass over `train`: the mean losses of its batches.
    pub fn epoch(
        &mut self,
        step: &Step<'_>,
        train: &StepData<'_>,
        epoch: usize,
    ) -> Result<LossLog> {
        let n = train.features.dim(0)?;
        let bs = self.cfg.batch_size.min(n);
        let batches = n.div_ceil(bs);
        let order = iuf_data::batch::shuffled_batches(
            n,
            bs,
            self.cfg
                .seed
                .wrapping_add((step.index as u64) << 32)
                .wrapping_add(epoch as u64),
        );
        let mut sum = LossLog::default();
        for (bi, idx) in order.iter().enumerate() {
            if let StepOptimizer::AdamW(a) = &mut self.opt {
                let b = &self.cfg.base;
                a.set_learning_rate(step_lr(
                    b.lr,
                    epoch,
                    bi as f64 / batches as f64,
                    b.warmup_epochs,
                    b.lr_step_epochs,
                    b.lr_gamma,
                ));
            }
            let device = &self.net.device;
            let idx_t = Tensor::from_vec(
                idx.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                idx.len(),
                device,
            )?;
            let x = self
                .net
                .standardized(&train.features.index_select(&idx_t, 0)?)?;
            let labels: Vec<u32> = idx.iter().map(|&i| train.class_ids[i]).collect();
            let labels = Tensor::from_vec(labels, idx.len(), device)?;
            let (loss, log) = self.batch_loss(&x, &labels)?;
            if !log.total.is_finite() {
                return Err(Error::Msg(format!(
                    "step {}, epoch {epoch}: the loss diverged ({log:?}); lower the learning rate",
                    step.index
                )));
            }
            let mut grads = loss.backward()?;
            clip_grad_norm(&mut grads, &self.vars, self.cfg.clip_grad_norm)?;
            if let Some(pi) = &mut self.path_integral {
                pi.before_update(&self.params)?;
            }
            self.opt.step(&grads)?;
            if let Some(pi) = &mut self.path_integral {
                pi.after_update(&grads, &self.params)?;
            }
            sum.add(&log);
            step.progress.inc(1);
        }
        Ok(sum.mean(order.len()))
    }
}

fn penalty_lambda(penalty: Option<Penalty>, cfg: &TrainConfig) -> f64 {
    match penalty {
        Some(Penalty::Ewc) => cfg.penalty.ewc_lambda,
        Some(Penalty::Mas) => cfg.penalty.mas_lambda,
        Some(Penalty::Si) => cfg.penalty.si_c,
        None => 0.0,
    }
}

/// Trains `net` on `train` as `step` (base step: AdamW; incremental steps: the method's update
/// rule), then updates the Gram matrices and penalty importance.
pub fn train_step(
    net: &mut Network,
    grams: &mut [Gram],
    importance: &mut Importance,
    step: &Step<'_>,
    train: &StepData<'_>,
) -> Result<Trained> {
    let cfg = step.cfg;
    let n = train.features.dim(0)?;
    if step.is_base && cfg.standardize_features {
        net.fit_standardization(train.features)?;
    }
    let params = net.params();
    let (epochs, opt, optimizer) =
        StepOptimizer::for_step(net, &params, grams, cfg, step.strategy, step.is_base)?;
    let penalty = step.strategy.penalty();
    let mut trainer = Trainer {
        net,
        cfg,
        importance,
        vars: params.iter().map(|(_, v)| v.clone()).collect(),
        path_integral: match penalty {
            Some(Penalty::Si) => Some(PathIntegral::begin_step(&params)?),
            _ => None,
        },
        params,
        opt,
        penalty,
        penalty_lambda: penalty_lambda(penalty, cfg),
        rng: StdRng::seed_from_u64(
            cfg.seed ^ (0x9E37_79B9_7F4A_7C15u64.wrapping_mul(step.index as u64 + 1)),
        ),
        scl: SclBuffer::default(),
    };
    let names: Vec<&str> = step.new.iter().map(|(c, _)| c.as_str()).collect();
    let batches = n.div_ceil(cfg.batch_size.min(n));
    step.progress.start(
        &format!("step {}: training {}", step.index, names.join(",")),
        (epochs * batches) as u64,
    );
    // Mixed precision (bf16 products of the linear layers, f32 everything else) when the
    // configuration asks for bf16 and the CPU has AMX; the end-of-step statistics below
    // (Gram matrices, importance) stay f32.
    let mixed = cfg.precision.resolve_training()?;
    let last = iuf_model::ops::mixed_precision_training(mixed, || -> Result<LossLog> {
        let mut last = LossLog::default();
        for epoch in 0..epochs {
            last = trainer.epoch(step, train, epoch)?;
            step.progress.message(&format!(
                "epoch {}/{epochs} loss {:.4} (rec {:.4} ce {:.3} sc {:.4})",
                epoch + 1,
                last.total,
                last.rec,
                last.ce,
                last.sc
            ));
            tracing::info!(
                step = step.index,
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
    step.progress.finish();
    let (params, path_integral) = (trainer.params, trainer.path_integral);
    end_of_step(net, grams, importance, step, train, &params, path_integral)?;
    Ok(Trained {
        epochs,
        optimizer,
        last,
    })
}

/// End of a step: the statistics the next step needs, from this step's images only (the Gram
/// matrices of the constrained layers' inputs; the penalty's importance).
pub fn end_of_step(
    net: &Network,
    grams: &mut [Gram],
    importance: &mut Importance,
    step: &Step<'_>,
    train: &StepData<'_>,
    params: &[(String, Var)],
    path_integral: Option<PathIntegral>,
) -> Result<()> {
    if step.strategy.uses_update() {
        for start in (0..train.features.dim(0)?).step_by(EVAL_BATCH) {
            let len = EVAL_BATCH.min(train.features.dim(0)? - start);
            let (_, out) = net.forward_eval(&train.features.narrow(0, start, len)?)?;
            for (g, f) in grams.iter_mut().zip(&out.ffn_outputs) {
                g.accumulate(&f.mean(1)?.detach())?;
            }
        }
    }
    let omega = match step.strategy.penalty() {
        Some(Penalty::Si) => path_integral
            .expect("SI tracks its path")
            .finish(params, step.cfg.penalty.si_xi)?,
        Some(p @ (Penalty::Ewc | Penalty::Mas)) => {
            importance_estimate(net, train.features, p, params, step.cfg)?
        }
        None => return Ok(()),
    };
    importance.add_step(omega, params)?;
    Ok(())
}

/// EWC's Fisher information (squared gradients of the reconstruction loss) or MAS's sensitivity of
/// the squared output norm, over the step's images.
fn importance_estimate(
    net: &Network,
    features: &Tensor,
    p: Penalty,
    params: &[(String, Var)],
    cfg: &TrainConfig,
) -> Result<BTreeMap<String, Tensor>> {
    let n = features.dim(0)?;
    let mut acc = GradAccumulator::default();
    let limit = match cfg.penalty.importance_batches {
        0 => usize::MAX,
        k => k,
    };
    for start in (0..n).step_by(EVAL_BATCH).take(limit) {
        let len = EVAL_BATCH.min(n - start);
        let (x, out) = net.forward_eval(&features.narrow(0, start, len)?)?;
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
