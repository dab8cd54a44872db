//! After extraction: find the dataset root, validate every class with iuf-data (each problem is
//! listed), and for VisA record the 1-class split as per-class train/test lists. MVTec AD and
//! MVTec AD 2 are used as extracted.
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use iuf_data::{ClassIndex, DatasetRoot, Layout};
use serde_json::json;

/// Written into a VisA root: the per-class lists of `split_csv/1cls.csv`, relative to the root.
pub const VISA_SPLIT_LISTS: &str = "iuf_split_1cls.json";

/// The folder that `DatasetRoot::open` accepts: `extracted` itself, or its only sub-folder that is
/// a dataset (archives that wrap everything in one top folder).
fn find_root(extracted: &Path) -> Result<PathBuf> {
    let direct = DatasetRoot::open(extracted);
    if direct.is_ok() {
        return Ok(extracted.to_path_buf());
    }
    let mut candidates = Vec::new();
    for entry in
        fs::read_dir(extracted).with_context(|| format!("listing {}", extracted.display()))?
    {
        let path = entry?.path();
        if path.is_dir() && DatasetRoot::open(&path).is_ok() {
            candidates.push(path);
        }
    }
    match candidates.len() {
        1 => Ok(candidates.remove(0)),
        _ => Err(direct
            .err()
            .map(anyhow::Error::new)
            .unwrap_or_else(|| anyhow::anyhow!("no dataset found")))
        .with_context(|| format!("looking for the dataset in {}", extracted.display())),
    }
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .replace('\\', "/")
}

fn split_lists(root: &Path, indices: &[ClassIndex]) -> serde_json::Value {
    let classes: Vec<serde_json::Value> = indices
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "train": c.train.iter().map(|s| relative(root, &s.path)).collect::<Vec<_>>(),
                "test": c.test.iter().map(|s| json!({
                    "image": relative(root, &s.path),
                    "label": if s.is_anomalous { "anomaly" } else { "normal" },
                    "mask": s.mask.as_ref().map(|m| relative(root, m)),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "source": "split_csv/1cls.csv",
        "note": "Written by `cargo xtask download visa` after validating every file; iuf-data reads the official layout and the split file directly, this is a readable record of the split.",
        "classes": classes,
    })
}

/// Validates the extracted dataset and returns its root.
pub fn prepare(extracted: &Path, expected_classes: &[String]) -> Result<PathBuf> {
    let root_path = find_root(extracted)?;
    let root = DatasetRoot::open(&root_path)?;
    let missing: Vec<&str> = expected_classes
        .iter()
        .filter(|c| !root.classes().contains(c))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        bail!(
            "{}: expected the classes {}; missing {}",
            root_path.display(),
            expected_classes.join(", "),
            missing.join(", ")
        );
    }
    eprintln!(
        "validating {} classes in {}",
        root.classes().len(),
        root_path.display()
    );
    let indices = root.index(root.classes())?;
    for c in &indices {
        let validation = if c.has_validation() {
            format!("  validation {:>4}", c.validation.len())
        } else {
            String::new()
        };
        eprintln!(
            "  {:<12} train {:>4}{validation}  test normal {:>4}  test anomalous {:>4}",
            c.name,
            c.train.len(),
            c.num_test_normal(),
            c.num_test_anomalous()
        );
    }
    if root.layout() == Layout::MvtecAd2 {
        eprintln!(
            "MVTec AD 2: test_public is the labelled test set; test_private and \
             test_private_mixed have no labels or masks and are not used"
        );
    }
    if root.layout() == Layout::Visa {
        let path = root_path.join(VISA_SPLIT_LISTS);
        let text = serde_json::to_string_pretty(&split_lists(&root_path, &indices))?;
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote the 1-class split lists to {}", path.display());
    }
    Ok(root_path)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use iuf_data::demo::{generate, DemoConfig};

    /// Rearranges a demo dataset into VisA's official layout with its split file.
    pub fn visa_tree(dir: &Path) -> Vec<String> {
        let demo = tempfile::tempdir().unwrap();
        let classes = generate(
            demo.path(),
            &DemoConfig {
                train_per_class: 4,
                test_per_class: 5,
                size: 32,
                seed: 9,
            },
        )
        .unwrap();
        let root = DatasetRoot::open(demo.path()).unwrap();
        let mut csv = String::from("object,split,label,image,mask\n");
        for index in root.index(&classes).unwrap() {
            let c = &index.name;
            let (mut normal, mut anomaly) = (0, 0);
            for (split, samples) in [("train", &index.train), ("test", &index.test)] {
                for s in samples {
                    let (image, mask) = if s.is_anomalous {
                        anomaly += 1;
                        (
                            format!("{c}/Data/Images/Anomaly/{anomaly:03}.png"),
                            format!("{c}/Data/Masks/Anomaly/{anomaly:03}.png"),
                        )
                    } else {
                        normal += 1;
                        (
                            format!("{c}/Data/Images/Normal/{normal:04}.png"),
                            String::new(),
                        )
                    };
                    fs::create_dir_all(dir.join(&image).parent().unwrap()).unwrap();
                    fs::copy(&s.path, dir.join(&image)).unwrap();
                    if let Some(m) = &s.mask {
                        fs::create_dir_all(dir.join(&mask).parent().unwrap()).unwrap();
                        fs::copy(m, dir.join(&mask)).unwrap();
                    }
                    let label = if s.is_anomalous { "anomaly" } else { "normal" };
                    csv.push_str(&format!("{c},{split},{label},{image},{mask}\n"));
                }
            }
        }
        fs::create_dir_all(dir.join("split_csv")).unwrap();
        fs::write(dir.join("split_csv/1cls.csv"), csv).unwrap();
        classes
    }

    /// Rearranges a demo dataset into MVTec AD 2's layout: the last training image of each class
    /// goes to validation/good, defective test images to test_public/bad with their masks in
    /// test_public/ground_truth/bad/<stem>_mask.png, and an unlabelled test_private image.
    pub fn mvtec_ad2_tree(dir: &Path) -> Vec<String> {
        let demo = tempfile::tempdir().unwrap();
        let classes = generate(
            demo.path(),
            &DemoConfig {
                train_per_class: 4,
                test_per_class: 5,
                size: 32,
                seed: 5,
            },
        )
        .unwrap();
        let root = DatasetRoot::open(demo.path()).unwrap();
        let copy = |from: &Path, to: PathBuf| {
            fs::create_dir_all(to.parent().unwrap()).unwrap();
            fs::copy(from, to).unwrap();
        };
        for index in root.index(&classes).unwrap() {
            let c = dir.join(&index.name);
            let (last, train) = index.train.split_last().unwrap();
            for (i, s) in train.iter().enumerate() {
                copy(&s.path, c.join(format!("train/good/{i:03}_regular.png")));
            }
            copy(&last.path, c.join("validation/good/000_regular.png"));
            for (i, s) in index.test.iter().enumerate() {
                let folder = if s.is_anomalous { "bad" } else { "good" };
                let name = format!("{i:03}_regular");
                copy(&s.path, c.join(format!("test_public/{folder}/{name}.png")));
                if let Some(m) = &s.mask {
                    copy(
                        m,
                        c.join(format!("test_public/ground_truth/bad/{name}_mask.png")),
                    );
                }
            }
            copy(&last.path, c.join("test_private/000_regular.png"));
            copy(&last.path, c.join("test_private_mixed/000_overexposed.png"));
        }
        classes
    }

    #[test]
    fn mvtec_ad2_preparation_validates_the_extracted_tree() {
        let work = tempfile::tempdir().unwrap();
        let classes = mvtec_ad2_tree(&work.path().join("mvtec_ad_2"));
        let root = prepare(work.path(), &classes).unwrap();
        assert_eq!(root, work.path().join("mvtec_ad_2"));
        let opened = DatasetRoot::open(&root).unwrap();
        assert_eq!(opened.layout(), Layout::MvtecAd2);
        let first = opened.index_class(&classes[0]).unwrap();
        assert_eq!((first.train.len(), first.validation.len()), (3, 1));
        assert_eq!(first.test.len(), 5);
        fs::remove_file(
            root.join(&classes[0])
                .join("test_public/ground_truth/bad/004_regular_mask.png"),
        )
        .unwrap();
        let err = format!("{:#}", prepare(work.path(), &classes).unwrap_err());
        assert!(
            err.contains("test_public/bad/004_regular.png") && err.contains("004_regular_mask.png"),
            "{err}"
        );
    }

    #[test]
    fn visa_preparation_validates_and_writes_split_lists() {
        let work = tempfile::tempdir().unwrap();
        // Wrapped in a top folder, as some archives are.
        let classes = visa_tree(&work.path().join("VisA"));
        let root = prepare(work.path(), &classes).unwrap();
        assert_eq!(root, work.path().join("VisA"));
        let lists: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(root.join(VISA_SPLIT_LISTS)).unwrap())
                .unwrap();
        let first = &lists["classes"][0];
        assert_eq!(first["name"], "fabric");
        assert_eq!(first["train"].as_array().unwrap().len(), 4);
        assert_eq!(first["train"][0], "fabric/Data/Images/Normal/0001.png");
        let test = first["test"].as_array().unwrap();
        assert_eq!(test.len(), 5);
        assert_eq!(
            test.iter()
                .filter(|t| t["label"] == "anomaly" && t["mask"].is_string())
                .count(),
            4
        );
    }

    #[test]
    fn missing_classes_and_broken_files_are_reported() {
        let work = tempfile::tempdir().unwrap();
        let classes = visa_tree(work.path());
        let mut expected = classes.clone();
        expected.push("pcb9".into());
        let err = prepare(work.path(), &expected).unwrap_err().to_string();
        assert!(err.contains("missing pcb9"), "{err}");
        fs::remove_file(work.path().join("mesh/Data/Masks/Anomaly/002.png")).unwrap();
        let err = format!("{:#}", prepare(work.path(), &classes).unwrap_err());
        assert!(err.contains("mesh/Data/Masks/Anomaly/002.png"), "{err}");
    }
}
