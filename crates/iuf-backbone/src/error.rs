//! Errors of the backbone crate: bad configs and inputs, missing or misshaped weights, unreadable
//! checkpoints, failed weight downloads.

use std::path::PathBuf;

/// Everything that can go wrong in iuf-backbone. Messages name the tensor, file or field and say
/// what was expected and what was found.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config field is out of range (see [`crate::EfficientNetConfig::check`]).
    #[error("invalid backbone config: {0}")]
    Config(String),

    /// The weights have no tensor of this name.
    #[error("weight `{name}` is missing (expected shape {expected:?})")]
    MissingTensor { name: String, expected: Vec<usize> },

    /// The weights have the tensor but with another shape (a different variant, or a corrupt file).
    #[error("weight `{name}` has shape {found:?}, expected {expected:?}")]
    TensorShape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    /// The images given to the network are not a `[B, 3, H, W]` float tensor.
    #[error("images: expected {expected}, found {found}")]
    Input { expected: String, found: String },

    /// A PyTorch checkpoint could not be decoded (truncated, corrupt or an unsupported format).
    #[error("cannot read PyTorch checkpoint: {0}")]
    Checkpoint(String),

    /// Downloading or converting weights failed (feature `fetch`).
    #[error("fetching weights: {0}")]
    Fetch(String),

    /// A weights file is unreadable or does not match its digest (truncated, damaged, altered).
    #[error("{path}: {reason}")]
    Weights { path: PathBuf, reason: String },

    /// A file-system operation failed (feature `fetch` only: the rest of the crate does no I/O).
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// An error from candle (tensor ops, safetensors decoding).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result with the crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
