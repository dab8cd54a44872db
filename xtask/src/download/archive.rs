//! Archive checks and extraction: sha256 of a file, and unpacking .tar, .tar.gz and .tar.xz
//! (pure-Rust xz via lzma-rs, streamed through a pipe so nothing is decompressed to disk first).
use std::fs::{self, File};
use std::io::{BufReader, Read};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::Manifest;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ArchiveFormat {
    #[serde(rename = "tar")]
    Tar,
    #[serde(rename = "tar.gz")]
    TarGz,
    #[serde(rename = "tar.xz")]
    TarXz,
}

/// Lower-case hex sha256 of a file, read in 1 MiB blocks.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Checks the file against the expected sha256. Without one, prints the computed value so that it
/// can be recorded, instead of pretending the file was verified.
pub fn verify(path: &Path, expected: Option<&str>, manifest: &Manifest) -> Result<()> {
    let actual = sha256_file(path)?;
    match expected {
        Some(want) if want == actual => {
            eprintln!("sha256 verified: {actual}");
            Ok(())
        }
        Some(want) => {
            let source = manifest
                .archive
                .sha256_source
                .as_deref()
                .unwrap_or("the manifest");
            bail!(
                "{}: expected sha256 {want} (from {source}); found {actual}. If the publisher re-issued \
                 the archive and you trust this copy, pass --sha256 {actual}",
                path.display()
            )
        }
        None => {
            eprintln!(
                "NOT VERIFIED: datasets/{}.json records no sha256 for this archive. Computed sha256: {actual} \
                 (check it against the publisher, then record it in the manifest)",
                manifest.name
            );
            Ok(())
        }
    }
}

/// Unpacks `archive` into `dest`, which must not exist yet. The content goes to `<dest>.partial`
/// first and is renamed at the end, so an interrupted extraction is never mistaken for a complete one.
pub fn extract(archive: &Path, format: ArchiveFormat, dest: &Path) -> Result<()> {
    let partial = dest.with_extension("partial");
    if partial.exists() {
        fs::remove_dir_all(&partial).with_context(|| {
            format!(
                "removing the earlier partial extraction {}",
                partial.display()
            )
        })?;
    }
    fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let file = File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    let input = BufReader::with_capacity(1 << 20, file);
    eprintln!("extracting {} into {}", archive.display(), dest.display());
    match format {
        ArchiveFormat::Tar => unpack_tar(input, &partial)?,
        ArchiveFormat::TarGz => unpack_tar(flate2::read::GzDecoder::new(input), &partial)?,
        ArchiveFormat::TarXz => {
            let (reader, mut writer) =
                std::io::pipe().context("creating a pipe for xz decompression")?;
            let mut input = input;
            let decoder =
                std::thread::spawn(move || lzma_rs::xz_decompress(&mut input, &mut writer));
            // `unpack_tar` drops the pipe's reader when it returns, so the decoder cannot block.
            let unpacked = unpack_tar(reader, &partial);
            let decoded = decoder.join().map_err(|_| {
                anyhow::anyhow!(
                    "{}: the xz decompression thread panicked",
                    archive.display()
                )
            })?;
            match (decoded, unpacked) {
                (Ok(()), result) => result?,
                // The tar ended (end-of-archive blocks) before the xz stream's padding was read.
                (Err(lzma_rs::error::Error::IoError(e)), Ok(()))
                    if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                // A corrupt stream explains the tar error it causes, so it is the one reported.
                (Err(e), tar) => {
                    let tar = tar
                        .err()
                        .map(|t| format!(" (tar: {t:#})"))
                        .unwrap_or_default();
                    bail!("{}: xz decompression failed: {e}{tar}", archive.display())
                }
            }
        }
    }
    fs::rename(&partial, dest)
        .with_context(|| format!("renaming {} to {}", partial.display(), dest.display()))?;
    Ok(())
}

fn unpack_tar(input: impl Read, dest: &Path) -> Result<()> {
    let mut archive = tar::Archive::new(input);
    let (mut files, mut bytes, mut skipped) = (0u64, 0u64, 0u64);
    let mut last = Instant::now();
    for entry in archive.entries().context("reading the tar archive")? {
        let mut entry = entry.context("reading a tar entry")?;
        let size = entry.size();
        let name = entry
            .path()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        // unpack_in refuses entries that would land outside `dest` (absolute paths, `..`).
        if entry
            .unpack_in(dest)
            .with_context(|| format!("unpacking {name}"))?
        {
            files += 1;
            bytes += size;
        } else {
            skipped += 1;
            eprintln!("skipped unsafe archive entry {name}");
        }
        if last.elapsed() > Duration::from_millis(500) {
            last = Instant::now();
            eprint!(
                "\r  {files} files, {:.1} MiB   ",
                bytes as f64 / (1024.0 * 1024.0)
            );
        }
    }
    eprintln!(
        "\r  {files} files, {:.1} MiB extracted{}",
        bytes as f64 / (1024.0 * 1024.0),
        if skipped > 0 {
            format!(", {skipped} unsafe entries skipped")
        } else {
            String::new()
        }
    );
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use iuf_data::demo::{generate, DemoConfig};
    use iuf_data::DatasetRoot;
    use std::io::Write;

    /// A tar of `dir`'s content (entries relative to it, like the public archives).
    pub fn tar_of(dir: &Path) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        builder.append_dir_all(".", dir).unwrap();
        builder.into_inner().unwrap()
    }

    pub fn manifest(format: ArchiveFormat, sha256: Option<String>) -> Manifest {
        Manifest {
            name: "test".into(),
            title: "test".into(),
            license: "test".into(),
            archive: super::super::ArchiveInfo {
                url: "http://127.0.0.1:1/none".into(),
                file_name: "data.tar".into(),
                format,
                sha256,
                sha256_source: Some("the test".into()),
            },
            extract_dir: "data".into(),
            classes: vec![],
        }
    }

    #[test]
    fn sha256_of_a_known_input() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("abc");
        fs::write(&p, b"abc").unwrap();
        // FIPS 180-2 test vector.
        assert_eq!(
            sha256_file(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let m = manifest(ArchiveFormat::Tar, None);
        assert!(verify(
            &p,
            Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
            &m
        )
        .is_ok());
        let err = verify(&p, Some(&"0".repeat(64)), &m)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("found ba7816bf") && err.contains("--sha256"),
            "{err}"
        );
        assert!(
            verify(&p, None, &m).is_ok(),
            "unknown checksum: printed, not refused"
        );
    }

    #[test]
    fn tar_gz_and_xz_archives_extract_to_an_indexable_dataset() {
        let src = tempfile::tempdir().unwrap();
        generate(
            src.path(),
            &DemoConfig {
                train_per_class: 3,
                test_per_class: 4,
                size: 32,
                seed: 3,
            },
        )
        .unwrap();
        let tar = tar_of(src.path());
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let gz = gz.finish().unwrap();
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut &tar[..], &mut xz).unwrap();
        for (format, bytes) in [
            (ArchiveFormat::Tar, tar.clone()),
            (ArchiveFormat::TarGz, gz),
            (ArchiveFormat::TarXz, xz),
        ] {
            let work = tempfile::tempdir().unwrap();
            let archive = work.path().join("archive");
            fs::write(&archive, &bytes).unwrap();
            let dest = work.path().join("out");
            extract(&archive, format, &dest).unwrap();
            assert!(!dest.with_extension("partial").exists());
            let root = DatasetRoot::open(&dest).unwrap();
            let indices = root.index_all().unwrap();
            assert_eq!(indices.len(), 3, "{format:?}");
            assert!(
                indices
                    .iter()
                    .all(|c| c.train.len() == 3 && c.test.len() == 4),
                "{format:?}"
            );
        }
    }

    #[test]
    fn corrupt_xz_is_an_error_and_leaves_no_dataset() {
        let src = tempfile::tempdir().unwrap();
        generate(
            src.path(),
            &DemoConfig {
                train_per_class: 2,
                test_per_class: 2,
                size: 32,
                seed: 1,
            },
        )
        .unwrap();
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut &tar_of(src.path())[..], &mut xz).unwrap();
        let cut = xz.len() / 2;
        xz.truncate(cut);
        let work = tempfile::tempdir().unwrap();
        let archive = work.path().join("archive.tar.xz");
        fs::write(&archive, &xz).unwrap();
        let dest = work.path().join("out");
        let err = extract(&archive, ArchiveFormat::TarXz, &dest).unwrap_err();
        assert!(format!("{err:#}").contains("archive.tar.xz"), "{err:#}");
        assert!(
            !dest.exists(),
            "a failed extraction is not renamed into place"
        );
    }
}
