//! The tiled view's memory (issue 22): a nearest-neighbour memory of the patches of the tiles
//! each image is cut into at a working resolution, so a defect too small for the whole view at
//! 224 pixels covers several feature cells of its tile. Per object, one memory shared by every
//! tile position, or one per position (`TileConfig::per_position`) for products that lie in the
//! same place in every image. Each tile's map is upsampled to its footprint, the tiles are
//! stitched (overlaps averaged) and smoothed like the whole view's memory map; the calibrator
//! normalises it under the name `tiles` and fuses it with the whole view's maps.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use iuf_model::{LoadedModel, MemoryConfig, PatchMemory};

use super::interface::{
    by_object, per_object_state, Batch, FeatureKind, Maps, Scorer, Step, Trained,
};
use super::nearest::{build_memory, extend_memory};
use crate::config::{TileConfig, TrainConfig};
use crate::error::{Error, Result};
use crate::step::StepData;

/// Prefix of the tiled view's memories in the model file: `state.tiles.<object>` (shared) or
/// `state.tiles.<object>/<position>` (per position; `/` cannot occur in a folder name).
pub const TILES_PREFIX: &str = "state.tiles.";

/// Every object's memory of its tiles' normal patches.
pub struct TiledMemory {
    cfg: TileConfig,
    /// By `<object>` or `<object>/<position>`.
    banks: BTreeMap<String, PatchMemory>,
}

impl TiledMemory {
    /// No object yet, or the memories of a model file.
    pub fn new(cfg: &TileConfig, device: &Device, from: Option<&LoadedModel>) -> Result<Self> {
        let mut banks = BTreeMap::new();
        for (key, t) in per_object_state(from, TILES_PREFIX) {
            banks.insert(
                key.to_string(),
                PatchMemory::from_bank(t.to_device(device)?)?,
            );
        }
        Ok(Self {
            cfg: cfg.clone(),
            banks,
        })
    }

    fn key(object: &str, position: Option<usize>) -> String {
        match position {
            Some(p) => format!("{object}/{p}"),
            None => object.to_string(),
        }
    }

    fn bank(&self, object: &str, position: Option<usize>) -> Result<&PatchMemory> {
        self.banks
            .get(&Self::key(object, position))
            .ok_or_else(|| Error::Msg(format!("the tiled view has no memory for `{object}`")))
    }
}

impl Scorer for TiledMemory {
    fn name(&self) -> &'static str {
        "tiles"
    }

    fn features(&self) -> FeatureKind {
        FeatureKind::AlignAndMemory
    }

    fn tiled(&self) -> bool {
        true
    }

    fn weight(&self, _cfg: &TrainConfig) -> f64 {
        self.cfg.weight
    }

    fn learn(&mut self, step: &Step<'_>, train: &StepData<'_>) -> Result<Option<Trained>> {
        let tiles = train.tiles.ok_or_else(|| {
            Error::Msg(
                "the tiled view needs the memory features of the training images' tiles".into(),
            )
        })?;
        let (_, t, c, h, w) = tiles.dims5()?;
        let memory = MemoryConfig {
            patches: self.cfg.patches,
            ..step.cfg.memory.clone()
        };
        for object in step.objects(train) {
            let (class, rows) = object?;
            if self.knows(class) {
                return Err(Error::Config(format!(
                    "the tiled memory of `{class}` exists already; an object is learned once"
                )));
            }
            let mine = tiles.index_select(&rows, 0)?; // [n, T, C, h, w]
            let n = mine.dim(0)?;
            let start = std::time::Instant::now();
            if self.cfg.per_position {
                for p in 0..t {
                    let key = Self::key(class, Some(p));
                    let at = mine.narrow(1, p, 1)?.squeeze(1)?.contiguous()?;
                    let bank = build_memory(class, &format!("tiles:{key}"), &at, &memory)?;
                    self.banks.insert(key, bank);
                }
            } else {
                let all = mine.reshape((n * t, c, h, w))?;
                let bank = build_memory(class, &format!("tiles:{class}"), &all, &memory)?;
                self.banks.insert(class.to_string(), bank);
            }
            tracing::info!(
                class = %class,
                images = n,
                tiles = t,
                seconds = start.elapsed().as_secs_f64(),
                "tiled memory built"
            );
        }
        Ok(None)
    }

    fn knows(&self, object: &str) -> bool {
        let key = if self.cfg.per_position {
            Self::key(object, Some(0))
        } else {
            object.to_string()
        };
        self.banks.contains_key(&key)
    }

    fn can_add_good(&self, object: &str) -> Result<()> {
        if self.knows(object) {
            Ok(())
        } else {
            Err(Error::Msg(format!(
                "the tiled view has no memory for `{object}` to add images to"
            )))
        }
    }

    fn add_good(&mut self, object: &str, cfg: &TrainConfig, train: &StepData<'_>) -> Result<()> {
        self.can_add_good(object)?;
        let tiles = train.tiles.ok_or_else(|| {
            Error::Msg("adding to the tiled view needs the new images' tile features".into())
        })?;
        let (n, t, c, h, w) = tiles.dims5()?;
        let memory = MemoryConfig {
            patches: self.cfg.patches,
            ..cfg.memory.clone()
        };
        if self.cfg.per_position {
            for p in 0..t {
                let key = Self::key(object, Some(p));
                let at = tiles.narrow(1, p, 1)?.squeeze(1)?.contiguous()?;
                let grown = extend_memory(
                    object,
                    &format!("tiles:{key}"),
                    &self.banks[&key],
                    &at,
                    &memory,
                )?;
                self.banks.insert(key, grown);
            }
        } else {
            let all = tiles.reshape((n * t, c, h, w))?;
            let grown = extend_memory(
                object,
                &format!("tiles:{object}"),
                &self.banks[object],
                &all,
                &memory,
            )?;
            self.banks.insert(object.to_string(), grown);
        }
        Ok(())
    }

    fn maps(&self, batch: &Batch<'_>) -> Result<Maps> {
        let tiles = batch.images.tiles.ok_or_else(|| {
            Error::Msg(
                "the tiled view scores images by their tiles' features, which are missing".into(),
            )
        })?;
        let objects = batch.objects.ok_or_else(|| {
            Error::Msg(
                "the tiled view scores each image against its object's memory, but no object was given".into(),
            )
        })?;
        let (_, t, c, h, w) = tiles.dims5()?;
        let tiling = &self.cfg.tiling;
        if t != tiling.count() {
            return Err(Error::Msg(format!(
                "the model cuts {} tiles per image, but the features hold {t}",
                tiling.count()
            )));
        }
        let device = tiles.device();
        let mut out: Vec<Option<Tensor>> = vec![None; objects.len()];
        for (object, idx) in by_object(objects) {
            let rows = Tensor::from_vec(idx.clone(), idx.len(), device)?;
            let mine = tiles.index_select(&rows, 0)?;
            let n = idx.len();
            // Raw token-level maps of every tile, [n, T, h, w].
            let raw = if self.cfg.per_position {
                let per: Vec<Tensor> = (0..t)
                    .map(|p| {
                        let at = mine.narrow(1, p, 1)?.squeeze(1)?.contiguous()?;
                        Ok(self.bank(object, Some(p))?.score(&at)?)
                    })
                    .collect::<Result<_>>()?;
                Tensor::cat(&per, 1)?
            } else {
                let all = mine.reshape((n * t, c, h, w))?;
                self.bank(object, None)?
                    .score(&all)?
                    .reshape((n, t, h, w))?
            };
            let (side, _) = batch.size;
            let maps = iuf_model::stitch(&raw, &tiling.origins(), tiling.tile, tiling.input, side)?;
            let maps = iuf_model::gaussian_blur(&maps, batch.cfg.memory.blur_sigma)?;
            for (j, &i) in idx.iter().enumerate() {
                out[i as usize] = Some(maps.get(j)?);
            }
        }
        let out: Vec<Tensor> = out.into_iter().map(|t| t.expect("every image")).collect();
        Ok(Maps::plain(Tensor::stack(&out, 0)?))
    }

    fn state(&self, cfg: &TrainConfig) -> Result<Vec<(String, Tensor)>> {
        let dtype = cfg.memory.stored_dtype();
        self.banks
            .iter()
            .map(|(k, m)| {
                Ok((
                    format!("{TILES_PREFIX}{k}"),
                    m.bank().to_dtype(dtype)?.to_device(&Device::Cpu)?,
                ))
            })
            .collect()
    }

    fn patches(&self, object: &str) -> Option<usize> {
        if self.cfg.per_position {
            let prefix = format!("{object}/");
            let n: usize = self
                .banks
                .iter()
                .filter(|(k, _)| k.starts_with(&prefix))
                .map(|(_, m)| m.len())
                .sum();
            (n > 0).then_some(n)
        } else {
            self.banks.get(object).map(|m| m.len())
        }
    }
}
