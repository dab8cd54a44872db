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
    let anomalous = labels.iter().filter(|&&l| l).count();
    let good = n - anomalous;
    if anomalous == 0 || good == 0 {
        let (missing, have) = if anomalous == 0 {
            ("no defective image", format!("{n} good"))
        } else {
            ("no good image", format!("{n} defective"))
        };
        return Err(Error::Msg(format!(
            "class `{c}`: its test set has {missing} ({have} images); every metric (image AUROC, AP, \
             F1 and the pixel metrics) compares defective with good images, so none can be \
             computed; add images under {c}/test/good and {c}/test/<defect type>"
        )));
    }
    let image = metric(c, iuf_metrics::RankedScores::new(&pred.scores, labels))?;
    let image_auroc = metric(c, image.auroc())?;
    let image_ap = metric(c, image.average_precision())?;
    let image_f1_max = metric(c, image.f1_max())?.f1;
    if !masks.iter().any(|m| m.iter().any(|&x| x)) {
        return Err(Error::Msg(format!(
            "class `{c}`: the ground-truth masks of its {anomalous} defective test images are all \
             empty (no defect pixel), so pixel AUROC, pixel AP and PRO cannot be computed; the \
             image-level metrics could: image AUROC {:.1}, AP {:.1}, F1-max {:.1}; check the masks \
             under {c}/ground_truth/<defect type> (white defect pixels on black)",
            100.0 * image_auroc,
            100.0 * image_ap,
            100.0 * image_f1_max
        )));
    }
    let pixel = metric(c, iuf_metrics::RankedScores::from_parts(&maps, &mask_refs))?;
    Ok(ClassMetrics {
        class: class.to_string(),
        images: n,
        anomalous,
        image_auroc,
        image_ap,
        image_f1_max,
        pixel_auroc: metric(c, pixel.auroc())?,
        pixel_ap: metric(c, pixel.average_precision())?,
        pro: metric(
            c,
            iuf_metrics::pro_auc(&maps, &mask_refs, w, h, iuf_metrics::PRO_MAX_FPR),
        )?,
        seconds_per_image: 0.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn predictions(n: usize) -> Predictions {
        let maps: Vec<f32> = (0..n * 4).map(|i| (i % 7) as f32).collect();
        let probs = Tensor::zeros((n, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        Predictions {
            maps: Tensor::from_vec(maps, (n, 2, 2), &Device::Cpu).unwrap(),
            scores: (0..n).map(|i| i as f32).collect(),
            class_probs: probs.clone(),
            object_probs: probs,
        }
    }

    /// Guarantee: a test set that makes a metric undefined is named with the class, what is
    /// missing and what could still be computed, instead of "AUROC needs at least one positive".
    #[test]
    fn undefined_metrics_name_the_class_and_what_is_missing() {
        let p = predictions(4);
        let empty = vec![vec![false; 4]; 4];
        let msg = metrics_of("tire", &p, &[false; 4], &empty)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("`tire`") && msg.contains("no defective image") && msg.contains("4 good"),
            "{msg}"
        );
        let msg = metrics_of("tire", &p, &[true; 4], &empty)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("no good image"), "{msg}");
        let labels = [false, false, true, true];
        let msg = metrics_of("tire", &p, &labels, &empty)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("`tire`")
                && msg.contains("masks of its 2 defective test images are all empty")
                && msg.contains("image AUROC 100.0")
                && !msg.contains("  "),
            "{msg}"
        );
        let mut masks = empty.clone();
        masks[2][1] = true;
        let m = metrics_of("tire", &p, &labels, &masks).unwrap();
        assert_eq!((m.images, m.anomalous, m.image_auroc), (4, 2, 1.0));
    }
}
