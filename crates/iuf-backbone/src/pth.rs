//! PyTorch checkpoint reader working on bytes (no I/O): the legacy serialisation (PyTorch < 1.6, or
//! `torch.save(..., _use_new_zipfile_serialization=False)`, as in the EfficientNet weight files) and
//! the zip format, through a small pickle interpreter of our own.
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

use crate::error::{Error, Result};

/// The magic number that opens a legacy checkpoint.
const LEGACY_MAGIC: i128 = 0x1950a86a20f9469cfc6c;
/// The only legacy protocol version PyTorch ever wrote.
const LEGACY_PROTOCOL: i128 = 1001;
/// Most elements a (stride-0) tensor may have per element of its storage.
const MAX_EXPANSION: usize = 4096;

/// Serialisation format of a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PthFormat {
    /// Zip archive (PyTorch >= 1.6 default).
    Zip,
    /// Legacy pickle stream (PyTorch < 1.6, `_use_new_zipfile_serialization=False`).
    Legacy,
}

/// Tells the format from the first bytes (a zip local-file header or a pickle protocol opcode).
pub fn detect_format(bytes: &[u8]) -> Result<PthFormat> {
    if bytes.starts_with(b"PK\x03\x04") {
        return Ok(PthFormat::Zip);
    }
    if bytes.len() > 262 && &bytes[257..262] == b"ustar" {
        return Err(Error::Checkpoint(
            "tar-format checkpoint (PyTorch < 0.4) is not supported; re-save it with a newer PyTorch".into(),
        ));
    }
    if bytes.first() == Some(&0x80) {
        return Ok(PthFormat::Legacy);
    }
    Err(Error::Checkpoint(format!(
        "not a PyTorch checkpoint: starts with {:02x?}, expected a zip archive or a pickle stream",
        &bytes[..bytes.len().min(4)]
    )))
}

/// Reads every tensor of a checkpoint (zip or legacy format), in the order they were saved, as CPU
/// tensors of their stored dtype.
///
/// The state dict is found as the object itself, or under its `state_dict` (else `model`) key, or,
/// for a pickled `nn.Module`, in its parameters and buffers. Nested dicts give dotted names; the
/// `module.` prefix that `nn.DataParallel` adds is stripped. Names are otherwise kept as saved: a
/// model that uses other names maps them itself.
pub fn read_pth(bytes: &[u8]) -> Result<Vec<(String, Tensor)>> {
    let (root, storages, data) = match detect_format(bytes)? {
        PthFormat::Legacy => read_legacy(bytes)?,
        PthFormat::Zip => read_zip(bytes)?,
    };
    let mut named = Vec::new();
    flatten("", select_state_dict(root), &mut named);
    if named.is_empty() {
        return Err(Error::Checkpoint("the checkpoint holds no tensors".into()));
    }
    let mut seen = std::collections::HashSet::new();
    let mut tensors = Vec::with_capacity(named.len());
    for (name, t) in named {
        let name = strip_data_parallel(&name).to_string();
        if !seen.insert(name.clone()) {
            continue;
        }
        let storage = &storages.list[t.storage];
        let bytes = data.get(&storage.data_key).ok_or_else(|| {
            Error::Checkpoint(format!(
                "tensor `{name}`: data of storage `{}` is missing",
                storage.data_key
            ))
        })?;
        tensors.push((name.clone(), materialize(&name, &t, storage, bytes)?));
    }
    Ok(tensors)
}

fn strip_data_parallel(mut name: &str) -> &str {
    while let Some(rest) = name.strip_prefix("module.") {
        name = rest;
    }
    name
}

// ---------------------------------------------------------------------------------------------
// Containers.

/// Raw bytes of each storage, by key.
type StorageData<'a> = HashMap<String, std::borrow::Cow<'a, [u8]>>;

fn read_legacy(bytes: &[u8]) -> Result<(Value, Storages, StorageData<'_>)> {
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
        let count = cur.u64()? as usize;
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

fn read_zip(bytes: &[u8]) -> Result<(Value, Storages, StorageData<'static>)> {
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
struct StorageInfo {
    /// Key of the bytes in the data section (the root storage for a legacy view).
    data_key: String,
    kind: StorageType,
    /// Elements before this (view) storage starts inside the data.
    view_offset: usize,
}

/// Every storage referenced by persistent ids, deduplicated by key.
#[derive(Debug, Default)]
struct Storages {
    list: Vec<StorageInfo>,
    by_key: HashMap<String, usize>,
}

impl Storages {
    fn element_size(&self, data_key: &str) -> Option<usize> {
        self.list
            .iter()
            .find(|s| s.data_key == data_key)
            .map(|s| s.kind.element_size())
    }

    /// Resolves `('storage', storage_type, key, location, numel[, view_metadata])`.
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
        Ok(Value::Storage(index))
    }
}

/// A tensor as pickled: a strided view of a storage.
#[derive(Debug, Clone, PartialEq)]
struct TensorRef {
    storage: usize,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

/// Copies the strided view out of the storage bytes into a contiguous CPU tensor.
fn materialize(name: &str, t: &TensorRef, storage: &StorageInfo, data: &[u8]) -> Result<Tensor> {
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
    let start = storage
        .view_offset
        .checked_add(t.offset)
        .ok_or_else(|| corrupt("offset overflows".into()))?;
    if numel > 0 {
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
// Finding the tensors in the unpickled object.

/// The state dict inside a training checkpoint: `state_dict`, else `model`, else the object.
fn select_state_dict(root: Value) -> Value {
    if let Value::Dict(items) = &root {
        for key in ["state_dict", "model"] {
            if let Some((_, v)) = items
                .iter()
                .find(|(k, v)| matches!(k, Value::Str(s) if s == key) && v.holds_tensors())
            {
                return v.clone();
            }
        }
    }
    root
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Collects `(dotted name, tensor)` pairs in pickle order.
fn flatten(prefix: &str, value: Value, out: &mut Vec<(String, TensorRef)>) {
    match value {
        Value::Tensor(t) => out.push((prefix.to_string(), t)),
        Value::Dict(items) => {
            for (key, v) in items {
                let key = match key {
                    Value::Str(s) => s,
                    Value::Int(i) => i.to_string(),
                    _ => continue,
                };
                flatten(&join(prefix, &key), v, out);
            }
        }
        Value::List(items) | Value::Tuple(items) => {
            for (i, v) in items.into_iter().enumerate() {
                flatten(&join(prefix, &i.to_string()), v, out);
            }
        }
        // A pickled nn.Module: parameters and buffers, then the sub-modules, as state_dict() does.
        Value::Object {
            state: Some(state), ..
        } => {
            if let Value::Dict(items) = *state {
                let mut modules = None;
                for (key, v) in items {
                    match &key {
                        Value::Str(s) if s == "_parameters" || s == "_buffers" => {
                            flatten(prefix, v, out)
                        }
                        Value::Str(s) if s == "_modules" => modules = Some(v),
                        _ => {}
                    }
                }
                if let Some(modules) = modules {
                    flatten(prefix, modules, out);
                }
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// The pickle interpreter.

/// A Python object as far as checkpoints need it.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    None,
    Bool(bool),
    Int(i128),
    /// An integer too large for i128 (kept opaque).
    BigInt,
    Float(f64),
    Str(String),
    Bytes(usize),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    /// `module.name` of a class or function.
    Global(String, String),
    /// An instance of anything else: its constructor, arguments and `__setstate__` state.
    Object {
        callable: Box<Value>,
        args: Box<Value>,
        state: Option<Box<Value>>,
    },
    Storage(usize),
    Tensor(TensorRef),
}

impl Value {
    /// A short description for error messages.
    fn describe(&self) -> String {
        let s = format!("{self:?}");
        if s.chars().count() > 120 {
            format!("{}...", s.chars().take(117).collect::<String>())
        } else {
            s
        }
    }

    fn holds_tensors(&self) -> bool {
        match self {
            Value::Tensor(_) => true,
            Value::Dict(items) => items.iter().any(|(_, v)| v.holds_tensors()),
            Value::List(items) | Value::Tuple(items) => items.iter().any(Value::holds_tensors),
            Value::Object { state: Some(s), .. } => s.holds_tensors(),
            _ => false,
        }
    }
}

/// Bounds-checked reader over the checkpoint bytes.
struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let left = self.data.len() - self.pos;
        if n > left {
            return Err(Error::Checkpoint(format!(
                "truncated: needed {n} bytes at offset {}, only {left} left",
                self.pos
            )));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().unwrap_or_default(),
        ))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().unwrap_or_default(),
        ))
    }

    fn i32(&mut self) -> Result<i32> {
        Ok(i32::from_le_bytes(
            self.take(4)?.try_into().unwrap_or_default(),
        ))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }

    /// Up to and excluding the next `\n`.
    fn line(&mut self) -> Result<&'a [u8]> {
        let rest = &self.data[self.pos..];
        let end = rest.iter().position(|&b| b == b'\n').ok_or_else(|| {
            Error::Checkpoint(format!(
                "truncated: unterminated text line at offset {}",
                self.pos
            ))
        })?;
        self.pos += end + 1;
        Ok(&rest[..end])
    }
}

fn text(bytes: &[u8], what: &str) -> Result<String> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| Error::Checkpoint(format!("{what} is not valid UTF-8")))
}

/// Little-endian two's-complement integer of LONG1/LONG4.
fn le_signed(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Int(0);
    }
    if bytes.len() > 16 {
        return Value::BigInt;
    }
    let negative = bytes[bytes.len() - 1] & 0x80 != 0;
    let mut buf = [if negative { 0xff } else { 0 }; 16];
    buf[..bytes.len()].copy_from_slice(bytes);
    Value::Int(i128::from_le_bytes(buf))
}

/// The pickle virtual machine (protocols 0-5, without extension registry and out-of-band buffers).
struct Unpickler<'s> {
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    storages: &'s mut Storages,
}

impl<'s> Unpickler<'s> {
    fn new(storages: &'s mut Storages) -> Self {
        Self {
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            storages,
        }
    }

    fn pop(&mut self) -> Result<Value> {
        self.stack
            .pop()
            .ok_or_else(|| Error::Checkpoint("corrupt pickle: stack underflow".into()))
    }

    fn top(&mut self) -> Result<&mut Value> {
        self.stack
            .last_mut()
            .ok_or_else(|| Error::Checkpoint("corrupt pickle: stack underflow".into()))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| Error::Checkpoint("corrupt pickle: no MARK".into()))?;
        if mark > self.stack.len() {
            return Err(Error::Checkpoint("corrupt pickle: MARK above stack".into()));
        }
        Ok(self.stack.split_off(mark))
    }

    fn memo_get(&self, id: u32) -> Result<Value> {
        self.memo
            .get(&id)
            .cloned()
            .ok_or_else(|| Error::Checkpoint(format!("corrupt pickle: memo entry {id} missing")))
    }

    fn memo_put(&mut self, id: u32) -> Result<()> {
        let v = self.top()?.clone();
        self.memo.insert(id, v);
        Ok(())
    }

    fn set_items(&mut self, items: Vec<Value>) -> Result<()> {
        if !items.len().is_multiple_of(2) {
            return Err(Error::Checkpoint("corrupt pickle: odd SETITEMS".into()));
        }
        match self.top()? {
            Value::Dict(d) => {
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    d.push((k, v));
                }
                Ok(())
            }
            // Items set on an opaque object (a dict subclass): not needed for tensors.
            Value::Object { .. } => Ok(()),
            other => Err(Error::Checkpoint(format!(
                "corrupt pickle: SETITEM on {}",
                other.describe()
            ))),
        }
    }

    fn append(&mut self, items: Vec<Value>) -> Result<()> {
        match self.top()? {
            Value::List(l) => {
                l.extend(items);
                Ok(())
            }
            Value::Object { .. } => Ok(()),
            other => Err(Error::Checkpoint(format!(
                "corrupt pickle: APPEND on {}",
                other.describe()
            ))),
        }
    }

    /// `callable(*args)`: tensors, parameters and ordered dicts are understood, anything else
    /// becomes an opaque object.
    fn call(&mut self, callable: Value, args: Value) -> Result<Value> {
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
                rebuild_tensor(&items).map(Value::Tensor)
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
                self.call(func, inner_args)
            }
            _ => Ok(Value::Object {
                callable: Box::new(callable),
                args: Box::new(args),
                state: None,
            }),
        }
    }

    /// Runs the machine to STOP and returns the result.
    fn load(mut self, cur: &mut Cursor<'_>) -> Result<Value> {
        loop {
            let at = cur.pos;
            let op = cur.u8()?;
            match op {
                0x80 => {
                    cur.u8()?; // PROTO
                }
                0x95 => {
                    cur.u64()?; // FRAME: a length hint
                }
                b'.' => return self.pop(), // STOP
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'I' => {
                    let line = cur.line()?;
                    let v = match line {
                        b"00" => Value::Bool(false),
                        b"01" => Value::Bool(true),
                        digits => {
                            Value::Int(text(digits, "INT")?.trim().parse().map_err(|_| {
                                Error::Checkpoint(format!("corrupt pickle: bad INT at offset {at}"))
                            })?)
                        }
                    };
                    self.stack.push(v);
                }
                b'L' => {
                    let line = text(cur.line()?, "LONG")?;
                    let digits = line.trim().trim_end_matches('L');
                    self.stack
                        .push(digits.parse().map(Value::Int).unwrap_or(Value::BigInt));
                }
                b'J' => {
                    let v = cur.i32()?;
                    self.stack.push(Value::Int(v as i128));
                }
                b'K' => {
                    let v = cur.u8()?;
                    self.stack.push(Value::Int(v as i128));
                }
                b'M' => {
                    let v = cur.u16()?;
                    self.stack.push(Value::Int(v as i128));
                }
                0x8a => {
                    let n = cur.u8()? as usize;
                    let v = le_signed(cur.take(n)?);
                    self.stack.push(v);
                }
                0x8b => {
                    let n = cur.i32()?;
                    let n = usize::try_from(n).map_err(|_| {
                        Error::Checkpoint(format!("corrupt pickle: LONG4 of length {n}"))
                    })?;
                    let v = le_signed(cur.take(n)?);
                    self.stack.push(v);
                }
                b'F' => {
                    let line = text(cur.line()?, "FLOAT")?;
                    self.stack
                        .push(Value::Float(line.trim().parse().unwrap_or(f64::NAN)));
                }
                b'G' => {
                    let v = f64::from_be_bytes(cur.take(8)?.try_into().unwrap_or_default());
                    self.stack.push(Value::Float(v));
                }
                b'X' => {
                    let n = cur.u32()? as usize;
                    let s = text(cur.take(n)?, "string")?;
                    self.stack.push(Value::Str(s));
                }
                0x8c => {
                    let n = cur.u8()? as usize;
                    let s = text(cur.take(n)?, "string")?;
                    self.stack.push(Value::Str(s));
                }
                0x8d => {
                    let n = usize::try_from(cur.u64()?).unwrap_or(usize::MAX);
                    let s = text(cur.take(n)?, "string")?;
                    self.stack.push(Value::Str(s));
                }
                b'V' => {
                    // Protocol 0 unicode: raw-unicode-escape; checkpoints only use ASCII names.
                    let s = text(cur.line()?, "string")?;
                    self.stack.push(Value::Str(s));
                }
                // Python 2 byte strings (BINSTRING, SHORT_BINSTRING): names in old checkpoints.
                b'T' => {
                    let n = cur.i32()?;
                    let n = usize::try_from(n).map_err(|_| {
                        Error::Checkpoint("corrupt pickle: negative BINSTRING".into())
                    })?;
                    let s = String::from_utf8_lossy(cur.take(n)?).into_owned();
                    self.stack.push(Value::Str(s));
                }
                b'U' => {
                    let n = cur.u8()? as usize;
                    let s = String::from_utf8_lossy(cur.take(n)?).into_owned();
                    self.stack.push(Value::Str(s));
                }
                b'B' => {
                    let n = cur.u32()? as usize;
                    cur.take(n)?;
                    self.stack.push(Value::Bytes(n));
                }
                b'C' => {
                    let n = cur.u8()? as usize;
                    cur.take(n)?;
                    self.stack.push(Value::Bytes(n));
                }
                0x8e | 0x96 => {
                    let n = usize::try_from(cur.u64()?).unwrap_or(usize::MAX);
                    cur.take(n)?;
                    self.stack.push(Value::Bytes(n));
                }
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err(Error::Checkpoint("corrupt pickle: stack underflow".into()));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(items));
                }
                b']' => self.stack.push(Value::List(Vec::new())),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(items));
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append(vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                b'}' => self.stack.push(Value::Dict(Vec::new())),
                b'd' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Dict(Vec::new()));
                    self.set_items(items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                // Sets: kept as lists (never hold tensors in checkpoints).
                0x8f => self.stack.push(Value::List(Vec::new())),
                0x90 => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(items));
                }
                b'c' => {
                    let module = text(cur.line()?, "GLOBAL module")?;
                    let name = text(cur.line()?, "GLOBAL name")?;
                    self.stack.push(Value::Global(module, name));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.stack.push(Value::Global(m, n)),
                        _ => {
                            return Err(Error::Checkpoint(
                                "corrupt pickle: STACK_GLOBAL needs two strings".into(),
                            ))
                        }
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.call(callable, args)?;
                    self.stack.push(v);
                }
                0x81 => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = self.call(cls, args)?;
                    self.stack.push(v);
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = self.call(cls, args)?;
                    self.stack.push(v);
                }
                b'b' => {
                    let state = self.pop()?;
                    match self.top()? {
                        // An OrderedDict's attributes (`_metadata`) and a tensor's Python state
                        // are not needed.
                        Value::Dict(_) | Value::Tensor(_) => {}
                        Value::Object { state: slot, .. } => *slot = Some(Box::new(state)),
                        _ => {}
                    }
                }
                b'p' => {
                    let line = text(cur.line()?, "PUT")?;
                    let id = line
                        .trim()
                        .parse()
                        .map_err(|_| Error::Checkpoint("corrupt pickle: bad PUT".into()))?;
                    self.memo_put(id)?;
                }
                b'q' => {
                    let id = cur.u8()? as u32;
                    self.memo_put(id)?;
                }
                b'r' => {
                    let id = cur.u32()?;
                    self.memo_put(id)?;
                }
                0x94 => {
                    let id = self.memo.len() as u32;
                    self.memo_put(id)?;
                }
                b'g' => {
                    let line = text(cur.line()?, "GET")?;
                    let id = line
                        .trim()
                        .parse()
                        .map_err(|_| Error::Checkpoint("corrupt pickle: bad GET".into()))?;
                    let v = self.memo_get(id)?;
                    self.stack.push(v);
                }
                b'h' => {
                    let id = cur.u8()? as u32;
                    let v = self.memo_get(id)?;
                    self.stack.push(v);
                }
                b'j' => {
                    let id = cur.u32()?;
                    let v = self.memo_get(id)?;
                    self.stack.push(v);
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.storages.persistent_load(pid)?;
                    self.stack.push(v);
                }
                b'P' => {
                    let pid = text(cur.line()?, "PERSID")?;
                    return Err(Error::Checkpoint(format!(
                        "unsupported text persistent id `{pid}`"
                    )));
                }
                other => {
                    return Err(Error::Checkpoint(format!(
                        "unsupported or corrupt pickle opcode 0x{other:02x} at offset {at}"
                    )))
                }
            }
        }
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
    let Value::Storage(storage) = args[0] else {
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
    fn detects_formats_and_rejects_garbage() {
        assert_eq!(detect_format(b"PK\x03\x04rest").unwrap(), PthFormat::Zip);
        assert_eq!(detect_format(b"\x80\x02\x8a").unwrap(), PthFormat::Legacy);
        let err = read_pth(b"hello").unwrap_err().to_string();
        assert!(err.contains("not a PyTorch checkpoint"), "{err}");
        assert!(read_pth(b"").is_err());
    }

    #[test]
    fn long1_decodes_the_legacy_magic() {
        // LONG1 of the magic number as pickle writes it (10 little-endian bytes).
        let bytes = LEGACY_MAGIC.to_le_bytes();
        assert_eq!(le_signed(&bytes[..10]), Value::Int(LEGACY_MAGIC));
        assert_eq!(le_signed(&[0xff]), Value::Int(-1));
        assert_eq!(le_signed(&[0xe9, 0x03]), Value::Int(1001));
    }

    #[test]
    fn interprets_a_hand_written_pickle() {
        // {'a': [1, 2.5, True], 'b': ('x', None)} at protocol 2, written opcode by opcode.
        let mut p = vec![0x80, 2, b'}', b'q', 0, b'('];
        p.extend(b"X\x01\x00\x00\x00a");
        p.extend([b']', b'q', 1, b'(', b'K', 1, b'G']);
        p.extend(2.5f64.to_be_bytes());
        p.extend([0x88, b'e']);
        p.extend(b"X\x01\x00\x00\x00b");
        p.extend(b"X\x01\x00\x00\x00x");
        p.extend([b'N', 0x86, b'u', b'.']);
        let mut storages = Storages::default();
        let v = Unpickler::new(&mut storages)
            .load(&mut Cursor::new(&p))
            .unwrap();
        assert_eq!(
            v,
            Value::Dict(vec![
                (
                    Value::Str("a".into()),
                    Value::List(vec![Value::Int(1), Value::Float(2.5), Value::Bool(true)])
                ),
                (
                    Value::Str("b".into()),
                    Value::Tuple(vec![Value::Str("x".into()), Value::None])
                ),
            ])
        );
        // Every strict prefix is a clean error, never a panic.
        for n in 0..p.len() {
            let mut storages = Storages::default();
            assert!(Unpickler::new(&mut storages)
                .load(&mut Cursor::new(&p[..n]))
                .is_err());
        }
    }

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
        ] {
            assert!(materialize("x", &bad, &storage, &data).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn strips_data_parallel_prefixes() {
        assert_eq!(
            strip_data_parallel("module.module._fc.weight"),
            "_fc.weight"
        );
        assert_eq!(
            strip_data_parallel("_blocks.0.module.x"),
            "_blocks.0.module.x"
        );
    }
}
