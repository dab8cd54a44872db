//! Integration tests of iuf-model: reference parity, gradients, forward behaviour, model files.

mod bf16;
mod file;
mod forward;
mod grads;
mod parity;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use iuf_model::{IufModel, ModelConfig};

/// A fresh model of `cfg` on the CPU, with the varmap holding its parameters.
pub fn build(cfg: &ModelConfig) -> (VarMap, IufModel) {
    let varmap = VarMap::new();
    let model = IufModel::new(
        cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    (varmap, model)
}
