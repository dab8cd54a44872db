//! The epilogue of every convolution: add the per-channel bias (the folded BatchNorm shift) and apply
//! the activation, in place on CPU (one pass over memory instead of three), with candle ops elsewhere.

use candle_core::{CpuStorage, DType, InplaceOp1, Layout, Tensor};
use rayon::prelude::*;

use crate::config::Activation;
use crate::error::Result;

/// What follows a convolution's bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Epilogue {
    /// Nothing: the projection convs of the MBConv blocks.
    Linear,
    /// `min(max(x, 0), 6)`.
    Relu6,
    /// `x * sigmoid(x)`.
    Swish,
}

impl From<Activation> for Epilogue {
    fn from(a: Activation) -> Self {
        match a {
            Activation::Relu6 => Epilogue::Relu6,
            Activation::Swish => Epilogue::Swish,
        }
    }
}

impl Epilogue {
    #[inline(always)]
    pub(crate) fn apply(self, v: f32) -> f32 {
        match self {
            Epilogue::Linear => v,
            Epilogue::Relu6 => v.clamp(0.0, 6.0),
            Epilogue::Swish => v / (1.0 + (-v).exp()),
        }
    }

    /// Applies the activation to a row in place; a separate loop per variant so that the ReLU6
    /// and identity cases vectorise.
    #[inline(always)]
    pub(crate) fn apply_row(self, row: &mut [f32]) {
        match self {
            Epilogue::Linear => {}
            Epilogue::Relu6 => row.iter_mut().for_each(|v| *v = v.clamp(0.0, 6.0)),
            Epilogue::Swish => row.iter_mut().for_each(|v| *v = *v / (1.0 + (-*v).exp())),
        }
    }
}

/// Applies an activation with candle ops (any device, any float dtype).
pub fn activate(x: &Tensor, epilogue: Epilogue) -> Result<Tensor> {
    Ok(match epilogue {
        Epilogue::Linear => x.clone(),
        Epilogue::Relu6 => x.clamp(0f32, 6f32)?,
        Epilogue::Swish => x.silu()?,
    })
}

/// A per-channel bias kept both as a tensor (for other devices) and on the host (for the CPU
/// kernels, which would otherwise have to lock the tensor's storage on every call).
#[derive(Debug, Clone)]
pub(crate) struct ChannelBias {
    tensor: Tensor,
    host: Vec<f32>,
}

impl ChannelBias {
    pub(crate) fn new(tensor: Tensor) -> Result<Self> {
        let host = tensor.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        Ok(Self { tensor, host })
    }

    pub(crate) fn tensor(&self) -> &Tensor {
        &self.tensor
    }

    pub(crate) fn host(&self) -> &[f32] {
        &self.host
    }
}

/// `act(y + bias[c])` for `y` of shape `[B, C, ...]`. `y` must be a tensor that nothing else
/// references (a fresh matmul or conv output): on CPU it is overwritten in place.
pub(crate) fn bias_activation(y: Tensor, bias: &ChannelBias, epilogue: Epilogue) -> Result<Tensor> {
    if y.device().is_cpu() && y.dtype() == DType::F32 && y.is_contiguous() && y.rank() >= 2 {
        y.inplace_op1(&BiasActivation {
            bias: bias.host(),
            epilogue,
        })?;
        return Ok(y);
    }
    let mut shape = vec![1; y.rank()];
    shape[1] = bias.host().len();
    let y = y.broadcast_add(&bias.tensor().reshape(shape)?.to_dtype(y.dtype())?)?;
    activate(&y, epilogue)
}

/// The in-place CPU op behind [`bias_activation`].
struct BiasActivation<'a> {
    bias: &'a [f32],
    epilogue: Epilogue,
}

/// Below this many elements per task rayon's scheduling costs more than the work.
const MIN_TASK_ELEMENTS: usize = 16 * 1024;

impl InplaceOp1 for BiasActivation<'_> {
    fn name(&self) -> &'static str {
        "iuf-bias-activation"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("{}: expected f32 storage", self.name())
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("{}: expected a contiguous tensor", self.name())
        };
        let dims = layout.dims();
        let channels = dims[1];
        if channels != self.bias.len() {
            candle_core::bail!(
                "{}: tensor has {channels} channels, bias has {}",
                self.name(),
                self.bias.len()
            )
        }
        let plane: usize = dims[2..].iter().product();
        if plane == 0 {
            return Ok(());
        }
        let data = &mut data[start..end];
        let (bias, epilogue) = (self.bias, self.epilogue);
        data.par_chunks_mut(plane)
            .with_min_len(MIN_TASK_ELEMENTS.div_ceil(plane))
            .enumerate()
            .for_each(|(index, chunk)| {
                let b = bias[index % channels];
                match epilogue {
                    Epilogue::Linear => chunk.iter_mut().for_each(|v| *v += b),
                    Epilogue::Relu6 => chunk.iter_mut().for_each(|v| *v = (*v + b).clamp(0.0, 6.0)),
                    Epilogue::Swish => chunk
                        .iter_mut()
                        .for_each(|v| *v = Epilogue::Swish.apply(*v + b)),
                }
            });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn in_place_epilogue_equals_candle_ops() -> Result<()> {
        let dev = Device::Cpu;
        let x = (Tensor::randn(0f32, 4.0, (2, 3, 5, 7), &dev)?).contiguous()?;
        let bias = ChannelBias::new(Tensor::new(&[0.5f32, -1.0, 7.0], &dev)?)?;
        for epilogue in [Epilogue::Linear, Epilogue::Relu6, Epilogue::Swish] {
            let expected = activate(
                &x.broadcast_add(&bias.tensor().reshape((1, 3, 1, 1))?)?,
                epilogue,
            )?;
            let got = bias_activation(x.copy()?, &bias, epilogue)?;
            let diff = (got - expected)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-6, "{epilogue:?}: {diff}");
        }
        Ok(())
    }
}
