//! What goes into a learner and its scorers and what comes out: a step's images, the record of
//! a step, the losses of an epoch, and the predictions for a batch.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::config::Strategy;
use crate::error::{Error, Result};

/// Which backbone features a method's scorers read. The backbone computes both in one pass;
/// the memory features are larger, so they are only computed and cached when needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureKind {
    /// `feature_align` `[N, C, g, g]` only.
    Align,
    /// `feature_align` and the memory features `[N, C_m, 2g, 2g]` (section 10).
    AlignAndMemory,
}

impl FeatureKind {
    /// Whether the memory features are needed.
    pub fn memory(self) -> bool {
        self == FeatureKind::AlignAndMemory
    }
}

/// Images per forward pass when evaluating or accumulating statistics.
pub(crate) const EVAL_BATCH: usize = 16;

/// Images given to a learner: `feature_align`, the memory features when the method needs them,
/// the tiled view's memory features when the model has one, and (for training) the class id of
/// every image.
pub struct StepData<'a> {
    /// `[N, C, g, g]`, unstandardised, on the learner's device.
    pub features: &'a Tensor,
    /// The memory features `[N, C_m, 2g, 2g]` of the same images (needed by methods whose
    /// [`Learner::features`](crate::Learner::features) is
    /// [`FeatureKind::AlignAndMemory`](crate::FeatureKind::AlignAndMemory)).
    pub memory: Option<&'a Tensor>,
    /// The memory features of each image's tiles `[N, T, C_m, 2g, 2g]`, in the order of the
    /// model's [`Tiling::origins`](iuf_data::image::tiles::Tiling::origins) (models with a
    /// tiled view).
    pub tiles: Option<&'a Tensor>,
    /// Class id of every image (empty when only scoring).
    pub class_ids: &'a [u32],
}

/// The backbone features of some images, owned: `feature_align`, and the memory features of the
/// whole view and of the tiles when the model reads them.
#[derive(Debug, Clone)]
pub struct ImageFeatures {
    /// `feature_align` `[N, C, g, g]`.
    pub align: Tensor,
    /// The whole view's memory features `[N, C_m, 2g, 2g]`.
    pub memory: Option<Tensor>,
    /// The tiles' memory features `[N, T, C_m, 2g, 2g]`.
    pub tiles: Option<Tensor>,
}

impl ImageFeatures {
    /// Only `feature_align`.
    pub fn align(align: Tensor) -> Self {
        Self {
            align,
            memory: None,
            tiles: None,
        }
    }

    /// Images in the batch.
    pub fn len(&self) -> Result<usize> {
        Ok(self.align.dim(0)?)
    }

    /// Whether there is no image.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Borrowed as scoring input (no class ids).
    pub fn view(&self) -> StepData<'_> {
        self.with_ids(&[])
    }

    /// Borrowed as training input with each image's class id.
    pub fn with_ids<'a>(&'a self, class_ids: &'a [u32]) -> StepData<'a> {
        StepData {
            features: &self.align,
            memory: self.memory.as_ref(),
            tiles: self.tiles.as_ref(),
            class_ids,
        }
    }
}

impl<'a> StepData<'a> {
    /// Images to score: `x`, with the memory features when the method reads them (`kind`) and
    /// the tiles' when the model has a tiled view (`tiled`), one per image (a clear error
    /// otherwise).
    pub(crate) fn to_score(
        x: &'a ImageFeatures,
        kind: FeatureKind,
        tiled: bool,
        method: Strategy,
    ) -> Result<Self> {
        let n = x.align.dim(0)?;
        let memory = match (kind, &x.memory) {
            (FeatureKind::AlignAndMemory, Some(m)) if m.dim(0)? == n => Some(m),
            (FeatureKind::AlignAndMemory, Some(m)) => {
                return Err(Error::Msg(format!(
                    "{n} images but {} memory feature maps",
                    m.dim(0)?
                )))
            }
            (FeatureKind::AlignAndMemory, None) => {
                return Err(Error::Msg(format!(
                    "a `{method}` model needs the images' memory features"
                )))
            }
            (FeatureKind::Align, _) => None,
        };
        let tiles = match (tiled, &x.tiles) {
            (true, Some(t)) if t.dim(0)? == n => Some(t),
            (true, Some(t)) => {
                return Err(Error::Msg(format!(
                    "{n} images but the tiles of {}",
                    t.dim(0)?
                )))
            }
            (true, None) => {
                return Err(Error::Msg(
                    "the model has a tiled view and needs the features of each image's tiles"
                        .into(),
                ))
            }
            (false, _) => None,
        };
        Ok(Self {
            features: &x.align,
            memory,
            tiles,
            class_ids: &[],
        })
    }

    /// Checks training images of step `step`: at least one, a class id each. Their number.
    pub(crate) fn check_training(&self, step: usize, new: &[String]) -> Result<usize> {
        let n = self.features.dim(0)?;
        if n == 0 {
            return Err(Error::Msg(format!(
                "step {step}: no training images for {}",
                new.join(", ")
            )));
        }
        if self.class_ids.len() != n {
            return Err(Error::Msg(format!(
                "step {step}: {n} feature maps but {} class ids",
                self.class_ids.len()
            )));
        }
        Ok(n)
    }

    /// Images `rows` (a `u32` index tensor) of these, without class ids.
    pub(crate) fn select(&self, rows: &Tensor) -> Result<ImageFeatures> {
        Ok(ImageFeatures {
            align: self.features.index_select(rows, 0)?,
            memory: self.memory.map(|m| m.index_select(rows, 0)).transpose()?,
            tiles: self.tiles.map(|m| m.index_select(rows, 0)).transpose()?,
        })
    }

    /// Images `start..start + len`, without class ids.
    pub(crate) fn narrow(&self, start: usize, len: usize) -> Result<ImageFeatures> {
        Ok(ImageFeatures {
            align: self.features.narrow(0, start, len)?,
            memory: self.memory.map(|m| m.narrow(0, start, len)).transpose()?,
            tiles: self.tiles.map(|m| m.narrow(0, start, len)).transpose()?,
        })
    }
}

/// What one step did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Step index in the protocol (0 = base).
    pub step: usize,
    /// Objects learned in this step.
    pub classes: Vec<String>,
    /// Training images used.
    pub images: usize,
    /// Epochs run.
    pub epochs: usize,
    /// Optimiser used (`adamw`, `constrained-sgd`).
    pub optimizer: String,
    /// Mean training losses of the last epoch.
    pub final_loss: LossLog,
    /// Wall time of the step's training, seconds.
    pub train_seconds: f64,
}

/// Mean loss terms over an epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LossLog {
    /// Total loss.
    pub total: f64,
    /// Reconstruction MSE.
    pub rec: f64,
    /// Discriminator cross-entropy.
    pub ce: f64,
    /// Semantic compression loss.
    pub sc: f64,
    /// Quadratic penalty (EWC / MAS / SI).
    pub penalty: f64,
}

impl LossLog {
    /// Adds a batch's losses.
    pub(crate) fn add(&mut self, b: &LossLog) {
        self.total += b.total;
        self.rec += b.rec;
        self.ce += b.ce;
        self.sc += b.sc;
        self.penalty += b.penalty;
    }

    /// The mean of `batches` added batches.
    pub(crate) fn mean(&self, batches: usize) -> LossLog {
        let k = batches.max(1) as f64;
        LossLog {
            total: self.total / k,
            rec: self.rec / k,
            ce: self.ce / k,
            sc: self.sc / k,
            penalty: self.penalty / k,
        }
    }
}

/// Anomaly maps and scores of a batch of images.
pub struct Predictions {
    /// `[N, S, S]` anomaly maps at the input image size, on the CPU.
    pub maps: Tensor,
    /// Image scores (section 6).
    pub scores: Vec<f32>,
    /// Class probabilities from the discriminator, `[N, K]`, on the CPU (the object
    /// probabilities for methods without one).
    pub class_probs: Tensor,
    /// Which learned object each image shows, `[N, K]` probabilities on the CPU: from the object
    /// prototypes in the frozen backbone's feature space when the model has them (they cannot be
    /// forgotten), else the discriminator's `class_probs`. Objects not learned get 0.
    pub object_probs: Tensor,
    /// Per image, the object it was judged as (given, or the most probable learned one) and its
    /// probability; empty when the model has learned nothing.
    pub objects: Vec<(String, f32)>,
}

impl Predictions {
    /// The predictions of consecutive batches as one, in order (at least one part).
    pub fn concat(parts: Vec<Predictions>) -> Result<Predictions> {
        if parts.len() == 1 {
            return Ok(parts.into_iter().next().expect("one part"));
        }
        let cat = |f: fn(&Predictions) -> &Tensor| -> Result<Tensor> {
            let ts: Vec<&Tensor> = parts.iter().map(f).collect();
            Ok(Tensor::cat(&ts, 0)?)
        };
        let maps = cat(|p| &p.maps)?;
        let class_probs = cat(|p| &p.class_probs)?;
        let object_probs = cat(|p| &p.object_probs)?;
        let mut scores = Vec::new();
        let mut objects = Vec::new();
        for p in parts {
            scores.extend(p.scores);
            objects.extend(p.objects);
        }
        Ok(Predictions {
            maps,
            scores,
            class_probs,
            object_probs,
            objects,
        })
    }
}
