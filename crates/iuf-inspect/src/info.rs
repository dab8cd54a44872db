//! What a model file holds, as JSON: `iuf info --json`, `iuf serve`'s `GET /v1/model` and the
//! Python binding's `Model.info()` all answer with this one description.

use std::path::Path;

use anyhow::{Context, Result};
use iuf_incremental::Learner;
use serde_json::{json, Value};

/// What `iuf info --json` prints for the model file `path`, already loaded as `learner`: method
/// and configuration, backbone and the digest of its weights, the objects and the step that
/// learned each, thresholds, training history, the network's parameter count and the file's size.
pub fn model_json(path: &Path, learner: &Learner) -> Result<Value> {
    let bytes = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    let meta = learner.meta();
    let cfg = learner.config();
    Ok(json!({
        "model": path,
        "bytes": bytes,
        "parameters": learner.parameters(),
        "method": learner.strategy().name(),
        "backbone": meta.backbone,
        "backbone_weights_sha256": learner.backbone_weights(),
        "num_classes": meta.config.num_classes,
        "class_names": meta.class_names,
        "learned": meta.learned,
        "thresholds": meta.thresholds,
        "threshold_quantile": cfg.calibration.quantile,
        "threshold_settings": learner.calibrator().settings(),
        "object_images": learner.object_images(),
        "good_added": learner.good_added(),
        "steps": learner.steps(),
        "network": learner.has_network(),
        "memory_patches": learner.memory_sizes(),
        "config": cfg,
    }))
}
