//! The defects of the small-defect benchmark at a requested size `d` in pixels: a spot (blob of
//! diameter `d`), a scratch (smooth line `3d..5d` long, `max(d/4, 1)` wide), a crack (jagged line
//! `3d..5d` long, `max(d/8, 1)` wide, forked from 16 px on) and a missing piece (a chunk of
//! diameter `d` of the product gone, the background showing). Each is drawn wholly on the product
//! and painted into a small coverage buffer around it.
use std::f32::consts::TAU;

use rand::rngs::StdRng;
use rand::Rng;

use super::products::View;
use super::DefectKind;
use crate::demo::paint::{Blob, Rgb, Stroke};

/// How the defect changes the pixels it covers.
pub(super) enum Effect {
    /// Blend toward `colour * scale + add` (a fixed colour when `scale` is 0) by `amount`.
    Toward { scale: f32, add: Rgb, amount: f32 },
    /// The product is removed; the background shows.
    Remove,
}

impl Effect {
    #[inline]
    pub(super) fn apply(&self, c: Rgb, cov: f32) -> Rgb {
        match *self {
            Effect::Toward { scale, add, amount } => {
                let k = cov * amount;
                std::array::from_fn(|i| c[i] + ((c[i] * scale + add[i]).min(255.0) - c[i]) * k)
            }
            Effect::Remove => c,
        }
    }
}

/// A painted defect: its coverage over the `n x n` pixels from `(x0, y0)`.
pub(super) struct Painted {
    x0: usize,
    y0: usize,
    n: usize,
    cov: Vec<f32>,
    pub effect: Effect,
}

impl Painted {
    /// The defect's coverage of pixel `(px, py)` (0 away from it).
    #[inline]
    pub(super) fn at(&self, px: usize, py: usize) -> f32 {
        let (x, y) = (px.wrapping_sub(self.x0), py.wrapping_sub(self.y0));
        if x < self.n && y < self.n {
            self.cov[y * self.n + x]
        } else {
            0.0
        }
    }
}

enum Shape {
    Blob(Blob, f32),
    Strokes(Vec<Stroke>),
}

impl Shape {
    /// `(min_x, min_y, max_x, max_y)` of everything the shape may paint.
    fn bounds(&self) -> (f32, f32, f32, f32) {
        match self {
            Shape::Blob(b, reach) => (b.cx - reach, b.cy - reach, b.cx + reach, b.cy + reach),
            Shape::Strokes(strokes) => {
                let mut out = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
                for s in strokes {
                    for &(x, y) in &s.points {
                        out.0 = out.0.min(x - s.half_width);
                        out.1 = out.1.min(y - s.half_width);
                        out.2 = out.2.max(x + s.half_width);
                        out.3 = out.3.max(y + s.half_width);
                    }
                }
                out
            }
        }
    }

    /// Paints the shape into a square buffer whose corner is image pixel `(x0, y0)`.
    fn paint(mut self, x0: usize, y0: usize, n: usize) -> Vec<f32> {
        let (ox, oy) = (x0 as f32, y0 as f32);
        let mut cov = vec![0f32; n * n];
        match &mut self {
            Shape::Blob(b, _) => {
                b.cx -= ox;
                b.cy -= oy;
                b.paint(&mut cov, n);
            }
            Shape::Strokes(strokes) => {
                for s in strokes {
                    for p in &mut s.points {
                        p.0 -= ox;
                        p.1 -= oy;
                    }
                    s.paint(&mut cov, n);
                }
            }
        }
        cov
    }
}

/// A jagged walk of `length` pixels from `start` heading `angle`, in steps that grow with the
/// crack's width so a wide crack is not a smooth band.
fn jagged(rng: &mut StdRng, start: (f32, f32), angle: f32, length: f32, half_width: f32) -> Stroke {
    let scale = (half_width * 2.0 / 3.0).max(1.0);
    let mut points = vec![start];
    let (mut x, mut y) = start;
    let (mut walked, mut heading) = (0.0, angle);
    while walked < length {
        let step = (rng.gen_range(2.0..5.0f32) * scale).min(length - walked + 0.5);
        heading = angle + rng.gen_range(-0.6..0.6f32) + (heading - angle) * 0.3;
        x += heading.cos() * step;
        y += heading.sin() * step;
        walked += step;
        points.push((x, y));
    }
    Stroke { points, half_width }
}

fn shape(rng: &mut StdRng, kind: DefectKind, d: f32, (cx, cy): (f32, f32)) -> (Shape, Effect) {
    let dir = rng.gen_range(0.0..TAU);
    let (dx, dy) = (dir.cos(), dir.sin());
    match kind {
        DefectKind::Spot => {
            let r = d / 2.0;
            let blob = Blob::random(rng, cx, cy, r, 0.12);
            // Dirt or a burn mark (dark), a splash or polished point (bright, toward white so it
            // is not the colour of a trace).
            let effect = if rng.gen_bool(0.6) {
                Effect::Toward {
                    scale: 0.5,
                    add: [0.0; 3],
                    amount: rng.gen_range(0.75..0.9),
                }
            } else {
                Effect::Toward {
                    scale: 0.8,
                    add: [90.0; 3],
                    amount: rng.gen_range(0.7..0.85),
                }
            };
            // The outline's harmonics add at most 0.12 * 2.8 of the radius.
            (Shape::Blob(blob, r * 1.34 + 1.0), effect)
        }
        DefectKind::Scratch => {
            // Bright bare material, toward white.
            let len = rng.gen_range(3.0..5.0) * d;
            let half_width = (d / 4.0).max(1.0) / 2.0;
            let a = (cx - dx * len / 2.0, cy - dy * len / 2.0);
            let b = (cx + dx * len / 2.0, cy + dy * len / 2.0);
            let bow = rng.gen_range(-0.12..0.12) * len;
            let effect = Effect::Toward {
                scale: 0.7,
                add: [110.0; 3],
                amount: rng.gen_range(0.7..0.85),
            };
            (
                Shape::Strokes(vec![Stroke::curve(a, b, bow, half_width)]),
                effect,
            )
        }
        DefectKind::Crack => {
            let len = rng.gen_range(3.0..5.0) * d;
            let half_width = (d / 8.0).max(1.0) / 2.0;
            let start = (cx - dx * len / 2.0, cy - dy * len / 2.0);
            let main = jagged(rng, start, dir, len, half_width);
            let mut strokes = Vec::new();
            // Real cracks fork; a fork on a 4-pixel crack would be a blob.
            if d >= 16.0 && rng.gen_bool(0.5) {
                let from = main.points[main.points.len() / 2];
                let side =
                    dir + rng.gen_range(0.5..1.0) * if rng.gen_bool(0.5) { 1.0 } else { -1.0 };
                strokes.push(jagged(
                    rng,
                    from,
                    side,
                    len * 0.3,
                    (half_width * 0.7).max(0.5),
                ));
            }
            strokes.insert(0, main);
            let dark = rng.gen_range(22.0..34.0);
            let effect = Effect::Toward {
                scale: 0.0,
                add: [dark, dark * 0.95, dark * 0.95],
                amount: rng.gen_range(0.8..0.92),
            };
            (Shape::Strokes(strokes), effect)
        }
        DefectKind::MissingPiece => {
            let r = d / 2.0;
            let blob = Blob::random(rng, cx, cy, r, 0.22);
            (
                Shape::Blob(blob, r * (1.0 + 0.22 * 2.8) + 1.0),
                Effect::Remove,
            )
        }
    }
}

/// Keeps this many pixels between a defect and the product's edge.
const MARGIN: f32 = 4.0;

/// Draws a defect of `kind` and size `d` at a random place where all of it lies on the product.
pub(super) fn draw(
    rng: &mut StdRng,
    view: &impl View,
    size: usize,
    kind: DefectKind,
    d: usize,
) -> Painted {
    let s = size as f32;
    let d = d as f32;
    let fits = |b: (f32, f32, f32, f32)| {
        [(b.0, b.1), (b.2, b.1), (b.0, b.3), (b.2, b.3)]
            .iter()
            .all(|&(x, y)| view.on_product(x, y, MARGIN))
    };
    let mut drawn = None;
    for _ in 0..256 {
        let at = (rng.gen_range(0.0..s), rng.gen_range(0.0..s));
        let candidate = shape(rng, kind, d, at);
        if fits(candidate.0.bounds()) {
            drawn = Some(candidate);
            break;
        }
    }
    // The image's centre is on every product; `check` keeps defects small enough to fit there.
    let (shape, effect) = drawn.unwrap_or_else(|| shape(rng, kind, d, (s / 2.0, s / 2.0)));
    let (x0, y0, x1, y1) = shape.bounds();
    let (x0, y0) = (
        (x0.floor() - 3.0).max(0.0) as usize,
        (y0.floor() - 3.0).max(0.0) as usize,
    );
    let n = ((x1.ceil() + 4.0) as usize)
        .saturating_sub(x0)
        .max((y1.ceil() + 4.0) as usize - y0);
    Painted {
        x0,
        y0,
        n,
        cov: shape.paint(x0, y0, n),
        effect,
    }
}
