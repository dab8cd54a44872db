//! Model configuration: the reconstruction transformer, the discriminator, OASA, with presets.

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// Training-only feature jitter (section 3.1): `F_t += e_t * scale * ||F_t|| / C_f`, applied to the
/// whole batch with probability `prob` (drawn once per forward pass, as the reference does).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JitterConfig {
    pub scale: f64,
    pub prob: f64,
}

impl Default for JitterConfig {
    fn default() -> Self {
        Self {
            scale: 20.0,
            prob: 1.0,
        }
    }
}

/// The UniAD reconstruction transformer (section 3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransformerConfig {
    /// Backbone channels C_f (272 for EfficientNet-B4, 192 for EfficientNet-Lite0).
    pub in_channels: usize,
    /// Hidden size D.
    pub hidden_dim: usize,
    pub nheads: usize,
    pub num_encoder_layers: usize,
    pub num_decoder_layers: usize,
    pub dim_feedforward: usize,
    /// Dropout on attention weights, residual branches and the FFN inner activation.
    pub dropout: f64,
    /// Token grid [H, W]; N = H * W tokens.
    pub feature_size: [usize; 2],
    /// Neighbour mask (section 3.5) size [h, w], e.g. [7, 7]; `None` = off (IUF default).
    /// Applied to the encoder and both decoder attentions.
    pub neighbor_mask: Option<[usize; 2]>,
    /// Feature jitter during training; `None` = off.
    pub jitter: Option<JitterConfig>,
    /// LayerNorm epsilon of every transformer norm.
    pub layer_norm_eps: f64,
}

impl TransformerConfig {
    /// The paper's network: D 256, 8 heads, 4 + 4 layers, FFN 1024, dropout 0.1, jitter 20 / 1.
    pub fn paper(in_channels: usize) -> Self {
        Self {
            in_channels,
            hidden_dim: 256,
            nheads: 8,
            num_encoder_layers: 4,
            num_decoder_layers: 4,
            dim_feedforward: 1024,
            dropout: 0.1,
            feature_size: [14, 14],
            neighbor_mask: None,
            jitter: Some(JitterConfig::default()),
            layer_norm_eps: 1e-5,
        }
    }

    /// A smaller network that trains in minutes on two CPU cores: D 128, 4 heads, 2 + 2 layers.
    pub fn cpu(in_channels: usize) -> Self {
        Self {
            hidden_dim: 128,
            nheads: 4,
            num_encoder_layers: 2,
            num_decoder_layers: 2,
            dim_feedforward: 512,
            ..Self::paper(in_channels)
        }
    }

    /// A very small network for tests: D 32, 4 heads, 2 + 2 layers, FFN 64.
    pub fn tiny(in_channels: usize) -> Self {
        Self {
            hidden_dim: 32,
            nheads: 4,
            num_encoder_layers: 2,
            num_decoder_layers: 2,
            dim_feedforward: 64,
            ..Self::paper(in_channels)
        }
    }

    /// Number of tokens N.
    pub fn num_tokens(&self) -> usize {
        self.feature_size[0] * self.feature_size[1]
    }

    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Config(m));
        if self.in_channels == 0 {
            return bad("transformer.in_channels must be > 0".into());
        }
        if self.hidden_dim == 0 || self.nheads == 0 || !self.hidden_dim.is_multiple_of(self.nheads)
        {
            return bad(format!(
                "transformer.hidden_dim ({}) must be a positive multiple of transformer.nheads ({})",
                self.hidden_dim, self.nheads
            ));
        }
        if !self.hidden_dim.is_multiple_of(2) {
            return bad(format!(
                "transformer.hidden_dim ({}) must be even: the position embedding is half row, half column",
                self.hidden_dim
            ));
        }
        if self.num_encoder_layers == 0 || self.num_decoder_layers == 0 {
            return bad(format!(
                "transformer needs at least one encoder and one decoder layer, found {} + {}",
                self.num_encoder_layers, self.num_decoder_layers
            ));
        }
        if self.dim_feedforward == 0 {
            return bad("transformer.dim_feedforward must be > 0".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!(
                "transformer.dropout must lie in [0, 1), found {}",
                self.dropout
            ));
        }
        let [h, w] = self.feature_size;
        if h == 0 || w == 0 {
            return bad(format!(
                "transformer.feature_size must be positive, found {:?}",
                self.feature_size
            ));
        }
        if let Some([mh, mw]) = self.neighbor_mask {
            if mh == 0 || mw == 0 {
                return bad(format!(
                    "transformer.neighbor_mask must be positive, found {:?}",
                    [mh, mw]
                ));
            }
            // A query whose neighbourhood covers the whole grid would have no key left.
            if h <= 2 * (mh / 2) + 1 && w <= 2 * (mw / 2) + 1 {
                return bad(format!(
                    "transformer.neighbor_mask {:?} hides every key of some query on a {:?} grid",
                    [mh, mw],
                    self.feature_size
                ));
            }
        }
        if let Some(j) = &self.jitter {
            if !(j.scale.is_finite() && j.scale >= 0.0 && (0.0..=1.0).contains(&j.prob)) {
                return bad(format!(
                    "transformer.jitter needs scale >= 0 and prob in [0, 1], found scale {} prob {}",
                    j.scale, j.prob
                ));
            }
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return bad(format!(
                "transformer.layer_norm_eps must be > 0, found {}",
                self.layer_norm_eps
            ));
        }
        Ok(())
    }
}

/// What the discriminator looks at (section 4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiscriminatorInput {
    /// The frozen backbone tokens `feature_align` (default).
    FeatureTokens,
    /// Non-overlapping `patch_size` x `patch_size` RGB patches of the input image, one per token.
    ImagePatches { patch_size: usize },
}

/// The object classifier of section 4.1: a small pre-norm ViT on the 14x14 token grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiscriminatorConfig {
    pub input: DiscriminatorInput,
    /// Number of ViT blocks; equals the encoder depth when OASA is on (one Z_l per layer).
    pub depth: usize,
    pub nheads: usize,
    /// MLP inner width (D -> mlp_dim -> D, GELU).
    pub mlp_dim: usize,
    pub layer_norm_eps: f64,
}

impl DiscriminatorConfig {
    /// Section 4.1: feature tokens, `depth` blocks, 4 heads, MLP 128.
    pub fn paper(depth: usize) -> Self {
        Self {
            input: DiscriminatorInput::FeatureTokens,
            depth,
            nheads: 4,
            mlp_dim: 128,
            layer_norm_eps: 1e-5,
        }
    }
}

/// Whether the discriminator's features multiply the encoder queries (section 4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OasaMode {
    /// IUF: q = (X + P) * Z_l.
    On,
    /// Plain UniAD: q = X + P (the discriminator still classifies).
    Off,
}

/// The whole IUF network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub transformer: TransformerConfig,
    pub discriminator: DiscriminatorConfig,
    /// Number of classifier outputs K, fixed at creation (capacity for future objects).
    pub num_classes: usize,
    pub oasa: OasaMode,
}

impl ModelConfig {
    /// The side of the square input images: the token grid times the backbone's stride
    /// ([`crate::MAP_STRIDE`]). The one place the image size is derived from a model.
    pub fn image_size(&self) -> usize {
        self.transformer.feature_size[0] * crate::MAP_STRIDE
    }

    fn from_transformer(transformer: TransformerConfig, num_classes: usize) -> Self {
        let depth = transformer.num_encoder_layers;
        Self {
            transformer,
            discriminator: DiscriminatorConfig::paper(depth),
            num_classes,
            oasa: OasaMode::On,
        }
    }

    /// The paper's IUF network (section 3 defaults, OASA on).
    pub fn paper(in_channels: usize, num_classes: usize) -> Self {
        Self::from_transformer(TransformerConfig::paper(in_channels), num_classes)
    }

    /// CPU preset: D 128, 4 heads, 2 + 2 layers, 2 discriminator blocks.
    pub fn cpu(in_channels: usize, num_classes: usize) -> Self {
        Self::from_transformer(TransformerConfig::cpu(in_channels), num_classes)
    }

    /// Test preset: D 32, 2 + 2 layers, discriminator MLP 32.
    pub fn tiny(in_channels: usize, num_classes: usize) -> Self {
        let mut cfg = Self::from_transformer(TransformerConfig::tiny(in_channels), num_classes);
        cfg.discriminator.mlp_dim = 32;
        cfg
    }

    pub fn check(&self) -> Result<()> {
        self.transformer.check()?;
        let d = &self.discriminator;
        let bad = |m: String| Err(ModelError::Config(m));
        if d.depth == 0 || d.mlp_dim == 0 {
            return bad(format!(
                "discriminator needs depth > 0 and mlp_dim > 0, found {} and {}",
                d.depth, d.mlp_dim
            ));
        }
        let hidden = self.transformer.hidden_dim;
        if d.nheads == 0 || !hidden.is_multiple_of(d.nheads) {
            return bad(format!(
                "transformer.hidden_dim ({hidden}) must be a multiple of discriminator.nheads ({})",
                d.nheads
            ));
        }
        if !(d.layer_norm_eps.is_finite() && d.layer_norm_eps > 0.0) {
            return bad(format!(
                "discriminator.layer_norm_eps must be > 0, found {}",
                d.layer_norm_eps
            ));
        }
        if let DiscriminatorInput::ImagePatches { patch_size } = d.input {
            if patch_size == 0 {
                return bad("discriminator patch_size must be > 0".into());
            }
        }
        if self.oasa == OasaMode::On && d.depth != self.transformer.num_encoder_layers {
            return bad(format!(
                "object-aware attention needs one discriminator block per encoder layer: depth {} != {} encoder layers",
                d.depth, self.transformer.num_encoder_layers
            ));
        }
        if self.num_classes == 0 {
            return bad("num_classes must be > 0".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_pass_check() {
        for cfg in [
            ModelConfig::paper(272, 15),
            ModelConfig::cpu(192, 15),
            ModelConfig::tiny(16, 3),
        ] {
            cfg.check().unwrap();
        }
    }

    #[test]
    fn check_rejects_bad_configs() {
        let mut cfg = ModelConfig::paper(272, 15);
        cfg.transformer.nheads = 7;
        assert!(matches!(cfg.check(), Err(ModelError::Config(m)) if m.contains("nheads")));

        let mut cfg = ModelConfig::paper(272, 15);
        cfg.discriminator.depth = 3;
        assert!(matches!(cfg.check(), Err(ModelError::Config(m)) if m.contains("depth 3")));
        cfg.oasa = OasaMode::Off;
        cfg.check().unwrap();

        let mut cfg = ModelConfig::tiny(8, 2);
        cfg.transformer.feature_size = [4, 4];
        cfg.transformer.neighbor_mask = Some([7, 7]);
        assert!(cfg.check().is_err());

        let mut cfg = ModelConfig::tiny(8, 2);
        cfg.num_classes = 0;
        assert!(cfg.check().is_err());
    }

    #[test]
    fn config_json_roundtrip() {
        let mut cfg = ModelConfig::paper(272, 15);
        cfg.transformer.neighbor_mask = Some([7, 7]);
        cfg.discriminator.input = DiscriminatorInput::ImagePatches { patch_size: 16 };
        let json = serde_json::to_string(&cfg).unwrap();
        let back: ModelConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(cfg, back);
    }
}
