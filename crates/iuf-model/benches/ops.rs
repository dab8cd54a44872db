//! Fused CPU layer norm and softmax (`iuf_model::ops`) against the plain candle composition, at the
//! shapes of the `paper` transformer at batch 8: layer norm on [8, 196, 256], softmax on the
//! attention scores [8 * 8 heads, 196, 196]. Forward alone and forward + backward.

use candle_core::{Device, Tensor, Var};
use criterion::{criterion_group, criterion_main, Criterion};
use iuf_model::ops;

type LayerNormFn = fn(&Tensor, &Tensor, &Tensor, f64) -> candle_core::Result<Tensor>;
type SoftmaxFn = fn(&Tensor) -> candle_core::Result<Tensor>;

fn bench_layer_norm(c: &mut Criterion) {
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::randn(0f32, 1f32, (8, 196, 256), &dev).unwrap()).unwrap();
    let w = Var::from_tensor(&Tensor::randn(1f32, 0.1f32, 256, &dev).unwrap()).unwrap();
    let b = Var::from_tensor(&Tensor::randn(0f32, 0.1f32, 256, &dev).unwrap()).unwrap();
    let r = Tensor::randn(0f32, 1f32, (8, 196, 256), &dev).unwrap();
    let mut group = c.benchmark_group("layer_norm_8x196x256");
    group.sample_size(30);
    let variants: [(&str, LayerNormFn); 2] = [
        ("fused", ops::layer_norm),
        ("composed", ops::layer_norm_composed),
    ];
    for (name, f) in variants {
        group.bench_function(format!("{name}_forward"), |bench| {
            bench.iter(|| f(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5).unwrap())
        });
        group.bench_function(format!("{name}_forward_backward"), |bench| {
            bench.iter(|| {
                let y = f(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5).unwrap();
                (y * &r).unwrap().sum_all().unwrap().backward().unwrap()
            })
        });
    }
    group.finish();
}

fn bench_softmax(c: &mut Criterion) {
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::randn(0f32, 3f32, (64, 196, 196), &dev).unwrap()).unwrap();
    let r = Tensor::randn(0f32, 1f32, (64, 196, 196), &dev).unwrap();
    let mut group = c.benchmark_group("softmax_64x196x196");
    group.sample_size(20);
    let variants: [(&str, SoftmaxFn); 2] = [
        ("fused", ops::softmax_last_dim),
        ("composed", ops::softmax_last_dim_composed),
    ];
    for (name, f) in variants {
        group.bench_function(format!("{name}_forward"), |bench| {
            bench.iter(|| f(x.as_tensor()).unwrap())
        });
        group.bench_function(format!("{name}_forward_backward"), |bench| {
            bench.iter(|| {
                let y = f(x.as_tensor()).unwrap();
                (y * &r).unwrap().sum_all().unwrap().backward().unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_layer_norm, bench_softmax);
criterion_main!(benches);
