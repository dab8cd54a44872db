//! The defect kinds, and the defect painting more than one class uses: surface defects (crack,
//! scratch, stain) painted over a colour layer, a crack across a part, a scratch or stain on a part.
use std::f32::consts::TAU;

use rand::rngs::StdRng;
use rand::Rng;

use super::layers::mask_of;
use crate::demo::paint::{blend, Blob, Rgb, Stroke};

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

/// Defects painted on top of a surface, drawn the same way on every class.
#[derive(Clone, Copy)]
pub(super) enum Surface {
    Crack,
    Scratch,
    Stain,
}

impl Surface {
    pub(super) fn of(kind: DefectKind) -> Option<Surface> {
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
pub(super) fn surface_defect(
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
pub(super) fn part_crack(
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
pub(super) fn scratch_or_stain(
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
