//! Integration tests of iuf-model: reference parity, gradients, forward behaviour, model files.

mod file;
mod forward;
mod grads;
mod parity;
