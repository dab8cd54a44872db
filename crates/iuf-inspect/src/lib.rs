//! The scoring path that `iuf predict`, `iuf serve` and the C and Python bindings share: open a
//! model file with its backbone weights ([`Model::open`], the checks `iuf predict` makes), then
//! score decoded RGB images ([`Inspector`]): the calibrator's verdict (object and its probability,
//! score, threshold, decision) and the anomaly map, which [`resize_map`] brings to the image's
//! size. There is no other copy of the preprocessing or of the thresholds: every front end calls
//! this crate. Learning too ([`learn`]: `iuf train`, `iuf learn` and the bindings' `train` and
//! `learn` make the same checks and run the same step), with the argument checks they share
//! ([`args`]).

pub mod args;
pub mod drift;
pub mod info;
mod inspect;
pub mod learn;
mod map;
pub mod open;

pub use inspect::{Inspection, Inspector, Outcome, StageMs, Timings};
pub use map::resize_map;
pub use open::{LoadedBackbone, Model, OpenError};
