//! Differentiable building blocks the model uses everywhere: layer norm, softmax, attention, linear.
//!
//! candle's fast `ops::layer_norm` / `ops::softmax_last_dim` have no backward pass, so parameters
//! behind them would silently get no gradient. Every model file calls these functions instead; they
//! are the single place where a fused kernel (with a hand-written backward) replaces the plain
//! composition of differentiable candle ops: f32 tensors on the CPU take the fused custom ops of
//! `ops/fused.rs`, everything else (other dtypes, CUDA) the composition, which is also the
//! reference the fused ops are tested against.

mod attention;
mod bf16;
mod dropout;
pub(crate) mod fused;
mod kernels;
mod linear;
#[cfg(test)]
mod tests;

use candle_core::{DType, Device, Result, Tensor, D};

pub use attention::AttentionDropout;
pub use bf16::{ffn_bf16, linear_bf16, PackedWeight};
pub use linear::{mixed_precision_active, mixed_precision_training, Activation};

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

/// Multi-head attention core: `softmax(q k^T / sqrt(D / heads) + mask) v` per head, with optional
/// dropout on the attention weights, heads split from and merged back into the last dimension.
///
/// `q` [B or 1, Nq, D] (a batch of 1 is shared by every image), `k` and `v` [B, Nk, D], `mask` an
/// additive [Nq, Nk] tensor (0 or -inf, section 3.5; never differentiated). Returns [B, Nq, D],
/// the input of the output projection. f32 on the CPU runs the fused op of `ops/attention.rs`;
/// everything else [`attention_composed`], which gives the same values (and the same dropout mask).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    mask: Option<&Tensor>,
    dropout: Option<AttentionDropout>,
) -> Result<Tensor> {
    let (b, _, d) = k.dims3()?;
    let (bq, nq, _) = q.dims3()?;
    let q = if bq != b {
        q.broadcast_as((b, nq, d))?
    } else {
        q.clone()
    };
    if !(fused::is_cpu_f32(&q) && fused::is_cpu_f32(k) && fused::is_cpu_f32(v)) {
        return attention_composed(&q, k, v, heads, mask, dropout);
    }
    let mask = match mask {
        Some(m) => m.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
        None => Vec::new(),
    };
    let scale = (1.0 / ((d / heads.max(1)) as f64).sqrt()) as f32;
    let dropout = dropout.filter(|dr| dr.p > 0.0);
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    if q.track_op() || k.track_op() || v.track_op() {
        let op = attention::Attention::new(heads, scale, mask, dropout, attention::KeepProbs::Yes);
        q.apply_op3(&k, &v, op)
    } else {
        let op = attention::Attention::new(heads, scale, mask, dropout, attention::KeepProbs::No);
        q.apply_op3_no_bwd(&k, &v, &op)
    }
}

/// [`attention`] as a composition of differentiable candle ops (any device): the reference for the
/// fused op and the path for CUDA. `q` must have the batch of `k`.
pub fn attention_composed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    mask: Option<&Tensor>,
    dropout: Option<AttentionDropout>,
) -> Result<Tensor> {
    let (b, nq, d) = q.dims3()?;
    let nk = k.dim(1)?;
    let dh = d / heads.max(1);
    let split = |x: &Tensor, n: usize| -> Result<Tensor> {
        x.reshape((b, n, heads, dh))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b * heads, n, dh))
    };
    let scale = 1.0 / (dh as f64).sqrt();
    let mut scores = (split(q, nq)?.matmul(&split(k, nk)?.t()?)? * scale)?;
    if let Some(mask) = mask {
        scores = scores.broadcast_add(&mask.to_dtype(scores.dtype())?)?;
    }
    let mut weights = softmax_last_dim_composed(&scores)?;
    if let Some(drop) = dropout.filter(|dr| dr.p > 0.0) {
        weights = weights.mul(&dropout_mask_tensor(&weights, drop.p, drop.seed)?)?;
    }
    weights
        .matmul(&split(v, nk)?)?
        .reshape((b, heads, nq, dh))?
        .transpose(1, 2)?
        .reshape((b, nq, d))
}

/// `act(x W^T + b)` over the last dimension: `x` [..., in], `weight` [out, in], `bias` [out].
/// f32 on the CPU runs the fused op of `ops/linear.rs` (with bf16 products inside a
/// [`mixed_precision_training`] scope); everything else [`linear_composed`].
pub fn linear(x: &Tensor, weight: &Tensor, bias: &Tensor, act: Activation) -> Result<Tensor> {
    let dout = weight.dim(0)?;
    if !(fused::is_cpu_f32(x) && fused::is_cpu_f32(weight) && fused::is_cpu_f32(bias)) {
        return linear_composed(x, weight, bias, act);
    }
    let (dims, rows, din) = as_rows(x);
    let y = x.reshape((rows, din))?.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        linear::Linear {
            act,
            mixed: linear::mixed_precision_active(),
        },
    )?;
    y.reshape(with_last(dims, dout))
}

/// [`linear`] as a composition of differentiable candle ops (any device).
pub fn linear_composed(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    act: Activation,
) -> Result<Tensor> {
    let (dims, rows, din) = as_rows(x);
    let y = x
        .reshape((rows, din))?
        .matmul(&weight.t()?)?
        .broadcast_add(bias)?;
    let y = match act {
        Activation::Identity => y,
        Activation::Relu => y.relu()?,
    };
    y.reshape(with_last(dims, weight.dim(0)?))
}

/// `x` [..., in] as the rows a layer over the last dimension multiplies: `(dims, rows, in)`.
fn as_rows(x: &Tensor) -> (&[usize], usize, usize) {
    let dims = x.dims();
    let din = dims.last().copied().unwrap_or(0);
    (dims, x.elem_count() / din.max(1), din)
}

/// `dims` with the last dimension replaced by `last`: the output shape of a layer over the last
/// dimension.
fn with_last(dims: &[usize], last: usize) -> Vec<usize> {
    let mut out = dims.to_vec();
    if let Some(l) = out.last_mut() {
        *l = last;
    }
    out
}

/// Inverted dropout: `x` times multipliers that are 0 with probability `p` and `1 / (1 - p)`
/// otherwise, drawn from the counter-based stream `seed` (element i depends only on the seed
/// and i). f32 on the CPU runs a custom op that regenerates the mask in the backward; everything
/// else multiplies by the same mask as a tensor.
pub fn dropout(x: &Tensor, p: f64, seed: u64) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    if fused::is_cpu_f32(x) {
        return x.contiguous()?.apply_op1(dropout::Dropout { p, seed });
    }
    x.mul(&dropout_mask_tensor(x, p, seed)?)
}

/// `x + dropout(r)` (a residual connection around a dropped-out branch), one pass on the CPU.
pub fn add_dropout(x: &Tensor, r: &Tensor, p: f64, seed: u64) -> Result<Tensor> {
    if p <= 0.0 {
        return x + r;
    }
    if fused::is_cpu_f32(x) && fused::is_cpu_f32(r) && x.shape() == r.shape() {
        let op = dropout::AddDropout { p, seed };
        return x.contiguous()?.apply_op2(&r.contiguous()?, op);
    }
    x + r.mul(&dropout_mask_tensor(r, p, seed)?)?
}

/// The multipliers of [`dropout`] for `x`, as a tensor of its shape, device and dtype.
fn dropout_mask_tensor(x: &Tensor, p: f64, seed: u64) -> Result<Tensor> {
    let mut m = vec![0f32; x.elem_count()];
    kernels::dropout_mask(seed, 0, p, &mut m);
    Tensor::from_vec(m, x.shape(), &Device::Cpu)?
        .to_device(x.device())?
        .to_dtype(x.dtype())
}
