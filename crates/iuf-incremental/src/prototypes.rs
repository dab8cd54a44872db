//! Object recognition by prototypes (section 4.1's role, done where nothing drifts: the frozen
//! backbone's features). Per object slot, the mean token-mean feature of its training images and
//! their mean squared distance to it; an image's object probabilities are a softmax over the
//! learned objects of `-d^2 / (2 s)`. The discriminator's head, trained only on the newest objects
//! in an incremental step, learns to call everything the newest object; prototypes cannot forget.

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::scorer::{find_state, Step};

const MEAN_KEY: &str = "state.prototype.mean";
const SPREAD_KEY: &str = "state.prototype.spread";

/// `[N, C]`: the mean over the grid of `[N, C, g, g]` features, in `dtype` on the CPU.
fn token_mean(features: &Tensor, dtype: DType) -> Result<Tensor> {
    Ok(features
        .flatten_from(2)?
        .mean(2)?
        .to_dtype(dtype)?
        .to_device(&Device::Cpu)?)
}

/// Per object slot: mean `[K, C]` and spread `[K]` (0 for slots not learned). Fixed size.
#[derive(Debug, Clone)]
pub struct Prototypes {
    means: Tensor,
    spreads: Tensor,
}

impl Prototypes {
    /// The prototypes of a model file's state tensors (None for files that predate them).
    pub fn from_state(state: &[(String, Tensor)]) -> Option<Self> {
        Some(Self {
            means: find_state(state, MEAN_KEY)?,
            spreads: find_state(state, SPREAD_KEY)?,
        })
    }

    /// As model-file state tensors.
    pub fn to_state(&self) -> Vec<(String, Tensor)> {
        vec![
            (MEAN_KEY.to_string(), self.means.clone()),
            (SPREAD_KEY.to_string(), self.spreads.clone()),
        ]
    }

    /// `existing` with the prototypes of `objects` (name and class id) from their training
    /// `features` `[N, C, g, g]` with class ids `class_ids`; `k` object slots.
    pub fn add(
        existing: Option<&Self>,
        k: usize,
        objects: &[(String, u32)],
        features: &Tensor,
        class_ids: &[u32],
    ) -> Result<Self> {
        let pooled = token_mean(features, DType::F64)?; // [N, C]
        let c = pooled.dim(1)?;
        let (mut means, mut spreads) = match existing {
            Some(p) => (p.means.to_vec2::<f32>()?, p.spreads.to_vec1::<f32>()?),
            None => (vec![vec![0f32; c]; k], vec![0f32; k]),
        };
        for (_, id) in objects {
            let rows = Step::rows(*id, class_ids, &Device::Cpu)?;
            if rows.dim(0)? == 0 {
                continue;
            }
            let mine = pooled.index_select(&rows, 0)?;
            let mean = mine.mean_keepdim(0)?; // [1, C]
            let spread = mine
                .broadcast_sub(&mean)?
                .sqr()?
                .sum(1)?
                .mean_all()?
                .to_scalar::<f64>()?;
            means[*id as usize] = mean.squeeze(0)?.to_dtype(DType::F32)?.to_vec1()?;
            spreads[*id as usize] = spread as f32;
        }
        Ok(Self {
            means: Tensor::new(means, &Device::Cpu)?,
            spreads: Tensor::new(spreads, &Device::Cpu)?,
        })
    }

    /// `k` object slots holding, for each `(source, from, to)` of `rows`, slot `from` of `source`
    /// in slot `to`, copied bit for bit (the merge of models learned apart; slots no row names
    /// stay empty, as in a fresh model).
    pub fn gather(k: usize, rows: &[(&Self, usize, usize)]) -> Result<Self> {
        let c = match rows.first() {
            Some((p, _, _)) => p.means.dim(1)?,
            None => return Err(Error::Msg("no prototype to gather".into())),
        };
        let mut means = vec![vec![0f32; c]; k];
        let mut spreads = vec![0f32; k];
        for (p, from, to) in rows {
            let (pk, pc) = p.means.dims2()?;
            if pc != c {
                return Err(Error::Msg(format!(
                    "prototypes of {pc} channels cannot join prototypes of {c}"
                )));
            }
            if *from >= pk || *to >= k {
                return Err(Error::Msg(format!(
                    "prototype slot {from} of {pk} cannot go to slot {to} of {k}"
                )));
            }
            means[*to] = p.means.get(*from)?.to_vec1()?;
            spreads[*to] = p.spreads.get(*from)?.to_scalar()?;
        }
        Ok(Self {
            means: Tensor::new(means, &Device::Cpu)?,
            spreads: Tensor::new(spreads, &Device::Cpu)?,
        })
    }

    /// These prototypes with slot `id`'s, learned from `n_old` images, updated with more images
    /// of that object (`features` `[N, C, g, g]`): the mean and mean squared distance of all
    /// `n_old + N` images, from the stored ones (the pairwise update of means and sums of
    /// squares). Other slots are unchanged.
    pub fn merge(&self, id: u32, n_old: u64, features: &Tensor) -> Result<Self> {
        let pooled = token_mean(features, DType::F64)?; // [N, C]
        let nb = pooled.dim(0)?;
        let mut means = self.means.to_vec2::<f32>()?;
        let mut spreads = self.spreads.to_vec1::<f32>()?;
        let id = id as usize;
        if nb == 0 || id >= means.len() {
            return Ok(self.clone());
        }
        let mean_b = pooled.mean_keepdim(0)?; // [1, C]
        let ss_b = pooled
            .broadcast_sub(&mean_b)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f64>()?;
        let mean_b: Vec<f64> = mean_b.squeeze(0)?.to_vec1()?;
        let (na, nb) = (n_old as f64, nb as f64);
        let n = na + nb;
        let ss_a = spreads[id] as f64 * na;
        let mut d2 = 0.0;
        for (m, b) in means[id].iter_mut().zip(&mean_b) {
            let a = *m as f64;
            let delta = b - a;
            d2 += delta * delta;
            *m = (a + delta * nb / n) as f32;
        }
        spreads[id] = ((ss_a + ss_b + d2 * na * nb / n) / n) as f32;
        Ok(Self {
            means: Tensor::new(means, &Device::Cpu)?,
            spreads: Tensor::new(spreads, &Device::Cpu)?,
        })
    }

    /// `[N, K]` object probabilities of `features` over the `learned` class ids (others get 0);
    /// None when nothing is learned.
    pub fn probs(&self, features: &Tensor, learned: &[usize]) -> Result<Option<Tensor>> {
        if learned.is_empty() {
            return Ok(None);
        }
        let spreads: Vec<f32> = self.spreads.to_vec1()?;
        let s = learned.iter().map(|&i| spreads[i] as f64).sum::<f64>() / learned.len() as f64;
        // Objects learned from a single image each have no spread; any positive scale ranks alike.
        let s = if s > 0.0 { s } else { 1.0 };
        let x = token_mean(features, DType::F32)?; // [n, C]
        let d2 = x
            .unsqueeze(1)?
            .broadcast_sub(&self.means.unsqueeze(0)?)?
            .sqr()?
            .sum(2)?; // [n, K]
        let k = self.means.dim(0)?;
        let mask: Vec<f32> = (0..k)
            .map(|i| {
                if learned.contains(&i) {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
            .collect();
        let logits = (d2 * (-0.5 / s))?.broadcast_add(&Tensor::new(mask, &Device::Cpu)?)?;
        Ok(Some(candle_nn::ops::softmax_last_dim(&logits)?))
    }
}

/// Names of the most probable object of each image, from `[n, K]` probabilities over the model's
/// `class_names`.
pub fn recognised(probs: &Tensor, class_names: &[String]) -> Result<Vec<String>> {
    let best: Vec<u32> = probs.argmax(1)?.to_vec1()?;
    best.iter()
        .map(|&i| {
            class_names.get(i as usize).cloned().ok_or_else(|| {
                Error::Msg(format!(
                    "object {i} recognised, but the model has no name for it"
                ))
            })
        })
        .collect()
}

/// Per image of `[n, K]` probabilities: `given` with its probability, or the most probable of the
/// `learned` objects (name, class id). Empty when nothing is learned.
pub fn judged_as(
    probs: &Tensor,
    learned: &[(String, usize)],
    given: Option<&str>,
) -> Result<Vec<(String, f32)>> {
    if learned.is_empty() {
        return Ok(Vec::new());
    }
    let given = match given {
        Some(o) => {
            let id = learned
                .iter()
                .find(|(c, _)| c == o)
                .map(|(_, id)| *id)
                .ok_or_else(|| Error::Msg(format!("`{o}` is not an object the model knows")))?;
            Some((o, id))
        }
        None => None,
    };
    let probs: Vec<Vec<f32>> = probs.to_vec2()?;
    Ok(probs
        .iter()
        .map(|row| match given {
            Some((o, id)) => (o.to_string(), row[id]),
            None => learned
                .iter()
                .map(|(c, id)| (c.clone(), row[*id]))
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .expect("at least one learned object"),
        })
        .collect())
}
