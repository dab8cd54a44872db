//! The small-defect benchmark generator: layout and indexing, determinism, mask sizes against the
//! requested defect sizes, defects on the product, good images that differ, and safe overwriting.
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use iuf_data::demo::small_defects::{
    defect_type, existing, generate, parse_defect_type, DefectKind, Product, SmallDefectsConfig,
    MARKER_FILE,
};
use iuf_data::{DatasetRoot, Error};

/// Every file under `dir`, relative path -> bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                let rel = path
                    .strip_prefix(base)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn rgb(path: &Path) -> image::RgbImage {
    image::open(path).unwrap().to_rgb8()
}

fn gray(path: &Path) -> image::GrayImage {
    image::open(path).unwrap().to_luma8()
}

#[test]
fn small_defects_index_as_mvtec_with_one_folder_per_kind_and_size() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SmallDefectsConfig::tiny();
    let summary = generate(dir.path(), &cfg).unwrap();
    assert_eq!(summary.products, ["brushed_metal", "pcb"]);
    assert_eq!(summary.images, cfg.num_images());
    assert_eq!(summary.images, 2 * (3 + 2 + 2 * 3 * 4));
    assert_eq!(summary.masks, 2 * 2 * 3 * 4);
    // A finished set is recognised for reuse; another config, or a missing file, is not.
    assert_eq!(
        existing(dir.path(), &cfg).unwrap(),
        ["brushed_metal", "pcb"]
    );
    let other = SmallDefectsConfig {
        seed: 1,
        ..cfg.clone()
    };
    assert!(existing(dir.path(), &other).is_none());
    let root = DatasetRoot::open(dir.path()).unwrap();
    assert_eq!(root.classes(), ["brushed_metal", "pcb"]);
    let mut expected: Vec<String> = DefectKind::ALL
        .iter()
        .flat_map(|&k| cfg.sizes.iter().map(move |&s| defect_type(k, s)))
        .collect();
    expected.sort();
    for index in root.index_all().unwrap() {
        assert_eq!(index.train.len(), 3);
        assert_eq!(
            (index.num_test_normal(), index.num_test_anomalous()),
            (2, 24)
        );
        assert_eq!(index.defect_types(), expected);
        for s in index.test.iter().filter(|s| s.is_anomalous) {
            let mask = s.mask.as_ref().unwrap();
            assert!(mask.ends_with(format!(
                "ground_truth/{}/{}_mask.png",
                s.defect_type,
                s.path.file_stem().unwrap().to_string_lossy()
            )));
            assert_eq!(image::image_dimensions(mask).unwrap(), (256, 256));
            assert!(parse_defect_type(&s.defect_type).is_some());
        }
    }
    let one = root.index_class("pcb").unwrap().train[0].path.clone();
    fs::remove_file(&one).unwrap();
    assert!(existing(dir.path(), &cfg).is_none());
}

#[test]
fn small_defects_are_deterministic_per_seed_and_subsets_keep_their_images() {
    let (a, b, c, d) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let cfg = SmallDefectsConfig {
        train: 2,
        test_good: 1,
        per_size: 1,
        sizes: vec![4, 16],
        ..SmallDefectsConfig::tiny()
    };
    generate(a.path(), &cfg).unwrap();
    generate(b.path(), &cfg).unwrap();
    generate(
        c.path(),
        &SmallDefectsConfig {
            seed: 1,
            ..cfg.clone()
        },
    )
    .unwrap();
    let subset = SmallDefectsConfig {
        products: vec![Product::Pcb],
        kinds: vec![DefectKind::Crack],
        sizes: vec![16],
        ..cfg.clone()
    };
    generate(d.path(), &subset).unwrap();
    let (sa, sb, sc, sd) = (
        snapshot(a.path()),
        snapshot(b.path()),
        snapshot(c.path()),
        snapshot(d.path()),
    );
    assert!(sa == sb, "same seed, identical bytes");
    assert_eq!(sa.keys().collect::<Vec<_>>(), sc.keys().collect::<Vec<_>>());
    let images = sa.keys().filter(|k| k.ends_with(".png")).count();
    let differing = sa
        .iter()
        .filter(|(k, v)| k.ends_with(".png") && sc[*k] != **v)
        .count();
    assert_eq!(
        differing, images,
        "another seed changes every image and mask"
    );
    for (k, v) in sd.iter().filter(|(k, _)| *k != MARKER_FILE) {
        assert!(
            sa[k] == *v,
            "{k}: a subset gives the same image as the full set"
        );
    }
}

#[test]
fn small_defect_masks_match_the_requested_size_and_lie_on_the_product() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SmallDefectsConfig {
        seed: 7,
        train: 1,
        test_good: 1,
        per_size: 4,
        sizes: vec![4, 8, 16, 32],
        ..SmallDefectsConfig::tiny()
    };
    generate(dir.path(), &cfg).unwrap();
    let root = DatasetRoot::open(dir.path()).unwrap();
    for index in root.index_all().unwrap() {
        let good = rgb(&index.test.iter().find(|s| !s.is_anomalous).unwrap().path);
        for s in index.test.iter().filter(|s| s.is_anomalous) {
            let (kind, size) = parse_defect_type(&s.defect_type).unwrap();
            let d = size as f32;
            let mask = gray(s.mask.as_ref().unwrap());
            assert!(mask.pixels().all(|p| p.0[0] == 0 || p.0[0] == 255));
            let on: Vec<(u32, u32)> = mask
                .enumerate_pixels()
                .filter(|(_, _, p)| p.0[0] == 255)
                .map(|(x, y, _)| (x, y))
                .collect();
            let area = on.len() as f32;
            let (x0, x1) = (
                on.iter().map(|p| p.0).min().unwrap(),
                on.iter().map(|p| p.0).max().unwrap(),
            );
            let (y0, y1) = (
                on.iter().map(|p| p.1).min().unwrap(),
                on.iter().map(|p| p.1).max().unwrap(),
            );
            let extent = (x1 - x0 + 1).max(y1 - y0 + 1) as f32;
            let what = format!("{}: area {area}, extent {extent}", s.path.display());
            match kind {
                DefectKind::Spot | DefectKind::MissingPiece => {
                    let disc = std::f32::consts::PI * d * d / 4.0;
                    assert!((0.6 * disc..=1.5 * disc).contains(&area), "{what}");
                    assert!((0.75 * d..=1.6 * d + 1.0).contains(&extent), "{what}");
                }
                DefectKind::Scratch | DefectKind::Crack => {
                    // 3d..5d long; width max(d/4, 1) or max(d/8, 1); a crack's walk and fork
                    // shorten or widen its box.
                    let width = if kind == DefectKind::Scratch {
                        (d / 4.0).max(1.0)
                    } else {
                        (d / 8.0).max(1.0)
                    };
                    assert!((2.0 * d..=5.5 * d + 2.0).contains(&extent), "{what}");
                    assert!(
                        (0.5 * 2.0 * d * width..=2.0 * 6.5 * d * width).contains(&area),
                        "{what}"
                    );
                }
            }
            // On the product: the good image's pixels under the mask are not background.
            if index.name == "pcb" {
                let image = rgb(&s.path);
                let belt_like = on
                    .iter()
                    .filter(|&&(x, y)| {
                        let [r, g, b] = good.get_pixel(x, y).0;
                        let _ = image.get_pixel(x, y);
                        // Conveyor: grey, green not above red and blue by much.
                        (g as i32) < (r as i32).max(b as i32) + 15 && r < 100
                    })
                    .count();
                assert!(
                    belt_like * 10 < on.len(),
                    "{what}: {belt_like} pixels over the conveyor"
                );
            }
        }
    }
}

#[test]
fn small_defect_good_images_differ_from_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SmallDefectsConfig {
        train: 3,
        test_good: 1,
        per_size: 1,
        sizes: vec![4],
        ..SmallDefectsConfig::tiny()
    };
    generate(dir.path(), &cfg).unwrap();
    for product in ["brushed_metal", "pcb"] {
        let images: Vec<image::RgbImage> = (0..3)
            .map(|i| rgb(&dir.path().join(format!("{product}/train/good/{i:03}.png"))))
            .collect();
        for (i, j) in [(0, 1), (0, 2), (1, 2)] {
            let (a, b) = (&images[i], &images[j]);
            let diffs: Vec<f32> = a
                .as_raw()
                .iter()
                .zip(b.as_raw())
                .map(|(&x, &y)| (x as f32 - y as f32).abs())
                .collect();
            let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
            // Texture differs everywhere; the board's structure moves between images.
            let large = diffs.iter().filter(|&&d| d > 30.0).count() as f32 / diffs.len() as f32;
            let moved = product == "brushed_metal" || large > 0.005;
            assert!(
                mean > 2.5 && moved,
                "{product} {i} vs {j}: mean difference {mean}, {large} of the values by more than 30"
            );
        }
    }
}

#[test]
fn small_defects_overwrite_only_their_own_output() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SmallDefectsConfig {
        train: 2,
        test_good: 1,
        per_size: 1,
        sizes: vec![4],
        ..SmallDefectsConfig::tiny()
    };
    generate(
        dir.path(),
        &SmallDefectsConfig {
            train: 3,
            ..cfg.clone()
        },
    )
    .unwrap();
    // A smaller rerun leaves no stale files behind, and no temporary files.
    generate(
        dir.path(),
        &SmallDefectsConfig {
            products: vec![Product::Pcb],
            ..cfg.clone()
        },
    )
    .unwrap();
    let root = DatasetRoot::open(dir.path()).unwrap();
    assert_eq!(root.classes(), ["pcb"]);
    assert_eq!(root.index_class("pcb").unwrap().train.len(), 2);
    assert!(snapshot(dir.path()).keys().all(|k| !k.ends_with(".tmp")));

    let foreign = tempfile::tempdir().unwrap();
    fs::create_dir_all(foreign.path().join("pcb/train/good")).unwrap();
    let err = generate(foreign.path(), &cfg).unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err}");
    assert!(
        foreign.path().join("pcb/train/good").is_dir(),
        "left untouched"
    );
}
