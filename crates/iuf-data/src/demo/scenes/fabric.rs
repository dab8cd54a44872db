//! The woven fabric: a textured surface with an over-under weave; its missing part is a hole in the
//! cloth.
use std::f32::consts::TAU;

use rand::rngs::StdRng;
use rand::Rng;

use super::defects::{surface_defect, DefectKind, Surface};
use super::layers::{jitter, mask_of};
use crate::demo::paint::{blend, floor, grain, Blob, Noise, Rgb, SinTable};

pub(super) struct Fabric {
    size: usize,
    color: Vec<Rgb>,
}

impl Fabric {
    pub(super) fn draw(rng: &mut StdRng, size: usize) -> Self {
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
        Fabric { size, color }
    }

    /// The image without defects.
    pub(super) fn clean(&self) -> Vec<Rgb> {
        self.color.clone()
    }

    pub(super) fn defect(&self, rng: &mut StdRng, kind: DefectKind) -> (Vec<Rgb>, Vec<bool>) {
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
