//! Per-class evaluation (section 6): image AUROC from the image score, pixel AUROC, pixel AP, PRO,
//! image AP and F1-max, over one object's test set.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::learner::{Learner, Predictions};
use crate::progress::Progress;

/// One object's test set, ready for the model.
pub struct EvalSet {
    /// Object name.
    pub class: String,
    /// `[N, C, g, g]` features of the test images.
    pub features: Tensor,
    /// Their memory features (for models with a memory).
    pub memory: Option<Tensor>,
    /// Image labels (from the folders: defective or good).
    pub labels: Vec<bool>,
    /// Ground-truth masks at the map size (row-major), one per image; all false for good images.
    pub masks: Vec<Vec<bool>>,
}

/// Every metric of one object after one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    /// Object name.
    pub class: String,
    /// Test images.
    pub images: usize,
    /// Of which defective.
    pub anomalous: usize,
    /// Image-level AUROC of the section 6 score.
    pub image_auroc: f64,
    /// Image-level average precision.
    pub image_ap: f64,
    /// Image-level best F1.
    pub image_f1_max: f64,
    /// Pixel-level AUROC over every pixel of the test set.
    pub pixel_auroc: f64,
    /// Pixel-level average precision.
    pub pixel_ap: f64,
    /// Normalised area under the per-region-overlap curve up to FPR 0.3.
    pub pro: f64,
    /// Seconds spent in the model (forward, map, score) per image.
    pub seconds_per_image: f64,
}

fn metric<T>(class: &str, r: iuf_metrics::Result<T>) -> Result<T> {
    r.map_err(|source| Error::Metrics {
        class: class.to_string(),
        source,
    })
}

/// Runs the model on `set` and computes every metric; also returns the predictions (for heatmaps).
/// `progress` sees one phase, `evaluating <class>`, counted in images.
pub fn evaluate(
    learner: &Learner,
    set: &EvalSet,
    progress: &dyn Progress,
) -> Result<(ClassMetrics, Predictions)> {
    evaluate_with(set, progress, |features, p| {
        learner.predict_images(features, set.memory.as_ref(), p)
    })
}

/// [`evaluate`] for any scorer: `predict` maps the set's features to predictions (and may report
/// finished images to the progress it is given); its time is the per-image inference time.
pub fn evaluate_with(
    set: &EvalSet,
    progress: &dyn Progress,
    predict: impl FnOnce(&Tensor, &dyn Progress) -> Result<Predictions>,
) -> Result<(ClassMetrics, Predictions)> {
    progress.start(
        &format!("evaluating {}", set.class),
        set.labels.len() as u64,
    );
    let start = std::time::Instant::now();
    let pred = predict(&set.features, progress);
    let seconds = start.elapsed().as_secs_f64();
    progress.finish();
    let pred = pred?;
    let m = metrics_of(&set.class, &pred, &set.labels, &set.masks)?;
    Ok((
        ClassMetrics {
            seconds_per_image: seconds / set.labels.len().max(1) as f64,
            ..m
        },
        pred,
    ))
}

/// The metrics of predictions against labels and masks.
pub fn metrics_of(
    class: &str,
    pred: &Predictions,
    labels: &[bool],
    masks: &[Vec<bool>],
) -> Result<ClassMetrics> {
    let (n, h, w) = pred.maps.dims3()?;
    if labels.len() != n || masks.len() != n {
        return Err(Error::Msg(format!(
            "class `{class}`: {n} maps, {} labels, {} masks",
            labels.len(),
            masks.len()
        )));
    }
    let flat: Vec<f32> = pred.maps.flatten_all()?.to_vec1()?;
    let maps: Vec<&[f32]> = flat.chunks_exact(h * w).collect();
    let mask_refs: Vec<&[bool]> = masks.iter().map(|m| m.as_slice()).collect();
    let c = class;
    let image = metric(c, iuf_metrics::RankedScores::new(&pred.scores, labels))?;
    let pixel = metric(c, iuf_metrics::RankedScores::from_parts(&maps, &mask_refs))?;
    Ok(ClassMetrics {
        class: class.to_string(),
        images: n,
        anomalous: labels.iter().filter(|&&l| l).count(),
        image_auroc: metric(c, image.auroc())?,
        image_ap: metric(c, image.average_precision())?,
        image_f1_max: metric(c, image.f1_max())?.f1,
        pixel_auroc: metric(c, pixel.auroc())?,
        pixel_ap: metric(c, pixel.average_precision())?,
        pro: metric(
            c,
            iuf_metrics::pro_auc(&maps, &mask_refs, w, h, iuf_metrics::PRO_MAX_FPR),
        )?,
        seconds_per_image: 0.0,
    })
}
