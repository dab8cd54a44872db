//! Bad weights and inputs fail with errors that name the tensor and give the expected and found
//! shapes (real Lite0 weights from ../shared, edited).

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use iuf_backbone::{Backbone, EfficientNet, EfficientNetConfig, EfficientNetVariant, Error};

use crate::common::{lite0_backbone, lite0_tensors, var_builder};

#[test]
fn missing_tensor_is_named_with_its_expected_shape() {
    let mut tensors = lite0_tensors();
    tensors.remove("_blocks.3._depthwise_conv.weight");
    let err = EfficientNet::new(EfficientNetVariant::Lite0, var_builder(tensors)).unwrap_err();
    match &err {
        Error::MissingTensor { name, expected } => {
            assert_eq!(name, "_blocks.3._depthwise_conv.weight");
            assert_eq!(expected, &[144, 1, 5, 5]);
        }
        other => panic!("unexpected error {other}"),
    }
    assert!(err.to_string().contains("_blocks.3._depthwise_conv.weight"));
}

#[test]
fn misshaped_tensor_is_named_with_expected_and_found_shapes() {
    let mut tensors = lite0_tensors();
    tensors.insert(
        "_blocks.3._bn1.running_var".into(),
        Tensor::ones(10, DType::F32, &Device::Cpu).unwrap(),
    );
    let err = Backbone::new(&EfficientNetConfig::lite0(), var_builder(tensors)).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(&err, Error::TensorShape { name, expected, found }
            if name == "_blocks.3._bn1.running_var" && expected == &[144] && found == &[10]),
        "{msg}"
    );
    assert!(msg.contains("[144]") && msg.contains("[10]"), "{msg}");
}

#[test]
fn weights_of_another_variant_are_rejected_by_name() {
    // Lite0 weights loaded as Lite1 (21 blocks): the first difference is block 2's expansion.
    let err =
        EfficientNet::new(EfficientNetVariant::Lite1, var_builder(lite0_tensors())).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("_blocks."), "{msg}");
}

#[test]
fn truncated_safetensors_fail_cleanly() {
    let mut tensors: Vec<(String, Tensor)> = lite0_tensors().into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let dir = std::env::temp_dir().join(format!("iuf-backbone-truncated-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lite0.safetensors");
    candle_core::safetensors::save(&tensors.into_iter().collect(), &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    for cut in [0, 7, 100, bytes.len() / 2, bytes.len() - 1] {
        let result =
            VarBuilder::from_buffered_safetensors(bytes[..cut].to_vec(), DType::F32, &Device::Cpu)
                .map_err(Error::from)
                .and_then(|vb| Backbone::new(&EfficientNetConfig::lite0(), vb));
        assert!(result.is_err(), "cut {cut}");
    }
    // The whole file loads.
    let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, &Device::Cpu).unwrap();
    Backbone::new(&EfficientNetConfig::lite0(), vb).unwrap();
}

#[test]
fn images_must_be_rgb_float_batches() {
    let backbone = lite0_backbone();
    let gray = Tensor::zeros((1, 1, 32, 32), DType::F32, &Device::Cpu).unwrap();
    let err = backbone.feature_align(&gray).unwrap_err();
    assert!(matches!(err, Error::Input { .. }), "{err}");
    let bytes = Tensor::zeros((1, 3, 32, 32), DType::U8, &Device::Cpu).unwrap();
    assert!(backbone.feature_align(&bytes).is_err());
}

#[test]
fn bad_config_is_rejected_before_loading() {
    let cfg = EfficientNetConfig {
        variant: EfficientNetVariant::Lite0,
        out_blocks: vec![2, 99],
    };
    let err = Backbone::new(&cfg, var_builder(lite0_tensors())).unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
}
