//! The run folder: `run.json` (which run it holds, so a different run never overwrites it and a
//! resume never mixes two datasets), each finished step's model and result, written atomically,
//! and the finished steps a restarted run resumes after.

use std::path::{Path, PathBuf};

use iuf_data::DatasetRoot;
use serde::{Deserialize, Serialize};

use super::results::StepResult;
use crate::config::{Strategy, TrainConfig};
use crate::error::{io_err, Error, Result};

/// Writes `bytes` to `path` through a temporary file in the same folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        iuf_model::remove_stale_temps(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        });
    }
    let tmp = iuf_model::temp_path(path);
    std::fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct RunIdentity {
    method: String,
    steps: Vec<Vec<String>>,
    config: serde_json::Value,
    /// The data the run learns from (absent in run folders written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data: Option<DataIdentity>,
}

/// Which images a run uses: the dataset folder and a digest of its file list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct DataIdentity {
    /// The dataset root as given (for the message; the digest decides).
    root: String,
    /// sha256 over every image and mask of the protocol's objects: path relative to the root, and
    /// size in bytes, in index order.
    files_sha256: String,
}

fn data_identity(dataset: &DatasetRoot, classes: &[String]) -> Result<DataIdentity> {
    use sha2::{Digest, Sha256};
    let root = dataset.root();
    let mut h = Sha256::new();
    for c in classes {
        let index = dataset.index_class(c)?;
        for s in index.train.iter().chain(&index.test) {
            for p in std::iter::once(&s.path).chain(s.mask.as_ref()) {
                let rel = p.strip_prefix(root).unwrap_or(p);
                let size = std::fs::metadata(p).map_err(io_err(p))?.len();
                h.update(rel.to_string_lossy().as_bytes());
                h.update([0]);
                h.update(size.to_le_bytes());
            }
        }
    }
    Ok(DataIdentity {
        root: root.display().to_string(),
        files_sha256: format!("{:x}", h.finalize()),
    })
}

/// Writes `run.json`, or checks that the folder's `run.json` describes this very run (method,
/// steps, config and data), so that a different run never overwrites its files and a resume never
/// mixes the steps of two datasets.
pub(crate) fn claim_run_dir(
    dir: &Path,
    method: Strategy,
    steps: &[Vec<String>],
    config: &TrainConfig,
    dataset: &DatasetRoot,
    classes: &[String],
) -> Result<()> {
    let mut identity = RunIdentity {
        method: method.name().to_string(),
        steps: steps.to_vec(),
        config: serde_json::to_value(config).map_err(|e| Error::Msg(e.to_string()))?,
        data: Some(data_identity(dataset, classes)?),
    };
    let id_path = dir.join("run.json");
    if id_path.exists() {
        let found: RunIdentity = read_json(&id_path)?;
        if let (Some(old), Some(new)) = (&found.data, &identity.data) {
            if old != new {
                return Err(Error::RunDir {
                    path: id_path,
                    msg: format!(
                        "holds a run on other data ({} then, {} now: the images or their sizes differ); resume it with its own --data, or choose another output folder",
                        old.root, new.root
                    ),
                });
            }
        }
        if found.data.is_none() {
            tracing::warn!(
                "{} predates recorded data; resuming without checking that --data is the same",
                id_path.display()
            );
            identity.data = None;
        }
        if found != identity {
            return Err(Error::RunDir {
                path: id_path,
                msg: "holds a different run (method, steps or config differ); choose another output folder or delete it".into(),
            });
        }
        Ok(())
    } else {
        write_atomic(&id_path, &to_json(&identity)?)
    }
}

pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    serde_json::from_slice(&bytes).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(v).map_err(|e| Error::Msg(format!("serialising JSON: {e}")))
}

/// File names inside a run directory.
pub fn step_model_path(dir: &Path, step: usize) -> PathBuf {
    dir.join(format!("step-{step}.safetensors"))
}

pub(crate) fn step_result_path(dir: &Path, step: usize) -> PathBuf {
    dir.join(format!("step-{step}.json"))
}

/// The results of the steps a run folder has finished, in order: a step counts when both its
/// model and its result are there and the result reads back (a damaged one is redone).
pub(crate) fn finished_steps(dir: &Path, steps: usize) -> Vec<StepResult> {
    let mut done = Vec::new();
    for s in 0..steps {
        let (mp, rp) = (step_model_path(dir, s), step_result_path(dir, s));
        if !(mp.exists() && rp.exists()) {
            break;
        }
        match read_json::<StepResult>(&rp) {
            Ok(r) => done.push(r),
            Err(e) => {
                tracing::warn!("{e}; redoing step {s}");
                break;
            }
        }
    }
    done
}
