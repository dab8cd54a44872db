//! Integration tests of iuf-model: reference parity, gradients, forward behaviour, model files.

mod bf16;
mod file;
mod forward;
mod grads;
mod parity;
