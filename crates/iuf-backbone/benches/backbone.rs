//! Criterion benchmarks of the backbone at 224x224 on the machine's threads (2 here): EfficientNet-
//! Lite0 blocks 0-10 and `feature_align` at batch 1 and 8, and the direct depthwise kernel against
//! candle's grouped conv2d. The PyTorch peer is xtask/scripts/backbone_torch_bench.py, which also
//! prints both side by side from criterion's results.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use iuf_backbone::ops::{depthwise_conv2d_same, depthwise_conv2d_same_reference, Epilogue};
use iuf_backbone::{Backbone, EfficientNetConfig};

/// The real Lite0 weights from ../shared when present (speed does not depend on the values, so
/// zeros stand in elsewhere).
fn lite0_var_builder() -> VarBuilder<'static> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/weights/efficientnet-lite0/efficientnet-lite0-57934424.pth");
    match std::fs::read(&path) {
        Ok(bytes) => {
            let tensors: HashMap<String, Tensor> = iuf_backbone::pth::read_pth(&bytes)
                .expect("decode the Lite0 checkpoint")
                .into_iter()
                .collect();
            VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu)
        }
        Err(_) => VarBuilder::zeros(DType::F32, &Device::Cpu),
    }
}

fn lite0(c: &mut Criterion) {
    let backbone = Backbone::new(&EfficientNetConfig::lite0(), lite0_var_builder()).unwrap();
    let net = backbone.efficientnet();
    let mut group = c.benchmark_group("lite0_224");
    group.sample_size(20);
    for batch in [1usize, 8] {
        let images = Tensor::randn(0f32, 1.0, (batch, 3, 224, 224), &Device::Cpu).unwrap();
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::new("blocks_0_10", batch), &images, |b, x| {
            b.iter(|| net.block_outputs(x, &[10]).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("feature_align", batch), &images, |b, x| {
            b.iter(|| backbone.feature_align(x).unwrap())
        });
    }
    group.finish();
}

fn depthwise(c: &mut Criterion) {
    let mut group = c.benchmark_group("depthwise");
    group.sample_size(20);
    // Lite0 block 1 (96 channels, 112 -> 56, 3x3 stride 2) and block 4 (240 channels, 28x28, 5x5).
    for (name, channels, size, k, stride) in [
        ("b1_96x112_k3s2", 96, 112, 3, 2),
        ("b4_240x28_k5s1", 240, 28, 5, 1),
    ] {
        let x = Tensor::randn(0f32, 1.0, (1, channels, size, size), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 1.0, (channels, 1, k, k), &Device::Cpu).unwrap();
        let b = Tensor::zeros(channels, DType::F32, &Device::Cpu).unwrap();
        group.bench_function(BenchmarkId::new("direct", name), |bench| {
            bench.iter(|| depthwise_conv2d_same(&x, &w, &b, stride, Epilogue::Relu6).unwrap())
        });
        group.bench_function(BenchmarkId::new("candle_grouped", name), |bench| {
            bench.iter(|| {
                depthwise_conv2d_same_reference(&x, &w, &b, stride, Epilogue::Relu6).unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, lite0, depthwise);
criterion_main!(benches);
