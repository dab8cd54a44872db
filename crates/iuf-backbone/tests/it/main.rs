//! The integration tests of iuf-backbone, one binary (see CONVENTIONS.md): parity with PyTorch on
//! the shared fixture and real photos, the checkpoint reader, and errors on bad weights.

mod bad_weights;
mod common;
#[cfg(feature = "fetch")]
mod fetch;
mod parity;
mod photos;
mod pth_reader;
