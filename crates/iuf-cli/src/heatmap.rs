//! Heatmap pictures: an anomaly map in a jet-like colour map blended over the image, the ground-truth
//! outline drawn on top, and panels of several images for reports.

use image::{Rgb, RgbImage};
use iuf_inspect::resize_map;

/// Longest side of a written heatmap, unless the map itself is finer (a tiled view's map):
/// larger images are shrunk to it.
pub const MAX_SIDE: u32 = 512;

/// How map values become colours.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MapScale {
    /// Relative to the object's decision threshold: 0 is blue, the threshold green, twice the
    /// threshold and above red. Comparable across images of one object.
    Threshold(f32),
    /// Relative to the image's own largest value (when no threshold is known).
    ImageMax,
}

/// The jet colour map at `t` in [0, 1]: blue, cyan, green, yellow, red.
pub fn jet(t: f32) -> [u8; 3] {
    let t = t.clamp(0.0, 1.0);
    // `+ 0.5` then truncation rounds these non-negative values without a libm call per pixel.
    let channel =
        |centre: f32| ((1.5 - (4.0 * t - centre).abs()).clamp(0.0, 1.0) * 255.0 + 0.5) as u8;
    [channel(3.0), channel(2.0), channel(1.0)]
}

/// Output size for an image of `w x h` whose map's long side is `map_side`: the image's own
/// size, at most [`MAX_SIDE`] or the map's side (whichever is larger) on the long side, aspect
/// kept.
pub fn output_size(w: u32, h: u32, map_side: usize) -> (u32, u32) {
    let cap = MAX_SIDE.max(map_side as u32);
    let long = w.max(h);
    if long <= cap {
        return (w.max(1), h.max(1));
    }
    let s = cap as f64 / long as f64;
    (
        ((w as f64 * s).round() as u32).max(1),
        ((h as f64 * s).round() as u32).max(1),
    )
}

/// Nearest-neighbour resize of a row-major binary mask.
pub fn resize_mask(mask: &[bool], w: usize, h: usize, ow: usize, oh: usize) -> Vec<bool> {
    let mut out = Vec::with_capacity(ow * oh);
    for y in 0..oh {
        let sy = (y * h / oh).min(h - 1);
        for x in 0..ow {
            let sx = (x * w / ow).min(w - 1);
            out.push(mask[sy * w + sx]);
        }
    }
    out
}

/// Pixels of `mask` on its boundary (a 4-neighbour outside the mask or the image edge), thickened
/// to `thickness` pixels so the outline stays visible when the picture is shrunk.
pub fn outline(mask: &[bool], w: usize, h: usize, thickness: usize) -> Vec<bool> {
    let inside = |x: isize, y: isize| -> bool {
        x >= 0
            && y >= 0
            && (x as usize) < w
            && (y as usize) < h
            && mask[y as usize * w + x as usize]
    };
    let mut edge = vec![false; w * h];
    for y in 0..h as isize {
        for x in 0..w as isize {
            if inside(x, y)
                && (!inside(x - 1, y)
                    || !inside(x + 1, y)
                    || !inside(x, y - 1)
                    || !inside(x, y + 1))
            {
                edge[y as usize * w + x as usize] = true;
            }
        }
    }
    for _ in 1..thickness {
        let prev = edge.clone();
        for y in 0..h {
            for x in 0..w {
                if prev[y * w + x] {
                    continue;
                }
                let near = (x > 0 && prev[y * w + x - 1])
                    || (x + 1 < w && prev[y * w + x + 1])
                    || (y > 0 && prev[(y - 1) * w + x])
                    || (y + 1 < h && prev[(y + 1) * w + x]);
                // Grow inwards only, so the outline never covers the defect's surroundings.
                if near && mask[y * w + x] {
                    edge[y * w + x] = true;
                }
            }
        }
    }
    edge
}

/// The heatmap picture: `map` (row-major `map_w x map_h`) coloured with `scale`, blended over `img`
/// (more opaque where the map is higher), with the outline of `mask` (row-major at the image's
/// size) in white.
pub fn overlay(
    img: &RgbImage,
    map: &[f32],
    map_w: usize,
    map_h: usize,
    scale: MapScale,
    mask: Option<&[bool]>,
) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let resized = resize_map(map, map_w, map_h, w, h);
    let norm = match scale {
        MapScale::Threshold(t) if t > 0.0 && t.is_finite() => 2.0 * t,
        _ => resized
            .iter()
            .copied()
            .fold(0.0f32, f32::max)
            .max(f32::MIN_POSITIVE),
    };
    let edge = mask.map(|m| outline(m, w, h, 2.max(w / 160)));
    let mut out = RgbImage::new(w as u32, h as u32);
    for (i, (x, y, px)) in out.enumerate_pixels_mut().enumerate() {
        if edge.as_ref().is_some_and(|e| e[i]) {
            *px = Rgb([255, 255, 255]);
            continue;
        }
        let t = (resized[i] / norm).clamp(0.0, 1.0);
        let c = jet(t);
        let alpha = 0.35 + 0.4 * t;
        let base = img.get_pixel(x, y).0;
        *px = Rgb(std::array::from_fn(|k| {
            (base[k] as f32 * (1.0 - alpha) + c[k] as f32 * alpha + 0.5) as u8
        }));
    }
    out
}

/// A panel: the originals in the top row, their heatmaps below, every tile `tile x tile`, on a dark
/// background with small gaps.
pub fn panel(pairs: &[(RgbImage, RgbImage)], tile: u32) -> RgbImage {
    const GAP: u32 = 4;
    let n = pairs.len().max(1) as u32;
    let w = n * tile + (n + 1) * GAP;
    let h = 2 * tile + 3 * GAP;
    let mut out = RgbImage::from_pixel(w, h, Rgb([32, 32, 32]));
    for (i, (orig, heat)) in pairs.iter().enumerate() {
        let x = GAP + i as u32 * (tile + GAP);
        for (row, pic) in [orig, heat].into_iter().enumerate() {
            let small = iuf_data::image::resize_bilinear_rgb(pic, tile, tile);
            let y = GAP + row as u32 * (tile + GAP);
            image::imageops::replace(&mut out, &small, x as i64, y as i64);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jet_runs_blue_to_red() {
        assert_eq!(jet(0.0), [0, 0, 128]);
        assert_eq!(jet(0.5), [128, 255, 128]);
        assert_eq!(jet(1.0), [128, 0, 0]);
        assert_eq!(jet(2.0), jet(1.0));
    }

    #[test]
    fn sizes_are_capped_with_aspect() {
        assert_eq!(output_size(256, 256, 224), (256, 256));
        assert_eq!(output_size(1024, 512, 224), (512, 256));
        // A tiled view's finer map is drawn at its own resolution.
        assert_eq!(output_size(2048, 2048, 896), (896, 896));
    }

    #[test]
    fn outline_is_the_boundary_of_the_mask() {
        // A 3x3 square inside a 5x5 image: its 8 border pixels, not the centre.
        let mut mask = vec![false; 25];
        for y in 1..4 {
            for x in 1..4 {
                mask[y * 5 + x] = true;
            }
        }
        let e = outline(&mask, 5, 5, 1);
        assert_eq!(e.iter().filter(|&&b| b).count(), 8);
        assert!(!e[12]);
        assert!(outline(&mask, 5, 5, 2)[12]);
    }

    #[test]
    fn overlay_marks_the_outline_and_heats_high_values() {
        let img = RgbImage::from_pixel(8, 8, Rgb([100, 100, 100]));
        let mut map = vec![0.0f32; 64];
        map[0] = 10.0;
        let mut mask = vec![false; 64];
        mask[63] = true;
        let out = overlay(&img, &map, 8, 8, MapScale::Threshold(1.0), Some(&mask));
        assert_eq!(out.get_pixel(7, 7).0, [255, 255, 255]);
        let hot = out.get_pixel(0, 0).0;
        let cold = out.get_pixel(4, 4).0;
        assert!(hot[0] > hot[2], "{hot:?}");
        assert!(cold[2] > cold[0], "{cold:?}");
        let p = panel(&[(img.clone(), out)], 16);
        assert_eq!(p.dimensions(), (16 + 8, 2 * 16 + 12));
    }
}
