//! The memory builder and scorer of the `memory` and `iuf+memory` methods: one
//! [`PatchMemory`] per object, built from that object's own good training images only and never
//! touched again (section 10), so learning a new object cannot change an old object's maps.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use iuf_model::{MemoryConfig, PatchMemory};

use crate::error::{Error, Result};
use crate::gaussian::{GaussianConfig, PositionGaussian};

/// Prefix of the memory tensors in the model file (`state.memory.<object>`).
pub const MEMORY_PREFIX: &str = "state.memory.";
/// Prefix of the Gaussian tensors (`state.gaussian.<object>.{mean,precision,proj}`).
pub const GAUSSIAN_PREFIX: &str = "state.gaussian.";

/// Every object's memory (and its per-position Gaussian, when the method fits one).
#[derive(Debug, Clone, Default)]
pub struct ObjectMemories {
    banks: BTreeMap<String, PatchMemory>,
    gaussians: BTreeMap<String, PositionGaussian>,
}

impl ObjectMemories {
    /// No object yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Objects with a memory.
    pub fn classes(&self) -> Vec<String> {
        self.banks.keys().cloned().collect()
    }

    /// The memory of `class`.
    pub fn get(&self, class: &str) -> Option<&PatchMemory> {
        self.banks.get(class)
    }

    /// Builds the memory of a new object from its training images' memory features
    /// `[N, C_m, h, w]`. An object's memory is built once: rebuilding one is an error.
    pub fn build(&mut self, class: &str, features: &Tensor, cfg: &MemoryConfig) -> Result<()> {
        if self.banks.contains_key(class) {
            return Err(Error::Config(format!(
                "the memory of `{class}` exists already; an object is learned once"
            )));
        }
        let n = features.dim(0)?;
        if n == 0 {
            return Err(Error::Msg(format!(
                "memory of `{class}`: no training images (put defect-free images in {class}/train/good)"
            )));
        }
        if n < 6 {
            tracing::warn!(
                "`{class}` has only {n} training image(s): its memory covers little of the normal \
                 variation, expect false alarms; more defect-free images make it better"
            );
        }
        // The seed depends on the object, so two objects never share a draw by accident.
        let seed = cfg.seed ^ fnv1a(class.as_bytes());
        let memory = PatchMemory::build(
            features,
            &MemoryConfig {
                seed,
                ..cfg.clone()
            },
        )?;
        // Stored as f16: round now, so the model in memory scores exactly as the file will.
        let memory = if cfg.f16 {
            PatchMemory::from_bank(memory.bank().to_dtype(DType::F16)?.to_dtype(DType::F32)?)?
        } else {
            memory
        };
        self.banks.insert(class.to_string(), memory);
        Ok(())
    }

    /// Fits the per-position Gaussian of a new object from its training images' `feature_align`.
    /// With `half`, the precision matrices are rounded to f16 now, as the model file stores them.
    pub fn fit_gaussian(
        &mut self,
        class: &str,
        align: &Tensor,
        cfg: &GaussianConfig,
        half: bool,
    ) -> Result<()> {
        if self.gaussians.contains_key(class) {
            return Err(Error::Config(format!(
                "the Gaussian of `{class}` exists already; an object is learned once"
            )));
        }
        let g = PositionGaussian::fit(align, cfg)?;
        let g = if half {
            PositionGaussian::from_state(&g.to_state("", DType::F16)?, "")?
                .expect("written just now")
        } else {
            g
        };
        self.gaussians.insert(class.to_string(), g);
        Ok(())
    }

    /// Raw Gaussian maps of `align` `[n, C, g, g]` for `class`: `[n, 1, g, g]` (None when the
    /// object has no Gaussian).
    pub fn gaussian_maps(&self, class: &str, align: &Tensor) -> Result<Option<Tensor>> {
        self.gaussians
            .get(class)
            .map(|g| g.score(align))
            .transpose()
    }

    /// Raw maps of `features` `[n, C_m, h, w]` against `class`'s memory: `[n, 1, h, w]`.
    pub fn raw_maps(&self, class: &str, features: &Tensor) -> Result<Tensor> {
        let memory = self.banks.get(class).ok_or_else(|| {
            Error::Msg(format!(
                "no memory for `{class}` (objects with one: {:?})",
                self.classes()
            ))
        })?;
        Ok(memory.score(features)?)
    }

    /// The memories as model-file state tensors (f16 when `half`: half the bytes).
    pub fn to_state(&self, half: bool) -> Result<Vec<(String, Tensor)>> {
        let dtype = if half { DType::F16 } else { DType::F32 };
        let mut out = self
            .banks
            .iter()
            .map(|(c, m)| {
                Ok((
                    format!("{MEMORY_PREFIX}{c}"),
                    m.bank().to_dtype(dtype)?.to_device(&Device::Cpu)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        for (c, g) in &self.gaussians {
            out.extend(g.to_state(&format!("{GAUSSIAN_PREFIX}{c}."), dtype)?);
        }
        Ok(out)
    }

    /// Reads the memories back from a model file's state tensors.
    pub fn from_state(state: &[(String, Tensor)], device: &Device) -> Result<Self> {
        let mut banks = BTreeMap::new();
        for (name, t) in state {
            if let Some(class) = name.strip_prefix(MEMORY_PREFIX) {
                let bank = t.to_dtype(DType::F32)?.to_device(device)?;
                banks.insert(class.to_string(), PatchMemory::from_bank(bank)?);
            }
        }
        let mut gaussians = BTreeMap::new();
        for class in banks.keys() {
            if let Some(g) =
                PositionGaussian::from_state(state, &format!("{GAUSSIAN_PREFIX}{class}."))?
            {
                gaussians.insert(class.clone(), g);
            }
        }
        Ok(Self { banks, gaussians })
    }
}

/// FNV-1a of `bytes`: a stable hash (std's hasher may change between releases).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
