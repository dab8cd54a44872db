//! Name mapping from the reference PyTorch `state_dict` (UniAD / IUF) to this crate's parameters.
//!
//! The reference names already equal ours (see [`crate::transformer`]) except that
//! `nn.MultiheadAttention` packs q, k, v: `<attn>.in_proj_weight` [3D, D] (rows q | k | v) and
//! `<attn>.in_proj_bias` [3D] become `<attn>.{q,k,v}_proj.{weight,bias}`. Checkpoints saved from
//! `DataParallel`/`DistributedDataParallel` prefix every name with `module.`, and the UniAD model
//! wrapper puts the network under `reconstruction.` next to `backbone.` and `neck.`.

use candle_core::Tensor;

use crate::error::{ModelError, Result};

/// Maps reference tensor names to this crate's names.
///
/// - strips any leading `module.` prefixes, then a `reconstruction.` prefix;
/// - drops the frozen `backbone.*` and `neck.*` tensors (the backbone has its own weights);
/// - splits packed attention projections into `q_proj`, `k_proj`, `v_proj`;
/// - keeps every other name unchanged (the caller reports names the model does not know).
pub fn map_reference_state_dict(tensors: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>> {
    let mut out = Vec::with_capacity(tensors.len() + 8);
    for (name, tensor) in tensors {
        let mut short = name.as_str();
        while let Some(rest) = short.strip_prefix("module.") {
            short = rest;
        }
        if let Some(rest) = short.strip_prefix("reconstruction.") {
            short = rest;
        }
        if short.starts_with("backbone.") || short.starts_with("neck.") {
            continue;
        }
        let packed = [("in_proj_weight", "weight"), ("in_proj_bias", "bias")];
        let split = packed.iter().find_map(|(suffix, kind)| {
            short
                .strip_suffix(suffix)
                .and_then(|p| p.strip_suffix('.'))
                .map(|prefix| (prefix, *kind))
        });
        match split {
            Some((prefix, kind)) => {
                let rows = tensor.dim(0).map_err(|_| ModelError::Reference {
                    name: name.clone(),
                    reason: "packed q/k/v projection is a scalar".into(),
                })?;
                let expected_rank = if kind == "weight" { 2 } else { 1 };
                if rows % 3 != 0 || tensor.rank() != expected_rank {
                    return Err(ModelError::Reference {
                        name,
                        reason: format!(
                            "expected a packed q|k|v tensor of rank {expected_rank} with 3 D rows, found shape {:?}",
                            tensor.dims()
                        ),
                    });
                }
                let d = rows / 3;
                for (i, part) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
                    let t = tensor.narrow(0, i * d, d)?.contiguous()?;
                    out.push((format!("{prefix}.{part}.{kind}"), t));
                }
            }
            None => out.push((short.to_string(), tensor)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn splits_packed_projections_and_strips_prefixes() {
        let dev = Device::Cpu;
        let w = Tensor::arange(0f32, 12.0, &dev)
            .unwrap()
            .reshape((6, 2))
            .unwrap();
        let b = Tensor::arange(0f32, 6.0, &dev).unwrap();
        let other = Tensor::zeros(3, candle_core::DType::F32, &dev).unwrap();
        let mapped = map_reference_state_dict(vec![
            (
                "module.reconstruction.transformer.encoder.layers.0.self_attn.in_proj_weight"
                    .into(),
                w,
            ),
            (
                "module.transformer.encoder.layers.0.self_attn.in_proj_bias".into(),
                b,
            ),
            ("module.backbone._conv_stem.weight".into(), other.clone()),
            ("input_proj.bias".into(), other),
        ])
        .unwrap();
        let names: Vec<_> = mapped.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "transformer.encoder.layers.0.self_attn.q_proj.weight",
                "transformer.encoder.layers.0.self_attn.k_proj.weight",
                "transformer.encoder.layers.0.self_attn.v_proj.weight",
                "transformer.encoder.layers.0.self_attn.q_proj.bias",
                "transformer.encoder.layers.0.self_attn.k_proj.bias",
                "transformer.encoder.layers.0.self_attn.v_proj.bias",
                "input_proj.bias",
            ]
        );
        let k = mapped[1].1.to_vec2::<f32>().unwrap();
        assert_eq!(k, [[4.0, 5.0], [6.0, 7.0]]);
        let v_bias = mapped[5].1.to_vec1::<f32>().unwrap();
        assert_eq!(v_bias, [4.0, 5.0]);
    }

    #[test]
    fn rejects_a_packed_tensor_that_is_not_three_blocks() {
        let t = Tensor::zeros((5, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        let err = map_reference_state_dict(vec![("a.self_attn.in_proj_weight".into(), t)])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("a.self_attn.in_proj_weight") && err.contains("[5, 2]"),
            "{err}"
        );
    }
}
