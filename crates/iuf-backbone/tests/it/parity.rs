//! Parity with PyTorch on real data: the shared fixture `efficientnet_lite0_features.safetensors`
//! (EfficientNet-Lite0 with the ImageNet weights of ../shared/weights, evaluation mode, two MVTec
//! images; produced by the original PyTorch code, see ../shared/fixtures/README.md).

use candle_core::Device;
use iuf_backbone::{Backbone, EfficientNet, EfficientNetConfig, EfficientNetVariant};

use crate::common::{lite0_backbone, lite0_tensors, max_abs_diff, shared, var_builder};

/// Largest allowed |ours - PyTorch| on block outputs and `feature_align`. Not 1e-4: the fixture is
/// itself float32 and differs from the exact (float64) result by up to 2.3e-4 on blocks 2-10,
/// because their values reach 70 and the projections cancel large terms
/// (xtask/scripts/backbone_fixture_rounding.py prints it; ours is within 1.2e-4 of float64), so no
/// float32 code with another summation order can match it to 1e-4 everywhere.
const BLOCK_TOLERANCE: f32 = 3e-4;
/// The mean difference is far below any element's rounding noise; a real bug moves it.
const MEAN_TOLERANCE: f32 = 3e-5;
/// Logits are small sums of pooled features: 1e-4 holds.
const LOGIT_TOLERANCE: f32 = 1e-4;

fn mean_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn fixture() -> std::collections::HashMap<String, candle_core::Tensor> {
    let path = shared().join("fixtures/efficientnet_lite0_features.safetensors");
    candle_core::safetensors::load(path, &Device::Cpu).expect("load the shared Lite0 fixture")
}

#[test]
fn real_lite0_every_block_output_and_logits_match_pytorch() {
    let fx = fixture();
    let net = EfficientNet::new(EfficientNetVariant::Lite0, var_builder(lite0_tensors())).unwrap();
    let images = &fx["input.tensor"];
    let blocks = net.forward_blocks(images).unwrap();
    assert_eq!(blocks.len(), 16);
    let mut worst = 0f32;
    for (i, got) in blocks.iter().enumerate() {
        let want = &fx[&format!("output.block.{i}")];
        let abs = max_abs_diff(got, want);
        let mean = mean_abs_diff(got, want);
        eprintln!("block {i}: max abs diff {abs:.2e}, mean abs diff {mean:.2e}");
        assert!(abs < BLOCK_TOLERANCE, "block {i}: max {abs}");
        assert!(mean < MEAN_TOLERANCE, "block {i}: mean {mean}");
        worst = worst.max(abs);
    }
    let logits = net.logits(images).unwrap();
    let abs = max_abs_diff(&logits, &fx["output.logits"]);
    eprintln!("logits: max abs diff {abs:.2e}; worst block abs diff {worst:.2e}");
    assert!(abs < LOGIT_TOLERANCE, "logits: {abs}");
    // The fixture's metadata records PyTorch's top-5 classes: [686, ...] and [427, ...].
    let top1: Vec<u32> = logits.argmax(1).unwrap().to_vec1().unwrap();
    assert_eq!(top1, vec![686, 427]);
}

#[test]
fn real_lite0_feature_align_matches_pytorch() {
    let fx = fixture();
    let backbone = lite0_backbone();
    assert_eq!(backbone.out_channels(), 192);
    let aligned = backbone.feature_align(&fx["input.tensor"]).unwrap();
    assert_eq!(aligned.dims(), &[2, 192, 14, 14]);
    let abs = max_abs_diff(&aligned, &fx["output.aligned"]);
    let mean = mean_abs_diff(&aligned, &fx["output.aligned"]);
    eprintln!("feature_align: max abs diff {abs:.2e}, mean abs diff {mean:.2e}");
    assert!(abs < BLOCK_TOLERANCE, "max {abs}");
    assert!(mean < MEAN_TOLERANCE, "mean {mean}");
}

/// EfficientNet-B4 (squeeze-excitation, swish, the paper's backbone) against our plain-PyTorch
/// model with random weights and BatchNorm statistics, saved in the legacy format under the
/// lukemelas names. The 78 MB fixture is too large to commit: make it with
/// `python3 xtask/scripts/backbone_b4_fixture.py --out DIR` and run with `IUF_B4_FIXTURE_DIR=DIR
/// cargo test -p iuf-backbone --test it -- --ignored`.
#[test]
#[ignore = "needs IUF_B4_FIXTURE_DIR from xtask/scripts/backbone_b4_fixture.py (78 MB)"]
fn random_b4_legacy_checkpoint_matches_pytorch() {
    let dir = std::path::PathBuf::from(
        std::env::var_os("IUF_B4_FIXTURE_DIR").expect("set IUF_B4_FIXTURE_DIR"),
    );
    let bytes = std::fs::read(dir.join("efficientnet-b4-random.pth")).unwrap();
    let tensors = iuf_backbone::pth::read_pth(&bytes)
        .unwrap()
        .into_iter()
        .collect();
    let fx = candle_core::safetensors::load(
        dir.join("efficientnet_b4_random_features.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let backbone = Backbone::new(&EfficientNetConfig::b4(), var_builder(tensors)).unwrap();
    let images = &fx["input.tensor"];
    let blocks = backbone.efficientnet().forward_blocks(images).unwrap();
    assert_eq!(blocks.len(), 32);
    let relative = |a: &candle_core::Tensor, b: &candle_core::Tensor| {
        let scale = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        max_abs_diff(a, b) / scale.to_scalar::<f32>().unwrap().max(1e-6)
    };
    for (i, got) in blocks.iter().enumerate() {
        let r = relative(got, &fx[&format!("output.block.{i}")]);
        eprintln!("b4 block {i}: max diff / max |value| = {r:.2e}");
        assert!(r < 1e-5, "block {i}: {r}");
    }
    let logits = backbone.efficientnet().logits(images).unwrap();
    let r = relative(&logits, &fx["output.logits"]);
    eprintln!("b4 logits: {r:.2e}");
    assert!(r < 1e-5);
    let aligned = backbone.feature_align(images).unwrap();
    assert_eq!(aligned.dims(), &[1, 272, 8, 8]);
    assert!(relative(&aligned, &fx["output.aligned"]) < 1e-5);
}

#[test]
fn real_lite0_feature_align_follows_the_input_size() {
    // The stride-16 grid is ceil(H/16) x ceil(W/16) for any size (TF SAME keeps ceil at each stride).
    let backbone = lite0_backbone();
    let images = candle_core::Tensor::randn(0f32, 1.0, (1, 3, 100, 60), &Device::Cpu).unwrap();
    let aligned = backbone.feature_align(&images).unwrap();
    assert_eq!(aligned.dims(), &[1, 192, 7, 4]);
    let blocks = backbone
        .efficientnet()
        .block_outputs(&images, &[10, 0])
        .unwrap();
    assert_eq!(blocks[0].dims(), &[1, 112, 7, 4]);
    assert_eq!(blocks[1].dims(), &[1, 16, 50, 30]);
}

/// The memory features (stride-8 block 4 and stride-16 block 10, the latter resized to 28x28,
/// concatenated, 3x3 neighbourhood mean without the padding) against the same recipe written out
/// with loops on the PyTorch fixture's block outputs; `feature_align` of the same pass equals
/// `Backbone::feature_align` exactly.
#[test]
fn real_lite0_memory_features_match_the_recipe_on_pytorch_blocks() {
    let fx = fixture();
    let backbone = lite0_backbone();
    assert_eq!(backbone.memory_channels(), 152);
    let images = &fx["input.tensor"];
    let (align, memory) = backbone.extract(images).unwrap();
    assert_eq!(
        max_abs_diff(&align, &backbone.feature_align(images).unwrap()),
        0.0
    );
    assert_eq!(memory.dims(), &[2, 152, 28, 28]);
    let fine = &fx["output.block.4"];
    let coarse =
        iuf_backbone::resize_bilinear_align_corners(&fx["output.block.10"], 28, 28).unwrap();
    let t = candle_core::Tensor::cat(&[fine, &coarse], 1).unwrap();
    let cat: Vec<Vec<Vec<Vec<f32>>>> = (0..2)
        .map(|b| t.get(b).unwrap().to_vec3::<f32>().unwrap())
        .collect();
    let mut want = vec![0f32; 2 * 152 * 28 * 28];
    for (b, img) in cat.iter().enumerate() {
        for (c, plane) in img.iter().enumerate() {
            for i in 0..28usize {
                for j in 0..28usize {
                    let (mut sum, mut n) = (0f32, 0f32);
                    for row in &plane[i.saturating_sub(1)..=(i + 1).min(27)] {
                        for v in &row[j.saturating_sub(1)..=(j + 1).min(27)] {
                            sum += v;
                            n += 1.0;
                        }
                    }
                    want[((b * 152 + c) * 28 + i) * 28 + j] = sum / n;
                }
            }
        }
    }
    let want = candle_core::Tensor::from_vec(want, (2, 152, 28, 28), &Device::Cpu).unwrap();
    let abs = max_abs_diff(&memory, &want);
    let mean = mean_abs_diff(&memory, &want);
    eprintln!("memory features: max abs diff {abs:.2e}, mean abs diff {mean:.2e}");
    assert!(abs < BLOCK_TOLERANCE, "max {abs}");
    assert!(mean < MEAN_TOLERANCE, "mean {mean}");
}
