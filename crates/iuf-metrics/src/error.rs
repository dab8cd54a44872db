//! The error type of iuf-metrics: every way an input can be unusable, with what was expected.

use std::fmt;

/// Which of the two classes of a binary labelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Label `true` / nonzero mask pixel: anomalous.
    Positive,
    /// Label `false` / zero mask pixel: normal.
    Negative,
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Class::Positive => f.write_str("positive (anomalous)"),
            Class::Negative => f.write_str("negative (normal)"),
        }
    }
}

/// Everything that makes a metric undefined or an input unusable.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum MetricsError {
    /// Two inputs that must pair up element by element have different lengths.
    #[error("{what}: expected {expected} values, found {found}")]
    LengthMismatch {
        /// Which input, e.g. "labels" or "mask 3".
        what: String,
        /// The length it must have.
        expected: usize,
        /// The length it has.
        found: usize,
    },
    /// No values at all.
    #[error("{what}: expected at least one value, found none")]
    Empty {
        /// Which input.
        what: &'static str,
    },
    /// The metric needs samples of a class that does not occur in the labels.
    #[error("{metric} needs at least one {missing} sample, found none among {total} samples")]
    MissingClass {
        /// The metric being computed.
        metric: &'static str,
        /// The class that is absent.
        missing: Class,
        /// How many samples there were.
        total: u64,
    },
    /// A score is NaN, which has no place in a ranking.
    #[error("score {index} of part {part} is NaN; expected a number")]
    NanScore {
        /// Which slice (0 for single-slice entry points).
        part: usize,
        /// Position inside that slice.
        index: usize,
    },
    /// A scalar argument is out of its allowed range.
    #[error("{name}: expected {expected}, found {found}")]
    InvalidArgument {
        /// The argument.
        name: &'static str,
        /// What it must be.
        expected: &'static str,
        /// What it was.
        found: String,
    },
    /// More samples than the 32-bit bookkeeping of PRO can index.
    #[error("{what}: at most {max} supported, found {found}")]
    TooLarge {
        /// What overflowed.
        what: &'static str,
        /// The limit.
        max: u64,
        /// The amount found.
        found: u64,
    },
    /// A step or class index outside a [`crate::ResultsMatrix`].
    #[error("{what} index {index} out of range: the results matrix has {len}")]
    OutOfRange {
        /// "step" or "class".
        what: &'static str,
        /// The index asked for.
        index: usize,
        /// How many there are.
        len: usize,
    },
    /// Two classes of a [`crate::ResultsMatrix`] share a name.
    #[error("class name {name:?} appears twice; expected unique class names")]
    DuplicateClass {
        /// The repeated name.
        name: String,
    },
}

/// Result with [`MetricsError`].
pub type Result<T> = std::result::Result<T, MetricsError>;
