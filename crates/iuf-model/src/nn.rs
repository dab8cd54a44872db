//! Building blocks with the initialisation of section 3.7: linear, layer norm, multi-head attention.
//!
//! Linear layers work on 2-D views (`[rows, in] x [in, out]^T`) so that candle runs one large gemm
//! per projection; attention runs the fused `ops::attention` (per-head gemms on strided views).

use candle_core::{Tensor, D};
use candle_nn::{Init, VarBuilder};

use crate::error::{ModelError, Result};
use crate::ops::{self, Activation};
use crate::random::Mode;
use rand::RngCore;

/// Xavier-uniform bound for a weight of `fan_in` inputs and `fan_out` outputs.
pub(crate) fn xavier_uniform(fan_in: usize, fan_out: usize) -> Init {
    let bound = (6.0 / (fan_in + fan_out) as f64).sqrt();
    Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// `y = x W^T + b` over the last dimension. Parameters `weight` [out, in], `bias` [out].
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Tensor,
    /// The weight in bf16 for inference scopes (`iuf_bf16::scoped`), packed on first use in each.
    packed: ops::PackedWeight,
}

impl Linear {
    /// Section 3.7: Xavier-uniform weight, zero bias.
    pub fn new(vb: VarBuilder<'_>, in_dim: usize, out_dim: usize) -> Result<Self> {
        Self::with_weight_init(vb, in_dim, out_dim, xavier_uniform(in_dim, out_dim))
    }

    pub(crate) fn with_weight_init(
        vb: VarBuilder<'_>,
        in_dim: usize,
        out_dim: usize,
        init: Init,
    ) -> Result<Self> {
        let weight = vb.get_with_hints((out_dim, in_dim), "weight", init)?;
        let bias = vb.get_with_hints(out_dim, "bias", Init::Const(0.0))?;
        Ok(Self {
            weight,
            bias,
            packed: ops::PackedWeight::default(),
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_act(x, Activation::Identity)
    }

    /// `relu(x W^T + b)` (the FFN's first layer), fused on the CPU.
    pub fn forward_relu(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_act(x, Activation::Relu)
    }

    /// f32 (`ops::linear`), or inside a bf16 inference scope on the CPU, bf16 products with the
    /// weight packed once per scope.
    fn forward_act(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        if let (Some(cpu), Some(generation)) = (iuf_bf16::active(), iuf_bf16::generation()) {
            if x.device().is_cpu() && self.weight.device().is_cpu() {
                let packed = self.packed.get(generation, &self.weight)?;
                let x = x.to_dtype(candle_core::DType::F32)?;
                return Ok(ops::linear_bf16(cpu, &x, &packed, &self.bias, act)?);
            }
        }
        Ok(ops::linear(x, &self.weight, &self.bias, act)?)
    }
}

/// The transformer's feed-forward block, `l2(dropout(relu(l1(x))))`. Inside a bf16 inference
/// scope on the CPU, when no dropout is drawn, both products run fused per block of rows
/// (`ops::ffn_bf16`): the 4x-wide hidden layer never goes to memory. Same values either way.
pub(crate) fn feed_forward(
    l1: &Linear,
    l2: &Linear,
    x: &Tensor,
    p: f64,
    mode: &mut Mode<'_>,
) -> Result<Tensor> {
    let draws_dropout = matches!(mode, Mode::Train(_)) && p > 0.0;
    if let (Some(cpu), Some(generation), false) =
        (iuf_bf16::active(), iuf_bf16::generation(), draws_dropout)
    {
        if x.device().is_cpu() && l1.weight.device().is_cpu() && l2.weight.device().is_cpu() {
            let p1 = l1.packed.get(generation, &l1.weight)?;
            let p2 = l2.packed.get(generation, &l2.weight)?;
            let x = x.to_dtype(candle_core::DType::F32)?;
            return Ok(ops::ffn_bf16(cpu, &x, (&p1, &l1.bias), (&p2, &l2.bias))?);
        }
    }
    let hidden = crate::random::dropout(&l1.forward_relu(x)?, p, mode)?;
    l2.forward(&hidden)
}

/// Layer norm over the last dimension through `ops::layer_norm` (which has a backward pass).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// Section 3.7: weight 1, bias 0.
    pub fn new(vb: VarBuilder<'_>, dim: usize, eps: f64) -> Result<Self> {
        let weight = vb.get_with_hints(dim, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(dim, "bias", Init::Const(0.0))?;
        Ok(Self { weight, bias, eps })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(ops::layer_norm(x, &self.weight, &self.bias, self.eps)?)
    }
}

/// Multi-head attention with separate q/k/v projections (`q_proj`, `k_proj`, `v_proj`, `out_proj`).
#[derive(Debug, Clone)]
pub struct MultiHeadAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    nheads: usize,
    dropout: f64,
}

impl MultiHeadAttention {
    /// q/k/v weights use the Xavier bound of PyTorch's packed `[3D, D]` `in_proj_weight` (which is
    /// initialised as one matrix), so this matches the reference; `out_proj` is a plain Linear.
    pub fn new(vb: VarBuilder<'_>, dim: usize, nheads: usize, dropout: f64) -> Result<Self> {
        if nheads == 0 || !dim.is_multiple_of(nheads) {
            return Err(ModelError::Config(format!(
                "attention width {dim} is not a multiple of {nheads} heads"
            )));
        }
        let packed = xavier_uniform(dim, 3 * dim);
        Ok(Self {
            q_proj: Linear::with_weight_init(vb.pp("q_proj"), dim, dim, packed)?,
            k_proj: Linear::with_weight_init(vb.pp("k_proj"), dim, dim, packed)?,
            v_proj: Linear::with_weight_init(vb.pp("v_proj"), dim, dim, packed)?,
            out_proj: Linear::new(vb.pp("out_proj"), dim, dim)?,
            nheads,
            dropout,
        })
    }

    /// `query` [Bq, Nq, D] with Bq equal to the batch or 1 (a batch-independent query, projected
    /// once), `key`/`value` [B, Nk, D], `bias` an additive [Nq, Nk] mask (0 or -inf).
    pub fn forward(
        &self,
        query: &Tensor,
        key: &Tensor,
        value: &Tensor,
        bias: Option<&Tensor>,
        mode: &mut Mode<'_>,
    ) -> Result<Tensor> {
        // A batch-1 query (the decoder's learned table) is projected once and shared by every
        // image inside `ops::attention`. PyTorch scales the projected query before q k^T; the
        // fused op scales the scores instead, which is the same product.
        let q = self.q_proj.forward(query)?;
        let k = self.k_proj.forward(key)?;
        let v = self.v_proj.forward(value)?;
        let drop = match mode {
            Mode::Train(rng) if self.dropout > 0.0 => Some(ops::AttentionDropout {
                p: self.dropout,
                seed: rng.next_u64(),
            }),
            _ => None,
        };
        let out = ops::attention(&q, &k, &v, self.nheads, bias, drop)?;
        self.out_proj.forward(&out)
    }
}

/// Mean over the token axis: [B, N, D] -> [B, D].
pub(crate) fn mean_tokens(x: &Tensor) -> Result<Tensor> {
    Ok(x.mean(D::Minus2)?)
}
