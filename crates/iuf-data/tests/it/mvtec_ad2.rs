//! MVTec AD 2's layout (train/good, validation/good, test_public/{good,bad},
//! test_public/ground_truth/bad/<stem>_mask.png, unlabelled test_private*) built in a temporary
//! folder.
use std::fs;
use std::path::Path;

use iuf_data::image::load_mask;
use iuf_data::{ClassIndex, DatasetRoot, Layout};

use crate::fixtures::*;

/// One MVTec AD 2 class: 3 train, 2 validation, 2 good and 3 bad public test images (with masks),
/// and private test images without masks; all 24x16.
fn ad2_class(root: &Path, class: &str) {
    let dir = root.join(class);
    let (w, h) = (24, 16);
    for i in 0..3 {
        write_png(
            &dir.join(format!("train/good/{i:03}_regular.png")),
            &rgb(w, h, i),
        );
    }
    for i in 0..2 {
        write_png(
            &dir.join(format!("validation/good/{i:03}_regular.png")),
            &rgb(w, h, 20 + i),
        );
        write_png(
            &dir.join(format!("test_public/good/{i:03}_regular.png")),
            &rgb(w, h, 40 + i),
        );
    }
    for i in 0..3 {
        write_png(
            &dir.join(format!("test_public/bad/{i:03}_regular.png")),
            &rgb(w, h, 60 + i),
        );
        write_mask(
            &dir.join(format!(
                "test_public/ground_truth/bad/{i:03}_regular_mask.png"
            )),
            &mask(w, h),
        );
    }
    // Unlabelled and unmasked: never indexed.
    for private in ["test_private", "test_private_mixed"] {
        write_png(
            &dir.join(format!("{private}/000_regular.png")),
            &rgb(w, h, 90),
        );
    }
}

fn ad2_tree(classes: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for class in classes {
        ad2_class(dir.path(), class);
    }
    dir
}

fn index_with(dir: &Path, class: &str) -> Result<ClassIndex, iuf_data::Error> {
    DatasetRoot::open(dir)?.index_class(class)
}

#[test]
fn mvtec_ad2_layout_indexes_train_validation_and_public_test() {
    let dir = ad2_tree(&["walnuts", "can"]);
    let d = dir.path();
    fs::write(d.join("README.txt"), "not a class").unwrap();

    let root = DatasetRoot::open(d).unwrap();
    assert_eq!(root.layout(), Layout::MvtecAd2);
    assert_eq!(root.classes(), ["can", "walnuts"]);
    let can = root.index_class("can").unwrap();
    assert_eq!(can.train.len(), 3);
    assert_eq!(can.validation.len(), 2);
    assert!(can.has_validation());
    assert_eq!((can.num_test_normal(), can.num_test_anomalous()), (2, 3));
    assert_eq!(can.defect_types(), ["bad"]);
    assert_eq!(
        can.validation[1].path,
        d.join("can/validation/good/001_regular.png")
    );
    for s in can.train.iter().chain(&can.validation) {
        assert!(!s.is_anomalous && s.mask.is_none() && s.defect_type == "good");
    }
    let types: Vec<&str> = can.test.iter().map(|s| s.defect_type.as_str()).collect();
    assert_eq!(types, ["good", "good", "bad", "bad", "bad"]);
    assert!(
        can.test
            .iter()
            .chain(&can.train)
            .chain(&can.validation)
            .all(|s| !s.path.to_string_lossy().contains("test_private")),
        "private test images are never indexed"
    );
    assert_eq!(
        can.test[2].mask.as_deref(),
        Some(
            d.join("can/test_public/ground_truth/bad/000_regular_mask.png")
                .as_path()
        )
    );
    let m = load_mask(can.test[2].mask.as_ref().unwrap(), 8).unwrap();
    assert_eq!(m.iter().filter(|&&p| p).count(), 16, "top-left quarter");
    assert_eq!(root.index_all().unwrap().len(), 2);

    // An index serialized before `validation` existed still reads (as empty).
    let mut json: serde_json::Value = serde_json::to_value(&can).unwrap();
    json.as_object_mut().unwrap().remove("validation");
    let old: ClassIndex = serde_json::from_value(json).unwrap();
    assert!(old.validation.is_empty() && !old.has_validation());
    assert_eq!(old.test, can.test);
}

#[test]
fn mvtec_ad_classes_have_no_validation_split() {
    let dir = tempfile::tempdir().unwrap();
    mvtec_class(dir.path(), "bottle", 2, 1, &[("crack", 1)], 16);
    let root = DatasetRoot::open(dir.path()).unwrap();
    assert_eq!(root.layout(), Layout::MvtecAd);
    assert!(root.index_class("bottle").unwrap().validation.is_empty());
}

#[test]
fn single_class_folder_is_refused_with_a_hint() {
    let dir = ad2_tree(&["rice"]);
    let err = DatasetRoot::open(&dir.path().join("rice"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("test_public/") && err.contains("point at its parent"),
        "{err}"
    );
}

#[test]
fn missing_masks_and_mask_folder_are_reported() {
    let dir = ad2_tree(&["vial"]);
    let d = dir.path();
    let gt = d.join("vial/test_public/ground_truth/bad");
    fs::remove_file(gt.join("001_regular_mask.png")).unwrap();
    let problems = broken_problems(index_with(d, "vial").unwrap_err());
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(mentions(
        &problems,
        &[
            "vial/test_public/bad/001_regular.png",
            "its mask at",
            "001_regular_mask.png",
            "no such file"
        ]
    ));

    fs::remove_dir_all(d.join("vial/test_public/ground_truth")).unwrap();
    let problems = broken_problems(index_with(d, "vial").unwrap_err());
    // One per defective image, and the missing folder itself.
    assert_eq!(problems.len(), 4, "{problems:#?}");
    assert!(mentions(
        &problems,
        &["vial/test_public/ground_truth", "masks", "no such folder"]
    ));
}

#[test]
fn empty_and_missing_folders_are_reported() {
    let dir = ad2_tree(&["fabric"]);
    let d = dir.path();
    // Empty validation/good, no train/good at all, a stray file in test_public/.
    for f in fs::read_dir(d.join("fabric/validation/good")).unwrap() {
        fs::remove_file(f.unwrap().path()).unwrap();
    }
    fs::remove_dir_all(d.join("fabric/train/good")).unwrap();
    fs::write(d.join("fabric/test_public/notes.txt"), "x").unwrap();
    let problems = broken_problems(index_with(d, "fabric").unwrap_err());
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(mentions(
        &problems,
        &["fabric/validation/good", "no image in the folder"]
    ));
    assert!(mentions(
        &problems,
        &["fabric/train/good", "no such folder"]
    ));
    assert!(mentions(
        &problems,
        &["notes.txt", "a file directly under test_public/"]
    ));

    // Without validation/ and test_public/good.
    let dir = ad2_tree(&["sheet_metal"]);
    let d = dir.path();
    fs::remove_dir_all(d.join("sheet_metal/validation")).unwrap();
    fs::remove_dir_all(d.join("sheet_metal/test_public/good")).unwrap();
    fs::create_dir_all(d.join("sheet_metal/validation_extra")).unwrap();
    let problems = broken_problems(index_with(d, "sheet_metal").unwrap_err());
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(mentions(
        &problems,
        &["sheet_metal/validation/good", "no such folder"]
    ));
    assert!(mentions(
        &problems,
        &[
            "sheet_metal/test_public/good",
            "normal test images",
            "no such folder"
        ]
    ));
}

#[test]
fn extra_folders_and_bad_files_are_reported() {
    let dir = ad2_tree(&["wallplugs"]);
    let d = dir.path();
    let c = d.join("wallplugs");
    fs::create_dir_all(c.join("validation/bad")).unwrap();
    fs::write(c.join("validation/list.txt"), "x").unwrap();
    write_png(&c.join("train/bad/000.png"), &rgb(24, 16, 1));
    // A mask of the wrong size and a truncated validation image.
    write_mask(
        &c.join("test_public/ground_truth/bad/002_regular_mask.png"),
        &mask(12, 16),
    );
    let v = c.join("validation/good/000_regular.png");
    let bytes = fs::read(&v).unwrap();
    fs::write(&v, &bytes[..bytes.len() - 20]).unwrap();

    let problems = broken_problems(index_with(d, "wallplugs").unwrap_err());
    assert_eq!(problems.len(), 5, "{problems:#?}");
    assert!(mentions(
        &problems,
        &["wallplugs/validation/bad", "extra folder"]
    ));
    assert!(mentions(
        &problems,
        &[
            "wallplugs/validation/list.txt",
            "directly under validation/"
        ]
    ));
    assert!(mentions(
        &problems,
        &["wallplugs/train/bad", "extra folder"]
    ));
    assert!(mentions(
        &problems,
        &[
            "002_regular_mask.png",
            "24x16 pixels like its image",
            "12x16"
        ]
    ));
    assert!(mentions(
        &problems,
        &["validation/good/000_regular.png", "truncated"]
    ));
}

#[test]
fn a_class_without_test_public_is_broken_not_skipped() {
    let dir = ad2_tree(&["can"]);
    let d = dir.path();
    // A class that only has private (unlabelled) test images.
    write_png(&d.join("rice/train/good/000.png"), &rgb(24, 16, 1));
    write_png(&d.join("rice/validation/good/000.png"), &rgb(24, 16, 2));
    write_png(&d.join("rice/test_private/000.png"), &rgb(24, 16, 3));
    let root = DatasetRoot::open(d).unwrap();
    assert_eq!(root.layout(), Layout::MvtecAd2);
    assert_eq!(root.classes(), ["can", "rice"]);
    let problems = broken_problems(root.index_all().unwrap_err());
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(mentions(&problems, &["rice/test_public", "no such folder"]));
}
