//! The single integration-test binary of iuf-metrics: parity with scikit-learn, hand-computed PRO,
//! image scores and the continual-learning matrix.

mod continual;
mod generator;
mod image_score;
mod pro;
mod reference;
mod sklearn;
