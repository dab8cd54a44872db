//! End-to-end tests of the `iuf` binary: every subcommand on a tiny generated demo dataset and on
//! real MVTec-layout images from ../shared, and the errors bad input must produce. The backbone
//! weights are the real EfficientNet-Lite0 checkpoint from ../shared (converted on the fly).

mod common;
mod errors;
mod faults;
mod merge;
mod more;
mod mvtec_mini;
mod readonly;
mod serve;
mod sinks;
mod watch;
mod workflow;
