//! Opening an input file (an image, a mask) so that no file can hang or exhaust the reader: only a
//! regular file is read, after links are resolved (a link to `/dev/zero` would be read for ever,
//! a named pipe blocks its reader until a writer comes), and only under a size limit checked
//! before the first byte is read.
use std::fs::{File, Metadata};
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::file_kind::FileKind;

/// The error for `path`, which is (or leads through a link to) no regular file.
fn not_regular(path: &Path, meta: &Metadata) -> Error {
    let link = path
        .symlink_metadata()
        .is_ok_and(|m| m.file_type().is_symlink());
    Error::NotRegular {
        path: path.to_path_buf(),
        kind: FileKind::of_meta(meta),
        target: link.then(|| path.canonicalize().unwrap_or_else(|_| PathBuf::from("?"))),
    }
}

/// Checks, from metadata alone (nothing is opened), that `path` resolves to a regular file of at
/// most `limit` bytes; gives its size.
pub fn check(path: &Path, limit: u64) -> Result<u64> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    check_meta(path, &meta, limit)
}

fn check_meta(path: &Path, meta: &Metadata, limit: u64) -> Result<u64> {
    if !meta.is_file() {
        return Err(not_regular(path, meta));
    }
    if meta.len() > limit {
        return Err(Error::FileTooLarge {
            path: path.to_path_buf(),
            size: meta.len(),
            limit,
        });
    }
    Ok(meta.len())
}

/// Opens `path` for reading if it resolves to a regular file of at most `limit` bytes. A named
/// pipe or a device is refused before it is opened, and the opened file is checked again (a file
/// swapped for a pipe in between is opened without blocking and refused).
pub fn open(path: &Path, limit: u64) -> Result<File> {
    check(path, limit)?;
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Never wait for a pipe's writer; a regular file reads as usual with this flag.
        options.custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    }
    let file = options.open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    check_meta(path, &meta, limit)?;
    Ok(file)
}

/// The bytes of `path`, read as [`open`] allows: at most `limit` of them, even if the file grows
/// while it is read.
pub fn read(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let file = open(path, limit)?;
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > limit {
        return Err(Error::FileTooLarge {
            path: path.to_path_buf(),
            size: bytes.len() as u64,
            limit,
        });
    }
    Ok(bytes)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Runs `f` on another thread and fails the test if it has not returned within 10 s (the
    /// code before the fix blocked for ever on a named pipe, and read `/dev/zero` without end).
    pub(crate) fn within<T: Send + 'static>(
        what: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("{what} did not return within 10 s"))
    }

    /// Guarantee (issue 23 item 6): only regular files are read, after links are resolved, and
    /// only under the size limit, checked before reading.
    #[cfg(unix)]
    #[test]
    fn pipes_devices_and_oversized_files_are_refused_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("f.png");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let err = within("opening a FIFO", move || {
            open(&fifo, 100).unwrap_err().to_string()
        });
        assert!(
            err.contains("f.png: the file is a named pipe (FIFO), not a regular file"),
            "{err}"
        );
        let zero = dir.path().join("x.jpg");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let err = read(&zero, 100).unwrap_err().to_string();
        assert!(
            err.contains(
                "x.jpg: it leads through a link to /dev/zero, which is a character device"
            ),
            "{err}"
        );
        let big = dir.path().join("big.png");
        File::create(&big).unwrap().set_len(1000).unwrap();
        let err = read(&big, 999).unwrap_err().to_string();
        assert!(
            err.contains("big.png: the file is 1000 bytes, over the limit of 999 bytes"),
            "{err}"
        );
        assert_eq!(read(&big, 1000).unwrap().len(), 1000);
    }
}
