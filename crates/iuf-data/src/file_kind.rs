//! What a file is, from its first bytes: for error messages that say "`x` is a PNG image, not a
//! model file" or "`x` is empty (0 bytes)" instead of a parser's "header too large".
use std::fmt;
use std::io::Read;
use std::path::Path;

/// What a path holds, as far as its first bytes tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// Nothing at the path.
    Missing,
    /// A folder.
    Folder,
    /// A file of 0 bytes.
    Empty,
    /// Something that is neither a folder nor a regular file (its description: "a named pipe
    /// (FIFO)", "a character device", ...): never opened, since reading it could block or never
    /// end.
    Special(&'static str),
    /// An image file of this format (PNG, JPEG, BMP, TIFF, GIF, WebP).
    Image(&'static str),
    /// A zip archive (a PyTorch `.pth` checkpoint is one).
    Zip,
    /// A file whose first bytes are none of the above (or that cannot be read).
    Other,
}

impl FileKind {
    /// Looks at the path: missing, a folder, or a file sniffed by [`FileKind::of_bytes`].
    pub fn of(path: &Path) -> FileKind {
        let Ok(meta) = std::fs::metadata(path) else {
            return FileKind::Missing;
        };
        if !meta.is_file() {
            return FileKind::of_meta(&meta);
        }
        if meta.len() == 0 {
            return FileKind::Empty;
        }
        let mut head = [0u8; 16];
        // A regular file (a pipe swapped in since the check above would block here; the readers
        // of data go through `input_file`, which opens without waiting).
        let n = std::fs::File::open(path)
            .and_then(|f| f.take(head.len() as u64).read(&mut head))
            .unwrap_or(0);
        if n == 0 {
            return FileKind::Other;
        }
        FileKind::of_bytes(&head[..n])
    }

    /// What a path is from its metadata alone, for what is no regular file (a folder, a named pipe,
    /// a device, a socket); a regular file is `Other` here (its bytes tell more: [`FileKind::of`]).
    pub fn of_meta(meta: &std::fs::Metadata) -> FileKind {
        let t = meta.file_type();
        if t.is_dir() {
            return FileKind::Folder;
        }
        if t.is_file() {
            return FileKind::Other;
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileTypeExt;
            if t.is_fifo() {
                return FileKind::Special("a named pipe (FIFO)");
            }
            if t.is_char_device() {
                return FileKind::Special("a character device");
            }
            if t.is_block_device() {
                return FileKind::Special("a block device");
            }
            if t.is_socket() {
                return FileKind::Special("a socket");
            }
        }
        FileKind::Special("a special file")
    }

    /// Sniffs a file's first bytes (at least 12 of them to tell every kind).
    pub fn of_bytes(head: &[u8]) -> FileKind {
        let image = |f| FileKind::Image(f);
        match head {
            [] => FileKind::Empty,
            [0x89, b'P', b'N', b'G', ..] => image("PNG"),
            [0xff, 0xd8, 0xff, ..] => image("JPEG"),
            [b'B', b'M', ..] => image("BMP"),
            [b'I', b'I', 42, 0, ..] | [b'M', b'M', 0, 42, ..] => image("TIFF"),
            [b'G', b'I', b'F', b'8', ..] => image("GIF"),
            [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => image("WebP"),
            [b'P', b'K', 3, 4, ..] | [b'P', b'K', 5, 6, ..] => FileKind::Zip,
            _ => FileKind::Other,
        }
    }
}

/// "a folder", "empty (0 bytes)", "a PNG image", ...: to follow "`path` is".
impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileKind::Missing => write!(f, "missing (no such file)"),
            FileKind::Folder => write!(f, "a folder"),
            FileKind::Empty => write!(f, "empty (0 bytes)"),
            FileKind::Special(what) => write!(f, "{what}"),
            FileKind::Image(format) => write!(f, "a {format} image"),
            FileKind::Zip => write!(f, "a zip archive"),
            FileKind::Other => write!(f, "a file of unknown kind"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_told_apart_by_their_first_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            FileKind::of(&p)
        };
        assert_eq!(FileKind::of(&dir.path().join("absent")), FileKind::Missing);
        assert_eq!(FileKind::of(dir.path()), FileKind::Folder);
        assert_eq!(file("e.png", b""), FileKind::Empty);
        assert_eq!(
            file("m.safetensors", b"\x89PNG\r\n\x1a\n...."),
            FileKind::Image("PNG")
        );
        assert_eq!(file("j", b"\xff\xd8\xff\xe0"), FileKind::Image("JPEG"));
        assert_eq!(file("z.pth", b"PK\x03\x04rest"), FileKind::Zip);
        assert_eq!(file("t", b"{\"a\": 1}"), FileKind::Other);
        assert_eq!(FileKind::Image("PNG").to_string(), "a PNG image");
        assert_eq!(FileKind::Empty.to_string(), "empty (0 bytes)");
    }
}
