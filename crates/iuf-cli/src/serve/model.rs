//! The model a service answers with: loaded and checked as a whole, then swapped in atomically.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::Device;
use ed25519_dalek::VerifyingKey;
use iuf_data::FileKind;
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

/// Why a model file cannot be served, said twice: `cause` for the person who runs the service
/// (the startup error, the log), with the flags that fix it; `api` for an HTTP client (a refused
/// reload), in the API's terms and naming the file by its name only.
pub struct Refusal {
    pub cause: anyhow::Error,
    pub api: String,
}

impl From<Refusal> for anyhow::Error {
    fn from(r: Refusal) -> Self {
        r.cause
    }
}

/// Loads and checks `path`: a readable model whose digests hold, signed by `signed_by` when
/// given, which has learned at least one object, with backbone weights it was trained on.
/// `current` lends its backbone when the weights are the same.
pub fn load(
    g: &Global,
    path: &Path,
    device: &Device,
    precision: &PrecisionArg,
    signed_by: Option<&VerifyingKey>,
    current: Option<&Served>,
) -> Result<Served, Refusal> {
    let name = file_name(path);
    // The innermost cause in words, the file named by its name only.
    let reason = |e: &anyhow::Error| {
        e.root_cause()
            .to_string()
            .replace(&path.display().to_string(), &name)
    };
    let refuse = |api: String| move |cause: anyhow::Error| Refusal { cause, api };
    // One mapping: the digest and the model come from the same bytes, even when `iuf learn`
    // renames a new file into place meanwhile (the mapping keeps the old file's pages).
    let bytes = iuf_model::ModelBytes::open(path)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("reading model {}", path.display()))
        .map_err(|e| {
            let api = format!("the model file {name} cannot be read ({})", reason(&e));
            refuse(api)(e)
        })?;
    // The file's sha256 and the model (whose loading checks the tensors' own digest) are each
    // a pass over every byte: run them side by side.
    let (sha256, loaded) = std::thread::scope(|s| {
        let sha = s.spawn(|| iuf_backbone::fetch::sha256_hex(&bytes));
        // Inspection only: the statistics kept for updates stay in the file (an update reads
        // the file again), so every replica holds only what scoring reads.
        let loaded = setup::load_model_for_inspection(path, &bytes, device);
        (sha.join().expect("sha256 thread"), loaded)
    });
    let mut learner = loaded.map_err(|e| {
        let api = match FileKind::of_bytes(&bytes) {
            FileKind::Other => format!(
                "the model file {name} cannot be loaded (damaged, or not a model file): {}",
                reason(&e)
            ),
            kind => format!("the model file {name} is {kind}, not a model"),
        };
        refuse(api)(e)
    })?;
    if let Some(key) = signed_by {
        crate::cmd::sign::verify(path, &bytes, key).map_err(|r| Refusal {
            cause: anyhow::anyhow!(r.message(&path.display().to_string(), key, false)),
            api: r.message(&name, key, true),
        })?;
    }
    let size = bytes.len();
    drop(bytes);
    precision.apply(&mut learner).map_err(|e| {
        let api = format!(
            "the model file {name} cannot run at this service's precision: {}",
            reason(&e)
        );
        refuse(api)(e)
    })?;
    let variant = setup::model_backbone(&learner, path).map_err(|e| {
        let api = format!(
            "the model file {name} needs the backbone `{}`, which this service does not know",
            learner.meta().backbone
        );
        refuse(api)(e)
    })?;
    let backbone = match current {
        Some(c)
            if c.learner.meta().backbone == learner.meta().backbone
                && setup::check_backbone_weights(&learner, path, &c.backbone).is_ok() =>
        {
            c.backbone.clone()
        }
        _ => {
            let loaded = setup::backbone(g, variant, device).map_err(|e| {
                let api = format!(
                    "the model file {name} needs {} backbone weights, which this service cannot \
                     load (its log says why)",
                    variant.model_name()
                );
                refuse(api)(e)
            })?;
            setup::check_backbone_weights(&learner, path, &loaded).map_err(|e| {
                let short = |d: &str| d[..d.len().min(16)].to_string();
                let api = format!(
                    "the model file {name} was trained on backbone weights with tensor digest {}, \
                     but this service runs weights with digest {}: its scores would mean nothing",
                    short(learner.backbone_weights().unwrap_or_default()),
                    short(&loaded.id.weights_digest)
                );
                refuse(api)(e)
            })?;
            Arc::new(loaded)
        }
    };
    Inspector::new(&learner, &backbone.backbone)
        .with_context(|| format!("model {} cannot be served", path.display()))
        .map_err(|e| {
            let api = if learner.learned_classes().is_empty() {
                format!("the model file {name} has learned no object yet: it cannot inspect")
            } else {
                format!("the model file {name} cannot be served: {}", reason(&e))
            };
            refuse(api)(e)
        })?;
    let mut info = crate::cmd::info::model_json(path, &learner).map_err(|e| {
        let api = format!("the model file {name} cannot be described: {}", reason(&e));
        refuse(api)(e)
    })?;
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
