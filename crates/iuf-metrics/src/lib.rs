//! iuf-metrics: evaluation metrics for anomaly detection and continual learning.
//!
//! Plain slices in, numbers out; no model, tensor library or training state. Everything matches a
//! reference definition exactly:
//!
//! - [`auroc`], [`average_precision`], [`f1_max`]: scikit-learn's `roc_auc_score`,
//!   `average_precision_score` and the best F1 along `precision_recall_curve`, tied scores
//!   included. Errors (never NaN, never a panic) on unusable input.
//! - [`auroc_multi`], [`average_precision_multi`], [`f1_max_multi`], [`RankedScores`]: the same
//!   over many slices at once (pixel metrics over every map of a test set), sorting one compact
//!   copy of the scores with a radix sort, so tens of millions of pixels take a fraction of a
//!   second.
//! - [`pro_auc`]: normalised area under the per-region-overlap curve up to 30% FPR, as in the
//!   MVTec AD evaluation.
//! - [`image_score`]: the image score of an anomaly map, the maximum of its k x k average pool.
//! - [`ResultsMatrix`]: `R[step][class]` of a continual run with ACC and FM, and a Markdown table.
//!
//! ```
//! use iuf_metrics::{auroc, auroc_multi, image_score, pro_auc, ResultsMatrix, PRO_MAX_FPR};
//!
//! # fn main() -> iuf_metrics::Result<()> {
//! // Image level: one score per test image, `true` = anomalous.
//! let image_auroc = auroc(&[0.2, 0.9, 0.4, 0.7], &[false, true, false, true])?;
//! assert_eq!(image_auroc, 1.0);
//!
//! // Pixel level: per-image 4x2 maps and masks, evaluated without concatenating them.
//! let maps: Vec<Vec<f32>> = vec![
//!     vec![0.1, 0.2, 0.8, 0.9, 0.1, 0.3, 0.7, 0.2],
//!     vec![0.1, 0.1, 0.2, 0.1, 0.3, 0.2, 0.1, 0.4],
//! ];
//! let masks: Vec<Vec<u8>> = vec![vec![0, 0, 255, 255, 0, 0, 255, 0], vec![0; 8]];
//! let map_refs: Vec<&[f32]> = maps.iter().map(Vec::as_slice).collect();
//! let mask_refs: Vec<&[u8]> = masks.iter().map(Vec::as_slice).collect();
//! let pixel_auroc = auroc_multi(&map_refs, &mask_refs)?;
//! assert_eq!(pixel_auroc, 1.0);
//! let pro = pro_auc(&map_refs, &mask_refs, 4, 2, PRO_MAX_FPR)?;
//! assert!((pro - 1.0).abs() < 1e-12);
//!
//! // The image score of a map: max of its 2x2 window means, here (0.8 + 0.9 + 0.7 + 0.2) / 4.
//! assert!((image_score(&maps[0], 4, 2, 2)? - 0.65).abs() < 1e-6);
//!
//! // Continual: two steps, the second learns "cable" while "bottle" is forgotten a little.
//! let mut r = ResultsMatrix::new(["bottle", "cable"], 2)?;
//! r.set(0, 0, 0.99)?;
//! r.set(1, 0, 0.95)?;
//! r.set(1, 1, 0.91)?;
//! assert!((r.acc().unwrap() - 0.93).abs() < 1e-12);
//! assert!((r.fm().unwrap() - 0.04).abs() < 1e-12);
//! assert!(r.to_markdown().starts_with("| step | bottle | cable | ACC | FM |"));
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod continual;
mod error;
mod image_score;
mod pro;
mod ranking;
mod sort;

pub use continual::ResultsMatrix;
pub use error::{Class, MetricsError, Result};
pub use image_score::{image_score, IMAGE_SCORE_POOL};
pub use pro::{pro_auc, PRO_MAX_FPR};
pub use ranking::{
    auroc, auroc_multi, average_precision, average_precision_multi, f1_max, f1_max_multi, F1Max,
    Label, RankedScores,
};
