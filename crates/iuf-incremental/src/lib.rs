//! iuf-incremental: learning new objects without forgetting (IUF), its baselines, and the protocol
//! runner. Section numbers refer to `../shared/docs/ALGORITHM.md`.
//!
//! - [`feature_store`]: the frozen backbone's features, computed once and cached on disk.
//! - [`learner`]: a model (reconstruction network, per-object memories, or both) plus everything it
//!   needs to keep learning; one step at a time. Its parts: the reconstruction trainer (`recon`),
//!   the memory builder ([`memory`]) and the calibrator ([`calibrate`]).
//! - [`scl`], [`projection`], [`optim`], [`penalty`]: the pieces of sections 4.4-4.6 and section 8.
//! - [`baseline`]: the class-mean reference every trained model must beat.
//! - [`eval`], [`runner`]: per-class metrics and the resumable protocol runner.

pub mod baseline;
pub mod calibrate;
pub mod config;
pub mod error;
pub mod eval;
pub mod feature_store;
pub mod gaussian;
pub mod learner;
pub mod memory;
pub mod optim;
pub mod penalty;
pub mod progress;
pub mod projection;
mod recon;
pub mod runner;
pub mod scl;
pub mod seeded_init;

pub use config::{Strategy, TrainConfig};
pub use error::{Error, Result};
pub use feature_store::{BackboneId, FeatureStore};
pub use learner::{Learner, Predictions, StepData, StepRecord};
pub use progress::{NoProgress, Progress};
pub use runner::{learn_classes, run_protocol, RunResults, RunSpec};
