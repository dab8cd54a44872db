//! Continual-learning results: the matrix `R[step][class]` and its ACC and FM summaries
//! (section 6 of ALGORITHM.md), plus a Markdown rendering of the per-class table.

use std::fmt::Write as _;

use crate::error::{MetricsError, Result};

/// `R[s][c]`: the metric (e.g. image AUROC) of the model after step `s` on class `c`.
///
/// A cell is absent (`None`) where class `c` was not yet learned at step `s`, or where it was
/// learned and evaluated but the metric is undefined for it ([`set_undefined`](Self::set_undefined):
/// e.g. pixel AUROC of a test set whose defect masks are all empty). The step at which a class is
/// learned is the first step with a value or an undefined mark, so a metric that cannot be
/// computed never moves it. ACC and FM average over the classes with a value; an undefined cell
/// leaves its class out of them (and out of the best-earlier value of FM) without changing the
/// others. Plain data with public accessors ([`classes`](Self::classes), [`steps`](Self::steps),
/// [`get`](Self::get), [`is_undefined`](Self::is_undefined)) so callers can serialise it however
/// they like.
///
/// ```
/// use iuf_metrics::ResultsMatrix;
/// # fn main() -> iuf_metrics::Result<()> {
/// let mut r = ResultsMatrix::new(["bottle", "cable"], 2)?;
/// r.set(0, 0, 0.98)?; // step 0 learns bottle
/// r.set(1, 0, 0.90)?; // step 1 learns cable; bottle drops
/// r.set(1, 1, 0.80)?;
/// assert!((r.acc().unwrap() - 0.85).abs() < 1e-12); // mean of the last row
/// assert!((r.fm().unwrap() - 0.08).abs() < 1e-12); // bottle: 0.98 - 0.90
/// println!("{}", r.to_markdown());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ResultsMatrix {
    classes: Vec<String>,
    steps: usize,
    /// Row-major: `cells[step * classes.len() + class]`.
    cells: Vec<Cell>,
}

/// One `R[s][c]`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Cell {
    /// The class is not learned yet at this step.
    NotLearned,
    /// Learned and evaluated, but the metric has no value (undefined for its test set).
    Undefined,
    /// The metric.
    Value(f64),
}

impl ResultsMatrix {
    /// An empty matrix (every cell absent) for `classes` (unique names, in column order) over
    /// `steps` steps. Errors if there is no class, no step, or a repeated name.
    pub fn new<S: Into<String>>(
        classes: impl IntoIterator<Item = S>,
        steps: usize,
    ) -> Result<Self> {
        let classes: Vec<String> = classes.into_iter().map(Into::into).collect();
        if classes.is_empty() {
            return Err(MetricsError::Empty {
                what: "results matrix classes",
            });
        }
        if steps == 0 {
            return Err(MetricsError::Empty {
                what: "results matrix steps",
            });
        }
        for (i, name) in classes.iter().enumerate() {
            if classes[..i].contains(name) {
                return Err(MetricsError::DuplicateClass { name: name.clone() });
            }
        }
        let cells = vec![Cell::NotLearned; steps * classes.len()];
        Ok(Self {
            classes,
            steps,
            cells,
        })
    }

    /// Class names, in column order.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Number of steps (rows).
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// Column of the class called `name`.
    pub fn class_index(&self, name: &str) -> Option<usize> {
        self.classes.iter().position(|c| c == name)
    }

    fn cell(&self, step: usize, class: usize) -> Result<usize> {
        if step >= self.steps {
            return Err(MetricsError::OutOfRange {
                what: "step",
                index: step,
                len: self.steps,
            });
        }
        if class >= self.classes.len() {
            return Err(MetricsError::OutOfRange {
                what: "class",
                index: class,
                len: self.classes.len(),
            });
        }
        Ok(step * self.classes.len() + class)
    }

    /// Records `R[step][class]` = `value`. Errors on an index out of range or a NaN value.
    pub fn set(&mut self, step: usize, class: usize, value: f64) -> Result<()> {
        let cell = self.cell(step, class)?;
        if value.is_nan() {
            return Err(MetricsError::InvalidArgument {
                name: "results matrix value",
                expected: "a number",
                found: format!("NaN at step {step}, class {}", self.classes[class]),
            });
        }
        self.cells[cell] = Cell::Value(value);
        Ok(())
    }

    /// Records that `class` is learned at `step` (it was evaluated) but the metric is undefined
    /// for it, e.g. pixel AUROC of a test set without any defect pixel in its masks. The cell
    /// reads `None`; [`learned_at`](Self::learned_at) counts it; ACC and FM leave it out. Errors on
    /// an index out of range.
    pub fn set_undefined(&mut self, step: usize, class: usize) -> Result<()> {
        let cell = self.cell(step, class)?;
        self.cells[cell] = Cell::Undefined;
        Ok(())
    }

    /// `R[step][class]`, or `None` where the class was not learned yet, where the metric is
    /// undefined for it (see [`is_undefined`](Self::is_undefined)) or where an index is out of
    /// range.
    pub fn get(&self, step: usize, class: usize) -> Option<f64> {
        match self.cell(step, class).map(|cell| self.cells[cell]) {
            Ok(Cell::Value(v)) => Some(v),
            _ => None,
        }
    }

    /// True where [`set_undefined`](Self::set_undefined) marked `R[step][class]`: learned, but
    /// without a value.
    pub fn is_undefined(&self, step: usize, class: usize) -> bool {
        matches!(
            self.cell(step, class).map(|cell| self.cells[cell]),
            Ok(Cell::Undefined)
        )
    }

    /// The first step with a value or an undefined mark for `class`: the step that learned it.
    pub fn learned_at(&self, class: usize) -> Option<usize> {
        (0..self.steps).find(|&s| self.get(s, class).is_some() || self.is_undefined(s, class))
    }

    /// ACC after `step`: mean over the classes with a value at `step` of `R[step][c]` (classes not
    /// learned yet, or with the metric undefined, are left out). `None` if no class has a value
    /// at `step`.
    pub fn acc_at(&self, step: usize) -> Option<f64> {
        let values: Vec<f64> = (0..self.classes.len())
            .filter_map(|c| self.get(step, c))
            .collect();
        (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
    }

    /// FM after step `t`: mean over the classes learned before `t` (and with a value at `t`) of
    /// (max over s in [step learned, t-1] of `R[s][c]`) - `R[t][c]`, the max taken over the steps
    /// with a value; a class without any value before `t` is left out. `None` when no class
    /// qualifies, in particular at step 0 and for a one-step run: forgetting is undefined there.
    pub fn fm_at(&self, t: usize) -> Option<f64> {
        let mut forgetting = Vec::new();
        for c in 0..self.classes.len() {
            let Some(now) = self.get(t, c) else { continue };
            let best_before = (0..t).filter_map(|s| self.get(s, c)).reduce(f64::max);
            if let Some(best) = best_before {
                forgetting.push(best - now);
            }
        }
        (!forgetting.is_empty()).then(|| forgetting.iter().sum::<f64>() / forgetting.len() as f64)
    }

    /// ACC at the last step T (section 6 of ALGORITHM.md).
    pub fn acc(&self) -> Option<f64> {
        self.acc_at(self.steps - 1)
    }

    /// FM at the last step T (section 6 of ALGORITHM.md); `None` with a single step.
    pub fn fm(&self) -> Option<f64> {
        self.fm_at(self.steps - 1)
    }

    /// The per-class table as GitHub Markdown: one row per step, one column per class, then ACC
    /// and FM after that step. Values have 4 decimals; cells of classes not learned yet are "-",
    /// undefined ones "n/a".
    pub fn to_markdown(&self) -> String {
        let format = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.4}"));
        let mut out = String::from("| step |");
        for name in &self.classes {
            // A `|` inside a name would end the cell.
            let _ = write!(out, " {} |", name.replace('|', "\\|"));
        }
        out.push_str(" ACC | FM |\n|---:|");
        for _ in 0..self.classes.len() + 2 {
            out.push_str("---:|");
        }
        out.push('\n');
        for step in 0..self.steps {
            let _ = write!(out, "| {step} |");
            for class in 0..self.classes.len() {
                let cell = if self.is_undefined(step, class) {
                    "n/a".to_string()
                } else {
                    format(self.get(step, class))
                };
                let _ = write!(out, " {cell} |");
            }
            let _ = writeln!(
                out,
                " {} | {} |",
                format(self.acc_at(step)),
                format(self.fm_at(step))
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructor_and_setters_check_input() {
        assert!(ResultsMatrix::new(Vec::<String>::new(), 2).is_err());
        assert!(ResultsMatrix::new(["a"], 0).is_err());
        assert_eq!(
            ResultsMatrix::new(["a", "b", "a"], 1),
            Err(MetricsError::DuplicateClass { name: "a".into() })
        );
        let mut r = ResultsMatrix::new(["a", "b"], 2).unwrap();
        assert!(r.set(2, 0, 0.5).is_err());
        assert!(r.set(0, 2, 0.5).is_err());
        assert!(r.set(0, 0, f64::NAN).is_err());
        assert_eq!(r.get(5, 5), None);
        assert_eq!(r.class_index("b"), Some(1));
        assert_eq!(r.acc(), None);
        assert_eq!(r.fm(), None);
    }

    #[test]
    fn single_step_has_no_forgetting() {
        let mut r = ResultsMatrix::new(["a", "b"], 1).unwrap();
        r.set(0, 0, 0.9).unwrap();
        r.set(0, 1, 0.7).unwrap();
        assert!((r.acc().unwrap() - 0.8).abs() < 1e-15);
        assert_eq!(r.fm(), None);
    }
}
