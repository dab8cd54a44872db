//! Integration tests of iuf-incremental: the learner on synthetic features, and the protocol runner
//! end to end on real images from ../shared/datasets/mvtec-mini with the real Lite0 backbone.

mod learner;
mod real_data;
