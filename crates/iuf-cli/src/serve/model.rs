//! The model a service answers with: loaded and checked as a whole, then swapped in atomically.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use iuf_incremental::Learner;
use serde_json::Value;

use crate::inspect::Inspector;
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
    /// What `GET /v1/model` answers (`iuf info --json` plus the digest).
    pub info: Value,
    /// The model's calibration quantile (the thresholds' quantile).
    pub quantile: f64,
}

fn file_sha256(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(iuf_backbone::fetch::sha256_hex(&bytes))
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
    let before = file_sha256(path)?;
    let mut learner = setup::load_model(path, device)?;
    precision.apply(&mut learner)?;
    let variant = setup::model_backbone(&learner, path)?;
    let backbone = match current {
        Some(c)
            if c.learner.meta().backbone == learner.meta().backbone
                && setup::check_backbone_weights(&learner, path, &c.backbone).is_ok() =>
        {
            c.backbone.clone()
        }
        _ => Arc::new(setup::backbone(g, variant, device)?),
    };
    setup::check_backbone_weights(&learner, path, &backbone)?;
    Inspector::new(&learner, &backbone.backbone)
        .with_context(|| format!("model {} cannot be served", path.display()))?;
    let mut info = crate::cmd::info::model_json(path, &learner)?;
    // The file must not have changed while it was read twice (model, then info): an atomic
    // rename by `iuf learn` in between would pair one file's digest with another's weights.
    let sha256 = file_sha256(path)?;
    if sha256 != before {
        bail!(
            "{} changed while it was being loaded; try the reload again",
            path.display()
        );
    }
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
