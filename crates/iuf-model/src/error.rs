//! Errors of the model crate: invalid configs, bad inputs, and model files that do not fit.

use std::fmt;
use std::path::PathBuf;

/// Everything that can go wrong building, running, saving or loading a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A configuration failed `check()`.
    #[error("invalid model config: {0}")]
    Config(String),

    /// A tensor handed to the model has the wrong shape or dtype.
    #[error("bad input `{name}`: expected {expected}, found {found}")]
    Input {
        name: String,
        expected: String,
        found: String,
    },

    /// A reference (PyTorch) state dict cannot be mapped onto this model.
    #[error("reference state dict: tensor `{name}`: {reason}")]
    Reference { name: String, reason: String },

    /// Reading or writing a model file failed at the OS level.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The file is not a readable safetensors file (truncated, corrupt header, bad checksum, ...).
    #[error("{}: corrupt model file: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },

    /// The file is a safetensors file but not an iuf model, or was written by another format version.
    #[error("{}: {reason}", path.display())]
    Format { path: PathBuf, reason: String },

    /// Tensors in a file (or a state dict) do not match what the model expects.
    #[error("{}: {} tensor problem(s): {}", source_name, problems.len(), TensorProblems(problems))]
    Tensors {
        source_name: String,
        problems: Vec<TensorProblem>,
    },

    /// Config or metadata JSON that cannot be (de)serialised.
    #[error("{context}: {source}")]
    Json {
        context: String,
        #[source]
        source: serde_json::Error,
    },

    /// A per-object statistic (the per-position Gaussian) cannot be fitted or read back.
    #[error("{0}")]
    Fit(String),

    /// An error raised inside candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// One way in which a set of tensors does not fit the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TensorProblem {
    /// The model needs this tensor and it is absent.
    Missing { name: String, expected: Vec<usize> },
    /// The tensor is present but the model has no parameter of that name.
    Unexpected { name: String, found: Vec<usize> },
    /// The tensor has the wrong shape.
    Shape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// The tensor is not stored as f32.
    DType { name: String, found: String },
}

impl fmt::Display for TensorProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing { name, expected } => {
                write!(f, "missing tensor `{name}` (expected shape {expected:?})")
            }
            Self::Unexpected { name, found } => {
                write!(f, "unexpected tensor `{name}` (shape {found:?})")
            }
            Self::Shape {
                name,
                expected,
                found,
            } => write!(
                f,
                "tensor `{name}` has shape {found:?}, expected {expected:?}"
            ),
            Self::DType { name, found } => write!(f, "tensor `{name}` is {found}, expected F32"),
        }
    }
}

struct TensorProblems<'a>(&'a [TensorProblem]);

impl fmt::Display for TensorProblems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, ModelError>;
