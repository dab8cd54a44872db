//! The calibrator: what a learned object's held-out good images (never trained on) tell about its
//! scores, and the verdict on a test image. Per object and scorer, the normalisation of the
//! scorer's map (section 10: median and 99th percentile of the good pixels); per object, the
//! sketch of its good image scores that thresholds are read from. Both are fitted once, when the
//! object is learned, from that object's images only, and never touched again.
//!
//! Methods that fuse several scorers (those with a memory) normalise each scorer's map with the
//! object's statistics and sum them with the `fusion` weights; the others use their one map as it
//! is (the reference's map). The image score is the section 6 score of the fused map, and the
//! decision compares it with the object's threshold.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

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

/// Per object: the normalisation of each scorer's map, by scorer name (`memory`, `gaussian`,
/// `reconstruction`, ...). In the model file, a JSON object with one key per scorer.
pub type ObjectNorms = BTreeMap<String, MapNorm>;

/// A verdict on one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The score is above the object's threshold.
    Defect,
    /// At or below it.
    Ok,
}

impl Decision {
    /// `defect` or `ok`, as `predict --json` and `serve` write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Defect => "defect",
            Decision::Ok => "ok",
        }
    }
}

/// What the calibrator answers for one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The object the image was judged as (given, or recognised) and its probability.
    pub object: String,
    pub probability: f32,
    /// The image score (section 6) of the fused map.
    pub score: f32,
    /// The object's threshold at the asked quantile; `None` when the object has no calibration.
    pub threshold: Option<f32>,
    /// `None` when there is no threshold.
    pub decision: Option<Decision>,
}

/// Per-object map normalisation and score sketches, and the rules that fuse and judge.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Calibrator {
    /// Whether maps are normalised per object and fused (methods with a memory).
    pub(crate) normalise: bool,
    /// Per object, the normalisation of each scorer's map (methods that normalise).
    pub(crate) norms: BTreeMap<String, ObjectNorms>,
    /// Per object, the 101 quantiles (0, 0.01, .., 1) of its held-out good images' scores.
    pub(crate) sketches: BTreeMap<String, Vec<f32>>,
    /// Per object, a threshold set after learning (`iuf threshold`): it replaces the one read
    /// at the caller's quantile.
    pub(crate) settings: BTreeMap<String, ThresholdSetting>,
    /// Fraction of the map's side left out on every side by the image score
    /// (`calibration.score_margin`).
    pub(crate) margin: f64,
}

/// How a threshold set after learning is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThresholdRule {
    /// This quantile of the object's held-out good scores (its sketch; read again when the
    /// sketch changes, e.g. after good images are added).
    Quantile(f64),
    /// This value of the image score.
    Value(f32),
}

impl std::fmt::Display for ThresholdRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ThresholdRule::Quantile(q) => write!(f, "quantile {q} of the held-out good scores"),
            ThresholdRule::Value(v) => write!(f, "value {v}"),
        }
    }
}

/// A threshold set after learning, and who set it when (kept in the model file's metadata).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThresholdSetting {
    pub rule: ThresholdRule,
    /// The threshold the rule gave when it was set.
    pub value: f32,
    /// When, as RFC 3339 UTC (`2026-12-07T08:15:00Z`).
    pub set_at: String,
    /// Who: a user name, `--by`, or the service's token client.
    pub set_by: String,
}

impl Calibrator {
    /// No object calibrated yet; `normalise` for methods that fuse normalised maps.
    pub fn new(normalise: bool) -> Self {
        Self {
            normalise,
            ..Self::default()
        }
    }

    /// These rules with the image score taken over the map without a band of `margin` (a
    /// fraction of its side) on every side.
    pub fn with_margin(self, margin: f64) -> Self {
        Self { margin, ..self }
    }

    /// Whether maps are normalised per object and fused.
    pub fn normalises(&self) -> bool {
        self.normalise
    }

    /// The normalisation of `object`'s maps, by scorer name.
    pub fn norms(&self, object: &str) -> Option<&ObjectNorms> {
        self.norms.get(object)
    }

    /// Fits `object`'s normalisations from its held-out good images' maps, one `[n, H, W]` per
    /// scorer name (methods that normalise; others keep none).
    pub fn fit_norms(&mut self, object: &str, maps: &[(&str, &Tensor)]) -> Result<()> {
        if !self.normalise {
            return Ok(());
        }
        let mut norms = ObjectNorms::new();
        for (name, m) in maps {
            if let Some(n) = MapNorm::of_good_maps(m)? {
                norms.insert(name.to_string(), n);
            }
        }
        self.norms.insert(object.to_string(), norms);
        Ok(())
    }

    /// The scores inspection gives `object`'s held-out good images, from every scorer's maps of
    /// them (name, fusion weight, `[n, H, W]`, each image scored as `object`) and the object each
    /// image is recognised as. Those recognised as `object` are fused from the maps given (the
    /// search runs once); the others are scored by `rescore` (their row indices as a `u32`
    /// tensor), as inspection would score them.
    pub fn holdout_scores(
        &self,
        object: &str,
        maps: &[(&str, f64, Tensor)],
        recognised: &[String],
        rescore: impl FnOnce(&Tensor) -> Result<Vec<f32>>,
    ) -> Result<Vec<f32>> {
        let n = recognised.len();
        let device = maps.first().map(|(_, _, m)| m.device().clone());
        let device = device.ok_or_else(|| Error::Msg("no scorer gave a map".into()))?;
        let rows = |same: bool| -> Vec<u32> {
            (0..n as u32)
                .filter(|&i| (recognised[i as usize] == object) == same)
                .collect()
        };
        let mut scores = vec![0f32; n];
        let same = rows(true);
        if !same.is_empty() {
            let idx = Tensor::from_vec(same.clone(), same.len(), &device)?;
            let picked: Vec<(&str, f64, Tensor)> = maps
                .iter()
                .map(|(s, w, m)| Ok((*s, *w, m.index_select(&idx, 0)?)))
                .collect::<Result<_>>()?;
            let fused = self.fuse(&vec![object.to_string(); same.len()], &picked)?;
            for (&i, s) in same.iter().zip(self.scores(&fused)?) {
                scores[i as usize] = s;
            }
        }
        let other = rows(false);
        if !other.is_empty() {
            let idx = Tensor::from_vec(other.clone(), other.len(), &device)?;
            for (&i, s) in other.iter().zip(rescore(&idx)?) {
                scores[i as usize] = s;
            }
        }
        Ok(scores)
    }

    /// Keeps the sketch of `object`'s held-out good image scores; returns its threshold at `q`.
    pub fn fit_scores(&mut self, object: &str, scores: Vec<f32>, q: f64) -> Option<f32> {
        let sketch = score_sketch(scores);
        let t = linear_quantile(&sketch, q);
        self.sketches.insert(object.to_string(), sketch);
        t
    }

    /// The fused map `[n, H, W]` of images whose objects are `objects`, from the scorers' maps
    /// with their weights (in the order the method lists its scorers): each map normalised with
    /// its object's statistics, weighted and summed; or, for methods that do not normalise, the
    /// sum of the raw maps (one map: itself).
    pub fn fuse(&self, objects: &[String], maps: &[(&str, f64, Tensor)]) -> Result<Tensor> {
        let mut fused: Option<Tensor> = None;
        for (name, weight, map) in maps {
            let term = if self.normalise {
                (self.normalised(objects, name, map)? * *weight)?
            } else {
                map.clone()
            };
            fused = Some(match fused {
                None => term,
                Some(f) => (f + term)?,
            });
        }
        fused.ok_or_else(|| Error::Msg("no scorer gave a map".into()))
    }

    /// `(map - median) / scale` with each image's object's normalisation of scorer `name` (none:
    /// the map as it is).
    fn normalised(&self, objects: &[String], name: &str, map: &Tensor) -> Result<Tensor> {
        let (mut med, mut scale) = (Vec::new(), Vec::new());
        for o in objects {
            let n = self
                .norms
                .get(o)
                .and_then(|n| n.get(name))
                .copied()
                .unwrap_or(MapNorm::IDENTITY);
            med.push(n.median);
            scale.push(n.scale);
        }
        let len = objects.len();
        let med = Tensor::from_vec(med, (len, 1, 1), map.device())?;
        let scale = Tensor::from_vec(scale, (len, 1, 1), map.device())?;
        Ok(map.broadcast_sub(&med)?.broadcast_div(&scale)?)
    }

    /// The section 6 image scores of fused maps `[n, H, W]` (over the map without its margin,
    /// when the model has one).
    pub fn scores(&self, fused: &Tensor) -> Result<Vec<f32>> {
        let inner = if self.margin > 0.0 {
            let (_, h, w) = fused.dims3()?;
            let cut = |side: usize| {
                let m = (self.margin * side as f64).round() as usize;
                // Never below the score's pool.
                m.min(side.saturating_sub(iuf_model::SCORE_POOL) / 2)
            };
            let (mh, mw) = (cut(h), cut(w));
            fused.narrow(1, mh, h - 2 * mh)?.narrow(2, mw, w - 2 * mw)?
        } else {
            fused.clone()
        };
        Ok(iuf_model::image_scores(&inner, iuf_model::SCORE_POOL)?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?)
    }

    /// Threshold of `object`: the one set after learning if any, else quantile `q` of its
    /// held-out good scores.
    pub fn threshold(&self, object: &str, q: f64) -> Option<f32> {
        match self.settings.get(object).map(|s| s.rule) {
            Some(ThresholdRule::Value(v)) => Some(v),
            Some(ThresholdRule::Quantile(q)) => linear_quantile(self.sketches.get(object)?, q),
            None => linear_quantile(self.sketches.get(object)?, q),
        }
    }

    /// The threshold set on `object` after learning, if any.
    pub fn setting(&self, object: &str) -> Option<&ThresholdSetting> {
        self.settings.get(object)
    }

    /// Every threshold set after learning, by object.
    pub fn settings(&self) -> &BTreeMap<String, ThresholdSetting> {
        &self.settings
    }

    /// The sketch of `object`'s held-out good image scores (101 quantiles).
    pub fn sketch(&self, object: &str) -> Option<&[f32]> {
        self.sketches.get(object).map(|v| &v[..])
    }

    /// Sets `object`'s threshold by `rule` (a quantile needs the object's sketch); returns the
    /// setting recorded.
    pub fn set_threshold(
        &mut self,
        object: &str,
        rule: ThresholdRule,
        set_at: String,
        set_by: String,
    ) -> Result<ThresholdSetting> {
        let value = match rule {
            ThresholdRule::Value(v) if v.is_finite() => v,
            ThresholdRule::Value(v) => {
                return Err(Error::Config(format!(
                    "a threshold must be a finite number, found {v}"
                )))
            }
            ThresholdRule::Quantile(q) if (0.0..=1.0).contains(&q) => {
                linear_quantile(self.sketches.get(object).map_or(&[][..], |v| v), q).ok_or_else(
                    || {
                        Error::Config(format!(
                            "`{object}` has no held-out good scores to read quantile {q} from \
                             (it was learned without held-out images); set a --value instead"
                        ))
                    },
                )?
            }
            ThresholdRule::Quantile(q) => {
                return Err(Error::Config(format!(
                    "a quantile must lie in [0, 1], found {q}"
                )))
            }
        };
        let setting = ThresholdSetting {
            rule,
            value,
            set_at,
            set_by,
        };
        self.settings.insert(object.to_string(), setting.clone());
        Ok(setting)
    }

    /// Merges the held-out good scores of images added to `object` into its sketch, which
    /// summarised `n_old` held-out images: the old images are stood for by `n_old` values read
    /// from the sketch at evenly spaced quantiles (exactly the old scores when `n_old - 1`
    /// divides 100, else their interpolation), pooled with the new scores and sketched again.
    /// Returns the threshold at `q`.
    pub fn merge_scores(
        &mut self,
        object: &str,
        n_old: u64,
        scores: &[f32],
        q: f64,
    ) -> Option<f32> {
        let mut pooled: Vec<f32> = scores.to_vec();
        if let Some(old) = self.sketches.get(object) {
            let n = n_old.max(1) as usize;
            pooled.extend((0..n).filter_map(|i| {
                let at = if n == 1 {
                    0.5
                } else {
                    i as f64 / (n - 1) as f64
                };
                linear_quantile(old, at)
            }));
        }
        self.fit_scores(object, pooled, q)
    }

    /// The verdict on an image of `object` (probability `probability`) that scored `score`.
    pub fn verdict(&self, object: &str, probability: f32, score: f32, q: f64) -> Verdict {
        let threshold = self.threshold(object, q);
        Verdict {
            object: object.to_string(),
            probability,
            score,
            threshold,
            decision: threshold.map(|t| {
                if score > t {
                    Decision::Defect
                } else {
                    Decision::Ok
                }
            }),
        }
    }
}

/// `t` as RFC 3339 UTC to the second (`2026-12-07T08:15:00Z`).
pub fn rfc3339_utc(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
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
    fn rfc3339_formats_utc() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_796_631_300);
        assert_eq!(rfc3339_utc(t), "2026-12-07T08:15:00Z");
        assert_eq!(rfc3339_utc(std::time::UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }

    /// Guarantee: with a margin, the image score ignores a peak in the band and still sees one
    /// inside; without, the border peak sets the score.
    #[test]
    fn a_score_margin_leaves_the_border_band_out() {
        let (h, w) = (64, 64);
        let mut v = vec![0f32; h * w];
        // A 16 x 16 block of 5 in the top-left corner, a block of 2 in the middle.
        for y in 0..16 {
            for x in 0..16 {
                v[y * w + x] = 5.0;
                v[(y + 24) * w + x + 24] = 2.0;
            }
        }
        let map = Tensor::from_vec(v, (1, h, w), &candle_core::Device::Cpu).unwrap();
        let whole = Calibrator::new(true).scores(&map).unwrap()[0];
        let inner = Calibrator::new(true)
            .with_margin(0.125)
            .scores(&map)
            .unwrap()[0];
        assert_eq!(whole, 5.0);
        assert_eq!(inner, 2.0);
        // A margin that would leave less than the pool is cut back to leave the pool.
        let most = Calibrator::new(true)
            .with_margin(0.45)
            .scores(&map)
            .unwrap()[0];
        assert!(most.is_finite());
    }

    /// Guarantee: a set threshold replaces the quantile's, a quantile rule reads the sketch,
    /// and merging new scores into a sketch of `n - 1 | 100` old scores is exact.
    #[test]
    fn set_thresholds_and_merged_sketches() {
        let mut c = Calibrator::new(true);
        let old: Vec<f32> = (0..21).map(|i| i as f32).collect();
        c.fit_scores("a", old.clone(), 0.99);
        assert_eq!(c.threshold("a", 0.5), Some(10.0));
        let s = c
            .set_threshold("a", ThresholdRule::Value(3.5), "t".into(), "me".into())
            .unwrap();
        assert_eq!(s.value, 3.5);
        assert_eq!(c.threshold("a", 0.5), Some(3.5));
        c.set_threshold("a", ThresholdRule::Quantile(0.25), "t".into(), "me".into())
            .unwrap();
        assert_eq!(c.threshold("a", 0.99), Some(5.0));
        assert!(c
            .set_threshold("b", ThresholdRule::Quantile(0.5), "t".into(), "me".into())
            .unwrap_err()
            .to_string()
            .contains("no held-out good scores"));
        assert!(c
            .set_threshold("a", ThresholdRule::Quantile(1.5), "t".into(), "me".into())
            .is_err());
        // Merged: the same as sketching all 25 scores at once.
        let new = [30.0, 31.0, 32.0, 33.0];
        c.merge_scores("a", 21, &new, 0.99);
        let mut all = old;
        all.extend(new);
        assert_eq!(c.sketch("a").unwrap(), &score_sketch(all)[..]);
    }

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
