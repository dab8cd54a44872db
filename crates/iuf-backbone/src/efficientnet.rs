//! EfficientNet in the lukemelas naming (section 2), inference only: every BatchNorm (eps 1e-3) is
//! folded into the preceding convolution when the weights are loaded, convolutions use TF "SAME"
//! padding, pointwise convolutions are matmuls and depthwise ones run the direct kernel of `ops`.

use candle_core::{DType, Tensor, D};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use crate::config::{Architecture, BlockSpec, EfficientNetVariant};
use crate::error::{Error, Result};
use crate::ops::{
    bias_activation, conv2d_same, depthwise_conv2d_same, depthwise_conv2d_same_fused, ChannelBias,
    Epilogue,
};

/// BatchNorm epsilon of the TensorFlow-trained EfficientNets.
const BN_EPS: f64 = 1e-3;
/// Images per pass through the network on CPU (see `EfficientNet::run`).
const CPU_MICRO_BATCH: usize = 1;

/// Loads `name` under `vb` as f32 and checks its shape, with errors that name the tensor.
fn load(vb: &VarBuilder<'_>, name: &str, shape: &[usize]) -> Result<Tensor> {
    let full_name = match vb.prefix() {
        p if p.is_empty() => name.to_string(),
        p => format!("{p}.{name}"),
    };
    if !vb.contains_tensor(name) {
        return Err(Error::MissingTensor {
            name: full_name,
            expected: shape.to_vec(),
        });
    }
    // `get_unchecked` reads the stored shape; backends without stored tensors (zeros) only
    // implement the shaped `get`.
    let tensor = match vb.get_unchecked_dtype(name, DType::F32) {
        Ok(t) => t,
        Err(_) => vb.get_with_hints_dtype(shape, name, Default::default(), DType::F32)?,
    };
    if tensor.dims() != shape {
        return Err(Error::TensorShape {
            name: full_name,
            expected: shape.to_vec(),
            found: tensor.dims().to_vec(),
        });
    }
    Ok(tensor)
}

/// Loads convolution `conv` (no bias) and BatchNorm `bn` and returns the folded weight and bias:
/// `W' = W * g / sqrt(v + eps)`, `b' = beta - m * g / sqrt(v + eps)` (computed in f64).
fn load_conv_bn(
    conv: VarBuilder<'_>,
    bn: VarBuilder<'_>,
    shape: &[usize],
) -> Result<(Tensor, Tensor)> {
    let weight = load(&conv, "weight", shape)?.to_dtype(DType::F64)?;
    let c = [shape[0]];
    let gamma = load(&bn, "weight", &c)?.to_dtype(DType::F64)?;
    let beta = load(&bn, "bias", &c)?.to_dtype(DType::F64)?;
    let mean = load(&bn, "running_mean", &c)?.to_dtype(DType::F64)?;
    let var = load(&bn, "running_var", &c)?.to_dtype(DType::F64)?;
    let scale = (gamma / (var + BN_EPS)?.sqrt()?)?;
    let mut scale_shape = vec![1; shape.len()];
    scale_shape[0] = shape[0];
    let weight = weight.broadcast_mul(&scale.reshape(scale_shape)?)?;
    let bias = (beta - (mean * scale)?)?;
    Ok((weight.to_dtype(DType::F32)?, bias.to_dtype(DType::F32)?))
}

/// A 1x1 convolution (with folded BatchNorm) computed as `W [Cout, Cin] x X [Cin, H*W]` per image.
#[derive(Debug, Clone)]
struct Pointwise {
    weight: Tensor,
    bias: ChannelBias,
    epilogue: Epilogue,
}

impl Pointwise {
    fn new(
        conv: VarBuilder<'_>,
        bn: VarBuilder<'_>,
        cin: usize,
        cout: usize,
        epilogue: Epilogue,
    ) -> Result<Self> {
        let (weight, bias) = load_conv_bn(conv, bn, &[cout, cin, 1, 1])?;
        Ok(Self {
            weight: weight.reshape((cout, cin))?,
            bias: ChannelBias::new(bias)?,
            epilogue,
        })
    }

    /// The convolution without bias and activation, `[B, Cout, H, W]`.
    fn matmul(&self, x: &Tensor) -> Result<Tensor> {
        let (b, cin, h, w) = x.dims4()?;
        let cout = self.weight.dim(0)?;
        let x = x.reshape((b, cin, h * w))?;
        let y = self.weight.broadcast_as((b, cout, cin))?.matmul(&x)?;
        Ok(y.reshape((b, cout, h, w))?)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        bias_activation(self.matmul(x)?, &self.bias, self.epilogue)
    }
}

/// Squeeze-and-excitation (B networks): `x * sigmoid(W_e swish(W_r mean_hw(x) + b_r) + b_e)`.
#[derive(Debug, Clone)]
struct SqueezeExcitation {
    reduce_weight: Tensor,
    reduce_bias: Tensor,
    expand_weight: Tensor,
    expand_bias: Tensor,
}

impl SqueezeExcitation {
    fn new(vb: &VarBuilder<'_>, channels: usize, squeezed: usize) -> Result<Self> {
        let reduce = vb.pp("_se_reduce");
        let expand = vb.pp("_se_expand");
        Ok(Self {
            reduce_weight: load(&reduce, "weight", &[squeezed, channels, 1, 1])?
                .reshape((squeezed, channels))?,
            reduce_bias: load(&reduce, "bias", &[squeezed])?,
            expand_weight: load(&expand, "weight", &[channels, squeezed, 1, 1])?
                .reshape((channels, squeezed))?,
            expand_bias: load(&expand, "bias", &[channels])?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, _, _) = x.dims4()?;
        let pooled = x.flatten_from(2)?.mean(D::Minus1)?;
        let s = pooled
            .matmul(&self.reduce_weight.t()?)?
            .broadcast_add(&self.reduce_bias)?
            .silu()?;
        let s = s
            .matmul(&self.expand_weight.t()?)?
            .broadcast_add(&self.expand_bias)?;
        let gate = candle_nn::ops::sigmoid(&s)?.reshape((b, c, 1, 1))?;
        Ok(x.broadcast_mul(&gate)?)
    }
}

/// The depthwise convolution of a block, with folded BatchNorm.
#[derive(Debug, Clone)]
struct Depthwise {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    epilogue: Epilogue,
}

/// One MBConv block: expand (1x1) -> depthwise (kxk) -> [SE] -> project (1x1) [+ identity].
#[derive(Debug, Clone)]
struct MbConv {
    spec: BlockSpec,
    expand: Option<Pointwise>,
    depthwise: Depthwise,
    squeeze_excitation: Option<SqueezeExcitation>,
    project: Pointwise,
}

impl MbConv {
    fn new(vb: VarBuilder<'_>, spec: BlockSpec, epilogue: Epilogue) -> Result<Self> {
        let mid = spec.expanded_channels;
        let expand = if spec.expand_ratio != 1 {
            Some(Pointwise::new(
                vb.pp("_expand_conv"),
                vb.pp("_bn0"),
                spec.in_channels,
                mid,
                epilogue,
            )?)
        } else {
            None
        };
        let (weight, bias) = load_conv_bn(
            vb.pp("_depthwise_conv"),
            vb.pp("_bn1"),
            &[mid, 1, spec.kernel, spec.kernel],
        )?;
        let depthwise = Depthwise {
            weight,
            bias,
            stride: spec.stride,
            epilogue,
        };
        let squeeze_excitation = match spec.se_channels {
            Some(squeezed) => Some(SqueezeExcitation::new(&vb, mid, squeezed)?),
            None => None,
        };
        let project = Pointwise::new(
            vb.pp("_project_conv"),
            vb.pp("_bn2"),
            mid,
            spec.out_channels,
            Epilogue::Linear,
        )?;
        Ok(Self {
            spec,
            expand,
            depthwise,
            squeeze_excitation,
            project,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dw = &self.depthwise;
        // The expansion's bias and activation are applied by the depthwise kernel as it reads its
        // input: one pass less over the block's largest tensor.
        let mut h = match &self.expand {
            Some(expand) => depthwise_conv2d_same_fused(
                expand.matmul(x)?,
                &expand.bias,
                expand.epilogue,
                &dw.weight,
                &dw.bias,
                dw.stride,
                dw.epilogue,
            )?,
            None => depthwise_conv2d_same(x, &dw.weight, &dw.bias, dw.stride, dw.epilogue)?,
        };
        if let Some(se) = &self.squeeze_excitation {
            h = se.forward(&h)?;
        }
        let h = self.project.forward(&h)?;
        // Drop-connect is a training-time regulariser: in inference the skip is a plain sum.
        if self.spec.residual {
            Ok((h + x)?)
        } else {
            Ok(h)
        }
    }
}

/// EfficientNet with ImageNet classifier, loaded from lukemelas-named weights (`_conv_stem`, `_bn0`,
/// `_blocks.N.*`, `_conv_head`, `_bn1`, `_fc`).
#[derive(Debug, Clone)]
pub struct EfficientNet {
    variant: EfficientNetVariant,
    arch: Architecture,
    stem_weight: Tensor,
    stem_bias: ChannelBias,
    blocks: Vec<MbConv>,
    head: Pointwise,
    fc_weight: Tensor,
    fc_bias: Tensor,
    epilogue: Epilogue,
}

impl EfficientNet {
    /// Builds `variant` from weights named as in the original code (the root of `vb` holds
    /// `_conv_stem.weight`). Weights are read as f32 and the network computes in f32 on the
    /// VarBuilder's device. Fails with the tensor's name on a missing or misshaped weight.
    pub fn new(variant: EfficientNetVariant, vb: VarBuilder<'_>) -> Result<Self> {
        let arch = variant.architecture();
        let epilogue = Epilogue::from(arch.activation);
        let (stem_weight, stem_bias) = load_conv_bn(
            vb.pp("_conv_stem"),
            vb.pp("_bn0"),
            &[arch.stem_channels, 3, 3, 3],
        )?;
        let blocks_vb = vb.pp("_blocks");
        let blocks = arch
            .blocks
            .iter()
            .enumerate()
            .map(|(i, &spec)| MbConv::new(blocks_vb.pp(i), spec, epilogue))
            .collect::<Result<Vec<_>>>()?;
        let last = arch
            .blocks
            .last()
            .map_or(arch.stem_channels, |b| b.out_channels);
        let head = Pointwise::new(
            vb.pp("_conv_head"),
            vb.pp("_bn1"),
            last,
            arch.head_channels,
            epilogue,
        )?;
        let fc = vb.pp("_fc");
        let fc_weight = load(&fc, "weight", &[arch.num_classes, arch.head_channels])?;
        let fc_bias = load(&fc, "bias", &[arch.num_classes])?;
        Ok(Self {
            variant,
            stem_bias: ChannelBias::new(stem_bias)?,
            stem_weight,
            arch,
            blocks,
            head,
            fc_weight,
            fc_bias,
            epilogue,
        })
    }

    pub fn variant(&self) -> EfficientNetVariant {
        self.variant
    }

    pub fn architecture(&self) -> &Architecture {
        &self.arch
    }

    /// Number of MBConv blocks.
    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    fn check_images(images: &Tensor) -> Result<()> {
        let ok = images.rank() == 4 && images.dim(1)? == 3 && images.dtype() == DType::F32;
        if ok && images.dims().iter().all(|&d| d > 0) {
            return Ok(());
        }
        Err(Error::Input {
            expected: "a non-empty f32 tensor [B, 3, H, W] (normalised RGB)".into(),
            found: format!("{:?} {:?}", images.dtype(), images.dims()),
        })
    }

    /// The stem: 3x3 stride-2 convolution with asymmetric SAME padding, BatchNorm, activation.
    fn stem(&self, images: &Tensor) -> Result<Tensor> {
        let x = conv2d_same(images, &self.stem_weight, 2)?;
        bias_activation(x, &self.stem_bias, self.epilogue)
    }

    /// Runs the stem and blocks `0..=last` on one micro-batch; returns the outputs of the blocks in
    /// `keep` (in that order) and the last one.
    fn run_micro_batch(
        &self,
        images: &Tensor,
        last: usize,
        keep: &[usize],
    ) -> Result<(Vec<Tensor>, Tensor)> {
        let mut kept: Vec<Option<Tensor>> = vec![None; keep.len()];
        let mut x = self.stem(images)?;
        for (i, block) in self.blocks.iter().enumerate().take(last + 1) {
            x = block.forward(&x)?;
            for (slot, _) in kept.iter_mut().zip(keep).filter(|(_, &k)| k == i) {
                *slot = Some(x.clone());
            }
        }
        let kept = kept
            .into_iter()
            .map(|t| {
                t.ok_or_else(|| {
                    Error::Config(format!("a block of {keep:?} is beyond block {last}"))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((kept, x))
    }

    /// [`Self::run_micro_batch`] over the whole batch. On CPU a batch is run one image at a time
    /// (images in parallel) and the results concatenated: one image's activations stay in a
    /// core's caches (the stem output alone is 1.6 MB per 224x224 image), a batch's do not, which
    /// made batch 8 about three times slower per image in the early blocks.
    fn run(&self, images: &Tensor, last: usize, keep: &[usize]) -> Result<(Vec<Tensor>, Tensor)> {
        Self::check_images(images)?;
        let batch = images.dim(0)?;
        if !images.device().is_cpu() || batch <= CPU_MICRO_BATCH {
            return self.run_micro_batch(images, last, keep);
        }
        let mut kept: Vec<Vec<Tensor>> = vec![Vec::new(); keep.len()];
        let mut lasts = Vec::new();
        // The micro-batches run side by side on the rayon pool (each op inside one still splits
        // its work too): per image the ops are small enough that two threads on one image spend
        // a good part of the time waiting for each other, while two images on two threads keep
        // both busy (the backbone of `iuf predict` with 2 x 2 tiles: 80-86 -> 51-55 ms per image
        // on 2 cores). Each image's arithmetic is unchanged, so the features are bit-identical.
        let results: Vec<Result<(Vec<Tensor>, Tensor)>> = (0..batch)
            .into_par_iter()
            .step_by(CPU_MICRO_BATCH)
            .map(|start| {
                let micro = images.narrow(0, start, CPU_MICRO_BATCH.min(batch - start))?;
                self.run_micro_batch(&micro, last, keep)
            })
            .collect();
        for r in results {
            let (outs, out) = r?;
            for (all, one) in kept.iter_mut().zip(outs) {
                all.push(one);
            }
            lasts.push(out);
        }
        let kept = kept
            .iter()
            .map(|parts| Tensor::cat(parts, 0))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok((kept, Tensor::cat(&lasts, 0)?))
    }

    /// The output of every MBConv block, `[B, C_i, H_i, W_i]` each, for normalised images
    /// `[B, 3, H, W]`.
    pub fn forward_blocks(&self, images: &Tensor) -> Result<Vec<Tensor>> {
        let all: Vec<usize> = (0..self.blocks.len()).collect();
        Ok(self
            .run(images, self.blocks.len().saturating_sub(1), &all)?
            .0)
    }

    /// The outputs of the given blocks, in the given order; runs only as deep as the deepest one.
    pub fn block_outputs(&self, images: &Tensor, blocks: &[usize]) -> Result<Vec<Tensor>> {
        let Some(&last) = blocks.iter().max() else {
            return Ok(Vec::new());
        };
        if last >= self.blocks.len() {
            return Err(Error::Config(format!(
                "block {last} requested, but {} has blocks 0..={}",
                self.variant.model_name(),
                self.blocks.len() - 1
            )));
        }
        Ok(self.run(images, last, blocks)?.0)
    }

    /// ImageNet logits `[B, 1000]`: head 1x1 conv, global average pool, classifier (dropout is
    /// training-only).
    pub fn logits(&self, images: &Tensor) -> Result<Tensor> {
        let (_, x) = self.run(images, self.blocks.len().saturating_sub(1), &[])?;
        let x = self.head.forward(&x)?;
        let pooled = x.flatten_from(2)?.mean(D::Minus1)?;
        Ok(pooled
            .matmul(&self.fc_weight.t()?)?
            .broadcast_add(&self.fc_bias)?)
    }
}
