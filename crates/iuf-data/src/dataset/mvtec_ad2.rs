//! MVTec AD 2 layout (2025: eight products at up to 5 MP, made for small defects):
//! `<class>/train/good`, `<class>/validation/good`, `<class>/test_public/good`,
//! `<class>/test_public/<type>` (the dataset has one type, `bad`) and its masks at
//! `<class>/test_public/ground_truth/<type>/<stem>_mask.png`.
//!
//! `validation/good` becomes [`ClassIndex::validation`] (normal images meant for calibration,
//! never trained on). The private test sets `test_private` and `test_private_mixed` carry neither
//! labels nor masks (they are scored by MVTec's evaluation server): they are not indexed, so they
//! never enter an evaluation.
use std::path::Path;

use super::check::{list_images, problem, sorted_entries};
use super::mvtec::{checked_index, index_test, index_train, normal_sample};
use super::{ClassIndex, GOOD};
use crate::error::Problem;

/// The public test set, the only one with labels and masks.
pub(super) const TEST_PUBLIC: &str = "test_public";
/// Normal images for calibration.
pub(super) const VALIDATION: &str = "validation";
/// The masks' folder, inside [`TEST_PUBLIC`].
const GROUND_TRUTH: &str = "ground_truth";
/// Test sets without labels or masks: not indexed (their presence marks the layout, though).
pub(super) const PRIVATE_TEST_FOLDERS: [&str; 2] = ["test_private", "test_private_mixed"];

pub(super) fn index_class(root: &Path, name: &str) -> Result<ClassIndex, Vec<Problem>> {
    let class_dir = root.join(name);
    let mut problems = Vec::new();

    let train = index_train(&class_dir.join("train"), &mut problems);

    let validation_dir = class_dir.join(VALIDATION);
    let validation_good = validation_dir.join(GOOD);
    let validation = list_images(&validation_good, &mut problems)
        .into_iter()
        .map(normal_sample)
        .collect();
    if let Ok(entries) = sorted_entries(&validation_dir) {
        for other in entries.iter().filter(|p| **p != validation_good) {
            problems.push(problem(
                other,
                "nothing in validation/ but validation/good (normal images for calibration)",
                if other.is_dir() {
                    "an extra folder"
                } else {
                    "a file directly under validation/"
                },
            ));
        }
    }

    let test_dir = class_dir.join(TEST_PUBLIC);
    let ground_truth = test_dir.join(GROUND_TRUTH);
    let test = index_test(&test_dir, &ground_truth, Some(&ground_truth), &mut problems);
    if test.iter().any(|s| s.is_anomalous) && !ground_truth.is_dir() {
        problems.push(problem(
            &ground_truth,
            "the masks of the defective test images, in ground_truth/<type>/<name>_mask.png",
            "no such folder",
        ));
    }
    checked_index(name, train, validation, test, problems)
}
