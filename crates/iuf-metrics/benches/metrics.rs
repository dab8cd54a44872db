//! Criterion benchmarks of iuf-metrics at the sizes real evaluations reach: image metrics over
//! 1M and 10M scores, pixel metrics over per-image 224x224 maps, PRO over 100 maps (224 and 256).

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use iuf_metrics::{
    auroc, auroc_multi, average_precision, f1_max, image_score, pro_auc, IMAGE_SCORE_POOL,
    PRO_MAX_FPR,
};

const SIDE: usize = 224;

/// xorshift64*: cheap deterministic data, no rand dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1) with 24 bits, like a sigmoid-free anomaly score.
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// `n` scores, about a quarter anomalous, anomalous ones shifted up so the ranking is not random.
fn scores_and_labels(n: usize, seed: u64) -> (Vec<f32>, Vec<bool>) {
    let mut rng = Rng(seed);
    (0..n)
        .map(|_| {
            let label = rng.next().is_multiple_of(4);
            let score = rng.unit() + if label { 0.3 } else { 0.0 };
            (score, label)
        })
        .unzip()
}

/// `count` 224x224 maps with `u8` masks: most images hold one rectangular defect scored higher.
fn maps_and_masks(count: usize, seed: u64) -> (Vec<Vec<f32>>, Vec<Vec<u8>>) {
    maps_and_masks_of(count, SIDE, seed)
}

/// [`maps_and_masks`] of `side x side`.
fn maps_and_masks_of(count: usize, side: usize, seed: u64) -> (Vec<Vec<f32>>, Vec<Vec<u8>>) {
    let mut rng = Rng(seed);
    (0..count)
        .map(|i| {
            let mut mask = vec![0u8; side * side];
            if !i.is_multiple_of(3) {
                let (w, h) = (8 + rng.next() as usize % 40, 8 + rng.next() as usize % 40);
                let (x0, y0) = (
                    rng.next() as usize % (side - w),
                    rng.next() as usize % (side - h),
                );
                for y in y0..y0 + h {
                    mask[y * side + x0..y * side + x0 + w].fill(255);
                }
            }
            let map = mask
                .iter()
                .map(|&m| rng.unit() + if m != 0 { 0.4 } else { 0.0 })
                .collect();
            (map, mask)
        })
        .unzip()
}

fn ranking(c: &mut Criterion) {
    let mut group = c.benchmark_group("ranking");
    group.sample_size(10);
    for n in [1_000_000usize, 10_000_000] {
        let (scores, labels) = scores_and_labels(n, 7);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("auroc", n), &n, |b, _| {
            b.iter(|| auroc(black_box(&scores), black_box(&labels)).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("average_precision", n), &n, |b, _| {
            b.iter(|| average_precision(black_box(&scores), black_box(&labels)).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("f1_max", n), &n, |b, _| {
            b.iter(|| f1_max(black_box(&scores), black_box(&labels)).unwrap())
        });
    }
    // Pixel AUROC as a class evaluation calls it: 200 maps of 224x224 (~10M pixels), u8 masks.
    let (maps, masks) = maps_and_masks(200, 11);
    let map_refs: Vec<&[f32]> = maps.iter().map(Vec::as_slice).collect();
    let mask_refs: Vec<&[u8]> = masks.iter().map(Vec::as_slice).collect();
    group.throughput(Throughput::Elements((200 * SIDE * SIDE) as u64));
    group.bench_function("pixel_auroc_multi/200x224x224", |b| {
        b.iter(|| auroc_multi(black_box(&map_refs), black_box(&mask_refs)).unwrap())
    });
    group.finish();
}

fn pro(c: &mut Criterion) {
    let mut group = c.benchmark_group("pro");
    group.sample_size(10);
    // 224: the backbone's maps; 256: the size the Python package's AU-PRO is measured at
    // against the numpy/scipy reference (crates/iuf-py/bench/au_pro.py).
    for side in [SIDE, 256] {
        let (maps, masks) = maps_and_masks_of(100, side, 13);
        let map_refs: Vec<&[f32]> = maps.iter().map(Vec::as_slice).collect();
        let mask_refs: Vec<&[u8]> = masks.iter().map(Vec::as_slice).collect();
        group.throughput(Throughput::Elements((100 * side * side) as u64));
        group.bench_function(format!("pro_auc/100x{side}x{side}"), |b| {
            b.iter(|| {
                pro_auc(
                    black_box(&map_refs),
                    black_box(&mask_refs),
                    side,
                    side,
                    PRO_MAX_FPR,
                )
                .unwrap()
            })
        });
    }
    group.finish();
}

fn pooling(c: &mut Criterion) {
    let (maps, _) = maps_and_masks(1, 17);
    let mut group = c.benchmark_group("image_score");
    group.throughput(Throughput::Elements((SIDE * SIDE) as u64));
    group.bench_function("224x224_k16", |b| {
        b.iter(|| image_score(black_box(&maps[0]), SIDE, SIDE, IMAGE_SCORE_POOL).unwrap())
    });
    group.finish();
}

criterion_group!(benches, ranking, pro, pooling);
criterion_main!(benches);
