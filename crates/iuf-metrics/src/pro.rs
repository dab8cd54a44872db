//! PRO: the normalised area under the per-region-overlap curve up to a false-positive-rate limit,
//! as the MVTec AD evaluation defines it (section 6 of ALGORITHM.md: "PRO ... up to a 30%
//! false-positive rate, normalised").
//!
//! For a threshold t, a pixel is predicted anomalous when its score is >= t. Then
//! - PRO(t) = mean over every ground-truth region of every image (8-connected components of the
//!   masks) of the fraction of that region's pixels predicted anomalous. Each region weighs the
//!   same however small it is, which is the point of the metric;
//! - FPR(t) = fraction of all normal pixels of all images predicted anomalous.
//!
//! The curve (0, 0), then (FPR, PRO) for every distinct score from the highest down, then (1, 1),
//! is integrated with the trapezoid rule over FPR in [0, max_fpr], linearly interpolated at exactly
//! max_fpr, and divided by max_fpr so a perfect map scores 1.
//!
//! The curve is traced by one sweep over the pixels sorted by score, from the highest down, and
//! the sweep stops at `max_fpr`: only the normal pixels above the `max_fpr` quantile of normal
//! scores are ever reached (30% of them by default), so only those are sorted. A first pass over
//! the maps labels the regions, collects the anomalous pixels and counts the normal pixels'
//! score keys by their top 16 bits (65,536 buckets); the buckets from the top down that hold
//! just more than `max_fpr` of the normal pixels are kept; a second pass writes each kept normal
//! pixel's key straight into its bucket's place, and each bucket (a few thousand keys, in
//! cache) is then sorted alone. Normal pixels only need their score (a `u32` key); anomalous
//! pixels also carry the index of their region (packed into a `u64`), whose inverse size is
//! what they add to the PRO sum. On 100 uniform-noise maps of 256 x 256 this takes half the CPU
//! time of sorting every pixel (107-118 against 195-242 ms a call, debug test build, 2 shared
//! cores under load), with the same curve. Running the passes on several maps at once (rayon)
//! measured no faster on the shared 2-core machine and was left out.

use crate::error::{MetricsError, Result};
use crate::ranking::Label;
use crate::sort::{radix_sort_by_key, score_key};

/// Normal pixels' keys are bucketed by their top 16 bits (sign, exponent, 7 mantissa bits).
const BUCKETS: usize = 1 << 16;

#[inline]
fn bucket(key: u32) -> usize {
    (key >> 16) as usize
}

/// The false-positive-rate limit of the MVTec AD evaluation (30%).
pub const PRO_MAX_FPR: f64 = 0.3;

/// Normalised area under the PRO curve up to `max_fpr` (use [`PRO_MAX_FPR`]).
///
/// `maps[i]` is the anomaly map of image i and `masks[i]` its ground truth (`bool` or `u8`,
/// nonzero = anomalous), both row-major `width x height`; maps are borrowed, never copied as
/// floats. Images whose mask is empty add only to the FPR. Errors when the slice counts or any
/// length differ, a map is NaN, `max_fpr` is not in (0, 1], or there is no anomalous or no
/// normal pixel at all.
///
/// ```
/// use iuf_metrics::{pro_auc, PRO_MAX_FPR};
/// // One 2x2 image: the anomalous pixel scores highest, so the curve is at PRO 1 from FPR 0.
/// let map = [0.9f32, 0.1, 0.2, 0.3];
/// let mask = [true, false, false, false];
/// let pro = pro_auc(&[&map[..]], &[&mask[..]], 2, 2, PRO_MAX_FPR)?;
/// assert!((pro - 1.0).abs() < 1e-12);
/// # Ok::<(), iuf_metrics::MetricsError>(())
/// ```
pub fn pro_auc<M: Label>(
    maps: &[&[f32]],
    masks: &[&[M]],
    width: usize,
    height: usize,
    max_fpr: f64,
) -> Result<f64> {
    if !(max_fpr > 0.0 && max_fpr <= 1.0) {
        return Err(MetricsError::InvalidArgument {
            name: "max_fpr",
            expected: "a false-positive rate in (0, 1]",
            found: max_fpr.to_string(),
        });
    }
    if maps.len() != masks.len() {
        return Err(MetricsError::LengthMismatch {
            what: "masks (one per anomaly map)".into(),
            expected: maps.len(),
            found: masks.len(),
        });
    }
    if maps.is_empty() || width == 0 || height == 0 {
        return Err(MetricsError::Empty {
            what: "anomaly maps",
        });
    }
    let pixels = width * height;
    let mut anomalous_pixels = 0usize;
    for (i, (map, mask)) in maps.iter().zip(masks).enumerate() {
        if map.len() != pixels {
            return Err(MetricsError::LengthMismatch {
                what: format!("anomaly map {i} ({width}x{height})"),
                expected: pixels,
                found: map.len(),
            });
        }
        if mask.len() != pixels {
            return Err(MetricsError::LengthMismatch {
                what: format!("mask {i} ({width}x{height})"),
                expected: pixels,
                found: mask.len(),
            });
        }
        anomalous_pixels += mask.iter().filter(|m| m.is_positive()).count();
    }
    // Region indices share a u64 with the 32-bit score key; there are never more regions than
    // anomalous pixels. Normal pixels are counted in u32 per score bucket.
    if anomalous_pixels as u64 > u64::from(u32::MAX) {
        return Err(MetricsError::TooLarge {
            what: "anomalous pixels",
            max: u64::from(u32::MAX),
            found: anomalous_pixels as u64,
        });
    }
    let normal_pixels = (maps.len() * pixels - anomalous_pixels) as u64;
    if normal_pixels > u64::from(u32::MAX) {
        return Err(MetricsError::TooLarge {
            what: "normal pixels",
            max: u64::from(u32::MAX),
            found: normal_pixels,
        });
    }
    // Pass 1: regions, anomalous pixels, NaN check, and the normal keys' top-16-bit histogram.
    let mut anomalous: Vec<u64> = Vec::with_capacity(anomalous_pixels);
    let mut region_sizes: Vec<u32> = Vec::new();
    let mut components = Components::new(width, height);
    // u32 counts (a 256 KiB table, half of usize's, stays in L2); more normal pixels than that
    // are refused above.
    let mut histogram = vec![0u32; BUCKETS];
    for (part, (map, mask)) in maps.iter().zip(masks).enumerate() {
        let first_region = region_sizes.len() as u32;
        components.label(mask, &mut region_sizes);
        for (index, (&score, &region)) in map.iter().zip(&components.labels).enumerate() {
            if score.is_nan() {
                return Err(MetricsError::NanScore { part, index });
            }
            let key = score_key(score);
            if region == 0 {
                histogram[bucket(key)] += 1;
            } else {
                let global = u64::from(first_region + region - 1);
                anomalous.push((u64::from(key) << 32) | global);
            }
        }
    }
    let normal_count = maps.len() * pixels - anomalous_pixels;
    if region_sizes.is_empty() {
        return Err(MetricsError::MissingClass {
            metric: "PRO",
            missing: crate::Class::Positive,
            total: (maps.len() * pixels) as u64,
        });
    }
    if normal_count == 0 {
        return Err(MetricsError::MissingClass {
            metric: "PRO",
            missing: crate::Class::Negative,
            total: (maps.len() * pixels) as u64,
        });
    }
    // The lowest bucket the sweep can reach: the highest one whose keys and those above hold
    // more than max_fpr of the normal pixels (the sweep stops at the first threshold past
    // max_fpr, which lies in it). At max_fpr = 1 the sweep reaches every pixel.
    // (The same f64 expression as the sweep's FPR, so both agree on where it stops.)
    let mut lowest = 0;
    let mut above = 0usize;
    for b in (0..BUCKETS).rev() {
        above += histogram[b] as usize;
        if above as f64 / normal_count as f64 > max_fpr {
            lowest = b;
            break;
        }
    }
    // Pass 2: each kept normal key written into its bucket's place, then each bucket sorted.
    let mut starts = vec![0usize; BUCKETS + 1];
    for b in lowest..BUCKETS {
        starts[b + 1] = starts[b] + histogram[b] as usize;
    }
    let kept = starts[BUCKETS];
    let mut normal: Vec<u32> = vec![0; kept];
    let mut next = starts.clone();
    for (map, mask) in maps.iter().zip(masks) {
        for (&score, &m) in map.iter().zip(mask.iter()) {
            if m.is_positive() {
                continue;
            }
            let key = score_key(score);
            let b = bucket(key);
            if b >= lowest {
                normal[next[b]] = key;
                next[b] += 1;
            }
        }
    }
    let mut scratch = Vec::new();
    for b in lowest..BUCKETS {
        let slice = &mut normal[starts[b]..starts[b + 1]];
        if slice.len() > 1 {
            radix_sort_by_key(slice, &mut scratch, |&k| k);
        }
    }
    anomalous.retain(|&x| bucket((x >> 32) as u32) >= lowest);
    radix_sort_by_key(&mut anomalous, &mut Vec::new(), |&x| (x >> 32) as u32);

    let inverse_size: Vec<f64> = region_sizes.iter().map(|&s| 1.0 / f64::from(s)).collect();
    let regions = region_sizes.len() as f64;
    let normal_count = normal_count as f64;
    let mut curve = TruncatedTrapezoid::new(max_fpr);
    let (mut i, mut j) = (normal.len(), anomalous.len());
    let (mut false_positives, mut overlap_sum) = (0u64, 0f64);
    while !curve.done {
        let next_normal = i.checked_sub(1).map(|x| normal[x]);
        let next_anomalous = j.checked_sub(1).map(|x| (anomalous[x] >> 32) as u32);
        let Some(key) = next_normal.max(next_anomalous) else {
            break;
        };
        while i > 0 && normal[i - 1] == key {
            i -= 1;
            false_positives += 1;
        }
        while j > 0 && (anomalous[j - 1] >> 32) as u32 == key {
            j -= 1;
            overlap_sum += inverse_size[(anomalous[j] & 0xFFFF_FFFF) as usize];
        }
        // Rounding can push the sum of 1/size over a whole region a hair above 1.
        let pro = (overlap_sum / regions).min(1.0);
        curve.push(false_positives as f64 / normal_count, pro);
    }
    curve.push(1.0, 1.0);
    Ok(curve.area / max_fpr)
}

/// Trapezoid-rule area under a polyline given point by point with non-decreasing x, cut at
/// `x_max` (the last segment is linearly interpolated there).
struct TruncatedTrapezoid {
    x_max: f64,
    x: f64,
    y: f64,
    area: f64,
    done: bool,
}

impl TruncatedTrapezoid {
    fn new(x_max: f64) -> Self {
        Self {
            x_max,
            x: 0.0,
            y: 0.0,
            area: 0.0,
            done: false,
        }
    }

    fn push(&mut self, x: f64, y: f64) {
        if self.done {
            return;
        }
        if x <= self.x_max {
            self.area += 0.5 * (self.y + y) * (x - self.x);
            (self.x, self.y) = (x, y);
        } else {
            let y_at = self.y + (y - self.y) * (self.x_max - self.x) / (x - self.x);
            self.area += 0.5 * (self.y + y_at) * (self.x_max - self.x);
            self.done = true;
        }
    }
}

/// 8-connected component labelling of one mask, reusing its buffers across images.
struct Components {
    width: usize,
    height: usize,
    /// 0 = normal pixel, r >= 1 = pixel of the image's r-th region.
    labels: Vec<u32>,
    stack: Vec<usize>,
}

impl Components {
    fn new(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            labels: vec![0; width * height],
            stack: Vec::new(),
        }
    }

    /// Labels `mask` into `self.labels` and appends the size of each region found to `sizes`.
    fn label<M: Label>(&mut self, mask: &[M], sizes: &mut Vec<u32>) {
        let (w, h) = (self.width, self.height);
        self.labels.fill(0);
        let mut next = 0u32;
        for start in 0..w * h {
            if !mask[start].is_positive() || self.labels[start] != 0 {
                continue;
            }
            next += 1;
            self.labels[start] = next;
            self.stack.push(start);
            let mut size = 0u32;
            while let Some(p) = self.stack.pop() {
                size += 1;
                let (x, y) = (p % w, p / w);
                for ny in y.saturating_sub(1)..=(y + 1).min(h - 1) {
                    for nx in x.saturating_sub(1)..=(x + 1).min(w - 1) {
                        let q = ny * w + nx;
                        if mask[q].is_positive() && self.labels[q] == 0 {
                            self.labels[q] = next;
                            self.stack.push(q);
                        }
                    }
                }
            }
            sizes.push(size);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_are_eight_connected() {
        // 4x3 mask:      regions
        // 1 0 0 1        a . . b
        // 0 1 0 1        . a . b
        // 0 0 0 0        . . . .
        let mask = [1u8, 0, 0, 1, 0, 1, 0, 1, 0, 0, 0, 0];
        let mut components = Components::new(4, 3);
        let mut sizes = Vec::new();
        components.label(&mask, &mut sizes);
        assert_eq!(sizes, vec![2, 2]);
        assert_eq!(components.labels, vec![1, 0, 0, 2, 0, 1, 0, 2, 0, 0, 0, 0]);
    }

    #[test]
    fn rejects_bad_input() {
        let map = [0.5f32; 4];
        let mask = [true, false, false, false];
        assert!(pro_auc(&[&map[..]], &[&mask[..]], 2, 2, 0.0).is_err());
        assert!(pro_auc(&[&map[..]], &[&mask[..]], 2, 2, 1.5).is_err());
        assert!(pro_auc(&[&map[..]], &[&mask[..]], 4, 2, 0.3).is_err());
        assert!(pro_auc(&[&map[..]], &[&[false; 4][..]], 2, 2, 0.3).is_err());
        assert!(pro_auc(&[&map[..]], &[&[true; 4][..]], 2, 2, 0.3).is_err());
        let nan = [0.5, f32::NAN, 0.1, 0.2];
        assert_eq!(
            pro_auc(&[&nan[..]], &[&mask[..]], 2, 2, 0.3),
            Err(MetricsError::NanScore { part: 0, index: 1 })
        );
    }
}
