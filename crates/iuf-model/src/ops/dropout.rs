//! Dropout and residual-plus-dropout on the CPU as candle custom ops whose masks are regenerated
//! from a seed in the backward pass (section 3: dropout 0.1 on attention, residual branches and
//! the FFN's hidden layer).
//!
//! The composition draws a mask tensor, multiplies (single-threaded), and in the backward computes
//! a gradient for the mask as well, each with a zero-filled buffer and an add. Here forward and
//! backward are one parallel pass each, and `x + dropout(r)` passes the gradient of `x` through
//! without touching it.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::fused::{f32_slice, with_f32};
use super::kernels;

/// Elements per rayon task.
const CHUNK: usize = 1 << 14;

/// `out = x * mask (+ base)` over all elements, in parallel chunks that keep the element index.
fn apply(seed: u64, p: f64, x: &[f32], base: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, oc)| {
        let start = c * CHUNK;
        let xc = &x[start..start + oc.len()];
        let bc = if base.is_empty() {
            base
        } else {
            &base[start..start + oc.len()]
        };
        kernels::dropout_fma(seed, start as u64, p, xc, bc, oc);
    });
    out
}

/// The multipliers applied to `grad`, as a new tensor (the backward of both ops).
fn masked(seed: u64, p: f64, grad: &Tensor) -> Result<Tensor> {
    let g = with_f32(grad, "dropout backward grad", |g| {
        Ok(apply(seed, p, g, &[]))
    })?;
    Tensor::from_vec(g, grad.shape(), grad.device())
}

/// `x * mask`.
pub(crate) struct Dropout {
    pub(crate) p: f64,
    pub(crate) seed: u64,
}

impl CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "iuf-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "dropout x")?;
        Ok((
            CpuStorage::F32(apply(self.seed, self.p, x, &[])),
            l.shape().clone(),
        ))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(masked(self.seed, self.p, grad)?))
    }
}

/// `x + r * mask` (a residual connection around a dropped-out branch `r`).
pub(crate) struct AddDropout {
    pub(crate) p: f64,
    pub(crate) seed: u64,
}

impl CustomOp2 for AddDropout {
    fn name(&self) -> &'static str {
        "iuf-add-dropout"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sr: &CpuStorage,
        lr: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(sx, lx, "add_dropout x")?;
        let r = f32_slice(sr, lr, "add_dropout branch")?;
        if x.len() != r.len() {
            candle_core::bail!(
                "add_dropout: x {:?} and branch {:?} differ in shape",
                lx.dims(),
                lr.dims()
            );
        }
        Ok((
            CpuStorage::F32(apply(self.seed, self.p, r, x)),
            lx.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _r: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.clone()), Some(masked(self.seed, self.p, grad)?)))
    }
}
