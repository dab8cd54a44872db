//! The images of a step: the hold-out split, features (with the memory features when the
//! method reads them) and class ids of the training and held-out images, and an object's test set.

use std::path::PathBuf;

use iuf_data::{DatasetRoot, Sample};
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::config::TrainConfig;
use crate::error::Result;
use crate::eval::EvalSet;
use crate::feature_store::FeatureStore;
use crate::learner::{Learner, StepData};
use crate::progress::Progress;
use crate::step::ImageFeatures;

/// Splits a class's training images into (train, held-out) deterministically.
pub fn split_holdout(samples: &[Sample], cfg: &TrainConfig) -> (Vec<Sample>, Vec<Sample>) {
    let hold = holdout_mask(samples.len(), cfg);
    let (mut tr, mut ho) = (Vec::new(), Vec::new());
    for (s, h) in samples.iter().zip(hold) {
        if h {
            ho.push(s.clone());
        } else {
            tr.push(s.clone());
        }
    }
    (tr, ho)
}

/// Which of `n` training images are held out for calibration (seeded by `cfg.seed`): a
/// `holdout_fraction` of them, at least `holdout_min`, never more than a fifth of a small class
/// nor leaving fewer than 2 to train on.
pub fn holdout_mask(n: usize, cfg: &TrainConfig) -> Vec<bool> {
    let c = &cfg.calibration;
    let want = ((n as f64 * c.holdout_fraction).round() as usize).max(c.holdout_min);
    let k = if c.holdout_fraction == 0.0 {
        0
    } else {
        want.min(n / 5).min(n.saturating_sub(2))
    };
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut rand::rngs::StdRng::seed_from_u64(
        cfg.seed ^ 0x5EED_CA11,
    ));
    let mut hold = vec![false; n];
    for &i in &idx[..k] {
        hold[i] = true;
    }
    hold
}

/// An object's test set: its images, labels, defect types and masks (at the learner's map size).
/// [`crate::eval::evaluate`] reads the images' features from the feature store as it goes.
pub fn eval_set(dataset: &DatasetRoot, class: &str, learner: &Learner) -> Result<EvalSet> {
    let index = dataset.index_class(class)?;
    let masks: Vec<Option<PathBuf>> = index.test.iter().map(|s| s.mask.clone()).collect();
    let masks = iuf_data::batch::load_masks(&masks, learner.map_size())?;
    Ok(EvalSet {
        class: class.to_string(),
        paths: index.test.iter().map(|s| s.path.clone()).collect(),
        labels: index.test.iter().map(|s| s.is_anomalous).collect(),
        defect_types: index.test.iter().map(|s| s.defect_type.clone()).collect(),
        masks,
    })
}

/// The features the learner reads of some images, and the class id of every image.
pub struct Labelled {
    /// `feature_align`, and the memory features of the whole view and the tiles when read.
    pub features: ImageFeatures,
    /// Class id of every image.
    pub class_ids: Vec<u32>,
}

impl Labelled {
    /// As the learner takes it.
    pub fn step_data(&self) -> StepData<'_> {
        self.features.with_ids(&self.class_ids)
    }
}

/// Features and class ids of the training (and held-out) images of `classes`.
pub fn train_data(
    learner: &Learner,
    dataset: &DatasetRoot,
    store: &FeatureStore,
    classes: &[String],
    progress: &dyn Progress,
) -> Result<(Labelled, Labelled)> {
    let (mut tp, mut tid, mut hp, mut hid) = (vec![], vec![], vec![], vec![]);
    for c in classes {
        // Objects new to the model get the next free class ids, in order.
        let id = learner.class_id(c).unwrap_or_else(|| {
            let known = learner.meta().class_names.len();
            let earlier_new = classes
                .iter()
                .take_while(|x| *x != c)
                .filter(|x| learner.class_id(x).is_none())
                .count();
            (known + earlier_new) as u32
        });
        let index = dataset.index_class(c)?;
        // A dataset with its own validation images (MVTec AD 2) calibrates on them and trains on
        // every training image; otherwise a seeded part of the training images is held out.
        let (tr, ho) = if index.has_validation() {
            (index.train.clone(), index.validation.clone())
        } else {
            split_holdout(&index.train, learner.config())
        };
        tid.extend(std::iter::repeat_n(id, tr.len()));
        hid.extend(std::iter::repeat_n(id, ho.len()));
        tp.extend(tr.into_iter().map(|s| s.path));
        hp.extend(ho.into_iter().map(|s| s.path));
    }
    let tiling = learner.tiling();
    let train = store.features_for(&tp, learner.features(), tiling.as_ref(), progress)?;
    let held = store.features_for(&hp, learner.features(), tiling.as_ref(), progress)?;
    Ok((
        Labelled {
            features: train,
            class_ids: tid,
        },
        Labelled {
            features: held,
            class_ids: hid,
        },
    ))
}
