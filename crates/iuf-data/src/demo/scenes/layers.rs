//! Per-pixel helpers the classes share: a jittered base colour, two layers mixed by coverage, and
//! the mask of a coverage.
use rand::rngs::StdRng;
use rand::Rng;

use crate::demo::paint::Rgb;

pub(super) fn jitter(rng: &mut StdRng, c: Rgb, brightness: f32, tint: f32) -> Rgb {
    let b: f32 = rng.gen_range(1.0 - brightness..1.0 + brightness);
    std::array::from_fn(|i| c[i] * b + rng.gen_range(-tint..tint))
}

/// Two layers mixed per pixel by `cover`: `under` where it is 0, `over` where it is 1.
pub(super) fn mix(under: &[Rgb], over: &[Rgb], cover: &[f32]) -> Vec<Rgb> {
    under
        .iter()
        .zip(over)
        .zip(cover)
        .map(|((u, o), &a)| std::array::from_fn(|c| u[c] * (1.0 - a) + o[c] * a))
        .collect()
}

pub(super) fn mask_of(cov: &[f32]) -> Vec<bool> {
    cov.iter().map(|&c| c >= 0.5).collect()
}
