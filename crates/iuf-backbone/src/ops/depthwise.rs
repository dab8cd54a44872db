//! Direct depthwise convolution with TF "SAME" padding, fused bias and activation: a CPU custom op
//! (candle's grouped conv2d runs one convolution per channel, far too slow for MBConv blocks),
//! falling back to candle's grouped conv2d on other devices.
//!
//! The CPU kernel works on one `(image, channel)` plane per rayon task. For the EfficientNet shapes
//! (3x3 and 5x5, stride 1 and 2) the plane is copied into a zero-padded buffer split into `stride`
//! column phases, so that every tap reads contiguous memory, and runs of 8 or 32 outputs keep their
//! accumulators in vector registers across all taps. The copy can also apply the previous
//! convolution's bias and activation (the MBConv expansion), saving a pass over the largest tensor
//! of the block. Other shapes use a row-wise kernel that never materialises the padding.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::epilogue::{activate, bias_activation, ChannelBias, Epilogue};
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
    if !cpu_f32(&[x, weight, bias]) {
        return depthwise_conv2d_same_reference(x, weight, bias, stride, epilogue);
    }
    DepthwiseSame::new(stride, epilogue, None).run(x, weight, bias)
}

/// `depthwise_conv2d_same(input_epilogue(x + input_bias[c]), ...)`: the bias and activation of
/// the convolution that produced `x` are applied while the kernel copies its input (CPU), or first
/// with candle ops (elsewhere). `x` must be a tensor nothing else references.
pub(crate) fn depthwise_conv2d_same_fused(
    x: Tensor,
    input_bias: &ChannelBias,
    input_epilogue: Epilogue,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    epilogue: Epilogue,
) -> Result<Tensor> {
    if !cpu_f32(&[&x, weight, bias]) {
        let x = bias_activation(x, input_bias, input_epilogue)?;
        return depthwise_conv2d_same_reference(&x, weight, bias, stride, epilogue);
    }
    let input = InputEpilogue {
        bias: input_bias.host(),
        epilogue: input_epilogue,
    };
    DepthwiseSame::new(stride, epilogue, Some(input)).run(&x, weight, bias)
}

fn cpu_f32(tensors: &[&Tensor]) -> bool {
    tensors
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
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

/// Bias and activation applied to the input as it is read.
#[derive(Clone, Copy)]
struct InputEpilogue<'a> {
    bias: &'a [f32],
    epilogue: Epilogue,
}

/// The CPU custom op: inputs `x`, `weight`, `bias`.
struct DepthwiseSame<'a> {
    stride: usize,
    epilogue: Epilogue,
    input: Option<InputEpilogue<'a>>,
}

impl<'a> DepthwiseSame<'a> {
    fn new(stride: usize, epilogue: Epilogue, input: Option<InputEpilogue<'a>>) -> Self {
        Self {
            stride: stride.max(1),
            epilogue,
            input,
        }
    }

    /// The op on `x`, `weight` and `bias` (f32 CPU tensors), made contiguous first.
    fn run(&self, x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
        Ok(x.contiguous()?
            .apply_op3_no_bwd(&weight.contiguous()?, &bias.contiguous()?, self)?)
    }
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

/// Per-thread buffers: the padded, phase-split plane, and the input after its epilogue (row-wise
/// path only).
#[derive(Default)]
struct Scratch {
    padded: Vec<f32>,
    plane: Vec<f32>,
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

impl CustomOp3 for DepthwiseSame<'_> {
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
        if let Some(input) = &self.input {
            if input.bias.len() != channels {
                candle_core::bail!(
                    "depthwise conv: input bias has {} channels, input has {channels}",
                    input.bias.len()
                )
            }
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
            let (epilogue, input) = (self.epilogue, self.input);
            out.par_chunks_mut(oh * ow).enumerate().for_each_init(
                Scratch::default,
                |scratch, (plane, dst)| {
                    let c = plane % channels;
                    let src = &x[plane * h * w..(plane + 1) * h * w];
                    let kernel = &weight[c * k * k..(c + 1) * k * k];
                    let pre = input.map(|i| (i.bias[c], i.epilogue));
                    let args = PlaneArgs {
                        src,
                        kernel,
                        bias: bias[c],
                        geom,
                        pre,
                        epilogue,
                    };
                    depthwise_plane_dispatch(&args, dst, scratch);
                },
            );
        }
        Ok((CpuStorage::F32(out), Shape::from((batch, channels, oh, ow))))
    }
}

/// Everything one plane's convolution reads.
struct PlaneArgs<'a> {
    src: &'a [f32],
    kernel: &'a [f32],
    bias: f32,
    geom: Geometry,
    /// Bias and activation of the input (the expansion's), applied as it is read.
    pre: Option<(f32, Epilogue)>,
    epilogue: Epilogue,
}

/// Runs the plane kernel compiled for AVX2+FMA when the CPU has it (the default x86-64 target only
/// guarantees SSE2, which halves the vector width), else the portable build.
fn depthwise_plane_dispatch(args: &PlaneArgs<'_>, dst: &mut [f32], scratch: &mut Scratch) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above), the only requirement
            // of a `target_feature` function; the body itself is safe code.
            unsafe { depthwise_plane_avx2(args, dst, scratch) };
            return;
        }
    }
    depthwise_plane(args, dst, scratch)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn depthwise_plane_avx2(args: &PlaneArgs<'_>, dst: &mut [f32], scratch: &mut Scratch) {
    depthwise_plane(args, dst, scratch)
}

/// One `(image, channel)` plane: `dst[oy, ox] = act(bias + sum_{ky,kx} k[ky,kx] *
/// pre(src)[s*oy + ky - pad_top, s*ox + kx - pad_left])`, out-of-range taps being zero padding.
/// Dispatches once per plane to a kernel monomorphised for the input epilogue and the shape.
#[inline(always)]
fn depthwise_plane(args: &PlaneArgs<'_>, dst: &mut [f32], scratch: &mut Scratch) {
    match args.pre {
        None => plane_with(args, dst, scratch, |v| v),
        Some((b, Epilogue::Linear)) => plane_with(args, dst, scratch, move |v| v + b),
        Some((b, Epilogue::Relu6)) => {
            plane_with(args, dst, scratch, move |v| (v + b).clamp(0.0, 6.0))
        }
        Some((b, Epilogue::Swish)) => {
            plane_with(args, dst, scratch, move |v| Epilogue::Swish.apply(v + b))
        }
    }
}

#[inline(always)]
fn plane_with(
    args: &PlaneArgs<'_>,
    dst: &mut [f32],
    scratch: &mut Scratch,
    pre: impl Fn(f32) -> f32 + Copy,
) {
    let geom = args.geom;
    let padded = &mut scratch.padded;
    match (geom.k, geom.stride) {
        (3, 1) => plane_blocked::<3, 1>(args, dst, padded, pre),
        (3, 2) => plane_blocked::<3, 2>(args, dst, padded, pre),
        (5, 1) => plane_blocked::<5, 1>(args, dst, padded, pre),
        (5, 2) => plane_blocked::<5, 2>(args, dst, padded, pre),
        _ => {
            let src = if args.pre.is_some() {
                scratch.plane.clear();
                scratch.plane.extend(args.src.iter().map(|&v| pre(v)));
                &scratch.plane[..]
            } else {
                args.src
            };
            return plane_rowwise(
                src,
                dst,
                args.kernel,
                args.bias,
                geom,
                args.epilogue,
                &mut scratch.padded,
            );
        }
    }
    for row in dst.chunks_exact_mut(geom.ow) {
        args.epilogue.apply_row(row);
    }
}

/// Register-blocked kernel for a fixed kernel size `K` and stride `S`. The plane is first copied
/// (through `pre`) into a zero-padded buffer split into `S` column phases (phase `p` holds padded
/// columns `S*j + p`), so that every tap of every output is in range and reads contiguous memory.
/// Each run of `LANES` outputs then keeps its accumulators in registers across the `K*K` taps (the
/// taps are summed in the same order as the row-wise kernel, so both give identical results).
#[inline(always)]
fn plane_blocked<const K: usize, const S: usize>(
    args: &PlaneArgs<'_>,
    dst: &mut [f32],
    scratch: &mut Vec<f32>,
    pre: impl Fn(f32) -> f32 + Copy,
) {
    let Geometry {
        h,
        w,
        oh,
        ow,
        pad_top,
        pad_left,
        ..
    } = args.geom;
    let hp = (oh - 1) * S + K;
    let wp = (ow - 1) * S + K;
    // Rows are long enough for whole 8-lane runs past the last output (the tail is computed in
    // full and only its valid part stored).
    let row_len = wp.div_ceil(S).max(ow.next_multiple_of(8) + (K - 1) / S);
    scratch.clear();
    scratch.resize(S * hp * row_len, 0.0);
    let used = w.min(wp - pad_left);
    for y in 0..h {
        let yp = y + pad_top;
        if yp >= hp {
            break;
        }
        let row = &args.src[y * w..y * w + used];
        if S == 1 {
            let to = &mut scratch[yp * row_len + pad_left..yp * row_len + pad_left + used];
            for (d, &v) in to.iter_mut().zip(row) {
                *d = pre(v);
            }
        } else if S == 2 {
            // Padded column xp = x + pad_left goes to phase xp % 2, index xp / 2. A leading odd
            // column first, then (even, odd) pairs, then a trailing even column.
            let (phase0, phase1) = scratch.split_at_mut(hp * row_len);
            let (p0, p1) = (
                &mut phase0[yp * row_len..(yp + 1) * row_len],
                &mut phase1[yp * row_len..(yp + 1) * row_len],
            );
            let lead = pad_left % 2;
            if lead == 1 && !row.is_empty() {
                p1[pad_left / 2] = pre(row[0]);
            }
            let rest = &row[lead.min(row.len())..];
            let j0 = (pad_left + lead) / 2;
            let pairs = rest.len() / 2;
            for ((d0, d1), pair) in p0[j0..j0 + pairs]
                .iter_mut()
                .zip(p1[j0..j0 + pairs].iter_mut())
                .zip(rest.chunks_exact(2))
            {
                *d0 = pre(pair[0]);
                *d1 = pre(pair[1]);
            }
            if rest.len() % 2 == 1 {
                p0[j0 + pairs] = pre(rest[rest.len() - 1]);
            }
        } else {
            for (x, &v) in row.iter().enumerate() {
                let xp = x + pad_left;
                scratch[((xp % S) * hp + yp) * row_len + xp / S] = pre(v);
            }
        }
    }
    let mut weights = [[0f32; K]; K];
    for (ky, wrow) in weights.iter_mut().enumerate() {
        wrow.copy_from_slice(&args.kernel[ky * K..(ky + 1) * K]);
    }
    let padded: &[f32] = scratch;
    let bias = args.bias;
    let lanes_end = ow.next_multiple_of(8);
    for (oy, out) in dst.chunks_exact_mut(ow).enumerate().take(oh) {
        let mut taps: [[&[f32]; K]; K] = [[&[]; K]; K];
        for (ky, tap_row) in taps.iter_mut().enumerate() {
            for (kx, tap) in tap_row.iter_mut().enumerate() {
                let start = ((kx % S) * hp + oy * S + ky) * row_len + kx / S;
                *tap = &padded[start..start + lanes_end];
            }
        }
        let mut ox = 0;
        while ox + 32 <= ow {
            accumulate::<K, 32>(&taps, &weights, bias, ox, &mut out[ox..ox + 32]);
            ox += 32;
        }
        while ox + 8 <= ow {
            accumulate::<K, 8>(&taps, &weights, bias, ox, &mut out[ox..ox + 8]);
            ox += 8;
        }
        if ox < ow {
            let mut tail = [0f32; 8];
            accumulate::<K, 8>(&taps, &weights, bias, ox, &mut tail);
            out[ox..].copy_from_slice(&tail[..ow - ox]);
        }
    }
}

/// `out[l] = bias + sum_{ky,kx} w[ky][kx] * taps[ky][kx][ox + l]` for `l < LANES`, accumulators
/// in an array the compiler keeps in vector registers.
#[inline(always)]
fn accumulate<const K: usize, const LANES: usize>(
    taps: &[[&[f32]; K]; K],
    weights: &[[f32; K]; K],
    bias: f32,
    ox: usize,
    out: &mut [f32],
) {
    let mut acc = [bias; LANES];
    for (tap_row, w_row) in taps.iter().zip(weights) {
        for (tap, &wv) in tap_row.iter().zip(w_row) {
            let input = &tap[ox..ox + LANES];
            for (a, &v) in acc.iter_mut().zip(input) {
                *a += wv * v;
            }
        }
    }
    out.copy_from_slice(&acc);
}

/// Row-wise kernel for any kernel size and stride: each output row is built by `k * k` shifted
/// multiply-adds of whole (phase) rows, each covering only the output columns whose input column
/// exists, so padding is never materialised.
#[inline(always)]
fn plane_rowwise(
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
    use crate::testing::max_abs_diff;
    use candle_core::Device;

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
                        let d = max_abs_diff(&got, &want);
                        assert!(d < 1e-5, "h {h} w {w} k {k} s {stride} {epilogue:?}: {d}");
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn fused_input_epilogue_equals_separate_ops() -> Result<()> {
        let dev = Device::Cpu;
        for &(h, w) in &[(14, 14), (15, 9), (3, 2)] {
            for &(k, stride) in &[(1usize, 1usize), (3, 1), (3, 2), (5, 1), (5, 2), (7, 2)] {
                let x = Tensor::randn(0f32, 3.0, (2, 4, h, w), &dev)?;
                let in_bias = ChannelBias::new(Tensor::randn(0f32, 1.0, 4, &dev)?)?;
                let weight = Tensor::randn(0f32, 1.0, (4, 1, k, k), &dev)?;
                let bias = Tensor::randn(0f32, 1.0, 4, &dev)?;
                for pre in [Epilogue::Linear, Epilogue::Relu6, Epilogue::Swish] {
                    let activated = activate(
                        &x.broadcast_add(&in_bias.tensor().reshape((1, 4, 1, 1))?)?,
                        pre,
                    )?;
                    let want = depthwise_conv2d_same_reference(
                        &activated,
                        &weight,
                        &bias,
                        stride,
                        Epilogue::Relu6,
                    )?;
                    let got = depthwise_conv2d_same_fused(
                        x.copy()?,
                        &in_bias,
                        pre,
                        &weight,
                        &bias,
                        stride,
                        Epilogue::Relu6,
                    )?;
                    let d = max_abs_diff(&got, &want);
                    assert!(d < 1e-5, "{h}x{w} k {k} s {stride} {pre:?}: {d}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn blocked_and_rowwise_kernels_agree_bitwise() {
        let mut seed = 1u32;
        let mut rand = move || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        for &(h, w) in &[(112, 112), (56, 56), (15, 9), (7, 40), (2, 3)] {
            for &(k, stride) in &[(3, 1), (3, 2), (5, 1), (5, 2)] {
                let src: Vec<f32> = (0..h * w).map(|_| rand()).collect();
                let kernel: Vec<f32> = (0..k * k).map(|_| rand()).collect();
                let (oh, pad_top, _) = same_padding(h, k, stride);
                let (ow, pad_left, _) = same_padding(w, k, stride);
                let geom = Geometry {
                    h,
                    w,
                    oh,
                    ow,
                    k,
                    stride,
                    pad_top,
                    pad_left,
                };
                let (mut a, mut b) = (vec![0f32; oh * ow], vec![0f32; oh * ow]);
                let mut scratch = Scratch::default();
                let args = PlaneArgs {
                    src: &src,
                    kernel: &kernel,
                    bias: 0.25,
                    geom,
                    pre: None,
                    epilogue: Epilogue::Swish,
                };
                depthwise_plane(&args, &mut a, &mut scratch);
                let padded = &mut scratch.padded;
                plane_rowwise(&src, &mut b, &kernel, 0.25, geom, Epilogue::Swish, padded);
                assert_eq!(a, b, "{h}x{w} k {k} s {stride}");
            }
        }
    }

    #[test]
    fn direct_kernel_accepts_non_contiguous_input() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 4, 9, 6), &dev)?.transpose(2, 3)?;
        let weight = Tensor::randn(0f32, 1.0, (4, 1, 3, 3), &dev)?;
        let bias = Tensor::zeros(4, DType::F32, &dev)?;
        let got = depthwise_conv2d_same(&x, &weight, &bias, 2, Epilogue::Linear)?;
        let want = depthwise_conv2d_same_reference(&x, &weight, &bias, 2, Epilogue::Linear)?;
        assert!(max_abs_diff(&got, &want) < 1e-5);
        Ok(())
    }
}
