//! Optimisers: AdamW for base steps, and the constrained SGD of incremental steps (sections 4.5, 4.6),
//! both behind candle's `Optimizer` trait; global gradient-norm clipping.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, TensorId, Var};
use candle_nn::Optimizer;

use crate::projection::GradientProjector;

/// Scales every gradient so that their global L2 norm is at most `max_norm` (0: no clipping).
/// Returns the norm before clipping.
pub fn clip_grad_norm(
    grads: &mut GradStore,
    vars: &[Var],
    max_norm: f64,
) -> candle_core::Result<f64> {
    let mut sq = 0f64;
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            sq += g
                .sqr()?
                .sum_all()?
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?;
        }
    }
    let norm = sq.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for v in vars {
            if let Some(g) = grads.remove(v.as_tensor()) {
                grads.insert(v.as_tensor(), (g * scale)?);
            }
        }
    }
    Ok(norm)
}

/// Configuration of [`ConstrainedSgd`].
#[derive(Debug, Clone)]
pub struct ConstrainedSgdConfig {
    /// Learning rate.
    pub lr: f64,
    /// Pull toward the start-of-step weights before each step (section 4.5); 0 turns it off.
    pub pull_alpha: f64,
    /// Heavy-ball momentum (0: the reference's plain SGD). The projector is fixed during a step,
    /// so a sum of projected gradients stays in the allowed subspace: momentum keeps section 4.6.
    pub momentum: f64,
    /// `Some((beta1, beta2))`: Adam moments instead of SGD; a constrained layer's Adam update
    /// (not its gradient) is projected. `momentum` is then unused.
    pub adam: Option<(f64, f64)>,
}

/// SGD (plain by default, optionally with momentum; no weight decay) whose gradients of the
/// constrained layers are projected away from the old objects' dominant output directions
/// (section 4.6), and whose weights are pulled toward a frozen copy of the start-of-step weights
/// before every step (section 4.5). With `adam` set, the update is Adam's instead, and the
/// projection applies to that update.
pub struct ConstrainedSgd {
    vars: Vec<Var>,
    lr: f64,
    pull_alpha: f64,
    momentum: f64,
    anchors: HashMap<TensorId, Tensor>,
    projectors: HashMap<TensorId, GradientProjector>,
    velocity: HashMap<TensorId, Tensor>,
    adam: Option<(f64, f64)>,
    /// Adam's first and second moments per parameter.
    moments: HashMap<TensorId, (Tensor, Tensor)>,
    steps: i32,
}

impl ConstrainedSgd {
    /// Projects the gradient of `var` with `projector` in every later step.
    pub fn set_projector(&mut self, var: &Var, projector: GradientProjector) {
        self.projectors.insert(var.as_tensor().id(), projector);
    }

    /// How many parameters have a projector.
    pub fn num_projected(&self) -> usize {
        self.projectors.len()
    }
}

impl Optimizer for ConstrainedSgd {
    type Config = ConstrainedSgdConfig;

    fn new(vars: Vec<Var>, cfg: ConstrainedSgdConfig) -> candle_core::Result<Self> {
        let vars: Vec<Var> = vars.into_iter().filter(|v| v.dtype().is_float()).collect();
        let mut anchors = HashMap::new();
        if cfg.pull_alpha > 0.0 {
            for v in &vars {
                // theta_old: a frozen copy taken now, at the start of the step.
                anchors.insert(v.as_tensor().id(), v.as_tensor().detach().copy()?);
            }
        }
        Ok(Self {
            vars,
            lr: cfg.lr,
            pull_alpha: cfg.pull_alpha,
            momentum: cfg.momentum,
            anchors,
            projectors: HashMap::new(),
            velocity: HashMap::new(),
            adam: cfg.adam,
            moments: HashMap::new(),
            steps: 0,
        })
    }

    fn step(&mut self, grads: &GradStore) -> candle_core::Result<()> {
        self.steps += 1;
        for v in &self.vars {
            let id = v.as_tensor().id();
            let mut theta = v.as_tensor().detach();
            if let Some(old) = self.anchors.get(&id) {
                theta = ((theta * (1.0 - self.pull_alpha))? + (old * self.pull_alpha)?)?;
            }
            if let Some(g) = grads.get(v.as_tensor()) {
                let project = |t: &Tensor| match self.projectors.get(&id) {
                    Some(p) => p
                        .project(t)
                        .map_err(|e| candle_core::Error::Msg(e.to_string())),
                    None => Ok(t.clone()),
                };
                let update = if let Some((b1, b2)) = self.adam {
                    let (m, s) = match self.moments.get(&id) {
                        Some((m, s)) => (
                            ((m * b1)? + (g * (1.0 - b1))?)?,
                            ((s * b2)? + (g.sqr()? * (1.0 - b2))?)?,
                        ),
                        None => ((g * (1.0 - b1))?, (g.sqr()? * (1.0 - b2))?),
                    };
                    let m_hat = (&m / (1.0 - b1.powi(self.steps)))?;
                    let s_hat = (&s / (1.0 - b2.powi(self.steps)))?;
                    self.moments.insert(id, (m, s));
                    project(&(m_hat / (s_hat.sqrt()? + 1e-8)?)?)?
                } else {
                    let g = project(g)?;
                    if self.momentum > 0.0 {
                        let v = match self.velocity.get(&id) {
                            Some(prev) => ((prev * self.momentum)? + g)?,
                            None => g,
                        };
                        self.velocity.insert(id, v.clone());
                        v
                    } else {
                        g
                    }
                };
                theta = (theta - (update * self.lr)?)?;
            }
            v.set(&theta)?;
        }
        Ok(())
    }

    fn learning_rate(&self) -> f64 {
        self.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.lr = lr;
    }
}

/// The learning rate of a base step at `epoch` (0-based) and fractional progress inside the epoch:
/// linear warm-up, then a step decay by `gamma` every `step_epochs` epochs.
pub fn step_lr(
    base: f64,
    epoch: usize,
    progress_in_epoch: f64,
    warmup_epochs: usize,
    step_epochs: usize,
    gamma: f64,
) -> f64 {
    let decay = gamma.powi((epoch / step_epochs.max(1)) as i32);
    if epoch < warmup_epochs {
        let t = (epoch as f64 + progress_in_epoch) / warmup_epochs as f64;
        base * decay * t.clamp(0.05, 1.0)
    } else {
        base * decay
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projection::Gram;
    use candle_core::Device;

    fn var(values: [f32; 2]) -> Var {
        Var::new(&values, &Device::Cpu).unwrap()
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let a = var([3.0, 4.0]);
        let loss = (a.as_tensor().sqr().unwrap().sum_all().unwrap() * 0.5).unwrap();
        let mut g = loss.backward().unwrap();
        let n = clip_grad_norm(&mut g, std::slice::from_ref(&a), 1.0).unwrap();
        assert!((n - 5.0).abs() < 1e-6);
        let gv: Vec<f32> = g.get(a.as_tensor()).unwrap().to_vec1().unwrap();
        assert!(
            (gv[0] - 0.6).abs() < 1e-5 && (gv[1] - 0.8).abs() < 1e-5,
            "{gv:?}"
        );
    }

    /// Plain SGD at learning rate 1: no pull, no momentum, no Adam.
    const PLAIN: ConstrainedSgdConfig = ConstrainedSgdConfig {
        lr: 1.0,
        pull_alpha: 0.0,
        momentum: 0.0,
        adam: None,
    };

    /// Weights `w` (starting at `start`) and a [`ConstrainedSgd`] over them whose projector comes
    /// from old outputs `old` (rows of f).
    fn projected(
        start: [f32; 2],
        cfg: ConstrainedSgdConfig,
        old: &[[f32; 2]],
    ) -> (Var, ConstrainedSgd) {
        let dev = Device::Cpu;
        let w = var(start);
        let mut opt = ConstrainedSgd::new(vec![w.clone()], cfg).unwrap();
        let mut gram = Gram::zeros(2);
        let rows = Tensor::new(old.concat(), &dev)
            .unwrap()
            .reshape((old.len(), 2))
            .unwrap();
        gram.accumulate(&rows).unwrap();
        opt.set_projector(
            &w,
            GradientProjector::from_gram(&gram, &dev).unwrap().unwrap(),
        );
        (w, opt)
    }

    /// `steps` steps of `opt` on the loss `sum(c * w)`: the weights after them.
    fn descend(opt: &mut ConstrainedSgd, w: &Var, c: [f32; 2], steps: usize) -> Vec<f32> {
        let c = Tensor::new(&c, &Device::Cpu).unwrap();
        for _ in 0..steps {
            let loss = (w.as_tensor() * &c).unwrap().sum_all().unwrap();
            opt.backward_step(&loss).unwrap();
        }
        w.as_tensor().to_vec1().unwrap()
    }

    #[test]
    fn pull_and_projection_are_applied() {
        // Old outputs only along e0: its gradient component is frozen, e1 is free.
        let pull = ConstrainedSgdConfig {
            pull_alpha: 0.5,
            ..PLAIN
        };
        let (w, mut opt) = projected([1.0, 1.0], pull, &[[1.0, 0.0], [2.0, 0.0]]);
        w.set(&Tensor::new(&[3.0f32, 3.0], &Device::Cpu).unwrap())
            .unwrap();
        let out = descend(&mut opt, &w, [1.0, 1.0], 1);
        // pull: 0.5*3 + 0.5*1 = 2; then e0 unchanged (w = 0), e1 minus 1.
        assert!(
            (out[0] - 2.0).abs() < 1e-5 && (out[1] - 1.0).abs() < 1e-5,
            "{out:?}"
        );
    }

    #[test]
    fn momentum_accumulates_projected_gradients_only() {
        let momentum = ConstrainedSgdConfig {
            momentum: 0.5,
            ..PLAIN
        };
        let (w, mut opt) = projected([0.0, 0.0], momentum, &[[1.0, 0.0]]);
        let out = descend(&mut opt, &w, [1.0, 1.0], 2);
        // e0 is frozen; e1 moves by 1, then by 1 + 0.5 * 1.
        assert!(
            out[0].abs() < 1e-6 && (out[1] + 2.5).abs() < 1e-5,
            "{out:?}"
        );
    }

    #[test]
    fn adam_projects_its_update() {
        // The old outputs lie along u = (1, 2): that direction is frozen.
        let adam = ConstrainedSgdConfig {
            lr: 0.1,
            adam: Some((0.9, 0.999)),
            ..PLAIN
        };
        let (w, mut opt) = projected([0.0, 0.0], adam, &[[1.0, 2.0]]);
        // Adam rescales each coordinate: had the gradient been projected instead of the update,
        // the step (sign-like, about (-1, 1) * lr) would leave the allowed line (2, -1).
        let out = descend(&mut opt, &w, [3.0, 0.5], 3);
        assert!((out[0] + 2.0 * out[1]).abs() < 1e-5, "{out:?}");
        // And it moved, against the gradient, along (2, -1).
        assert!(out[0] < -0.05 && out[1] > 0.025, "{out:?}");
    }

    #[test]
    fn step_lr_warms_up_then_decays() {
        assert!((step_lr(1.0, 0, 0.5, 1, 2, 0.1) - 0.5).abs() < 1e-12);
        assert!((step_lr(1.0, 1, 0.0, 1, 2, 0.1) - 1.0).abs() < 1e-12);
        assert!((step_lr(1.0, 2, 0.0, 1, 2, 0.1) - 0.1).abs() < 1e-12);
    }
}
