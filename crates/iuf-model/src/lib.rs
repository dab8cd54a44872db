//! iuf-model: UniAD's reconstruction transformer with IUF's discriminator and object-aware
//! attention (ALGORITHM.md sections 3, 4.1, 4.2), the per-object statistics of section 10 (the
//! nearest-neighbour [`PatchMemory`] and the per-position [`PositionGaussian`]), anomaly maps and
//! scores (3.6, 6), the mapping from reference PyTorch checkpoints, and the model file format.
//!
//! The model takes a candle `VarBuilder`, runs on any candle device, and reads no files except
//! through [`save_model`] / [`load_model`].

pub mod config;
pub mod discriminator;
pub mod error;
pub mod file;
pub mod gaussian;
pub mod map;
pub mod memory;
pub mod model;
pub mod nn;
pub mod ops;
pub mod precision;
pub mod random;
pub mod reference;
pub mod runtime;
pub mod transformer;

pub use config::{
    DiscriminatorConfig, DiscriminatorInput, JitterConfig, ModelConfig, OasaMode, TransformerConfig,
};
pub use discriminator::{Discriminator, DiscriminatorOutput};
pub use error::{ModelError, Result, TensorProblem};
pub use file::{
    assign_tensors, load_model, load_model_bytes, load_model_bytes_except, remove_stale_temps,
    save_model, temp_path, LearnedClass, LoadedModel, MissingTensors, ModelBytes, ModelMeta,
    FORMAT_VERSION, STATE_PREFIX,
};
pub use gaussian::{GaussianConfig, PositionGaussian};
pub use map::{anomaly_map, gaussian_blur, image_scores, stitch, MAP_STRIDE, SCORE_POOL};
pub use memory::{MemoryConfig, PatchMemory};
pub use model::{IufModel, ModelOutput};
pub use precision::Precision;
pub use random::Mode;
pub use transformer::{Transformer, TransformerOutput};
