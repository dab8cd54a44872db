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

    /// The path is (or leads through a link to) no regular file: a named pipe, a device, a
    /// socket, a folder. Nothing was read from it.
    #[error("cannot read {}: {}", path.display(), not_regular(kind, target.as_deref()))]
    NotRegular {
        path: PathBuf,
        kind: crate::file_kind::FileKind,
        /// Where the link leads, when the path is one.
        target: Option<PathBuf>,
    },

    /// A regular file over the size limit for what it should be; nothing was read from it.
    #[error(
        "cannot read {}: the file is {}, over the limit of {} for an image or mask file (the \
         decoder's memory limit: a larger file would not decode within it); downscale or \
         recompress it",
        path.display(),
        bytes(*size),
        bytes(*limit)
    )]
    FileTooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },

    /// An image whose header gives more pixels than the caller may decode at once; nothing was
    /// decoded.
    #[error(
        "cannot decode image {}: the image is {width}x{height} pixels ({}), over the decode budget of {}",
        path.display(),
        megapixels(*width as u64 * *height as u64),
        megapixels(*limit)
    )]
    OverBudget {
        path: PathBuf,
        width: u32,
        height: u32,
        limit: u64,
    },

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

fn not_regular(kind: &crate::file_kind::FileKind, target: Option<&std::path::Path>) -> String {
    let what = match target {
        Some(t) => format!(
            "it leads through a link to {}, which is {kind}",
            t.display()
        ),
        None => format!("the file is {kind}"),
    };
    format!(
        "{what}, not a regular file; images and masks are read only from regular files (a pipe \
         or a device could block or never end)"
    )
}

/// `144 MP`, `0.3 MP`: a pixel count in megapixels, for messages.
pub fn megapixels(pixels: u64) -> String {
    if pixels.is_multiple_of(1_000_000) {
        format!("{} MP", pixels / 1_000_000)
    } else {
        format!("{:.1} MP", pixels as f64 / 1e6)
    }
}

/// `1000 bytes`, or `629145600 bytes (600 MiB)` from 1 MiB up.
fn bytes(n: u64) -> String {
    const MIB: u64 = 1 << 20;
    match n >= MIB {
        true => format!("{n} bytes ({} MiB)", n.div_ceil(MIB)),
        false => format!("{n} bytes"),
    }
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
