//! Speed of the data pipeline: demo dataset generation (default config: 3 classes x 90 images at
//! 256x256), PIL-exact preprocessing of one image, and parallel decoding of a batch of real images
//! (../shared/datasets/mvtec-mini, skipped when absent); the views of a 1024 px line-camera image
//! (whole view at 224, 2 x 2 tiles of 512 each at 224).
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use iuf_data::batch::load_images;
use iuf_data::demo::{generate, DemoConfig};
use iuf_data::image::tiles::Tiling;
use iuf_data::image::{load_rgb, preprocess};
use iuf_data::DatasetRoot;

fn demo(c: &mut Criterion) {
    let mut group = c.benchmark_group("demo");
    group.sample_size(10);
    let dir = tempfile::tempdir().expect("temporary folder");
    group.bench_function("generate_default_270_images_256px", |b| {
        b.iter(|| generate(dir.path(), &DemoConfig::default()).expect("demo generation"))
    });
    group.finish();
}

fn pipeline(c: &mut Criterion) {
    let mini = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/datasets/mvtec-mini");
    let Ok(root) = DatasetRoot::open(&mini) else {
        eprintln!(
            "{} not found: skipping the real-image benchmarks",
            mini.display()
        );
        return;
    };
    let bottle = root
        .index_class("bottle")
        .expect("mvtec-mini bottle indexes");
    let img = load_rgb(&bottle.train[0].path).expect("decodes");
    c.bench_function("preprocess_256_to_224", |b| {
        b.iter(|| preprocess(&img, 224))
    });
    let paths: Vec<_> = bottle
        .train
        .iter()
        .take(32)
        .map(|s| s.path.clone())
        .collect();
    let mut group = c.benchmark_group("load_images");
    group.sample_size(20);
    group.bench_function("batch_32_png_256_to_224", |b| {
        b.iter(|| load_images(&paths, 224).expect("loads"))
    });
    group.finish();
    c.bench_function("index_class_magnetic_tile_1536_files", |b| {
        b.iter(|| root.index_class("magnetic_tile").expect("indexes"))
    });
}

fn views(c: &mut Criterion) {
    // A busy deterministic 1024 x 1024 picture (what the resampler reads does not change its work).
    let img = image::RgbImage::from_fn(1024, 1024, |x, y| {
        let v = x
            .wrapping_mul(2654435761)
            .wrapping_add(y.wrapping_mul(40503))
            >> 7;
        image::Rgb([v as u8, (v >> 8) as u8, (x ^ y) as u8])
    });
    let tiling = Tiling {
        input: 1024,
        tile: 512,
        overlap: 0,
    };
    let mut group = c.benchmark_group("views_1024px");
    group.bench_function("whole_view_to_224", |b| b.iter(|| preprocess(&img, 224)));
    group.bench_function("tiles_2x2_of_512_to_224", |b| {
        b.iter(|| tiling.cut(&img, 224))
    });
    group.finish();
}

criterion_group!(benches, demo, pipeline, views);
criterion_main!(benches);
