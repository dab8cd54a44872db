//! Per-class evaluation (section 6): image AUROC from the image score, pixel AUROC, pixel AP, PRO,
//! image AP and F1-max, over one object's test set.
//!
//! A test set needs good and defective images: without either, no metric is defined and
//! evaluation fails naming the class. A test set whose defect masks are all empty (no defect
//! pixel, e.g. a dataset shipped with black masks) still has the image-level metrics, computed
//! from the folder labels; its pixel metrics are absent (`None`, JSON `null`) and
//! [`ClassMetrics::warning`] says which class, what is missing and what was computed.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::feature_store::FeatureStore;
use crate::learner::{Learner, Predictions};
use crate::progress::{NoProgress, Progress};

/// Test images whose features are held at once while evaluating: a 1024-pixel image's 4 x 4
/// tiles are 13 MB of features, so a whole test set would be gigabytes; its maps are far smaller.
const EVAL_CHUNK: usize = 32;

/// One object's test set, ready for the model.
pub struct EvalSet {
    /// Object name.
    pub class: String,
    /// The test images; their features are read from the feature store a chunk at a time.
    pub paths: Vec<PathBuf>,
    /// Image labels (from the folders: defective or good).
    pub labels: Vec<bool>,
    /// Each image's defect type (its folder: `good`, or e.g. `scratch`, `spot-16px`); empty
    /// when unknown.
    pub defect_types: Vec<String>,
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
    /// Pixel-level AUROC over every pixel of the test set; `None` when the masks hold no defect
    /// pixel (see [`warning`](Self::warning)).
    pub pixel_auroc: Option<f64>,
    /// Pixel-level average precision; `None` like `pixel_auroc`.
    pub pixel_ap: Option<f64>,
    /// Normalised area under the per-region-overlap curve up to FPR 0.3; `None` like
    /// `pixel_auroc`.
    pub pro: Option<f64>,
    /// Seconds spent in the model (forward, map, score) per image.
    pub seconds_per_image: f64,
    /// Of the good test images, the fraction whose map peaks in the border band: the argmax of
    /// the (fused, full-size) map itself, not of the pooled image score, lies within
    /// [`BORDER_BAND`] of the width or height from an edge (a diagnostic of border artefacts;
    /// about 0.37 if the peak fell anywhere at random). Absent in files written before it was
    /// recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub border_peaks: Option<f64>,
    /// Why some metrics are absent: names the class, what its test set lacks and what was
    /// computed all the same. `None` when every metric has a value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// Per defect type (test folder), in name order: its images against every good image
    /// (absent when the test set names no defect types).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub by_defect: Vec<DefectMetrics>,
    /// Of the good test images, the fraction flagged at the calibrated threshold (the
    /// calibration quantile of `TrainConfig`); absent without a threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub good_flagged: Option<f64>,
}

/// The metrics of one defect type of a test set: what `iuf bench` reports by defect size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DefectMetrics {
    /// The defect type (its folder name, e.g. `scratch` or `spot-16px`).
    pub defect: String,
    /// Its images.
    pub images: usize,
    /// Image AUROC of its images against every good test image.
    pub image_auroc: f64,
    /// Pixel AUROC over its images' pixels; `None` when their masks are empty.
    pub pixel_auroc: Option<f64>,
    /// Fraction of its images scored above the object's calibrated threshold; `None` without a
    /// threshold.
    pub recall: Option<f64>,
}

impl ClassMetrics {
    /// The pixel-level metrics (pixel AUROC, pixel AP, PRO), all present or all absent.
    pub fn has_pixel_metrics(&self) -> bool {
        self.pixel_auroc.is_some() && self.pixel_ap.is_some() && self.pro.is_some()
    }
}

/// Width of the border band of [`ClassMetrics::border_peaks`], as a fraction of the map's width
/// (columns) and height (rows).
pub const BORDER_BAND: f64 = 0.1;

/// Whether a `w` x `h` map (row-major) peaks in the border band: its first maximum (NaN ignored)
/// lies less than `band` x `w` columns from the left or right edge, or less than `band` x `h`
/// rows from the top or bottom (distances from the pixel's index to 0 and to `w - 1`, `h - 1`).
/// `None` for a map without a finite value.
pub fn peaks_in_border(map: &[f32], w: usize, h: usize, band: f64) -> Option<bool> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in map.iter().enumerate().take(w * h) {
        if !v.is_nan() && best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    let (i, _) = best?;
    let (y, x) = (i / w, i % w);
    let near = |p: usize, n: usize| (p.min(n - 1 - p) as f64) < band * n as f64;
    Some(near(x, w) || near(y, h))
}

/// [`ClassMetrics::border_peaks`] of maps (`w` x `h` each) and their labels: the fraction of the
/// good images (`false`) whose map peaks in the border band; `None` without a good image.
pub fn border_peaks(maps: &[&[f32]], labels: &[bool], w: usize, h: usize) -> Option<f64> {
    let good: Vec<bool> = maps
        .iter()
        .zip(labels)
        .filter(|(_, &l)| !l)
        .filter_map(|(m, _)| peaks_in_border(m, w, h, BORDER_BAND))
        .collect();
    (!good.is_empty()).then(|| good.iter().filter(|&&b| b).count() as f64 / good.len() as f64)
}

fn metric<T>(class: &str, r: iuf_metrics::Result<T>) -> Result<T> {
    r.map_err(|source| Error::Metrics {
        class: class.to_string(),
        source,
    })
}

/// Runs the model on `set` and computes every metric; also returns the predictions (for heatmaps).
/// The features (of the method, and of the tiled view when the model has one) come from `store`
/// [`EVAL_CHUNK`] images at a time, so only the maps of the whole set are held. `progress` sees
/// one phase, `evaluating <class>`, counted in images; the time per image is the model's alone.
pub fn evaluate(
    learner: &Learner,
    set: &EvalSet,
    store: &FeatureStore,
    progress: &dyn Progress,
) -> Result<(ClassMetrics, Predictions)> {
    // A method defined with the oracle object (the class-mean reference) is told each image's
    // object; every other method recognises it, as it must in inspection.
    let given = learner
        .strategy()
        .oracle_object()
        .then_some(set.class.as_str());
    let tiling = learner.tiling();
    progress.start(&format!("evaluating {}", set.class), set.paths.len() as u64);
    let mut seconds = 0.0;
    let mut parts = Vec::new();
    for chunk in set.paths.chunks(EVAL_CHUNK) {
        let x = store.features_for(chunk, learner.features(), tiling.as_ref(), &NoProgress)?;
        let start = std::time::Instant::now();
        parts.push(learner.predict_features(&x, given, progress)?);
        seconds += start.elapsed().as_secs_f64();
    }
    progress.finish();
    if parts.is_empty() {
        return Err(Error::Msg(format!(
            "class `{}`: its test set has no image",
            set.class
        )));
    }
    let pred = Predictions::concat(parts)?;
    let mut m = metrics_of(&set.class, &pred, &set.labels, &set.masks)?;
    m.seconds_per_image = seconds / set.paths.len().max(1) as f64;
    let threshold = learner.threshold(&set.class, learner.config().calibration.quantile);
    m.by_defect = by_defect(set, &pred, threshold)?;
    m.good_flagged = threshold.map(|t| {
        let good: Vec<f32> = pred
            .scores
            .iter()
            .zip(&set.labels)
            .filter(|(_, &l)| !l)
            .map(|(&s, _)| s)
            .collect();
        good.iter().filter(|&&s| s > t).count() as f64 / good.len().max(1) as f64
    });
    Ok((m, pred))
}

/// The size in pixels a defect type's name ends with (`spot-16px` -> 16), if any.
pub fn defect_size(defect: &str) -> Option<usize> {
    defect.strip_suffix("px")?.rsplit('-').next()?.parse().ok()
}

/// The metrics of each defect type of `set` (none when its images name no types).
pub fn by_defect(
    set: &EvalSet,
    pred: &Predictions,
    threshold: Option<f32>,
) -> Result<Vec<DefectMetrics>> {
    if set.defect_types.len() != set.labels.len() {
        return Ok(Vec::new());
    }
    let mut types: Vec<&str> = set
        .defect_types
        .iter()
        .zip(&set.labels)
        .filter(|(_, &l)| l)
        .map(|(t, _)| t.as_str())
        .collect();
    // By kind, then by size (`crack-4px` before `crack-16px`).
    types.sort_unstable_by_key(|t| match defect_size(t) {
        Some(px) => (t.rsplit_once('-').map_or(*t, |(k, _)| k), px),
        None => (*t, 0),
    });
    types.dedup();
    let (_, h, w) = pred.maps.dims3()?;
    let flat: Vec<f32> = pred.maps.flatten_all()?.to_vec1()?;
    let c = set.class.as_str();
    let mut out = Vec::new();
    for t in types {
        let mine: Vec<usize> = (0..set.labels.len())
            .filter(|&i| set.labels[i] && set.defect_types[i] == t)
            .collect();
        let rows: Vec<usize> = (0..set.labels.len())
            .filter(|&i| !set.labels[i] || set.defect_types[i] == t)
            .collect();
        let scores: Vec<f32> = rows.iter().map(|&i| pred.scores[i]).collect();
        let labels: Vec<bool> = rows.iter().map(|&i| set.labels[i]).collect();
        let image_auroc = metric(c, iuf_metrics::RankedScores::new(&scores, &labels))?;
        let image_auroc = metric(c, image_auroc.auroc())?;
        let has_pixels = mine.iter().any(|&i| set.masks[i].iter().any(|&x| x));
        let pixel_auroc = if has_pixels {
            let maps: Vec<&[f32]> = mine
                .iter()
                .map(|&i| &flat[i * h * w..(i + 1) * h * w])
                .collect();
            let masks: Vec<&[bool]> = mine.iter().map(|&i| set.masks[i].as_slice()).collect();
            let px = metric(c, iuf_metrics::RankedScores::from_parts(&maps, &masks))?;
            px.auroc().ok()
        } else {
            None
        };
        let recall = threshold.map(|th| {
            mine.iter().filter(|&&i| pred.scores[i] > th).count() as f64 / mine.len() as f64
        });
        out.push(DefectMetrics {
            defect: t.to_string(),
            images: mine.len(),
            image_auroc,
            pixel_auroc,
            recall,
        });
    }
    Ok(out)
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
    let mut m = ClassMetrics {
        class: class.to_string(),
        images: n,
        anomalous,
        image_auroc,
        image_ap,
        image_f1_max,
        pixel_auroc: None,
        pixel_ap: None,
        pro: None,
        seconds_per_image: 0.0,
        border_peaks: border_peaks(&maps, labels, w, h),
        warning: None,
        by_defect: Vec::new(),
        good_flagged: None,
    };
    if !masks.iter().any(|m| m.iter().any(|&x| x)) {
        // The image labels come from the folders, so the image-level metrics stand.
        m.warning = Some(format!(
            "class `{c}`: the ground-truth masks of its {anomalous} defective test images are all \
             empty (no defect pixel), so pixel AUROC, pixel AP and PRO cannot be computed and are \
             reported as absent; the image-level metrics (AUROC, AP, F1-max) are computed from the \
             image labels; check the masks under {c}/ground_truth/<defect type> (white defect \
             pixels on black)"
        ));
        return Ok(m);
    }
    let pixel = metric(c, iuf_metrics::RankedScores::from_parts(&maps, &mask_refs))?;
    m.pixel_auroc = Some(metric(c, pixel.auroc())?);
    m.pixel_ap = Some(metric(c, pixel.average_precision())?);
    m.pro = Some(metric(
        c,
        iuf_metrics::pro_auc(&maps, &mask_refs, w, h, iuf_metrics::PRO_MAX_FPR),
    )?);
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn predictions(n: usize) -> Predictions {
        let maps: Vec<f32> = (0..n * 4).map(|i| (i % 7) as f32).collect();
        let probs = Tensor::zeros((n, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        Predictions {
            maps: Tensor::from_vec(maps, (n, 2, 2), &Device::Cpu).unwrap(),
            scores: (0..n).map(|i| i as f32).collect(),
            class_probs: probs.clone(),
            object_probs: probs,
            objects: Vec::new(),
        }
    }

    /// Predictions of consecutive chunks concatenate in order, every field.
    #[test]
    fn predictions_of_chunks_concatenate_in_order() {
        let whole = predictions(5);
        let mut a = predictions(5);
        a.objects = (0..5).map(|i| (format!("o{i}"), i as f32)).collect();
        let part = |p: &Predictions, s: usize, n: usize| Predictions {
            maps: p.maps.narrow(0, s, n).unwrap(),
            scores: p.scores[s..s + n].to_vec(),
            class_probs: p.class_probs.narrow(0, s, n).unwrap(),
            object_probs: p.object_probs.narrow(0, s, n).unwrap(),
            objects: p.objects[s..s + n].to_vec(),
        };
        let c = Predictions::concat(vec![part(&a, 0, 2), part(&a, 2, 3)]).unwrap();
        assert_eq!(c.scores, whole.scores);
        assert_eq!(c.objects, a.objects);
        let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(v(&c.maps), v(&whole.maps));
        assert_eq!(c.maps.dims(), whole.maps.dims());
        assert_eq!(c.object_probs.dims(), &[5, 2]);
    }

    /// The border band: 10% of 224 is 22.4, so columns 0..=22 and 201..=223 are in it (and rows
    /// likewise); the first maximum counts; NaN is ignored; only good images count.
    #[test]
    fn border_band_takes_the_outer_tenth_of_each_side() {
        let (w, h) = (224, 100);
        let at = |x: usize, y: usize| {
            let mut m = vec![0f32; w * h];
            m[y * w + x] = 1.0;
            peaks_in_border(&m, w, h, BORDER_BAND).unwrap()
        };
        for (x, inside) in [
            (0, true),
            (22, true),
            (23, false),
            (200, false),
            (201, true),
        ] {
            assert_eq!(at(x, 50), inside, "x {x}");
        }
        assert!(at(223, 50));
        // Rows: 10% of 100 is 10, so rows 0..=9 and 90..=99.
        for (y, inside) in [(9, true), (10, false), (89, false), (90, true), (99, true)] {
            assert_eq!(at(100, y), inside, "y {y}");
        }
        let mut m = vec![0f32; w * h];
        m[50 * w + 100] = 2.0;
        m[0] = 2.0; // the first of two equal maxima
        m[1] = f32::NAN;
        assert_eq!(peaks_in_border(&m, w, h, BORDER_BAND), Some(true));
        assert_eq!(peaks_in_border(&[f32::NAN; 4], 2, 2, 0.1), None);
        let centre = vec![0., 0., 0., 0., 1., 0., 0., 0., 0.];
        let corner = vec![1., 0., 0., 0., 0., 0., 0., 0., 0.];
        // 3 x 3: 0.3 of a row is under one pixel, so only the outer ring is in the band.
        let maps = [&centre[..], &corner[..], &corner[..], &centre[..]];
        let labels = [false, false, true, false];
        assert_eq!(border_peaks(&maps, &labels, 3, 3), Some(1.0 / 3.0));
        assert_eq!(border_peaks(&maps, &[true; 4], 3, 3), None);
    }

    /// Guarantee: a test set without good or without defective images, where no metric is
    /// defined, is an error that names the class and what is missing, instead of "AUROC needs at
    /// least one positive"; one whose masks are all empty is evaluated (next test).
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
        let mut masks = empty.clone();
        masks[2][1] = true;
        let m = metrics_of("tire", &p, &labels, &masks).unwrap();
        assert_eq!((m.images, m.anomalous, m.image_auroc), (4, 2, 1.0));
        assert!(m.has_pixel_metrics() && m.warning.is_none(), "{m:?}");
    }

    /// Guarantee (issue 14): a test set whose defect masks are all empty still gets its
    /// image-level metrics; the pixel metrics are absent (not 0, not NaN, not an error), and the
    /// warning names the class, what is missing and that the image-level metrics were computed.
    /// Old step files (numbers) and new ones (`null`) both read back.
    #[test]
    fn all_empty_masks_give_image_metrics_and_absent_pixel_metrics() {
        let p = predictions(4);
        let labels = [false, false, true, true];
        let m = metrics_of("tire", &p, &labels, &vec![vec![false; 4]; 4]).unwrap();
        assert_eq!(
            (
                m.images,
                m.anomalous,
                m.image_auroc,
                m.image_ap,
                m.image_f1_max
            ),
            (4, 2, 1.0, 1.0, 1.0)
        );
        assert_eq!((m.pixel_auroc, m.pixel_ap, m.pro), (None, None, None));
        assert!(!m.has_pixel_metrics());
        let msg = m.warning.as_deref().expect("a warning");
        assert!(
            msg.contains("`tire`")
                && msg.contains("masks of its 2 defective test images are all empty")
                && msg.contains("pixel AUROC, pixel AP and PRO")
                && msg.contains("image-level metrics (AUROC, AP, F1-max) are computed")
                && msg.contains("tire/ground_truth/")
                && !msg.contains("  "),
            "{msg}"
        );
        let json = serde_json::to_value(&m).unwrap();
        assert!(
            json["pixel_auroc"].is_null() && json["pro"].is_null(),
            "{json}"
        );
        assert_eq!(serde_json::from_value::<ClassMetrics>(json).unwrap(), m);
        // A file written before pixel metrics could be absent: numbers, no `warning`.
        let old = r#"{"class":"a","images":4,"anomalous":2,"image_auroc":0.9,"image_ap":0.8,
            "image_f1_max":0.7,"pixel_auroc":0.95,"pixel_ap":0.5,"pro":0.85,
            "seconds_per_image":0.01}"#;
        let old: ClassMetrics = serde_json::from_str(old).unwrap();
        assert_eq!(
            (old.pixel_auroc, old.pixel_ap, old.pro, old.warning),
            (Some(0.95), Some(0.5), Some(0.85), None)
        );
    }

    /// Each defect type is ranked against every good image, its recall is the share of its
    /// images above the threshold, and a type whose masks are empty has no pixel AUROC.
    #[test]
    fn defect_types_are_ranked_against_the_good_images_with_their_recall() {
        // Scores 0..6: good 0, 1, 4; spot-8px 2, 5 (one below a good image); scratch 3 (masks
        // empty); threshold 3.5.
        let p = predictions(6);
        let labels = vec![false, false, true, true, false, true];
        let types = ["good", "good", "spot-8px", "scratch", "good", "spot-8px"];
        let mut masks = vec![vec![false; 4]; 6];
        masks[2][0] = true;
        masks[5][3] = true;
        let set = EvalSet {
            class: "pcb".into(),
            paths: (0..6).map(|i| PathBuf::from(format!("{i}.png"))).collect(),
            labels,
            defect_types: types.iter().map(|t| t.to_string()).collect(),
            masks,
        };
        let d = by_defect(&set, &p, Some(3.5)).unwrap();
        assert_eq!(
            d.iter().map(|d| d.defect.as_str()).collect::<Vec<_>>(),
            ["scratch", "spot-8px"]
        );
        assert_eq!(
            (d[0].images, d[0].pixel_auroc, d[0].recall),
            (1, None, Some(0.0))
        );
        // scratch (3) beats good 0 and 1, not 4.
        assert!((d[0].image_auroc - 2.0 / 3.0).abs() < 1e-9);
        // spot: 2 beats 0, 1; 5 beats all three: 5 of 6 pairs.
        assert!((d[1].image_auroc - 5.0 / 6.0).abs() < 1e-9);
        assert_eq!((d[1].images, d[1].recall), (2, Some(0.5)));
        assert!(d[1].pixel_auroc.is_some());
        assert!(by_defect(&set, &p, None).unwrap()[1].recall.is_none());
    }
}
