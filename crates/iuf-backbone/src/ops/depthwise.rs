//! Direct depthwise convolution with TF "SAME" padding, fused bias and activation: a CPU custom op
//! (candle's grouped conv2d runs one convolution per channel, far too slow for MBConv blocks),
//! falling back to candle's grouped conv2d on other devices.
//!
//! The CPU kernel works on one `(image, channel)` plane per rayon task. Each output row is built by
//! `k * k` shifted multiply-adds of whole input rows (contiguous slices, so they vectorise); a
//! strided layer first splits the input plane's columns into `stride` phases so that its reads are
//! contiguous too. Padding is never materialised: each shifted row covers only the output columns
//! whose input column exists.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::epilogue::{activate, Epilogue};
use super::same_padding;
use crate::error::Result;

/// Depthwise convolution of `x` `[B, C, H, W]` with `weight` `[C, 1, k, k]` and `bias` `[C]`, TF
/// "SAME" padding, then the epilogue. Output `[B, C, ceil(H/s), ceil(W/s)]`.
///
/// On CPU with f32 tensors this runs the direct kernel; elsewhere it pads explicitly and calls
/// candle's grouped conv2d ([`depthwise_conv2d_same_reference`]).
pub fn depthwise_conv2d_same(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    epilogue: Epilogue,
) -> Result<Tensor> {
    let on_cpu_f32 = x.device().is_cpu()
        && [x.dtype(), weight.dtype(), bias.dtype()]
            .iter()
            .all(|&d| d == DType::F32);
    if !on_cpu_f32 {
        return depthwise_conv2d_same_reference(x, weight, bias, stride, epilogue);
    }
    let x = x.contiguous()?;
    let op = DepthwiseSame {
        stride: stride.max(1),
        epilogue,
    };
    Ok(x.apply_op3_no_bwd(&weight.contiguous()?, &bias.contiguous()?, &op)?)
}

/// The same function with candle ops only: explicit asymmetric zero padding, grouped conv2d,
/// bias, activation. The fallback for non-CPU devices and the reference the kernel is tested
/// against.
pub fn depthwise_conv2d_same_reference(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    epilogue: Epilogue,
) -> Result<Tensor> {
    let (_, channels, h, w) = x.dims4()?;
    let (_, _, kh, kw) = weight.dims4()?;
    let (_, top, bottom) = same_padding(h, kh, stride);
    let (_, left, right) = same_padding(w, kw, stride);
    let padded = x
        .pad_with_zeros(2, top, bottom)?
        .pad_with_zeros(3, left, right)?;
    let y = padded.conv2d(weight, 0, stride, 1, channels)?;
    let y = y.broadcast_add(&bias.reshape((1, channels, 1, 1))?)?;
    activate(&y, epilogue)
}

/// The CPU custom op: inputs `x`, `weight`, `bias`.
struct DepthwiseSame {
    stride: usize,
    epilogue: Epilogue,
}

/// Shape of one plane's convolution.
#[derive(Clone, Copy)]
struct Geometry {
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    k: usize,
    stride: usize,
    pad_top: usize,
    pad_left: usize,
}

fn f32_slice<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("depthwise conv: {what} must be f32")
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("depthwise conv: {what} must be contiguous"),
    }
}

impl CustomOp3 for DepthwiseSame {
    fn name(&self) -> &'static str {
        "iuf-depthwise-conv2d-same"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (batch, channels, h, w) = xl.shape().dims4()?;
        let (wc, one, k, k2) = wl.shape().dims4()?;
        if wc != channels || one != 1 || k != k2 || bl.shape().dims() != [channels] {
            candle_core::bail!(
                "depthwise conv: input {:?} needs weight [{channels}, 1, k, k] and bias [{channels}], got {:?} and {:?}",
                xl.dims(),
                wl.dims(),
                bl.dims()
            )
        }
        let x = f32_slice(xs, xl, "input")?;
        let weight = f32_slice(ws, wl, "weight")?;
        let bias = f32_slice(bs, bl, "bias")?;
        let (oh, pad_top, _) = same_padding(h, k, self.stride);
        let (ow, pad_left, _) = same_padding(w, k, self.stride);
        let geom = Geometry {
            h,
            w,
            oh,
            ow,
            k,
            stride: self.stride,
            pad_top,
            pad_left,
        };
        let mut out = vec![0f32; batch * channels * oh * ow];
        if !out.is_empty() && h * w > 0 {
            let epilogue = self.epilogue;
            out.par_chunks_mut(oh * ow).enumerate().for_each_init(
                Vec::new,
                |scratch, (plane, dst)| {
                    let c = plane % channels;
                    let src = &x[plane * h * w..(plane + 1) * h * w];
                    let kernel = &weight[c * k * k..(c + 1) * k * k];
                    depthwise_plane_dispatch(src, dst, kernel, bias[c], geom, epilogue, scratch);
                },
            );
        }
        Ok((CpuStorage::F32(out), Shape::from((batch, channels, oh, ow))))
    }
}

/// Runs the plane kernel compiled for AVX2+FMA when the CPU has it (the default x86-64 target only
/// guarantees SSE2, which halves the vector width), else the portable build.
fn depthwise_plane_dispatch(
    src: &[f32],
    dst: &mut [f32],
    kernel: &[f32],
    bias: f32,
    geom: Geometry,
    epilogue: Epilogue,
    scratch: &mut Vec<f32>,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above), the only requirement
            // of a `target_feature` function; the body itself is safe code.
            unsafe { depthwise_plane_avx2(src, dst, kernel, bias, geom, epilogue, scratch) };
            return;
        }
    }
    depthwise_plane(src, dst, kernel, bias, geom, epilogue, scratch)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn depthwise_plane_avx2(
    src: &[f32],
    dst: &mut [f32],
    kernel: &[f32],
    bias: f32,
    geom: Geometry,
    epilogue: Epilogue,
    scratch: &mut Vec<f32>,
) {
    depthwise_plane(src, dst, kernel, bias, geom, epilogue, scratch)
}

/// One `(image, channel)` plane: `dst[oy, ox] = act(bias + sum_{ky,kx} k[ky,kx] *
/// src[s*oy + ky - pad_top, s*ox + kx - pad_left])`, out-of-range taps being zero padding.
#[inline(always)]
fn depthwise_plane(
    src: &[f32],
    dst: &mut [f32],
    kernel: &[f32],
    bias: f32,
    geom: Geometry,
    epilogue: Epilogue,
    scratch: &mut Vec<f32>,
) {
    let Geometry {
        h,
        w,
        oh,
        ow,
        k,
        stride: s,
        pad_top,
        pad_left,
    } = geom;
    // Phase p of row y holds src[y, s*j + p]: a strided read becomes a contiguous one.
    let phase_w = w.div_ceil(s);
    let rows: &[f32] = if s == 1 {
        src
    } else {
        scratch.clear();
        scratch.resize(s * h * phase_w, 0.0);
        for y in 0..h {
            let row = &src[y * w..(y + 1) * w];
            for p in 0..s.min(w) {
                let phase = &mut scratch[(p * h + y) * phase_w..(p * h + y + 1) * phase_w];
                for (d, v) in phase.iter_mut().zip(row[p..].iter().step_by(s)) {
                    *d = *v;
                }
            }
        }
        &scratch[..]
    };
    // Per kernel column: which phase it reads, its offset in that phase, and the output columns
    // [lo, hi) whose input column lies inside the image.
    let columns: Vec<(usize, isize, usize, usize)> = (0..k)
        .map(|kx| {
            let c = kx as isize - pad_left as isize;
            let (si, wi) = (s as isize, w as isize);
            let phase = c.rem_euclid(si) as usize;
            let shift = c.div_euclid(si);
            let lo = if c >= 0 {
                0
            } else {
                ((-c + si - 1) / si) as usize
            };
            let hi = if wi - 1 - c >= 0 {
                (((wi - 1 - c) / si) as usize + 1).min(ow)
            } else {
                0
            };
            (phase, shift, lo.min(hi), hi)
        })
        .collect();
    for oy in 0..oh {
        let out = &mut dst[oy * ow..(oy + 1) * ow];
        out.fill(bias);
        for ky in 0..k {
            let y = (oy * s + ky) as isize - pad_top as isize;
            if y < 0 || y >= h as isize {
                continue;
            }
            let y = y as usize;
            for (kx, &(phase, shift, lo, hi)) in columns.iter().enumerate() {
                if lo >= hi {
                    continue;
                }
                let wv = kernel[ky * k + kx];
                let row_start = if s == 1 {
                    y * w
                } else {
                    (phase * h + y) * phase_w
                };
                let from = (row_start as isize + lo as isize + shift) as usize;
                let input = &rows[from..from + (hi - lo)];
                for (o, i) in out[lo..hi].iter_mut().zip(input) {
                    *o += wv * *i;
                }
            }
        }
        epilogue.apply_row(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn direct_kernel_equals_candle_grouped_conv() -> Result<()> {
        let dev = Device::Cpu;
        // Odd and even sizes, both kernel sizes and strides of EfficientNet, a non-square image.
        for &(h, w) in &[(14, 14), (15, 9), (7, 8), (1, 1), (2, 3)] {
            for &k in &[1usize, 3, 5] {
                for &stride in &[1usize, 2] {
                    let x = Tensor::randn(0f32, 1.0, (2, 3, h, w), &dev)?;
                    let weight = Tensor::randn(0f32, 1.0, (3, 1, k, k), &dev)?;
                    let bias = Tensor::randn(0f32, 1.0, 3, &dev)?;
                    for epilogue in [Epilogue::Linear, Epilogue::Relu6, Epilogue::Swish] {
                        let got = depthwise_conv2d_same(&x, &weight, &bias, stride, epilogue)?;
                        let want =
                            depthwise_conv2d_same_reference(&x, &weight, &bias, stride, epilogue)?;
                        assert_eq!(got.dims(), want.dims());
                        let d = max_diff(&got, &want);
                        assert!(d < 1e-5, "h {h} w {w} k {k} s {stride} {epilogue:?}: {d}");
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn direct_kernel_accepts_non_contiguous_input() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 4, 9, 6), &dev)?.transpose(2, 3)?;
        let weight = Tensor::randn(0f32, 1.0, (4, 1, 3, 3), &dev)?;
        let bias = Tensor::zeros(4, DType::F32, &dev)?;
        let got = depthwise_conv2d_same(&x, &weight, &bias, 2, Epilogue::Linear)?;
        let want = depthwise_conv2d_same_reference(&x, &weight, &bias, 2, Epilogue::Linear)?;
        assert!(max_diff(&got, &want) < 1e-5);
        Ok(())
    }
}
