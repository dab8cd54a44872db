//! Differentiable building blocks the model uses everywhere: layer norm and softmax.
//!
//! candle's fast `ops::layer_norm` / `ops::softmax_last_dim` have no backward pass, so parameters
//! behind them would silently get no gradient. Every model file calls these functions instead; they
//! are the single place where a fused kernel (with a hand-written backward) replaces the plain
//! composition of differentiable candle ops: f32 tensors on the CPU take the fused custom ops of
//! `ops/fused.rs`, everything else (other dtypes, CUDA) the composition, which is also the
//! reference the fused ops are tested against.

mod fused;
mod kernels;
#[cfg(test)]
mod tests;

use candle_core::{DType, Result, Tensor, D};

/// Layer norm over the last dimension with affine weight and bias, differentiable in all inputs.
///
/// `weight` and `bias` have the size of the last dimension of `x` (section 3.3, eps 1e-5).
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let d = x.dims().last().copied().unwrap_or(0);
    if fused::is_cpu_f32(x)
        && fused::is_cpu_f32(weight)
        && fused::is_cpu_f32(bias)
        && weight.elem_count() == d
        && bias.elem_count() == d
    {
        let op = fused::LayerNorm { eps: eps as f32 };
        x.contiguous()?
            .apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)
    } else {
        layer_norm_composed(x, weight, bias, eps)
    }
}

/// Softmax over the last dimension, differentiable.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if fused::is_cpu_f32(x) {
        x.contiguous()?.apply_op1(fused::Softmax)
    } else {
        softmax_last_dim_composed(x)
    }
}

/// Layer norm as a composition of differentiable candle ops, computed in f32 and returned in the
/// input's dtype. Runs on any device; the reference for the fused CPU op.
pub fn layer_norm_composed(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let xn = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    let y = xn
        .broadcast_mul(&weight.to_dtype(DType::F32)?)?
        .broadcast_add(&bias.to_dtype(DType::F32)?)?;
    y.to_dtype(dtype)
}

/// Softmax over the last dimension as a composition of differentiable candle ops (any device).
pub fn softmax_last_dim_composed(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&s)
}
