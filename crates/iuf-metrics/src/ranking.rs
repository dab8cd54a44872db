//! Threshold metrics read from one sort of the scores: AUROC, average precision and F1-max,
//! each defined exactly as scikit-learn defines it (section 6 of ALGORITHM.md lists them).
//!
//! Every metric here is a function of the curve traced by sweeping a threshold `t` from the highest
//! score down: at each *distinct* score value all samples scoring exactly that value switch to
//! "predicted anomalous" together (scikit-learn's `_binary_clf_curve`). So the scores are sorted
//! once, as compact `u32` keys split by label, and each metric is one linear merge of the two
//! sorted halves.

use crate::error::{Class, MetricsError, Result};
use crate::sort::{key_score, radix_sort_by_key, score_key};

/// A binary ground-truth label: `true`/nonzero means anomalous (the positive class).
///
/// Implemented for `bool` and for `u8`, so `0`/`255` masks decoded from PNG files can be passed
/// as they are, without converting millions of pixels first.
pub trait Label: Copy {
    /// Whether this sample is anomalous.
    fn is_positive(self) -> bool;
}

impl Label for bool {
    #[inline]
    fn is_positive(self) -> bool {
        self
    }
}

impl Label for u8 {
    #[inline]
    fn is_positive(self) -> bool {
        self != 0
    }
}

/// The best F1 score over all thresholds, and the threshold that reaches it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct F1Max {
    /// max over thresholds of 2 * precision * recall / (precision + recall).
    pub f1: f64,
    /// The score threshold: samples with `score >= threshold` are predicted anomalous. Among
    /// thresholds with exactly the same F1 the lowest is reported (what `np.argmax` over
    /// scikit-learn's ascending `precision_recall_curve` thresholds returns).
    pub threshold: f32,
}

/// Scores sorted once, ready for any number of threshold metrics.
///
/// Holds one `u32` per sample (negatives first, then positives, each ascending): this is the only
/// copy made of the input. While sorting, a scratch buffer as long as the larger class is needed
/// too, so the peak is at most 8 bytes per sample (400 MB for 50 million pixels). Build it from per-image slices with [`RankedScores::from_parts`] to
/// evaluate all pixels of a test set without concatenating the maps first.
///
/// ```
/// use iuf_metrics::RankedScores;
/// # fn main() -> iuf_metrics::Result<()> {
/// let maps: [&[f32]; 2] = [&[0.1, 0.9, 0.4], &[0.8, 0.2, 0.3]];
/// let masks: [&[u8]; 2] = [&[0, 255, 0], &[255, 0, 0]];
/// let ranked = RankedScores::from_parts(&maps, &masks)?;
/// assert_eq!(ranked.auroc()?, 1.0);
/// assert_eq!(ranked.average_precision()?, 1.0);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RankedScores {
    /// `keys[..negatives]` are the sorted keys of normal samples, `keys[negatives..]` of anomalous.
    keys: Vec<u32>,
    negatives: usize,
}

impl RankedScores {
    /// Ranks one slice of scores against one slice of labels.
    pub fn new(scores: &[f32], labels: &[bool]) -> Result<Self> {
        Self::from_parts(&[scores], &[labels])
    }

    /// Ranks the union of several score slices (e.g. one anomaly map per image) against their
    /// label slices (e.g. the matching masks), as if they had been concatenated.
    ///
    /// Errors if the part counts or any part's lengths differ, if there is no value at all, or if
    /// a score is NaN. Infinite scores are ordinary (extreme) scores. Both classes need not be
    /// present here; each metric checks what it needs.
    pub fn from_parts<L: Label>(scores: &[&[f32]], labels: &[&[L]]) -> Result<Self> {
        if scores.len() != labels.len() {
            return Err(MetricsError::LengthMismatch {
                what: "label slices (one per score slice)".into(),
                expected: scores.len(),
                found: labels.len(),
            });
        }
        let mut total = 0usize;
        let mut positives = 0usize;
        for (part, (s, l)) in scores.iter().zip(labels).enumerate() {
            if s.len() != l.len() {
                return Err(MetricsError::LengthMismatch {
                    what: format!("labels of part {part}"),
                    expected: s.len(),
                    found: l.len(),
                });
            }
            total += s.len();
            positives += l.iter().filter(|x| x.is_positive()).count();
        }
        if total == 0 {
            return Err(MetricsError::Empty { what: "scores" });
        }
        let negatives = total - positives;
        // Two write cursors into one buffer: normal samples fill it from the front, anomalous
        // ones from `negatives` on. Choosing the cursor arithmetically keeps the loop free of
        // unpredictable branches on random labels.
        let mut keys = vec![0u32; total];
        let mut cursors = [0usize, negatives];
        for (part, (s, l)) in scores.iter().zip(labels).enumerate() {
            for (index, (&score, &label)) in s.iter().zip(l.iter()).enumerate() {
                if score.is_nan() {
                    return Err(MetricsError::NanScore { part, index });
                }
                let cursor = &mut cursors[usize::from(label.is_positive())];
                keys[*cursor] = score_key(score);
                *cursor += 1;
            }
        }
        let mut scratch = Vec::with_capacity(negatives.max(positives));
        let (normal, anomalous) = keys.split_at_mut(negatives);
        radix_sort_by_key(normal, &mut scratch, |&k| k);
        radix_sort_by_key(anomalous, &mut scratch, |&k| k);
        Ok(Self { keys, negatives })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false: construction rejects empty input.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Number of anomalous (positive) samples.
    pub fn positives(&self) -> usize {
        self.keys.len() - self.negatives
    }

    /// Number of normal (negative) samples.
    pub fn negatives(&self) -> usize {
        self.negatives
    }

    /// Visits every distinct score from the highest down, with the number of positives and of
    /// negatives that score exactly that value: the points of scikit-learn's `_binary_clf_curve`.
    fn for_each_threshold(&self, mut visit: impl FnMut(u32, u64, u64)) {
        let (normal, anomalous) = self.keys.split_at(self.negatives);
        let (mut i, mut j) = (normal.len(), anomalous.len());
        loop {
            let next_normal = i.checked_sub(1).map(|x| normal[x]);
            let next_anomalous = j.checked_sub(1).map(|x| anomalous[x]);
            // `None < Some(_)`, so this is the larger remaining key, or None when both are done.
            let Some(key) = next_normal.max(next_anomalous) else {
                break;
            };
            let mut fp = 0u64;
            while i > 0 && normal[i - 1] == key {
                i -= 1;
                fp += 1;
            }
            let mut tp = 0u64;
            while j > 0 && anomalous[j - 1] == key {
                j -= 1;
                tp += 1;
            }
            visit(key, tp, fp);
        }
    }

    fn require(&self, metric: &'static str, class: Class) -> Result<()> {
        let count = match class {
            Class::Positive => self.positives(),
            Class::Negative => self.negatives(),
        };
        if count == 0 {
            return Err(MetricsError::MissingClass {
                metric,
                missing: class,
                total: self.len() as u64,
            });
        }
        Ok(())
    }

    /// Area under the ROC curve, equal to scikit-learn's `roc_auc_score`.
    ///
    /// The ROC curve joins the (FPR, TPR) points of all distinct thresholds with straight lines,
    /// so a group of tied scores contributes a trapezoid (equivalently: the Mann-Whitney U
    /// statistic with ties counted one half). Computed in exact integer arithmetic and divided
    /// once. Errors unless both classes are present.
    pub fn auroc(&self) -> Result<f64> {
        self.require("AUROC", Class::Positive)?;
        self.require("AUROC", Class::Negative)?;
        // Twice the area in units of 1/(P*N): each negative group adds fp * (2*TP_above + tp).
        let mut twice_area: u128 = 0;
        let mut tp_above: u64 = 0;
        self.for_each_threshold(|_, tp, fp| {
            twice_area += u128::from(fp) * u128::from(2 * tp_above + tp);
            tp_above += tp;
        });
        let denominator = 2 * self.positives() as u128 * self.negatives() as u128;
        Ok(twice_area as f64 / denominator as f64)
    }

    /// Average precision, equal to scikit-learn's `average_precision_score`:
    /// sum over distinct thresholds of (recall step) * (precision at that threshold), with no
    /// interpolation. Errors if there is no positive sample (the recall is undefined); with no
    /// negative sample it is 1.
    pub fn average_precision(&self) -> Result<f64> {
        self.require("average precision", Class::Positive)?;
        let positives = self.positives() as f64;
        let (mut tp_total, mut fp_total) = (0u64, 0u64);
        let mut sum = NeumaierSum::default();
        self.for_each_threshold(|_, tp, fp| {
            tp_total += tp;
            fp_total += fp;
            if tp > 0 {
                let precision = tp_total as f64 / (tp_total + fp_total) as f64;
                sum.add(tp as f64 / positives * precision);
            }
        });
        Ok(sum.value())
    }

    /// The best F1 score over all thresholds (those of scikit-learn's `precision_recall_curve`).
    ///
    /// F1 = 2 TP / (TP + FP + P) is compared exactly (integer cross-multiplication), so the
    /// reported threshold does not depend on rounding. Errors if there is no positive sample.
    pub fn f1_max(&self) -> Result<F1Max> {
        self.require("F1-max", Class::Positive)?;
        let positives = self.positives() as u64;
        let (mut tp_total, mut fp_total) = (0u64, 0u64);
        // Best F1 as the fraction numerator / denominator; starts at 0/1.
        let (mut numerator, mut denominator, mut best_key) = (0u64, 1u64, 0u32);
        self.for_each_threshold(|key, tp, fp| {
            tp_total += tp;
            fp_total += fp;
            let n = 2 * tp_total;
            let d = tp_total + fp_total + positives;
            // `>=`: thresholds come from high to low, and the lowest of equal maxima is reported.
            if u128::from(n) * u128::from(denominator) >= u128::from(numerator) * u128::from(d) {
                (numerator, denominator, best_key) = (n, d, key);
            }
        });
        Ok(F1Max {
            f1: numerator as f64 / denominator as f64,
            threshold: key_score(best_key),
        })
    }
}

/// Compensated (Kahan-Babuska-Neumaier) summation: average precision adds up to one term per
/// distinct threshold, tens of millions for pixel metrics, and must stay within 1e-9 of
/// scikit-learn.
#[derive(Default)]
struct NeumaierSum {
    sum: f64,
    compensation: f64,
}

impl NeumaierSum {
    fn add(&mut self, x: f64) {
        let t = self.sum + x;
        if self.sum.abs() >= x.abs() {
            self.compensation += (self.sum - t) + x;
        } else {
            self.compensation += (x - t) + self.sum;
        }
        self.sum = t;
    }

    fn value(&self) -> f64 {
        self.sum + self.compensation
    }
}

/// Area under the ROC curve of `scores` against `labels` (`true` = anomalous), equal to
/// scikit-learn's `roc_auc_score` including its handling of tied scores.
///
/// O(n log n) at worst (a radix sort makes it linear for large n). Errors, rather than returning
/// NaN, when the lengths differ, the input is empty, a score is NaN, or one class is absent.
///
/// ```
/// // Two of the four positive/negative pairs are ordered correctly, one is tied (counts 1/2).
/// let auroc = iuf_metrics::auroc(&[0.9, 0.5, 0.5, 0.1], &[true, true, false, false])?;
/// assert_eq!(auroc, (3.0 + 0.5) / 4.0);
/// # Ok::<(), iuf_metrics::MetricsError>(())
/// ```
pub fn auroc(scores: &[f32], labels: &[bool]) -> Result<f64> {
    RankedScores::new(scores, labels)?.auroc()
}

/// Average precision of `scores` against `labels`, equal to scikit-learn's
/// `average_precision_score` (step-wise, tied scores form one threshold).
pub fn average_precision(scores: &[f32], labels: &[bool]) -> Result<f64> {
    RankedScores::new(scores, labels)?.average_precision()
}

/// Best F1 over all thresholds of `scores` against `labels`; see [`RankedScores::f1_max`].
pub fn f1_max(scores: &[f32], labels: &[bool]) -> Result<F1Max> {
    RankedScores::new(scores, labels)?.f1_max()
}

/// AUROC over the union of several slices, e.g. pixel AUROC over every pixel of every test image
/// of a class: `scores[i]` is image i's anomaly map, `labels[i]` its mask (`bool` or `u8`,
/// nonzero = anomalous). Nothing is concatenated; see [`RankedScores::from_parts`].
pub fn auroc_multi<L: Label>(scores: &[&[f32]], labels: &[&[L]]) -> Result<f64> {
    RankedScores::from_parts(scores, labels)?.auroc()
}

/// Average precision over the union of several slices; see [`auroc_multi`].
pub fn average_precision_multi<L: Label>(scores: &[&[f32]], labels: &[&[L]]) -> Result<f64> {
    RankedScores::from_parts(scores, labels)?.average_precision()
}

/// F1-max over the union of several slices; see [`auroc_multi`].
pub fn f1_max_multi<L: Label>(scores: &[&[f32]], labels: &[&[L]]) -> Result<F1Max> {
    RankedScores::from_parts(scores, labels)?.f1_max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_errors_instead_of_nan() {
        assert!(matches!(
            auroc(&[0.1, 0.2], &[true, true]),
            Err(MetricsError::MissingClass {
                missing: Class::Negative,
                ..
            })
        ));
        assert!(matches!(
            auroc(&[0.1, 0.2], &[false, false]),
            Err(MetricsError::MissingClass {
                missing: Class::Positive,
                ..
            })
        ));
        assert!(matches!(
            auroc(&[0.1], &[true, false]),
            Err(MetricsError::LengthMismatch {
                expected: 1,
                found: 2,
                ..
            })
        ));
        assert!(matches!(auroc(&[], &[]), Err(MetricsError::Empty { .. })));
        assert_eq!(
            auroc(&[0.1, f32::NAN], &[true, false]),
            Err(MetricsError::NanScore { part: 0, index: 1 })
        );
        assert!(average_precision(&[0.3], &[false]).is_err());
        assert!(f1_max(&[0.3], &[false]).is_err());
    }

    #[test]
    fn infinities_are_ordinary_scores() {
        let scores = [f32::INFINITY, 0.0, f32::NEG_INFINITY, 1.0];
        let labels = [true, false, false, true];
        assert_eq!(auroc(&scores, &labels).unwrap(), 1.0);
    }

    #[test]
    fn parts_equal_concatenation() {
        let scores = [0.3f32, 0.1, 0.7, 0.7, 0.2, 0.9, 0.4];
        let labels = [false, false, true, false, true, true, false];
        let whole = RankedScores::new(&scores, &labels).unwrap();
        let split = RankedScores::from_parts(
            &[&scores[..2], &scores[2..2], &scores[2..]],
            &[&labels[..2], &labels[2..2], &labels[2..]],
        )
        .unwrap();
        assert_eq!(whole.auroc().unwrap(), split.auroc().unwrap());
        assert_eq!(
            whole.average_precision().unwrap(),
            split.average_precision().unwrap()
        );
        assert_eq!(whole.f1_max().unwrap(), split.f1_max().unwrap());
        assert_eq!(split.positives(), 3);
        assert_eq!(split.negatives(), 4);
    }

    #[test]
    fn u8_masks_are_labels() {
        let maps: [&[f32]; 1] = [&[0.2, 0.8, 0.5]];
        let masks: [&[u8]; 1] = [&[0, 255, 1]];
        // Positives 0.8, 0.5 both above the negative 0.2.
        assert_eq!(auroc_multi(&maps, &masks).unwrap(), 1.0);
    }

    #[test]
    fn f1_max_picks_lowest_of_tied_thresholds() {
        // Threshold 0.9: TP=1, FP=0 -> F1 = 2/(1+0+2) = 2/3.
        // Threshold 0.5: TP=2, FP=2 -> F1 = 4/(2+2+2) = 2/3 (tie, lower threshold wins).
        // Threshold 0.1: TP=2, FP=3 -> F1 = 4/7.
        let best = f1_max(
            &[0.9, 0.5, 0.5, 0.5, 0.1],
            &[true, true, false, false, false],
        )
        .unwrap();
        assert_eq!(best.threshold, 0.5);
        assert!((best.f1 - 2.0 / 3.0).abs() < 1e-15);
    }
}
