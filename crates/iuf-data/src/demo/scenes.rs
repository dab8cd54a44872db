//! The demo classes: a woven fabric (textured surface), a metal washer on a dark background (object
//! with position/rotation jitter) and a perforated plate (regular pattern), each with four defect
//! kinds whose masks are the pixels the defect covers by at least half.
use std::f32::consts::{PI, TAU};

use rand::rngs::StdRng;
use rand::Rng;

use super::paint::{
    atan2_approx, blend, coverage, floor, grain, Blob, Noise, Rgb, SinTable, Stroke,
};

/// The defect kinds, one test folder each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DefectKind {
    Crack,
    MissingPart,
    Scratch,
    Stain,
}

impl DefectKind {
    pub const ALL: [DefectKind; 4] = [
        DefectKind::Crack,
        DefectKind::MissingPart,
        DefectKind::Scratch,
        DefectKind::Stain,
    ];

    pub fn folder(self) -> &'static str {
        match self {
            DefectKind::Crack => "crack",
            DefectKind::MissingPart => "missing_part",
            DefectKind::Scratch => "scratch",
            DefectKind::Stain => "stain",
        }
    }
}

/// The visually different demo classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scene {
    Fabric,
    Mesh,
    Washer,
}

impl Scene {
    /// Alphabetical, as `DatasetRoot` lists them.
    pub const ALL: [Scene; 3] = [Scene::Fabric, Scene::Mesh, Scene::Washer];

    pub fn name(self) -> &'static str {
        match self {
            Scene::Fabric => "fabric",
            Scene::Mesh => "mesh",
            Scene::Washer => "washer",
        }
    }
}

pub(crate) struct Rendered {
    pub color: Vec<Rgb>,
    /// Defect pixels, row-major; `None` for normal images.
    pub mask: Option<Vec<bool>>,
}

/// A defect must cover at least this many pixels (at 256x256) to count; otherwise it is redrawn.
const MIN_DEFECT_PIXELS: f32 = 24.0;

pub(crate) fn render(
    scene: Scene,
    rng: &mut StdRng,
    size: usize,
    defect: Option<DefectKind>,
) -> Rendered {
    let base = match scene {
        Scene::Fabric => Fabric::draw(rng, size),
        Scene::Mesh => Mesh::draw(rng, size),
        Scene::Washer => Washer::draw(rng, size),
    };
    let Some(kind) = defect else {
        return Rendered {
            color: base.clean(),
            mask: None,
        };
    };
    let min_pixels = (MIN_DEFECT_PIXELS * (size * size) as f32 / 65536.0).max(4.0) as usize;
    // Redraw a defect that landed (almost) nowhere visible; the RNG stream keeps it deterministic.
    let mut last = None;
    for _ in 0..16 {
        let drawn = base.defect(rng, kind);
        let count = drawn.1.iter().filter(|&&m| m).count();
        if count >= min_pixels {
            return Rendered {
                color: drawn.0,
                mask: Some(drawn.1),
            };
        }
        last = Some(drawn);
    }
    let (color, mask) = last.unwrap_or_else(|| (base.clean(), vec![false; size * size]));
    Rendered {
        color,
        mask: Some(mask),
    }
}

fn jitter(rng: &mut StdRng, c: Rgb, brightness: f32, tint: f32) -> Rgb {
    let b: f32 = rng.gen_range(1.0 - brightness..1.0 + brightness);
    std::array::from_fn(|i| c[i] * b + rng.gen_range(-tint..tint))
}

/// Two layers mixed per pixel by `cover`: `under` where it is 0, `over` where it is 1.
fn mix(under: &[Rgb], over: &[Rgb], cover: &[f32]) -> Vec<Rgb> {
    under
        .iter()
        .zip(over)
        .zip(cover)
        .map(|((u, o), &a)| std::array::from_fn(|c| u[c] * (1.0 - a) + o[c] * a))
        .collect()
}

fn mask_of(cov: &[f32]) -> Vec<bool> {
    cov.iter().map(|&c| c >= 0.5).collect()
}

/// Per-class scene state: the defect-free layers, and how each defect kind alters them.
enum Base {
    Fabric(Fabric),
    Mesh(Mesh),
    Washer(Washer),
}

impl Base {
    fn clean(&self) -> Vec<Rgb> {
        match self {
            Base::Fabric(f) => f.color.clone(),
            Base::Mesh(m) => m.compose(&m.holes),
            Base::Washer(w) => w.compose(&w.cover),
        }
    }

    fn defect(&self, rng: &mut StdRng, kind: DefectKind) -> (Vec<Rgb>, Vec<bool>) {
        match self {
            Base::Fabric(f) => f.defect(rng, kind),
            Base::Mesh(m) => m.defect(rng, kind),
            Base::Washer(w) => w.defect(rng, kind),
        }
    }
}

/// Defects painted on top of a surface, drawn the same way on every class.
#[derive(Clone, Copy)]
enum Surface {
    Crack,
    Scratch,
    Stain,
}

impl Surface {
    fn of(kind: DefectKind) -> Option<Surface> {
        match kind {
            DefectKind::Crack => Some(Surface::Crack),
            DefectKind::Scratch => Some(Surface::Scratch),
            DefectKind::Stain => Some(Surface::Stain),
            DefectKind::MissingPart => None,
        }
    }
}

/// Paints a surface defect at `at`; `region` limits where the surface is (1 = surface). Returns the
/// defect's effective coverage.
fn surface_defect(
    rng: &mut StdRng,
    size: usize,
    color: &mut [Rgb],
    region: Option<&[f32]>,
    kind: Surface,
    at: (f32, f32),
) -> Vec<f32> {
    let s = size as f32;
    let mut cov = vec![0f32; size * size];
    let (amount, target): (f32, Box<dyn Fn(Rgb) -> Rgb>) = match kind {
        Surface::Stain => {
            let r = rng.gen_range(0.025..0.06) * s;
            Blob::random(rng, at.0, at.1, r, 0.3).paint(&mut cov, size);
            let tint: Rgb = [
                rng.gen_range(90.0..150.0),
                rng.gen_range(60.0..95.0),
                rng.gen_range(35.0..60.0),
            ];
            (rng.gen_range(0.3..0.6), Box::new(move |_| tint))
        }
        Surface::Scratch => {
            let len = rng.gen_range(0.1..0.3) * s;
            let a = rng.gen_range(0.0..TAU);
            let end = (at.0 + a.cos() * len, at.1 + a.sin() * len);
            let bow = rng.gen_range(-0.2..0.2) * len;
            Stroke::curve(at, end, bow, rng.gen_range(0.6..1.3)).paint(&mut cov, size);
            let lift = rng.gen_range(0.3..0.5);
            (
                lift,
                Box::new(|c: Rgb| c.map(|v| (v * 1.5 + 60.0).min(255.0))),
            )
        }
        Surface::Crack => {
            let len = rng.gen_range(0.07..0.18) * s;
            let a = rng.gen_range(0.0..TAU);
            let half_width = rng.gen_range(0.7..1.3);
            let main = Stroke::jagged(rng, at, a, len, half_width);
            main.paint(&mut cov, size);
            // A short side branch, as real cracks fork.
            if rng.gen_bool(0.5) {
                let from = main.points[main.points.len() / 2];
                let side = a + rng.gen_range(0.5..1.1) * if rng.gen_bool(0.5) { 1.0 } else { -1.0 };
                Stroke::jagged(rng, from, side, len * 0.35, 0.7).paint(&mut cov, size);
            }
            let dark: Rgb = [
                rng.gen_range(25.0..50.0),
                rng.gen_range(25.0..45.0),
                rng.gen_range(25.0..45.0),
            ];
            (rng.gen_range(0.7..0.9), Box::new(move |_| dark))
        }
    };
    if let Some(region) = region {
        for (c, r) in cov.iter_mut().zip(region) {
            *c *= r;
        }
    }
    blend(color, &cov, amount, target);
    cov
}

/// A crack across a part of a `size x size` image: a jagged stroke `(start, heading, len)` kept
/// where the part is (`region`, 1 = part), darkened over `color` with a grey drawn from `dark..dark + 20` (blue 5 more).
fn part_crack(
    rng: &mut StdRng,
    size: usize,
    mut color: Vec<Rgb>,
    region: &[f32],
    (start, heading, len): ((f32, f32), f32, f32),
    dark: f32,
) -> (Vec<Rgb>, Vec<bool>) {
    let mut cov = vec![0f32; size * size];
    let half_width = rng.gen_range(0.7..1.2);
    Stroke::jagged(rng, start, heading, len, half_width).paint(&mut cov, size);
    for (c, r) in cov.iter_mut().zip(region) {
        *c *= r;
    }
    let dark: Rgb = [
        rng.gen_range(dark..dark + 20.0),
        rng.gen_range(dark..dark + 20.0),
        rng.gen_range(dark + 5.0..dark + 25.0),
    ];
    blend(&mut color, &cov, rng.gen_range(0.75..0.9), |_| dark);
    (color, mask_of(&cov))
}

/// A scratch or a stain (`kind`) at `at` on a part (`region`, 1 = part) over `color`.
fn scratch_or_stain(
    rng: &mut StdRng,
    size: usize,
    kind: DefectKind,
    mut color: Vec<Rgb>,
    region: &[f32],
    at: (f32, f32),
) -> (Vec<Rgb>, Vec<bool>) {
    let surface = if kind == DefectKind::Stain {
        Surface::Stain
    } else {
        Surface::Scratch
    };
    let cov = surface_defect(rng, size, &mut color, Some(region), surface, at);
    (color, mask_of(&cov))
}

struct Fabric {
    size: usize,
    color: Vec<Rgb>,
}

impl Fabric {
    fn draw(rng: &mut StdRng, size: usize) -> Base {
        let s = size as f32;
        let base = jitter(rng, [196.0, 176.0, 146.0], 0.05, 4.0);
        let angle = rng.gen_range(-0.05..0.05f32);
        let period = s / 28.0 * rng.gen_range(0.96..1.04);
        let (phx, phy) = (rng.gen_range(0.0..period), rng.gen_range(0.0..period));
        let low = Noise::new(rng, 8);
        let fibre = Noise::new(rng, 128);
        let salt: u32 = rng.gen();
        let (ca, sa) = (angle.cos(), angle.sin());
        let k = TAU / period;
        let trig = SinTable::get();
        let color = (0..size)
            .flat_map(|py| (0..size).map(move |px| (px, py)))
            .map(|(px, py)| {
                let (x, y) = (px as f32 + 0.5, py as f32 + 0.5);
                let u = x * ca + y * sa + phx;
                let v = -x * sa + y * ca + phy;
                let weave = trig.sin(u * k) * trig.sin(v * k);
                // Over-under: alternate cells show the warp or the weft thread on top.
                let top = (floor(u / period) + floor(v / period)) as i64 & 1 == 0;
                let thread = if top {
                    trig.cos(u * k * 2.0)
                } else {
                    trig.cos(v * k * 2.0)
                };
                let fibres = if top {
                    fibre.at(u / s * 6.0, v / s * 128.0)
                } else {
                    fibre.at(u / s * 128.0, v / s * 6.0)
                };
                let shade = 1.0
                    + 0.10 * weave
                    + 0.04 * thread
                    + 0.05 * low.at_pixel(x, y, s, 8.0, 8.0)
                    + 0.04 * fibres
                    + 0.025 * grain(px, py, salt);
                base.map(|c| c * shade)
            })
            .collect();
        Base::Fabric(Fabric { size, color })
    }

    fn defect(&self, rng: &mut StdRng, kind: DefectKind) -> (Vec<Rgb>, Vec<bool>) {
        let s = self.size as f32;
        let at = (rng.gen_range(0.15..0.85) * s, rng.gen_range(0.15..0.85) * s);
        let mut color = self.color.clone();
        let cov = if let Some(surface) = Surface::of(kind) {
            surface_defect(rng, self.size, &mut color, None, surface, at)
        } else {
            // A hole in the cloth: the dark backing shows through a frayed outline.
            let mut cov = vec![0f32; self.size * self.size];
            let r = rng.gen_range(0.018..0.04) * s;
            Blob::random(rng, at.0, at.1, r, 0.35).paint(&mut cov, self.size);
            let backing: Rgb = [
                rng.gen_range(30.0..55.0),
                rng.gen_range(28.0..48.0),
                rng.gen_range(25.0..40.0),
            ];
            blend(&mut color, &cov, 0.95, |_| backing);
            cov
        };
        (color, mask_of(&cov))
    }
}

struct Washer {
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
    fn draw(rng: &mut StdRng, size: usize) -> Base {
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
        Base::Washer(Washer {
            size,
            background,
            metal,
            cover,
            cx,
            cy,
            outer,
            inner,
            rotation,
        })
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

    fn defect(&self, rng: &mut StdRng, kind: DefectKind) -> (Vec<Rgb>, Vec<bool>) {
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

struct Mesh {
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
    fn draw(rng: &mut StdRng, size: usize) -> Base {
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
        Base::Mesh(Mesh {
            size,
            plate,
            hole_color,
            holes,
            pitch,
            radius,
            centres,
        })
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

    fn defect(&self, rng: &mut StdRng, kind: DefectKind) -> (Vec<Rgb>, Vec<bool>) {
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
