//! iuf-model: the UniAD reconstruction transformer with IUF additions (being built).
pub mod ops;
