//! Parity with the original PyTorch UniAD/IUF transformer, using the reference weights, inputs and
//! outputs in ../shared/fixtures/transformer_{nomask,mask}.safetensors (made by the fixture
//! script described in that folder's README.md; eval mode, batch 2, D 64, 4 heads, 4 + 4 layers).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use iuf_model::reference::map_reference_state_dict;
use iuf_model::{
    anomaly_map, assign_tensors, MissingTensors, Mode, Transformer, TransformerConfig,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures")
        .join(name)
}

/// The `config` metadata JSON of a fixture, as a `TransformerConfig`.
fn fixture_config(path: &Path) -> TransformerConfig {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let json = &meta.metadata().as_ref().unwrap()["config"];
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let us = |k: &str| v[k].as_u64().unwrap() as usize;
    assert_eq!(v["pos_embed"], "learned");
    assert_eq!(v["normalize_before"], false);
    assert_eq!(v["activation"], "relu");
    let size = |k: &str| {
        [
            v[k][0].as_u64().unwrap() as usize,
            v[k][1].as_u64().unwrap() as usize,
        ]
    };
    TransformerConfig {
        in_channels: us("in_channels"),
        hidden_dim: us("hidden_dim"),
        nheads: us("nhead"),
        num_encoder_layers: us("num_encoder_layers"),
        num_decoder_layers: us("num_decoder_layers"),
        dim_feedforward: us("dim_feedforward"),
        dropout: 0.1,
        feature_size: size("feature_size"),
        neighbor_mask: v["neighbor_mask"]
            .as_bool()
            .unwrap()
            .then(|| size("neighbor_size")),
        jitter: None,
        layer_norm_eps: 1e-5,
    }
}

/// Max of |a - b| / max(1, |b|): absolute error for values up to 1, relative above.
fn max_error(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
        .fold(0.0, f32::max)
}

fn check_fixture(name: &str) {
    let path = fixture(name);
    let cfg = fixture_config(&path);
    let dev = Device::Cpu;
    let all: HashMap<String, Tensor> = candle_core::safetensors::load(&path, &dev).unwrap();
    let weights: Vec<(String, Tensor)> = all
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("weights.")
                .map(|n| (n.to_string(), v.clone()))
        })
        .collect();
    let varmap = VarMap::new();
    let model = Transformer::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev)).unwrap();
    let mapped = map_reference_state_dict(weights).unwrap();
    assign_tensors(&varmap, mapped, MissingTensors::Error).unwrap();

    let cond: Vec<Tensor> = (0..cfg.num_encoder_layers)
        .map(|l| all[&format!("input.cond.{l}")].clone())
        .collect();
    let x = &all["input.feature_align"];
    let out = model
        .forward_with_cond(x, Some(&cond), &mut Mode::Eval)
        .unwrap();

    let mut errors = vec![(
        "encoder".to_string(),
        max_error(&out.encoder, &all["output.encoder"]),
    )];
    for (l, t) in out.decoder_layers.iter().enumerate() {
        errors.push((
            format!("decoder_layer.{l}"),
            max_error(t, &all[&format!("output.decoder_layer.{l}")]),
        ));
    }
    errors.push((
        "feature_rec".into(),
        max_error(&out.feature_rec, &all["output.feature_rec"]),
    ));
    errors.push((
        "pred_14".into(),
        max_error(&out.pred, &all["output.pred_14"]),
    ));
    let map = anomaly_map(&out.pred, (224, 224)).unwrap();
    errors.push(("pred_224".into(), max_error(&map, &all["output.pred_224"])));
    eprintln!("{name}: {errors:?}");
    for (what, e) in errors {
        assert!(
            e <= 1e-4,
            "{name}: {what} differs from the reference by {e}"
        );
    }
}

#[test]
fn fixture_parity_without_neighbor_mask() {
    check_fixture("transformer_nomask.safetensors");
}

#[test]
fn fixture_parity_with_neighbor_mask() {
    check_fixture("transformer_mask.safetensors");
}
