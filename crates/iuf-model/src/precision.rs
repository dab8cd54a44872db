//! The arithmetic of inference: f32, or bf16 products with f32 accumulation (`iuf_bf16`).
//!
//! A bf16 inference runs inside [`iuf_bf16::scoped`]: the linear layers (`nn::Linear`, the
//! feed-forward pair fused) and the patch memory's distance products then multiply in bf16, and
//! on AMX CPUs the attention heads too (`ops::attention`); everything else (the backbone, layer
//! norm, softmax, maps) stays f32.
//!
//! Training with `Bf16` on a CPU with AMX is mixed precision ([`Precision::resolve_training`],
//! [`crate::ops::mixed_precision_training`]): the linear layers' forward and backward products in
//! bf16 with f32 accumulation, master weights, gradients and optimizer in f32. `Auto` and `F32`
//! train in f32, as does `Bf16` without AMX; calibration is always f32.

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// How inference multiplies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 everywhere (the default).
    #[default]
    F32,
    /// bf16 products with f32 accumulation; an error on CPUs without AVX-512 BF16.
    Bf16,
    /// bf16 where it is faster than f32: CPUs with AMX (AMX-TILE and AMX-BF16, granted by the
    /// kernel), f32 elsewhere. On CPUs with AVX-512 BF16 but no AMX, `Bf16` still runs the
    /// AVX-512 kernel, but `Auto` does not choose it: on the Xeon it was measured on, `vdpbf16ps`
    /// issues at half the rate of f32 FMAs and its products ran at 0.46-0.80x the f32 ones
    /// (`docs/results/performance.md`). (AMD Zen 4 may be faster with it; not measured.)
    Auto,
}

impl Precision {
    /// The bf16 kernel to run inference with, `None` for f32. `Bf16` on a CPU without
    /// AVX-512 BF16 is an error naming the missing feature; `Auto` is bf16 only with AMX and falls
    /// back to f32 silently.
    pub fn resolve(self) -> Result<Option<iuf_bf16::Bf16Cpu>> {
        match self {
            Precision::F32 => Ok(None),
            Precision::Auto => Ok(iuf_bf16::Bf16Cpu::detect().filter(|c| c.amx())),
            Precision::Bf16 => iuf_bf16::Bf16Cpu::detect().map(Some).ok_or_else(|| {
                ModelError::Config(
                    "precision bf16 needs a CPU with AVX-512 BF16 (avx512bf16), which this one \
                     lacks; use precision f32 or auto"
                        .into(),
                )
            }),
        }
    }

    /// The bf16 kernel for mixed-precision training, `None` for f32: `Bf16` on a CPU with AMX
    /// (an error without AVX-512 BF16, as in [`Precision::resolve`]; f32 with AVX-512 BF16 but no
    /// AMX, where the bf16 products are slower than f32 ones). `Auto` trains in f32: it has not
    /// been shown to lose nothing against f32 training.
    pub fn resolve_training(self) -> Result<Option<iuf_bf16::Bf16Cpu>> {
        match self {
            Precision::F32 | Precision::Auto => Ok(None),
            Precision::Bf16 => Ok(self.resolve()?.filter(|c| c.amx())),
        }
    }

    /// `f32`, `bf16` or `auto`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Auto => "auto",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            "auto" => Ok(Precision::Auto),
            other => Err(format!(
                "unknown precision `{other}`: expected f32, bf16 or auto"
            )),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
