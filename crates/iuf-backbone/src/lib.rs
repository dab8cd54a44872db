//! iuf-backbone: the frozen pretrained EfficientNet feature extractor and the neck that turns its
//! block outputs into `feature_align` (section 2 of ALGORITHM.md), plus a reader for PyTorch
//! checkpoints (`pth`) and, behind the `fetch` feature, the download/cache of the pretrained weights.
//!
//! ```no_run
//! # fn main() -> iuf_backbone::Result<()> {
//! use candle_core::{DType, Device, Tensor};
//! use iuf_backbone::{Backbone, EfficientNetConfig};
//! let bytes = std::fs::read("efficientnet-lite0.safetensors").unwrap();
//! let vb = candle_nn::VarBuilder::from_buffered_safetensors(bytes, DType::F32, &Device::Cpu)?;
//! let backbone = Backbone::new(&EfficientNetConfig::lite0(), vb)?;
//! let images = Tensor::zeros((1, 3, 224, 224), DType::F32, &Device::Cpu)?;
//! let features = backbone.feature_align(&images)?; // [1, 192, 14, 14]
//! # Ok(()) }
//! ```

mod backbone;
mod config;
mod efficientnet;
mod error;
#[cfg(feature = "fetch")]
pub mod fetch;
pub mod ops;
pub mod pth;
#[cfg(test)]
mod testing;

pub use backbone::{local_average_3x3, Backbone};
pub use config::{
    Activation, Architecture, BlockSpec, EfficientNetConfig, EfficientNetVariant, SqueezeExcite,
    StemHead, VariantSpec,
};
pub use efficientnet::EfficientNet;
pub use error::{Error, Result};
pub use ops::resize_bilinear_align_corners;
