//! Pillow-exact resampling of 8-bit images: `Image.resize(BILINEAR)` (separable triangle filter that
//! widens its support when shrinking, i.e. antialiased, with Pillow's 22-bit fixed-point weights
//! and rounding to u8 after each pass) and `Image.resize(NEAREST)`, as in Pillow 13's
//! `libImaging/Resample.c` and `Geometry.c`.

/// Fixed-point precision of Pillow's 8-bit resampling weights: 32 - 8 - 2 bits.
const PRECISION_BITS: u32 = 22;

/// Per output pixel: the first input index and the number of taps, plus `ksize` weights.
struct Coefficients {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// Pillow's `precompute_coeffs` (bilinear support 1.0) followed by `normalize_coeffs_8bpc`. The
/// arithmetic order is kept exactly so that the f64 weights, hence the fixed-point ones, are equal.
fn precompute(in_size: usize, out_size: usize) -> Coefficients {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let inv_filterscale = 1.0 / filterscale;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // C's (int) cast truncates toward zero, as `as i64` does.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) - xmin;
        let taps = xmax.max(0) as usize;
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(taps) {
            let w = triangle(((x as i64 + xmin) as f64 - center + 0.5) * inv_filterscale);
            *kx = w;
            ww += w;
        }
        for (x, kx) in k.iter().enumerate().take(taps) {
            let w = if ww != 0.0 { kx / ww } else { *kx };
            let fixed = w * (1u32 << PRECISION_BITS) as f64;
            weights[xx * ksize + x] = if w < 0.0 {
                (-0.5 + fixed) as i32
            } else {
                (0.5 + fixed) as i32
            };
        }
        bounds.push((xmin as usize, taps));
    }
    Coefficients {
        ksize,
        bounds,
        weights,
    }
}

#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Horizontal pass over rows `first_row .. first_row + rows` of `src` (`in_w` wide, `c` channels).
fn horizontal(
    src: &[u8],
    in_w: usize,
    c: usize,
    first_row: usize,
    rows: usize,
    co: &Coefficients,
) -> Vec<u8> {
    let out_w = co.bounds.len();
    let mut out = vec![0u8; out_w * rows * c];
    for y in 0..rows {
        let line = &src[(first_row + y) * in_w * c..(first_row + y + 1) * in_w * c];
        let out_line = &mut out[y * out_w * c..(y + 1) * out_w * c];
        for (xx, &(xmin, taps)) in co.bounds.iter().enumerate() {
            let k = &co.weights[xx * co.ksize..xx * co.ksize + taps];
            for ch in 0..c {
                let mut acc: i32 = 1 << (PRECISION_BITS - 1);
                for (x, &w) in k.iter().enumerate() {
                    acc += line[(xmin + x) * c + ch] as i32 * w;
                }
                out_line[xx * c + ch] = clip8(acc);
            }
        }
    }
    out
}

/// Vertical pass: output row `yy` mixes input rows `bounds[yy].0 - row_offset ..`.
fn vertical(src: &[u8], w: usize, c: usize, row_offset: usize, co: &Coefficients) -> Vec<u8> {
    let out_h = co.bounds.len();
    let stride = w * c;
    let mut out = vec![0u8; out_h * stride];
    for (yy, &(ymin, taps)) in co.bounds.iter().enumerate() {
        let k = &co.weights[yy * co.ksize..yy * co.ksize + taps];
        let ymin = ymin - row_offset;
        let out_line = &mut out[yy * stride..(yy + 1) * stride];
        for (i, o) in out_line.iter_mut().enumerate() {
            let mut acc: i32 = 1 << (PRECISION_BITS - 1);
            for (y, &wt) in k.iter().enumerate() {
                acc += src[(ymin + y) * stride + i] as i32 * wt;
            }
            *o = clip8(acc);
        }
    }
    out
}

/// Pillow's `resize((out_w, out_h), Image.BILINEAR)` on an interleaved 8-bit image with `c`
/// channels (no alpha premultiplication: callers pass RGB or L). Sizes must be non-zero and `src`
/// must hold `in_w * in_h * c` bytes (checked by the public wrappers).
pub(crate) fn bilinear(
    src: &[u8],
    in_w: usize,
    in_h: usize,
    c: usize,
    out_w: usize,
    out_h: usize,
) -> Vec<u8> {
    let need_horizontal = out_w != in_w;
    let need_vertical = out_h != in_h;
    if !need_horizontal && !need_vertical {
        return src.to_vec();
    }
    // Pillow 13 runs the vertical pass first when the height shrinks more than twice as much as the
    // width (faster); the order changes the intermediate rounding, so it is kept.
    let horizontal_first =
        !(in_h > out_h && (in_h - out_h) as i64 > (in_w as i64 - out_w as i64) * 2);
    let vert = precompute(in_h, out_h);
    if horizontal_first {
        if !need_horizontal {
            return vertical(src, in_w, c, 0, &vert);
        }
        let horiz = precompute(in_w, out_w);
        // Only the rows the vertical pass will read are resampled horizontally.
        let first = vert.bounds[0].0;
        let (last_min, last_taps) = vert.bounds[out_h - 1];
        let rows = last_min + last_taps - first;
        let tmp = horizontal(src, in_w, c, first, rows, &horiz);
        if !need_vertical {
            return tmp;
        }
        vertical(&tmp, out_w, c, first, &vert)
    } else {
        let tmp = vertical(src, in_w, c, 0, &vert);
        if !need_horizontal {
            return tmp;
        }
        let horiz = precompute(in_w, out_w);
        horizontal(&tmp, in_w, c, 0, out_h, &horiz)
    }
}

/// Source index of every output index for Pillow's `resize(NEAREST)`: the sample position
/// `(i + 0.5) * in / out` accumulated by repeated addition, as `ImagingScaleAffine` does.
pub(crate) fn nearest_indices(in_size: usize, out_size: usize) -> Vec<usize> {
    let step = in_size as f64 / out_size as f64;
    let mut pos = step * 0.5;
    let mut out = Vec::with_capacity(out_size);
    for _ in 0..out_size {
        out.push((pos.max(0.0) as usize).min(in_size - 1));
        pos += step;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (i, o) in [(256, 224), (100, 37), (10, 33), (7, 7)] {
            let co = precompute(i, o);
            for (xx, &(_, taps)) in co.bounds.iter().enumerate() {
                let s: i32 = co.weights[xx * co.ksize..xx * co.ksize + taps].iter().sum();
                assert!(
                    (s - (1 << PRECISION_BITS)).abs() <= taps as i32,
                    "{i}->{o} at {xx}: {s}"
                );
            }
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let src = vec![77u8; 50 * 31 * 3];
        for (w, h) in [(224, 224), (13, 90), (50, 7)] {
            assert!(bilinear(&src, 50, 31, 3, w, h).iter().all(|&v| v == 77));
        }
    }

    #[test]
    fn nearest_picks_pixel_centres() {
        assert_eq!(nearest_indices(4, 2), [1, 3]);
        assert_eq!(nearest_indices(2, 4), [0, 0, 1, 1]);
        assert_eq!(nearest_indices(5, 5), [0, 1, 2, 3, 4]);
    }
}
