//! Dataset roots in MVTec AD, MVTec AD 2 or VisA layout: detection, class listing, and validated
//! per-class indices of train/validation/test samples (ALGORITHM.md section 1: labels come from
//! folders, not masks).
mod check;
mod mvtec;
mod mvtec_ad2;
mod visa;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::classes::sort_classes;
use crate::error::{Error, Problem, Result};

pub use check::IMAGE_EXTENSIONS;

/// The defect type of every normal image.
pub const GOOD: &str = "good";

/// One image of a class with its label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    pub path: PathBuf,
    /// `"good"` for normal images, otherwise the defect type (the MVTec folder name, `"bad"` for
    /// MVTec AD 2's `test_public/bad`, or `"anomaly"` for VisA, whose split file has no defect types).
    pub defect_type: String,
    /// Defective iff the image lies in a defect-type folder; never inferred from mask pixels (some
    /// real masks are empty although the image is defective).
    pub is_anomalous: bool,
    /// Ground-truth mask of a defective image; `None` for normal images (all-zero mask).
    pub mask: Option<PathBuf>,
}

/// The validated train, validation and test samples of one class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassIndex {
    pub name: String,
    /// Normal training images, sorted by path.
    pub train: Vec<Sample>,
    /// Normal images the dataset sets apart for calibration (thresholds, score normalisation),
    /// never for training, sorted by path: MVTec AD 2's `validation/good`. Empty for layouts
    /// without such a split (MVTec AD, VisA), where a calibration set must be held out of `train`;
    /// see [`ClassIndex::has_validation`]. Absent in indices serialized before it existed.
    #[serde(default)]
    pub validation: Vec<Sample>,
    /// Test images: normal ones first, then each defect type in alphabetical order, each sorted by path.
    pub test: Vec<Sample>,
}

impl ClassIndex {
    /// Whether the dataset provides its own normal validation images ([`ClassIndex::validation`]).
    pub fn has_validation(&self) -> bool {
        !self.validation.is_empty()
    }

    pub fn num_test_normal(&self) -> usize {
        self.test.iter().filter(|s| !s.is_anomalous).count()
    }

    pub fn num_test_anomalous(&self) -> usize {
        self.test.iter().filter(|s| s.is_anomalous).count()
    }

    /// Defect types present in the test set, sorted, without `"good"`.
    pub fn defect_types(&self) -> Vec<&str> {
        let mut types: Vec<&str> = self
            .test
            .iter()
            .filter(|s| s.is_anomalous)
            .map(|s| s.defect_type.as_str())
            .collect();
        types.sort_unstable();
        types.dedup();
        types
    }
}

/// How a dataset root is laid out on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layout {
    /// `<class>/train/good`, `<class>/test/<type>`, `<class>/ground_truth/<type>/<stem>_mask.png`
    /// (MVTec AD itself, and any custom product laid out the same way).
    MvtecAd,
    /// MVTec AD 2: `<class>/train/good`, `<class>/validation/good` (normal images for calibration,
    /// [`ClassIndex::validation`]), `<class>/test_public/{good,bad}` and the masks
    /// `<class>/test_public/ground_truth/bad/<stem>_mask.png`. The private test sets
    /// (`test_private`, `test_private_mixed`) have neither labels nor masks and are never indexed.
    MvtecAd2,
    /// VisA's official layout: `<class>/Data/Images/{Normal,Anomaly}`, `<class>/Data/Masks/Anomaly`
    /// and the split file `split_csv/1cls.csv` (columns object, split, label, image, mask; paths
    /// relative to the root).
    Visa,
}

/// An opened dataset root: its layout and the classes it holds.
#[derive(Debug, Clone)]
pub struct DatasetRoot {
    root: PathBuf,
    layout: Layout,
    classes: Vec<String>,
    visa_split: Vec<visa::SplitRow>,
}

impl DatasetRoot {
    /// Detects the layout and lists the classes present. VisA is recognised by its split file,
    /// MVTec AD 2 by a class folder holding `test_public/` (or a private test folder); otherwise
    /// every non-hidden folder under the root is an MVTec-layout class. Classes are sorted
    /// in the fixed MVTec AD / VisA order when all are known classes, else alphabetically.
    pub fn open(root: &Path) -> Result<Self> {
        let layout_error = |reason: String| Error::Layout {
            root: root.to_path_buf(),
            reason,
        };
        if !root.is_dir() {
            return Err(layout_error(
                "expected a dataset folder; found no such folder".into(),
            ));
        }
        let split_file = root.join(visa::SPLIT_FILE);
        if split_file.is_file() {
            let visa_split = visa::read_split(&split_file)?;
            let mut classes: Vec<String> = Vec::new();
            for row in &visa_split {
                if !classes.contains(&row.object) {
                    classes.push(row.object.clone());
                }
            }
            if classes.is_empty() {
                return Err(Error::SplitFile {
                    path: split_file,
                    line: 1,
                    reason: "expected at least one sample row; found none".into(),
                });
            }
            sort_classes(&mut classes);
            return Ok(Self {
                root: root.to_path_buf(),
                layout: Layout::Visa,
                classes,
                visa_split,
            });
        }
        for test in ["test", mvtec_ad2::TEST_PUBLIC] {
            if root.join("train").is_dir() && root.join(test).is_dir() {
                return Err(layout_error(format!(
                    "expected a dataset folder holding one folder per class; found the folder of \
                     a single class (it has train/ and {test}/): point at its parent folder"
                )));
            }
        }
        let entries = check::sorted_entries(root).map_err(|p| layout_error(p.to_string()))?;
        let mut classes: Vec<String> = Vec::new();
        let mut any_class_like = false;
        let mut any_mvtec_ad2 = false;
        for path in entries.iter().filter(|p| p.is_dir()) {
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                return Err(layout_error(format!(
                    "expected UTF-8 class folder names; found {}",
                    path.display()
                )));
            };
            any_class_like |= path.join("train").is_dir() || path.join("test").is_dir();
            any_mvtec_ad2 |= std::iter::once(mvtec_ad2::TEST_PUBLIC)
                .chain(mvtec_ad2::PRIVATE_TEST_FOLDERS)
                .any(|t| path.join(t).is_dir());
            classes.push(name.to_string());
        }
        if !any_class_like && !any_mvtec_ad2 {
            return Err(layout_error(format!(
                "expected <class>/train/good and <class>/test/<type> folders (MVTec AD layout), \
                 <class>/train/good and <class>/test_public/<type> (MVTec AD 2) or {} (VisA); \
                 found none of them",
                visa::SPLIT_FILE
            )));
        }
        sort_classes(&mut classes);
        Ok(Self {
            root: root.to_path_buf(),
            layout: if any_mvtec_ad2 {
                Layout::MvtecAd2
            } else {
                Layout::MvtecAd
            },
            classes,
            visa_split: Vec::new(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Indexes and validates one class. Every problem of the class (missing folder or mask, empty
    /// folder, unreadable or truncated file, mask size different from its image) is collected into
    /// one [`Error::Broken`]: a broken class is refused as a whole, never partially used.
    pub fn index_class(&self, name: &str) -> Result<ClassIndex> {
        let mut indices = self.index(&[name])?;
        // `index` returns one entry per name on success.
        indices.pop().ok_or_else(|| Error::UnknownClass {
            name: name.to_string(),
            known: self.classes.clone(),
        })
    }

    /// Indexes several classes, reporting the problems of all broken classes at once.
    pub fn index<S: AsRef<str>>(&self, names: &[S]) -> Result<Vec<ClassIndex>> {
        let mut indices = Vec::with_capacity(names.len());
        let mut broken = Vec::new();
        let mut problems: Vec<Problem> = Vec::new();
        for name in names {
            let name = name.as_ref();
            if !self.classes.iter().any(|c| c == name) {
                return Err(Error::UnknownClass {
                    name: name.to_string(),
                    known: self.classes.clone(),
                });
            }
            let result = match self.layout {
                Layout::MvtecAd => mvtec::index_class(&self.root, name),
                Layout::MvtecAd2 => mvtec_ad2::index_class(&self.root, name),
                Layout::Visa => visa::index_class(&self.root, &self.visa_split, name),
            };
            match result {
                Ok(index) => indices.push(index),
                Err(p) => {
                    broken.push(name.to_string());
                    problems.extend(p);
                }
            }
        }
        if problems.is_empty() {
            Ok(indices)
        } else {
            Err(Error::Broken {
                root: self.root.clone(),
                classes: broken,
                problems,
            })
        }
    }

    /// Indexes every class of the root.
    pub fn index_all(&self) -> Result<Vec<ClassIndex>> {
        self.index(&self.classes)
    }
}
