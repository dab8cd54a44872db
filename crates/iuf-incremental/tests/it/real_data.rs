//! The protocol runner end to end on real images (a small copy of ../shared/datasets/mvtec-mini) with
//! the real EfficientNet-Lite0 backbone: results, the feature cache, resuming, bad run folders.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use iuf_backbone::{Backbone, EfficientNetConfig};
use iuf_data::protocol::Protocol;
use iuf_data::DatasetRoot;
use iuf_incremental::config::Strategy;
use iuf_incremental::feature_store::{BackboneId, FeatureStore};
use iuf_incremental::{run_protocol, NoProgress, RunSpec, TrainConfig};

fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

fn copy_some(src: &Path, dst: &Path, n: usize) {
    std::fs::create_dir_all(dst).unwrap();
    let mut files: Vec<PathBuf> = std::fs::read_dir(src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in files.into_iter().take(n) {
        std::fs::copy(&f, dst.join(f.file_name().unwrap())).unwrap();
    }
}

/// bottle and tire with 10 train, 3 good and 3 defective test images each.
fn small_mvtec(root: &Path) {
    let mini = shared().join("datasets/mvtec-mini");
    for (class, defect) in [("bottle", "broken_large"), ("tire", "cut")] {
        let (s, d) = (mini.join(class), root.join(class));
        copy_some(&s.join("train/good"), &d.join("train/good"), 10);
        copy_some(&s.join("test/good"), &d.join("test/good"), 3);
        copy_some(
            &s.join("test").join(defect),
            &d.join("test").join(defect),
            3,
        );
        let mut imgs: Vec<PathBuf> = std::fs::read_dir(d.join("test").join(defect))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        imgs.sort();
        std::fs::create_dir_all(d.join("ground_truth").join(defect)).unwrap();
        for img in imgs {
            let stem = img.file_stem().unwrap().to_str().unwrap().to_string();
            let m = format!("{stem}_mask.png");
            std::fs::copy(
                s.join("ground_truth").join(defect).join(&m),
                d.join("ground_truth").join(defect).join(&m),
            )
            .unwrap();
        }
    }
}

/// A temporary folder with [`small_mvtec`] in `data` and a [`store`] caching in `cache`: the
/// folder, the dataset and the store.
fn small_mvtec_and_store() -> (tempfile::TempDir, DatasetRoot, FeatureStore) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    small_mvtec(&root);
    let dataset = DatasetRoot::open(&root).unwrap();
    let store = store(&tmp.path().join("cache"));
    (tmp, dataset, store)
}

fn store(cache: &Path) -> FeatureStore {
    let pth = shared().join("weights/efficientnet-lite0/efficientnet-lite0-57934424.pth");
    let tensors = iuf_backbone::pth::read_pth(&std::fs::read(&pth).unwrap())
        .unwrap()
        .into_iter()
        .collect();
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let backbone = Backbone::new(&EfficientNetConfig::lite0(), vb).unwrap();
    let id = BackboneId {
        name: "efficientnet-lite0".into(),
        weights_digest: "shared-lite0".into(),
    };
    FeatureStore::new(Some(cache.to_path_buf()), backbone, id, 224, Device::Cpu).unwrap()
}

#[test]
fn real_data_protocol_runs_writes_results_and_resumes() {
    let (tmp, dataset, store) = small_mvtec_and_store();
    let protocol = Protocol::parse("bottle | tire", dataset.classes()).unwrap();
    let mut config = TrainConfig::tiny(store.channels(), 2);
    config.base.epochs = 2;
    config.incremental.epochs = 1;
    let spec = RunSpec {
        method: Strategy::Iuf,
        protocol,
        config,
        dir: tmp.path().join("run"),
    };
    let results = run_protocol(&spec, &dataset, &store, &NoProgress).unwrap();

    assert!(results.complete);
    assert_eq!(
        results.steps,
        vec![vec!["bottle".to_string()], vec!["tire".to_string()]]
    );
    let image = &results.metrics["image_auroc"];
    assert!(
        image[0][0].is_some() && image[0][1].is_none(),
        "tire is not learned after step 0: {image:?}"
    );
    assert!(image[1].iter().all(Option::is_some));
    for v in [
        results.acc.image,
        results.acc.pixel,
        results.fm.image,
        results.fm.pixel,
    ] {
        let v = v.expect("ACC and FM exist after two steps");
        assert!((-1.0..=1.0).contains(&v));
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(spec.dir.join("results.json")).unwrap()).unwrap();
    for key in [
        "method",
        "protocol",
        "config",
        "steps",
        "metrics",
        "acc",
        "fm",
        "train_seconds",
        "model_bytes",
    ] {
        assert!(json.get(key).is_some(), "results.json lacks `{key}`");
    }
    assert_eq!(json["method"], "iuf");
    assert!(std::fs::read_to_string(spec.dir.join("report.md"))
        .unwrap()
        .contains("ACC"));

    // The model file holds the same tensors after each step: its size does not grow with objects.
    let names = |s: usize| {
        let l = iuf_model::load_model(
            iuf_incremental::runner::step_model_path(&spec.dir, s),
            &Device::Cpu,
        )
        .unwrap();
        let mut v: Vec<(String, Vec<usize>)> = l
            .state
            .iter()
            .map(|(n, t)| (n.clone(), t.dims().to_vec()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(0), names(1));
    assert!(names(1)
        .iter()
        .any(|(n, d)| n.starts_with("state.gram.") && d == &[32, 32]));

    // Interrupted during step 1: its files are gone. The rerun keeps step 0 and redoes step 1.
    let step0 = std::fs::read(iuf_incremental::runner::step_model_path(&spec.dir, 0)).unwrap();
    std::fs::remove_file(iuf_incremental::runner::step_model_path(&spec.dir, 1)).unwrap();
    let again = run_protocol(&spec, &dataset, &store, &NoProgress).unwrap();
    assert!(again.complete);
    assert_eq!(
        std::fs::read(iuf_incremental::runner::step_model_path(&spec.dir, 0)).unwrap(),
        step0
    );
    assert_eq!(
        again.metrics["image_auroc"][0], results.metrics["image_auroc"][0],
        "step 0 was not redone"
    );
    assert_eq!(
        again.metrics["image_auroc"][1], results.metrics["image_auroc"][1],
        "seeded: the redone step is identical"
    );

    // The same folder with another config is refused, not overwritten.
    let mut other = spec.clone();
    other.config.base.epochs = 3;
    let err = run_protocol(&other, &dataset, &store, &NoProgress)
        .unwrap_err()
        .to_string();
    assert!(err.contains("different run"), "{err}");

    // The class-mean reference on the same protocol: nothing trained, nothing forgotten.
    let mut cm = spec.clone();
    cm.method = Strategy::ClassMean;
    cm.dir = tmp.path().join("class-mean");
    let r = run_protocol(&cm, &dataset, &store, &NoProgress).unwrap();
    assert!(r.complete);
    assert_eq!(r.fm.image, Some(0.0));
    assert_eq!(r.fm.pixel, Some(0.0));
    let bottle = r.metrics["image_auroc"][1][0].unwrap();
    assert!(
        bottle >= 0.9,
        "broken bottles are far from the mean bottle: {bottle}"
    );
    assert!(
        r.model_bytes[1] > r.model_bytes[0],
        "its memory grows with every object: {:?}",
        r.model_bytes
    );
    // Its step files are models like any other: the last one knows every object and scores an
    // object's test images exactly as the run evaluated them (the oracle object given).
    let l = iuf_incremental::Learner::load(
        &iuf_incremental::runner::step_model_path(&cm.dir, 1),
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(l.strategy(), Strategy::ClassMean);
    assert_eq!(l.features(), iuf_incremental::FeatureKind::Align);
    assert_eq!(l.learned_classes(), vec!["bottle", "tire"]);
    let set = iuf_incremental::runner::eval_set(&dataset, "bottle", &l).unwrap();
    let (m, _) = iuf_incremental::eval::evaluate(&l, &set, &store, &NoProgress).unwrap();
    assert_eq!(Some(m.image_auroc), r.metrics["image_auroc"][1][0]);
    assert_eq!(m.pixel_auroc, r.metrics["pixel_auroc"][1][0]);
}

/// A tensor's values, flattened.
fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn real_data_feature_cache_detects_corrupt_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let store = store(&cache);
    let img = [shared().join("datasets/mvtec-mini/bottle/test/broken_large/000.png")];
    let features = || store.features(&img, &NoProgress).unwrap();
    let with_memory = || store.features_with_memory(&img, &NoProgress).unwrap();
    let (first, s1) = features();
    assert_eq!((s1.hits, s1.computed), (0, 1));
    let (second, s2) = features();
    assert_eq!((s2.hits, s2.computed), (1, 0));
    assert_eq!(values(&first), values(&second));
    // Corrupt every entry: it is rejected and recomputed, with the same values.
    for e in walk(&cache) {
        let mut b = std::fs::read(&e).unwrap();
        let n = b.len();
        b.truncate(n / 2);
        std::fs::write(&e, b).unwrap();
    }
    let (third, s3) = features();
    assert_eq!((s3.hits, s3.computed, s3.rejected), (0, 1, 1));
    assert_eq!(values(&first), values(&third));
    assert_eq!(first.dims(), &[1, 192, 14, 14]);

    // One flipped mantissa bit in each tensor's data keeps every value finite: the entry's
    // checksums still catch it, and the entry is recomputed and rewritten.
    let (_, mem_first, _) = with_memory();
    for e in walk(&cache)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
    {
        let mut b = std::fs::read(&e).unwrap();
        let header = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
        let data = 8 + header;
        b[data + 40] ^= 1; // the first tensor's 11th float, lowest mantissa bit
        let last = b.len() - 4;
        b[last] ^= 1; // the last tensor's last float, lowest mantissa bit
        std::fs::write(&e, b).unwrap();
    }
    let (fourth, mem, s4) = with_memory();
    assert_eq!((s4.hits, s4.computed, s4.rejected), (0, 1, 1));
    assert_eq!(values(&first), values(&fourth));
    assert_eq!(values(&mem_first), values(&mem));
    assert_eq!(mem.dims(), &[1, 152, 28, 28]);
    // The rewritten entry reads back clean.
    let (_, _, s5) = with_memory();
    assert_eq!((s5.hits, s5.rejected), (1, 0));
}

/// Guarantee (issue 22): the tiles' features are the backbone's memory features of each tile as
/// `Tiling::cut` makes it, cached under a key that includes the tiling (another tiling never
/// reads them), and a damaged entry is recomputed.
#[test]
fn real_data_tile_features_are_each_tiles_memory_features_and_cached_per_tiling() {
    use iuf_data::image::tiles::Tiling;
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let store = store(&cache);
    let path = shared().join("datasets/mvtec-mini/bottle/test/broken_large/000.png");
    let img = [path.clone()];
    let tiling = Tiling {
        input: 448,
        tile: 256,
        overlap: 32,
    };
    let (tiles, s1) = store.tile_features(&img, &tiling, &NoProgress).unwrap();
    assert_eq!(s1.computed, 1);
    assert_eq!(tiles.dims(), &[1, 4, 152, 28, 28]);
    // Tile 3 (bottom right) is the backbone's memory features of that crop, resized to 224.
    let rgb = iuf_data::image::load_rgb(&path).unwrap();
    let cut = tiling.cut(&rgb, 224);
    let batch = iuf_data::images_to_tensor(&cut[3..], &Device::Cpu).unwrap();
    let (_, direct) = store.backbone().extract(&batch).unwrap();
    assert_eq!(
        values(&tiles.get(0).unwrap().get(3).unwrap()),
        values(&direct.get(0).unwrap())
    );
    let (again, s2) = store.tile_features(&img, &tiling, &NoProgress).unwrap();
    assert_eq!((s2.hits, s2.computed), (1, 0));
    assert_eq!(values(&tiles), values(&again));
    let other = Tiling {
        overlap: 0,
        ..tiling
    };
    let (_, s3) = store.tile_features(&img, &other, &NoProgress).unwrap();
    assert_eq!(
        (s3.hits, s3.computed),
        (0, 1),
        "another tiling reused an entry"
    );
    for e in walk(&cache) {
        let mut b = std::fs::read(&e).unwrap();
        let last = b.len() - 4;
        b[last] ^= 1;
        std::fs::write(&e, b).unwrap();
    }
    let (fixed, s4) = store.tile_features(&img, &tiling, &NoProgress).unwrap();
    assert_eq!((s4.computed, s4.rejected), (1, 1));
    assert_eq!(values(&tiles), values(&fixed));
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Guarantee: a run folder records its data; resuming it on other data (another folder, or the
/// same folder with an image removed) is refused, and the same data resumes.
#[test]
fn real_data_resume_on_other_data_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    small_mvtec(&a);
    small_mvtec(&b);
    std::fs::remove_file(b.join("bottle/train/good/009.png")).unwrap();
    let store = store(&tmp.path().join("cache"));
    let run = |root: &Path| {
        let dataset = DatasetRoot::open(root).unwrap();
        let spec = RunSpec {
            method: Strategy::ClassMean,
            protocol: Protocol::parse("bottle | tire", dataset.classes()).unwrap(),
            config: TrainConfig::tiny(store.channels(), 2),
            dir: tmp.path().join("run"),
        };
        run_protocol(&spec, &dataset, &store, &NoProgress)
    };
    run(&a).unwrap();
    let err = run(&b).expect_err("other data must be refused").to_string();
    assert!(err.contains("other data"), "{err}");
    let json = std::fs::read_to_string(tmp.path().join("run/run.json")).unwrap();
    assert!(json.contains("files_sha256"), "{json}");
    run(&a).unwrap();
}

/// Guarantee: a run stopped between steps and resumed gives bit-identical models to the run that
/// was never stopped, for IUF (Gram matrices), EWC (importance), fine-tuning and the memory. The
/// stop is simulated by copying only the first step's files (what a kill after step 0 leaves).
#[test]
fn real_data_resumed_runs_are_bit_identical_to_uninterrupted_ones() {
    let (tmp, dataset, store) = small_mvtec_and_store();
    let tensors = |p: &Path| -> Vec<(String, Vec<u8>)> {
        let bytes = std::fs::read(p).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut v: Vec<(String, Vec<u8>)> = st
            .tensors()
            .into_iter()
            .map(|(n, t)| (n, t.data().to_vec()))
            .collect();
        v.sort();
        v
    };
    for method in [
        Strategy::Iuf,
        Strategy::Ewc,
        Strategy::Finetune,
        Strategy::Memory,
    ] {
        let mut config = TrainConfig::tiny(store.channels(), 2);
        config.base.epochs = 1;
        config.incremental.epochs = 1;
        config.finetune_epochs = 1;
        config.memory.patches = 128;
        config.memory.candidates = 1024;
        let spec = |dir: &str| RunSpec {
            method,
            protocol: Protocol::parse("bottle | tire", dataset.classes()).unwrap(),
            config: config.clone(),
            dir: tmp.path().join(format!("{method}-{dir}")),
        };
        let whole = spec("whole");
        run_protocol(&whole, &dataset, &store, &NoProgress).unwrap();
        let resumed = spec("resumed");
        std::fs::create_dir_all(&resumed.dir).unwrap();
        for f in ["run.json", "step-0.json", "step-0.safetensors"] {
            std::fs::copy(whole.dir.join(f), resumed.dir.join(f)).unwrap();
        }
        run_protocol(&resumed, &dataset, &store, &NoProgress).unwrap();
        let (a, b) = (
            tensors(&whole.dir.join("step-1.safetensors")),
            tensors(&resumed.dir.join("step-1.safetensors")),
        );
        assert_eq!(a.len(), b.len(), "{method}");
        for ((na, da), (nb, db)) in a.iter().zip(&b) {
            assert_eq!(na, nb, "{method}");
            assert!(da == db, "{method}: tensor {na} differs after a resume");
        }
    }
}
