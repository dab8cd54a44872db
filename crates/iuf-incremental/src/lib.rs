//! iuf-incremental: learning new objects without forgetting (IUF), its baselines, and the protocol
//! runner. Section numbers refer to `../shared/docs/ALGORITHM.md`.
//!
//! - [`feature_store`]: the frozen backbone's features, computed once and cached on disk.
//! - [`learner`]: a method made of parts, learning one step at a time: the object
//!   [`prototypes`], the [`scorer`]s (reconstruction network with its [`scorer::trainer`],
//!   nearest-neighbour memory, per-position Gaussian, class mean) and the [`calibrate`]r, which
//!   fuses the scorers' maps and owns the verdict.
//! - [`scl`], [`projection`], [`optim`], [`penalty`]: the pieces of sections 4.4-4.6 and section 8.
//! - [`merge`]: models learned apart (one product each, methods without a network) merged into
//!   one.
//! - [`eval`], [`runner`]: per-class metrics and the resumable protocol runner.

pub mod calibrate;
pub mod config;
pub mod error;
pub mod eval;
pub mod feature_store;
pub mod learner;
pub mod merge;
pub mod optim;
pub mod penalty;
pub mod progress;
pub mod projection;
pub mod prototypes;
pub mod runner;
pub mod scl;
pub mod scorer;
pub mod seeded_init;
pub mod step;

pub use calibrate::{Calibrator, Decision, ThresholdRule, ThresholdSetting, Verdict};
pub use config::{Strategy, TrainConfig};
pub use error::{Error, Result};
pub use feature_store::{BackboneId, FeatureStore};
pub use learner::{GoodAdded, Learner, ObjectImages, Predictions, StepData, StepRecord};
pub use progress::{NoProgress, Progress};
pub use runner::{add_good_images, learn_classes, learn_more, run_protocol, RunResults, RunSpec};
pub use scorer::Scorer;
pub use step::{FeatureKind, ImageFeatures};
