//! A `VarBuilder` backend that creates fresh variables in a `VarMap` from a seeded RNG.
//!
//! candle's CPU random generator cannot be seeded, so `VarMap`'s own initialisation differs from run
//! to run. This backend draws each variable from a generator seeded by (seed, variable name), honouring
//! the model's `Init` hints, so the same config and seed give the same initial model on any device.

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal, Uniform};
use sha2::{Digest, Sha256};

struct SeededVarMap {
    map: VarMap,
    seed: u64,
}

fn name_seed(seed: u64, name: &str) -> u64 {
    let d = Sha256::digest([seed.to_le_bytes().as_slice(), name.as_bytes()].concat());
    u64::from_le_bytes(d[..8].try_into().expect("sha256 has 32 bytes"))
}

fn draw(init: Init, shape: &Shape, seed: u64) -> candle_core::Result<Vec<f32>> {
    let n = shape.elem_count();
    let mut rng = StdRng::seed_from_u64(seed);
    let uniform = |lo: f64, up: f64, rng: &mut StdRng| -> Vec<f32> {
        let u = Uniform::new(lo, up);
        (0..n).map(|_| u.sample(rng) as f32).collect()
    };
    Ok(match init {
        Init::Const(v) => vec![v as f32; n],
        Init::Randn { mean, stdev } => {
            let d = Normal::new(mean, stdev.max(f64::MIN_POSITIVE))
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            (0..n).map(|_| d.sample(&mut rng) as f32).collect()
        }
        Init::Uniform { lo, up } => uniform(lo, up, &mut rng),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let dims = shape.dims();
            let receptive: usize = dims.iter().skip(2).product();
            let fan_in = dims.get(1).copied().unwrap_or(1) * receptive;
            let fan_out = dims.first().copied().unwrap_or(1) * receptive;
            let f = match fan {
                candle_nn::init::FanInOut::FanIn => fan_in,
                candle_nn::init::FanInOut::FanOut => fan_out,
            };
            let std = non_linearity.gain() / (f.max(1) as f64).sqrt();
            match dist {
                candle_nn::init::NormalOrUniform::Uniform => {
                    let b = 3f64.sqrt() * std;
                    uniform(-b, b, &mut rng)
                }
                candle_nn::init::NormalOrUniform::Normal => {
                    let d = Normal::new(0.0, std)
                        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
                    (0..n).map(|_| d.sample(&mut rng) as f32).collect()
                }
            }
        }
    })
}

impl SimpleBackend for SeededVarMap {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut data = self.map.data().lock().expect("VarMap lock poisoned");
        if let Some(v) = data.get(name) {
            if v.shape() != &s {
                candle_core::bail!("shape mismatch on {name}: {s:?} <> {:?}", v.shape())
            }
            return Ok(v.as_tensor().clone());
        }
        let values = draw(h, &s, name_seed(self.seed, name))?;
        let t = Tensor::from_vec(values, s, dev)?.to_dtype(dtype)?;
        let var = Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(out)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let data = self.map.data().lock().expect("VarMap lock poisoned");
        match data.get(name) {
            Some(v) => Ok(v.as_tensor().clone()),
            None => candle_core::bail!("no variable named {name}"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.map
            .data()
            .lock()
            .expect("VarMap lock poisoned")
            .contains_key(name)
    }
}

/// A `VarBuilder` that fills `map` with variables drawn from `seed`.
pub fn seeded_var_builder(map: &VarMap, seed: u64, device: &Device) -> VarBuilder<'static> {
    VarBuilder::from_backend(
        Box::new(SeededVarMap {
            map: map.clone(),
            seed,
        }),
        DType::F32,
        device.clone(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_values_other_seed_other_values() {
        let dev = Device::Cpu;
        let make = |seed| {
            let m = VarMap::new();
            let vb = seeded_var_builder(&m, seed, &dev);
            vb.get_with_hints(
                (3, 4),
                "w",
                Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                },
            )
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
        };
        assert_eq!(make(1), make(1));
        assert_ne!(make(1), make(2));
    }
}
