//! Shared helpers: locating ../shared, loading the real Lite0 weights, comparing tensors.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use iuf_backbone::{Backbone, EfficientNetConfig};

// `max_abs_diff`: the one copy in src/testing.rs, shared with the unit tests.
#[path = "../../src/testing.rs"]
mod testing;
pub use testing::max_abs_diff;

/// `../shared` beside the checkout (CI always has it).
pub fn shared() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

pub fn lite0_pth_path() -> PathBuf {
    shared().join("weights/efficientnet-lite0/efficientnet-lite0-57934424.pth")
}

pub fn fixtures() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The real EfficientNet-Lite0 ImageNet weights, read with our legacy .pth reader.
pub fn lite0_tensors() -> HashMap<String, Tensor> {
    let bytes = std::fs::read(lite0_pth_path()).expect("read the shared Lite0 .pth");
    iuf_backbone::pth::read_pth(&bytes)
        .expect("decode the legacy Lite0 checkpoint")
        .into_iter()
        .collect()
}

pub fn var_builder(tensors: HashMap<String, Tensor>) -> VarBuilder<'static> {
    VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu)
}

/// The Lite0 backbone of the default config, with the real weights.
pub fn lite0_backbone() -> Backbone {
    Backbone::new(&EfficientNetConfig::lite0(), var_builder(lite0_tensors())).unwrap()
}
