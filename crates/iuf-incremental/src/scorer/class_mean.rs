//! The class-mean scorer: the distance of every position's backbone feature to the mean feature of
//! its object at the same position, over the object's good training images. Nothing is trained, so
//! it cannot forget; alone, it is the `class-mean` method, the floor every trained model must clear
//! (issue 6), and a tiny member of the memory-bank family of section 10 (one `[C, g, g]` mean per
//! object). The map is made as the network's (section 3.6): the per-token L2 distance upsampled
//! bilinearly to the image size.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use iuf_model::LoadedModel;

use super::interface::{per_object_maps, per_object_state, Batch, Maps, Scorer, Step, Trained};
use crate::config::TrainConfig;
use crate::error::{Error, Result};
use crate::step::StepData;

/// Prefix of the means in the model file (`state.class_mean.<object>`).
pub const CLASS_MEAN_PREFIX: &str = "state.class_mean.";

/// Per-object mean feature maps.
pub struct ClassMeans {
    /// Object name -> `[1, C, g, g]` mean over its training images.
    means: BTreeMap<String, Tensor>,
}

impl ClassMeans {
    /// No object yet, or the means of a model file.
    pub fn new(device: &Device, from: Option<&LoadedModel>) -> Result<Self> {
        let mut means = BTreeMap::new();
        for (class, t) in per_object_state(from, CLASS_MEAN_PREFIX) {
            means.insert(class.to_string(), t.to_device(device)?);
        }
        Ok(Self { means })
    }
}

impl Scorer for ClassMeans {
    fn name(&self) -> &'static str {
        "class-mean"
    }

    fn weight(&self, _cfg: &TrainConfig) -> f64 {
        1.0
    }

    fn learn(&mut self, step: &Step<'_>, train: &StepData<'_>) -> Result<Option<Trained>> {
        for object in step.objects(train) {
            let (c, rows) = object?;
            let mine = train.features.index_select(&rows, 0)?;
            if mine.dim(0)? == 0 {
                return Err(Error::Msg(format!(
                    "class-mean: no training images for `{c}`"
                )));
            }
            // Accumulated in f64 so the mean does not depend on the image order.
            let mean = mine
                .to_dtype(DType::F64)?
                .mean_keepdim(0)?
                .to_dtype(DType::F32)?;
            self.means.insert(c.to_string(), mean);
        }
        Ok(None)
    }

    fn knows(&self, object: &str) -> bool {
        self.means.contains_key(object)
    }

    fn maps(&self, batch: &Batch<'_>) -> Result<Maps> {
        let x = batch.images.features;
        per_object_maps(batch, "class mean", 0.0, |object, rows| {
            let mean = self.means.get(object).ok_or_else(|| {
                Error::Msg(format!(
                    "class-mean: `{object}` was never fitted (known: {:?})",
                    self.means.keys().collect::<Vec<_>>()
                ))
            })?;
            let x = x.index_select(rows, 0)?;
            if mean.dims()[1..] != x.dims()[1..] {
                return Err(Error::Msg(format!(
                    "class-mean: features of `{object}` are {:?} but its mean is {:?}",
                    x.dims(),
                    mean.dims()
                )));
            }
            Ok(x.broadcast_sub(mean)?
                .sqr()?
                .sum_keepdim(1)?
                .sqrt()?
                .to_dtype(DType::F32)?)
        })
    }

    fn state(&self, _cfg: &TrainConfig) -> Result<Vec<(String, Tensor)>> {
        self.means
            .iter()
            .map(|(c, t)| {
                Ok((
                    format!("{CLASS_MEAN_PREFIX}{c}"),
                    t.to_device(&Device::Cpu)?,
                ))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Strategy;
    use crate::progress::NoProgress;

    #[test]
    fn a_good_image_equal_to_the_mean_scores_zero_and_a_shifted_token_lights_up() {
        let dev = Device::Cpu;
        let good = Tensor::rand(0f32, 1f32, (4, 3, 2, 2), &dev).unwrap();
        let mut cm = ClassMeans::new(&dev, None).unwrap();
        let cfg = TrainConfig::tiny(3, 2);
        let new = [("a".to_string(), 0u32)];
        let step = Step {
            index: 0,
            new: &new,
            is_base: true,
            cfg: &cfg,
            strategy: Strategy::ClassMean,
            progress: &NoProgress,
        };
        let train = StepData {
            features: &good,
            memory: None,
            tiles: None,
            class_ids: &[0; 4],
        };
        cm.learn(&step, &train).unwrap();
        let mean = good.mean_keepdim(0).unwrap();
        // Image 0: exactly the mean. Image 1: the mean with token (1, 1) moved by 2 in channel 0.
        let mut shifted = mean.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        shifted[3] += 2.0; // channel 0, row 1, column 1
        let shifted = Tensor::from_vec(shifted, (1, 3, 2, 2), &dev).unwrap();
        let x = Tensor::cat(&[&mean, &shifted], 0).unwrap();
        let images = StepData {
            features: &x,
            memory: None,
            tiles: None,
            class_ids: &[],
        };
        let a = vec!["a".to_string(); 2];
        let batch = |objects| Batch {
            cfg: &cfg,
            images: &images,
            objects: Some(objects),
            size: (32, 32),
        };
        let m = cm.maps(&batch(&a)).unwrap().maps;
        assert_eq!(m.dims(), &[2, 32, 32]);
        let m0: Vec<Vec<f32>> = m.get(0).unwrap().to_vec2().unwrap();
        assert!(m0.iter().flatten().all(|v| v.abs() < 1e-5));
        let m1: Vec<Vec<f32>> = m.get(1).unwrap().to_vec2().unwrap();
        // align_corners: token (1, 1) lands on the last pixel, where the map is exactly 2.
        assert!((m1[31][31] - 2.0).abs() < 1e-4, "{}", m1[31][31]);
        assert!(m1[0][0].abs() < 1e-4);
        let b = vec!["b".to_string(); 2];
        assert!(cm.maps(&batch(&b)).is_err());
        assert!(!cm.knows("b") && cm.knows("a"));
    }
}
