//! The products of the small-defect benchmark, each a per-pixel function of the image position (no
//! full-image float buffers, so 8192-pixel images fit in memory): a brushed metal strip filling the
//! frame (a web under a line camera) and a circuit board on a conveyor (an aligned part with fine
//! structure). Texture scales are in pixels, not fractions of the image, so fine detail exists at
//! the native resolution whatever the image size.
use rand::rngs::StdRng;
use rand::Rng;

use crate::demo::paint::{coverage, floor, grain, Rgb, SinTable};

/// One pixel's layers: what shows where the product is missing, the product, and how much of the
/// pixel the product covers.
pub(super) struct Layers {
    pub background: Rgb,
    pub product: Rgb,
    pub cover: f32,
}

/// A product as seen in one image.
pub(super) trait View: Sync {
    fn at(&self, px: usize, py: usize) -> Layers;
    /// Whether the point `(x, y)` (pixels) lies on the product at least `margin` pixels inside it.
    fn on_product(&self, x: f32, y: f32, margin: f32) -> bool;
}

/// Value noise from a hash of the lattice corners (any scale, no table, no wrap-around), in [-1, 1].
#[inline]
fn hash_noise(u: f32, v: f32, salt: u32) -> f32 {
    let (x0, y0) = (floor(u), floor(v));
    let (fx, fy) = (u - x0, v - y0);
    let (sx, sy) = (fx * fx * (3.0 - 2.0 * fx), fy * fy * (3.0 - 2.0 * fy));
    let (xi, yi) = (x0 as i32 as u32 as usize, y0 as i32 as u32 as usize);
    let g = |dx: usize, dy: usize| grain(xi.wrapping_add(dx), yi.wrapping_add(dy), salt);
    let top = g(0, 0) + (g(1, 0) - g(0, 0)) * sx;
    let bottom = g(0, 1) + (g(1, 1) - g(0, 1)) * sx;
    top + (bottom - top) * sy
}

/// A lattice hash in [0, 1) (grain's, for integer coordinates that may be negative).
#[inline]
fn lattice(i: i64, j: i64, salt: u32) -> f32 {
    (grain(i as i32 as u32 as usize, j as i32 as u32 as usize, salt) + 1.0) * 0.5
}

fn tinted(rng: &mut StdRng, c: Rgb, brightness: f32, tint: f32) -> Rgb {
    let b: f32 = rng.gen_range(1.0 - brightness..1.0 + brightness);
    std::array::from_fn(|i| c[i] * b + rng.gen_range(-tint..tint))
}

/// A rolled and brushed steel strip filling the frame, streaked along the rolling direction (x) at
/// a scale of one to two pixels across; under it a dark backing (seen through holes).
pub(super) struct BrushedMetal {
    size: f32,
    base: Rgb,
    backing: Rgb,
    /// Streak direction tilt (the strip is never perfectly aligned with the sensor line).
    tilt: f32,
    streak_len: f32,
    salts: [u32; 5],
    /// Line-light illumination across the strip: slope, fall-off to the edges, drift along it.
    light: (f32, f32, f32),
}

impl BrushedMetal {
    pub(super) fn draw(rng: &mut StdRng, size: usize) -> Self {
        Self {
            size: size as f32,
            base: tinted(rng, [168.0, 170.0, 174.0], 0.04, 3.0),
            backing: tinted(rng, [36.0, 38.0, 44.0], 0.08, 2.0),
            tilt: rng.gen_range(-0.004..0.004),
            streak_len: rng.gen_range(60.0..120.0),
            salts: std::array::from_fn(|_| rng.gen()),
            light: (
                rng.gen_range(-0.08..0.08),
                rng.gen_range(0.04..0.12),
                rng.gen_range(-0.03..0.03),
            ),
        }
    }
}

impl View for BrushedMetal {
    #[inline]
    fn at(&self, px: usize, py: usize) -> Layers {
        let (x, y) = (px as f32 + 0.5, py as f32 + 0.5);
        let (u, v) = (x + y * self.tilt, y - x * self.tilt);
        let [s0, s1, s2, s3, s4] = self.salts;
        let shade = 1.0
            + 0.055 * hash_noise(u / self.streak_len, v / 1.7, s0)
            + 0.035 * hash_noise(u / 400.0, v / 9.0, s1)
            + 0.03 * hash_noise(x / 300.0, y / 300.0, s2)
            + 0.02 * grain(px, py, s3);
        let (xn, yn) = (x / self.size - 0.5, y / self.size - 0.5);
        let (slope, falloff, drift) = self.light;
        let light = 1.0 + slope * xn - 4.0 * falloff * xn * xn + drift * yn;
        let back = light * (1.0 + 0.04 * grain(px, py, s4));
        Layers {
            background: self.backing.map(|c| c * back),
            product: self.base.map(|c| c * shade * light),
            cover: 1.0,
        }
    }

    fn on_product(&self, x: f32, y: f32, margin: f32) -> bool {
        (margin..=self.size - margin).contains(&x) && (margin..=self.size - margin).contains(&y)
    }
}

/// Distance between grid nodes of the board's layout, in pixels.
const PITCH: f32 = 20.0;

/// The layout of a circuit board, the same on every image of a product: which grid edges carry a
/// trace and which nodes hold a via or a pad.
#[derive(Clone, Copy)]
pub(super) struct PcbDesign {
    salt: u32,
}

impl PcbDesign {
    pub(super) fn draw(rng: &mut StdRng) -> Self {
        Self { salt: rng.gen() }
    }

    /// Whether the edge from node `(i, j)` to its right (`dir` 0) or lower (`dir` 1) neighbour
    /// carries a trace, and its half width.
    #[inline]
    fn edge(&self, i: i64, j: i64, dir: u32) -> Option<f32> {
        let h = lattice(i, j, self.salt ^ (0x51ED_2701u32.wrapping_mul(dir + 1)));
        (h < 0.42).then_some(if h < 0.08 { 2.5 } else { 1.5 })
    }

    #[inline]
    fn node(&self, i: i64, j: i64) -> f32 {
        lattice(i, j, self.salt ^ 0xA5A5_1F3D)
    }
}

/// A green circuit board (traces under the solder mask, gold pads with silkscreen frames, vias,
/// the glass weave of the laminate) on a dark conveyor belt, placed with small position and
/// rotation changes.
pub(super) struct Pcb {
    design: PcbDesign,
    size: f32,
    cx: f32,
    cy: f32,
    cos: f32,
    sin: f32,
    /// Half the board's side, and its corner radius.
    half: f32,
    corner: f32,
    /// Grid nodes run from -nodes to nodes in both directions.
    nodes: i64,
    mask: Rgb,
    copper: Rgb,
    pad: Rgb,
    silk: Rgb,
    hole: Rgb,
    belt: Rgb,
    weave_phase: f32,
    light: (f32, f32),
    salts: [u32; 4],
}

impl Pcb {
    pub(super) fn draw(rng: &mut StdRng, size: usize, design: PcbDesign) -> Self {
        let s = size as f32;
        let rotation: f32 = rng.gen_range(-0.006..0.006);
        let half = 0.44 * s;
        Self {
            design,
            size: s,
            cx: s * (0.5 + rng.gen_range(-0.008..0.008)),
            cy: s * (0.5 + rng.gen_range(-0.008..0.008)),
            cos: rotation.cos(),
            sin: rotation.sin(),
            half,
            corner: 0.025 * s,
            nodes: ((half - 1.5 * PITCH) / PITCH).floor().max(0.0) as i64,
            mask: tinted(rng, [36.0, 112.0, 64.0], 0.04, 3.0),
            copper: tinted(rng, [72.0, 150.0, 78.0], 0.04, 3.0),
            pad: tinted(rng, [206.0, 178.0, 108.0], 0.04, 4.0),
            silk: tinted(rng, [226.0, 228.0, 220.0], 0.02, 2.0),
            hole: [18.0, 18.0, 20.0],
            belt: tinted(rng, [52.0, 54.0, 60.0], 0.06, 2.0),
            weave_phase: rng.gen_range(0.0..10.0),
            light: (rng.gen_range(-0.06..0.06), rng.gen_range(-0.06..0.06)),
            salts: std::array::from_fn(|_| rng.gen()),
        }
    }

    /// Board coordinates (origin at the board's centre) of an image point.
    #[inline]
    fn to_board(&self, x: f32, y: f32) -> (f32, f32) {
        let (dx, dy) = (x - self.cx, y - self.cy);
        (
            dx * self.cos + dy * self.sin,
            -dx * self.sin + dy * self.cos,
        )
    }

    /// Signed distance to the board's rounded outline, positive outside.
    #[inline]
    fn outline(&self, u: f32, v: f32) -> f32 {
        let inner = self.half - self.corner;
        let (qx, qy) = (u.abs() - inner, v.abs() - inner);
        let (ox, oy) = (qx.max(0.0), qy.max(0.0));
        (ox * ox + oy * oy).sqrt() + qx.max(qy).min(0.0) - self.corner
    }
}

fn mix(a: Rgb, b: Rgb, t: f32) -> Rgb {
    std::array::from_fn(|c| a[c] + (b[c] - a[c]) * t)
}

impl View for Pcb {
    #[inline]
    fn at(&self, px: usize, py: usize) -> Layers {
        let (x, y) = (px as f32 + 0.5, py as f32 + 0.5);
        let [s0, s1, s2, s3] = self.salts;
        let (xn, yn) = (x / self.size - 0.5, y / self.size - 0.5);
        let light = 1.0 + self.light.0 * xn + self.light.1 * yn;
        let belt =
            light * (1.0 + 0.05 * hash_noise(x / 2.5, y / 2.5, s0) + 0.02 * grain(px, py, s1));
        let background = self.belt.map(|c| c * belt);
        let (u, v) = self.to_board(x, y);
        let outside = self.outline(u, v);
        let cover = coverage(-outside);
        if cover <= 0.0 {
            return Layers {
                background,
                product: [0.0; 3],
                cover,
            };
        }
        let (mut trace, mut ring, mut pad, mut hole, mut silk) = (0f32, 0f32, 0f32, 0f32, 0f32);
        let (i, j) = (floor(u / PITCH + 0.5) as i64, floor(v / PITCH + 0.5) as i64);
        let n = self.nodes;
        if i.abs() <= n && j.abs() <= n {
            let (du, dv) = (u - i as f32 * PITCH, v - j as f32 * PITCH);
            let r = (du * du + dv * dv).sqrt();
            // Only the nearest node's four edges can reach a pixel: traces are narrower than half
            // the pitch.
            let edges = [
                (i < n)
                    .then(|| self.design.edge(i, j, 0))
                    .flatten()
                    .map(|w| (w, du >= 0.0, dv)),
                (i > -n)
                    .then(|| self.design.edge(i - 1, j, 0))
                    .flatten()
                    .map(|w| (w, du <= 0.0, dv)),
                (j < n)
                    .then(|| self.design.edge(i, j, 1))
                    .flatten()
                    .map(|w| (w, dv >= 0.0, du)),
                (j > -n)
                    .then(|| self.design.edge(i, j - 1, 1))
                    .flatten()
                    .map(|w| (w, dv <= 0.0, du)),
            ];
            let mut connected = false;
            for (half_width, along, across) in edges.into_iter().flatten() {
                connected = true;
                let d = if along { across.abs() } else { r };
                trace = trace.max(coverage(half_width - d));
            }
            let kind = self.design.node(i, j);
            if connected && kind < 0.10 {
                ring = coverage(5.0 - r);
                hole = coverage(2.2 - r);
            } else if kind > 0.92 {
                let box_d = du.abs().max(dv.abs());
                pad = coverage(5.5 - box_d);
                silk = coverage(0.9 - (box_d - 9.0).abs());
            }
        }
        // Laminate glass weave seen through the mask, a few pixels per period.
        let trig = SinTable::get();
        let k = std::f32::consts::TAU / 5.3;
        let weave = trig.sin((u + v) * k + self.weave_phase) * trig.sin((u - v) * k);
        let shade = 1.0
            + 0.025 * weave
            + 0.03 * grain(px, py, s2)
            + 0.03 * hash_noise(x / 150.0, y / 150.0, s3);
        let mut c = mix(self.mask, self.copper, trace.max(ring));
        c = mix(c, self.silk, silk);
        c = mix(c, self.pad, pad);
        c = mix(c, self.hole, hole);
        // The milled edge of the laminate is pale.
        let edge = coverage(2.5 + outside) * 0.6;
        c = mix(c, [168.0, 162.0, 118.0], edge);
        Layers {
            background,
            product: c.map(|v| v * shade * light),
            cover,
        }
    }

    fn on_product(&self, x: f32, y: f32, margin: f32) -> bool {
        let (u, v) = self.to_board(x, y);
        self.outline(u, v) <= -margin
    }
}
