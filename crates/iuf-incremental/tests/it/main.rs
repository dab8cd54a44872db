//! Integration tests of iuf-incremental: the learner on synthetic features, model files of earlier
//! versions, and the protocol runner end to end on real images from ../shared/datasets/mvtec-mini
//! with the real Lite0 backbone.

mod calibration;
mod compat;
mod learner;
mod more;
mod real_data;
mod tiles;
