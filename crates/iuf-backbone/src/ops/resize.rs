//! Bilinear resize with align_corners=True, as two matmuls with interpolation matrices: it runs on
//! any device and has a backward pass (section 2: the neck; section 3.6: the anomaly map's x16).

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// Resizes `x` `[B, C, H, W]` to `[B, C, out_h, out_w]` like PyTorch's
/// `F.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=True)`.
///
/// Output pixel `i` samples input coordinate `i * (in - 1) / (out - 1)` (0 when `out == 1`), so the
/// corner pixels of input and output coincide. Implemented as `R x C^T` with sparse interpolation
/// matrices `R` `[out_h, H]` and `C` `[out_w, W]` (two non-zeros per row), which makes it a
/// differentiable composition of candle ops. Returns `x` itself when the size does not change.
pub fn resize_bilinear_align_corners(x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if h == 0 || w == 0 || out_h == 0 || out_w == 0 {
        return Err(Error::Input {
            expected: "a non-empty [B, C, H, W] tensor resized to a non-empty size".into(),
            found: format!("{:?} resized to {out_h}x{out_w}", x.dims()),
        });
    }
    if (h, w) == (out_h, out_w) {
        return Ok(x.clone());
    }
    let (dtype, device) = (x.dtype(), x.device());
    let mut y = x.reshape((b * c, h, w))?;
    if w != out_w {
        // [B*C*H, W] x [W, out_w]
        let cols = interpolation_matrix(w, out_w, dtype, device)?;
        y = y
            .reshape((b * c * h, w))?
            .matmul(&cols.t()?)?
            .reshape((b * c, h, out_w))?;
    }
    if h != out_h {
        // [out_h, H] x [B*C, H, out_w], the matrix shared by every plane (stride-0 batch).
        let rows = interpolation_matrix(h, out_h, dtype, device)?;
        y = rows.broadcast_as((b * c, out_h, h))?.matmul(&y)?;
    }
    Ok(y.reshape((b, c, out_h, out_w))?)
}

/// `[output, input]` matrix whose row `i` holds the two linear-interpolation weights of output
/// pixel `i`. The source coordinate is computed in f32 exactly as PyTorch's CPU kernel does
/// (`scale = (in - 1) / (out - 1)`, `src = scale * i`), so the weights agree bit for bit.
fn interpolation_matrix(
    input: usize,
    output: usize,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let scale = if output > 1 {
        (input - 1) as f32 / (output - 1) as f32
    } else {
        0.0
    };
    let mut m = vec![0f32; output * input];
    for i in 0..output {
        let src = scale * i as f32;
        let i0 = (src as usize).min(input - 1);
        let i1 = (i0 + 1).min(input - 1);
        let frac = src - i0 as f32;
        m[i * input + i0] += 1.0 - frac;
        m[i * input + i1] += frac;
    }
    Ok(Tensor::from_vec(m, (output, input), device)?.to_dtype(dtype)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct evaluation of the align_corners=True formula, pixel by pixel, with PyTorch's order
    /// of operations for the source coordinate (`scale` first, then `scale * i`).
    fn naive(x: &[f32], h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
        let coord = |i: usize, n_in: usize, n_out: usize| -> (usize, usize, f32) {
            let src = if n_out > 1 {
                ((n_in - 1) as f32 / (n_out - 1) as f32) * i as f32
            } else {
                0.0
            };
            let i0 = (src.floor() as usize).min(n_in - 1);
            (i0, (i0 + 1).min(n_in - 1), src - i0 as f32)
        };
        let mut out = vec![0f32; oh * ow];
        for oy in 0..oh {
            let (y0, y1, fy) = coord(oy, h, oh);
            for ox in 0..ow {
                let (x0, x1, fx) = coord(ox, w, ow);
                let top = x[y0 * w + x0] * (1.0 - fx) + x[y0 * w + x1] * fx;
                let bottom = x[y1 * w + x0] * (1.0 - fx) + x[y1 * w + x1] * fx;
                out[oy * ow + ox] = top * (1.0 - fy) + bottom * fy;
            }
        }
        out
    }

    #[test]
    fn matches_the_pixel_formula_down_and_up() -> Result<()> {
        let dev = Device::Cpu;
        for &(h, w, oh, ow) in &[
            (112, 112, 14, 14),
            (14, 14, 224, 224),
            (5, 7, 3, 9),
            (4, 4, 1, 1),
            (1, 3, 4, 3),
        ] {
            let x = Tensor::randn(0f32, 1.0, (2, 3, h, w), &dev)?;
            let y = resize_bilinear_align_corners(&x, oh, ow)?;
            assert_eq!(y.dims(), &[2, 3, oh, ow]);
            let xs = x.flatten_all()?.to_vec1::<f32>()?;
            let ys = y.flatten_all()?.to_vec1::<f32>()?;
            for plane in 0..6 {
                let want = naive(&xs[plane * h * w..(plane + 1) * h * w], h, w, oh, ow);
                for (a, b) in ys[plane * oh * ow..(plane + 1) * oh * ow].iter().zip(&want) {
                    assert!((a - b).abs() < 1e-5, "{h}x{w} -> {oh}x{ow}: {a} vs {b}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn corners_are_kept_and_gradient_flows() -> Result<()> {
        let dev = Device::Cpu;
        let x = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (1, 1, 14, 14), &dev)?)?;
        let y = resize_bilinear_align_corners(x.as_tensor(), 224, 224)?;
        let xv = x.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        let yv = y.flatten_all()?.to_vec1::<f32>()?;
        assert!((xv[0] - yv[0]).abs() < 1e-6);
        assert!((xv[14 * 14 - 1] - yv[224 * 224 - 1]).abs() < 1e-6);
        // Every input pixel contributes to the sum of the upsampled map.
        let grads = y.sum_all()?.backward()?;
        let g = grads.get(x.as_tensor()).expect("gradient of the input");
        let min = g.flatten_all()?.min(0)?.to_scalar::<f32>()?;
        assert!(min > 0.0);
        Ok(())
    }

    #[test]
    fn rejects_empty_sizes() {
        let x = Tensor::zeros((1, 1, 4, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(resize_bilinear_align_corners(&x, 0, 4).is_err());
    }
}
