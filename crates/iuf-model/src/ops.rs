//! Differentiable building blocks the model uses everywhere: layer norm and softmax.
//!
//! candle's fast `ops::layer_norm` / `ops::softmax_last_dim` have no backward pass, so parameters
//! behind them would silently get no gradient. Every model file calls these functions instead; they
//! are the single place where a fused kernel (with a hand-written backward) can replace the plain
//! composition of differentiable candle ops.

use candle_core::{DType, Result, Tensor, D};

/// Layer norm over the last dimension with affine weight and bias, differentiable in all inputs.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let x = if x.dtype() == DType::F32 {
        x.clone()
    } else {
        x.to_dtype(DType::F32)?
    };
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let xn = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    xn.broadcast_mul(weight)?.broadcast_add(bias)
}

/// Softmax over the last dimension, differentiable.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&s)
}
