//! Cheap per-file checks used while indexing: listing image files, reading image headers (never the
//! pixels) and detecting truncated files from their last bytes.
use std::fs;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use ::image::{ImageFormat, ImageReader};

use crate::error::{Error, Problem};

/// File name extensions accepted as images (compared case-insensitively).
pub const IMAGE_EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "bmp", "tif", "tiff"];

pub(crate) fn problem(
    path: &Path,
    expected: impl Into<String>,
    found: impl Into<String>,
) -> Problem {
    Problem {
        path: path.to_path_buf(),
        expected: expected.into(),
        found: found.into(),
    }
}

pub(crate) fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

pub(crate) fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// Non-hidden entries of a folder, sorted by file name so that indices never depend on the file
/// system's order.
pub(crate) fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, Problem> {
    let read = fs::read_dir(dir).map_err(|e| {
        let found = if e.kind() == std::io::ErrorKind::NotFound {
            "no such folder".to_string()
        } else {
            e.to_string()
        };
        problem(dir, "a folder", found)
    })?;
    let mut out = Vec::new();
    for entry in read {
        let entry = entry.map_err(|e| problem(dir, "a readable folder", e.to_string()))?;
        let path = entry.path();
        if !is_hidden(&path) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Sorted image files of a folder. Sub-folders and files that are not images are problems (a
/// loader must not silently skip data); hidden files (`.DS_Store`) are ignored. An empty folder
/// is a problem too.
pub(crate) fn list_images(dir: &Path, problems: &mut Vec<Problem>) -> Vec<PathBuf> {
    let entries = match sorted_entries(dir) {
        Ok(e) => e,
        Err(p) => {
            problems.push(p);
            return Vec::new();
        }
    };
    let mut images = Vec::new();
    for path in entries {
        if path.is_dir() {
            problems.push(problem(&path, "an image file", "a folder"));
        } else if has_image_extension(&path) {
            images.push(path);
        } else {
            problems.push(problem(
                &path,
                format!("an image file ({})", IMAGE_EXTENSIONS.join(", ")),
                "a file with another extension",
            ));
        }
    }
    if images.is_empty() {
        problems.push(problem(dir, "at least one image", "no image in the folder"));
    }
    images
}

/// Width and height of an image from its header, after checking that the file is complete
/// (PNG ends with its IEND chunk, JPEG with its end-of-image marker, BMP is as long as its header
/// says). Nothing is decoded.
pub(crate) fn image_dimensions(path: &Path) -> Result<(u32, u32), Problem> {
    let mut reader = ImageReader::new(BufReader::new(open_image_file(path)?));
    if let Ok(format) = ImageFormat::from_path(path) {
        reader.set_format(format);
    }
    let reader = reader
        .with_guessed_format()
        .map_err(|e| problem(path, "a readable image file", e.to_string()))?;
    let Some(format) = reader.format() else {
        return Err(problem(
            path,
            "a PNG, JPEG, BMP or TIFF image",
            "content of no known image format",
        ));
    };
    let dims = reader.into_dimensions().map_err(|e| {
        problem(
            path,
            format!("a valid {} header", format_name(format)),
            e.to_string(),
        )
    })?;
    check_complete(path, format)?;
    Ok(dims)
}

/// The image or mask file at `path`, opened only if it is a regular file (after links) under the
/// image file size limit: a named pipe or a link to a device is a problem, never read.
fn open_image_file(path: &Path) -> Result<fs::File, Problem> {
    crate::input_file::open(path, crate::image::file_limit()).map_err(|e| match e {
        Error::NotRegular { kind, target, .. } => {
            let found = match target {
                Some(t) => format!("a link to {}, which is {kind}", t.display()),
                None => kind.to_string(),
            };
            problem(path, "a regular image file", found)
        }
        Error::FileTooLarge { size, limit, .. } => problem(
            path,
            "a regular image file",
            format!("a file of {size} bytes, over the limit of {limit} bytes for an image"),
        ),
        // Missing, unreadable: as before the regular-file check.
        other => problem(path, "a readable image file", other.to_string()),
    })
}

fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Png => "PNG",
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Bmp => "BMP",
        ImageFormat::Tiff => "TIFF",
        _ => "image",
    }
}

/// Looks at the end of the file: a truncated download or copy keeps a valid header but loses its
/// final chunk, which only a full decode would otherwise notice.
fn check_complete(path: &Path, format: ImageFormat) -> Result<(), Problem> {
    const TAIL: u64 = 64;
    let io_problem = |e: std::io::Error| problem(path, "a readable image file", e.to_string());
    let mut file = open_image_file(path)?;
    let len = file.metadata().map_err(io_problem)?.len();
    match format {
        ImageFormat::Png | ImageFormat::Jpeg => {
            let start = len.saturating_sub(TAIL);
            file.seek(SeekFrom::Start(start)).map_err(io_problem)?;
            let mut tail = Vec::with_capacity(TAIL as usize);
            file.read_to_end(&mut tail).map_err(io_problem)?;
            let (marker, what): (&[u8], &str) = if format == ImageFormat::Png {
                (b"IEND", "a complete PNG ending with its IEND chunk")
            } else {
                (
                    &[0xFF, 0xD9],
                    "a complete JPEG ending with its end-of-image marker",
                )
            };
            if tail.windows(marker.len()).any(|w| w == marker) {
                Ok(())
            } else {
                Err(problem(
                    path,
                    what,
                    format!("a truncated file of {len} bytes"),
                ))
            }
        }
        ImageFormat::Bmp => {
            // BITMAPFILEHEADER: bytes 2..6 hold the file size (0 is allowed by some writers).
            let mut header = [0u8; 6];
            file.read_exact(&mut header).map_err(io_problem)?;
            let declared = u32::from_le_bytes([header[2], header[3], header[4], header[5]]) as u64;
            if declared > len {
                Err(problem(
                    path,
                    format!("a complete BMP of {declared} bytes"),
                    format!("a truncated file of {len} bytes"),
                ))
            } else {
                Ok(())
            }
        }
        // TIFF stores its directory anywhere in the file: only a decode would tell.
        _ => Ok(()),
    }
}
