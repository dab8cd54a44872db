//! Scorers: the parts of a method that turn an image's features into an anomaly map.
//!
//! Each scorer owns its state, learns the objects of a step from their good training images,
//! gives raw maps for a batch of images (each scored as the object it shows), and writes and reads
//! its own tensors in the model file. The shape is linfa's `Fit` / `IncrementalFit` / `Predict`
//! folded into one trait, because every scorer here keeps learning (one step per protocol step).
//!
//! - [`Reconstruction`]: the UniAD/IUF transformer; its training step lives in [`trainer`].
//! - [`NearestNeighbour`]: per object, a coreset of normal patch features (section 10).
//! - [`Gaussians`]: per object, a Gaussian of `feature_align` at every position (section 10).
//! - [`ClassMeans`]: per object, the mean feature at every position (the floor of issue 6).
//!
//! A method is the list [`scorers`] builds; the [`Calibrator`](crate::calibrate::Calibrator) fuses
//! the list's maps and owns the verdict.

use candle_core::{Device, Tensor};
use iuf_model::LoadedModel;

use crate::config::{Strategy, TrainConfig};
use crate::error::{Error, Result};
use crate::learner::{LossLog, StepData};
use crate::progress::Progress;

mod class_mean;
mod gaussian;
mod nearest;
mod network;
mod reconstruction;
pub mod trainer;

pub use class_mean::ClassMeans;
pub use gaussian::Gaussians;
pub use nearest::NearestNeighbour;
pub use reconstruction::Reconstruction;

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

/// What a scorer learns from in one step.
pub struct Step<'a> {
    /// Step index in the protocol (0 = base).
    pub index: usize,
    /// The step's new objects with their class ids.
    pub new: &'a [(String, u32)],
    /// Whether the model had learned nothing before this step.
    pub is_base: bool,
    /// The learner's configuration and method.
    pub cfg: &'a TrainConfig,
    pub strategy: Strategy,
    /// Training progress (epochs of a network).
    pub progress: &'a dyn Progress,
}

impl Step<'_> {
    /// Indices (on `device`) of the images of class `id` among `class_ids`.
    pub fn rows(id: u32, class_ids: &[u32], device: &Device) -> Result<Tensor> {
        let rows: Vec<u32> = (0..class_ids.len() as u32)
            .filter(|&i| class_ids[i as usize] == id)
            .collect();
        let n = rows.len();
        Ok(Tensor::from_vec(rows, n, device)?)
    }
}

/// What training a network did in a step (scorers without a network train nothing).
#[derive(Debug, Clone)]
pub struct Trained {
    pub epochs: usize,
    pub optimizer: &'static str,
    /// Mean losses of the last epoch.
    pub last: LossLog,
}

/// A scorer's maps of a batch of images.
pub struct Maps {
    /// `[n, H, W]` at the input image size, on the device of the features.
    pub maps: Tensor,
    /// `[n, K]` class probabilities, from scorers that classify (the network's discriminator).
    pub class_probs: Option<Tensor>,
}

/// One part of a method that maps features to an anomaly map.
pub trait Scorer: Send + Sync {
    /// Its name: the key of its map normalisation in the model file, and in logs.
    fn name(&self) -> &'static str;

    /// The backbone features it reads.
    fn features(&self) -> FeatureKind {
        FeatureKind::Align
    }

    /// Its weight in the fused map (methods that normalise and fuse their maps).
    fn weight(&self, cfg: &TrainConfig) -> f64;

    /// Learns the step's new objects from their good training images (`train` holds only the
    /// step's images; `step.new` names the objects and their class ids). Scorers that train a
    /// network say what the training did.
    fn learn(&mut self, step: &Step<'_>, train: &StepData<'_>) -> Result<Option<Trained>>;

    /// Whether it can score images of `object` (false for an object it never learned, e.g. one
    /// learned before a model file had this scorer).
    fn knows(&self, object: &str) -> bool;

    /// Maps of a batch: each image scored as `objects[i]` (`None` for scorers that need no object:
    /// per-object scorers fail then).
    fn maps(
        &self,
        cfg: &TrainConfig,
        images: &StepData<'_>,
        objects: Option<&[String]>,
        size: (usize, usize),
    ) -> Result<Maps>;

    /// Its tensors for the model file (names under `state.`, or network weights in the varmap).
    fn state(&self, cfg: &TrainConfig) -> Result<Vec<(String, Tensor)>>;

    /// Trainable parameters (0 for scorers without a network).
    fn parameters(&self) -> usize {
        0
    }

    /// Patches kept for `object` (memory scorers).
    fn patches(&self, _object: &str) -> Option<usize> {
        None
    }

    /// The network, for scorers that have one (its weights are saved through the varmap).
    fn network(&self) -> Option<&Reconstruction> {
        None
    }
}

/// The scorers of `strategy`, new (`from: None`) or read back from a model file. The one place
/// where a method says what it is made of; adding a scorer adds a line here.
pub fn scorers(
    strategy: Strategy,
    cfg: &TrainConfig,
    device: &Device,
    from: Option<&LoadedModel>,
) -> Result<Vec<Box<dyn Scorer>>> {
    let mut list: Vec<Box<dyn Scorer>> = Vec::new();
    if strategy.uses_memory() {
        list.push(Box::new(NearestNeighbour::new(device, from)?));
        if cfg.fusion.gaussian > 0.0 {
            list.push(Box::new(Gaussians::new(from)?));
        }
    }
    if strategy.trains_network() {
        list.push(Box::new(Reconstruction::new(cfg, device, from)?));
    }
    if strategy == Strategy::ClassMean {
        list.push(Box::new(ClassMeans::new(device, from)?));
    }
    if list.is_empty() {
        return Err(Error::Config(format!("`{strategy}` has no scorer")));
    }
    Ok(list)
}

/// Groups a batch by object: for every distinct object (in name order), its name and the indices of
/// its images. Per-object scorers score each group against that object's statistics.
pub(crate) fn by_object(objects: &[String]) -> Vec<(&str, Vec<u32>)> {
    let mut distinct: Vec<&String> = objects.iter().collect();
    distinct.sort();
    distinct.dedup();
    distinct
        .into_iter()
        .map(|o| {
            let idx = (0..objects.len() as u32)
                .filter(|&i| &objects[i as usize] == o)
                .collect();
            (o.as_str(), idx)
        })
        .collect()
}

/// Per-object raw maps `[n, 1, h, w]` brought to `[n, H, W]` at the image size: each object's
/// group scored by `raw` (which gets the object and the group's rows), upsampled as the
/// reconstruction map is, and smoothed with `sigma` (0: not smoothed).
pub(crate) fn per_object_maps(
    objects: Option<&[String]>,
    what: &str,
    size: (usize, usize),
    sigma: f64,
    mut raw: impl FnMut(&str, &Tensor) -> Result<Tensor>,
    device: &Device,
) -> Result<Tensor> {
    let objects = objects.ok_or_else(|| {
        Error::Msg(format!(
            "the {what} scores each image against its object's statistics, but no object was given"
        ))
    })?;
    let mut out: Vec<Option<Tensor>> = vec![None; objects.len()];
    for (object, idx) in by_object(objects) {
        let rows = Tensor::from_vec(idx.clone(), idx.len(), device)?;
        let maps = iuf_model::anomaly_map(&raw(object, &rows)?, size)?.squeeze(1)?;
        let maps = iuf_model::gaussian_blur(&maps, sigma)?;
        for (j, &i) in idx.iter().enumerate() {
            out[i as usize] = Some(maps.get(j)?);
        }
    }
    let out: Vec<Tensor> = out.into_iter().map(|t| t.expect("every image")).collect();
    Ok(Tensor::stack(&out, 0)?)
}

/// The tensor `name` of a loaded model file's state, if present.
pub(crate) fn find_state(loaded: &LoadedModel, name: &str) -> Option<Tensor> {
    loaded
        .state
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, t)| t.clone())
}

/// FNV-1a of `bytes`: a stable hash (std's hasher may change between releases).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
