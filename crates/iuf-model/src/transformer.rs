//! The UniAD reconstruction transformer (section 3): jitter, learned positions, post-norm encoder
//! with an optional class-conditioned query (section 4.2), decoder with per-layer learned queries,
//! neighbour mask, output projection and the 14x14 anomaly map.
//!
//! Parameter names (relative to the `VarBuilder` handed to [`Transformer::new`]) follow the
//! reference `state_dict`, except that PyTorch's packed `in_proj_weight`/`in_proj_bias` become
//! separate `q_proj`, `k_proj`, `v_proj` (see `reference::map_reference_state_dict`):
//!
//! ```text
//! input_proj.{weight,bias}                       [D, C_f], [D]
//! output_proj.{weight,bias}                      [C_f, D], [C_f]
//! pos_embed.row_embed.weight                     [H, D/2]
//! pos_embed.col_embed.weight                     [W, D/2]
//! transformer.encoder.layers.{l}.self_attn.{q_proj,k_proj,v_proj,out_proj}.{weight,bias}
//! transformer.encoder.layers.{l}.{linear1,linear2,norm1,norm2}.{weight,bias}
//! transformer.decoder.layers.{l}.learned_embed.weight   [N, D]
//! transformer.decoder.layers.{l}.{self_attn,multihead_attn}.{q_proj,k_proj,v_proj,out_proj}.{weight,bias}
//! transformer.decoder.layers.{l}.{linear1,linear2,norm1,norm2,norm3}.{weight,bias}
//! transformer.decoder.norm.{weight,bias}
//! ```

use candle_core::{Device, Tensor};
use candle_nn::{Init, VarBuilder};
use rand::Rng;

use crate::config::TransformerConfig;
use crate::error::{ModelError, Result};
use crate::nn::{feed_forward, LayerNorm, Linear, MultiHeadAttention};
use crate::random::{add_dropout, randn, Mode};

/// Everything one pass of the reconstruction transformer produces.
#[derive(Debug, Clone)]
pub struct TransformerOutput {
    /// Reconstructed features [B, C_f, H, W].
    pub feature_rec: Tensor,
    /// Section 3.6: L2 norm over channels of `feature_rec - feature_align`, [B, 1, H, W].
    pub pred: Tensor,
    /// Encoder output M [B, N, D].
    pub encoder: Tensor,
    /// LN_dec(O_l) for every decoder layer l = 1..L, each [B, N, D]; the last one feeds the output
    /// projection.
    pub decoder_layers: Vec<Tensor>,
    /// Output of the FFN's second linear (before dropout and residual) of every encoder layer,
    /// then every decoder layer, each [B, N, D]: the layers of section 4.6.
    pub ffn_outputs: Vec<Tensor>,
}

/// The feed-forward sub-block that ends every layer: `norm(x + dropout(ffn(x)))`, with
/// `ffn(x) = linear2(dropout(relu(linear1(x))))` kept as the layer's FFN output (section 4.6).
#[derive(Debug, Clone)]
struct FeedForward {
    linear1: Linear,
    linear2: Linear,
    norm: LayerNorm,
    dropout: f64,
}

impl FeedForward {
    /// `linear1`, `linear2` and the layer norm `norm` under the layer's builder `vb`.
    fn new(vb: &VarBuilder<'_>, cfg: &TransformerConfig, norm: &str) -> Result<Self> {
        let d = cfg.hidden_dim;
        Ok(Self {
            linear1: Linear::new(vb.pp("linear1"), d, cfg.dim_feedforward)?,
            linear2: Linear::new(vb.pp("linear2"), cfg.dim_feedforward, d)?,
            norm: LayerNorm::new(vb.pp(norm), d, cfg.layer_norm_eps)?,
            dropout: cfg.dropout,
        })
    }

    /// The block's output; the FFN output is pushed onto `ffn_outputs`.
    fn forward(
        &self,
        x: &Tensor,
        mode: &mut Mode<'_>,
        ffn_outputs: &mut Vec<Tensor>,
    ) -> Result<Tensor> {
        let ffn = feed_forward(&self.linear1, &self.linear2, x, self.dropout, mode)?;
        let x = self
            .norm
            .forward(&add_dropout(x, &ffn, self.dropout, mode)?)?;
        ffn_outputs.push(ffn);
        Ok(x)
    }
}

/// Post-norm encoder layer (section 3.3).
#[derive(Debug, Clone)]
struct EncoderLayer {
    self_attn: MultiHeadAttention,
    norm1: LayerNorm,
    /// `linear1`, `linear2`, `norm2`.
    ffn: FeedForward,
    dropout: f64,
}

impl EncoderLayer {
    fn new(vb: VarBuilder<'_>, cfg: &TransformerConfig) -> Result<Self> {
        let d = cfg.hidden_dim;
        Ok(Self {
            self_attn: MultiHeadAttention::new(vb.pp("self_attn"), d, cfg.nheads, cfg.dropout)?,
            ffn: FeedForward::new(&vb, cfg, "norm2")?,
            norm1: LayerNorm::new(vb.pp("norm1"), d, cfg.layer_norm_eps)?,
            dropout: cfg.dropout,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        pos: &Tensor,
        cond: Option<&Tensor>,
        mask: Option<&Tensor>,
        mode: &mut Mode<'_>,
        ffn_outputs: &mut Vec<Tensor>,
    ) -> Result<Tensor> {
        let x_pos = x.broadcast_add(pos)?;
        // Section 4.2: the class condition multiplies the query only; keys keep X + P.
        let query = match cond {
            Some(c) => x_pos.mul(c)?,
            None => x_pos.clone(),
        };
        let attn = self.self_attn.forward(&query, &x_pos, x, mask, mode)?;
        let x = self
            .norm1
            .forward(&add_dropout(x, &attn, self.dropout, mode)?)?;
        self.ffn.forward(&x, mode, ffn_outputs)
    }
}

/// Decoder layer with its own learned query table (section 3.4).
#[derive(Debug, Clone)]
struct DecoderLayer {
    learned_embed: Tensor,
    self_attn: MultiHeadAttention,
    multihead_attn: MultiHeadAttention,
    norm1: LayerNorm,
    norm2: LayerNorm,
    /// `linear1`, `linear2`, `norm3`.
    ffn: FeedForward,
    dropout: f64,
}

impl DecoderLayer {
    fn new(vb: VarBuilder<'_>, cfg: &TransformerConfig) -> Result<Self> {
        let d = cfg.hidden_dim;
        let eps = cfg.layer_norm_eps;
        Ok(Self {
            learned_embed: vb.pp("learned_embed").get_with_hints(
                (cfg.num_tokens(), d),
                "weight",
                Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                },
            )?,
            self_attn: MultiHeadAttention::new(vb.pp("self_attn"), d, cfg.nheads, cfg.dropout)?,
            multihead_attn: MultiHeadAttention::new(
                vb.pp("multihead_attn"),
                d,
                cfg.nheads,
                cfg.dropout,
            )?,
            ffn: FeedForward::new(&vb, cfg, "norm3")?,
            norm1: LayerNorm::new(vb.pp("norm1"), d, eps)?,
            norm2: LayerNorm::new(vb.pp("norm2"), d, eps)?,
            dropout: cfg.dropout,
        })
    }

    /// `memory` = M, `memory_pos` = M + P, `prev` = O_{l-1}.
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        memory: &Tensor,
        memory_pos: &Tensor,
        prev: &Tensor,
        pos: &Tensor,
        mask: Option<&Tensor>,
        mode: &mut Mode<'_>,
        ffn_outputs: &mut Vec<Tensor>,
    ) -> Result<Tensor> {
        let p = self.dropout;
        // T = Q_l is the same for every image: its query projection runs once, unbatched.
        let t = self.learned_embed.unsqueeze(0)?;
        let attn =
            self.self_attn
                .forward(&t.broadcast_add(pos)?, memory_pos, memory, mask, mode)?;
        let t = self.norm1.forward(&add_dropout(
            &t.broadcast_as(attn.shape())?,
            &attn,
            p,
            mode,
        )?)?;
        let prev_pos = prev.broadcast_add(pos)?;
        let attn =
            self.multihead_attn
                .forward(&t.broadcast_add(pos)?, &prev_pos, prev, mask, mode)?;
        let t = self.norm2.forward(&add_dropout(&t, &attn, p, mode)?)?;
        self.ffn.forward(&t, mode, ffn_outputs)
    }
}

/// The reconstruction network: input projection, transformer, output projection.
#[derive(Debug, Clone)]
pub struct Transformer {
    cfg: TransformerConfig,
    input_proj: Linear,
    output_proj: Linear,
    row_embed: Tensor,
    col_embed: Tensor,
    encoder: Vec<EncoderLayer>,
    decoder: Vec<DecoderLayer>,
    decoder_norm: LayerNorm,
    /// Section 3.5 as an additive [N, N] bias (0 allowed, -inf forbidden), built once.
    mask: Option<Tensor>,
}

impl Transformer {
    pub fn new(cfg: &TransformerConfig, vb: VarBuilder<'_>) -> Result<Self> {
        cfg.check()?;
        let d = cfg.hidden_dim;
        let [h, w] = cfg.feature_size;
        let table = Init::Uniform { lo: 0.0, up: 1.0 };
        let pos = vb.pp("pos_embed");
        let row_embed = pos
            .pp("row_embed")
            .get_with_hints((h, d / 2), "weight", table)?;
        let col_embed = pos
            .pp("col_embed")
            .get_with_hints((w, d / 2), "weight", table)?;
        let tvb = vb.pp("transformer");
        let encoder = (0..cfg.num_encoder_layers)
            .map(|l| EncoderLayer::new(tvb.pp("encoder").pp("layers").pp(l), cfg))
            .collect::<Result<Vec<_>>>()?;
        let decoder = (0..cfg.num_decoder_layers)
            .map(|l| DecoderLayer::new(tvb.pp("decoder").pp("layers").pp(l), cfg))
            .collect::<Result<Vec<_>>>()?;
        let decoder_norm = LayerNorm::new(tvb.pp("decoder").pp("norm"), d, cfg.layer_norm_eps)?;
        let mask = match cfg.neighbor_mask {
            Some(size) => Some(neighbor_mask(cfg.feature_size, size, vb.device())?),
            None => None,
        };
        Ok(Self {
            cfg: cfg.clone(),
            input_proj: Linear::new(vb.pp("input_proj"), cfg.in_channels, d)?,
            output_proj: Linear::new(vb.pp("output_proj"), d, cfg.in_channels)?,
            row_embed,
            col_embed,
            encoder,
            decoder,
            decoder_norm,
            mask,
        })
    }

    pub fn config(&self) -> &TransformerConfig {
        &self.cfg
    }

    /// Names (relative to the builder's root) of the FFN output projections W2 of every encoder,
    /// then every decoder layer: the constrained layers of section 4.6.
    pub fn constrained_layers(&self) -> Vec<String> {
        let enc =
            (0..self.encoder.len()).map(|l| format!("transformer.encoder.layers.{l}.linear2"));
        let dec =
            (0..self.decoder.len()).map(|l| format!("transformer.decoder.layers.{l}.linear2"));
        enc.chain(dec).collect()
    }

    /// Section 3.2: pos(h, w) = concat(col[w], row[h]), [N, D] in row-major token order.
    pub fn position_embedding(&self) -> Result<Tensor> {
        let [h, w] = self.cfg.feature_size;
        let half = self.cfg.hidden_dim / 2;
        let col = self
            .col_embed
            .unsqueeze(0)?
            .broadcast_as((h, w, half))?
            .contiguous()?;
        let row = self
            .row_embed
            .unsqueeze(1)?
            .broadcast_as((h, w, half))?
            .contiguous()?;
        Ok(Tensor::cat(&[col, row], 2)?.reshape((h * w, 2 * half))?)
    }

    /// UniAD alone (q = X + P in every encoder layer).
    pub fn forward(
        &self,
        feature_align: &Tensor,
        mode: &mut Mode<'_>,
    ) -> Result<TransformerOutput> {
        self.forward_with_cond(feature_align, None, mode)
    }

    /// Reconstruct `feature_align` [B, C_f, H, W]. `cond`, when given, holds one class condition
    /// per encoder layer, each [B, N, D] or [B, H, W, D] (channels last, token t = W h + w), that
    /// multiplies that layer's query (section 4.2).
    pub fn forward_with_cond(
        &self,
        feature_align: &Tensor,
        cond: Option<&[Tensor]>,
        mode: &mut Mode<'_>,
    ) -> Result<TransformerOutput> {
        let tokens = feature_tokens(feature_align, self.cfg.in_channels, self.cfg.feature_size)?;
        self.forward_tokens(feature_align, &tokens, cond, mode)
    }

    /// As [`Self::forward_with_cond`] with the tokens [B, N, C_f] of `feature_align` already made.
    pub(crate) fn forward_tokens(
        &self,
        feature_align: &Tensor,
        tokens: &Tensor,
        cond: Option<&[Tensor]>,
        mode: &mut Mode<'_>,
    ) -> Result<TransformerOutput> {
        let (b, n, _) = tokens.dims3()?;
        let d = self.cfg.hidden_dim;
        let cond = match cond {
            None => None,
            Some(c) => Some(self.check_cond(c, b)?),
        };
        let tokens = self.jitter(tokens, mode)?;
        let pos = self.position_embedding()?;
        let mask = self.mask.as_ref();
        let mut ffn_outputs = Vec::with_capacity(self.encoder.len() + self.decoder.len());

        let mut x = self.input_proj.forward(&tokens)?;
        for (l, layer) in self.encoder.iter().enumerate() {
            let c = cond.as_ref().map(|c| &c[l]);
            x = layer.forward(&x, &pos, c, mask, mode, &mut ffn_outputs)?;
        }
        let memory = x;
        let memory_pos = memory.broadcast_add(&pos)?;

        let mut out = memory.clone();
        let mut decoder_layers = Vec::with_capacity(self.decoder.len());
        for layer in &self.decoder {
            out = layer.forward(
                &memory,
                &memory_pos,
                &out,
                &pos,
                mask,
                mode,
                &mut ffn_outputs,
            )?;
            decoder_layers.push(self.decoder_norm.forward(&out)?);
        }
        let last = decoder_layers.last().expect("at least one decoder layer");
        let [h, w] = self.cfg.feature_size;
        let feature_rec = self.output_proj.forward(last)?.transpose(1, 2)?.reshape((
            b,
            self.cfg.in_channels,
            h,
            w,
        ))?;
        // Section 3.6: per-position L2 distance over channels.
        let pred = (&feature_rec - feature_align)?
            .sqr()?
            .sum_keepdim(1)?
            .sqrt()?;
        debug_assert_eq!(memory.dims(), &[b, n, d]);
        Ok(TransformerOutput {
            feature_rec,
            pred,
            encoder: memory,
            decoder_layers,
            ffn_outputs,
        })
    }

    fn check_cond(&self, cond: &[Tensor], b: usize) -> Result<Vec<Tensor>> {
        let n = self.cfg.num_tokens();
        let d = self.cfg.hidden_dim;
        if cond.len() != self.encoder.len() {
            return Err(ModelError::Input {
                name: "cond".into(),
                expected: format!(
                    "{} class conditions (one per encoder layer)",
                    self.encoder.len()
                ),
                found: format!("{}", cond.len()),
            });
        }
        cond.iter()
            .enumerate()
            .map(|(l, c)| {
                if c.dim(0).ok() != Some(b) || c.elem_count() != b * n * d {
                    return Err(ModelError::Input {
                        name: format!("cond.{l}"),
                        expected: format!("[{b}, {n}, {d}] or [{b}, H, W, {d}]"),
                        found: format!("{:?}", c.dims()),
                    });
                }
                Ok(c.reshape((b, n, d))?)
            })
            .collect()
    }

    /// Section 3.1, training only: F_t += e_t * scale * ||F_t|| / C_f.
    fn jitter(&self, tokens: &Tensor, mode: &mut Mode<'_>) -> Result<Tensor> {
        let (Some(j), Mode::Train(rng)) = (&self.cfg.jitter, mode) else {
            return Ok(tokens.clone());
        };
        if rng.gen::<f64>() >= j.prob {
            return Ok(tokens.clone());
        }
        let c = self.cfg.in_channels as f64;
        let norms = tokens
            .sqr()?
            .sum_keepdim(2)?
            .sqrt()?
            .affine(j.scale / c, 0.0)?;
        let noise = randn(rng, tokens.shape(), tokens.device())?;
        Ok((tokens + noise.broadcast_mul(&norms)?)?)
    }
}

/// `feature_align` [B, C, H, W] -> tokens [B, H * W, C] (row-major, t = W h + w).
pub(crate) fn feature_tokens(
    feature_align: &Tensor,
    channels: usize,
    feature_size: [usize; 2],
) -> Result<Tensor> {
    let dims = feature_align.dims();
    let [h, w] = feature_size;
    if dims.len() != 4 || dims[1] != channels || dims[2] != h || dims[3] != w {
        return Err(ModelError::Input {
            name: "feature_align".into(),
            expected: format!("[B, {channels}, {h}, {w}]"),
            found: format!("{dims:?}"),
        });
    }
    if feature_align.dtype() != candle_core::DType::F32 {
        return Err(ModelError::Input {
            name: "feature_align".into(),
            expected: "F32".into(),
            found: format!("{:?}", feature_align.dtype()),
        });
    }
    Ok(feature_align
        .reshape((dims[0], channels, h * w))?
        .transpose(1, 2)?
        .contiguous()?)
}

/// Section 3.5: key (h2, w2) is forbidden for query (h1, w1) when |h1 - h2| <= mh / 2 and
/// |w1 - w2| <= mw / 2 (the query's own neighbourhood, itself included).
pub fn neighbor_mask(
    feature_size: [usize; 2],
    neighbor_size: [usize; 2],
    device: &Device,
) -> Result<Tensor> {
    let [h, w] = feature_size;
    let (rh, rw) = (neighbor_size[0] / 2, neighbor_size[1] / 2);
    let n = h * w;
    let mut bias = vec![0f32; n * n];
    for q in 0..n {
        let (h1, w1) = (q / w, q % w);
        for k in 0..n {
            let (h2, w2) = (k / w, k % w);
            if h1.abs_diff(h2) <= rh && w1.abs_diff(w2) <= rw {
                bias[q * n + k] = f32::NEG_INFINITY;
            }
        }
    }
    Ok(Tensor::from_vec(bias, (n, n), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbor_mask_forbids_the_clipped_7x7_neighbourhood() {
        let mask = neighbor_mask([14, 14], [7, 7], &Device::Cpu).unwrap();
        let rows = mask.to_vec2::<f32>().unwrap();
        let forbidden = |t: usize| rows[t].iter().filter(|v| v.is_infinite()).count();
        assert_eq!(forbidden(0), 16); // corner: 4 x 4
        assert_eq!(forbidden(7), 4 * 7); // top edge, column 7: rows 0..=3, columns 4..=10
        assert_eq!(forbidden(7 * 14 + 7), 49); // interior
        assert!(rows[7 * 14 + 7][7 * 14 + 7].is_infinite()); // the token itself
        assert_eq!(rows[0][4], 0.0);
        assert!(rows
            .iter()
            .flatten()
            .all(|&v| v == 0.0 || v == f32::NEG_INFINITY));
    }
}
