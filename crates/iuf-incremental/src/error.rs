//! Errors of the training, feature store and protocol runner.

use std::path::PathBuf;

/// Everything that can go wrong while training, evaluating or running a protocol.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The model crate rejected something (config, model file).
    #[error(transparent)]
    Model(#[from] iuf_model::ModelError),
    /// The data crate rejected something (dataset, image, protocol).
    #[error(transparent)]
    Data(#[from] iuf_data::Error),
    /// The backbone failed.
    #[error(transparent)]
    Backbone(#[from] iuf_backbone::Error),
    /// A metric could not be computed.
    #[error("metric for class `{class}`: {source}")]
    Metrics {
        /// The class being evaluated.
        class: String,
        /// What the metrics crate said.
        source: iuf_metrics::MetricsError,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A JSON file could not be parsed or written.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// A linear-algebra routine (SVD, eigendecomposition) failed.
    #[error("linear algebra: {0}")]
    Linalg(String),
    /// A configuration value is out of range or inconsistent.
    #[error("invalid training config: {0}")]
    Config(String),
    /// The run directory holds a different run than the one asked for.
    #[error("{path}: {msg}")]
    RunDir {
        /// The run directory or file inside it.
        path: PathBuf,
        /// What does not match.
        msg: String,
    },
    /// Anything else, with a message that says what and where.
    #[error("{0}")]
    Msg(String),
}

/// Result with this crate's error.
pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}
