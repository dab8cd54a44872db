//! The drift watch: per object, the recent image scores against the object's calibration (the
//! sketch of its held-out good scores), so that a line hears that its images have changed (new
//! lighting, a new batch of material) before the false alarms pile up. `iuf serve` feeds it every
//! inspected image and exposes its statistics in `/metrics`; any other front end (a folder
//! watcher) can feed it the same way.
//!
//! The rule, per object, over a window of its last `window` scores (every image inspected as
//! that object, whatever its verdict: on a line almost every part is good, and a burst of defects
//! is worth a look too), tested once the window holds at least `min_images`:
//!
//! - **rate**: the count of scores above the threshold is improbable for the calibrated rate
//!   `p0`: the one-sided binomial tail `P(X >= k | window, p0)` is below `alpha`. `p0` is what
//!   the calibration can vouch for: the upper 95 % bound of the rate given its `n` held-out
//!   images, `1 - 0.05^(1 / (n + 1))` (12.7 % for 21 images), or the share of held-out scores above
//!   the threshold if higher. (With the nominal 1 %, the 20 original-lighting test images of
//!   bottle, 10 % above a threshold calibrated on 21 held-out images, warned in every window.)
//! - **shift**: the one-sided Kolmogorov-Smirnov distance `D+ = max_x F_cal(x) - F_win(x)`
//!   between the calibration sketch and the window (how far the window's scores sit above the
//!   calibration) exceeds `sqrt(ln(1 / alpha) / (2 m))`, `m = w n / (w + n)` for a window of `w`
//!   and `n` held-out images (the two-sample bound `P(D+ > d) <= exp(-2 m d^2)`).
//!
//! Either one moves the object to *drifted*: one [`DriftEvent`] is returned (and logged by the
//! caller) when it moves, and one when it is back: neither statistic holds even at the looser
//! level `RECOVER_ALPHA` (1 %), so a window at the edge does not flap. `alpha` is 1e-4 by
//! default: with about one test per image, a stream of the calibrated distribution raises a
//! false warning less than once in 10,000 images per statistic.

use std::collections::{BTreeMap, VecDeque};

use iuf_incremental::calibrate::linear_quantile;
use iuf_incremental::Learner;
use serde::Serialize;

/// The level both statistics must clear for a drifted object to count as recovered.
const RECOVER_ALPHA: f64 = 1e-2;

/// Settings of the drift watch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DriftConfig {
    /// Scores kept per object (the most recent).
    pub window: usize,
    /// Scores needed before the rule is tested.
    pub min_images: usize,
    /// Level of each one-sided test.
    pub alpha: f64,
}

impl Default for DriftConfig {
    fn default() -> Self {
        Self {
            window: 50,
            min_images: 20,
            alpha: 1e-4,
        }
    }
}

/// One object's calibration as the watch reads it.
#[derive(Debug, Clone)]
struct Calibration {
    /// The 101 quantiles of the held-out good scores.
    sketch: Vec<f32>,
    /// Good images behind the sketch, held out or cross-fitted (101 when the model does not
    /// record it).
    holdout: u64,
}

impl Calibration {
    /// `F_cal(x)`: the share of held-out good scores at or below `x` (linear between the
    /// sketch's quantiles).
    fn cdf(&self, x: f32) -> f64 {
        let s = &self.sketch;
        if x < s[0] {
            return 0.0;
        }
        if x >= s[s.len() - 1] {
            return 1.0;
        }
        let i = s.partition_point(|&v| v <= x).max(1); // s[i - 1] <= x < s[i]
        let (lo, hi) = (s[i - 1], s[i]);
        let t = if hi > lo { (x - lo) / (hi - lo) } else { 1.0 };
        ((i - 1) as f64 + t as f64) / (s.len() - 1) as f64
    }
}

#[derive(Debug, Clone, Default)]
struct ObjectWatch {
    scores: VecDeque<f32>,
    /// Of the window, whether each score was above its threshold.
    above: VecDeque<bool>,
    seen: u64,
    drifted: bool,
    /// The statistics when the state last changed.
    last: Option<DriftStats>,
}

/// What the watch knows of one object now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DriftStats {
    pub object: String,
    /// Images seen since the watch started (or the model was replaced).
    pub seen: u64,
    /// Scores in the window.
    pub window: usize,
    /// Quantiles 0.5, 0.9 and 0.99 of the window's scores.
    pub p50: f32,
    pub p90: f32,
    pub p99: f32,
    /// Share of the window's scores above the threshold, and the calibrated share.
    pub rate_above: f64,
    pub calibrated_rate: Option<f64>,
    /// The binomial tail of the window's count above the threshold at the calibrated rate.
    pub rate_p_value: Option<f64>,
    /// `D+` and the level it is compared with.
    pub shift: Option<f64>,
    pub shift_level: Option<f64>,
    /// Whether the rule holds now.
    pub drifted: bool,
}

/// A change of an object's drift state: the value a sink sends.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DriftEvent {
    /// `drift` when the distribution has moved, `recovered` when it is back.
    pub kind: &'static str,
    /// Which statistic(s) hold: `rate`, `shift`.
    pub reasons: Vec<&'static str>,
    pub stats: DriftStats,
}

impl DriftEvent {
    /// One line for the log.
    pub fn message(&self) -> String {
        let s = &self.stats;
        match self.kind {
            "drift" => format!(
                "drift: `{}`'s last {} scores have moved from its calibration ({}): median {:.3}, \
                 p90 {:.3}, {:.1} % above its threshold (calibrated {:.1} %); KS D+ {:.3} (level \
                 {:.3}); expect false alarms: check the lighting and the parts, add good images \
                 with `iuf learn --more` or set the threshold with `iuf threshold`",
                s.object,
                s.window,
                self.reasons.join(" and "),
                s.p50,
                s.p90,
                100.0 * s.rate_above,
                100.0 * s.calibrated_rate.unwrap_or(0.0),
                s.shift.unwrap_or(0.0),
                s.shift_level.unwrap_or(0.0)
            ),
            _ => format!(
                "drift: `{}`'s last {} scores are back within its calibration (median {:.3}, {:.1} % \
                 above its threshold)",
                s.object,
                s.window,
                s.p50,
                100.0 * s.rate_above
            ),
        }
    }
}

/// Per object, a window of recent scores tested against the object's calibration.
#[derive(Debug, Clone)]
pub struct DriftWatch {
    cfg: DriftConfig,
    calibration: BTreeMap<String, Calibration>,
    objects: BTreeMap<String, ObjectWatch>,
}

impl DriftWatch {
    /// A watch of every object of `learner` that has a calibration sketch.
    pub fn new(learner: &Learner, cfg: DriftConfig) -> Self {
        let mut calibration = BTreeMap::new();
        for o in learner.learned_classes() {
            if let Some(s) = learner.calibrator().sketch(&o) {
                if s.len() >= 2 {
                    let holdout = learner
                        .object_images()
                        .get(&o)
                        .map_or(101, |n| (n.holdout + n.cross_fitted).max(1));
                    calibration.insert(
                        o,
                        Calibration {
                            sketch: s.to_vec(),
                            holdout,
                        },
                    );
                }
            }
        }
        Self::from_parts(cfg, calibration)
    }

    /// A watch of explicit calibrations: per object its sketch (sorted quantiles) and the number
    /// of held-out images behind it.
    pub fn with_calibration(
        cfg: DriftConfig,
        sketches: impl IntoIterator<Item = (String, Vec<f32>, u64)>,
    ) -> Self {
        let calibration = sketches
            .into_iter()
            .filter(|(_, s, _)| s.len() >= 2)
            .map(|(o, sketch, n)| {
                (
                    o,
                    Calibration {
                        sketch,
                        holdout: n.max(1),
                    },
                )
            })
            .collect();
        Self::from_parts(cfg, calibration)
    }

    fn from_parts(cfg: DriftConfig, calibration: BTreeMap<String, Calibration>) -> Self {
        Self {
            cfg: DriftConfig {
                window: cfg.window.max(1),
                min_images: cfg.min_images.clamp(1, cfg.window.max(1)),
                alpha: cfg.alpha.clamp(1e-300, 0.5),
            },
            calibration,
            objects: BTreeMap::new(),
        }
    }

    /// The settings.
    pub fn config(&self) -> DriftConfig {
        self.cfg
    }

    /// Records one image of `object` that scored `score` against `threshold` (None: no
    /// threshold). Returns an event when the object's state changes.
    pub fn observe(
        &mut self,
        object: &str,
        score: f32,
        threshold: Option<f32>,
    ) -> Option<DriftEvent> {
        if !score.is_finite() {
            return None;
        }
        let w = self.objects.entry(object.to_string()).or_default();
        w.seen += 1;
        w.scores.push_back(score);
        w.above.push_back(threshold.is_some_and(|t| score > t));
        while w.scores.len() > self.cfg.window {
            w.scores.pop_front();
            w.above.pop_front();
        }
        let was = self.objects[object].drifted;
        let alpha = if was { RECOVER_ALPHA } else { self.cfg.alpha };
        let (stats, reasons) = self.evaluate(object, threshold, alpha)?;
        let w = self.objects.get_mut(object).expect("just inserted");
        let now = !reasons.is_empty();
        if now == w.drifted {
            return None;
        }
        w.drifted = now;
        let stats = DriftStats {
            drifted: now,
            ..stats
        };
        w.last = Some(stats.clone());
        Some(DriftEvent {
            kind: if now { "drift" } else { "recovered" },
            reasons,
            stats,
        })
    }

    /// The statistics of every object seen (the window's, with the state the last observation
    /// left).
    pub fn stats(&self) -> Vec<DriftStats> {
        self.objects
            .keys()
            .filter_map(|o| {
                let (mut s, _) = self.evaluate(o, None, self.cfg.alpha)?;
                s.drifted = self.objects[o].drifted;
                if let Some(last) = &self.objects[o].last {
                    // Rates need the thresholds of the observations; keep the window's counts.
                    s.calibrated_rate = s.calibrated_rate.or(last.calibrated_rate);
                }
                Some(s)
            })
            .collect()
    }

    /// The window's statistics of `object` and the statistics that hold (none before
    /// `min_images`, or without a calibration) at level `alpha`. `threshold` gives the
    /// calibrated rate.
    fn evaluate(
        &self,
        object: &str,
        threshold: Option<f32>,
        alpha: f64,
    ) -> Option<(DriftStats, Vec<&'static str>)> {
        let w = self.objects.get(object)?;
        let mut sorted: Vec<f32> = w.scores.iter().copied().collect();
        sorted.sort_by(f32::total_cmp);
        let n = sorted.len();
        let k = w.above.iter().filter(|&&a| a).count();
        let q = |p| linear_quantile(&sorted, p).unwrap_or(f32::NAN);
        let mut stats = DriftStats {
            object: object.to_string(),
            seen: w.seen,
            window: n,
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            rate_above: k as f64 / n.max(1) as f64,
            calibrated_rate: None,
            rate_p_value: None,
            shift: None,
            shift_level: None,
            drifted: w.drifted,
        };
        let mut reasons = Vec::new();
        let Some(cal) = self.calibration.get(object) else {
            return Some((stats, reasons));
        };
        let ready = n >= self.cfg.min_images;
        if let Some(t) = threshold {
            let vouched = 1.0 - 0.05f64.powf(1.0 / (cal.holdout as f64 + 1.0));
            let p0 = (1.0 - cal.cdf(t)).max(vouched).min(0.999);
            let p = binomial_tail(n, k, p0);
            stats.calibrated_rate = Some(p0);
            stats.rate_p_value = Some(p);
            if ready && p < alpha {
                reasons.push("rate");
            }
        }
        let d = sorted
            .iter()
            .enumerate()
            // F_win just below sorted[i] is i / n; F_cal there is at most F_cal(sorted[i]).
            .map(|(i, &x)| cal.cdf(x) - i as f64 / n as f64)
            .fold(0.0f64, f64::max);
        let m = (n as f64 * cal.holdout as f64) / (n as f64 + cal.holdout as f64);
        let level = ((1.0 / alpha).ln() / (2.0 * m)).sqrt();
        stats.shift = Some(d);
        stats.shift_level = Some(level);
        if ready && d > level {
            reasons.push("shift");
        }
        Some((stats, reasons))
    }
}

/// `P(X >= k)` for `X ~ Binomial(n, p)`, summed in log space.
fn binomial_tail(n: usize, k: usize, p: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if k > n {
        return 0.0;
    }
    let (lp, lq) = (p.ln(), (1.0 - p).ln());
    let mut ln_choose = 0.0f64; // ln C(n, 0)
    let mut total = 0.0;
    for i in 0..=n {
        if i > 0 {
            ln_choose += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        if i >= k {
            total += (ln_choose + i as f64 * lp + (n - i) as f64 * lq).exp();
        }
    }
    total.min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A watch of object `a` calibrated on the scores 0.00, 0.01, .., 1.00 (its sketch), 100
    /// held-out images, threshold at the 0.99 quantile.
    fn watch() -> (DriftWatch, f32) {
        let sketch: Vec<f32> = (0..=100).map(|i| i as f32 / 100.0).collect();
        let t = linear_quantile(&sketch, 0.99).unwrap();
        let w =
            DriftWatch::with_calibration(DriftConfig::default(), [("a".to_string(), sketch, 100)]);
        (w, t)
    }

    #[test]
    fn binomial_tail_matches_closed_forms() {
        assert!((binomial_tail(10, 10, 0.5) - 0.5f64.powi(10)).abs() < 1e-12);
        assert!((binomial_tail(3, 1, 0.1) - (1.0 - 0.9f64.powi(3))).abs() < 1e-12);
        assert_eq!(binomial_tail(5, 0, 0.3), 1.0);
        assert_eq!(binomial_tail(5, 6, 0.3), 0.0);
    }

    /// Guarantee: scores drawn from the calibration raise no warning in 10,000 images; scores
    /// shifted up raise one within the window, once, and a recovery when they come back.
    #[test]
    fn calibrated_scores_stay_quiet_and_shifted_ones_warn_once() {
        let (mut w, t) = watch();
        // A fixed low-discrepancy sequence of uniform scores: the calibrated distribution.
        let mut x = 0.5f64;
        for _ in 0..10_000 {
            x = (x + 0.618_033_988_75) % 1.0;
            assert_eq!(w.observe("a", x as f32, Some(t)), None);
        }
        let s = &w.stats()[0];
        assert_eq!((s.window, s.seen), (50, 10_000));
        assert!(!s.drifted);
        // Shifted into the upper half: the window fills with high scores.
        let mut events = Vec::new();
        for i in 0..50 {
            x = (x + 0.618_033_988_75) % 1.0;
            if let Some(e) = w.observe("a", x as f32 * 0.5 + 0.5, Some(t)) {
                events.push((i, e));
            }
        }
        assert_eq!(events.len(), 1, "{events:?}");
        let (at, e) = &events[0];
        assert!(
            *at < 50 && e.kind == "drift" && e.reasons.contains(&"shift"),
            "{e:?}"
        );
        assert!(e.message().contains("`a`'s last"), "{}", e.message());
        // Back to the calibrated distribution: recovered.
        let mut back = None;
        for _ in 0..200 {
            x = (x + 0.618_033_988_75) % 1.0;
            back = back.or(w.observe("a", x as f32, Some(t)));
        }
        assert_eq!(back.map(|e| e.kind), Some("recovered"));
    }

    /// Guarantee: many scores above the threshold raise the rate test even when most of the
    /// window is unchanged; an object without calibration never warns.
    #[test]
    fn a_burst_above_the_threshold_warns_and_unknown_objects_do_not() {
        let (mut w, t) = watch();
        let mut got = None;
        for i in 0..50 {
            let s = if i % 5 == 0 {
                2.0
            } else {
                (i % 50) as f32 / 60.0
            };
            got = got.or(w.observe("a", s, Some(t)));
        }
        let e = got.expect("a warning");
        assert!(e.reasons.contains(&"rate"), "{e:?}");
        for _ in 0..100 {
            assert_eq!(w.observe("b", 5.0, Some(1.0)), None);
        }
    }
}
