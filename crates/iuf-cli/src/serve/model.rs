//! The model a service answers with: loaded and checked as a whole, then swapped in atomically.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::Device;
use iuf_incremental::Learner;
use iuf_inspect::Inspector;
use serde_json::Value;

use crate::setup::{self, LoadedBackbone, PrecisionArg};
use crate::Global;

/// A model file loaded with its backbone; immutable once built. Requests take an `Arc` of the
/// current one for a whole batch, so a reload never mixes two models in one answer.
pub struct Served {
    pub learner: Learner,
    /// Shared with the next model when it was trained on the same weights.
    pub backbone: Arc<LoadedBackbone>,
    /// sha256 of the model file's bytes.
    pub sha256: String,
    /// What `GET /v1/model` answers (`iuf info --json` plus the digest), naming the file by its
    /// name only: where the service keeps its files is none of a client's business.
    pub info: Value,
    /// The model's calibration quantile (the thresholds' quantile).
    pub quantile: f64,
}

/// Loads and checks `path`: a readable model whose digests hold, which has learned at least one
/// object, with backbone weights it was trained on. `current` lends its backbone when the weights
/// are the same.
pub fn load(
    g: &Global,
    path: &Path,
    device: &Device,
    precision: &PrecisionArg,
    current: Option<&Served>,
) -> Result<Served> {
    // One read: the digest and the model come from the same bytes, even when `iuf learn`
    // renames a new file into place meanwhile.
    let bytes = std::fs::read(path).with_context(|| format!("reading model {}", path.display()))?;
    let sha256 = iuf_backbone::fetch::sha256_hex(&bytes);
    let mut learner = setup::load_model_bytes(path, &bytes, device)?;
    let size = bytes.len();
    drop(bytes);
    precision.apply(&mut learner)?;
    let variant = setup::model_backbone(&learner, path)?;
    let backbone = match current {
        Some(c)
            if c.learner.meta().backbone == learner.meta().backbone
                && setup::check_backbone_weights(&learner, path, &c.backbone).is_ok() =>
        {
            c.backbone.clone()
        }
        _ => {
            let loaded = Arc::new(setup::backbone(g, variant, device)?);
            setup::check_backbone_weights(&learner, path, &loaded)?;
            loaded
        }
    };
    Inspector::new(&learner, &backbone.backbone)
        .with_context(|| format!("model {} cannot be served", path.display()))?;
    let mut info = crate::cmd::info::model_json(path, &learner)?;
    // The size of the bytes read, not of whatever file is at `path` now.
    info["bytes"] = size.into();
    info["model"] = Value::String(file_name(path));
    info["sha256"] = Value::String(sha256.clone());
    let quantile = learner.config().calibration.quantile;
    Ok(Served {
        learner,
        backbone,
        sha256,
        info,
        quantile,
    })
}

/// The model file's name without its folder: all that clients are shown (`/v1/model`,
/// `/metrics`).
pub fn file_name(path: &Path) -> String {
    path.file_name()
        .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned())
}
