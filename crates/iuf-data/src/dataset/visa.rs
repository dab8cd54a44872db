//! VisA's official layout: the split file `split_csv/1cls.csv` (object, split, label, image, mask)
//! names every sample; its paths are relative to the dataset root.
use std::path::{Path, PathBuf};

use super::check::problem;
use super::mvtec::checked_index;
use super::{ClassIndex, Sample, GOOD};
use crate::error::{Error, Problem, Result};

/// The one-class split of VisA, relative to the dataset root.
pub const SPLIT_FILE: &str = "split_csv/1cls.csv";

/// Defect type given to VisA's anomalous images: its split file does not name defect types.
pub const VISA_ANOMALY: &str = "anomaly";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Split {
    Train,
    Test,
}

#[derive(Debug, Clone)]
pub(super) struct SplitRow {
    pub object: String,
    pub split: Split,
    pub is_anomalous: bool,
    pub image: PathBuf,
    pub mask: Option<PathBuf>,
    /// 1-based line number in the split file, for messages.
    pub line: usize,
}

fn unquote(field: &str) -> &str {
    let f = field.trim();
    f.strip_prefix('"')
        .and_then(|f| f.strip_suffix('"'))
        .unwrap_or(f)
}

/// Parses the split file. Its structure (header, split and label values) must be exactly right:
/// a malformed split file is an error for the whole dataset.
pub(super) fn read_split(path: &Path) -> Result<Vec<SplitRow>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let bad = |line: usize, reason: String| Error::SplitFile {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
    let expected_header = ["object", "split", "label", "image", "mask"];
    let (_, header) = lines
        .next()
        .ok_or_else(|| bad(1, "expected a header line; found an empty file".into()))?;
    let header: Vec<&str> = header
        .trim_start_matches('\u{feff}')
        .split(',')
        .map(unquote)
        .collect();
    if header != expected_header {
        return Err(bad(
            1,
            format!(
                "expected the columns {}; found {}",
                expected_header.join(","),
                header.join(",")
            ),
        ));
    }
    let mut rows = Vec::new();
    for (line, text) in lines {
        if text.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = text.split(',').map(unquote).collect();
        if fields.len() != 5 {
            return Err(bad(
                line,
                format!("expected 5 fields; found {}", fields.len()),
            ));
        }
        let split = match fields[1] {
            "train" => Split::Train,
            "test" => Split::Test,
            other => {
                return Err(bad(
                    line,
                    format!("expected split train or test; found `{other}`"),
                ))
            }
        };
        let is_anomalous = match fields[2] {
            "normal" => false,
            "anomaly" => true,
            other => {
                return Err(bad(
                    line,
                    format!("expected label normal or anomaly; found `{other}`"),
                ))
            }
        };
        if fields[0].is_empty() || fields[3].is_empty() {
            return Err(bad(
                line,
                "expected an object name and an image path; found an empty field".into(),
            ));
        }
        rows.push(SplitRow {
            object: fields[0].to_string(),
            split,
            is_anomalous,
            image: PathBuf::from(fields[3]),
            mask: (!fields[4].is_empty()).then(|| PathBuf::from(fields[4])),
            line,
        });
    }
    Ok(rows)
}

pub(super) fn index_class(
    root: &Path,
    rows: &[SplitRow],
    name: &str,
) -> std::result::Result<ClassIndex, Vec<Problem>> {
    let split_file = root.join(SPLIT_FILE);
    let mut problems = Vec::new();
    let class_dir = root.join(name);
    if !class_dir.is_dir() {
        problems.push(problem(
            &class_dir,
            "the class folder named by the split file",
            "no such folder",
        ));
    }
    let mut train = Vec::new();
    let mut test = Vec::new();
    for row in rows.iter().filter(|r| r.object == name) {
        let path = root.join(&row.image);
        let mask = if row.is_anomalous {
            match &row.mask {
                Some(m) => Some(root.join(m)),
                None => {
                    problems.push(problem(
                        &path,
                        format!(
                            "a mask path for this anomalous image (line {} of {})",
                            row.line,
                            split_file.display()
                        ),
                        "an empty mask field",
                    ));
                    None
                }
            }
        } else {
            None
        };
        if row.is_anomalous && row.split == Split::Train {
            problems.push(problem(
                &path,
                format!(
                    "only normal training images (line {} of {})",
                    row.line,
                    split_file.display()
                ),
                "an anomalous training image",
            ));
        }
        let sample = Sample {
            path,
            defect_type: if row.is_anomalous { VISA_ANOMALY } else { GOOD }.to_string(),
            is_anomalous: row.is_anomalous,
            mask,
        };
        match row.split {
            Split::Train => train.push(sample),
            Split::Test => test.push(sample),
        }
    }
    if train.is_empty() {
        problems.push(problem(
            &split_file,
            format!("training rows for class `{name}`"),
            "none",
        ));
    }
    if !test.iter().any(|s| !s.is_anomalous) {
        problems.push(problem(
            &split_file,
            format!("normal test rows for class `{name}`"),
            "none",
        ));
    }
    train.sort_by(|a, b| a.path.cmp(&b.path));
    // Same order as the MVTec layout: normal test images first, then anomalous, each by path.
    test.sort_by(|a, b| (a.is_anomalous, &a.path).cmp(&(b.is_anomalous, &b.path)));
    checked_index(name, train, Vec::new(), test, problems)
}
