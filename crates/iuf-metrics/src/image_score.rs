//! The image-level anomaly score of a pixel anomaly map: the maximum of its k x k average pool
//! (section 6 of ALGORITHM.md: "maximum of the 224x224 map after a 16x16 average pool, stride 1,
//! no padding").

use crate::error::{MetricsError, Result};

/// The pool size the method uses on 224 x 224 maps (section 6 of ALGORITHM.md).
pub const IMAGE_SCORE_POOL: usize = 16;

/// Maximum over all `k x k` windows (stride 1, no padding) of the window mean of `map`, a
/// row-major `width x height` anomaly map.
///
/// A window larger than the map is clamped to it per axis: with `k > width` the window spans
/// the full width (and likewise for the height), so a map smaller than the pool still gets a score
/// (the mean over the clamped window) instead of an error. Window sums come from a summed-area
/// table in `f64`, so the cost is O(width * height) whatever `k` is, and rounding stays far below
/// `f32` resolution.
///
/// Errors if `map.len() != width * height`, the map is empty, `k == 0`, or a value is not finite.
///
/// ```
/// use iuf_metrics::image_score;
/// // 3x2 map, 2x2 windows: means of [1, 2, 4, 5] = 3 and of [2, 3, 5, 9] = 4.75.
/// let map = [1.0, 2.0, 3.0, 4.0, 5.0, 9.0];
/// assert_eq!(image_score(&map, 3, 2, 2)?, 4.75);
/// # Ok::<(), iuf_metrics::MetricsError>(())
/// ```
pub fn image_score(map: &[f32], width: usize, height: usize, k: usize) -> Result<f32> {
    if width == 0 || height == 0 {
        return Err(MetricsError::Empty {
            what: "anomaly map",
        });
    }
    if map.len() != width * height {
        return Err(MetricsError::LengthMismatch {
            what: format!("anomaly map ({width}x{height})"),
            expected: width * height,
            found: map.len(),
        });
    }
    if k == 0 {
        return Err(MetricsError::InvalidArgument {
            name: "k (average-pool size)",
            expected: "at least 1",
            found: "0".into(),
        });
    }
    if let Some(index) = map.iter().position(|v| !v.is_finite()) {
        return Err(MetricsError::InvalidArgument {
            name: "anomaly map",
            expected: "finite values",
            found: format!("{} at index {index}", map[index]),
        });
    }
    let (kw, kh) = (k.min(width), k.min(height));
    // table[(y * (width + 1)) + x] = sum of map[..y][..x]; row and column 0 are zero.
    let stride = width + 1;
    let mut table = vec![0f64; stride * (height + 1)];
    for y in 0..height {
        let mut row_sum = 0f64;
        for x in 0..width {
            row_sum += f64::from(map[y * width + x]);
            table[(y + 1) * stride + x + 1] = table[y * stride + x + 1] + row_sum;
        }
    }
    let mut best = f64::NEG_INFINITY;
    for y in 0..=height - kh {
        let (top, bottom) = (y * stride, (y + kh) * stride);
        for x in 0..=width - kw {
            let sum =
                table[bottom + x + kw] - table[top + x + kw] - table[bottom + x] + table[top + x];
            best = best.max(sum);
        }
    }
    Ok((best / (kw * kh) as f64) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct O(W H k^2) evaluation of the same definition.
    fn brute_force(map: &[f32], width: usize, height: usize, k: usize) -> f32 {
        let (kw, kh) = (k.min(width), k.min(height));
        let mut best = f64::NEG_INFINITY;
        for y in 0..=height - kh {
            for x in 0..=width - kw {
                let mut sum = 0f64;
                for dy in 0..kh {
                    for dx in 0..kw {
                        sum += f64::from(map[(y + dy) * width + x + dx]);
                    }
                }
                best = best.max(sum / (kw * kh) as f64);
            }
        }
        best as f32
    }

    #[test]
    fn matches_brute_force() {
        let (width, height) = (13, 9);
        let map: Vec<f32> = (0..width * height)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        for k in [1, 2, 3, 8, 9, 13, 40] {
            let fast = image_score(&map, width, height, k).unwrap();
            let slow = brute_force(&map, width, height, k);
            assert!((fast - slow).abs() <= 1e-5 * slow.abs().max(1.0), "k={k}");
        }
        // k = 1 is the plain maximum.
        let max = map.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(image_score(&map, width, height, 1).unwrap(), max);
    }

    #[test]
    fn oversized_window_is_the_mean() {
        let map = [1.0f32, 2.0, 3.0, 6.0];
        assert_eq!(image_score(&map, 2, 2, 16).unwrap(), 3.0);
        // Clamped per axis: 4x1 map, k = 2 -> 2x1 windows.
        assert_eq!(image_score(&map, 4, 1, 2).unwrap(), 4.5);
    }

    #[test]
    fn rejects_bad_input() {
        assert!(image_score(&[1.0; 5], 2, 2, 2).is_err());
        assert!(image_score(&[], 0, 0, 2).is_err());
        assert!(image_score(&[1.0; 4], 2, 2, 0).is_err());
        assert!(image_score(&[1.0, f32::NAN, 0.0, 0.0], 2, 2, 1).is_err());
        assert!(image_score(&[1.0, f32::INFINITY, 0.0, 0.0], 2, 2, 1).is_err());
    }
}
