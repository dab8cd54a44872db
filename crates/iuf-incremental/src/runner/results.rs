//! What a protocol run measured: each finished step's result, and `results.json` assembled from
//! them (the continual results matrices with ACC / FM, section 6).

use std::collections::BTreeMap;

use iuf_metrics::ResultsMatrix;
use serde::{Deserialize, Serialize};

use iuf_data::protocol::Protocol;

use crate::config::{Strategy, TrainConfig};
use crate::error::{Error, Result};
use crate::eval::{ClassMetrics, DefectMetrics};
use crate::learner::StepRecord;

/// Everything measured about one finished step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepResult {
    /// What training did.
    pub record: StepRecord,
    /// Metrics of every object seen so far.
    pub metrics: Vec<ClassMetrics>,
    /// Seconds spent evaluating.
    pub eval_seconds: f64,
    /// Seconds spent computing or reading features for this step's training and hold-out images.
    pub feature_seconds: f64,
    /// Size of the model file after this step, bytes.
    pub model_bytes: u64,
    /// Peak resident memory of the process so far, bytes (Linux; absent elsewhere).
    pub peak_rss_bytes: Option<u64>,
}

/// `{"image": .., "pixel": ..}` (image and pixel AUROC).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ImagePixel {
    /// Image-level AUROC based value.
    pub image: Option<f64>,
    /// Pixel-level AUROC based value.
    pub pixel: Option<f64>,
}

/// The protocol as it ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProtocolInfo {
    /// Protocol name or spec.
    pub name: String,
    /// New classes of each step.
    pub steps: Vec<Vec<String>>,
}

/// Contents of `results.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResults {
    /// Method name.
    pub method: String,
    /// The protocol.
    pub protocol: ProtocolInfo,
    /// The configuration the method trained with.
    pub config: TrainConfig,
    /// The classes of each step as trained (one step for `joint`).
    pub steps: Vec<Vec<String>>,
    /// Class order of every matrix's columns.
    pub classes: Vec<String>,
    /// `metrics[name][step][class]`, null where a class was not yet learned, and for the pixel
    /// metrics also where the class's masks hold no defect pixel (see `warnings`). Names:
    /// image_auroc, pixel_auroc, pixel_ap, pro, image_ap, image_f1_max, and border_peaks (the
    /// fraction of good test images whose map peaks in the outer tenth, `ClassMetrics`; absent in
    /// files written before it was recorded).
    pub metrics: BTreeMap<String, Vec<Vec<Option<f64>>>>,
    /// ACC after the last step: the mean over the objects with the metric (objects without pixel
    /// metrics are left out of the pixel ACC).
    pub acc: ImagePixel,
    /// FM after the last step, over the same objects as `acc`.
    pub fm: ImagePixel,
    /// Why metrics are absent: one line per object whose test set leaves some undefined (absent in
    /// files written before it was recorded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Per step: training wall time, seconds.
    pub train_seconds: Vec<f64>,
    /// Per step: evaluation wall time, seconds.
    pub eval_seconds: Vec<f64>,
    /// Per step: model inference time per test image (transformer, map, score), milliseconds.
    pub infer_ms_per_image: Vec<f64>,
    /// Per step: model file size, bytes.
    pub model_bytes: Vec<u64>,
    /// Peak resident memory of the run, bytes.
    pub peak_rss_bytes: Option<u64>,
    /// True when every step of the protocol has finished.
    pub complete: bool,
    /// After the last finished step, per object: its metrics by defect type (image AUROC
    /// against the good images, pixel AUROC, recall at the calibrated threshold) and the
    /// fraction of its good images flagged (absent in older files).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_defect: BTreeMap<String, DefectReport>,
}

/// One object's results by defect type after the last step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DefectReport {
    /// Per defect type.
    pub defects: Vec<DefectMetrics>,
    /// Fraction of the good test images flagged at the calibrated threshold.
    pub good_flagged: Option<f64>,
}

pub(crate) const METRICS: [&str; 7] = [
    "image_auroc",
    "pixel_auroc",
    "pixel_ap",
    "pro",
    "image_ap",
    "image_f1_max",
    "border_peaks",
];

fn metric_value(m: &ClassMetrics, name: &str) -> Option<f64> {
    match name {
        "image_auroc" => Some(m.image_auroc),
        "pixel_auroc" => m.pixel_auroc,
        "pixel_ap" => m.pixel_ap,
        "pro" => m.pro,
        "image_ap" => Some(m.image_ap),
        "border_peaks" => m.border_peaks,
        _ => Some(m.image_f1_max),
    }
}

/// The name of a run of `method` (its folder in `iuf bench`'s output and its label in tables):
/// the method, with `-tiles` when the model has a tiled view.
pub fn run_name(method: &str, tiled: bool) -> String {
    if tiled {
        format!("{method}-tiles")
    } else {
        method.to_string()
    }
}

impl RunResults {
    /// [`run_name`] of this run.
    pub fn name(&self) -> String {
        run_name(&self.method, self.config.tiles.is_some())
    }

    /// The objects that have learned cells without a pixel AUROC (their masks hold no defect
    /// pixel): left out of the pixel ACC and FM. A cell counts as learned from the step whose
    /// classes (`steps`) include the object.
    pub fn without_pixel_metrics(&self) -> Vec<String> {
        let Some(rows) = self.metrics.get("pixel_auroc") else {
            return Vec::new();
        };
        self.classes
            .iter()
            .enumerate()
            .filter(|(ci, c)| {
                rows.iter().enumerate().any(|(s, row)| {
                    self.learned_by(c, s) && row.get(*ci).is_some_and(Option::is_none)
                })
            })
            .map(|(_, c)| c.clone())
            .collect()
    }

    /// Whether `class` is learned after step `step` (it is among the classes of a step up to it).
    pub(crate) fn learned_by(&self, class: &str, step: usize) -> bool {
        self.steps
            .iter()
            .take(step + 1)
            .any(|st| st.iter().any(|c| c == class))
    }
}

/// Peak resident set size of this process (Linux `VmHWM`).
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// `R[step][class]` of metric `name` over the finished steps. An object evaluated without a value
/// (its pixel metrics are undefined) is marked undefined: it counts as learned at that step, and
/// ACC / FM average over the objects with a value.
fn matrix(
    classes: &[String],
    steps: usize,
    done: &[StepResult],
    name: &str,
) -> Result<ResultsMatrix> {
    let mut m = ResultsMatrix::new(classes.iter().cloned(), steps.max(1)).map_err(|source| {
        Error::Metrics {
            class: "*".into(),
            source,
        }
    })?;
    for (s, r) in done.iter().enumerate() {
        for cm in &r.metrics {
            if let Some(ci) = m.class_index(&cm.class) {
                match metric_value(cm, name) {
                    Some(v) => m.set(s, ci, v),
                    None => m.set_undefined(s, ci),
                }
                .map_err(|source| Error::Metrics {
                    class: cm.class.clone(),
                    source,
                })?;
            }
        }
    }
    Ok(m)
}

pub(crate) fn assemble(
    method: Strategy,
    protocol: &Protocol,
    config: &TrainConfig,
    steps: &[Vec<String>],
    classes: &[String],
    done: &[StepResult],
) -> Result<RunResults> {
    let mut metrics = BTreeMap::new();
    let (mut acc, mut fm) = (
        ImagePixel {
            image: None,
            pixel: None,
        },
        ImagePixel {
            image: None,
            pixel: None,
        },
    );
    for name in METRICS {
        // Matrices over the finished steps only, so ACC/FM describe the last finished step.
        let m = matrix(classes, done.len(), done, name)?;
        let rows: Vec<Vec<Option<f64>>> = (0..done.len())
            .map(|s| (0..classes.len()).map(|c| m.get(s, c)).collect())
            .collect();
        if !done.is_empty() {
            if name == "image_auroc" {
                acc.image = m.acc();
                fm.image = m.fm();
            } else if name == "pixel_auroc" {
                acc.pixel = m.acc();
                fm.pixel = m.fm();
            }
        }
        metrics.insert(name.to_string(), rows);
    }
    let mut warnings: Vec<String> = Vec::new();
    for w in done
        .iter()
        .flat_map(|r| &r.metrics)
        .filter_map(|m| m.warning.as_ref())
    {
        if !warnings.contains(w) {
            warnings.push(w.clone());
        }
    }
    Ok(RunResults {
        method: method.name().to_string(),
        protocol: ProtocolInfo {
            name: protocol.name.clone(),
            steps: protocol.steps.clone(),
        },
        config: config.clone(),
        steps: steps.to_vec(),
        classes: classes.to_vec(),
        metrics,
        acc,
        fm,
        warnings,
        train_seconds: done.iter().map(|r| r.record.train_seconds).collect(),
        eval_seconds: done.iter().map(|r| r.eval_seconds).collect(),
        infer_ms_per_image: done
            .iter()
            .map(|r| {
                let n: usize = r.metrics.iter().map(|m| m.images).sum();
                let t: f64 = r
                    .metrics
                    .iter()
                    .map(|m| m.seconds_per_image * m.images as f64)
                    .sum();
                1000.0 * t / n.max(1) as f64
            })
            .collect(),
        model_bytes: done.iter().map(|r| r.model_bytes).collect(),
        peak_rss_bytes: done.iter().filter_map(|r| r.peak_rss_bytes).max(),
        complete: done.len() == steps.len(),
        by_defect: done
            .last()
            .map(|r| {
                r.metrics
                    .iter()
                    .filter(|m| !m.by_defect.is_empty())
                    .map(|m| {
                        let report = DefectReport {
                            defects: m.by_defect.clone(),
                            good_flagged: m.good_flagged,
                        };
                        (m.class.clone(), report)
                    })
                    .collect()
            })
            .unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::runner::{comparison_markdown, report_markdown, RunSpec};

    fn metrics(class: &str, image: f64, pixel: Option<f64>) -> ClassMetrics {
        ClassMetrics {
            class: class.into(),
            images: 10,
            anomalous: 5,
            image_auroc: image,
            image_ap: image,
            image_f1_max: image,
            pixel_auroc: pixel,
            pixel_ap: pixel,
            pro: pixel,
            seconds_per_image: 0.01,
            border_peaks: Some(0.25),
            warning: pixel
                .is_none()
                .then(|| format!("class `{class}`: masks all empty")),
            by_defect: Vec::new(),
            good_flagged: None,
        }
    }

    fn step(s: usize, classes: &[&str], metrics: Vec<ClassMetrics>) -> StepResult {
        StepResult {
            record: StepRecord {
                step: s,
                classes: classes.iter().map(|c| c.to_string()).collect(),
                images: 10,
                epochs: 1,
                optimizer: "adamw".into(),
                final_loss: Default::default(),
                train_seconds: 1.0,
            },
            metrics,
            eval_seconds: 1.0,
            feature_seconds: 1.0,
            model_bytes: 1,
            peak_rss_bytes: None,
        }
    }

    fn results(steps: &[&[&str]], done: &[StepResult]) -> RunResults {
        let steps: Vec<Vec<String>> = steps
            .iter()
            .map(|st| st.iter().map(|c| c.to_string()).collect())
            .collect();
        let spec = RunSpec {
            method: Strategy::Iuf,
            protocol: Protocol {
                name: "test".into(),
                steps: steps.clone(),
            },
            config: TrainConfig::tiny(8, 3),
            dir: PathBuf::new(),
        };
        let classes: Vec<String> = steps.iter().flatten().cloned().collect();
        assemble(
            spec.method,
            &spec.protocol,
            &spec.config,
            &steps,
            &classes,
            done,
        )
        .unwrap()
    }

    /// The last step's metrics by defect type land in `by_defect`, and the by-size table
    /// averages each size over objects and kinds (types without a size stay out of it); a tiled
    /// run is named `<method>-tiles`.
    #[test]
    fn defect_types_are_reported_by_size_after_the_last_step() {
        use crate::eval::DefectMetrics;
        let d = |defect: &str, auroc: f64, recall: f64| DefectMetrics {
            defect: defect.into(),
            images: 2,
            image_auroc: auroc,
            pixel_auroc: Some(0.9),
            recall: Some(recall),
        };
        let mut a = metrics("a", 0.9, Some(0.9));
        a.by_defect = vec![
            d("spot-8px", 0.6, 0.5),
            d("crack-8px", 0.8, 1.0),
            d("stain", 1.0, 1.0),
        ];
        a.good_flagged = Some(0.25);
        let mut b = metrics("b", 0.9, Some(0.9));
        b.by_defect = vec![d("spot-16px", 1.0, 1.0)];
        let mut r = results(&[&["a", "b"]], &[step(0, &["a", "b"], vec![a, b])]);
        assert_eq!(r.by_defect["a"].defects.len(), 3);
        assert_eq!(r.by_defect["a"].good_flagged, Some(0.25));
        let table = crate::runner::by_size_markdown(std::slice::from_ref(&r));
        assert!(
            table.contains("| iuf | 8 px | 2 | 0.700 | 0.900 | 75.0 |"),
            "{table}"
        );
        assert!(table.contains("| iuf | 16 px | 1 | 1.000 |"), "{table}");
        assert!(!table.contains("stain"), "{table}");
        let report = report_markdown(&r);
        assert!(report.contains("| a | spot-8px | 2 | 0.600 |"), "{report}");
        assert_eq!(r.name(), "iuf");
        r.config.tiles = Some(crate::config::TileConfig::new(
            1024,
            512,
            0,
            &r.config.memory,
        ));
        assert_eq!(r.name(), "iuf-tiles");
        assert!(crate::runner::by_size_markdown(&[r]).contains("| iuf-tiles | 8 px"));
        assert_eq!(crate::eval::defect_size("crack-16px"), Some(16));
        assert_eq!(crate::eval::defect_size("broken_large"), None);
    }

    #[test]
    fn results_files_give_back_every_metric_bit_for_bit() {
        // A resumed run reads earlier steps' metrics back from JSON and must get the same bits:
        // serde_json's default float parsing is off by one ulp for some values (this one is a
        // pixel ACC that a resumed bench once reported as ...698 instead of ...699), so the
        // workspace enables its `float_roundtrip` feature.
        let mut values = vec![0.6899509093229699f64, 0.1 + 0.2, 1.0 / 3.0, 5e-324, 1e308];
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            values.push((x >> 11) as f64 / (1u64 << 53) as f64);
        }
        let text = serde_json::to_string(&values).unwrap();
        let back: Vec<f64> = serde_json::from_str(&text).unwrap();
        for (a, b) in values.iter().zip(&back) {
            assert_eq!(a.to_bits(), b.to_bits(), "{a:e} came back as {b:e}");
        }
    }

    /// Guarantee (issue 14): an object without pixel metrics (all-empty masks) keeps its image
    /// metrics in the image ACC / FM, is `null` in the pixel matrices from the step the protocol
    /// learns it, and leaves the pixel ACC / FM and the learned steps of the other objects exactly
    /// as without it; the reports mark it "n/a" (learned) apart from "-" (not learned yet) and say
    /// why; the warning is kept once, and results.json reads back.
    #[test]
    fn an_object_without_pixel_metrics_leaves_the_others_pixel_acc_and_fm_alone() {
        let done = [
            step(
                0,
                &["a", "b"],
                vec![metrics("a", 0.9, Some(0.95)), metrics("b", 0.8, None)],
            ),
            step(
                1,
                &["c"],
                vec![
                    metrics("a", 0.7, Some(0.85)),
                    metrics("b", 0.6, None),
                    metrics("c", 0.9, Some(0.75)),
                ],
            ),
        ];
        let r = results(&[&["a", "b"], &["c"]], &done);
        // Pixel: a 0.85 and c 0.75 after step 1; forgetting only a: 0.95 - 0.85.
        assert!((r.acc.pixel.unwrap() - 0.80).abs() < 1e-12, "{:?}", r.acc);
        assert!((r.fm.pixel.unwrap() - 0.10).abs() < 1e-12, "{:?}", r.fm);
        // Image: every object, b included: (0.7 + 0.6 + 0.9) / 3; FM (0.2 + 0.2) / 2.
        assert!((r.acc.image.unwrap() - 2.2 / 3.0).abs() < 1e-12);
        assert!((r.fm.image.unwrap() - 0.2).abs() < 1e-12);
        // The same pixel ACC / FM as a run without b at all.
        let without_b: Vec<StepResult> = done
            .iter()
            .map(|st| {
                let mut st = st.clone();
                st.metrics.retain(|m| m.class != "b");
                st
            })
            .collect();
        let reference = results(&[&["a"], &["c"]], &without_b);
        assert_eq!(
            (r.acc.pixel, r.fm.pixel),
            (reference.acc.pixel, reference.fm.pixel)
        );
        let m = matrix(&r.classes, 2, &done, "pixel_auroc").unwrap();
        assert_eq!(
            (0..3).map(|c| m.learned_at(c)).collect::<Vec<_>>(),
            [Some(0), Some(0), Some(1)]
        );
        for name in ["pixel_auroc", "pixel_ap", "pro"] {
            assert_eq!(
                r.metrics[name],
                [
                    vec![Some(0.95), None, None],
                    vec![Some(0.85), None, Some(0.75)]
                ],
                "{name}"
            );
        }
        assert_eq!(
            r.metrics["image_auroc"][1],
            [Some(0.7), Some(0.6), Some(0.9)]
        );
        assert_eq!(r.without_pixel_metrics(), ["b"]);
        assert_eq!(r.warnings, ["class `b`: masks all empty"]);
        assert!(reference.without_pixel_metrics().is_empty() && reference.warnings.is_empty());

        let report = report_markdown(&r);
        assert!(report.contains("No pixel metrics for `b`"), "{report}");
        assert!(report.contains("- class `b`: masks all empty"), "{report}");
        // Step 0 of pixel_auroc: b learned without a value, c not learned yet.
        assert!(
            report.contains("| 0 | 0.950 | n/a | - | 0.950 |"),
            "{report}"
        );
        assert!(!report_markdown(&reference).contains("n/a"));
        let cmp = comparison_markdown(&[r.clone(), reference]);
        assert_eq!(cmp.matches("no pixel metrics for b").count(), 1, "{cmp}");

        // results.json round trip: nulls stay absent, the warnings come back; a file written
        // before warnings were recorded still reads.
        let json = serde_json::to_value(&r).unwrap();
        assert!(json["metrics"]["pixel_auroc"][1][1].is_null());
        let back: RunResults = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(
            (back.metrics, back.warnings),
            (r.metrics, r.warnings.clone())
        );
        let mut old = json;
        old.as_object_mut().unwrap().remove("warnings");
        let old: RunResults = serde_json::from_value(old).unwrap();
        assert!(old.warnings.is_empty());
        assert_eq!(old.without_pixel_metrics(), ["b"]);
    }
}
