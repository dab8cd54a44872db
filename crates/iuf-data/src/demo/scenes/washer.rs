//! The metal washer: a brushed ring with an orientation notch on a dark background, placed with
//! position and rotation jitter; its missing part is a bite out of the rim.
use std::f32::consts::{PI, TAU};

use rand::rngs::StdRng;
use rand::Rng;

use super::defects::{part_crack, scratch_or_stain, DefectKind};
use super::layers::{jitter, mask_of, mix};
use crate::demo::paint::{atan2_approx, coverage, grain, Blob, Noise, Rgb};

pub(super) struct Washer {
    size: usize,
    background: Vec<Rgb>,
    metal: Vec<Rgb>,
    cover: Vec<f32>,
    cx: f32,
    cy: f32,
    outer: f32,
    inner: f32,
    rotation: f32,
}

impl Washer {
    pub(super) fn draw(rng: &mut StdRng, size: usize) -> Self {
        let s = size as f32;
        let cx = s * (0.5 + rng.gen_range(-0.03..0.03));
        let cy = s * (0.5 + rng.gen_range(-0.03..0.03));
        let rotation = rng.gen_range(-0.21..0.21f32);
        let outer = 0.32 * s * rng.gen_range(0.985..1.015);
        let inner = 0.13 * s * rng.gen_range(0.985..1.015);
        let (notch_depth, notch_half) = (0.045 * s, 0.025 * s);
        let mark_r = 0.02 * s;
        let mark_at = rotation + 2.1;
        let mark = (
            (outer + inner) / 2.0 * mark_at.cos() + cx,
            (outer + inner) / 2.0 * mark_at.sin() + cy,
        );
        let bg = jitter(rng, [48.0, 52.0, 60.0], 0.06, 3.0);
        let metal_c = jitter(rng, [172.0, 175.0, 182.0], 0.04, 3.0);
        let light = -2.3 + rng.gen_range(-0.15..0.15f32);
        let (shx, shy) = (0.012 * s, 0.015 * s);
        let low = Noise::new(rng, 4);
        let brush = Noise::new(rng, 96);
        let salt: u32 = rng.gen();
        let (cr, sr) = (rotation.cos(), rotation.sin());
        let light_dir = (light.cos(), light.sin());
        let n = size * size;
        let (mut background, mut metal, mut cover) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for (px, py) in (0..size).flat_map(|py| (0..size).map(move |px| (px, py))) {
            let (x, y) = (px as f32 + 0.5, py as f32 + 0.5);
            let g = grain(px, py, salt);
            // Background with a soft drop shadow of the washer.
            let (sx, sy) = (x - cx - shx, y - cy - shy);
            let shadow = ((outer + 3.0 - (sx * sx + sy * sy).sqrt()) / 6.0).clamp(0.0, 1.0);
            let b =
                (1.0 + 0.06 * low.at_pixel(x, y, s, 4.0, 4.0) + 0.02 * g) * (1.0 - 0.35 * shadow);
            background.push(bg.map(|c| c * b));
            // The ring, minus the orientation notch cut into its outer edge.
            let (dx, dy) = (x - cx, y - cy);
            let d = (dx * dx + dy * dy).sqrt();
            let ring = coverage(outer - d) * coverage(d - inner);
            let (lx, ly) = (dx * cr + dy * sr, -dx * sr + dy * cr);
            let notch = coverage(lx - (outer - notch_depth)) * coverage(notch_half - ly.abs());
            cover.push(ring * (1.0 - notch));
            if ring <= 0.0 {
                // Never visible, whatever a defect removes.
                metal.push([0.0; 3]);
                continue;
            }
            // Brushed metal: circular brushing, directional light, bevel highlights at the edges.
            let phi = atan2_approx(dy, dx);
            let facing = (dx * light_dir.0 + dy * light_dir.1) / d.max(1e-3);
            let bevel = |dist: f32| {
                if dist < 12.0 {
                    (-dist.max(0.0) / 2.0).exp()
                } else {
                    0.0
                }
            };
            let mut shade = 1.0
                + 0.12 * facing
                + 0.05 * brush.at((phi + PI) / TAU * 96.0, d / s * 8.0)
                + 0.12 * bevel(outer - d)
                - 0.18 * bevel(d - inner)
                + 0.02 * g;
            let (mx, my) = (x - mark.0, y - mark.1);
            let on_mark = coverage(mark_r - (mx * mx + my * my).sqrt());
            shade *= 1.0 - 0.55 * on_mark;
            metal.push(metal_c.map(|c| c * shade));
        }
        Washer {
            size,
            background,
            metal,
            cover,
            cx,
            cy,
            outer,
            inner,
            rotation,
        }
    }

    fn compose(&self, cover: &[f32]) -> Vec<Rgb> {
        mix(&self.background, &self.metal, cover)
    }

    /// A point on the ring (between the edges, `margin` in [0, 1] away from them), away from the notch.
    fn point_on_ring(&self, rng: &mut StdRng, margin: f32) -> (f32, f32) {
        let a = self.rotation + rng.gen_range(0.5..TAU - 0.5);
        let w = self.outer - self.inner;
        let r = rng.gen_range(self.inner + margin * w..self.outer - margin * w);
        (self.cx + r * a.cos(), self.cy + r * a.sin())
    }

    /// The image without defects.
    pub(super) fn clean(&self) -> Vec<Rgb> {
        self.compose(&self.cover)
    }

    pub(super) fn defect(&self, rng: &mut StdRng, kind: DefectKind) -> (Vec<Rgb>, Vec<bool>) {
        let s = self.size as f32;
        match kind {
            DefectKind::MissingPart => {
                // A bite out of the rim: metal removed, background visible.
                let a = self.rotation + rng.gen_range(0.5..TAU - 0.5);
                let br = rng.gen_range(0.035..0.07) * s;
                let r = self.outer + rng.gen_range(-0.3..0.3) * br;
                let mut bite = vec![0f32; self.size * self.size];
                Blob::random(rng, self.cx + r * a.cos(), self.cy + r * a.sin(), br, 0.2)
                    .paint(&mut bite, self.size);
                let cover: Vec<f32> = self
                    .cover
                    .iter()
                    .zip(&bite)
                    .map(|(c, b)| c * (1.0 - b))
                    .collect();
                let removed: Vec<f32> = self.cover.iter().zip(&cover).map(|(a, b)| a - b).collect();
                (self.compose(&cover), mask_of(&removed))
            }
            DefectKind::Crack => {
                // Cracks start at an edge and run roughly radially.
                let a = self.rotation + rng.gen_range(0.5..TAU - 0.5);
                let from_outer = rng.gen_bool(0.6);
                let r = if from_outer {
                    self.outer - 1.0
                } else {
                    self.inner + 1.0
                };
                let start = (self.cx + r * a.cos(), self.cy + r * a.sin());
                let heading = if from_outer { a + PI } else { a } + rng.gen_range(-0.4..0.4);
                let len = rng.gen_range(0.05..0.11) * s;
                let color = self.compose(&self.cover);
                part_crack(
                    rng,
                    self.size,
                    color,
                    &self.cover,
                    (start, heading, len),
                    30.0,
                )
            }
            DefectKind::Scratch | DefectKind::Stain => {
                let at = self.point_on_ring(rng, 0.25);
                let color = self.compose(&self.cover);
                scratch_or_stain(rng, self.size, kind, color, &self.cover, at)
            }
        }
    }
}
