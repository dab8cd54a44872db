//! The per-position Gaussian beside the nearest-neighbour memory (section 10): per object, a
//! [`PositionGaussian`] of `feature_align`, fitted once from the object's own good images.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};
use iuf_model::{LoadedModel, PositionGaussian};

use super::interface::{per_object_maps, per_object_state, Batch, Maps, Scorer, Step, Trained};
use crate::config::TrainConfig;
use crate::error::{Error, Result};
use crate::step::StepData;

/// Prefix of the Gaussian tensors (`state.gaussian.<object>.{mean,precision,proj}`).
pub const GAUSSIAN_PREFIX: &str = "state.gaussian.";

/// Every object's per-position Gaussian.
pub struct Gaussians {
    fitted: BTreeMap<String, PositionGaussian>,
}

impl Gaussians {
    /// No object yet, or the Gaussians of a model file (every object it holds one for).
    pub fn new(from: Option<&LoadedModel>) -> Result<Self> {
        let mut fitted = BTreeMap::new();
        let state = from.map_or(&[][..], |l| &l.state[..]);
        for (rest, _) in per_object_state(from, GAUSSIAN_PREFIX) {
            let Some(class) = rest.strip_suffix(".mean") else {
                continue;
            };
            let prefix = format!("{GAUSSIAN_PREFIX}{class}.");
            if let Some(g) = PositionGaussian::from_state(state, &prefix)? {
                fitted.insert(class.to_string(), g);
            }
        }
        Ok(Self { fitted })
    }
}

impl Scorer for Gaussians {
    fn name(&self) -> &'static str {
        "gaussian"
    }

    fn weight(&self, cfg: &TrainConfig) -> f64 {
        cfg.fusion.gaussian
    }

    fn learn(&mut self, step: &Step<'_>, train: &StepData<'_>) -> Result<Option<Trained>> {
        for object in step.objects(train) {
            let (c, rows) = object?;
            if self.fitted.contains_key(c) {
                return Err(Error::Config(format!(
                    "the Gaussian of `{c}` exists already; an object is learned once"
                )));
            }
            let align = train.features.index_select(&rows, 0)?;
            let g = PositionGaussian::fit(&align, &step.cfg.gaussian)?;
            // With f16 model files, the precision matrices are rounded now, as the file stores
            // them, so the model in memory scores exactly as the file will.
            let g = if step.cfg.memory.f16 {
                PositionGaussian::from_state(&g.to_state("", DType::F16)?, "")?
                    .expect("written just now")
            } else {
                g
            };
            self.fitted.insert(c.to_string(), g);
        }
        Ok(None)
    }

    fn knows(&self, object: &str) -> bool {
        self.fitted.contains_key(object)
    }

    fn maps(&self, batch: &Batch<'_>) -> Result<Maps> {
        let align = batch.images.features;
        per_object_maps(
            batch,
            "per-position Gaussian",
            batch.cfg.memory.blur_sigma,
            |object, rows| {
                let g = self.fitted.get(object).ok_or_else(|| {
                    Error::Msg(format!("no per-position Gaussian for `{object}`"))
                })?;
                Ok(g.score(&align.index_select(rows, 0)?)?)
            },
        )
    }

    fn state(&self, cfg: &TrainConfig) -> Result<Vec<(String, Tensor)>> {
        let dtype = cfg.memory.stored_dtype();
        let mut out = Vec::new();
        for (c, g) in &self.fitted {
            out.extend(g.to_state(&format!("{GAUSSIAN_PREFIX}{c}."), dtype)?);
        }
        Ok(out)
    }
}
