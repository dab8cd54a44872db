//! The reconstruction network as the scorer and its trainer share it: the transformer on its
//! variables, and the per-channel standardisation of its input fixed at the base step.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use iuf_model::{IufModel, LoadedModel, Mode, ModelOutput};

use super::interface::find_state;
use crate::config::TrainConfig;
use crate::error::Result;
use crate::seeded_init::seeded_var_builder;

pub(crate) const MEAN_KEY: &str = "state.standardize.mean";
pub(crate) const STD_KEY: &str = "state.standardize.std";

/// The transformer, its variables and its input standardisation.
pub struct Network {
    pub(crate) varmap: VarMap,
    pub(crate) model: IufModel,
    /// Per-channel mean and std `[1, C, 1, 1]` of the base step's training features.
    pub(crate) standardize: Option<(Tensor, Tensor)>,
    pub(crate) device: Device,
}

impl Network {
    /// A freshly initialised network (seeded from `cfg.seed`).
    pub fn new(cfg: &TrainConfig, device: &Device) -> Result<Self> {
        let varmap = VarMap::new();
        let model = IufModel::new(&cfg.model, seeded_var_builder(&varmap, cfg.seed, device))?;
        Ok(Self {
            varmap,
            model,
            standardize: None,
            device: device.clone(),
        })
    }

    /// The network of a model file.
    pub fn load(loaded: &LoadedModel, device: &Device) -> Result<Self> {
        let standardize = match (
            find_state(&loaded.state, MEAN_KEY),
            find_state(&loaded.state, STD_KEY),
        ) {
            (Some(m), Some(s)) => Some((m.reshape((1, (), 1, 1))?, s.reshape((1, (), 1, 1))?)),
            _ => None,
        };
        Ok(Self {
            model: loaded.model()?,
            varmap: loaded.varmap.clone(),
            standardize,
            device: device.clone(),
        })
    }

    /// Trainable parameters in name order.
    pub fn params(&self) -> Vec<(String, Var)> {
        let data = self.varmap.data().lock().expect("VarMap lock poisoned");
        let mut v: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// `x` with the base step's standardisation applied.
    pub fn standardized(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match &self.standardize {
            Some((m, s)) => x.broadcast_sub(m)?.broadcast_div(s)?,
            None => x.clone(),
        })
    }

    /// Fixes the standardisation to the mean and std of every channel of `features`.
    pub fn fit_standardization(&mut self, features: &Tensor) -> Result<()> {
        let c = features.dim(1)?;
        let flat = features
            .transpose(0, 1)?
            .reshape((c, ()))?
            .to_dtype(DType::F64)?;
        let mean = flat.mean_keepdim(1)?;
        let var = flat.broadcast_sub(&mean)?.sqr()?.mean_keepdim(1)?;
        let std = (var.sqrt()? + 1e-6)?;
        self.standardize = Some((
            mean.to_dtype(DType::F32)?.reshape((1, c, 1, 1))?,
            std.to_dtype(DType::F32)?.reshape((1, c, 1, 1))?,
        ));
        Ok(())
    }

    /// The forward pass on unstandardised features, in evaluation mode.
    pub fn forward_eval(&self, x: &Tensor) -> Result<(Tensor, ModelOutput)> {
        let x = self.standardized(x)?;
        let out = self.model.forward(&x, &mut Mode::Eval)?;
        Ok((x, out))
    }

    /// The standardisation as model-file state tensors.
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        if let Some((m, s)) = &self.standardize {
            out.push((MEAN_KEY.to_string(), m.flatten_all()?));
            out.push((STD_KEY.to_string(), s.flatten_all()?));
        }
        Ok(out)
    }
}
