//! MVTec AD layout: `<class>/train/good`, `<class>/test/<type>`, `<class>/ground_truth/<type>/<stem>_mask.png`;
//! its listing helpers serve MVTec AD 2 too.
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::check::{image_dimensions, list_images, problem, sorted_entries};
use super::{ClassIndex, Sample, GOOD};
use crate::error::Problem;

/// Where the mask of `<test>/<defect_type>/<stem>.<ext>` lives: `<gt_dir>/<defect_type>/<stem>_mask.png`
/// as in MVTec AD (and MVTec AD 2, whose `gt_dir` is `test_public/ground_truth`); `<stem>.png` is
/// accepted too (the naming of tools that convert VisA to this layout).
pub(super) fn find_mask(
    gt_dir: &Path,
    defect_type: &str,
    image: &Path,
) -> Result<PathBuf, Problem> {
    let stem = image
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let folder = gt_dir.join(defect_type);
    let expected = folder.join(format!("{stem}_mask.png"));
    if expected.is_file() {
        return Ok(expected);
    }
    let plain = folder.join(format!("{stem}.png"));
    if plain.is_file() {
        return Ok(plain);
    }
    Err(problem(
        image,
        format!("its mask at {}", expected.display()),
        "no such file",
    ))
}

/// The normal training images of `train_dir/good`; any other folder under `train_dir` is a problem.
pub(super) fn index_train(train_dir: &Path, problems: &mut Vec<Problem>) -> Vec<Sample> {
    let train_good = train_dir.join(GOOD);
    let train_paths = list_images(&train_good, problems);
    if let Ok(entries) = sorted_entries(train_dir) {
        for other in entries.iter().filter(|p| p.is_dir() && **p != train_good) {
            problems.push(problem(
                other,
                "no training folder but train/good (training uses normal images only)",
                "an extra folder",
            ));
        }
    }
    train_paths.into_iter().map(normal_sample).collect()
}

pub(super) fn normal_sample(path: PathBuf) -> Sample {
    Sample {
        path,
        defect_type: GOOD.to_string(),
        is_anomalous: false,
        mask: None,
    }
}

/// The test samples of `test_dir`: `good` (required) first, then every other folder as a defect
/// type in alphabetical order, each image with its mask found by [`find_mask`] under `gt_dir`.
/// `skip` is a folder inside `test_dir` that holds no test images (MVTec AD 2's
/// `test_public/ground_truth`).
pub(super) fn index_test(
    test_dir: &Path,
    gt_dir: &Path,
    skip: Option<&Path>,
    problems: &mut Vec<Problem>,
) -> Vec<Sample> {
    let mut test: Vec<Sample> = Vec::new();
    let entries = match sorted_entries(test_dir) {
        Ok(entries) => entries,
        Err(p) => {
            problems.push(p);
            return test;
        }
    };
    let test_name = test_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut folders: Vec<PathBuf> = Vec::new();
    for path in entries {
        if skip == Some(path.as_path()) {
            continue;
        }
        if path.is_dir() {
            folders.push(path);
        } else {
            problems.push(problem(
                &path,
                format!("test images inside {test_name}/good or {test_name}/<defect_type>"),
                format!("a file directly under {test_name}/"),
            ));
        }
    }
    let good = test_dir.join(GOOD);
    if !folders.contains(&good) {
        problems.push(problem(
            &good,
            "a folder of normal test images",
            "no such folder",
        ));
    }
    // Normal images first, then defect types alphabetically (entries are sorted).
    folders.sort_by_key(|f| *f != good);
    for folder in folders {
        let defect_type = folder
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let is_anomalous = defect_type != GOOD;
        for path in list_images(&folder, problems) {
            let mask = if is_anomalous {
                match find_mask(gt_dir, &defect_type, &path) {
                    Ok(m) => Some(m),
                    Err(p) => {
                        problems.push(p);
                        None
                    }
                }
            } else {
                None
            };
            test.push(Sample {
                path,
                defect_type: defect_type.clone(),
                is_anomalous,
                mask,
            });
        }
    }
    test
}

pub(super) fn index_class(root: &Path, name: &str) -> Result<ClassIndex, Vec<Problem>> {
    let class_dir = root.join(name);
    let mut problems = Vec::new();
    let train = index_train(&class_dir.join("train"), &mut problems);
    let test = index_test(
        &class_dir.join("test"),
        &class_dir.join("ground_truth"),
        None,
        &mut problems,
    );
    checked_index(name, train, Vec::new(), test, problems)
}

/// The index of class `name` once every file has passed [`check_files`], or all the problems:
/// those found while listing (`problems`) and those of the files.
pub(super) fn checked_index(
    name: &str,
    train: Vec<Sample>,
    validation: Vec<Sample>,
    test: Vec<Sample>,
    mut problems: Vec<Problem>,
) -> Result<ClassIndex, Vec<Problem>> {
    problems.extend(check_files(&[&train, &validation, &test]));
    if problems.is_empty() {
        Ok(ClassIndex {
            name: name.to_string(),
            train,
            validation,
            test,
        })
    } else {
        Err(problems)
    }
}

/// Reads every header (in parallel: thousands of small reads) and checks each mask against its image.
fn check_files(sets: &[&[Sample]]) -> Vec<Problem> {
    sets.par_iter()
        .flat_map(|set| set.par_iter())
        .flat_map_iter(|sample| {
            let mut problems = Vec::new();
            let image = image_dimensions(&sample.path)
                .map_err(|p| problems.push(p))
                .ok();
            if let Some(mask_path) = &sample.mask {
                match image_dimensions(mask_path) {
                    Err(p) => problems.push(p),
                    Ok(mask) => {
                        if let Some(image) = image.filter(|&i| i != mask) {
                            problems.push(problem(
                                mask_path,
                                format!(
                                    "{}x{} pixels like its image {}",
                                    image.0,
                                    image.1,
                                    sample.path.display()
                                ),
                                format!("{}x{}", mask.0, mask.1),
                            ));
                        }
                    }
                }
            }
            problems
        })
        .collect()
}
