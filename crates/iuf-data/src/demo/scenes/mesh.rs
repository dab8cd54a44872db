//! The perforated plate: a regular grid of holes in rolled metal; its missing part is a broken
//! bridge merging two holes.
use rand::rngs::StdRng;
use rand::Rng;

use super::defects::{part_crack, scratch_or_stain, DefectKind};
use super::layers::{jitter, mask_of, mix};
use crate::demo::paint::{coverage, floor, grain, Noise, Rgb, Stroke};

pub(super) struct Mesh {
    size: usize,
    plate: Vec<Rgb>,
    hole_color: Vec<Rgb>,
    holes: Vec<f32>,
    pitch: f32,
    radius: f32,
    /// Hole centres in pixels.
    centres: Vec<(f32, f32)>,
}

impl Mesh {
    pub(super) fn draw(rng: &mut StdRng, size: usize) -> Self {
        let s = size as f32;
        let plate_c = jitter(rng, [150.0, 154.0, 160.0], 0.05, 3.0);
        let pitch = s / 9.0 * rng.gen_range(0.97..1.03);
        let radius = pitch * 0.27 * rng.gen_range(0.97..1.03);
        let rot = rng.gen_range(-0.025..0.025f32);
        let (ox, oy) = (rng.gen_range(0.0..pitch), rng.gen_range(0.0..pitch));
        let brush = Noise::new(rng, 96);
        let low = Noise::new(rng, 4);
        let salt: u32 = rng.gen();
        let (cr, sr) = (rot.cos(), rot.sin());
        // Pixel -> plate coordinates: rotate about the image centre, then shift by the phase.
        let to_plate = |x: f32, y: f32| {
            let (dx, dy) = (x - s / 2.0, y - s / 2.0);
            (dx * cr + dy * sr + ox, -dx * sr + dy * cr + oy)
        };
        let to_pixel = |u: f32, v: f32| {
            let (du, dv) = (u - ox, v - oy);
            (du * cr - dv * sr + s / 2.0, du * sr + dv * cr + s / 2.0)
        };
        let n = size * size;
        let (mut plate, mut hole_color, mut holes) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for (px, py) in (0..size).flat_map(|py| (0..size).map(move |px| (px, py))) {
            let (x, y) = (px as f32 + 0.5, py as f32 + 0.5);
            let (u, v) = to_plate(x, y);
            let (cu, cv) = (
                floor(u / pitch + 0.5) * pitch,
                floor(v / pitch + 0.5) * pitch,
            );
            let (du, dv) = (u - cu, v - cv);
            let d = (du * du + dv * dv).sqrt();
            holes.push(coverage(radius - d));
            let g = grain(px, py, salt);
            // Rolled plate: fine horizontal streaks, slow illumination change.
            let shade = 1.0 + 0.05 * brush.at(x / s * 3.0, y / s * 96.0) + 0.04 * low.at_pixel(x, y, s, 4.0, 4.0) + 0.02 * g
                // Bevel: the lower-right rim of each hole catches light.
                + if d - radius < 10.0 && du + dv > 0.0 { 0.10 * (-(d - radius).max(0.0) / 1.5).exp() } else { 0.0 };
            plate.push(plate_c.map(|c| c * shade));
            let depth =
                0.7 + 0.3 * (d / radius).min(1.0) * ((dv - du) / radius.max(1e-3)).clamp(-1.0, 1.0);
            hole_color.push([
                22.0 * depth + 3.0 * g,
                24.0 * depth + 3.0 * g,
                28.0 * depth + 3.0 * g,
            ]);
        }
        let mut centres = Vec::new();
        let reach = (s / pitch).ceil() as i64 + 2;
        for j in -reach..=reach {
            for i in -reach..=reach {
                let c = to_pixel(i as f32 * pitch, j as f32 * pitch);
                if c.0 > 0.12 * s && c.0 < 0.88 * s && c.1 > 0.12 * s && c.1 < 0.88 * s {
                    centres.push(c);
                }
            }
        }
        centres.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        Mesh {
            size,
            plate,
            hole_color,
            holes,
            pitch,
            radius,
            centres,
        }
    }

    fn compose(&self, holes: &[f32]) -> Vec<Rgb> {
        mix(&self.plate, &self.hole_color, holes)
    }

    /// Where the plate is (1 - the holes' coverage).
    fn plate_cover(&self) -> Vec<f32> {
        self.holes.iter().map(|h| 1.0 - h).collect()
    }

    /// A hole centre and the centre of one of its four neighbours.
    fn hole_pair(&self, rng: &mut StdRng) -> ((f32, f32), (f32, f32)) {
        // Callers check that `centres` is not empty.
        let a = self.centres[rng.gen_range(0..self.centres.len())];
        let b = self
            .centres
            .iter()
            .copied()
            .filter(|c| {
                let d = ((c.0 - a.0).powi(2) + (c.1 - a.1).powi(2)).sqrt();
                d > 0.5 * self.pitch && d < 1.5 * self.pitch
            })
            .collect::<Vec<_>>();
        let b = if b.is_empty() {
            (a.0 + self.pitch, a.1)
        } else {
            b[rng.gen_range(0..b.len())]
        };
        (a, b)
    }

    /// The image without defects.
    pub(super) fn clean(&self) -> Vec<Rgb> {
        self.compose(&self.holes)
    }

    pub(super) fn defect(&self, rng: &mut StdRng, kind: DefectKind) -> (Vec<Rgb>, Vec<bool>) {
        let s = self.size as f32;
        if self.centres.is_empty() {
            return (
                self.compose(&self.holes),
                vec![false; self.size * self.size],
            );
        }
        match kind {
            DefectKind::MissingPart => {
                // The bridge between two holes broke away: they merge into one opening.
                let (a, b) = self.hole_pair(rng);
                let mut gap = vec![0f32; self.size * self.size];
                Stroke::curve(
                    a,
                    b,
                    rng.gen_range(-0.1..0.1) * self.pitch,
                    self.radius * rng.gen_range(0.5..0.8),
                )
                .paint(&mut gap, self.size);
                let holes: Vec<f32> = self
                    .holes
                    .iter()
                    .zip(&gap)
                    .map(|(h, g)| h.max(*g))
                    .collect();
                let added: Vec<f32> = holes.iter().zip(&self.holes).map(|(a, b)| a - b).collect();
                (self.compose(&holes), mask_of(&added))
            }
            DefectKind::Crack => {
                // Cracks run from a hole's rim towards a neighbouring hole.
                let (a, b) = self.hole_pair(rng);
                let heading = (b.1 - a.1).atan2(b.0 - a.0) + rng.gen_range(-0.35..0.35);
                let start = (
                    a.0 + self.radius * heading.cos(),
                    a.1 + self.radius * heading.sin(),
                );
                let len = self.pitch * rng.gen_range(0.35..0.8);
                let color = self.compose(&self.holes);
                part_crack(
                    rng,
                    self.size,
                    color,
                    &self.plate_cover(),
                    (start, heading, len),
                    25.0,
                )
            }
            DefectKind::Scratch | DefectKind::Stain => {
                let at = (rng.gen_range(0.12..0.88) * s, rng.gen_range(0.12..0.88) * s);
                let color = self.compose(&self.holes);
                scratch_or_stain(rng, self.size, kind, color, &self.plate_cover(), at)
            }
        }
    }
}
