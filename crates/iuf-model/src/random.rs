//! Training/evaluation mode and the seeded noise it needs: feature jitter and dropout masks.
//!
//! candle's own random tensors cannot be seeded on every device, so the noise is generated on the
//! CPU from the caller's `StdRng` and moved to the model's device. Each tensor draws one 64-bit
//! seed from the rng and fills its elements with a counter-based SplitMix64 stream (element i uses
//! counter i): the result depends only on the seed, not on the number of threads that filled it.

use candle_core::{Device, Shape, Tensor};
use rand::rngs::StdRng;
use rand::RngCore;
use rayon::prelude::*;

use crate::error::Result;

/// Whether a forward pass trains (jitter and dropout on, drawn from the rng) or evaluates.
pub enum Mode<'a> {
    Eval,
    Train(&'a mut StdRng),
}

impl Mode<'_> {
    pub fn is_train(&self) -> bool {
        matches!(self, Mode::Train(_))
    }
}

const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
/// Elements filled per rayon task; large enough that scheduling costs nothing.
const CHUNK: usize = 1 << 15;

#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[inline]
fn counter(seed: u64, i: usize) -> u64 {
    mix(seed.wrapping_add((i as u64).wrapping_add(1).wrapping_mul(GAMMA)))
}

/// `n` samples of N(0, 1) (Box-Muller on pairs of counters).
pub(crate) fn standard_normal(rng: &mut StdRng, n: usize) -> Vec<f32> {
    let seed = rng.next_u64();
    let mut out = vec![0f32; n];
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, chunk)| {
            let base = c * CHUNK;
            for (j, pair) in chunk.chunks_mut(2).enumerate() {
                let i = base + 2 * j;
                // 53-bit uniforms; u1 in (0, 1] so that ln(u1) is finite.
                let u1 = ((counter(seed, i) >> 11) as f64 + 1.0) * (1.0 / (1u64 << 53) as f64);
                let u2 = (counter(seed, i + 1) >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
                let r = (-2.0 * u1.ln()).sqrt();
                let (s, co) = (2.0 * std::f64::consts::PI * u2).sin_cos();
                pair[0] = (r * co) as f32;
                if pair.len() > 1 {
                    pair[1] = (r * s) as f32;
                }
            }
        });
    out
}

/// Inverted-dropout multipliers: 0 with probability `p`, else `1 / (1 - p)` (the former mask
/// stream; `dropout` now draws its mask inside `ops::dropout`).
#[cfg(test)]
pub(crate) fn keep_mask(rng: &mut StdRng, n: usize, p: f64) -> Vec<f32> {
    let seed = rng.next_u64();
    let threshold = (p * 4_294_967_296.0) as u64;
    let keep = (1.0 / (1.0 - p)) as f32;
    let mut out = vec![0f32; n];
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, chunk)| {
            let base = c * CHUNK;
            for (j, v) in chunk.iter_mut().enumerate() {
                *v = if counter(seed, base + j) >> 32 >= threshold {
                    keep
                } else {
                    0.0
                };
            }
        });
    out
}

/// A standard-normal tensor of `shape` on `device`.
pub(crate) fn randn(rng: &mut StdRng, shape: &Shape, device: &Device) -> Result<Tensor> {
    let data = standard_normal(rng, shape.elem_count());
    Ok(Tensor::from_vec(data, shape, &Device::Cpu)?.to_device(device)?)
}

/// Inverted dropout with probability `p` in training mode; the identity otherwise.
pub(crate) fn dropout(x: &Tensor, p: f64, mode: &mut Mode<'_>) -> Result<Tensor> {
    match mode {
        // On the CPU the fused op never materialises the mask.
        Mode::Train(rng) if p > 0.0 => Ok(crate::ops::dropout(x, p, rng.next_u64())?),
        _ => Ok(x.clone()),
    }
}

/// `x + dropout(r)`: a residual connection around a dropped-out branch, one fused pass on the CPU.
pub(crate) fn add_dropout(x: &Tensor, r: &Tensor, p: f64, mode: &mut Mode<'_>) -> Result<Tensor> {
    match mode {
        Mode::Train(rng) if p > 0.0 => Ok(crate::ops::add_dropout(x, r, p, rng.next_u64())?),
        _ => Ok((x + r)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn normal_has_unit_moments_and_is_reproducible() {
        let mut rng = StdRng::seed_from_u64(7);
        let a = standard_normal(&mut rng, 200_001);
        let mean = a.iter().map(|&x| x as f64).sum::<f64>() / a.len() as f64;
        let var = a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / a.len() as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "var {var}");
        let b = standard_normal(&mut StdRng::seed_from_u64(7), 200_001);
        assert_eq!(a, b);
        let c = standard_normal(&mut rng, 200_001);
        assert_ne!(a, c);
    }

    #[test]
    fn keep_mask_drops_the_right_fraction() {
        let mut rng = StdRng::seed_from_u64(3);
        let m = keep_mask(&mut rng, 100_000, 0.1);
        let dropped = m.iter().filter(|&&v| v == 0.0).count() as f64 / m.len() as f64;
        assert!((dropped - 0.1).abs() < 0.005, "dropped {dropped}");
        assert!(m.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-6));
    }
}
