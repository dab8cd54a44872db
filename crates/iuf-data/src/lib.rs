//! iuf-data: dataset layouts (MVTec AD, VisA), the image pipeline (PIL-exact resize, ImageNet
//! normalisation), seeded batching, incremental task protocols and a procedural demo dataset.
//!
//! ```no_run
//! use iuf_data::{image::load_image, protocol::Protocol, DatasetRoot};
//! # fn main() -> iuf_data::Result<()> {
//! let root = DatasetRoot::open(std::path::Path::new("datasets/mvtec_anomaly_detection"))?;
//! let protocol = Protocol::parse("10-1x5", root.classes())?;
//! for class in root.index(protocol.new_classes(0))? {
//!     let first = load_image(&class.train[0].path, 224)?; // [3, 224, 224], normalised
//!     # let _ = first;
//! }
//! # Ok(()) }
//! ```
pub mod batch;
pub mod classes;
mod dataset;
pub mod demo;
mod error;
pub mod file_kind;
pub mod image;
pub mod input_file;
pub mod protocol;
#[cfg(feature = "candle")]
mod tensor;

pub use dataset::{ClassIndex, DatasetRoot, Layout, Sample, GOOD, IMAGE_EXTENSIONS};
pub use error::{Error, Problem, Result};
pub use file_kind::FileKind;
#[cfg(feature = "candle")]
pub use tensor::{images_to_tensor, masks_to_tensor};
