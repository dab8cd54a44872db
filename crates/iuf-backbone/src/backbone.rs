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

impl Module for Backbone {
    /// Same as [`Backbone::feature_align`].
    fn forward(&self, images: &Tensor) -> candle_core::Result<Tensor> {
        self.feature_align(images).map_err(|e| match e {
            Error::Candle(e) => e,
            other => candle_core::Error::wrap(other),
        })
    }
}
