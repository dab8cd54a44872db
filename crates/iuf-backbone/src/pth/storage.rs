//! The torch layer of the checkpoint reader: the two containers (legacy pickle stream, zip
//! archive) and their storage data, the storages named by persistent ids, the callables that
//! rebuild tensors, and the copy of each tensor's strided view out of its storage. The pickle
//! machine calls this layer back through [`Callbacks`], implemented by [`Storages`].
//!
//! Legacy layout: five consecutive pickles, then raw data. (1) the magic number
//! 0x1950a86a20f9469cfc6c, (2) the protocol version 1001, (3) a sys-info dict (endianness, type
//! sizes), (4) the object itself, where every storage is a persistent id
//! `('storage', storage_type, key, location, numel[, view_metadata])`, (5) the list of storage keys;
//! then for each key in that order: a little-endian u64 element count followed by the raw bytes.
//! Zip layout: `<name>/data.pkl` (the object, same persistent ids) and one `<name>/data/<key>` entry
//! per storage.

use std::collections::HashMap;
use std::io::{Cursor as IoCursor, Read};

use candle_core::{DType, Device, Tensor};

use super::pickle::{self, Callbacks, Cursor, Unpickler};
use crate::error::{Error, Result};

/// A Python object of a checkpoint: a pickle value that may hold storages and tensors.
pub(super) type Value = pickle::Value<Torch>;

/// The torch objects that the pickle machine carries for this layer ([`Value::Extern`]).
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Torch {
    /// A storage named by a persistent id: its index in [`Storages::list`].
    Storage(usize),
    Tensor(TensorRef),
}

/// The magic number that opens a legacy checkpoint.
const LEGACY_MAGIC: i128 = 0x1950a86a20f9469cfc6c;
/// The only legacy protocol version PyTorch ever wrote.
const LEGACY_PROTOCOL: i128 = 1001;
/// Most elements a (stride-0) tensor may have per element of its storage.
const MAX_EXPANSION: usize = 4096;

// ---------------------------------------------------------------------------------------------
// Containers.

/// Raw bytes of each storage, by key.
pub(super) type StorageData<'a> = HashMap<String, std::borrow::Cow<'a, [u8]>>;

/// The object, its storages and their bytes, from a legacy checkpoint.
pub(super) fn read_legacy(bytes: &[u8]) -> Result<(Value, Storages, StorageData<'_>)> {
    let mut cur = Cursor::new(bytes);
    let mut storages = Storages::default();
    let magic = Unpickler::new(&mut storages).load(&mut cur)?;
    if !matches!(magic, Value::Int(LEGACY_MAGIC)) {
        return Err(Error::Checkpoint(format!(
            "legacy checkpoint: first pickle should be the magic number 0x{LEGACY_MAGIC:x}, found {}",
            magic.describe()
        )));
    }
    let protocol = Unpickler::new(&mut storages).load(&mut cur)?;
    if !matches!(protocol, Value::Int(LEGACY_PROTOCOL)) {
        return Err(Error::Checkpoint(format!(
            "legacy checkpoint: unsupported protocol version {}, expected {LEGACY_PROTOCOL}",
            protocol.describe()
        )));
    }
    let sys_info = Unpickler::new(&mut storages).load(&mut cur)?;
    if let Value::Dict(items) = &sys_info {
        let little = items
            .iter()
            .find(|(k, _)| matches!(k, Value::Str(s) if s == "little_endian"));
        if let Some((_, Value::Bool(false))) = little {
            return Err(Error::Checkpoint(
                "legacy checkpoint saved on a big-endian machine: not supported".into(),
            ));
        }
    }
    let root = Unpickler::new(&mut storages).load(&mut cur)?;
    let keys = Unpickler::new(&mut storages).load(&mut cur)?;
    let Value::List(keys) = keys else {
        return Err(Error::Checkpoint(format!(
            "legacy checkpoint: expected the list of storage keys after the object, found {}",
            keys.describe()
        )));
    };
    let mut data = StorageData::new();
    for key in keys {
        let Value::Str(key) = key else {
            return Err(Error::Checkpoint(format!(
                "legacy checkpoint: storage key {} is not a string",
                key.describe()
            )));
        };
        let element_size = storages.element_size(&key).ok_or_else(|| {
            Error::Checkpoint(format!(
                "legacy checkpoint: storage `{key}` is listed but never used"
            ))
        })?;
        let count = u64::from_le_bytes(cur.array()?) as usize;
        let len = count.checked_mul(element_size).ok_or_else(|| {
            Error::Checkpoint(format!(
                "legacy checkpoint: storage `{key}` claims {count} elements"
            ))
        })?;
        let raw = cur.take(len).map_err(|e| match e {
            Error::Checkpoint(m) => {
                Error::Checkpoint(format!("storage `{key}` ({len} bytes): {m}"))
            }
            other => other,
        })?;
        data.insert(key, std::borrow::Cow::Borrowed(raw));
    }
    Ok((root, storages, data))
}

/// The object, its storages and their bytes, from a zip checkpoint.
pub(super) fn read_zip(bytes: &[u8]) -> Result<(Value, Storages, StorageData<'static>)> {
    let zip_err = |e: zip::result::ZipError| Error::Checkpoint(format!("zip archive: {e}"));
    let mut archive = zip::ZipArchive::new(IoCursor::new(bytes)).map_err(zip_err)?;
    let pickle_name = archive
        .file_names()
        .filter(|n| n.ends_with("data.pkl"))
        .min_by_key(|n| n.len())
        .map(str::to_string)
        .ok_or_else(|| {
            Error::Checkpoint("zip archive has no data.pkl: not a PyTorch checkpoint".into())
        })?;
    let prefix = pickle_name.trim_end_matches("data.pkl").to_string();
    let read_entry =
        |archive: &mut zip::ZipArchive<IoCursor<&[u8]>>, name: &str| -> Result<Vec<u8>> {
            let mut entry = archive.by_name(name).map_err(zip_err)?;
            // The header's size is only a hint: never trust it for the allocation.
            let mut buf = Vec::with_capacity((entry.size() as usize).min(bytes.len()));
            entry
                .read_to_end(&mut buf)
                .map_err(|e| Error::Checkpoint(format!("zip entry {name}: {e}")))?;
            Ok(buf)
        };
    if let Ok(order) = read_entry(&mut archive, &format!("{prefix}byteorder")) {
        if order.trim_ascii() == b"big" {
            return Err(Error::Checkpoint(
                "checkpoint saved on a big-endian machine: not supported".into(),
            ));
        }
    }
    let pickle = read_entry(&mut archive, &pickle_name)?;
    let mut storages = Storages::default();
    let root = Unpickler::new(&mut storages).load(&mut Cursor::new(&pickle))?;
    let mut data = StorageData::new();
    for storage in &storages.list {
        if data.contains_key(&storage.data_key) {
            continue;
        }
        let raw = read_entry(&mut archive, &format!("{prefix}data/{}", storage.data_key))?;
        data.insert(storage.data_key.clone(), std::borrow::Cow::Owned(raw));
    }
    Ok((root, storages, data))
}

// ---------------------------------------------------------------------------------------------
// Storages and tensors.

/// Element type of a storage, from its class name (`FloatStorage`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StorageType {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    I16,
    U8,
    Bool,
    I8,
}

impl StorageType {
    fn from_class(name: &str) -> Option<Self> {
        Some(match name {
            "FloatStorage" => Self::F32,
            "DoubleStorage" => Self::F64,
            "HalfStorage" => Self::F16,
            "BFloat16Storage" => Self::BF16,
            "LongStorage" => Self::I64,
            "IntStorage" => Self::I32,
            "ShortStorage" => Self::I16,
            "ByteStorage" => Self::U8,
            "BoolStorage" => Self::Bool,
            "CharStorage" => Self::I8,
            _ => return None,
        })
    }

    fn element_size(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 | Self::I16 => 2,
            Self::U8 | Self::Bool | Self::I8 => 1,
        }
    }

    /// The candle dtype a tensor of this storage becomes (`int8` has none: widened to i16).
    fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F64 => DType::F64,
            Self::F16 => DType::F16,
            Self::BF16 => DType::BF16,
            Self::I64 => DType::I64,
            Self::I32 => DType::I32,
            Self::I16 | Self::I8 => DType::I16,
            Self::U8 | Self::Bool => DType::U8,
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct StorageInfo {
    /// Key of the bytes in the data section (the root storage for a legacy view).
    pub(super) data_key: String,
    kind: StorageType,
    /// Elements before this (view) storage starts inside the data.
    view_offset: usize,
}

/// Every storage referenced by persistent ids, deduplicated by key.
#[derive(Debug, Default)]
pub(super) struct Storages {
    pub(super) list: Vec<StorageInfo>,
    by_key: HashMap<String, usize>,
}

impl Storages {
    fn element_size(&self, data_key: &str) -> Option<usize> {
        self.list
            .iter()
            .find(|s| s.data_key == data_key)
            .map(|s| s.kind.element_size())
    }
}

impl Callbacks for Storages {
    type Extern = Torch;

    /// Resolves `('storage', storage_type, key, location, numel[, view_metadata])`, recording
    /// the storage.
    fn persistent_load(&mut self, pid: Value) -> Result<Value> {
        let Value::Tuple(items) = pid else {
            return Err(Error::Checkpoint(format!(
                "unsupported persistent id {}",
                pid.describe()
            )));
        };
        let bad = || Error::Checkpoint("malformed storage persistent id".to_string());
        // A whole pickled module records each class's source code as ('module', class, file,
        // source): only used by PyTorch for source-change warnings.
        if matches!(items.first(), Some(Value::Str(s)) if s == "module") {
            return Ok(Value::None);
        }
        if items.len() < 5 || !matches!(&items[0], Value::Str(s) if s == "storage") {
            return Err(Error::Checkpoint(format!(
                "unsupported persistent id {}",
                Value::Tuple(items).describe()
            )));
        }
        let class = match &items[1] {
            Value::Global(_, name) => name.clone(),
            _ => return Err(bad()),
        };
        let kind = StorageType::from_class(&class)
            .ok_or_else(|| Error::Checkpoint(format!("unsupported storage type `{class}`")))?;
        let Value::Str(key) = &items[2] else {
            return Err(bad());
        };
        // Legacy storage views: (view_key, offset, view_size) inside the storage `key`.
        let (index_key, view_offset) = match items.get(5) {
            Some(Value::Tuple(view)) if view.len() == 3 => match (&view[0], &view[1]) {
                (Value::Str(view_key), Value::Int(offset)) if *offset >= 0 => {
                    (view_key.clone(), *offset as usize)
                }
                _ => return Err(bad()),
            },
            _ => (key.clone(), 0),
        };
        let index = match self.by_key.get(&index_key) {
            Some(&i) => i,
            None => {
                self.list.push(StorageInfo {
                    data_key: key.clone(),
                    kind,
                    view_offset,
                });
                self.by_key.insert(index_key, self.list.len() - 1);
                self.list.len() - 1
            }
        };
        Ok(Value::Extern(Torch::Storage(index)))
    }

    /// `callable(*args)`: tensors, parameters and ordered dicts are understood, anything else
    /// becomes an opaque object.
    fn call(&mut self, callable: Value, args: Value) -> Result<Value> {
        call(callable, args)
    }
}

/// A tensor as pickled: a strided view of a storage.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct TensorRef {
    pub(super) storage: usize,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

/// Copies the strided view out of the storage bytes into a contiguous CPU tensor.
pub(super) fn materialize(
    name: &str,
    t: &TensorRef,
    storage: &StorageInfo,
    data: &[u8],
) -> Result<Tensor> {
    let es = storage.kind.element_size();
    let available = data.len() / es;
    let corrupt = |what: String| {
        Error::Checkpoint(format!(
            "tensor `{name}` {:?}: {what}: corrupt file",
            t.size
        ))
    };
    let numel = t
        .size
        .iter()
        .try_fold(1usize, |acc, &n| acc.checked_mul(n))
        .ok_or_else(|| corrupt("element count overflows".into()))?;
    // A stride-0 view may legitimately repeat its storage, but not without bound: refuse
    // allocations that no real checkpoint needs.
    if numel > available.max(1).saturating_mul(MAX_EXPANSION) {
        return Err(corrupt(format!(
            "{numel} elements from a storage of {available}"
        )));
    }
    // The strides of the contiguous copy are the products of the sizes from the right: for an
    // empty tensor they may overflow where the element count does not.
    t.size
        .iter()
        .rev()
        .try_fold(1usize, |acc, &n| acc.checked_mul(n))
        .ok_or_else(|| corrupt("sizes overflow".into()))?;
    let start = storage
        .view_offset
        .checked_add(t.offset)
        .ok_or_else(|| corrupt("offset overflows".into()))?;
    if numel == 0 {
        // Nothing is read, but the view still starts inside its storage, or at its end.
        if start > available {
            return Err(Error::Checkpoint(format!(
                "tensor `{name}` {:?} starts at element {start} of a storage holding {available}: truncated or corrupt file",
                t.size
            )));
        }
    } else {
        let last = t
            .size
            .iter()
            .zip(&t.stride)
            .try_fold(start, |acc, (&n, &s)| {
                acc.checked_add((n - 1).checked_mul(s)?)
            })
            .ok_or_else(|| corrupt("strides overflow".into()))?;
        if last >= available {
            return Err(Error::Checkpoint(format!(
                "tensor `{name}` {:?} reads element {last} of a storage holding {available}: truncated or corrupt file",
                t.size
            )));
        }
    }
    let contiguous = {
        let mut expected = 1;
        let mut ok = true;
        for (&n, &s) in t.size.iter().zip(&t.stride).rev() {
            if n > 1 && s != expected {
                ok = false;
            }
            expected *= n;
        }
        ok
    };
    let mut raw = Vec::with_capacity(numel * es);
    if contiguous {
        raw.extend_from_slice(&data[start * es..(start + numel) * es]);
    } else {
        let mut index = vec![0usize; t.size.len()];
        for _ in 0..numel {
            let at = start
                + index
                    .iter()
                    .zip(&t.stride)
                    .map(|(i, s)| i * s)
                    .sum::<usize>();
            raw.extend_from_slice(&data[at * es..(at + 1) * es]);
            for d in (0..index.len()).rev() {
                index[d] += 1;
                if index[d] < t.size[d] {
                    break;
                }
                index[d] = 0;
            }
        }
    }
    if storage.kind == StorageType::I8 {
        // candle has no int8: widen to i16, keeping the values.
        raw = raw
            .iter()
            .flat_map(|&b| (b as i8 as i16).to_le_bytes())
            .collect();
    }
    Ok(Tensor::from_raw_buffer(
        &raw,
        storage.kind.dtype(),
        &t.size,
        &Device::Cpu,
    )?)
}
// ---------------------------------------------------------------------------------------------
// The callables of a checkpoint (REDUCE, NEWOBJ): tensors, parameters, ordered dicts.

/// [`Storages`]' [`Callbacks::call`] (it needs no storage).
fn call(callable: Value, args: Value) -> Result<Value> {
    let Value::Global(module, name) = &callable else {
        return Ok(Value::Object {
            callable: Box::new(callable),
            args: Box::new(args),
            state: None,
        });
    };
    let mut items = match &args {
        Value::Tuple(items) => items.clone(),
        _ => Vec::new(),
    };
    match (module.as_str(), name.as_str()) {
        ("collections", "OrderedDict") => {
            let mut dict = Vec::new();
            if let Some(Value::List(pairs)) = items.first() {
                for pair in pairs {
                    if let Value::Tuple(kv) = pair {
                        if kv.len() == 2 {
                            dict.push((kv[0].clone(), kv[1].clone()));
                        }
                    }
                }
            }
            Ok(Value::Dict(dict))
        }
        ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor")
            if items.len() >= 4 =>
        {
            rebuild_tensor(&items).map(|t| Value::Extern(Torch::Tensor(t)))
        }
        ("torch._utils", "_rebuild_parameter")
        | ("torch._utils", "_rebuild_parameter_with_state")
            if !items.is_empty() =>
        {
            Ok(items.swap_remove(0))
        }
        ("torch._tensor", "_rebuild_from_type_v2") if items.len() >= 3 => {
            let inner_args = items.swap_remove(2);
            let func = items.swap_remove(0);
            call(func, inner_args)
        }
        _ => Ok(Value::Object {
            callable: Box::new(callable),
            args: Box::new(args),
            state: None,
        }),
    }
}

fn as_usize_list(v: &Value, what: &str) -> Result<Vec<usize>> {
    let items = match v {
        Value::Tuple(items) | Value::List(items) => items,
        // `torch.Size(...)` pickles as a reduce of a tuple.
        Value::Object { args, .. } => {
            return as_usize_list(
                match args.as_ref() {
                    Value::Tuple(inner) if inner.len() == 1 => &inner[0],
                    other => other,
                },
                what,
            )
        }
        other => {
            return Err(Error::Checkpoint(format!(
                "tensor {what}: expected a tuple, found {}",
                other.describe()
            )))
        }
    };
    items
        .iter()
        .map(|i| match i {
            Value::Int(n) if *n >= 0 => usize::try_from(*n)
                .map_err(|_| Error::Checkpoint(format!("tensor {what} too large"))),
            other => Err(Error::Checkpoint(format!(
                "tensor {what}: expected an integer, found {}",
                other.describe()
            ))),
        })
        .collect()
}

/// `_rebuild_tensor_v2(storage, storage_offset, size, stride, ...)`.
fn rebuild_tensor(args: &[Value]) -> Result<TensorRef> {
    let Value::Extern(Torch::Storage(storage)) = args[0] else {
        return Err(Error::Checkpoint(format!(
            "tensor rebuilt from {} instead of a storage",
            args[0].describe()
        )));
    };
    let Value::Int(offset) = args[1] else {
        return Err(Error::Checkpoint(
            "tensor storage offset is not an integer".into(),
        ));
    };
    let size = as_usize_list(&args[2], "size")?;
    let stride = as_usize_list(&args[3], "stride")?;
    if size.len() != stride.len() || offset < 0 {
        return Err(Error::Checkpoint(format!(
            "tensor with size {size:?}, stride {stride:?}, offset {offset}"
        )));
    }
    Ok(TensorRef {
        storage,
        offset: offset as usize,
        size,
        stride,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_views_are_copied_and_absurd_sizes_refused() {
        let storage = StorageInfo {
            data_key: "0".into(),
            kind: StorageType::F32,
            view_offset: 0,
        };
        let data: Vec<u8> = [1f32, 2.0, 3.0, 4.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let view = |offset, size: Vec<usize>, stride: Vec<usize>| TensorRef {
            storage: 0,
            offset,
            size,
            stride,
        };
        // An expanded (stride-0) row and a transposed view.
        let t = materialize("x", &view(1, vec![3, 2], vec![0, 1]), &storage, &data).unwrap();
        assert_eq!(t.to_vec2::<f32>().unwrap(), vec![vec![2.0, 3.0]; 3]);
        let t = materialize("x", &view(0, vec![2, 2], vec![1, 2]), &storage, &data).unwrap();
        assert_eq!(
            t.to_vec2::<f32>().unwrap(),
            vec![vec![1.0, 3.0], vec![2.0, 4.0]]
        );
        for bad in [
            view(0, vec![1 << 40], vec![0]),
            view(0, vec![usize::MAX, 2], vec![1, 1]),
            view(0, vec![2, 2], vec![usize::MAX, 1]),
            view(usize::MAX, vec![1], vec![1]),
            view(0, vec![5], vec![1]),
            // Empty, but past the storage's end or with overflowing contiguous strides.
            view(5, vec![0], vec![1]),
            view(9, vec![2, 0], vec![5, 1]),
            view(0, vec![0, 1 << 40, 1 << 40], vec![1, 1, 1]),
        ] {
            assert!(materialize("x", &bad, &storage, &data).is_err(), "{bad:?}");
        }
        // Empty views inside the storage or at its end.
        for offset in [0, 4] {
            let t = materialize("x", &view(offset, vec![0, 3], vec![3, 1]), &storage, &data);
            assert_eq!(t.unwrap().dims(), &[0, 3]);
        }
    }
}
