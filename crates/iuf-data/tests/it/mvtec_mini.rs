//! Real data: ../shared/datasets/mvtec-mini (MVTec AD, MVTec 3D-AD and Magnetic Tile images in
//! MVTec AD layout); the expected counts are those of its README.
use iuf_data::batch::{load_images, load_masks};
use iuf_data::image::{load_mask, load_rgb};
use iuf_data::{DatasetRoot, Layout};

use crate::shared;

fn mini() -> DatasetRoot {
    DatasetRoot::open(&shared().join("datasets/mvtec-mini")).unwrap()
}

#[test]
fn mvtec_mini_indexes_with_the_readme_counts() {
    let root = mini();
    assert_eq!(root.layout(), Layout::MvtecAd);
    assert_eq!(root.classes(), ["bottle", "magnetic_tile", "pill", "tire"]);
    let expected = [
        // class, train/good, test/good, test/defect, defect types
        (
            "bottle",
            209,
            20,
            63,
            vec!["broken_large", "broken_small", "contamination"],
        ),
        (
            "magnetic_tile",
            761,
            191,
            392,
            vec!["blowhole", "break", "crack", "fray", "uneven"],
        ),
        (
            "pill",
            267,
            26,
            141,
            vec![
                "color",
                "combined",
                "contamination",
                "crack",
                "faulty_imprint",
                "pill_type",
                "scratch",
            ],
        ),
        (
            "tire",
            210,
            25,
            87,
            vec!["combined", "contamination", "cut", "hole"],
        ),
    ];
    let indices = root.index_all().unwrap();
    for ((name, train, good, defect, types), index) in expected.iter().zip(&indices) {
        assert_eq!(&index.name, name);
        assert_eq!(index.train.len(), *train, "{name} train");
        assert_eq!(index.num_test_normal(), *good, "{name} test/good");
        assert_eq!(index.num_test_anomalous(), *defect, "{name} test/defect");
        assert_eq!(&index.defect_types(), types, "{name}");
        assert!(index
            .test
            .iter()
            .all(|s| s.mask.is_some() == s.is_anomalous));
    }
}

#[test]
fn mvtec_mini_grayscale_magnetic_tile_becomes_three_equal_channels() {
    let root = mini();
    let tile = root.index_class("magnetic_tile").unwrap();
    let img = load_rgb(&tile.test[0].path).unwrap();
    assert_eq!(img.dimensions(), (256, 256));
    assert!(img.pixels().all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2]));
    assert!(
        img.pixels().any(|p| p.0[0] != img.get_pixel(0, 0).0[0]),
        "not a blank image"
    );
    let batch = load_images(
        &[tile.train[0].path.clone(), tile.test[0].path.clone()],
        224,
    )
    .unwrap();
    assert_eq!(batch.len(), 2);
    let plane = 224 * 224;
    assert_eq!(batch[1].data[..plane].len(), plane);
    // Equal 8-bit channels, different per-channel normalisation: check through to_rgb.
    assert!(batch[1]
        .to_rgb()
        .pixels()
        .all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2]));
}

#[test]
fn mvtec_mini_labels_come_from_folders_even_with_empty_masks() {
    // The README: four `uneven` masks of magnetic_tile are empty although the image is defective.
    let root = mini();
    let tile = root.index_class("magnetic_tile").unwrap();
    let uneven: Vec<_> = tile
        .test
        .iter()
        .filter(|s| s.defect_type == "uneven")
        .collect();
    assert_eq!(uneven.len(), 103);
    let paths: Vec<_> = uneven.iter().map(|s| s.mask.clone()).collect();
    let empty = |size| {
        let masks = load_masks(&paths, size).unwrap();
        masks.iter().filter(|m| !m.iter().any(|&b| b)).count()
    };
    assert_eq!(empty(256), 4, "at the files' own size");
    // One more tiny defect vanishes under the nearest resize to the model size.
    assert_eq!(empty(224), 5);
    assert!(uneven.iter().all(|s| s.is_anomalous));
}

#[test]
fn mvtec_mini_bottle_mask_is_binary_and_localised() {
    let root = mini();
    let bottle = root.index_class("bottle").unwrap();
    let defect = bottle
        .test
        .iter()
        .find(|s| s.defect_type == "broken_large")
        .unwrap();
    let m = load_mask(defect.mask.as_ref().unwrap(), 224).unwrap();
    let positive = m.iter().filter(|&&b| b).count();
    assert_eq!(m.len(), 224 * 224);
    assert!(positive > 100 && positive < 224 * 224 / 2, "{positive}");
}
