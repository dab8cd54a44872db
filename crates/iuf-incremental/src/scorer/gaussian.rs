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

/// `g` as the model file will hold it: with f16 model files or 8-bit precision matrices
/// (`gaussian.int8`), the precision matrices rounded now, so that the model in memory scores
/// exactly as the file will.
fn as_stored(g: PositionGaussian, cfg: &TrainConfig) -> Result<PositionGaussian> {
    Ok(if cfg.memory.f16 || cfg.gaussian.int8 {
        PositionGaussian::from_state(&g.to_state("", DType::F16)?, "")?.expect("written just now")
    } else {
        g
    })
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
            self.fitted.insert(c.to_string(), as_stored(g, step.cfg)?);
        }
        Ok(None)
    }

    fn can_add_good(&self, object: &str) -> Result<()> {
        match self.fitted.get(object) {
            None => Err(Error::Msg(format!(
                "no per-position Gaussian for `{object}` to add images to"
            ))),
            Some(g) if !g.updatable() => Err(Error::Config(format!(
                "the per-position Gaussian of `{object}` was written without the statistics an \
                 exact update needs (image count and scatter matrices: model files written \
                 before they were stored, or with `gaussian.keep_statistics: false`): learn \
                 `{object}` again from all its good images (`iuf train` or `iuf learn` on a model \
                 without it, keeping the statistics) to add images later"
            ))),
            Some(_) => Ok(()),
        }
    }

    fn add_good(&mut self, object: &str, cfg: &TrainConfig, train: &StepData<'_>) -> Result<()> {
        self.can_add_good(object)?;
        let g = self.fitted[object].update(train.features, &cfg.gaussian)?;
        self.fitted.insert(object.to_string(), as_stored(g, cfg)?);
        Ok(())
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
            let prefix = format!("{GAUSSIAN_PREFIX}{c}.");
            if cfg.gaussian.keep_statistics {
                out.extend(g.to_state(&prefix, dtype)?);
            } else {
                out.extend(g.without_statistics().to_state(&prefix, dtype)?);
            }
        }
        Ok(out)
    }
}
