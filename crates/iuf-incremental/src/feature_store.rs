//! The feature store: the frozen backbone's `feature_align` and memory features (section 10) of
//! every image, computed together in one forward pass, once, and cached on disk (section 1: no
//! augmentation, so a training image's features never change).
//!
//! An entry's key hashes the backbone id, the weights' digest, the image size and the image file's
//! bytes, so editing a file, switching weights or size never reuses a stale entry. Every entry
//! carries the CRC-32 of each tensor's bytes, and every tensor read is checked (key, checksum,
//! shape, finite values); anything that does not fit is reported, recomputed and rewritten. CRC-32
//! (hardware-accelerated, `crc32fast`) detects the accidental damage a cache suffers at 0.025 ms
//! per entry, half of reading the entry from the page cache; sha256 took 0.5-0.9 ms.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use iuf_backbone::Backbone;
use iuf_data::image::tiles::Tiling;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::error::{io_err, Error, Result};
use crate::progress::Progress;
use crate::step::{FeatureKind, ImageFeatures};

/// Images per backbone batch.
const EXTRACT_BATCH: usize = 8;

/// Identifies a backbone and its weights, for cache keys and model files.
#[derive(Debug, Clone)]
pub struct BackboneId {
    /// Architecture name, e.g. `efficientnet-lite0`.
    pub name: String,
    /// Digest of the weights file (any stable string; sha256 hex by default).
    pub weights_digest: String,
}

/// Computes and caches `feature_align` of image files.
pub struct FeatureStore {
    dir: Option<PathBuf>,
    backbone: Backbone,
    id: BackboneId,
    image_size: usize,
    device: Device,
}

/// Statistics of one `features` call.
#[derive(Debug, Default, Clone, Copy)]
pub struct StoreStats {
    /// Entries read from the cache.
    pub hits: usize,
    /// Entries computed (missing, stale or corrupt).
    pub computed: usize,
    /// Of those, entries that existed but were rejected.
    pub rejected: usize,
}

impl FeatureStore {
    /// A store caching under `dir` (`None`: compute every time, cache nothing).
    pub fn new(
        dir: Option<PathBuf>,
        backbone: Backbone,
        id: BackboneId,
        image_size: usize,
        device: Device,
    ) -> Result<Self> {
        if image_size == 0 || !image_size.is_multiple_of(16) {
            return Err(Error::Config(format!(
                "image size must be a positive multiple of 16, found {image_size}"
            )));
        }
        if let Some(d) = &dir {
            std::fs::create_dir_all(d).map_err(io_err(d))?;
        }
        Ok(Self {
            dir,
            backbone,
            id,
            image_size,
            device,
        })
    }

    /// The backbone's identity.
    pub fn backbone_id(&self) -> &BackboneId {
        &self.id
    }

    /// Channels of `feature_align`.
    pub fn channels(&self) -> usize {
        self.backbone.out_channels()
    }

    /// The input image size.
    pub fn image_size(&self) -> usize {
        self.image_size
    }

    /// The device features are computed and returned on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The frozen backbone.
    pub fn backbone(&self) -> &Backbone {
        &self.backbone
    }

    /// Grid size of `feature_align` (`image_size / 16`).
    pub fn grid(&self) -> usize {
        self.image_size / 16
    }

    /// Channels of the memory features.
    pub fn memory_channels(&self) -> usize {
        self.backbone.memory_channels()
    }

    /// Grid size of the memory features (`image_size / 8`).
    pub fn memory_grid(&self) -> usize {
        self.image_size / 8
    }

    fn key(&self, bytes: &[u8]) -> String {
        let mut h = Sha256::new();
        h.update(b"iuf-feature-v3\0");
        h.update(self.id.name.as_bytes());
        h.update([0]);
        h.update(self.id.weights_digest.as_bytes());
        h.update([0]);
        h.update((self.image_size as u64).to_le_bytes());
        h.update(Sha256::digest(bytes));
        format!("{:x}", h.finalize())
    }

    fn entry_path(&self, key: &str) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|d| d.join(&key[..2]).join(format!("{key}.safetensors")))
    }

    fn read_entry(&self, path: &Path, key: &str, want_memory: bool) -> Option<Entry> {
        let (g, mg) = (self.grid(), self.memory_grid());
        let mut wanted = vec![("feature_align", vec![self.channels(), g, g])];
        if want_memory {
            wanted.push(("memory", vec![self.memory_channels(), mg, mg]));
        }
        let mut read = read_tensors(path, key, &wanted)?.into_iter();
        Some(Entry {
            align: read.next()?,
            memory: read.next(),
        })
    }

    fn write_entry(&self, path: &Path, key: &str, align: &Tensor, memory: &Tensor) -> Result<()> {
        self.write_tensors(path, key, &[("feature_align", align), ("memory", memory)])
    }

    /// Writes one cache entry: `tensors` (f32) with the key, the backbone and each tensor's
    /// CRC-32 in the metadata, through a temporary file and a rename.
    fn write_tensors(&self, path: &Path, key: &str, tensors: &[(&str, &Tensor)]) -> Result<()> {
        let parent = path.parent().expect("entry paths have a parent");
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        iuf_model::remove_stale_temps(parent);
        let bytes: Vec<Vec<u8>> = tensors
            .iter()
            .map(|(_, t)| -> Result<Vec<u8>> {
                let data: Vec<f32> = t.flatten_all()?.to_vec1()?;
                Ok(data.iter().flat_map(|x| x.to_le_bytes()).collect())
            })
            .collect::<Result<_>>()?;
        let mut meta = HashMap::new();
        meta.insert("key".to_string(), key.to_string());
        meta.insert("backbone".to_string(), self.id.name.clone());
        let mut views = Vec::new();
        for ((name, t), b) in tensors.iter().zip(&bytes) {
            meta.insert(format!("crc32.{name}"), checksum(b));
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, t.dims().to_vec(), b)
                    .map_err(|e| {
                        Error::Msg(format!("feature cache entry {}: {e}", path.display()))
                    })?;
            views.push((name.to_string(), view));
        }
        let out = safetensors::serialize(views, Some(meta))
            .map_err(|e| Error::Msg(format!("feature cache entry {}: {e}", path.display())))?;
        let tmp = iuf_model::temp_path(path);
        std::fs::write(&tmp, out).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io_err(path))?;
        Ok(())
    }

    /// Looks every image up in the cache (`key` of its bytes, `read` of its entry): the entries
    /// found, the `(index, key)` of those to compute (missing, stale or corrupt; the latter
    /// reported), and the counts so far. Starts `progress` as `phase` and counts the hits.
    fn lookup<T>(
        &self,
        paths: &[PathBuf],
        phase: &str,
        key: impl Fn(&[u8]) -> String,
        read: impl Fn(&Path, &str) -> Option<T>,
        progress: &dyn Progress,
    ) -> Result<Lookup<T>> {
        let mut stats = StoreStats::default();
        let mut out: Vec<Option<T>> = (0..paths.len()).map(|_| None).collect();
        let mut missing = Vec::new();
        progress.start(phase, paths.len() as u64);
        for (i, p) in paths.iter().enumerate() {
            // Read as every image is: a regular file under the image size limit (a link to
            // /dev/zero or a named pipe among the data is refused, not read for ever).
            let bytes = iuf_data::input_file::read(p, iuf_data::image::file_limit())?;
            let key = key(&bytes);
            match self.entry_path(&key) {
                Some(entry) if entry.exists() => match read(&entry, &key) {
                    Some(t) => {
                        out[i] = Some(t);
                        stats.hits += 1;
                        progress.inc(1);
                    }
                    None => {
                        tracing::warn!(
                            "feature cache entry {} is stale or corrupt; recomputing",
                            entry.display()
                        );
                        stats.rejected += 1;
                        missing.push((i, key));
                    }
                },
                _ => missing.push((i, key)),
            }
        }
        Ok((out, missing, stats))
    }

    /// The cache key of an image's tiles: the whole view's key material plus the tiling.
    fn tile_key(&self, bytes: &[u8], tiling: &Tiling) -> String {
        let mut h = Sha256::new();
        h.update(b"iuf-tiles-v1\0");
        h.update(self.key(bytes).as_bytes());
        for v in [tiling.input, tiling.tile, tiling.overlap] {
            h.update((v as u64).to_le_bytes());
        }
        format!("{:x}", h.finalize())
    }

    /// The memory features of every image's tiles, `[N, T, C_m, 2g, 2g]` on the store's device
    /// (T = `tiling.count()`, in the order of [`Tiling::origins`]): each image decoded, resized
    /// to the working resolution, cut, and every tile resized to the store's image size and
    /// passed through the backbone. Cached like the whole view, under a key that adds the tiling.
    pub fn tile_features(
        &self,
        paths: &[PathBuf],
        tiling: &Tiling,
        progress: &dyn Progress,
    ) -> Result<(Tensor, StoreStats)> {
        tiling.check().map_err(|e| Error::Config(e.to_string()))?;
        let t = tiling.count();
        let mg = self.memory_grid();
        let shape = vec![t, self.memory_channels(), mg, mg];
        let (mut out, missing, mut stats) = self.lookup(
            paths,
            "tile features",
            |bytes| self.tile_key(bytes, tiling),
            |entry, key| read_tensors(entry, key, &[("tiles", shape.clone())])?.pop(),
            progress,
        )?;
        // At most 32 tiles per backbone pass.
        let per_pass = (32 / t).max(1);
        for chunk in missing.chunks(per_pass) {
            let tiles = chunk
                .par_iter()
                .map(|(i, _)| {
                    let img = iuf_data::image::load_rgb(&paths[*i])?;
                    Ok(tiling.cut(&img, self.image_size))
                })
                .collect::<std::result::Result<Vec<_>, iuf_data::Error>>()?;
            let tiles: Vec<_> = tiles.into_iter().flatten().collect();
            let memory = self.tile_memory(&tiles)?;
            for (j, (i, key)) in chunk.iter().enumerate() {
                let m = memory.narrow(0, j * t, t)?;
                if let Some(entry) = self.entry_path(key) {
                    self.write_tensors(&entry, key, &[("tiles", &m)])?;
                }
                out[*i] = Some(m);
                stats.computed += 1;
            }
            progress.inc(chunk.len() as u64);
        }
        progress.finish();
        if paths.is_empty() {
            let mut dims = vec![0];
            dims.extend(&shape);
            return Ok((Tensor::zeros(dims, DType::F32, &self.device)?, stats));
        }
        let all: Vec<Tensor> = out.into_iter().map(|e| e.expect("every image")).collect();
        Ok((Tensor::stack(&all, 0)?.to_device(&self.device)?, stats))
    }

    /// The memory features `[n, C_m, 2g, 2g]` (on the CPU, f32) of preprocessed tiles.
    fn tile_memory(&self, tiles: &[iuf_data::image::ImageTensor]) -> Result<Tensor> {
        let batch = iuf_data::images_to_tensor(tiles, &self.device)?;
        let (_, memory) = self.backbone.extract(&batch)?;
        Ok(memory.to_dtype(DType::F32)?.to_device(&Device::Cpu)?)
    }

    /// `feature_align` of `paths`, their memory features when `kind` asks for them, and their
    /// tiles' memory features when a `tiling` is given (a model with a tiled view).
    pub fn features_for(
        &self,
        paths: &[PathBuf],
        kind: FeatureKind,
        tiling: Option<&Tiling>,
        progress: &dyn Progress,
    ) -> Result<ImageFeatures> {
        let mut x = if kind.memory() {
            let (f, m, _) = self.features_with_memory(paths, progress)?;
            ImageFeatures {
                align: f,
                memory: Some(m),
                tiles: None,
            }
        } else {
            ImageFeatures::align(self.features(paths, progress)?.0)
        };
        if let Some(t) = tiling {
            x.tiles = Some(self.tile_features(paths, t, progress)?.0);
        }
        Ok(x)
    }

    /// `feature_align` of every image, `[N, C, g, g]` on the store's device, in the order given.
    pub fn features(
        &self,
        paths: &[PathBuf],
        progress: &dyn Progress,
    ) -> Result<(Tensor, StoreStats)> {
        let (align, _, stats) = self.load(paths, false, progress)?;
        Ok((align, stats))
    }

    /// `feature_align` `[N, C, g, g]` and the memory features `[N, C_m, 2g, 2g]` of every image,
    /// on the store's device, in the order given.
    pub fn features_with_memory(
        &self,
        paths: &[PathBuf],
        progress: &dyn Progress,
    ) -> Result<(Tensor, Tensor, StoreStats)> {
        let (align, memory, stats) = self.load(paths, true, progress)?;
        Ok((align, memory.expect("asked for"), stats))
    }

    fn load(
        &self,
        paths: &[PathBuf],
        want_memory: bool,
        progress: &dyn Progress,
    ) -> Result<(Tensor, Option<Tensor>, StoreStats)> {
        let (mut out, missing, mut stats) = self.lookup(
            paths,
            "features",
            |bytes| self.key(bytes),
            |entry, key| self.read_entry(entry, key, want_memory),
            progress,
        )?;
        for chunk in missing.chunks(EXTRACT_BATCH) {
            let chunk_paths: Vec<PathBuf> = chunk.iter().map(|(i, _)| paths[*i].clone()).collect();
            let images = iuf_data::batch::load_images(&chunk_paths, self.image_size)?;
            let batch = iuf_data::images_to_tensor(&images, &self.device)?;
            let (align, memory) = self.backbone.extract(&batch)?;
            let to_cpu = |t: Tensor| -> Result<Tensor> {
                Ok(t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?)
            };
            let (align, memory) = (to_cpu(align)?, to_cpu(memory)?);
            for (j, (i, key)) in chunk.iter().enumerate() {
                let (a, m) = (align.get(j)?, memory.get(j)?);
                if let Some(entry) = self.entry_path(key) {
                    self.write_entry(&entry, key, &a, &m)?;
                }
                out[*i] = Some(Entry {
                    align: a,
                    memory: want_memory.then_some(m),
                });
                stats.computed += 1;
            }
            progress.inc(chunk.len() as u64);
        }
        progress.finish();
        let (g, mg) = (self.grid(), self.memory_grid());
        if paths.is_empty() {
            let zeros = |c: usize, g: usize| Tensor::zeros((0, c, g, g), DType::F32, &self.device);
            let memory = if want_memory {
                Some(zeros(self.memory_channels(), mg)?)
            } else {
                None
            };
            return Ok((zeros(self.channels(), g)?, memory, stats));
        }
        let (mut aligns, mut memories) = (Vec::with_capacity(paths.len()), Vec::new());
        for e in out {
            let e = e.expect("every image was read or computed");
            aligns.push(e.align);
            memories.extend(e.memory);
        }
        let align = Tensor::stack(&aligns, 0)?.to_device(&self.device)?;
        let memory = if want_memory {
            Some(Tensor::stack(&memories, 0)?.to_device(&self.device)?)
        } else {
            None
        };
        Ok((align, memory, stats))
    }
}

/// The tensors `wanted` (name, shape; f32) of the cache entry at `path`, if it is the entry of
/// `key` and every tensor's shape, CRC-32 and values check out.
fn read_tensors(path: &Path, key: &str, wanted: &[(&str, Vec<usize>)]) -> Option<Vec<Tensor>> {
    let bytes = std::fs::read(path).ok()?;
    let st = safetensors::SafeTensors::deserialize(&bytes).ok()?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).ok()?;
    let digests = meta.metadata().as_ref()?;
    if digests.get("key")? != key {
        return None;
    }
    wanted
        .iter()
        .map(|(name, shape)| {
            let view = st.tensor(name).ok()?;
            if view.dtype() != safetensors::Dtype::F32 || view.shape() != shape.as_slice() {
                return None;
            }
            // Flipped bits that leave the values finite are caught here.
            if *digests.get(&format!("crc32.{name}"))? != checksum(view.data()) {
                return None;
            }
            let data: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            if data.iter().any(|x| !x.is_finite()) {
                return None;
            }
            Tensor::from_vec(data, shape.clone(), &Device::Cpu).ok()
        })
        .collect()
}

/// What a cache lookup found: entries by image, the `(index, key)` of those to compute, counts.
type Lookup<T> = (Vec<Option<T>>, Vec<(usize, String)>, StoreStats);

/// One image's cached features.
struct Entry {
    align: Tensor,
    memory: Option<Tensor>,
}

/// The CRC-32 of a tensor's bytes, as stored in an entry's metadata.
fn checksum(bytes: &[u8]) -> String {
    format!("{:08x}", crc32fast::hash(bytes))
}

/// Hex sha256 of a file, for `BackboneId::weights_digest`.
pub fn file_digest(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    Ok(format!("{:x}", Sha256::digest(&bytes)))
}

/// The features of a batch of preprocessed images `[B, 3, S, S]` that a method reads (`kind`),
/// straight from the backbone: `feature_align`, and the memory features when asked for (one
/// forward pass gives both).
pub fn compute(
    backbone: &Backbone,
    batch: &Tensor,
    kind: FeatureKind,
) -> Result<(Tensor, Option<Tensor>)> {
    if kind.memory() {
        let (f, m) = backbone.extract(batch)?;
        Ok((f, Some(m)))
    } else {
        Ok((backbone.feature_align(batch)?, None))
    }
}
