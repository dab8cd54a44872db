//! The anomaly map at another size: the image's own (the bindings' answer, the heatmap picture).

/// Bilinear resize of a row-major `w x h` float map to `ow x oh` (pixel centres aligned, as
/// `align_corners=False`).
pub fn resize_map(map: &[f32], w: usize, h: usize, ow: usize, oh: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(ow * oh);
    let coord = |o: usize, n_in: usize, n_out: usize| -> (usize, usize, f32) {
        let x = ((o as f32 + 0.5) * n_in as f32 / n_out as f32 - 0.5).clamp(0.0, (n_in - 1) as f32);
        let x0 = x.floor() as usize;
        let x1 = (x0 + 1).min(n_in - 1);
        (x0, x1, x - x0 as f32)
    };
    let xs: Vec<(usize, usize, f32)> = (0..ow).map(|x| coord(x, w, ow)).collect();
    for y in 0..oh {
        let (y0, y1, ty) = coord(y, h, oh);
        for &(x0, x1, tx) in &xs {
            let top = map[y0 * w + x0] * (1.0 - tx) + map[y0 * w + x1] * tx;
            let bottom = map[y1 * w + x0] * (1.0 - tx) + map[y1 * w + x1] * tx;
            out.push(top * (1.0 - ty) + bottom * ty);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_keeps_constant_maps_and_corners() {
        let m = resize_map(&[1.0; 4], 2, 2, 5, 3);
        assert!(m.iter().all(|&v| (v - 1.0).abs() < 1e-6));
        let g = resize_map(&[0.0, 1.0, 0.0, 1.0], 2, 2, 4, 1);
        assert_eq!(g[0], 0.0);
        assert_eq!(g[3], 1.0);
        assert!(g[1] > 0.0 && g[1] < g[2]);
    }
}
