//! Anomaly maps and image scores (sections 3.6 and 6), on batches, on any device.

use candle_core::{DType, Tensor, D};

use crate::error::{ModelError, Result};

/// Side of the upsampled map per token: 14 tokens x 16 = 224 pixels.
pub const MAP_STRIDE: usize = 16;
/// Side of the average-pool window of the image score (section 6).
pub const SCORE_POOL: usize = 16;

/// Section 3.6: upsample the token-level map `pred` [B, 1, h, w] to `out` = (H, W) with bilinear
/// interpolation, align_corners = True (no smoothing).
pub fn anomaly_map(pred: &Tensor, out: (usize, usize)) -> Result<Tensor> {
    let dims = pred.dims();
    if dims.len() != 4 || dims[1] != 1 {
        return Err(ModelError::Input {
            name: "pred".into(),
            expected: "[B, 1, h, w]".into(),
            found: format!("{dims:?}"),
        });
    }
    Ok(pred.upsample_bilinear2d(out.0, out.1, true)?)
}

/// The maps of a tiled view stitched into one map per image: `tiles` `[B, T, h, w]` holds each
/// tile's token-level map, `origins` the tiles' `(top, left)` and `tile` their side, both in
/// pixels of the `input x input` working image. Each tile map is upsampled (bilinear,
/// align_corners = True, as [`anomaly_map`]) to the tile's footprint in an `out x out` map;
/// where tiles overlap their values are averaged. Returns `[B, out, out]`.
pub fn stitch(
    tiles: &Tensor,
    origins: &[(usize, usize)],
    tile: usize,
    input: usize,
    out: usize,
) -> Result<Tensor> {
    let (b, t, _, _) = tiles.dims4()?;
    if t != origins.len() || t == 0 || tile == 0 || tile > input || out == 0 {
        return Err(ModelError::Input {
            name: "tile maps".into(),
            expected: format!(
                "[B, {}, h, w] maps of tiles of {tile} px inside {input} px",
                origins.len()
            ),
            found: format!("{:?}", tiles.dims()),
        });
    }
    // A working pixel p maps to p * out / input; rounding both ends keeps neighbours seamless.
    let at = |p: usize| ((p * out) as f64 / input as f64).round() as usize;
    let mut sum: Option<Tensor> = None;
    let mut count = vec![0f32; out * out];
    for (i, &(y, x)) in origins.iter().enumerate() {
        let (y0, y1, x0, x1) = (at(y), at(y + tile).min(out), at(x), at(x + tile).min(out));
        if y1 <= y0 || x1 <= x0 {
            continue;
        }
        let placed = tiles
            .narrow(1, i, 1)?
            .upsample_bilinear2d(y1 - y0, x1 - x0, true)?
            .squeeze(1)?
            .pad_with_zeros(1, y0, out - y1)?
            .pad_with_zeros(2, x0, out - x1)?;
        sum = Some(match sum {
            None => placed,
            Some(s) => (s + placed)?,
        });
        for r in y0..y1 {
            count[r * out + x0..r * out + x1]
                .iter_mut()
                .for_each(|c| *c += 1.0);
        }
    }
    let sum = sum.ok_or_else(|| ModelError::Input {
        name: "tile maps".into(),
        expected: "tiles that cover part of the map".into(),
        found: format!("{b} images, {t} tiles of {tile} px in {input} px, map {out} px"),
    })?;
    let inv: Vec<f32> = count.iter().map(|&c| 1.0 / c.max(1.0)).collect();
    let inv = Tensor::from_vec(inv, (1, out, out), tiles.device())?.to_dtype(sum.dtype())?;
    Ok(sum.broadcast_mul(&inv)?)
}

/// Section 6: per image, the maximum of the map after a `kernel` x `kernel` average pool with
/// stride 1 and no padding. `map` [B, 1, H, W] or [B, H, W]; returns [B].
///
/// The pool is separable, so it runs as two matrix products with a banded 1/k matrix
/// (`A map A^T`), which is fast and identical in value on every device.
pub fn image_scores(map: &Tensor, kernel: usize) -> Result<Tensor> {
    let dims = map.dims();
    let map = match dims.len() {
        4 if dims[1] == 1 => map.squeeze(1)?,
        3 => map.clone(),
        _ => {
            return Err(ModelError::Input {
                name: "map".into(),
                expected: "[B, 1, H, W] or [B, H, W]".into(),
                found: format!("{dims:?}"),
            })
        }
    };
    let (b, h, w) = map.dims3()?;
    if kernel == 0 || kernel > h || kernel > w {
        return Err(ModelError::Input {
            name: "kernel".into(),
            expected: format!("1..={}", h.min(w)),
            found: format!("{kernel}"),
        });
    }
    let rows = band(h, kernel, map.device())?; // [h - k + 1, h]
    let cols = band(w, kernel, map.device())?; // [w - k + 1, w]
    let pooled = rows
        .unsqueeze(0)?
        .broadcast_as((b, h - kernel + 1, h))?
        .matmul(&map.contiguous()?)?
        .matmul(
            &cols
                .t()?
                .unsqueeze(0)?
                .broadcast_as((b, w, w - kernel + 1))?,
        )?;
    Ok(pooled.flatten_from(1)?.max(D::Minus1)?)
}

/// Gaussian blur of maps `[B, H, W]` with standard deviation `sigma` pixels (0: unchanged), as
/// PatchCore smooths its maps. The kernel is cut at 4 sigma; at the border each output pixel
/// averages only the pixels inside the map (the weights are renormalised). Separable, so it runs as
/// two matrix products `G_h map G_w^T`.
pub fn gaussian_blur(maps: &Tensor, sigma: f64) -> Result<Tensor> {
    if sigma <= 0.0 {
        return Ok(maps.clone());
    }
    let (b, h, w) = maps.dims3()?;
    let rows = gaussian_matrix(h, sigma, maps.device())?;
    let cols = gaussian_matrix(w, sigma, maps.device())?;
    let x = maps.to_dtype(DType::F32)?.contiguous()?;
    Ok(rows
        .unsqueeze(0)?
        .broadcast_as((b, h, h))?
        .matmul(&x)?
        .matmul(&cols.t()?.unsqueeze(0)?.broadcast_as((b, w, w))?)?)
}

/// [n, n] row-normalised Gaussian weights, cut at 4 sigma.
fn gaussian_matrix(n: usize, sigma: f64, device: &candle_core::Device) -> Result<Tensor> {
    let radius = (4.0 * sigma).ceil() as isize;
    let mut data = vec![0f32; n * n];
    for i in 0..n as isize {
        let lo = (i - radius).max(0);
        let hi = (i + radius).min(n as isize - 1);
        let weights: Vec<f64> = (lo..=hi)
            .map(|j| (-((j - i) as f64).powi(2) / (2.0 * sigma * sigma)).exp())
            .collect();
        let sum: f64 = weights.iter().sum();
        for (j, wgt) in (lo..=hi).zip(weights) {
            data[i as usize * n + j as usize] = (wgt / sum) as f32;
        }
    }
    Ok(Tensor::from_vec(data, (n, n), device)?)
}

/// [n - k + 1, n] matrix with 1/k on each row's window of k consecutive columns.
fn band(n: usize, k: usize, device: &candle_core::Device) -> Result<Tensor> {
    let m = n - k + 1;
    let mut data = vec![0f32; m * n];
    let v = 1.0 / k as f32;
    for i in 0..m {
        data[i * n + i..i * n + i + k].fill(v);
    }
    Ok(Tensor::from_vec(data, (m, n), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn stitched_tiles_land_where_they_were_cut_and_overlaps_average() {
        let dev = Device::Cpu;
        // Two tiles side by side plus one overlapping both: constant maps 1, 3 and 5.
        let maps = Tensor::from_vec(
            [1f32, 3.0, 5.0]
                .iter()
                .flat_map(|&v| std::iter::repeat_n(v, 4))
                .collect::<Vec<_>>(),
            (1, 3, 2, 2),
            &dev,
        )
        .unwrap();
        let out = stitch(&maps, &[(0, 0), (0, 32), (0, 16)], 32, 64, 8).unwrap();
        assert_eq!(out.dims(), [1, 8, 8]);
        let row: Vec<f32> = out.get(0).unwrap().get(0).unwrap().to_vec1().unwrap();
        assert_eq!(row, [1.0, 1.0, 3.0, 3.0, 4.0, 4.0, 3.0, 3.0]);
        // The lower half is covered by no tile: zero.
        let low: Vec<f32> = out.get(0).unwrap().get(7).unwrap().to_vec1().unwrap();
        assert_eq!(low, [0.0; 8]);
        assert!(stitch(&maps, &[(0, 0)], 32, 64, 8).is_err());
    }

    #[test]
    fn image_scores_match_a_direct_average_pool() {
        let dev = Device::Cpu;
        let map = Tensor::rand(0f32, 1f32, (2, 1, 40, 36), &dev).unwrap();
        let fast = image_scores(&map, 16).unwrap().to_vec1::<f32>().unwrap();
        let slow = map
            .avg_pool2d_with_stride(16, 1)
            .unwrap()
            .flatten_from(1)
            .unwrap()
            .max(D::Minus1)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (a, b) in fast.iter().zip(&slow) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn gaussian_blur_keeps_constants_and_spreads_a_spike_symmetrically() {
        let dev = Device::Cpu;
        let flat = Tensor::full(2.0f32, (1, 30, 40), &dev).unwrap();
        let b: Vec<f32> = gaussian_blur(&flat, 3.0)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(b.iter().all(|v| (v - 2.0).abs() < 1e-5));
        let mut spike = vec![0f32; 41 * 41];
        spike[20 * 41 + 20] = 1.0;
        let spike = Tensor::from_vec(spike, (1, 41, 41), &dev).unwrap();
        let out: Vec<Vec<f32>> = gaussian_blur(&spike, 2.0)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2()
            .unwrap();
        let total: f32 = out.iter().flatten().sum();
        assert!((total - 1.0).abs() < 1e-4, "{total}");
        // Separable Gaussian: value ratio one pixel off the centre is exp(-1 / (2 sigma^2)).
        let ratio = out[20][21] / out[20][20];
        assert!((ratio - (-1.0f32 / 8.0).exp()).abs() < 1e-4, "{ratio}");
        assert_eq!(out[19][20], out[21][20]);
        assert!(
            gaussian_blur(&spike, 0.0)
                .unwrap()
                .to_vec3::<f32>()
                .unwrap()[0][20][20]
                == 1.0
        );
    }

    #[test]
    fn constant_map_scores_its_value_and_upsamples_flat() {
        let dev = Device::Cpu;
        let pred = Tensor::full(0.25f32, (3, 1, 14, 14), &dev).unwrap();
        let map = anomaly_map(&pred, (224, 224)).unwrap();
        assert_eq!(map.dims(), &[3, 1, 224, 224]);
        let s = image_scores(&map, SCORE_POOL)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(s.iter().all(|v| (v - 0.25).abs() < 1e-6), "{s:?}");
        assert!(image_scores(&map, 300).is_err());
    }
}
