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
//! - [`TiledMemory`]: per object, a coreset of the patches of the image's tiles (issue 22).
//! - [`ClassMeans`]: per object, the mean feature at every position (the floor of issue 6).
//!
//! A method is the list [`scorers`] builds; the [`Calibrator`](crate::calibrate::Calibrator) fuses
//! the list's maps and owns the verdict.

use candle_core::Device;
use iuf_model::LoadedModel;

use crate::config::{Strategy, TrainConfig};
use crate::error::{Error, Result};

mod class_mean;
mod gaussian;
mod interface;
mod nearest;
mod network;
mod reconstruction;
mod tiles;
pub mod trainer;

pub use class_mean::ClassMeans;
pub use gaussian::Gaussians;
pub(crate) use interface::find_state;
pub use interface::{Batch, FeatureKind, Maps, Scorer, Step, Trained};
pub use nearest::NearestNeighbour;
pub use reconstruction::Reconstruction;
pub use tiles::TiledMemory;

/// The prefixes of the state tensors that belong to one object each (`<prefix><object>`, then
/// possibly `.` or `/` and more): the scorers without a network. [`crate::merge`] moves them
/// between model files by object.
pub(crate) const PER_OBJECT_PREFIXES: [&str; 4] = [
    nearest::MEMORY_PREFIX,
    gaussian::GAUSSIAN_PREFIX,
    tiles::TILES_PREFIX,
    class_mean::CLASS_MEAN_PREFIX,
];

/// Whether the state tensor `name` is kept only to update an object exactly (a Gaussian's image
/// count and scatter matrices), never read to score: inspection may leave it unread.
pub fn is_update_statistic(name: &str) -> bool {
    name.starts_with(gaussian::GAUSSIAN_PREFIX)
        && (name.ends_with(".scatter") || name.ends_with(".count"))
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
        if let Some(t) = &cfg.tiles {
            list.push(Box::new(TiledMemory::new(t, device, from)?));
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
