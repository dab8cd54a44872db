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

/// A rectangle of an interleaved 8-bit image: `w x h` pixels starting at pixel `(x0, y0)` of a
/// buffer whose rows are `stride` pixels long, `c` channels a pixel.
#[derive(Clone, Copy)]
pub(crate) struct Region<'a> {
    pub src: &'a [u8],
    pub stride: usize,
    pub x0: usize,
    pub y0: usize,
    pub w: usize,
    pub h: usize,
    pub c: usize,
}

impl<'a> Region<'a> {
    /// The whole of a `w x h` image.
    pub fn whole(src: &'a [u8], w: usize, h: usize, c: usize) -> Self {
        Self {
            src,
            stride: w,
            x0: 0,
            y0: 0,
            w,
            h,
            c,
        }
    }

    /// Row `y` of the rectangle (`w * c` bytes).
    fn row(&self, y: usize) -> &'a [u8] {
        let start = ((self.y0 + y) * self.stride + self.x0) * self.c;
        &self.src[start..start + self.w * self.c]
    }

    /// The rectangle as a packed `w x h` buffer.
    fn to_vec(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.w * self.h * self.c);
        for y in 0..self.h {
            out.extend_from_slice(self.row(y));
        }
        out
    }
}

/// Horizontal pass over rows `first_row .. first_row + rows` of `src`. The sums are integers, so
/// any order of the taps gives Pillow's result exactly.
fn horizontal(src: Region<'_>, first_row: usize, rows: usize, co: &Coefficients) -> Vec<u8> {
    let (out_w, c) = (co.bounds.len(), src.c);
    let mut out = vec![0u8; out_w * rows * c];
    for (y, out_line) in out.chunks_exact_mut(out_w * c).enumerate() {
        let line = src.row(first_row + y);
        match c {
            3 => horizontal_line::<3>(line, out_line, co),
            1 => horizontal_line::<1>(line, out_line, co),
            4 => horizontal_line::<4>(line, out_line, co),
            _ => horizontal_line_any(line, out_line, c, co),
        }
    }
    out
}

/// One row of the horizontal pass for `C` channels: all channels of a tap at once.
#[inline(always)]
fn horizontal_line<const C: usize>(line: &[u8], out: &mut [u8], co: &Coefficients) {
    for (xx, (&(xmin, taps), o)) in co.bounds.iter().zip(out.chunks_exact_mut(C)).enumerate() {
        let k = &co.weights[xx * co.ksize..xx * co.ksize + taps];
        let px = &line[xmin * C..(xmin + taps) * C];
        let mut acc = [1i32 << (PRECISION_BITS - 1); C];
        for (p, &w) in px.chunks_exact(C).zip(k) {
            for ch in 0..C {
                acc[ch] += p[ch] as i32 * w;
            }
        }
        for ch in 0..C {
            o[ch] = clip8(acc[ch]);
        }
    }
}

/// [`horizontal_line`] for any channel count.
fn horizontal_line_any(line: &[u8], out: &mut [u8], c: usize, co: &Coefficients) {
    for (xx, &(xmin, taps)) in co.bounds.iter().enumerate() {
        let k = &co.weights[xx * co.ksize..xx * co.ksize + taps];
        for ch in 0..c {
            let mut acc: i32 = 1 << (PRECISION_BITS - 1);
            for (x, &w) in k.iter().enumerate() {
                acc += line[(xmin + x) * c + ch] as i32 * w;
            }
            out[xx * c + ch] = clip8(acc);
        }
    }
}

/// Vertical pass: output row `yy` mixes rows `bounds[yy].0 - row_offset ..` of `src`. Each tap adds
/// a whole row into an integer accumulator row (vectorised); exact for the same reason as above.
fn vertical(src: Region<'_>, row_offset: usize, co: &Coefficients) -> Vec<u8> {
    let stride = src.w * src.c;
    let mut out = vec![0u8; co.bounds.len() * stride];
    let mut acc = vec![0i32; stride];
    for ((yy, &(ymin, taps)), out_line) in co
        .bounds
        .iter()
        .enumerate()
        .zip(out.chunks_exact_mut(stride))
    {
        let k = &co.weights[yy * co.ksize..yy * co.ksize + taps];
        acc.fill(1 << (PRECISION_BITS - 1));
        for (y, &wt) in k.iter().enumerate() {
            let row = src.row(ymin - row_offset + y);
            for (a, &p) in acc.iter_mut().zip(row) {
                *a += p as i32 * wt;
            }
        }
        for (o, &a) in out_line.iter_mut().zip(&acc) {
            *o = clip8(a);
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
    bilinear_region(Region::whole(src, in_w, in_h, c), out_w, out_h)
}

/// [`bilinear`] of a rectangle of a larger image, as Pillow resizes `img.crop(box)`: the same
/// bytes without copying the crop first.
pub(crate) fn bilinear_region(src: Region<'_>, out_w: usize, out_h: usize) -> Vec<u8> {
    let (in_w, in_h) = (src.w, src.h);
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
            return vertical(src, 0, &vert);
        }
        let horiz = precompute(in_w, out_w);
        // Only the rows the vertical pass will read are resampled horizontally.
        let first = vert.bounds[0].0;
        let (last_min, last_taps) = vert.bounds[out_h - 1];
        let rows = last_min + last_taps - first;
        let tmp = horizontal(src, first, rows, &horiz);
        if !need_vertical {
            return tmp;
        }
        vertical(Region::whole(&tmp, out_w, rows, src.c), first, &vert)
    } else {
        let tmp = vertical(src, 0, &vert);
        if !need_horizontal {
            return tmp;
        }
        let horiz = precompute(in_w, out_w);
        horizontal(Region::whole(&tmp, in_w, out_h, src.c), 0, out_h, &horiz)
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
