//! The calibrator: what a learned object's held-out good images (never trained on) tell about its
//! scores. Per scorer, the normalisation of its map (section 10: median and 99th percentile of the
//! good pixels), and per object, the sketch of its good image scores that thresholds are read from.
//! Both are computed once, when the object is learned, from that object's images only.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// `(map - median) / scale`: a scorer's map on an object's good pixels mapped to median 0 and
/// 99th percentile 1.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MapNorm {
    /// Median of the good pixels.
    pub median: f32,
    /// 99th percentile minus the median (never below a tiny positive floor).
    pub scale: f32,
}

impl MapNorm {
    /// Leaves the map as it is.
    pub const IDENTITY: MapNorm = MapNorm {
        median: 0.0,
        scale: 1.0,
    };

    /// The normalisation of the pixels of good images' maps `[N, H, W]` (None when empty).
    pub fn of_good_maps(maps: &Tensor) -> Result<Option<Self>> {
        let mut v: Vec<f32> = maps.flatten_all()?.to_vec1()?;
        v.retain(|x| x.is_finite());
        if v.is_empty() {
            return Ok(None);
        }
        let median = select_quantile(&mut v, 0.5);
        let q99 = select_quantile(&mut v, 0.99);
        let scale = (q99 - median).max(1e-6 * median.abs().max(1.0));
        Ok(Some(Self { median, scale }))
    }
}

/// Per object: the normalisation of each scorer's map.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ObjectNorms {
    /// The reconstruction network's map.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconstruction: Option<MapNorm>,
    /// The memory's nearest-neighbour map.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MapNorm>,
    /// The per-position Gaussian's map.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gaussian: Option<MapNorm>,
}

/// The value at quantile `q` (nearest rank on the sorted order), reordering `v`.
fn select_quantile(v: &mut [f32], q: f64) -> f32 {
    let k = ((v.len() - 1) as f64 * q).round() as usize;
    *v.select_nth_unstable_by(k, f32::total_cmp).1
}

/// Linear interpolation between the closest ranks of sorted values (numpy's default quantile).
pub fn linear_quantile(sorted: &[f32], q: f64) -> Option<f32> {
    if sorted.is_empty() {
        return None;
    }
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let t = (pos - lo as f64) as f32;
    Some(sorted[lo] * (1.0 - t) + sorted[hi] * t)
}

/// A fixed-size sketch of good image scores: the 101 quantiles 0, 0.01, .., 1 (so the model file
/// does not grow with the number of held-out images). Empty for no scores.
pub fn score_sketch(mut scores: Vec<f32>) -> Vec<f32> {
    scores.sort_by(f32::total_cmp);
    if scores.is_empty() {
        return scores;
    }
    (0..=100)
        .filter_map(|i| linear_quantile(&scores, i as f64 / 100.0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn quantile_interpolates() {
        assert_eq!(linear_quantile(&[], 0.5), None);
        assert_eq!(linear_quantile(&[1.0, 3.0], 0.5), Some(2.0));
        assert_eq!(linear_quantile(&[1.0, 3.0, 7.0], 1.0), Some(7.0));
    }

    #[test]
    fn norm_maps_median_to_zero_and_q99_to_one() {
        let v: Vec<f32> = (0..1001).map(|i| i as f32).collect();
        let t = Tensor::from_vec(v, (1, 7, 143), &Device::Cpu).unwrap();
        let n = MapNorm::of_good_maps(&t).unwrap().unwrap();
        assert_eq!(n.median, 500.0);
        assert_eq!(n.scale, 990.0 - 500.0);
        let empty = Tensor::zeros((0, 4, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert_eq!(MapNorm::of_good_maps(&empty).unwrap(), None);
        assert_eq!(score_sketch(vec![2.0, 1.0]).len(), 101);
    }
}
