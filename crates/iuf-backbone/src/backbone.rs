//! The frozen feature extractor of every model: EfficientNet block outputs resized to the stride-16
//! grid and concatenated (section 2, the "MFCN" neck): `feature_align`.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use crate::config::EfficientNetConfig;
use crate::efficientnet::EfficientNet;
use crate::error::{Error, Result};
use crate::ops::resize_bilinear_align_corners;

/// EfficientNet plus the neck. Inference only: BatchNorm is folded and nothing has a gradient.
#[derive(Debug, Clone)]
pub struct Backbone {
    cfg: EfficientNetConfig,
    net: EfficientNet,
}

impl Backbone {
    /// Checks `cfg` and loads the network from lukemelas-named weights (see [`EfficientNet::new`]).
    pub fn new(cfg: &EfficientNetConfig, vb: VarBuilder<'_>) -> Result<Self> {
        cfg.check()?;
        Ok(Self {
            cfg: cfg.clone(),
            net: EfficientNet::new(cfg.variant, vb)?,
        })
    }

    /// Section 2: the outputs of `cfg.out_blocks`, each resized with bilinear interpolation
    /// (align_corners=True) to the stride-16 grid and concatenated along channels in level order.
    /// `images` `[B, 3, H, W]`, normalised with the ImageNet mean/std; output
    /// `[B, out_channels, ceil(H/16), ceil(W/16)]` (`[B, 192, 14, 14]` for Lite0 at 224x224).
    pub fn feature_align(&self, images: &Tensor) -> Result<Tensor> {
        let levels = self.net.block_outputs(images, &self.cfg.out_blocks)?;
        let (_, _, h, w) = images.dims4()?;
        let (grid_h, grid_w) = (h.div_ceil(16), w.div_ceil(16));
        let resized = levels
            .iter()
            .map(|level| resize_bilinear_align_corners(level, grid_h, grid_w))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&resized, 1)?)
    }

    /// `feature_align` and the memory features of the same images, from one forward pass (the
    /// memory's stride-8 and stride-16 blocks are among the neck's levels for every variant, and
    /// the network runs only as deep as the deepest block either needs).
    ///
    /// Memory features (ALGORITHM.md section 10, PatchCore's "locally aware" patches): the ends of
    /// the stride-8 and stride-16 stages, the stride-16 one resized bilinearly (align_corners=True)
    /// to the stride-8 grid, concatenated along channels, then averaged over each position's 3x3
    /// neighbourhood (stride 1; at the border only the positions inside the map count). Output
    /// `[B, memory_channels, ceil(H/8), ceil(W/8)]` (`[B, 152, 28, 28]` for Lite0 at 224x224).
    pub fn extract(&self, images: &Tensor) -> Result<(Tensor, Tensor)> {
        let mem_blocks = self.cfg.variant.memory_blocks();
        let mut blocks = self.cfg.out_blocks.clone();
        blocks.extend(mem_blocks);
        blocks.sort_unstable();
        blocks.dedup();
        let levels = self.net.block_outputs(images, &blocks)?;
        let level = |b: usize| &levels[blocks.iter().position(|&x| x == b).expect("requested")];
        let (_, _, h, w) = images.dims4()?;
        let (grid_h, grid_w) = (h.div_ceil(16), w.div_ceil(16));
        let resized = self
            .cfg
            .out_blocks
            .iter()
            .map(|&b| resize_bilinear_align_corners(level(b), grid_h, grid_w))
            .collect::<Result<Vec<_>>>()?;
        let align = Tensor::cat(&resized, 1)?;
        let fine = level(mem_blocks[0]);
        let (_, _, fh, fw) = fine.dims4()?;
        let coarse = resize_bilinear_align_corners(level(mem_blocks[1]), fh, fw)?;
        let memory = local_average_3x3(&Tensor::cat(&[fine, &coarse], 1)?)?;
        Ok((align, memory))
    }

    /// Channels of the memory features of [`Backbone::extract`] (152 for Lite0).
    pub fn memory_channels(&self) -> usize {
        self.cfg.variant.memory_channels()
    }

    /// Channels of `feature_align` (C_f: 192 for Lite0, 272 for B4).
    pub fn out_channels(&self) -> usize {
        self.cfg.out_channels()
    }

    pub fn config(&self) -> &EfficientNetConfig {
        &self.cfg
    }

    /// The underlying network (block outputs, ImageNet logits).
    pub fn efficientnet(&self) -> &EfficientNet {
        &self.net
    }
}

/// Mean over each position's 3x3 neighbourhood, stride 1, counting only positions inside the map
/// (PyTorch's `avg_pool2d(x, 3, 1, 1, count_include_pad=False)`). `x` `[B, C, H, W]`.
pub fn local_average_3x3(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let padded = x.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?;
    let sums = (padded.avg_pool2d_with_stride(3, 1)? * 9.0)?;
    let count = |i: usize, n: usize| 3 - usize::from(i == 0) - usize::from(i + 1 == n);
    let mut inv = Vec::with_capacity(h * w);
    for i in 0..h {
        for j in 0..w {
            inv.push(1.0 / (count(i, h) * count(j, w)) as f32);
        }
    }
    let inv = Tensor::from_vec(inv, (1, 1, h, w), x.device())?.to_dtype(x.dtype())?;
    Ok(sums.broadcast_mul(&inv)?)
}

impl Module for Backbone {
    /// Same as [`Backbone::feature_align`].
    fn forward(&self, images: &Tensor) -> candle_core::Result<Tensor> {
        self.feature_align(images).map_err(|e| match e {
            Error::Candle(e) => e,
            other => candle_core::Error::wrap(other),
        })
    }
}
