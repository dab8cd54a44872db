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
/// and (for training) the class id of every image.
pub struct StepData<'a> {
    /// `[N, C, g, g]`, unstandardised, on the learner's device.
    pub features: &'a Tensor,
    /// The memory features `[N, C_m, 2g, 2g]` of the same images (needed by methods whose
    /// [`Learner::features`](crate::Learner::features) is
    /// [`FeatureKind::AlignAndMemory`](crate::FeatureKind::AlignAndMemory)).
    pub memory: Option<&'a Tensor>,
    /// Class id of every image (empty when only scoring).
    pub class_ids: &'a [u32],
}

impl<'a> StepData<'a> {
    /// Images to score: `features` and, when the method reads them (`kind`), their memory
    /// features, one per image (a clear error otherwise).
    pub(crate) fn to_score(
        features: &'a Tensor,
        memory: Option<&'a Tensor>,
        kind: FeatureKind,
        method: Strategy,
    ) -> Result<Self> {
        let n = features.dim(0)?;
        let memory = match (kind, memory) {
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
        Ok(Self {
            features,
            memory,
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
    pub(crate) fn select(&self, rows: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        Ok((
            self.features.index_select(rows, 0)?,
            self.memory.map(|m| m.index_select(rows, 0)).transpose()?,
        ))
    }

    /// Images `start..start + len`, without class ids.
    pub(crate) fn narrow(&self, start: usize, len: usize) -> Result<(Tensor, Option<Tensor>)> {
        Ok((
            self.features.narrow(0, start, len)?,
            self.memory.map(|m| m.narrow(0, start, len)).transpose()?,
        ))
    }
}

/// Borrows `(features, memory)` as scoring input.
pub(crate) fn images<'a>(x: &'a (Tensor, Option<Tensor>)) -> StepData<'a> {
    StepData {
        features: &x.0,
        memory: x.1.as_ref(),
        class_ids: &[],
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
