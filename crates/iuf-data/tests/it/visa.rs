//! VisA's official layout (Data/Images/{Normal,Anomaly}, Data/Masks/Anomaly, split_csv/1cls.csv)
//! built in a temporary folder.
use std::fs;
use std::path::Path;

use iuf_data::{DatasetRoot, Layout};

use crate::fixtures::*;

const HEADER: &str = "object,split,label,image,mask\n";

fn visa_class(root: &Path, class: &str, csv: &mut String) {
    let data = root.join(class).join("Data");
    for i in 0..3 {
        let rel = format!("{class}/Data/Images/Normal/{i:04}.JPG");
        write_jpeg(&root.join(&rel), &rgb(40, 30, i));
        let split = if i < 2 { "train" } else { "test" };
        csv.push_str(&format!("{class},{split},normal,{rel},\n"));
    }
    for i in 0..2 {
        let rel = format!("{class}/Data/Images/Anomaly/{i:03}.JPG");
        write_jpeg(&root.join(&rel), &rgb(40, 30, 50 + i));
        // VisA masks hold small label values, not 255: positive is > 0.
        let m = image::GrayImage::from_fn(40, 30, |x, _| image::Luma([(x < 4) as u8]));
        write_mask(&data.join(format!("Masks/Anomaly/{i:03}.png")), &m);
        csv.push_str(&format!(
            "{class},test,anomaly,{rel},{class}/Data/Masks/Anomaly/{i:03}.png\n"
        ));
    }
}

/// A temporary VisA tree: `classes` as [`visa_class`] makes them, and the split file of them all.
fn visa_tree(classes: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut csv = HEADER.to_string();
    for class in classes {
        visa_class(d, class, &mut csv);
    }
    fs::create_dir_all(d.join("split_csv")).unwrap();
    fs::write(d.join("split_csv/1cls.csv"), &csv).unwrap();
    dir
}

#[test]
fn visa_layout_indexes_from_the_split_file() {
    let dir = visa_tree(&["pcb1", "candle"]);
    let d = dir.path();

    let root = DatasetRoot::open(d).unwrap();
    assert_eq!(root.layout(), Layout::Visa);
    assert_eq!(root.classes(), ["candle", "pcb1"]);
    let pcb1 = root.index_class("pcb1").unwrap();
    assert_eq!(pcb1.train.len(), 2);
    assert_eq!((pcb1.num_test_normal(), pcb1.num_test_anomalous()), (1, 2));
    assert_eq!(pcb1.test[0].defect_type, "good");
    assert_eq!(pcb1.test[1].defect_type, "anomaly");
    assert_eq!(
        pcb1.test[1].mask.as_deref(),
        Some(d.join("pcb1/Data/Masks/Anomaly/000.png").as_path())
    );
    let mask = iuf_data::image::load_mask(pcb1.test[1].mask.as_ref().unwrap(), 10).unwrap();
    assert_eq!(
        mask.iter().filter(|&&m| m).count(),
        10,
        "first column of a 10x10 mask"
    );
}

#[test]
fn broken_visa_class_lists_every_problem() {
    let dir = visa_tree(&["pcb1"]);
    let d = dir.path();
    fs::remove_file(d.join("pcb1/Data/Masks/Anomaly/001.png")).unwrap();
    write_mask(&d.join("pcb1/Data/Masks/Anomaly/000.png"), &mask(20, 30));

    let root = DatasetRoot::open(d).unwrap();
    let problems = broken_problems(root.index_class("pcb1").unwrap_err());
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(mentions(&problems, &["001.png", "readable image"]));
    assert!(mentions(
        &problems,
        &["000.png", "expected 40x30", "found 20x30"]
    ));
}

#[test]
fn malformed_split_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir_all(d.join("split_csv")).unwrap();
    fs::write(d.join("split_csv/1cls.csv"), "object,split,label,image\n").unwrap();
    let e = DatasetRoot::open(d).unwrap_err().to_string();
    assert!(
        e.contains("line 1") && e.contains("object,split,label,image,mask"),
        "{e}"
    );
    fs::write(
        d.join("split_csv/1cls.csv"),
        format!("{HEADER}pcb1,val,normal,a.JPG,\n"),
    )
    .unwrap();
    let e = DatasetRoot::open(d).unwrap_err().to_string();
    assert!(e.contains("line 2") && e.contains("`val`"), "{e}");
}
