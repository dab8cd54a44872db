//! Fused CPU ops (`iuf_model::ops`) against the plain candle composition, at the shapes of the
//! `paper` transformer at batch 8: layer norm on [8, 196, 256], softmax on the attention scores
//! [8 * 8 heads, 196, 196], attention on [8, 196, 256] with 8 heads and dropout 0.1, the FFN's
//! first linear layer [1568, 256] -> 1024 with ReLU. Forward alone and forward + backward.

use candle_core::{Device, Tensor, Var};
use criterion::{criterion_group, criterion_main, Criterion};
use iuf_model::ops::{self, Activation, AttentionDropout};

type LayerNormFn = fn(&Tensor, &Tensor, &Tensor, f64) -> candle_core::Result<Tensor>;
type SoftmaxFn = fn(&Tensor) -> candle_core::Result<Tensor>;
type AttentionFn = fn(
    &Tensor,
    &Tensor,
    &Tensor,
    usize,
    Option<&Tensor>,
    Option<AttentionDropout>,
) -> candle_core::Result<Tensor>;
type LinearFn = fn(&Tensor, &Tensor, &Tensor, Activation) -> candle_core::Result<Tensor>;

/// Times the fused op and the composition in turn in `group`: `{variant}_{names.0}` runs
/// `run(f, false)` alone, `{variant}_{names.1}` runs `run(f, true)` and the backward of
/// `sum(y * r)`.
fn bench_fused_and_composed<F: Copy>(
    c: &mut Criterion,
    (group, samples): (&str, usize),
    variants: [(&str, F); 2],
    names: (&str, &str),
    r: &Tensor,
    run: impl Fn(F, bool) -> Tensor,
) {
    let mut group = c.benchmark_group(group);
    group.sample_size(samples);
    for (name, f) in variants {
        group.bench_function(format!("{name}_{}", names.0), |bench| {
            bench.iter(|| run(f, false))
        });
        group.bench_function(format!("{name}_{}", names.1), |bench| {
            bench.iter(|| {
                let y = run(f, true);
                (y * r).unwrap().sum_all().unwrap().backward().unwrap()
            })
        });
    }
    group.finish();
}

/// Forward alone and forward + backward.
const FORWARD: (&str, &str) = ("forward", "forward_backward");

fn bench_layer_norm(c: &mut Criterion) {
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::randn(0f32, 1f32, (8, 196, 256), &dev).unwrap()).unwrap();
    let w = Var::from_tensor(&Tensor::randn(1f32, 0.1f32, 256, &dev).unwrap()).unwrap();
    let b = Var::from_tensor(&Tensor::randn(0f32, 0.1f32, 256, &dev).unwrap()).unwrap();
    let r = Tensor::randn(0f32, 1f32, (8, 196, 256), &dev).unwrap();
    let variants: [(&str, LayerNormFn); 2] = [
        ("fused", ops::layer_norm),
        ("composed", ops::layer_norm_composed),
    ];
    bench_fused_and_composed(
        c,
        ("layer_norm_8x196x256", 30),
        variants,
        FORWARD,
        &r,
        |f, _| f(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5).unwrap(),
    );
}

fn bench_softmax(c: &mut Criterion) {
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::randn(0f32, 3f32, (64, 196, 196), &dev).unwrap()).unwrap();
    let r = Tensor::randn(0f32, 1f32, (64, 196, 196), &dev).unwrap();
    let variants: [(&str, SoftmaxFn); 2] = [
        ("fused", ops::softmax_last_dim),
        ("composed", ops::softmax_last_dim_composed),
    ];
    bench_fused_and_composed(
        c,
        ("softmax_64x196x196", 20),
        variants,
        FORWARD,
        &r,
        |f, _| f(x.as_tensor()).unwrap(),
    );
}

fn bench_attention(c: &mut Criterion) {
    let dev = Device::Cpu;
    let var =
        |_: u8| Var::from_tensor(&Tensor::randn(0f32, 1f32, (8, 196, 256), &dev).unwrap()).unwrap();
    let (q, k, v) = (var(0), var(1), var(2));
    let r = Tensor::randn(0f32, 1f32, (8, 196, 256), &dev).unwrap();
    let drop = Some(AttentionDropout { p: 0.1, seed: 1 });
    let (qd, kd, vd) = (
        q.as_tensor().detach(),
        k.as_tensor().detach(),
        v.as_tensor().detach(),
    );
    let variants: [(&str, AttentionFn); 2] = [
        ("fused", ops::attention),
        ("composed", ops::attention_composed),
    ];
    // Inference: detached inputs, no dropout; training: the variables, with dropout.
    bench_fused_and_composed(
        c,
        ("attention_8x196x256_8heads", 20),
        variants,
        ("inference", "train_forward_backward"),
        &r,
        |f, train| {
            if train {
                f(q.as_tensor(), k.as_tensor(), v.as_tensor(), 8, None, drop).unwrap()
            } else {
                f(&qd, &kd, &vd, 8, None, None).unwrap()
            }
        },
    );
}

fn bench_linear(c: &mut Criterion) {
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::randn(0f32, 1f32, (8, 196, 256), &dev).unwrap()).unwrap();
    let w = Var::from_tensor(&Tensor::randn(0f32, 0.05f32, (1024, 256), &dev).unwrap()).unwrap();
    let b = Var::from_tensor(&Tensor::zeros(1024, candle_core::DType::F32, &dev).unwrap()).unwrap();
    let r = Tensor::randn(0f32, 1f32, (8, 196, 1024), &dev).unwrap();
    let variants: [(&str, LinearFn); 2] =
        [("fused", ops::linear), ("composed", ops::linear_composed)];
    bench_fused_and_composed(
        c,
        ("linear_relu_1568x256x1024", 20),
        variants,
        FORWARD,
        &r,
        |f, _| {
            f(
                x.as_tensor(),
                w.as_tensor(),
                b.as_tensor(),
                Activation::Relu,
            )
            .unwrap()
        },
    );
}

/// bf16 products (iuf-bf16: AVX-512 `vdpbf16ps` and, where present, AMX `tdpbf16ps`; B packed once outside the timing, A converted inside)
/// against candle's f32 matmul (gemm's AVX-512 kernels, its own threading), both on the rayon pool,
/// A/B in one run. Shapes: 2048^3, the FFN's [1568, 256] x [256, 1024] and [1568, 1024] x
/// [1024, 256], the 256-wide projections at batch 8 and 1. Throughput is in FLOP (2 per
/// multiply-add): criterion's "elem/s" reads as FLOP/s.
fn bench_matmul_bf16(c: &mut Criterion) {
    let Some(cpu) = iuf_bf16::Bf16Cpu::detect() else {
        eprintln!("matmul_bf16: no avx512bf16 on this CPU, skipped");
        return;
    };
    let dev = Device::Cpu;
    let shapes: [(usize, usize, usize); 6] = [
        (2048, 2048, 2048),
        (1568, 1024, 256),
        (1568, 256, 1024),
        (1568, 256, 256),
        (196, 256, 256),
        (196, 1024, 256),
    ];
    for (m, n, k) in shapes {
        let mut group = c.benchmark_group(format!("matmul_{m}x{k}x{n}"));
        group.sample_size(if m * n * k > 1 << 30 { 10 } else { 30 });
        group.throughput(criterion::Throughput::Elements((2 * m * n * k) as u64));
        let a = Tensor::randn(0f32, 1f32, (m, k), &dev).unwrap();
        let b = Tensor::randn(0f32, 1f32, (k, n), &dev).unwrap();
        group.bench_function("f32_candle", |bench| bench.iter(|| a.matmul(&b).unwrap()));
        let av = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let bv = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let packed = iuf_bf16::PackedB::pack(k, n, &bv, (n, 1));
        let mut out = vec![0f32; m * n];
        let mut kernels = vec![("bf16_avx512", cpu.without_amx())];
        if cpu.amx() {
            kernels.push(("bf16_amx", cpu));
        }
        for (name, cpu) in kernels {
            group.bench_function(name, |bench| {
                bench.iter(|| {
                    let lhs = iuf_bf16::Lhs {
                        data: &av,
                        rs: k,
                        cs: 1,
                    };
                    cpu.matmul_par(
                        m,
                        lhs,
                        &packed,
                        iuf_bf16::Out {
                            data: &mut out,
                            rs: n,
                        },
                    );
                })
            });
        }
        group.finish();
    }
}

criterion_group!(
    benches,
    bench_layer_norm,
    bench_softmax,
    bench_attention,
    bench_linear,
    bench_matmul_bf16
);
criterion_main!(benches);
