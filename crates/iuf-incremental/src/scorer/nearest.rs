//! The nearest-neighbour memory of the `memory` and `iuf+memory` methods: one [`PatchMemory`] per
//! object, built from that object's own good training images only and never touched again
//! (section 10), so learning a new object cannot change an old object's maps.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use iuf_model::{LoadedModel, MemoryConfig, PatchMemory};

use super::interface::{
    fnv1a, per_object_maps, per_object_state, Batch, FeatureKind, Maps, Scorer, Step, Trained,
};
use crate::config::TrainConfig;
use crate::error::{Error, Result};
use crate::step::StepData;

/// Prefix of the memory tensors in the model file (`state.memory.<object>`).
pub const MEMORY_PREFIX: &str = "state.memory.";

/// Every object's memory of normal patch features.
pub struct NearestNeighbour {
    banks: BTreeMap<String, PatchMemory>,
}

impl NearestNeighbour {
    /// No object yet, or the memories of a model file.
    pub fn new(device: &Device, from: Option<&LoadedModel>) -> Result<Self> {
        let mut banks = BTreeMap::new();
        for (class, t) in per_object_state(from, MEMORY_PREFIX) {
            // Held as stored (f16 by default): widened per scoring call.
            banks.insert(
                class.to_string(),
                PatchMemory::from_bank(t.to_device(device)?)?,
            );
        }
        Ok(Self { banks })
    }

    /// Builds the memory of a new object from its training images' memory features
    /// `[N, C_m, h, w]`. An object's memory is built once: rebuilding one is an error.
    fn build(&mut self, class: &str, features: &Tensor, cfg: &MemoryConfig) -> Result<()> {
        if self.banks.contains_key(class) {
            return Err(Error::Config(format!(
                "the memory of `{class}` exists already; an object is learned once"
            )));
        }
        let memory = build_memory(class, class, features, cfg)?;
        self.banks.insert(class.to_string(), memory);
        Ok(())
    }
}

/// The memory of `class` from its training images' memory features `[N, C_m, h, w]`, its draws
/// seeded by `key` (the object, or the object and a tile position), rounded to f16 when the
/// model file stores it so.
pub(crate) fn build_memory(
    class: &str,
    key: &str,
    features: &Tensor,
    cfg: &MemoryConfig,
) -> Result<PatchMemory> {
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
    let memory = PatchMemory::build(features, &seeded(cfg, key))?;
    as_stored(memory, cfg)
}

/// `cfg` with its seed mixed with `key`: the seed depends on the object (and tile position), so
/// two objects never share a draw by accident.
fn seeded(cfg: &MemoryConfig, key: &str) -> MemoryConfig {
    MemoryConfig {
        seed: cfg.seed ^ fnv1a(key.as_bytes()),
        ..cfg.clone()
    }
}

/// `memory` as the model file will hold it: stored as f16, rounded now (and held so), so that
/// the model in memory scores exactly as the file will.
fn as_stored(memory: PatchMemory, cfg: &MemoryConfig) -> Result<PatchMemory> {
    Ok(if cfg.f16 {
        PatchMemory::from_bank(memory.bank().to_dtype(DType::F16)?)?
    } else {
        memory
    })
}

/// `old` grown with the patches of more good images' memory features `[N, C_m, h, w]` (a
/// coreset of both, same cap), seeded by `key` as [`build_memory`] is, rounded like it.
pub(crate) fn extend_memory(
    class: &str,
    key: &str,
    old: &PatchMemory,
    features: &Tensor,
    cfg: &MemoryConfig,
) -> Result<PatchMemory> {
    if features.dim(0)? == 0 {
        return Err(Error::Msg(format!("no good images to add to `{class}`")));
    }
    let memory = old.extend(&features.to_device(old.bank().device())?, &seeded(cfg, key))?;
    as_stored(memory, cfg)
}

impl Scorer for NearestNeighbour {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn features(&self) -> FeatureKind {
        FeatureKind::AlignAndMemory
    }

    fn weight(&self, cfg: &TrainConfig) -> f64 {
        cfg.fusion.memory
    }

    fn learn(&mut self, step: &Step<'_>, train: &StepData<'_>) -> Result<Option<Trained>> {
        let memory = train.memory.ok_or_else(|| {
            Error::Msg(format!(
                "`{}` needs the memory features of the training images",
                step.strategy
            ))
        })?;
        for object in step.objects(train) {
            let (c, rows) = object?;
            let mine = memory.index_select(&rows, 0)?;
            let t = std::time::Instant::now();
            self.build(c, &mine, &step.cfg.memory)?;
            tracing::info!(
                class = %c,
                images = mine.dim(0)?,
                patches = self.patches(c).unwrap_or(0),
                seconds = t.elapsed().as_secs_f64(),
                "memory built"
            );
        }
        Ok(None)
    }

    fn knows(&self, object: &str) -> bool {
        self.banks.contains_key(object)
    }

    fn can_add_good(&self, object: &str) -> Result<()> {
        if self.knows(object) {
            Ok(())
        } else {
            Err(Error::Msg(format!(
                "no memory for `{object}` to add images to"
            )))
        }
    }

    fn add_good(&mut self, object: &str, cfg: &TrainConfig, train: &StepData<'_>) -> Result<()> {
        self.can_add_good(object)?;
        let memory = train.memory.ok_or_else(|| {
            Error::Msg("adding to the memory needs the new images' memory features".into())
        })?;
        let t = std::time::Instant::now();
        let grown = extend_memory(object, object, &self.banks[object], memory, &cfg.memory)?;
        tracing::info!(
            class = %object,
            images = memory.dim(0)?,
            patches = grown.len(),
            seconds = t.elapsed().as_secs_f64(),
            "memory extended"
        );
        self.banks.insert(object.to_string(), grown);
        Ok(())
    }

    fn maps(&self, batch: &Batch<'_>) -> Result<Maps> {
        let memory = batch.images.memory.ok_or_else(|| {
            Error::Msg(
                "the memory scores images by their memory features, which are missing".into(),
            )
        })?;
        per_object_maps(
            batch,
            "memory",
            batch.cfg.memory.blur_sigma,
            |object, rows| {
                let bank = self.banks.get(object).ok_or_else(|| {
                    Error::Msg(format!(
                        "no memory for `{object}` (objects with one: {:?})",
                        self.banks.keys().collect::<Vec<_>>()
                    ))
                })?;
                Ok(bank.score(&memory.index_select(rows, 0)?)?)
            },
        )
    }

    fn state(&self, cfg: &TrainConfig) -> Result<Vec<(String, Tensor)>> {
        let dtype = cfg.memory.stored_dtype();
        self.banks
            .iter()
            .map(|(c, m)| {
                Ok((
                    format!("{MEMORY_PREFIX}{c}"),
                    m.bank().to_dtype(dtype)?.to_device(&Device::Cpu)?,
                ))
            })
            .collect()
    }

    fn patches(&self, object: &str) -> Option<usize> {
        self.banks.get(object).map(|m| m.len())
    }
}
