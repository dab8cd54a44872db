//! PyTorch checkpoint reader working on bytes (no I/O): the legacy serialisation (PyTorch < 1.6, or
//! `torch.save(..., _use_new_zipfile_serialization=False)`, as in the EfficientNet weight files) and
//! the zip format, through a small pickle interpreter of our own.
//!
//! Three layers: `pickle`, the virtual machine that turns a pickle into Python values;
//! `storage`, PyTorch's containers (the layouts of both formats are described there), its
//! storages and the rebuilding of tensors from them; and this module, which tells the format,
//! finds the state dict in the object and names its tensors.

mod pickle;
mod storage;

use std::collections::HashSet;

use candle_core::Tensor;

use crate::error::{Error, Result};
use storage::{materialize, read_legacy, read_zip, TensorRef, Torch, Value};

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
    let mut seen = HashSet::new();
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
// Finding the tensors in the unpickled object.

/// The state dict inside a training checkpoint: `state_dict`, else `model`, else the object.
fn select_state_dict(root: Value) -> Value {
    if let Value::Dict(items) = &root {
        for key in ["state_dict", "model"] {
            if let Some((_, v)) = items
                .iter()
                .find(|(k, v)| matches!(k, Value::Str(s) if s == key) && holds_tensors(v))
            {
                return v.clone();
            }
        }
    }
    root
}

fn holds_tensors(v: &Value) -> bool {
    match v {
        Value::Extern(Torch::Tensor(_)) => true,
        Value::Dict(items) => items.iter().any(|(_, v)| holds_tensors(v)),
        Value::List(items) | Value::Tuple(items) => items.iter().any(holds_tensors),
        Value::Object { state: Some(s), .. } => holds_tensors(s),
        _ => false,
    }
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
        Value::Extern(Torch::Tensor(t)) => out.push((prefix.to_string(), t)),
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
