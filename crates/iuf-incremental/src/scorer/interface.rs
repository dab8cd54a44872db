//! What every scorer shares: the [`Scorer`] trait, what it learns from ([`Step`]) and maps
//! ([`Batch`]), what it gives back ([`Maps`], [`Trained`]), and the helpers of the per-object
//! scorers.

use candle_core::{Device, Tensor};
use iuf_model::LoadedModel;

use crate::config::{Strategy, TrainConfig};
use crate::error::{Error, Result};
use crate::progress::Progress;
pub use crate::step::FeatureKind;
use crate::step::{LossLog, StepData};

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
    /// The step's new objects, each with its images among `images` (a `u32` row tensor).
    pub fn objects<'b>(
        &'b self,
        images: &'b StepData<'_>,
    ) -> impl Iterator<Item = Result<(&'b str, Tensor)>> + 'b {
        self.new.iter().map(move |(c, id)| {
            Ok((
                c.as_str(),
                Step::rows(*id, images.class_ids, images.features.device())?,
            ))
        })
    }

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

/// A batch to map: images, each image's object, the map size, and the learner's configuration.
pub struct Batch<'a> {
    pub cfg: &'a TrainConfig,
    pub images: &'a StepData<'a>,
    /// Each image's object (`None` when the model cannot tell: scorers that need no object map
    /// the batch all the same, per-object scorers fail).
    pub objects: Option<&'a [String]>,
    /// `(H, W)` of the maps: the whole view's input image size, or for a tiled scorer the fused
    /// map's size.
    pub size: (usize, usize),
}

/// A scorer's maps of a batch of images.
pub struct Maps {
    /// `[n, H, W]` at the input image size, on the device of the features.
    pub maps: Tensor,
    /// `[n, K]` class probabilities, from scorers that classify (the network's discriminator).
    pub class_probs: Option<Tensor>,
}

impl Maps {
    /// Maps of a scorer that does not classify.
    pub fn plain(maps: Tensor) -> Self {
        Self {
            maps,
            class_probs: None,
        }
    }
}

/// One part of a method that maps features to an anomaly map.
pub trait Scorer: Send + Sync {
    /// Its name: the key of its map normalisation in the model file, and in logs.
    fn name(&self) -> &'static str;

    /// The backbone features it reads.
    fn features(&self) -> FeatureKind {
        FeatureKind::Align
    }

    /// Whether it reads the tiled view (its maps come at the fused map's size; the whole view's
    /// scorers map at the whole image's size and the learner brings them to the fused size).
    fn tiled(&self) -> bool {
        false
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

    /// Whether [`Scorer::add_good`] can update `object` (an error saying why not). Checked for
    /// every scorer before any is updated.
    fn can_add_good(&self, object: &str) -> Result<()> {
        Err(Error::Config(format!(
            "the {} cannot add good images to `{object}`: it is a trained network, not a \
             statistic of the good images (adding good images is for the memory methods)",
            self.name()
        )))
    }

    /// Updates the statistics of the learned object `object` with more of its good images
    /// (`train`: only that object's images). Touches no other object's state.
    fn add_good(&mut self, object: &str, cfg: &TrainConfig, train: &StepData<'_>) -> Result<()> {
        let _ = (cfg, train);
        self.can_add_good(object)
    }

    /// Maps of a batch, each image scored as its object.
    fn maps(&self, batch: &Batch<'_>) -> Result<Maps>;

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

    /// The network's variables, for a scorer that has one (the model file's weights).
    fn varmap(&self) -> Option<&candle_nn::VarMap> {
        None
    }

    /// Images accumulated in each Gram matrix of a network (the model file's metadata keeps
    /// them).
    fn gram_counts(&self) -> Vec<u64> {
        Vec::new()
    }
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
/// group of `batch` scored by `raw` (which gets the object and the group's rows, a `u32` tensor),
/// upsampled as the reconstruction map is, and smoothed with `sigma` (0: not smoothed).
pub(crate) fn per_object_maps(
    batch: &Batch<'_>,
    what: &str,
    sigma: f64,
    mut raw: impl FnMut(&str, &Tensor) -> Result<Tensor>,
) -> Result<Maps> {
    let objects = batch.objects.ok_or_else(|| {
        Error::Msg(format!(
            "the {what} scores each image against its object's statistics, but no object was given"
        ))
    })?;
    let device = batch.images.features.device();
    let mut out: Vec<Option<Tensor>> = vec![None; objects.len()];
    for (object, idx) in by_object(objects) {
        let rows = Tensor::from_vec(idx.clone(), idx.len(), device)?;
        let maps = iuf_model::anomaly_map(&raw(object, &rows)?, batch.size)?.squeeze(1)?;
        let maps = iuf_model::gaussian_blur(&maps, sigma)?;
        for (j, &i) in idx.iter().enumerate() {
            out[i as usize] = Some(maps.get(j)?);
        }
    }
    let out: Vec<Tensor> = out.into_iter().map(|t| t.expect("every image")).collect();
    Ok(Maps::plain(Tensor::stack(&out, 0)?))
}

/// The state tensors of a model file whose names start with `prefix`, by the rest of the name
/// (the object): what a per-object scorer wrote.
pub(crate) fn per_object_state<'a>(
    from: Option<&'a LoadedModel>,
    prefix: &'a str,
) -> impl Iterator<Item = (&'a str, &'a Tensor)> + 'a {
    from.into_iter()
        .flat_map(|l| l.state.iter())
        .filter_map(move |(name, t)| Some((name.strip_prefix(prefix)?, t)))
}

/// The tensor `name` of a loaded model file's state, if present.
pub(crate) fn find_state(state: &[(String, Tensor)], name: &str) -> Option<Tensor> {
    state
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
