//! Dense convolution with TF "SAME" padding as im2col + matmul on CPU (candle's conv2d builds its
//! patch matrix in a slower single pass; this one is laid out for one `[Cout, C*k*k] x [C*k*k,
//! OH*OW]` product per image, giving NCHW directly), candle's conv2d elsewhere. Used by the stem.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::same_padding;
use crate::error::Result;

/// `x` `[B, C, H, W]` convolved with `weight` `[Cout, C, k, k]`, stride `s`, TF "SAME" padding, no
/// bias: `[B, Cout, ceil(H/s), ceil(W/s)]`.
pub(crate) fn conv2d_same(x: &Tensor, weight: &Tensor, stride: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (cout, cin, k, _) = weight.dims4()?;
    if !(x.device().is_cpu() && x.dtype() == DType::F32 && cin == c) {
        let (_, top, bottom) = same_padding(h, k, stride);
        let (_, left, right) = same_padding(w, k, stride);
        return Ok(x
            .pad_with_zeros(2, top, bottom)?
            .pad_with_zeros(3, left, right)?
            .conv2d(weight, 0, stride, 1, 1)?);
    }
    let (oh, ow) = (h.div_ceil(stride), w.div_ceil(stride));
    let patches = x
        .contiguous()?
        .apply_op1_no_bwd(&Im2ColSame { k, stride })?;
    let weight = weight.reshape((cout, cin * k * k))?;
    let y = weight
        .broadcast_as((b, cout, cin * k * k))?
        .matmul(&patches)?;
    Ok(y.reshape((b, cout, oh, ow))?)
}

/// `[B, C, H, W]` -> `[B, C*k*k, OH*OW]`: row `(c, ky, kx)` holds input pixel
/// `(s*oy + ky - pad_top, s*ox + kx - pad_left)` of channel `c` for every output `(oy, ox)`, zero
/// where that falls in the padding.
struct Im2ColSame {
    k: usize,
    stride: usize,
}

impl CustomOp1 for Im2ColSame {
    fn name(&self) -> &'static str {
        "iuf-im2col-same"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = layout.shape().dims4()?;
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("{}: expected f32", self.name())
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("{}: expected a contiguous tensor", self.name())
        };
        let x = &data[start..end];
        let (k, s) = (self.k, self.stride.max(1));
        let (oh, pad_top, _) = same_padding(h, k, s);
        let (ow, pad_left, _) = same_padding(w, k, s);
        let rows = c * k * k;
        let mut out = vec![0f32; b * rows * oh * ow];
        if !out.is_empty() && h * w > 0 {
            out.par_chunks_mut(oh * ow)
                .enumerate()
                .for_each(|(index, row)| {
                    let (image, r) = (index / rows, index % rows);
                    let (ch, ky, kx) = (r / (k * k), r / k % k, r % k);
                    let plane = &x[(image * c + ch) * h * w..(image * c + ch + 1) * h * w];
                    // Output columns whose input column lies inside the image.
                    let shift = kx as isize - pad_left as isize;
                    let lo = if shift >= 0 {
                        0
                    } else {
                        ((-shift) as usize).div_ceil(s)
                    };
                    let hi = if (w as isize - 1 - shift) < 0 {
                        0
                    } else {
                        (((w as isize - 1 - shift) as usize) / s + 1).min(ow)
                    };
                    for (oy, dst) in row.chunks_exact_mut(ow).enumerate() {
                        let y = (oy * s + ky) as isize - pad_top as isize;
                        if y < 0 || y >= h as isize || lo >= hi {
                            continue;
                        }
                        let src = &plane[y as usize * w..(y as usize + 1) * w];
                        let first = (lo as isize * s as isize + shift) as usize;
                        for (d, v) in dst[lo..hi].iter_mut().zip(src[first..].iter().step_by(s)) {
                            *d = *v;
                        }
                    }
                });
        }
        Ok((CpuStorage::F32(out), Shape::from((b, rows, oh * ow))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::max_abs_diff;
    use candle_core::Device;

    #[test]
    fn im2col_conv_equals_candle_conv2d() -> Result<()> {
        let dev = Device::Cpu;
        for &(h, w) in &[(224, 224), (15, 9), (2, 3), (1, 1)] {
            for &(k, s) in &[(3usize, 2usize), (3, 1), (5, 2), (1, 1)] {
                let x = Tensor::randn(0f32, 1.0, (2, 3, h, w), &dev)?;
                let weight = Tensor::randn(0f32, 1.0, (8, 3, k, k), &dev)?;
                let got = conv2d_same(&x, &weight, s)?;
                let (_, top, bottom) = same_padding(h, k, s);
                let (_, left, right) = same_padding(w, k, s);
                let want = x
                    .pad_with_zeros(2, top, bottom)?
                    .pad_with_zeros(3, left, right)?
                    .conv2d(&weight, 0, s, 1, 1)?;
                assert_eq!(got.dims(), want.dims());
                let d = max_abs_diff(&got, &want);
                assert!(d < 1e-4, "{h}x{w} k {k} s {s}: {d}");
            }
        }
        Ok(())
    }
}
