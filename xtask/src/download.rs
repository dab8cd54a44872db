//! `cargo xtask download mvtec|mvtec-ad-2|visa --dest DIR`: fetches a public dataset archive named in
//! `datasets/<name>.json` (resumable, with progress), verifies its sha256, extracts it and indexes
//! the result with iuf-data so that a broken download is reported now, not at training time.
//!
//! VisA split preparation: iuf-data reads VisA's official layout and `split_csv/1cls.csv` directly,
//! so nothing is copied or converted. The command validates every class through that split and
//! writes the resulting per-class train/test lists, paths relative to the dataset root, to
//! `<root>/iuf_split_1cls.json` (a readable record of exactly which files each split holds).
//!
//! MVTec AD 2 is read as extracted (iuf-data's `Layout::MvtecAd2`); its unlabelled private test
//! folders stay on disk but are never indexed.
mod archive;
mod http;
mod prepare;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

pub use archive::ArchiveFormat;

const MVTEC_AD_MANIFEST: &str = include_str!("../../datasets/mvtec_ad.json");
const VISA_MANIFEST: &str = include_str!("../../datasets/visa.json");
const MVTEC_AD_2_MANIFEST: &str = include_str!("../../datasets/mvtec_ad_2.json");

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Dataset {
    /// MVTec AD (15 classes, ~4.9 GB .tar.xz).
    #[value(alias = "mvtec-ad", alias = "mvtec_ad")]
    Mvtec,
    /// MVTec AD 2 (8 classes at up to 5 MP, ~32.7 GB .tar.gz).
    #[value(
        name = "mvtec-ad-2",
        alias = "mvtec-ad2",
        alias = "mvtec_ad_2",
        alias = "mvtec_ad2"
    )]
    MvtecAd2,
    /// VisA (12 classes, ~1.8 GB .tar).
    Visa,
}

#[derive(clap::Args)]
pub struct Args {
    /// Which dataset to fetch.
    #[arg(value_enum)]
    pub dataset: Dataset,
    /// Folder that receives the archive and the extracted dataset (created if missing).
    #[arg(long, visible_alias = "out")]
    pub dest: PathBuf,
    /// Download from this URL instead of the manifest's (a mirror or a local copy served over HTTP).
    #[arg(long)]
    pub url: Option<String>,
    /// Expect this sha256 instead of the manifest's (after checking a re-published archive yourself).
    #[arg(long)]
    pub sha256: Option<String>,
}

/// `datasets/<name>.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub title: String,
    pub license: String,
    pub archive: ArchiveInfo,
    /// Folder under `--dest` that receives the archive's content.
    pub extract_dir: String,
    pub classes: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ArchiveInfo {
    pub url: String,
    pub file_name: String,
    pub format: ArchiveFormat,
    /// Lower-case hex; `None` when no checksum is known (the computed one is printed instead).
    pub sha256: Option<String>,
    #[serde(default)]
    pub sha256_source: Option<String>,
}

impl Manifest {
    pub fn of(dataset: Dataset) -> Result<Self> {
        let (file, text) = match dataset {
            Dataset::Mvtec => ("datasets/mvtec_ad.json", MVTEC_AD_MANIFEST),
            Dataset::MvtecAd2 => ("datasets/mvtec_ad_2.json", MVTEC_AD_2_MANIFEST),
            Dataset::Visa => ("datasets/visa.json", VISA_MANIFEST),
        };
        let manifest: Manifest =
            serde_json::from_str(text).with_context(|| format!("parsing {file}"))?;
        if let Some(sha) = &manifest.archive.sha256 {
            check_sha256_hex(sha).with_context(|| format!("{file}: archive.sha256"))?;
        }
        Ok(manifest)
    }
}

fn check_sha256_hex(s: &str) -> Result<()> {
    if s.len() != 64
        || !s
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        bail!("expected 64 lower-case hex digits; found `{s}`");
    }
    Ok(())
}

pub fn run(args: Args) -> Result<()> {
    let mut manifest = Manifest::of(args.dataset)?;
    if let Some(url) = args.url {
        manifest.archive.url = url;
    }
    if let Some(sha) = args.sha256 {
        let sha = sha.to_ascii_lowercase();
        check_sha256_hex(&sha).context("--sha256")?;
        manifest.archive.sha256 = Some(sha);
    }
    eprintln!(
        "{} ({}); licence: {}",
        manifest.title, manifest.name, manifest.license
    );
    let root = download_and_install(&manifest, &args.dest)?;
    eprintln!("ready: {}", root.display());
    Ok(())
}

/// Fetches (or finds) the archive, verifies it, extracts it and validates the dataset; returns the
/// dataset root.
pub fn download_and_install(manifest: &Manifest, dest: &Path) -> Result<PathBuf> {
    fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    let archive_path = dest.join(&manifest.archive.file_name);
    let expected = manifest.archive.sha256.as_deref();
    if archive_path.is_file() {
        eprintln!("found {}; verifying", archive_path.display());
        archive::verify(&archive_path, expected, manifest)?;
    } else {
        let part = dest.join(format!("{}.part", manifest.archive.file_name));
        download_with_retries(&manifest.archive.url, &part)?;
        if let Err(e) = archive::verify(&part, expected, manifest) {
            let bad = dest.join(format!("{}.bad", manifest.archive.file_name));
            fs::rename(&part, &bad).with_context(|| format!("moving aside {}", part.display()))?;
            return Err(e.context(format!("the download was kept as {}", bad.display())));
        }
        fs::rename(&part, &archive_path).with_context(|| {
            format!("renaming {} to {}", part.display(), archive_path.display())
        })?;
    }
    let extracted = dest.join(&manifest.extract_dir);
    if extracted.is_dir() {
        eprintln!(
            "{} exists: not extracting again (delete it to re-extract)",
            extracted.display()
        );
    } else {
        archive::extract(&archive_path, manifest.archive.format, &extracted)?;
    }
    let root = prepare::prepare(&extracted, &manifest.classes)?;
    eprintln!(
        "the archive {} may now be deleted to save space",
        archive_path.display()
    );
    Ok(root)
}

fn download_with_retries(url: &str, part: &Path) -> Result<()> {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(30))
        .timeout_read(Duration::from_secs(120))
        .build();
    const ATTEMPTS: u32 = 5;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut progress = http::Progress::new(&format!("downloading {url}"));
        match http::fetch_resumable(&agent, url, part, &mut |done, total| progress.update(done, total)) {
            Ok(fetched) => {
                progress.finish(fetched.size);
                return Ok(());
            }
            Err(e) if attempt < ATTEMPTS => {
                progress.finish_line();
                let wait = 2 * attempt as u64;
                eprintln!("attempt {attempt} failed: {e:#}; resuming in {wait} s");
                std::thread::sleep(Duration::from_secs(wait));
            }
            Err(e) => {
                return Err(e.context(format!(
                    "downloading {url} failed {ATTEMPTS} times; run the command again to resume from {}",
                    part.display()
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_parse_and_match_the_known_class_lists() {
        let mvtec = Manifest::of(Dataset::Mvtec).unwrap();
        assert_eq!(mvtec.classes, iuf_data::classes::MVTEC_AD);
        assert_eq!(mvtec.archive.format, ArchiveFormat::TarXz);
        assert!(
            mvtec.archive.url.starts_with("https://")
                && mvtec.archive.url.ends_with(&mvtec.archive.file_name)
        );
        let ad2 = Manifest::of(Dataset::MvtecAd2).unwrap();
        assert_eq!(
            ad2.classes,
            [
                "can",
                "fabric",
                "fruit_jelly",
                "rice",
                "sheet_metal",
                "vial",
                "wallplugs",
                "walnuts"
            ]
        );
        assert_eq!(ad2.archive.format, ArchiveFormat::TarGz);
        assert!(
            ad2.archive.url.starts_with("https://")
                && ad2.archive.url.ends_with(&ad2.archive.file_name)
        );
        let visa = Manifest::of(Dataset::Visa).unwrap();
        assert_eq!(visa.classes, iuf_data::classes::VISA);
        assert_eq!(visa.archive.format, ArchiveFormat::Tar);
        assert!(
            visa.archive.url.starts_with("https://")
                && visa.archive.url.ends_with(&visa.archive.file_name)
        );
    }

    #[test]
    fn dataset_names_and_out_alias_parse() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: Args,
        }
        for name in ["mvtec-ad-2", "mvtec_ad_2", "mvtec-ad2"] {
            let cli = Cli::try_parse_from(["download", name, "--out", "d"]).unwrap();
            assert_eq!(cli.args.dataset, Dataset::MvtecAd2);
            assert_eq!(cli.args.dest, PathBuf::from("d"));
        }
        let cli = Cli::try_parse_from(["download", "mvtec", "--dest", "d"]).unwrap();
        assert_eq!(cli.args.dataset, Dataset::Mvtec);
    }

    #[test]
    fn sha256_strings_are_checked() {
        assert!(check_sha256_hex(&"a".repeat(64)).is_ok());
        assert!(check_sha256_hex(&"A".repeat(64)).is_err());
        assert!(check_sha256_hex("abc").is_err());
        assert!(check_sha256_hex(&"g".repeat(64)).is_err());
    }

    #[test]
    fn end_to_end_download_verify_extract_prepare_over_local_http() {
        let tree = tempfile::tempdir().unwrap();
        let classes = prepare::tests::visa_tree(tree.path());
        let tar = archive::tests::tar_of(tree.path());
        let dest = tempfile::tempdir().unwrap();
        std::fs::write(dest.path().join("data.tar.bin"), &tar).unwrap();
        let sha = archive::sha256_file(&dest.path().join("data.tar.bin")).unwrap();
        // The first connection breaks after 10 kB; the retry resumes with a Range request.
        let (url, seen, server) = http::tests::serve(
            tar.clone(),
            vec![
                http::tests::Reply::DropAfter(10_000),
                http::tests::Reply::Ranges,
            ],
        );
        let mut m = archive::tests::manifest(ArchiveFormat::Tar, Some(sha));
        m.archive.url = url;
        m.classes = classes.clone();
        let root = download_and_install(&m, dest.path()).unwrap();
        server.join().unwrap();
        assert_eq!(seen.lock().unwrap()[1].as_deref(), Some("bytes=10000-"));
        assert_eq!(root, dest.path().join("data"));
        assert_eq!(std::fs::read(dest.path().join("data.tar")).unwrap(), tar);
        assert!(!dest.path().join("data.tar.part").exists());
        assert!(root.join(prepare::VISA_SPLIT_LISTS).is_file());
        // Run again: the archive is found and verified, the extraction reused.
        assert_eq!(download_and_install(&m, dest.path()).unwrap(), root);
    }

    #[test]
    fn mvtec_ad2_tar_gz_downloads_extracts_and_indexes_over_local_http() {
        use std::io::Write;
        let tree = tempfile::tempdir().unwrap();
        // Wrapped in a top folder; whether the real archive has one does not matter (find_root).
        let classes = prepare::tests::mvtec_ad2_tree(&tree.path().join("mvtec_ad_2"));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&archive::tests::tar_of(tree.path())).unwrap();
        let gz = gz.finish().unwrap();
        let dest = tempfile::tempdir().unwrap();
        std::fs::write(dest.path().join("probe"), &gz).unwrap();
        let sha = archive::sha256_file(&dest.path().join("probe")).unwrap();
        std::fs::remove_file(dest.path().join("probe")).unwrap();
        let (url, _, server) = http::tests::serve(gz.clone(), vec![http::tests::Reply::Ranges]);
        let mut m = Manifest::of(Dataset::MvtecAd2).unwrap();
        m.archive.url = url;
        m.archive.sha256 = Some(sha);
        m.classes = classes.clone();
        let root = download_and_install(&m, dest.path()).unwrap();
        server.join().unwrap();
        assert_eq!(root, dest.path().join("mvtec_ad_2/mvtec_ad_2"));
        assert_eq!(
            std::fs::read(dest.path().join("mvtec_ad_2.tar.gz")).unwrap(),
            gz
        );
        let opened = iuf_data::DatasetRoot::open(&root).unwrap();
        assert_eq!(opened.layout(), iuf_data::Layout::MvtecAd2);
        assert_eq!(opened.classes(), classes);
        assert!(opened
            .index_all()
            .unwrap()
            .iter()
            .all(|c| c.validation.len() == 1 && c.num_test_anomalous() > 0));
    }

    #[test]
    fn wrong_checksum_keeps_the_download_aside_and_fails() {
        let data = http::tests::pseudo_random(20_000);
        let (url, _, server) = http::tests::serve(data, vec![http::tests::Reply::Ranges]);
        let dest = tempfile::tempdir().unwrap();
        let mut m = archive::tests::manifest(ArchiveFormat::Tar, Some("0".repeat(64)));
        m.archive.url = url;
        let err = format!("{:#}", download_and_install(&m, dest.path()).unwrap_err());
        server.join().unwrap();
        assert!(
            err.contains("expected sha256 0000") && err.contains("data.tar.bad"),
            "{err}"
        );
        assert!(dest.path().join("data.tar.bad").is_file());
        assert!(!dest.path().join("data.tar").exists());
    }
}
