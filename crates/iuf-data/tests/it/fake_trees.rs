//! MVTec-layout trees built in temporary folders: clean, unusual-but-valid (JPEG, 16-bit PNG) and
//! broken ones (missing mask, truncated PNG, wrong mask size, empty class).
use std::fs;

use iuf_data::image::{load_image, load_mask, load_rgb};
use iuf_data::{DatasetRoot, Error, Layout};

use crate::fixtures::*;

#[test]
fn clean_fake_tree_indexes_with_labels_from_folders() {
    let dir = tempfile::tempdir().unwrap();
    mvtec_class(
        dir.path(),
        "widget",
        4,
        2,
        &[("scratch", 2), ("dent", 1)],
        32,
    );
    mvtec_class(dir.path(), "bottle", 3, 1, &[("crack", 1)], 16);
    fs::write(dir.path().join("license.txt"), "not a class").unwrap();
    fs::create_dir_all(dir.path().join(".cache")).unwrap();

    let root = DatasetRoot::open(dir.path()).unwrap();
    assert_eq!(root.layout(), Layout::MvtecAd);
    assert_eq!(root.classes(), ["bottle", "widget"]);
    let widget = root.index_class("widget").unwrap();
    assert_eq!(widget.train.len(), 4);
    assert_eq!(
        (widget.num_test_normal(), widget.num_test_anomalous()),
        (2, 3)
    );
    assert_eq!(widget.defect_types(), ["dent", "scratch"]);
    let types: Vec<&str> = widget.test.iter().map(|s| s.defect_type.as_str()).collect();
    assert_eq!(types, ["good", "good", "dent", "scratch", "scratch"]);
    for s in &widget.test {
        assert_eq!(s.is_anomalous, s.defect_type != "good");
        assert_eq!(s.mask.is_some(), s.is_anomalous);
    }
    assert_eq!(
        widget.test[2].mask.as_deref(),
        Some(
            dir.path()
                .join("widget/ground_truth/dent/000_mask.png")
                .as_path()
        )
    );
    let mask = load_mask(widget.test[2].mask.as_ref().unwrap(), 8).unwrap();
    assert_eq!(
        mask.iter().filter(|&&m| m).count(),
        16,
        "top-left quarter of 8x8"
    );
    assert_eq!(root.index_all().unwrap().len(), 2);
    assert!(matches!(
        root.index_class("nope"),
        Err(Error::UnknownClass { .. })
    ));
}

#[test]
fn jpeg_and_16_bit_png_are_valid_inputs() {
    let dir = tempfile::tempdir().unwrap();
    mvtec_class(dir.path(), "widget", 2, 1, &[("scratch", 1)], 32);
    let img = rgb(32, 32, 9);
    write_jpeg(&dir.path().join("widget/train/good/002.jpg"), &img);
    write_png16(&dir.path().join("widget/train/good/003.png"), &img);

    let root = DatasetRoot::open(dir.path()).unwrap();
    let widget = root.index_class("widget").unwrap();
    assert_eq!(widget.train.len(), 4);
    let jpeg = load_rgb(&widget.train[2].path).unwrap();
    assert_eq!(jpeg.dimensions(), (32, 32));
    let diff: u32 = jpeg
        .pixels()
        .zip(img.pixels())
        .map(|(a, b)| (a.0[1] as i32 - b.0[1] as i32).unsigned_abs())
        .max()
        .unwrap();
    assert!(diff < 40, "JPEG decodes close to the source: {diff}");
    // 16-bit samples v * 257 come back as exactly v.
    assert_eq!(load_rgb(&widget.train[3].path).unwrap(), img);
    let t = load_image(&widget.train[3].path, 24).unwrap();
    assert_eq!((t.height, t.width, t.data.len()), (24, 24, 3 * 24 * 24));
}

#[test]
fn broken_class_reports_every_problem_with_path_and_expectation() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    mvtec_class(d, "widget", 3, 2, &[("scratch", 3)], 32);
    // 1. missing mask
    fs::remove_file(d.join("widget/ground_truth/scratch/001_mask.png")).unwrap();
    // 2. truncated PNG (header intact, IEND lost)
    let victim = d.join("widget/train/good/001.png");
    let bytes = fs::read(&victim).unwrap();
    fs::write(&victim, &bytes[..bytes.len() / 2]).unwrap();
    // 3. mask of the wrong size
    write_mask(
        &d.join("widget/ground_truth/scratch/002_mask.png"),
        &mask(16, 32),
    );
    // A clean class beside it still indexes.
    mvtec_class(d, "gadget", 2, 1, &[("dent", 1)], 16);

    let root = DatasetRoot::open(d).unwrap();
    assert!(root.index_class("gadget").is_ok());
    let err = root.index_class("widget").unwrap_err();
    let text = err.to_string();
    let problems = broken_problems(err);
    assert_eq!(problems.len(), 3, "{text}");
    let scratch1 = d.join("widget/test/scratch/001.png");
    let mask1 = d.join("widget/ground_truth/scratch/001_mask.png");
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with(&scratch1.display().to_string())
                && p.contains(&format!("its mask at {}", mask1.display()))),
        "{text}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with(&victim.display().to_string())
                && p.contains("a complete PNG ending with its IEND chunk")),
        "{text}"
    );
    assert!(
        mentions(
            &problems,
            &[
                "002_mask.png",
                "expected 32x32 pixels like its image",
                "found 16x32"
            ]
        ),
        "{text}"
    );
    assert!(text.contains("refusing to use a broken class"));
    // Indexing several classes reports the broken one's problems, and only those.
    match root.index_all().unwrap_err() {
        Error::Broken {
            classes, problems, ..
        } => {
            assert_eq!(classes, ["widget"]);
            assert_eq!(problems.len(), 3);
        }
        other => panic!("{other}"),
    }
}

#[test]
fn empty_class_and_missing_folders_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    mvtec_class(d, "widget", 2, 1, &[("scratch", 1)], 16);
    fs::create_dir_all(d.join("hollow/train/good")).unwrap();
    fs::create_dir_all(d.join("hollow/test/good")).unwrap();
    fs::create_dir_all(d.join("bare")).unwrap();

    let root = DatasetRoot::open(d).unwrap();
    assert_eq!(root.classes(), ["bare", "hollow", "widget"]);
    let hollow = broken_problems(root.index_class("hollow").unwrap_err());
    assert_eq!(hollow.len(), 2, "{hollow:?}");
    assert!(hollow
        .iter()
        .all(|p| p.contains("expected at least one image")));
    let bare = broken_problems(root.index_class("bare").unwrap_err());
    assert!(
        mentions(&bare, &["bare/train/good", "no such folder"]),
        "{bare:?}"
    );
    assert!(
        mentions(&bare, &["bare/test", "no such folder"]),
        "{bare:?}"
    );
}

#[test]
fn stray_files_and_folders_are_problems_not_silently_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    mvtec_class(d, "widget", 2, 1, &[("scratch", 1)], 16);
    fs::write(d.join("widget/train/good/notes.txt"), "x").unwrap();
    fs::write(d.join("widget/train/good/.DS_Store"), "x").unwrap(); // hidden: ignored
    write_png(&d.join("widget/train/bad/000.png"), &rgb(16, 16, 1));
    fs::write(d.join("widget/test/scratch/fake.png"), "not a png").unwrap();
    write_png(&d.join("widget/test/stray.png"), &rgb(16, 16, 1));

    let root = DatasetRoot::open(d).unwrap();
    let problems = broken_problems(root.index_class("widget").unwrap_err());
    assert_eq!(problems.len(), 5, "{problems:#?}");
    for parts in [
        ["notes.txt", "an image file"],
        ["train/bad", "normal images only"],
        ["fake.png", "its mask at"],
        ["fake.png", "a valid PNG header"],
        ["stray.png", "directly under test/"],
    ] {
        assert!(mentions(&problems, &parts), "{parts:?}: {problems:#?}");
    }
}

#[test]
fn open_rejects_non_datasets_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let missing = DatasetRoot::open(&d.join("nothing"))
        .unwrap_err()
        .to_string();
    assert!(missing.contains("no such folder"), "{missing}");
    fs::create_dir_all(d.join("photos")).unwrap();
    let none = DatasetRoot::open(d).unwrap_err().to_string();
    assert!(
        none.contains("MVTec AD layout") && none.contains("split_csv/1cls.csv"),
        "{none}"
    );
    mvtec_class(d, "widget", 1, 1, &[], 8);
    let single = DatasetRoot::open(&d.join("widget"))
        .unwrap_err()
        .to_string();
    assert!(single.contains("point at its parent"), "{single}");
}
