//! The per-object memory at the default settings on Lite0-sized features (152 channels, 28 x 28
//! patches per 224 x 224 image): building one object's memory from 209 training images (bottle's
//! count in mvtec-mini: 164k patches, 65536 candidates, 4096 kept) and scoring one image (784 patches
//! against 4096) and a batch of 8, without and with the 224 x 224 map and image score. Random
//! features: the work does not depend on the values.
//! Compare with `python3 xtask/scripts/memory_torch_peer.py` (the same method in PyTorch).

use std::time::Duration;

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use iuf_model::{MemoryConfig, PatchMemory};

const CHANNELS: usize = 152;
const GRID: usize = 28;
const TRAIN_IMAGES: usize = 209;

fn bench_memory(c: &mut Criterion) {
    let dev = Device::Cpu;
    let train = Tensor::randn(0f32, 1f32, (TRAIN_IMAGES, CHANNELS, GRID, GRID), &dev).unwrap();
    let cfg = MemoryConfig::default();
    let mut g = c.benchmark_group("memory");
    g.sample_size(10).measurement_time(Duration::from_secs(40));
    g.bench_function("build_209_images", |b| {
        b.iter(|| PatchMemory::build(&train, &cfg).unwrap())
    });
    let memory = PatchMemory::build(&train, &cfg).unwrap();
    assert_eq!(memory.len(), cfg.patches);
    for batch in [1usize, 8] {
        let x = Tensor::randn(0f32, 1f32, (batch, CHANNELS, GRID, GRID), &dev).unwrap();
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(format!("score_b{batch}"), |b| {
            b.iter(|| memory.score(&x).unwrap())
        });
        // What the PyTorch peer times as "score": distances, the 224 x 224 map, the image score.
        g.bench_function(format!("score_map_b{batch}"), |b| {
            b.iter(|| {
                let map = iuf_model::anomaly_map(&memory.score(&x).unwrap(), (224, 224)).unwrap();
                iuf_model::image_scores(&map, iuf_model::SCORE_POOL).unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_memory);
criterion_main!(benches);
