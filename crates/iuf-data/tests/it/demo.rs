//! The procedural demo dataset: determinism, clean indexing, masks, and safe overwriting.
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use iuf_data::demo::{existing, generate, DemoConfig, CLASSES, DEFECT_TYPES};
use iuf_data::image::load_mask;
use iuf_data::{DatasetRoot, Error};

/// Every file under `dir`, relative path -> bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                let rel = path
                    .strip_prefix(base)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

#[test]
fn demo_is_deterministic_per_seed() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let cfg = DemoConfig::tiny();
    generate(a.path(), &cfg).unwrap();
    generate(b.path(), &cfg).unwrap();
    generate(
        c.path(),
        &DemoConfig {
            seed: 1,
            ..cfg.clone()
        },
    )
    .unwrap();
    let (sa, sb, sc) = (snapshot(a.path()), snapshot(b.path()), snapshot(c.path()));
    // 3 classes x (8 train + 8 test + 6 masks) + the marker file.
    assert_eq!(sa.len(), 3 * (8 + 8 + 6) + 1);
    assert!(sa == sb, "same seed, identical bytes");
    assert_eq!(sa.keys().collect::<Vec<_>>(), sc.keys().collect::<Vec<_>>());
    let differing = sa.iter().filter(|(k, v)| sc[*k] != **v).count();
    assert!(
        differing >= 3 * 22,
        "another seed changes every image: {differing}"
    );
}

#[test]
fn demo_default_config_indexes_cleanly_with_exact_masks() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = DemoConfig::default();
    let classes = generate(dir.path(), &cfg).unwrap();
    assert_eq!(classes, CLASSES);
    let root = DatasetRoot::open(dir.path()).unwrap();
    assert_eq!(root.classes(), CLASSES);
    for index in root.index_all().unwrap() {
        assert_eq!(index.train.len(), 60);
        assert_eq!(
            (index.num_test_normal(), index.num_test_anomalous()),
            (10, 20)
        );
        assert_eq!(index.defect_types(), DEFECT_TYPES);
        for s in index.test.iter().filter(|s| s.is_anomalous) {
            let m = load_mask(s.mask.as_ref().unwrap(), 256).unwrap();
            let positive = m.iter().filter(|&&b| b).count();
            assert!(
                (24..256 * 256 / 8).contains(&positive),
                "{}: {positive}",
                s.path.display()
            );
        }
    }
    assert_eq!(existing(dir.path(), &cfg), Some(classes));
    assert_eq!(existing(dir.path(), &DemoConfig { seed: 5, ..cfg }), None);
}

#[test]
fn demo_overwrites_only_its_own_output() {
    let dir = tempfile::tempdir().unwrap();
    let big = DemoConfig {
        train_per_class: 10,
        ..DemoConfig::tiny()
    };
    generate(dir.path(), &big).unwrap();
    // A smaller rerun leaves no stale files behind.
    generate(dir.path(), &DemoConfig::tiny()).unwrap();
    let root = DatasetRoot::open(dir.path()).unwrap();
    assert_eq!(root.index_class("fabric").unwrap().train.len(), 8);

    let foreign = tempfile::tempdir().unwrap();
    fs::create_dir_all(foreign.path().join("mesh/train/good")).unwrap();
    let err = generate(foreign.path(), &DemoConfig::tiny()).unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err}");
    assert!(
        foreign.path().join("mesh/train/good").is_dir(),
        "left untouched"
    );
}
