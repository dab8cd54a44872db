//! The tiled view on synthetic features: its maps are stitched at the fused size, a defect in one
//! tile lights up that tile's part of the map, both memory layouts (shared, per position) learn,
//! save and reload bit for bit, and a tiled model refuses images without their tiles.

use candle_core::{Device, Tensor};
use iuf_data::image::tiles::Tiling;
use iuf_incremental::config::{Strategy, TileConfig};
use iuf_incremental::{ImageFeatures, Learner, NoProgress};

use crate::learner::{backbone, classes, features, memory_features, small_memory, tiny};

/// 2 x 2 tiles of 224 over a 448-pixel working image: a 448-pixel fused map.
fn tiled(per_position: bool) -> iuf_incremental::TrainConfig {
    let mut cfg = tiny();
    small_memory(&mut cfg);
    let mut t = TileConfig::new(448, 224, 0, &cfg.memory);
    t.per_position = per_position;
    cfg.tiles = Some(t);
    cfg
}

/// `n` images of class 0: whole-view features and four tiles' memory features each.
fn images(n: usize, seed: u64) -> ImageFeatures {
    let tiles: Vec<Tensor> = (0..4)
        .map(|t| memory_features(n, 0, seed * 10 + t))
        .collect();
    ImageFeatures {
        align: features(n, 0, seed),
        memory: Some(memory_features(n, 0, seed)),
        tiles: Some(Tensor::stack(&tiles, 1).unwrap()),
    }
}

/// `x` with a bright 2 x 2-cell spot in tile 3 (the bottom-right one) of image 0.
fn with_defect(x: &ImageFeatures) -> ImageFeatures {
    let tiles = x.tiles.as_ref().unwrap();
    let (n, t, c, h, w) = tiles.dims5().unwrap();
    let mut v: Vec<f32> = tiles.flatten_all().unwrap().to_vec1().unwrap();
    for ch in 0..c {
        for y in 12..14 {
            for xx in 12..14 {
                v[(((3 * c) + ch) * h + y) * w + xx] += 6.0;
            }
        }
    }
    ImageFeatures {
        tiles: Some(Tensor::from_vec(v, (n, t, c, h, w), &Device::Cpu).unwrap()),
        ..x.clone()
    }
}

#[test]
fn a_defect_in_one_tile_lights_up_its_part_of_the_stitched_map() {
    let dir = tempfile::tempdir().unwrap();
    let (train, held, test) = (images(8, 1), images(3, 2), images(3, 3));
    for per_position in [false, true] {
        let cfg = tiled(per_position);
        let mut l =
            Learner::new(&cfg, Strategy::Memory, &backbone(), classes(), &Device::Cpu).unwrap();
        assert_eq!(l.map_size(), 448);
        assert_eq!(
            l.tiling(),
            Some(Tiling {
                input: 448,
                tile: 224,
                overlap: 0
            })
        );
        let names = vec!["a".to_string()];
        l.learn_step(
            0,
            &names,
            &train.with_ids(&[0; 8]),
            Some(&held.with_ids(&[0; 3])),
            &NoProgress,
        )
        .unwrap();
        assert!(l.norms("a").unwrap()["tiles"].scale > 0.0);
        let good = l.predict_features(&test, None, &NoProgress).unwrap();
        assert_eq!(good.maps.dims(), [3, 448, 448]);
        let bad = l
            .predict_features(&with_defect(&test), None, &NoProgress)
            .unwrap();
        assert!(
            bad.scores[0] > good.scores[0] + 1.0,
            "per position {per_position}: {:?} vs {:?}",
            bad.scores,
            good.scores
        );
        // Only image 0 changed, and its map rose in the bottom-right quadrant only.
        assert_eq!(bad.scores[1..], good.scores[1..]);
        let diff = (bad.maps.get(0).unwrap() - good.maps.get(0).unwrap()).unwrap();
        let d: Vec<Vec<f32>> = diff.to_vec2().unwrap();
        let (mut at, mut top) = ((0, 0), f32::MIN);
        for (y, row) in d.iter().enumerate() {
            for (x, &v) in row.iter().enumerate() {
                if v > top {
                    (top, at) = (v, (y, x));
                }
            }
        }
        assert!(at.0 >= 224 && at.1 >= 224, "largest rise at {at:?}");
        assert!(d[..200].iter().flatten().all(|v| v.abs() < 1e-4));

        let path = dir.path().join(format!("tiles-{per_position}.safetensors"));
        l.save(&path).unwrap();
        let back = Learner::load(&path, &Device::Cpu).unwrap();
        assert_eq!(back.tiling(), l.tiling());
        let again = back.predict_features(&test, None, &NoProgress).unwrap();
        assert_eq!(
            good.maps.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            again.maps.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        let whole_only = ImageFeatures {
            tiles: None,
            ..test.clone()
        };
        let e = back
            .predict_features(&whole_only, None, &NoProgress)
            .err()
            .expect("a tiled model needs the tiles")
            .to_string();
        assert!(e.contains("tiles"), "{e}");
    }
}

#[test]
fn a_tiled_view_needs_a_memory_method_and_is_fixed_with_the_model() {
    let cfg = tiled(false);
    let e = Learner::new(&cfg, Strategy::Iuf, &backbone(), classes(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("tiled view"), "{e}");
    let mut l = Learner::new(&cfg, Strategy::Memory, &backbone(), classes(), &Device::Cpu).unwrap();
    let mut other = cfg.clone();
    other.tiles = None;
    assert!(l.set_config(&other).is_err());
    let mut bad = tiny();
    bad.tiles = Some(TileConfig::new(200, 224, 0, &bad.memory));
    assert!(bad.check().is_err());
}
