//! The reconstruction scorer (sections 3-4): the transformer reconstructs the frozen features and
//! the per-token reconstruction error is the map. Beside the network it keeps what its next
//! incremental step needs: the Gram matrices of the constrained layers (4.6) and the importance of
//! the penalty baselines.

use candle_core::{Device, Tensor};
use iuf_model::LoadedModel;

use super::interface::{find_state, Batch, Maps, Scorer, Step, Trained};
use super::network::Network;
use super::trainer;
use crate::config::TrainConfig;
use crate::error::Result;
use crate::penalty::Importance;
use crate::projection::Gram;
use crate::step::StepData;

const GRAM_PREFIX: &str = "state.gram.";

/// The network and its incremental-learning statistics.
pub struct Reconstruction {
    net: Network,
    grams: Vec<Gram>,
    importance: Importance,
}

impl Reconstruction {
    /// A freshly initialised network, or the one of a model file.
    pub fn new(cfg: &TrainConfig, device: &Device, from: Option<&LoadedModel>) -> Result<Self> {
        let d = cfg.model.transformer.hidden_dim;
        let Some(loaded) = from else {
            let net = Network::new(cfg, device)?;
            let grams = net
                .model
                .constrained_layers()
                .iter()
                .map(|_| Gram::zeros(d))
                .collect();
            return Ok(Self {
                net,
                grams,
                importance: Importance::default(),
            });
        };
        let net = Network::load(loaded, device)?;
        let counts = gram_counts(loaded);
        let mut grams = Vec::new();
        for (i, layer) in net.model.constrained_layers().iter().enumerate() {
            let count = counts.get(i).copied().unwrap_or(0);
            grams.push(
                match find_state(&loaded.state, &format!("{GRAM_PREFIX}{layer}")) {
                    Some(t) => Gram::from_tensor(&t, count)?,
                    None => Gram::zeros(d),
                },
            );
        }
        Ok(Self {
            net,
            grams,
            importance: Importance::from_state(&loaded.state),
        })
    }
}

/// The Gram counts the learner's metadata recorded in the file.
fn gram_counts(loaded: &LoadedModel) -> Vec<u64> {
    loaded
        .meta
        .extra
        .get("gram_counts")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default()
}

impl Scorer for Reconstruction {
    fn name(&self) -> &'static str {
        "reconstruction"
    }

    fn weight(&self, cfg: &TrainConfig) -> f64 {
        cfg.fusion.reconstruction
    }

    fn learn(&mut self, step: &Step<'_>, train: &StepData<'_>) -> Result<Option<Trained>> {
        trainer::train_step(
            &mut self.net,
            &mut self.grams,
            &mut self.importance,
            step,
            train,
        )
        .map(Some)
    }

    fn knows(&self, _object: &str) -> bool {
        true
    }

    fn maps(&self, batch: &Batch<'_>) -> Result<Maps> {
        let (x, size) = (batch.images.features, batch.size);
        let (_, out) = self.net.forward_eval(x)?;
        let map = iuf_model::anomaly_map(&out.pred, size)?;
        // Detached: a kept map must not keep its batch's whole forward graph (every activation)
        // alive through the op history that links it to the parameters.
        let map = map.reshape((x.dim(0)?, size.0, size.1))?.detach();
        let probs = candle_nn::ops::softmax_last_dim(&out.logits)?
            .detach()
            .to_device(&Device::Cpu)?;
        Ok(Maps {
            maps: map,
            class_probs: Some(probs),
        })
    }

    fn state(&self, _cfg: &TrainConfig) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for (layer, g) in self.net.model.constrained_layers().iter().zip(&self.grams) {
            if g.count > 0 {
                out.push((format!("{GRAM_PREFIX}{layer}"), g.to_tensor(&Device::Cpu)?));
            }
        }
        out.extend(self.net.state()?);
        out.extend(self.importance.to_state());
        Ok(out)
    }

    fn parameters(&self) -> usize {
        self.net
            .varmap
            .all_vars()
            .iter()
            .map(|v| v.elem_count())
            .sum()
    }

    fn varmap(&self) -> Option<&candle_nn::VarMap> {
        Some(&self.net.varmap)
    }

    fn gram_counts(&self) -> Vec<u64> {
        self.grams.iter().map(|g| g.count).collect()
    }
}
