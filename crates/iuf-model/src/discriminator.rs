//! IUF's object classifier (section 4.1): a pre-norm ViT on the token grid whose block outputs
//! Z_1..Z_L condition the encoder queries (section 4.2) and whose head predicts the class.
//!
//! Parameter names (under `discriminator.`):
//!
//! ```text
//! stem.{weight,bias}                                  [D, C_in], [D]  (C_in = C_f or 3 p^2)
//! blocks.{l}.norm1.{weight,bias}
//! blocks.{l}.attn.{q_proj,k_proj,v_proj,out_proj}.{weight,bias}
//! blocks.{l}.norm2.{weight,bias}
//! blocks.{l}.mlp.fc1.{weight,bias}                    [mlp, D]
//! blocks.{l}.mlp.fc2.{weight,bias}                    [D, mlp]
//! norm.{weight,bias}
//! head.fc1.{weight,bias}                              [D, D]
//! head.fc2.{weight,bias}                              [K, D]
//! ```

use candle_core::Tensor;
use candle_nn::VarBuilder;

use crate::config::{DiscriminatorConfig, DiscriminatorInput};
use crate::error::{ModelError, Result};
use crate::nn::{mean_tokens, LayerNorm, Linear, MultiHeadAttention};
use crate::random::Mode;

/// Pre-norm ViT block: x += MHA(LN1 x); x += MLP(LN2 x), full attention, no dropout.
#[derive(Debug, Clone)]
struct Block {
    norm1: LayerNorm,
    attn: MultiHeadAttention,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl Block {
    fn new(vb: VarBuilder<'_>, cfg: &DiscriminatorConfig, dim: usize) -> Result<Self> {
        Ok(Self {
            norm1: LayerNorm::new(vb.pp("norm1"), dim, cfg.layer_norm_eps)?,
            attn: MultiHeadAttention::new(vb.pp("attn"), dim, cfg.nheads, 0.0)?,
            norm2: LayerNorm::new(vb.pp("norm2"), dim, cfg.layer_norm_eps)?,
            fc1: Linear::new(vb.pp("mlp").pp("fc1"), dim, cfg.mlp_dim)?,
            fc2: Linear::new(vb.pp("mlp").pp("fc2"), cfg.mlp_dim, dim)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut eval = Mode::Eval;
        let y = self.norm1.forward(x)?;
        let x = (x + self.attn.forward(&y, &y, &y, None, &mut eval)?)?;
        let y = self.fc1.forward(&self.norm2.forward(&x)?)?.gelu_erf()?;
        Ok((&x + self.fc2.forward(&y)?)?)
    }
}

/// Block features and class logits of one discriminator pass.
#[derive(Debug, Clone)]
pub struct DiscriminatorOutput {
    /// Z_1..Z_L, each [B, N, D] (not detached: the caller detaches before conditioning).
    pub features: Vec<Tensor>,
    /// Class logits [B, K].
    pub logits: Tensor,
}

/// The classifier of section 4.1.
#[derive(Debug, Clone)]
pub struct Discriminator {
    cfg: DiscriminatorConfig,
    stem: Linear,
    blocks: Vec<Block>,
    norm: LayerNorm,
    head_fc1: Linear,
    head_fc2: Linear,
}

impl Discriminator {
    /// `in_channels` = C_f (feature tokens); `dim` = D of the transformer; `num_classes` = K.
    pub fn new(
        cfg: &DiscriminatorConfig,
        in_channels: usize,
        dim: usize,
        num_classes: usize,
        vb: VarBuilder<'_>,
    ) -> Result<Self> {
        let stem_in = match cfg.input {
            DiscriminatorInput::FeatureTokens => in_channels,
            DiscriminatorInput::ImagePatches { patch_size } => 3 * patch_size * patch_size,
        };
        let blocks = (0..cfg.depth)
            .map(|l| Block::new(vb.pp("blocks").pp(l), cfg, dim))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            stem: Linear::new(vb.pp("stem"), stem_in, dim)?,
            blocks,
            norm: LayerNorm::new(vb.pp("norm"), dim, cfg.layer_norm_eps)?,
            head_fc1: Linear::new(vb.pp("head").pp("fc1"), dim, dim)?,
            head_fc2: Linear::new(vb.pp("head").pp("fc2"), dim, num_classes)?,
        })
    }

    pub fn config(&self) -> &DiscriminatorConfig {
        &self.cfg
    }

    /// `inputs` [B, N, C_in]: feature tokens or flattened image patches (see [`image_patches`]).
    pub fn forward(&self, inputs: &Tensor) -> Result<DiscriminatorOutput> {
        let mut x = self.stem.forward(inputs)?;
        let mut features = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            x = block.forward(&x)?;
            features.push(x.clone());
        }
        // Head: final norm, mean over tokens, Linear -> ReLU -> Linear.
        let pooled = mean_tokens(&self.norm.forward(&x)?)?;
        let logits = self
            .head_fc2
            .forward(&self.head_fc1.forward(&pooled)?.relu()?)?;
        Ok(DiscriminatorOutput { features, logits })
    }
}

/// RGB image [B, 3, H p, W p] -> non-overlapping patches [B, H W, 3 p p] in row-major order.
pub fn image_patches(image: &Tensor, patch_size: usize, grid: [usize; 2]) -> Result<Tensor> {
    let [h, w] = grid;
    let p = patch_size;
    let dims = image.dims();
    if dims.len() != 4 || dims[1] != 3 || dims[2] != h * p || dims[3] != w * p {
        return Err(ModelError::Input {
            name: "image".into(),
            expected: format!("[B, 3, {}, {}]", h * p, w * p),
            found: format!("{dims:?}"),
        });
    }
    let b = dims[0];
    Ok(image
        .reshape((b, 3, h, p, w, p))?
        .permute((0, 2, 4, 1, 3, 5))?
        .contiguous()?
        .reshape((b, h * w, 3 * p * p))?)
}
