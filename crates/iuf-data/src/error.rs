//! The crate's error type: every variant names the file or spec at fault and what was expected.
use std::fmt;
use std::path::PathBuf;

/// One thing wrong with a dataset, found while indexing: the file or folder at fault, what the
/// layout requires there, and what was actually found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: PathBuf,
    pub expected: String,
    pub found: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: expected {}; found {}",
            self.path.display(),
            self.expected,
            self.found
        )
    }
}

fn list_problems(problems: &[Problem]) -> String {
    let mut out = String::new();
    for p in problems {
        out.push_str("\n  - ");
        out.push_str(&p.to_string());
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot decode image {}: {source}", path.display())]
    Decode {
        path: PathBuf,
        #[source]
        source: ::image::ImageError,
    },

    /// The path holds no image at all (an empty file, a folder).
    #[error("cannot decode image {}: the file is {kind}; expected a PNG, JPEG, BMP or TIFF image", path.display())]
    NotImage {
        path: PathBuf,
        kind: crate::file_kind::FileKind,
    },

    /// A valid image too large for the decoder's memory limit; `reason` gives its size and the limit.
    #[error("cannot decode image {}: {reason}", path.display())]
    TooLarge { path: PathBuf, reason: String },

    #[error("cannot write image {}: {source}", path.display())]
    Encode {
        path: PathBuf,
        #[source]
        source: ::image::ImageError,
    },

    /// The root folder is not a dataset of a known layout.
    #[error("{}: {reason}", root.display())]
    Layout { root: PathBuf, reason: String },

    /// One or more classes break the layout's rules; every problem found is listed, none is skipped.
    #[error(
        "dataset {} has {} problem(s) in class(es) {}; refusing to use a broken class:{}",
        root.display(),
        problems.len(),
        classes.join(", "),
        list_problems(problems)
    )]
    Broken {
        root: PathBuf,
        classes: Vec<String>,
        problems: Vec<Problem>,
    },

    #[error("unknown class `{name}`; the dataset has: {}", known.join(", "))]
    UnknownClass { name: String, known: Vec<String> },

    /// The VisA split file does not have the expected columns or values.
    #[error("split file {} line {line}: {reason}", path.display())]
    SplitFile {
        path: PathBuf,
        line: usize,
        reason: String,
    },

    #[error("protocol `{spec}`: {reason}")]
    Protocol { spec: String, reason: String },

    #[error("invalid {what}: {reason}")]
    Config { what: &'static str, reason: String },

    #[error("{what}: expected {expected}, found {found}")]
    Shape {
        what: String,
        expected: String,
        found: String,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
