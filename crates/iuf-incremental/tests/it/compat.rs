//! Model files written by earlier versions load and score as they did, and keep learning as they
//! did (issue 21: the code may be reshaped, what the product computes may not change).
//!
//! `tests/fixtures/compat/` holds small models of four methods, each learned on synthetic features
//! by the code of 2026-12-06 (before the scorers became owned parts), and `expected.json`: what that
//! code answered for fixed test images, straight after loading and after learning one more object
//! from the loaded file. On a CPU of the kind that wrote the fixtures (same matrix-product kernels:
//! AVX-512 or AVX2) every value must match bit for bit; on another kind the products round
//! differently, and the values must agree to a relative 1e-3 (scoring) or 1e-2 (after training).
//!
//! Regenerate (only when a change of results is intended, and say so in the commit):
//! `cargo test -p iuf-incremental --test it compat::write_fixtures -- --ignored`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use iuf_incremental::config::Strategy;
use iuf_incremental::{Learner, NoProgress, Predictions, StepData};
use serde::{Deserialize, Serialize};

use crate::learner::{backbone, classes, features, memory_features, small_memory, tiny};

/// The methods with a fixture, and their file names.
const METHODS: [(Strategy, &str); 4] = [
    (Strategy::Memory, "memory"),
    (Strategy::IufMemory, "iuf-memory"),
    (Strategy::Iuf, "iuf"),
    (Strategy::Ewc, "ewc"),
];

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/compat")
}

/// Which matrix-product kernels candle's gemm picks on this CPU (they round differently).
fn cpu_kind() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            return "avx512";
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return "avx2";
        }
    }
    "other"
}

/// What a model answered for the test images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Answer {
    /// Image scores, as f32 bits.
    scores: Vec<u32>,
    /// Object probabilities `[N, K]` row by row, as f32 bits.
    object_probs: Vec<u32>,
    /// FNV-1a of the maps' f32 bits.
    map_digest: String,
    /// Sum of the maps' pixels (for the comparison across CPU kinds).
    map_sum: f64,
    /// Per learned object, its threshold at the default quantile, as f32 bits.
    thresholds: BTreeMap<String, u32>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Expected {
    /// `cpu_kind()` of the machine that wrote the fixtures.
    cpu: String,
    /// Per method file name: the answer of the loaded file, then after learning object `b`.
    loaded: BTreeMap<String, Answer>,
    after_step: BTreeMap<String, Answer>,
}

/// Test images: four of object `a`, two of `b`.
fn test_images() -> (Tensor, Tensor) {
    let f = Tensor::cat(&[features(4, 0, 22), features(2, 1, 23)], 0).unwrap();
    let m = Tensor::cat(&[memory_features(4, 0, 22), memory_features(2, 1, 23)], 0).unwrap();
    (f, m)
}

fn step(class: u32, seed: u64, n: usize, memory: bool) -> (Tensor, Option<Tensor>, Vec<u32>) {
    (
        features(n, class, seed),
        memory.then(|| memory_features(n, class, seed)),
        vec![class; n],
    )
}

/// Learns object `name` (class id `class`) as step `index`, with three held-out images.
fn learn(l: &mut Learner, index: usize, name: &str, class: u32) {
    let memory = l.features().memory();
    let (f, m, ids) = step(class, 2 + class as u64, 8, memory);
    let (hf, hm, hids) = step(class, 12 + class as u64, 3, memory);
    l.learn_step(
        index,
        &[name.to_string()],
        &StepData {
            features: &f,
            memory: m.as_ref(),
            tiles: None,
            class_ids: &ids,
        },
        Some(&StepData {
            features: &hf,
            memory: hm.as_ref(),
            tiles: None,
            class_ids: &hids,
        }),
        &NoProgress,
    )
    .unwrap();
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

fn answer(l: &Learner) -> Answer {
    let (f, m) = test_images();
    let p: Predictions = l
        .predict_images(&f, l.features().memory().then_some(&m), &NoProgress)
        .unwrap();
    let maps: Vec<f32> = p.maps.flatten_all().unwrap().to_vec1().unwrap();
    let digest = maps.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, x| {
        x.to_bits().to_le_bytes().iter().fold(h, |h, &b| {
            (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
        })
    });
    let q = l.config().calibration.quantile;
    Answer {
        scores: p.scores.iter().map(|s| s.to_bits()).collect(),
        object_probs: bits(&p.object_probs),
        map_digest: format!("{digest:016x}"),
        map_sum: maps.iter().map(|&x| x as f64).sum(),
        thresholds: l
            .learned_classes()
            .into_iter()
            .filter_map(|c| l.threshold(&c, q).map(|t| (c, t.to_bits())))
            .collect(),
    }
}

fn config() -> iuf_incremental::TrainConfig {
    let mut cfg = tiny();
    small_memory(&mut cfg);
    // The penalty must matter in two epochs of a tiny network.
    cfg.penalty.ewc_lambda = 1e6;
    cfg
}

/// Loads each fixture, answers, learns `b` from the loaded file and answers again.
fn answers_of_fixtures() -> (BTreeMap<String, Answer>, BTreeMap<String, Answer>) {
    let (mut loaded, mut after) = (BTreeMap::new(), BTreeMap::new());
    for (_, name) in METHODS {
        let path = dir().join(format!("{name}.safetensors"));
        let mut l = Learner::load(&path, &Device::Cpu)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        loaded.insert(name.to_string(), answer(&l));
        learn(&mut l, 1, "b", 1);
        after.insert(name.to_string(), answer(&l));
    }
    (loaded, after)
}

#[test]
#[ignore = "writes the fixtures: run by hand only when a change of results is intended"]
fn write_fixtures() {
    std::fs::create_dir_all(dir()).unwrap();
    for (s, name) in METHODS {
        let mut l = Learner::new(&config(), s, &backbone(), classes(), &Device::Cpu).unwrap();
        learn(&mut l, 0, "a", 0);
        l.save(&dir().join(format!("{name}.safetensors"))).unwrap();
    }
    let (loaded, after_step) = answers_of_fixtures();
    let expected = Expected {
        cpu: cpu_kind().to_string(),
        loaded,
        after_step,
    };
    std::fs::write(
        dir().join("expected.json"),
        serde_json::to_string_pretty(&expected).unwrap() + "\n",
    )
    .unwrap();
}

fn close(what: &str, got: f32, want: f32, rel: f32) {
    assert!(
        (got - want).abs() <= rel * want.abs().max(1e-3),
        "{what}: {got} against {want} (relative tolerance {rel})"
    );
}

fn compare(method: &str, when: &str, got: &Answer, want: &Answer, exact: bool, rel: f32) {
    let what = format!("{method} ({when})");
    if exact {
        assert_eq!(
            got, want,
            "{what}: not bit for bit what the fixture's code answered"
        );
        return;
    }
    let f = |v: &[u32]| v.iter().map(|&b| f32::from_bits(b)).collect::<Vec<_>>();
    for (i, (g, w)) in f(&got.scores).iter().zip(f(&want.scores)).enumerate() {
        close(&format!("{what}: score {i}"), *g, w, rel);
    }
    for (i, (g, w)) in f(&got.object_probs)
        .iter()
        .zip(f(&want.object_probs))
        .enumerate()
    {
        assert!(
            (g - w).abs() < 1e-3,
            "{what}: object probability {i}: {g} vs {w}"
        );
    }
    close(
        &format!("{what}: map sum"),
        got.map_sum as f32,
        want.map_sum as f32,
        rel,
    );
    assert_eq!(
        got.thresholds.keys().collect::<Vec<_>>(),
        want.thresholds.keys().collect::<Vec<_>>()
    );
    for (c, t) in &got.thresholds {
        close(
            &format!("{what}: threshold of {c}"),
            f32::from_bits(*t),
            f32::from_bits(want.thresholds[c]),
            rel,
        );
    }
}

#[test]
fn model_files_of_earlier_versions_score_and_learn_as_they_did() {
    let text = std::fs::read_to_string(dir().join("expected.json")).unwrap();
    let want: Expected = serde_json::from_str(&text).unwrap();
    let exact = want.cpu == cpu_kind();
    if !exact {
        eprintln!(
            "fixtures written on a {} CPU, this one is {}: comparing within tolerances",
            want.cpu,
            cpu_kind()
        );
    }
    let (loaded, after) = answers_of_fixtures();
    for (_, name) in METHODS {
        compare(
            name,
            "loaded",
            &loaded[name],
            &want.loaded[name],
            exact,
            1e-3,
        );
        compare(
            name,
            "after learning b",
            &after[name],
            &want.after_step[name],
            exact,
            1e-2,
        );
    }
}
