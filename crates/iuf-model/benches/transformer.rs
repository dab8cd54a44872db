//! Throughput of the `paper` network (C_f 272, D 256, 8 heads, 4 + 4 layers, FFN 1024) at batch 8
//! on 196 tokens, reported as images/s: inference of the UniAD reconstruction transformer alone
//! (comparable to the PyTorch UniAD), inference of the whole IUF model (discriminator included),
//! and one IUF training step (forward with jitter and dropout, backward of MSE + CE); and the
//! latency of the transformer on one image.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use iuf_model::{IufModel, Mode, ModelConfig};
use rand::rngs::StdRng;
use rand::SeedableRng;

const BATCH: usize = 8;
const CHANNELS: usize = 272;
const CLASSES: usize = 15;

fn device() -> Device {
    #[cfg(feature = "cuda")]
    if let Ok(d) = Device::new_cuda(0) {
        return d;
    }
    Device::Cpu
}

fn bench_transformer(c: &mut Criterion) {
    let dev = device();
    let cfg = ModelConfig::paper(CHANNELS, CLASSES);
    let varmap = VarMap::new();
    let model = IufModel::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev)).unwrap();
    let x = Tensor::rand(0f32, 1f32, (BATCH, CHANNELS, 14, 14), &dev).unwrap();
    let labels = Tensor::from_vec(
        (0..BATCH as u32)
            .map(|i| i % CLASSES as u32)
            .collect::<Vec<_>>(),
        BATCH,
        &dev,
    )
    .unwrap();

    let mut group = c.benchmark_group(format!("paper_transformer_b{BATCH}"));
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.bench_function("uniad_inference", |b| {
        b.iter(|| {
            let out = model.transformer().forward(&x, &mut Mode::Eval).unwrap();
            out.pred.to_device(&Device::Cpu).unwrap()
        })
    });
    group.bench_function("iuf_inference", |b| {
        b.iter(|| {
            let out = model.forward(&x, &mut Mode::Eval).unwrap();
            out.pred.to_device(&Device::Cpu).unwrap()
        })
    });
    let mut rng = StdRng::seed_from_u64(0);
    group.bench_function("train_step", |b| {
        b.iter(|| {
            let out = model.forward(&x, &mut Mode::Train(&mut rng)).unwrap();
            let rec = (&out.feature_rec - &x)
                .unwrap()
                .sqr()
                .unwrap()
                .mean_all()
                .unwrap();
            let ce = candle_nn::loss::cross_entropy(&out.logits, &labels).unwrap();
            let loss = (rec + ce).unwrap();
            loss.backward().unwrap()
        })
    });
    group.finish();

    // Latency of one image (what `iuf predict` pays per image).
    let x1 = x.narrow(0, 0, 1).unwrap().contiguous().unwrap();
    let mut group = c.benchmark_group("paper_transformer_b1");
    group.sample_size(20);
    group.bench_function("uniad_inference", |b| {
        b.iter(|| {
            let out = model.transformer().forward(&x1, &mut Mode::Eval).unwrap();
            out.pred.to_device(&Device::Cpu).unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, bench_transformer);
criterion_main!(benches);
