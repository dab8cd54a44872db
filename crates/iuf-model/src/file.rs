//! The model file: one safetensors file holding the weights, the trainer's extra state tensors
//! (`state.*`) and the metadata (format version, config, backbone, classes, thresholds, ...).
//!
//! Header metadata keys: `iuf.format` = `iuf-model`, `iuf.format_version`, `iuf.meta` (the
//! [`ModelMeta`] JSON, config included) and `iuf.sha256`, a digest of every tensor's name, shape,
//! dtype and bytes, so that a flipped bit anywhere in the data is reported, not silently used.
//! Files are written to a temporary file in the destination folder, synced, then renamed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::safetensors::Load;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result, TensorProblem};
use crate::model::IufModel;

/// Value of the `iuf.format` key.
pub const FORMAT: &str = "iuf-model";
/// Version of the layout written by [`save_model`]; [`load_model`] accepts only this one.
pub const FORMAT_VERSION: u32 = 1;
/// Prefix of the extra state tensors (e.g. `state.gram.transformer.encoder.layers.0.linear2`).
pub const STATE_PREFIX: &str = "state.";

const KEY_FORMAT: &str = "iuf.format";
const KEY_VERSION: &str = "iuf.format_version";
const KEY_META: &str = "iuf.meta";
const KEY_DIGEST: &str = "iuf.sha256";
/// sha256 of the `iuf.meta` JSON (config, classes, thresholds, learner state). Files written before
/// it existed load with a warning.
const KEY_META_DIGEST: &str = "iuf.meta_sha256";
/// Header key of an optional signature (`iuf sign`): hex of an Ed25519 signature over the file's
/// [`content_digest`]. Not part of the content, so signing changes neither the digests nor how
/// the model scores.
pub const KEY_SIGNATURE: &str = "iuf.signature";
/// Header key of the public key (hex) whose private key made [`KEY_SIGNATURE`].
pub const KEY_SIGNATURE_KEY: &str = "iuf.signature_key";

/// One class the model has learned, and in which step of the protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LearnedClass {
    pub class: String,
    pub step: usize,
}

/// Everything about a model that is not a tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    pub config: ModelConfig,
    /// Identifier of the frozen backbone producing `feature_align` (e.g. `efficientnet-lite0`).
    pub backbone: String,
    /// The protocol's fixed class list: index = class id = logit index (length <= K).
    pub class_names: Vec<String>,
    /// Which step learned which class, in learning order.
    #[serde(default)]
    pub learned: Vec<LearnedClass>,
    /// Decision threshold on the image score, per class name.
    #[serde(default)]
    pub thresholds: BTreeMap<String, f32>,
    /// Anything else the trainer wants to keep (optimizer settings, step history, ...).
    #[serde(default)]
    pub extra: serde_json::Value,
    /// Whether the file holds the reconstruction network's weights (false for models that only
    /// keep per-object memories; files older than this field always do).
    #[serde(default = "yes")]
    pub network: bool,
}

fn yes() -> bool {
    true
}

impl ModelMeta {
    pub fn new(config: ModelConfig, backbone: impl Into<String>, class_names: Vec<String>) -> Self {
        Self {
            config,
            backbone: backbone.into(),
            class_names,
            learned: Vec::new(),
            thresholds: BTreeMap::new(),
            extra: serde_json::Value::Null,
            network: true,
        }
    }
}

/// A model file read back: its metadata, its weights as trainable variables, its extra state.
pub struct LoadedModel {
    pub meta: ModelMeta,
    /// The weights, one `Var` per parameter name, on the requested device.
    pub varmap: VarMap,
    /// The `state.*` tensors, sorted by name.
    pub state: Vec<(String, Tensor)>,
    device: Device,
}

impl LoadedModel {
    /// Builds the network on the loaded weights (sharing the `varmap`'s variables).
    pub fn model(&self) -> Result<IufModel> {
        if !self.meta.network {
            return Err(ModelError::Config(
                "this model file holds no reconstruction network (a memory-only model)".into(),
            ));
        }
        IufModel::new(
            &self.meta.config,
            VarBuilder::from_varmap(&self.varmap, DType::F32, &self.device),
        )
    }

    pub fn device(&self) -> &Device {
        &self.device
    }
}

/// Writes weights, metadata and state to `path` (atomically: temp file + rename).
///
/// The varmap must hold exactly the parameters of `meta.config`; state tensor names must start
/// with [`STATE_PREFIX`].
pub fn save_model(
    path: impl AsRef<Path>,
    varmap: &VarMap,
    meta: &ModelMeta,
    state: &[(String, Tensor)],
) -> Result<()> {
    let path = path.as_ref();
    meta.config.check()?;
    let weights: Vec<(String, Tensor)> = {
        let data = varmap.data().lock().expect("varmap lock");
        data.iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect()
    };
    check_weights(meta, &weights, "varmap to save")?;
    let mut tensors: Vec<(String, Tensor)> = Vec::with_capacity(weights.len() + state.len());
    for (name, t) in weights {
        tensors.push((name, t.to_device(&Device::Cpu)?.contiguous()?));
    }
    let mut seen = HashSet::new();
    for (name, t) in state {
        if !name.starts_with(STATE_PREFIX) || !seen.insert(name.as_str()) {
            return Err(ModelError::Input {
                name: name.clone(),
                expected: format!("a unique state tensor name starting with `{STATE_PREFIX}`"),
                found: name.clone(),
            });
        }
        tensors.push((name.clone(), t.to_device(&Device::Cpu)?.contiguous()?));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));

    let mut hasher = Sha256::new();
    for (name, t) in &tensors {
        let bytes = <Tensor as safetensors::View>::data(t);
        digest_tensor(&mut hasher, name, t.dims(), t.dtype(), &bytes);
    }
    let meta_json = serde_json::to_string(meta).map_err(|source| ModelError::Json {
        context: "serialising model metadata".into(),
        source,
    })?;
    let header = HashMap::from([
        (KEY_FORMAT.to_string(), FORMAT.to_string()),
        (KEY_VERSION.to_string(), FORMAT_VERSION.to_string()),
        (
            KEY_META_DIGEST.to_string(),
            hex(&Sha256::digest(meta_json.as_bytes())),
        ),
        (KEY_META.to_string(), meta_json),
        (KEY_DIGEST.to_string(), hex(&hasher.finalize())),
    ]);
    let bytes = safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), Some(header))
        .map_err(|e| ModelError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("cannot serialise: {e}"),
        })?;
    write_atomically(path, &bytes)
}

/// A model file's bytes: the file mapped read-only (a regular, non-empty file), else read.
///
/// Mapped, the bytes are the page cache's: no private copy of the file is made, every process
/// that maps the same file on one host shares its pages, and pages are read on first touch. The
/// mapping stays valid when the file is replaced by a rename (every iuf writer writes a temporary
/// file and renames it: the mapping keeps the old file's pages); a file truncated in place by
/// another program while mapped would fault, which is why iuf never writes a model in place.
pub enum ModelBytes {
    Mapped(memmap2::Mmap),
    Read(Vec<u8>),
}

impl std::ops::Deref for ModelBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ModelBytes::Mapped(m) => m,
            ModelBytes::Read(v) => v,
        }
    }
}

impl ModelBytes {
    /// Maps `path` (read-only), or reads it when it cannot be mapped (empty, not a regular file).
    pub fn open(path: &Path) -> Result<Self> {
        let io = |source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if meta.is_file() && meta.len() > 0 {
            // SAFETY: the mapping is read-only and private to this value; iuf replaces model
            // files by renaming a new file over them, which leaves the mapped pages intact (see
            // the type's documentation for a file truncated in place by another program).
            if let Ok(m) = unsafe { memmap2::Mmap::map(&file) } {
                return Ok(ModelBytes::Mapped(m));
            }
        }
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut &file, &mut bytes).map_err(io)?;
        Ok(ModelBytes::Read(bytes))
    }

    /// Whether the bytes are the mapped file (not a private copy).
    pub fn is_mapped(&self) -> bool {
        matches!(self, ModelBytes::Mapped(_))
    }
}

/// Reads a model file, checking format, version, config, every tensor and the digest. The file is
/// mapped ([`ModelBytes`]), not copied into a buffer first.
pub fn load_model(path: impl AsRef<Path>, device: &Device) -> Result<LoadedModel> {
    let path = path.as_ref();
    let bytes = ModelBytes::open(path)?;
    load_model_bytes(path, &bytes, device)
}

/// [`load_model`] on a file's bytes already read (`path` names the file in messages). One read
/// gives the caller both the model and, for instance, a digest of exactly those bytes.
pub fn load_model_bytes(path: &Path, bytes: &[u8], device: &Device) -> Result<LoadedModel> {
    load_model_bytes_except(path, bytes, device, &|_| false)
}

/// [`load_model_bytes`] without the tensors `skip` names: they are checked against the file's
/// digest like every other tensor but not read into memory (a model opened to inspect images
/// needs no statistics kept for updates).
pub fn load_model_bytes_except(
    path: &Path,
    bytes: &[u8],
    device: &Device,
    skip: &dyn Fn(&str) -> bool,
) -> Result<LoadedModel> {
    let corrupt = |reason: String| ModelError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let format = |reason: String| ModelError::Format {
        path: path.to_path_buf(),
        reason,
    };
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| {
        corrupt(format!(
            "not a readable safetensors file ({} bytes): {e}",
            bytes.len()
        ))
    })?;
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| corrupt(format!("unreadable header: {e}")))?;
    let header = header.metadata().clone().unwrap_or_default();
    match header.get(KEY_FORMAT) {
        Some(f) if f == FORMAT => {}
        other => {
            return Err(format(format!(
            "not an iuf model file: header key `{KEY_FORMAT}` is {other:?}, expected \"{FORMAT}\""
        )))
        }
    }
    let version = header.get(KEY_VERSION).cloned().unwrap_or_default();
    if version != FORMAT_VERSION.to_string() {
        return Err(format(format!(
            "model file format version {version:?}, this build reads version {FORMAT_VERSION}"
        )));
    }
    let meta_json = header
        .get(KEY_META)
        .ok_or_else(|| format(format!("header key `{KEY_META}` is missing")))?;
    match header.get(KEY_META_DIGEST) {
        Some(d) if *d == hex(&Sha256::digest(meta_json.as_bytes())) => {}
        Some(_) => {
            return Err(corrupt(
                "model metadata (config, thresholds, learner state) does not match the digest stored at save time (the file was altered or damaged)".into(),
            ))
        }
        None => tracing::warn!(
            "{}: written before model metadata carried a digest; its config and thresholds cannot be checked (re-save it with `iuf learn` to add one)",
            path.display()
        ),
    }
    let meta: ModelMeta = serde_json::from_str(meta_json).map_err(|source| ModelError::Json {
        context: format!("{}: model metadata", path.display()),
        source,
    })?;
    meta.config
        .check()
        .map_err(|e| format(format!("stored config: {e}")))?;
    check_classes(&meta).map_err(|reason| corrupt(format!("model metadata: {reason}")))?;

    // Digest first: a corrupt payload must be reported as such, not as odd numbers.
    let digest = tensors_digest(&st, &corrupt)?;
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    match header.get(KEY_DIGEST) {
        Some(d) if *d == digest => {}
        Some(_) => {
            return Err(corrupt(
                "tensor data does not match the digest stored at save time (the file was altered or damaged)".into(),
            ))
        }
        None => return Err(format(format!("header key `{KEY_DIGEST}` is missing"))),
    }

    let mut weights = Vec::new();
    let mut state = Vec::new();
    for name in names {
        if skip(&name) {
            continue;
        }
        let view = st
            .tensor(&name)
            .map_err(|e| corrupt(format!("tensor `{name}`: {e}")))?;
        let tensor = view.load(device)?;
        if name.starts_with(STATE_PREFIX) {
            state.push((name, tensor));
        } else {
            weights.push((name, tensor));
        }
    }
    check_weights(&meta, &weights, &path.display().to_string())?;
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().expect("varmap lock");
        for (name, t) in weights {
            data.insert(name, Var::from_tensor(&t)?);
        }
    }
    Ok(LoadedModel {
        meta,
        varmap,
        state,
        device: device.clone(),
    })
}

/// The class fields of the metadata agree with one another: `class_names` holds unique, non-empty
/// names, no more than the config has room for, and every class of `learned` and `thresholds` is
/// one of them. (A damaged name otherwise shows up much later as "no object learned" or a missing
/// threshold.)
fn check_classes(meta: &ModelMeta) -> std::result::Result<(), String> {
    let names = &meta.class_names;
    if names.len() > meta.config.num_classes {
        return Err(format!(
            "field `class_names` lists {} classes, but the config has room for {} \
             (`num_classes`)",
            names.len(),
            meta.config.num_classes
        ));
    }
    for (i, n) in names.iter().enumerate() {
        if n.trim().is_empty() || n.chars().any(char::is_control) {
            return Err(format!(
                "field `class_names` entry {i} is {n:?}, expected a class name"
            ));
        }
        if names[..i].contains(n) {
            return Err(format!(
                "field `class_names` lists {n:?} twice (entries {} and {i})",
                names.iter().position(|x| x == n).unwrap_or(0)
            ));
        }
    }
    let known = |c: &String| names.contains(c);
    if let Some(l) = meta.learned.iter().find(|l| !known(&l.class)) {
        return Err(format!(
            "field `learned` names {:?} (step {}), which is not in field `class_names` {names:?}",
            l.class, l.step
        ));
    }
    if let Some(c) = meta.thresholds.keys().find(|c| !known(c)) {
        return Err(format!(
            "field `thresholds` names {c:?}, which is not in field `class_names` {names:?}"
        ));
    }
    Ok(())
}

/// Checks `weights` (from `source_name`) against `meta`: exactly the parameters of `meta.config`
/// when the model has a network; none otherwise (each one is then a problem).
fn check_weights(meta: &ModelMeta, weights: &[(String, Tensor)], source_name: &str) -> Result<()> {
    let problems = if meta.network {
        compare_with_config(&meta.config, weights)?
    } else {
        weights
            .iter()
            .map(|(name, t)| TensorProblem::Unexpected {
                name: name.clone(),
                found: t.dims().to_vec(),
            })
            .collect()
    };
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ModelError::Tensors {
            source_name: source_name.into(),
            problems,
        })
    }
}

/// What to do with model parameters that [`assign_tensors`] was given no value for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingTensors {
    /// Every parameter must be supplied.
    Error,
    /// Keep their current (initial) values, e.g. the discriminator when importing a UniAD checkpoint.
    KeepInit,
}

/// Sets the variables of `varmap` from `tensors` (e.g. a mapped reference state dict). Unknown
/// names, wrong shapes and non-f32 tensors are errors naming the tensor; returns the names of the
/// parameters left untouched (empty under [`MissingTensors::Error`]).
pub fn assign_tensors(
    varmap: &VarMap,
    tensors: Vec<(String, Tensor)>,
    missing: MissingTensors,
) -> Result<Vec<String>> {
    let data = varmap.data().lock().expect("varmap lock");
    let mut problems = Vec::new();
    let mut given = HashSet::new();
    for (name, t) in &tensors {
        given.insert(name.as_str());
        match data.get(name) {
            None => problems.push(TensorProblem::Unexpected {
                name: name.clone(),
                found: t.dims().to_vec(),
            }),
            Some(v) if v.dims() != t.dims() => problems.push(TensorProblem::Shape {
                name: name.clone(),
                expected: v.dims().to_vec(),
                found: t.dims().to_vec(),
            }),
            Some(_) if t.dtype() != DType::F32 => problems.push(TensorProblem::DType {
                name: name.clone(),
                found: format!("{:?}", t.dtype()),
            }),
            Some(_) => {}
        }
    }
    let mut untouched: Vec<String> = data
        .keys()
        .filter(|k| !given.contains(k.as_str()))
        .cloned()
        .collect();
    untouched.sort();
    if missing == MissingTensors::Error {
        for name in &untouched {
            problems.push(TensorProblem::Missing {
                name: name.clone(),
                expected: data[name].dims().to_vec(),
            });
        }
    }
    if !problems.is_empty() {
        return Err(ModelError::Tensors {
            source_name: "assigned tensors".into(),
            problems,
        });
    }
    for (name, t) in tensors {
        let var = &data[&name];
        var.set(&t.to_device(var.device())?)?;
    }
    Ok(untouched)
}

/// Differences between `tensors` and the parameters `cfg` needs, sorted by name.
fn compare_with_config(
    cfg: &ModelConfig,
    tensors: &[(String, Tensor)],
) -> Result<Vec<TensorProblem>> {
    let expected: BTreeMap<String, Vec<usize>> =
        IufModel::expected_tensors(cfg)?.into_iter().collect();
    let found: BTreeMap<&str, &Tensor> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut problems = Vec::new();
    for (name, shape) in &expected {
        match found.get(name.as_str()) {
            None => problems.push(TensorProblem::Missing {
                name: name.clone(),
                expected: shape.clone(),
            }),
            Some(t) if t.dims() != shape.as_slice() => problems.push(TensorProblem::Shape {
                name: name.clone(),
                expected: shape.clone(),
                found: t.dims().to_vec(),
            }),
            Some(t) if t.dtype() != DType::F32 => problems.push(TensorProblem::DType {
                name: name.clone(),
                found: format!("{:?}", t.dtype()),
            }),
            Some(_) => {}
        }
    }
    for (name, t) in &found {
        if !expected.contains_key(*name) {
            problems.push(TensorProblem::Unexpected {
                name: name.to_string(),
                found: t.dims().to_vec(),
            });
        }
    }
    Ok(problems)
}

/// The header metadata of a model file (the `iuf.*` keys).
pub fn header(path: &Path, bytes: &[u8]) -> Result<HashMap<String, String>> {
    let (_, header) =
        safetensors::SafeTensors::read_metadata(bytes).map_err(|e| ModelError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("unreadable header: {e}"),
        })?;
    Ok(header.metadata().clone().unwrap_or_default())
}

/// The digest stored under [`KEY_DIGEST`]: sha256 over every tensor (name, shape, dtype, data) in
/// name order, as [`digest_tensor`] feeds them. `corrupt` words an unreadable tensor.
fn tensors_digest(
    st: &safetensors::SafeTensors<'_>,
    corrupt: &dyn Fn(String) -> ModelError,
) -> Result<String> {
    let mut names: Vec<&str> = st.names();
    names.sort_unstable();
    let mut hasher = Sha256::new();
    for name in names {
        let view = st
            .tensor(name)
            .map_err(|e| corrupt(format!("tensor `{name}`: {e}")))?;
        let dtype = DType::try_from(view.dtype()).map_err(|_| {
            corrupt(format!(
                "tensor `{name}` has unsupported dtype {:?}",
                view.dtype()
            ))
        })?;
        digest_tensor(&mut hasher, name, view.shape(), dtype, view.data());
    }
    Ok(hex(&hasher.finalize()))
}

/// What a signature of a model file covers: a sha256 over its format, format version, metadata
/// digest and tensor digest, each checked here against the file's content (a file whose data no
/// longer matches its digests has none). The signature keys are not part of it: the same before
/// and after signing, different after any change to the model.
pub fn content_digest(path: &Path, bytes: &[u8]) -> Result<String> {
    let corrupt = |reason: String| ModelError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| {
        corrupt(format!(
            "not a readable safetensors file ({} bytes): {e}",
            bytes.len()
        ))
    })?;
    let header = header(path, bytes)?;
    let key = |k: &str| {
        header.get(k).ok_or_else(|| ModelError::Format {
            path: path.to_path_buf(),
            reason: format!(
                "header key `{k}` is missing (a file of an older iuf: re-save it with `iuf learn`)"
            ),
        })
    };
    let (format, version, meta, meta_digest, digest) = (
        key(KEY_FORMAT)?,
        key(KEY_VERSION)?,
        key(KEY_META)?,
        key(KEY_META_DIGEST)?,
        key(KEY_DIGEST)?,
    );
    if *meta_digest != hex(&Sha256::digest(meta.as_bytes())) {
        return Err(corrupt(
            "model metadata does not match the digest stored at save time (the file was altered \
             or damaged)"
                .into(),
        ));
    }
    if *digest != tensors_digest(&st, &corrupt)? {
        return Err(corrupt(
            "tensor data does not match the digest stored at save time (the file was altered or \
             damaged)"
                .into(),
        ));
    }
    let mut h = Sha256::new();
    for part in ["iuf-model-content-v1", format, version, meta_digest, digest] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    Ok(hex(&h.finalize()))
}

/// The model file `bytes` with header entries `set` added or replaced, and its tensors byte for
/// byte as they were.
pub fn with_header(path: &Path, bytes: &[u8], set: &[(&str, String)]) -> Result<Vec<u8>> {
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| ModelError::Corrupt {
        path: path.to_path_buf(),
        reason: format!("not a readable safetensors file: {e}"),
    })?;
    let mut meta = header(path, bytes)?;
    for (k, v) in set {
        meta.insert((*k).to_string(), v.clone());
    }
    safetensors::serialize(st.tensors(), Some(meta)).map_err(|e| ModelError::Corrupt {
        path: path.to_path_buf(),
        reason: format!("cannot serialise: {e}"),
    })
}

/// Writes a model file's bytes to `path` atomically (temporary file in the same folder, synced,
/// then renamed), as [`save_model`] does.
pub fn write_model_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomically(path, bytes)
}

fn digest_tensor(hasher: &mut Sha256, name: &str, shape: &[usize], dtype: DType, bytes: &[u8]) {
    hasher.update((name.len() as u64).to_le_bytes());
    hasher.update(name.as_bytes());
    hasher.update((shape.len() as u64).to_le_bytes());
    for &d in shape {
        hasher.update((d as u64).to_le_bytes());
    }
    hasher.update(dtype.as_str().as_bytes());
    hasher.update((bytes.len() as u64).to_le_bytes());
    hasher.update(bytes);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The temporary name an atomic write of `path` uses: `.<file name>.tmp-<pid>` beside it. Every
/// atomic writer of the workspace that can use it does, so [`remove_stale_temps`] knows them.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| "unnamed".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Removes the temporary files that interrupted writes left in `dir`: names of [`temp_path`]'s
/// form (`.<name>.tmp-<pid>`, nothing else, so no user file can match) whose process no longer
/// runs. Linux only (it asks `/proc`); elsewhere nothing is removed. Failures are ignored: cleaning
/// up must never fail the write that triggered it.
pub fn remove_stale_temps(dir: &Path) {
    let proc = Path::new("/proc");
    if !proc.join("self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let Some(at) = name.rfind(".tmp-").filter(|_| name.starts_with('.')) else {
            continue;
        };
        let pid = &name[at + 5..];
        if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) || proc.join(pid).exists() {
            continue;
        }
        if e.file_type().is_ok_and(|t| t.is_file()) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| ModelError::Io { path: p, source }
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| ModelError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"),
        })?
        .to_string_lossy();
    remove_stale_temps(&dir);
    let tmp = dir.join(temp_path(Path::new(file_name.as_ref())));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(io(path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
