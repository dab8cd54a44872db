//! Inference in bf16 (`iuf_bf16`): the linear layer's product with the weight packed once per
//! inference scope, and the cache that holds that packing.

use std::sync::{Arc, Mutex};

use candle_core::{bail, Device, Result, Tensor};
use iuf_bf16::{Bf16Cpu, Epilogue, PackedB};

use super::fused::{rows_lhs, with_f32};
use super::linear::Activation;

/// A bf16 copy of a weight, packed for [`iuf_bf16`] and tagged with the generation of the
/// inference scope that packed it: reused within that scope, packed again in a later one (the
/// weights may have been trained in between).
#[derive(Clone, Default)]
pub struct PackedWeight(Arc<Mutex<Option<Tagged>>>);

/// A packing and the scope generation it belongs to.
type Tagged = (u64, Arc<PackedB>);

impl std::fmt::Debug for PackedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PackedWeight")
    }
}

impl PackedWeight {
    /// The packing of `weight` [out, in] (as `B = W^T`) for scope `generation`.
    pub fn get(&self, generation: u64, weight: &Tensor) -> Result<Arc<PackedB>> {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((g, p)) = slot.as_ref() {
            if *g == generation {
                return Ok(p.clone());
            }
        }
        let (dout, din) = weight.dims2()?;
        let packed = Arc::new(with_f32(weight, "bf16 weight", |w| {
            Ok(PackedB::pack(din, dout, w, (1, din)))
        })?);
        *slot = Some((generation, packed.clone()));
        Ok(packed)
    }
}

/// `act(x W^T + b)` over the last dimension with bf16 products: `x` [..., in] f32 on the CPU,
/// `packed` = W^T, `bias` [out]. No backward (inference scopes only).
pub fn linear_bf16(
    cpu: Bf16Cpu,
    x: &Tensor,
    packed: &PackedB,
    bias: &Tensor,
    act: Activation,
) -> Result<Tensor> {
    let (dims, rows, din) = super::as_rows(x);
    let dout = packed.n();
    if din != packed.k() || bias.elem_count() != dout {
        bail!(
            "linear_bf16: x {:?}, weight [{dout}, {}], bias {:?} do not fit",
            dims,
            packed.k(),
            bias.dims()
        );
    }
    let y = with_f32(x, "linear_bf16 x", |xs| {
        with_f32(bias, "linear_bf16 bias", |b| {
            let lhs = rows_lhs(xs, din);
            // Bias and activation on each block of rows while it is in cache (the same
            // arithmetic as `kernels::bias_act_rows`), into an output that is not zeroed first.
            let ep = Epilogue {
                bias: b,
                relu: act == Activation::Relu,
            };
            Ok(cpu.matmul_par_vec(rows, lhs, packed, Some(ep)))
        })
    })?;
    Tensor::from_vec(y, super::with_last(dims, dout), &Device::Cpu)
}

/// The feed-forward block `relu(x W1^T + b1) W2^T + b2` with bf16 products, both fused per block
/// of rows (`iuf_bf16::Bf16Cpu::ffn_par_vec`) so the hidden layer never leaves the cache: `x`
/// [..., in] f32 on the CPU, `p1` = W1^T, `p2` = W2^T. The same values as two [`linear_bf16`]
/// calls. No backward (inference scopes only).
pub fn ffn_bf16(
    cpu: Bf16Cpu,
    x: &Tensor,
    (p1, b1): (&PackedB, &Tensor),
    (p2, b2): (&PackedB, &Tensor),
) -> Result<Tensor> {
    let (dims, rows, din) = super::as_rows(x);
    let dout = p2.n();
    if din != p1.k() || p1.n() != p2.k() || b1.elem_count() != p1.n() || b2.elem_count() != dout {
        bail!(
            "ffn_bf16: x {:?}, weights [{}, {}] and [{dout}, {}], biases {:?} and {:?} do not fit",
            dims,
            p1.n(),
            p1.k(),
            p2.k(),
            b1.dims(),
            b2.dims()
        );
    }
    let y = with_f32(x, "ffn_bf16 x", |xs| {
        with_f32(b1, "ffn_bf16 bias 1", |b1| {
            with_f32(b2, "ffn_bf16 bias 2", |b2| {
                let lhs = rows_lhs(xs, din);
                let ep2 = Epilogue {
                    bias: b2,
                    relu: false,
                };
                Ok(cpu.ffn_par_vec(rows, lhs, p1, b1, p2, Some(ep2)))
            })
        })
    })?;
    Tensor::from_vec(y, super::with_last(dims, dout), &Device::Cpu)
}
