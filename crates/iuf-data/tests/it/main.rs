//! The one integration-test binary of iuf-data: real data (`mvtec_mini_*`, `pil_parity_*` read
//! ../shared), fake dataset trees built in temporary folders, the demo generator and the
//! small-defect benchmark generator.
mod demo;
mod fake_trees;
mod fixtures;
mod mvtec_ad2;
mod mvtec_mini;
mod pil_parity;
mod small_defects;
mod visa;

use std::path::PathBuf;

/// ../shared beside the checkout (CI always has it there).
pub fn shared() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}
