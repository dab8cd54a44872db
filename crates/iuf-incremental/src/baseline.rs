//! The class-mean baseline: the distance of every position's backbone feature to the mean feature of
//! its object at the same position, over the object's good training images. Nothing is trained, so
//! it cannot forget; it is the floor every trained model must clear (issue 6), and a tiny member of
//! the memory-bank family of section 8 (its memory grows by one `[C, g, g]` mean per object).
//!
//! The map and image score are made exactly as the model's (sections 3.6 and 6): the per-token L2
//! distance is upsampled bilinearly to the image size, and the image score is the maximum of its
//! 16 x 16 average pool. The object of a test image is given (the oracle), as in the issue's
//! definition; `class_probs` still reports which mean is nearest, for inspection.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, D};

use crate::error::{Error, Result};
use crate::learner::Predictions;

/// Images per batch when scoring.
const BATCH: usize = 32;

/// Per-object mean feature maps.
#[derive(Debug, Default, Clone)]
pub struct ClassMean {
    /// Object name -> `[1, C, g, g]` mean over its training images.
    means: BTreeMap<String, Tensor>,
}

impl ClassMean {
    /// No object yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Objects fitted so far, in name order.
    pub fn classes(&self) -> Vec<String> {
        self.means.keys().cloned().collect()
    }

    /// Fits (or refits) `class` from its training features `[N, C, g, g]`.
    pub fn fit(&mut self, class: &str, features: &Tensor) -> Result<()> {
        let n = features.dims4()?.0;
        if n == 0 {
            return Err(Error::Msg(format!(
                "class-mean: no training images for `{class}`"
            )));
        }
        // Accumulate in f64 so the mean does not depend on the image order.
        let mean = features
            .to_dtype(DType::F64)?
            .mean_keepdim(0)?
            .to_dtype(DType::F32)?;
        self.means.insert(class.to_string(), mean);
        Ok(())
    }

    /// The fitted means as named tensors (`mean.<class>`), e.g. to write them to a file.
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        self.means
            .iter()
            .map(|(c, t)| (format!("mean.{c}"), t.clone()))
            .collect()
    }

    /// Maps and scores of `features` `[N, C, g, g]`, all images of object `class`.
    pub fn predict(&self, class: &str, features: &Tensor) -> Result<Predictions> {
        let mean = self.means.get(class).ok_or_else(|| {
            Error::Msg(format!(
                "class-mean: `{class}` was never fitted (known: {:?})",
                self.classes()
            ))
        })?;
        let (n, c, gh, gw) = features.dims4()?;
        if mean.dims() != [1, c, gh, gw] {
            return Err(Error::Msg(format!(
                "class-mean: features of `{class}` are {:?} but its mean is {:?}",
                features.dims(),
                mean.dims()
            )));
        }
        let (h, w) = (gh * iuf_model::MAP_STRIDE, gw * iuf_model::MAP_STRIDE);
        let names = self.classes();
        let all: Vec<Tensor> = names.iter().map(|k| self.means[k].clone()).collect();
        let (mut maps, mut scores, mut probs) = (Vec::new(), Vec::with_capacity(n), Vec::new());
        for start in (0..n).step_by(BATCH) {
            let len = BATCH.min(n - start);
            let x = features.narrow(0, start, len)?;
            let pred = x
                .broadcast_sub(mean)?
                .sqr()?
                .sum_keepdim(1)?
                .sqrt()?
                .to_dtype(DType::F32)?;
            let map = iuf_model::anomaly_map(&pred, (h, w))?;
            scores.extend(iuf_model::image_scores(&map, iuf_model::SCORE_POOL)?.to_vec1::<f32>()?);
            maps.push(map.reshape((len, h, w))?.to_device(&Device::Cpu)?);
            // Nearest mean by mean squared distance, as a softmax over objects.
            let d: Vec<Tensor> = all
                .iter()
                .map(|m| x.broadcast_sub(m)?.sqr()?.flatten_from(1)?.mean(D::Minus1))
                .collect::<candle_core::Result<_>>()?;
            let d = Tensor::stack(&d, 1)?; // [len, K]
            probs.push(candle_nn::ops::softmax_last_dim(&d.neg()?)?.to_device(&Device::Cpu)?);
        }
        if n == 0 {
            return Ok(Predictions {
                maps: Tensor::zeros((0, h, w), DType::F32, &Device::Cpu)?,
                scores,
                class_probs: Tensor::zeros((0, names.len()), DType::F32, &Device::Cpu)?,
                object_probs: Tensor::zeros((0, names.len()), DType::F32, &Device::Cpu)?,
            });
        }
        let class_probs = Tensor::cat(&probs, 0)?;
        Ok(Predictions {
            maps: Tensor::cat(&maps, 0)?,
            scores,
            object_probs: class_probs.clone(),
            class_probs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_good_image_equal_to_the_mean_scores_zero_and_a_shifted_token_lights_up() {
        let dev = Device::Cpu;
        let good = Tensor::rand(0f32, 1f32, (4, 3, 2, 2), &dev).unwrap();
        let mut cm = ClassMean::new();
        cm.fit("a", &good).unwrap();
        let mean = good.mean_keepdim(0).unwrap();
        // Image 0: exactly the mean. Image 1: the mean with token (1, 1) moved by 2 in channel 0.
        let mut shifted = mean.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        shifted[3] += 2.0; // channel 0, row 1, column 1
        let shifted = Tensor::from_vec(shifted, (1, 3, 2, 2), &dev).unwrap();
        let x = Tensor::cat(&[&mean, &shifted], 0).unwrap();
        let p = cm.predict("a", &x).unwrap();
        assert_eq!(p.maps.dims(), &[2, 32, 32]);
        assert!(p.scores[0].abs() < 1e-5, "{:?}", p.scores);
        let m1: Vec<Vec<f32>> = p.maps.get(1).unwrap().to_vec2().unwrap();
        // align_corners: token (1, 1) lands on the last pixel, where the map is exactly 2.
        assert!((m1[31][31] - 2.0).abs() < 1e-4, "{}", m1[31][31]);
        assert!(m1[0][0].abs() < 1e-4);
        assert!(p.scores[1] > 0.1);
        assert!(cm.predict("b", &x).is_err());
    }
}
