//! Quadratic-penalty baselines (section 8): EWC (Fisher importance), MAS (output sensitivity) and
//! SI (path integral). All three penalise `sum_i Omega_i (theta_i - theta*_i)^2`; they differ only in
//! how the importance `Omega` is estimated at the end of each step.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::error::Result;

/// Name prefix of the importance tensors in a model file.
pub const OMEGA_PREFIX: &str = "state.penalty.omega.";
/// Name prefix of the anchor (old weights) tensors in a model file.
pub const ANCHOR_PREFIX: &str = "state.penalty.anchor.";

/// Importance `Omega` and anchor weights `theta*`, summed over the steps learned so far.
#[derive(Debug, Clone, Default)]
pub struct Importance {
    /// Per parameter name.
    pub omega: BTreeMap<String, Tensor>,
    /// Per parameter name: the weights at the end of the last step.
    pub anchor: BTreeMap<String, Tensor>,
}

impl Importance {
    /// True before any step has ended.
    pub fn is_empty(&self) -> bool {
        self.omega.is_empty()
    }

    /// `lambda * sum Omega (theta - theta*)^2` over the named parameters, or `None` when empty.
    pub fn penalty(&self, params: &[(String, Var)], lambda: f64) -> Result<Option<Tensor>> {
        let mut total: Option<Tensor> = None;
        for (name, var) in params {
            let (Some(omega), Some(anchor)) = (self.omega.get(name), self.anchor.get(name)) else {
                continue;
            };
            let term = (var.as_tensor().sub(anchor)?.sqr()? * omega)?.sum_all()?;
            total = Some(match total {
                None => term,
                Some(t) => (t + term)?,
            });
        }
        Ok(match total {
            Some(t) => Some((t * lambda)?),
            None => None,
        })
    }

    /// Adds a step's importance and moves the anchor to the current weights.
    pub fn add_step(
        &mut self,
        step_omega: BTreeMap<String, Tensor>,
        params: &[(String, Var)],
    ) -> Result<()> {
        for (name, omega) in step_omega {
            let merged = match self.omega.remove(&name) {
                Some(old) => (old + omega)?,
                None => omega,
            };
            self.omega.insert(name, merged);
        }
        for (name, var) in params {
            self.anchor
                .insert(name.clone(), var.as_tensor().detach().copy()?);
        }
        Ok(())
    }

    /// The state tensors to store in a model file.
    pub fn to_state(&self) -> Vec<(String, Tensor)> {
        let o = self
            .omega
            .iter()
            .map(|(n, t)| (format!("{OMEGA_PREFIX}{n}"), t.clone()));
        let a = self
            .anchor
            .iter()
            .map(|(n, t)| (format!("{ANCHOR_PREFIX}{n}"), t.clone()));
        o.chain(a).collect()
    }

    /// Reads the importance back from a model file's state tensors.
    pub fn from_state(state: &[(String, Tensor)]) -> Self {
        let mut imp = Self::default();
        for (name, t) in state {
            if let Some(n) = name.strip_prefix(OMEGA_PREFIX) {
                imp.omega.insert(n.to_string(), t.clone());
            } else if let Some(n) = name.strip_prefix(ANCHOR_PREFIX) {
                imp.anchor.insert(n.to_string(), t.clone());
            }
        }
        imp
    }
}

/// Sums `f(grad)` per parameter over batches: squared gradients (EWC's empirical Fisher) or
/// absolute gradients (MAS).
#[derive(Debug, Default)]
pub struct GradAccumulator {
    sums: BTreeMap<String, Tensor>,
    batches: usize,
}

/// Which function of the gradient is accumulated.
#[derive(Debug, Clone, Copy)]
pub enum GradStat {
    /// `g^2` (Fisher information).
    Square,
    /// `|g|` (MAS sensitivity).
    Abs,
}

impl GradAccumulator {
    /// Adds one batch's gradients.
    pub fn add(
        &mut self,
        grads: &GradStore,
        params: &[(String, Var)],
        stat: GradStat,
    ) -> Result<()> {
        for (name, var) in params {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let v = match stat {
                GradStat::Square => g.sqr()?,
                GradStat::Abs => g.abs()?,
            };
            let merged = match self.sums.remove(name) {
                Some(s) => (s + v)?,
                None => v,
            };
            self.sums.insert(name.clone(), merged);
        }
        self.batches += 1;
        Ok(())
    }

    /// The mean over batches.
    pub fn finish(self) -> Result<BTreeMap<String, Tensor>> {
        let n = self.batches.max(1) as f64;
        self.sums
            .into_iter()
            .map(|(k, v)| Ok((k, (v / n)?)))
            .collect()
    }
}

/// SI's running path integral `w += -g * delta_theta` during one step.
#[derive(Debug, Default)]
pub struct PathIntegral {
    start: BTreeMap<String, Tensor>,
    before: BTreeMap<String, Tensor>,
    w: BTreeMap<String, Tensor>,
}

impl PathIntegral {
    /// Records the weights at the start of a step.
    pub fn begin_step(params: &[(String, Var)]) -> Result<Self> {
        let mut s = Self::default();
        for (name, var) in params {
            s.start
                .insert(name.clone(), var.as_tensor().detach().copy()?);
        }
        Ok(s)
    }

    /// Call just before the optimiser step.
    pub fn before_update(&mut self, params: &[(String, Var)]) -> Result<()> {
        for (name, var) in params {
            self.before
                .insert(name.clone(), var.as_tensor().detach().copy()?);
        }
        Ok(())
    }

    /// Call just after the optimiser step, with the task-loss gradients it used.
    pub fn after_update(&mut self, grads: &GradStore, params: &[(String, Var)]) -> Result<()> {
        for (name, var) in params {
            let (Some(g), Some(before)) = (grads.get(var.as_tensor()), self.before.get(name))
            else {
                continue;
            };
            let delta = var.as_tensor().sub(before)?;
            let contrib = (g * delta)?.neg()?;
            let merged = match self.w.remove(name) {
                Some(w) => (w + contrib)?,
                None => contrib,
            };
            self.w.insert(name.clone(), merged);
        }
        Ok(())
    }

    /// `Omega = relu(w) / ((theta_end - theta_start)^2 + xi)`.
    pub fn finish(self, params: &[(String, Var)], xi: f64) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        for (name, var) in params {
            let (Some(w), Some(start)) = (self.w.get(name), self.start.get(name)) else {
                continue;
            };
            let d2 = var.as_tensor().sub(start)?.sqr()?;
            out.insert(name.clone(), w.relu()?.div(&(d2 + xi)?)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn penalty_is_weighted_squared_distance_to_anchor() {
        let dev = Device::Cpu;
        let v = Var::new(&[1.0f32, 2.0], &dev).unwrap();
        let params = vec![("w".to_string(), v.clone())];
        let mut imp = Importance::default();
        let mut omega = BTreeMap::new();
        omega.insert("w".to_string(), Tensor::new(&[2.0f32, 0.5], &dev).unwrap());
        imp.add_step(omega, &params).unwrap();
        v.set(&Tensor::new(&[2.0f32, 4.0], &dev).unwrap()).unwrap();
        let p = imp
            .penalty(&params, 3.0)
            .unwrap()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        // 3 * (2 * 1^2 + 0.5 * 2^2) = 12
        assert!((p - 12.0).abs() < 1e-5, "{p}");
        let back = Importance::from_state(&imp.to_state());
        assert_eq!(back.omega.len(), 1);
        assert_eq!(back.anchor.len(), 1);
    }
}
