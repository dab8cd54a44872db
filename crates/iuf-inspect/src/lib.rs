//! The scoring path that `iuf predict`, `iuf serve` and the C and Python bindings share: decoded
//! images in, the calibrator's verdict (score, object, threshold, decision) and the anomaly map out.

mod inspect;

pub use inspect::{Inspection, Inspector, Outcome, StageMs, Timings};
