//! The IUF network: discriminator + object-aware reconstruction transformer (sections 3, 4.1, 4.2).

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};

use crate::config::{DiscriminatorInput, ModelConfig, OasaMode};
use crate::discriminator::{image_patches, Discriminator};
use crate::error::{ModelError, Result};
use crate::random::Mode;
use crate::transformer::{feature_tokens, Transformer};

/// Everything one forward pass of [`IufModel`] produces.
#[derive(Debug, Clone)]
pub struct ModelOutput {
    /// Reconstructed features [B, C_f, H, W] (target: `feature_align`, loss L_rec = MSE).
    pub feature_rec: Tensor,
    /// 14x14 anomaly map [B, 1, H, W]: L2 over channels of `feature_rec - feature_align`.
    pub pred: Tensor,
    /// Discriminator class logits [B, K] (trained by cross-entropy only).
    pub logits: Tensor,
    /// LN_dec(O_1..O_{L-1}), each [B, N, D]: the intermediate decoder features of section 4.4.
    pub intermediate: Vec<Tensor>,
    /// FFN output (W2, before dropout and residual) of every encoder then decoder layer, each
    /// [B, N, D], in the order of [`IufModel::constrained_layers`].
    pub ffn_outputs: Vec<Tensor>,
    /// Encoder output M [B, N, D].
    pub encoder: Tensor,
    /// LN_dec(O_1..O_L), each [B, N, D].
    pub decoder_layers: Vec<Tensor>,
}

/// UniAD's reconstruction transformer with IUF's discriminator and object-aware attention.
///
/// Parameter names: the transformer's at the root of the `VarBuilder` (see [`crate::transformer`]),
/// the discriminator's under `discriminator.` (see [`crate::discriminator`]).
#[derive(Debug, Clone)]
pub struct IufModel {
    cfg: ModelConfig,
    transformer: Transformer,
    discriminator: Discriminator,
}

impl IufModel {
    /// Builds the model; with a `VarMap`-backed builder, fresh variables get the initialisation of
    /// section 3.7 (and the same rules for the discriminator).
    pub fn new(cfg: &ModelConfig, vb: VarBuilder<'_>) -> Result<Self> {
        cfg.check()?;
        let t = &cfg.transformer;
        Ok(Self {
            cfg: cfg.clone(),
            transformer: Transformer::new(t, vb.clone())?,
            discriminator: Discriminator::new(
                &cfg.discriminator,
                t.in_channels,
                t.hidden_dim,
                cfg.num_classes,
                vb.pp("discriminator"),
            )?,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn transformer(&self) -> &Transformer {
        &self.transformer
    }

    pub fn discriminator(&self) -> &Discriminator {
        &self.discriminator
    }

    /// VarMap names of the FFN output projections W2 (section 4.6), e.g.
    /// `transformer.encoder.layers.0.linear2`; the parameters are `<name>.weight` [D, FF] and
    /// `<name>.bias` [D]. Same order as [`ModelOutput::ffn_outputs`].
    pub fn constrained_layers(&self) -> Vec<String> {
        self.transformer.constrained_layers()
    }

    /// Every parameter name and shape this config needs, sorted by name.
    pub fn expected_tensors(cfg: &ModelConfig) -> Result<Vec<(String, Vec<usize>)>> {
        let varmap = VarMap::new();
        Self::new(
            cfg,
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        )?;
        let data = varmap.data().lock().expect("varmap lock");
        let mut names: Vec<_> = data
            .iter()
            .map(|(k, v)| (k.clone(), v.dims().to_vec()))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Forward pass on `feature_align` [B, C_f, H, W] (discriminator on feature tokens).
    pub fn forward(&self, feature_align: &Tensor, mode: &mut Mode<'_>) -> Result<ModelOutput> {
        if let DiscriminatorInput::ImagePatches { .. } = self.cfg.discriminator.input {
            return Err(ModelError::Input {
                name: "image".into(),
                expected: "the input image (the discriminator reads image patches): use forward_with_image".into(),
                found: "none".into(),
            });
        }
        self.run(feature_align, None, mode)
    }

    /// Forward pass when the discriminator reads image patches: `image` [B, 3, 224, 224].
    pub fn forward_with_image(
        &self,
        feature_align: &Tensor,
        image: &Tensor,
        mode: &mut Mode<'_>,
    ) -> Result<ModelOutput> {
        self.run(feature_align, Some(image), mode)
    }

    fn run(
        &self,
        feature_align: &Tensor,
        image: Option<&Tensor>,
        mode: &mut Mode<'_>,
    ) -> Result<ModelOutput> {
        let t = &self.cfg.transformer;
        let tokens = feature_tokens(feature_align, t.in_channels, t.feature_size)?;
        let disc_in = match (self.cfg.discriminator.input, image) {
            (DiscriminatorInput::ImagePatches { patch_size }, Some(image)) => {
                image_patches(image, patch_size, t.feature_size)?
            }
            // Section 4.1: the frozen tokens, before jitter.
            _ => tokens.clone(),
        };
        let disc = self.discriminator.forward(&disc_in)?;
        let cond = match self.cfg.oasa {
            // Section 4.2: Z_l detached, so L_rec never trains the discriminator.
            OasaMode::On => Some(disc.features.iter().map(Tensor::detach).collect::<Vec<_>>()),
            OasaMode::Off => None,
        };
        let out = self
            .transformer
            .forward_tokens(feature_align, &tokens, cond.as_deref(), mode)?;
        let l = out.decoder_layers.len();
        Ok(ModelOutput {
            feature_rec: out.feature_rec,
            pred: out.pred,
            logits: disc.logits,
            intermediate: out.decoder_layers[..l - 1].to_vec(),
            ffn_outputs: out.ffn_outputs,
            encoder: out.encoder,
            decoder_layers: out.decoder_layers,
        })
    }
}
