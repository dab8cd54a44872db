//! Real photos (scikit-image's `chelsea` cat and `coffee` cup, resized to 224x224 and committed as
//! uint8 in tests/fixtures/photos_lite0.safetensors): the top-1 ImageNet class and the logits equal
//! PyTorch's. Reference values: xtask/scripts/backbone_photo_fixture.py (our plain-PyTorch
//! EfficientNet-Lite0 with the shared weights).

use candle_core::{DType, Device, Tensor};
use iuf_backbone::{EfficientNet, EfficientNetVariant};

use crate::common::{fixtures, lite0_tensors, max_abs_diff, var_builder};

/// The ImageNet normalisation of section 1, in the same order of f32 operations as the script.
fn normalise(u8_nhwc: &Tensor) -> Tensor {
    let mean = Tensor::new(&[0.485f32, 0.456, 0.406], &Device::Cpu)
        .unwrap()
        .reshape((1, 3, 1, 1))
        .unwrap();
    let std = Tensor::new(&[0.229f32, 0.224, 0.225], &Device::Cpu)
        .unwrap()
        .reshape((1, 3, 1, 1))
        .unwrap();
    let x = (u8_nhwc
        .permute((0, 3, 1, 2))
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        / 255.0)
        .unwrap();
    x.broadcast_sub(&mean).unwrap().broadcast_div(&std).unwrap()
}

#[test]
fn real_photos_get_pytorchs_imagenet_class_with_real_lite0_weights() {
    let path = fixtures().join("photos_lite0.safetensors");
    let fx = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let images = normalise(&fx["image_u8"]);
    let net = EfficientNet::new(EfficientNetVariant::Lite0, var_builder(lite0_tensors())).unwrap();
    let logits = net.logits(&images).unwrap();
    let want = &fx["logits"];
    let top1: Vec<u32> = logits.argmax(1).unwrap().to_vec1().unwrap();
    let want_top1: Vec<u32> = want.argmax(1).unwrap().to_vec1().unwrap();
    // 285 "Egyptian cat" for chelsea, 967 "espresso" for coffee (the script's printout).
    assert_eq!(want_top1, vec![285, 967]);
    assert_eq!(top1, want_top1);
    let diff = max_abs_diff(&logits, want);
    eprintln!("photo logits: max abs diff {diff:.2e}");
    assert!(diff < 1e-4, "{diff}");
}
