//! Good images added to a learned object (`Learner::add_good`), and thresholds set after
//! learning: the object's statistics move, no other object's do (bit for bit), a network
//! method and a model without the stored statistics are refused with the reason.

use candle_core::{Device, Tensor};
use iuf_incremental::config::Strategy;
use iuf_incremental::{Learner, NoProgress, StepData, ThresholdRule};

use crate::learner::{backbone, classes, features, memory_features, small_memory, tiny};

fn data<'a>(f: &'a Tensor, m: &'a Tensor, ids: &'a [u32]) -> StepData<'a> {
    StepData {
        features: f,
        memory: Some(m),
        tiles: None,
        class_ids: ids,
    }
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// A `memory` (or `iuf+memory`) learner that learned `a` (class 0) then `b` (class 1).
fn two_objects(s: Strategy) -> Learner {
    let mut cfg = tiny();
    small_memory(&mut cfg);
    let mut l = Learner::new(&cfg, s, &backbone(), classes(), &Device::Cpu).unwrap();
    for (step, (name, class)) in [("a", 0u32), ("b", 1)].into_iter().enumerate() {
        let (f, m) = (
            features(8, class, 2 + class as u64),
            memory_features(8, class, 2 + class as u64),
        );
        let (hf, hm) = (
            features(3, class, 12 + class as u64),
            memory_features(3, class, 12 + class as u64),
        );
        l.learn_step(
            step,
            &[name.to_string()],
            &data(&f, &m, &[class; 8]),
            Some(&data(&hf, &hm, &[class; 3])),
            &NoProgress,
        )
        .unwrap();
    }
    l
}

/// Every state tensor of a saved model whose name does not mention `object`.
fn state_without(l: &Learner, path: &std::path::Path, object: &str) -> Vec<(String, Vec<f32>)> {
    l.save(path).unwrap();
    let loaded = iuf_model::load_model(path, &Device::Cpu).unwrap();
    loaded
        .state
        .iter()
        .filter(|(n, _)| !n.contains(&format!(".{object}")) && !n.contains("prototype"))
        .map(|(n, t)| {
            (
                n.clone(),
                values(&t.to_dtype(candle_core::DType::F32).unwrap()),
            )
        })
        .collect()
}

/// Guarantee: adding good images of a new look to `b` makes `b` score them lower, and `a`'s
/// maps, normalisation, threshold and stored tensors stay bit-identical, before and after a
/// reload of the updated model.
#[test]
fn adding_good_images_moves_only_their_object() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = two_objects(Strategy::Memory);
    let (ta, tma) = (features(4, 0, 22), memory_features(4, 0, 22));
    // `b` in a new lighting: every feature shifted.
    let shifted = |n, seed| {
        (
            (features(n, 1, seed) + 0.4).unwrap(),
            (memory_features(n, 1, seed) + 0.4).unwrap(),
        )
    };
    let (tb, tmb) = shifted(4, 50);
    let a_before = l
        .predict_images_as(&ta, Some(&tma), Some("a"), &NoProgress)
        .unwrap();
    let b_before = l
        .predict_images_as(&tb, Some(&tmb), Some("b"), &NoProgress)
        .unwrap();
    let norms_a = l.norms("a").unwrap().clone();
    let (ta_q, tb_q) = (l.threshold("a", 0.99), l.threshold("b", 0.99));
    let state_a = state_without(&l, &dir.path().join("before.safetensors"), "b");
    assert_eq!(l.object_images()["b"].train, 8);

    let (nf, nm) = shifted(6, 60);
    let (hf, hm) = shifted(2, 70);
    let r = l
        .add_good("b", &data(&nf, &nm, &[]), Some(&data(&hf, &hm, &[])))
        .unwrap();
    assert_eq!((r.object.as_str(), r.train, r.holdout), ("b", 6, 2));
    assert_eq!(r.threshold_before, tb_q);
    assert_eq!(l.object_images()["b"].train, 14);
    assert_eq!(l.object_images()["b"].holdout, 5);
    assert_eq!(l.memory_sizes()["b"], 64, "the cap holds");

    let path = dir.path().join("after.safetensors");
    l.save(&path).unwrap();
    let l = Learner::load(&path, &Device::Cpu).unwrap();
    assert_eq!(l.good_added().len(), 1);
    let a_after = l
        .predict_images_as(&ta, Some(&tma), Some("a"), &NoProgress)
        .unwrap();
    assert_eq!(
        values(&a_before.maps),
        values(&a_after.maps),
        "a's maps changed"
    );
    assert_eq!(a_before.scores, a_after.scores);
    assert_eq!(l.norms("a").unwrap(), &norms_a);
    assert_eq!(l.threshold("a", 0.99), ta_q);
    assert_eq!(
        state_a,
        state_without(&l, &dir.path().join("again.safetensors"), "b"),
        "a's stored tensors changed"
    );
    // b's new look now scores lower.
    let b_after = l
        .predict_images_as(&tb, Some(&tmb), Some("b"), &NoProgress)
        .unwrap();
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
    assert!(
        mean(&b_after.scores) < mean(&b_before.scores),
        "{:?} vs {:?}",
        b_after.scores,
        b_before.scores
    );
}

/// Guarantee: a network method, an unknown object, and a model whose Gaussian has no stored
/// statistics (written before they were kept) are refused with what to do, before anything
/// changes.
#[test]
fn adding_good_images_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (nf, nm) = (features(2, 1, 60), memory_features(2, 1, 60));
    let mut net = two_objects(Strategy::IufMemory);
    let err = net
        .add_good("b", &data(&nf, &nm, &[]), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("for the memory methods"), "{err}");
    let l = two_objects(Strategy::Memory);
    let err = l.check_add_good("c").unwrap_err().to_string();
    assert!(err.contains("has not learned `c`"), "{err}");
    // An old file: the same model without the Gaussian's count and scatter tensors.
    let path = dir.path().join("new.safetensors");
    l.save(&path).unwrap();
    let loaded = iuf_model::load_model(&path, &Device::Cpu).unwrap();
    let state: Vec<_> = loaded
        .state
        .iter()
        .filter(|(n, _)| !n.ends_with(".count") && !n.ends_with(".scatter"))
        .cloned()
        .collect();
    let old = dir.path().join("old.safetensors");
    iuf_model::save_model(&old, &loaded.varmap, &loaded.meta, &state).unwrap();
    let mut l = Learner::load(&old, &Device::Cpu).unwrap();
    let err = l
        .add_good("b", &data(&nf, &nm, &[]), None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("without the statistics an exact update needs")
            && err.contains("learn `b` again"),
        "{err}"
    );
    // Nothing was changed by the refusal: b still scores as before.
    assert_eq!(l.memory_sizes()["b"], 64);
}

/// Guarantee: a threshold set by value or quantile is the one every verdict uses, it is kept in
/// the model file with who set it, and other objects keep theirs.
#[test]
fn a_set_threshold_is_used_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = two_objects(Strategy::Memory);
    let a = l.threshold("a", 0.99);
    let s = l
        .set_threshold("b", ThresholdRule::Value(7.5), "operator")
        .unwrap();
    assert_eq!((s.value, s.set_by.as_str()), (7.5, "operator"));
    assert_eq!(l.threshold("b", 0.5), Some(7.5));
    let path = dir.path().join("t.safetensors");
    l.save(&path).unwrap();
    let mut l = Learner::load(&path, &Device::Cpu).unwrap();
    assert_eq!(l.threshold("b", 0.99), Some(7.5));
    assert_eq!(l.meta().thresholds["b"], 7.5);
    assert_eq!(l.calibrator().setting("b").unwrap().set_by, "operator");
    assert!(l.calibrator().setting("b").unwrap().set_at.ends_with('Z'));
    assert_eq!(l.threshold("a", 0.99), a);
    let q = l
        .set_threshold("b", ThresholdRule::Quantile(0.5), "ci")
        .unwrap();
    assert_eq!(l.threshold("b", 0.99), Some(q.value));
    assert!(l
        .set_threshold("c", ThresholdRule::Value(1.0), "x")
        .is_err());
}

/// Guarantee: a model opened for inspection only (`iuf serve`'s) leaves the update statistics
/// unread yet scores bit for bit as the model loaded whole, and refuses to add images, to learn
/// and to be saved (it would write a model without them) with the reason.
#[test]
fn a_model_opened_for_inspection_scores_the_same_and_refuses_changes() {
    let dir = tempfile::tempdir().unwrap();
    let l = two_objects(Strategy::Memory);
    let path = dir.path().join("m.safetensors");
    l.save(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let whole = Learner::load(&path, &Device::Cpu).unwrap();
    let mut seen = Learner::load_bytes_for_inspection(&path, &bytes, &Device::Cpu).unwrap();
    let (tf, tm) = (features(5, 1, 31), memory_features(5, 1, 31));
    let p_whole = whole.predict_images(&tf, Some(&tm), &NoProgress).unwrap();
    let p_seen = seen.predict_images(&tf, Some(&tm), &NoProgress).unwrap();
    assert_eq!(values(&p_whole.maps), values(&p_seen.maps));
    assert_eq!(p_whole.scores, p_seen.scores);
    assert_eq!(seen.threshold("b", 0.99), whole.threshold("b", 0.99));

    let refused = |e: iuf_incremental::Error| {
        let e = e.to_string();
        assert!(e.contains("inspect images only"), "{e}");
    };
    let (f, m) = (features(6, 1, 44), memory_features(6, 1, 44));
    refused(
        seen.add_good("b", &data(&f, &m, &[]), None)
            .expect_err("adding images is refused"),
    );
    refused(
        seen.save(&dir.path().join("x.safetensors"))
            .expect_err("saving is refused"),
    );
    assert!(!dir.path().join("x.safetensors").exists());
    refused(
        seen.learn_step(
            2,
            &["c".to_string()],
            &data(&f, &m, &[2; 6]),
            None,
            &NoProgress,
        )
        .expect_err("learning is refused"),
    );
}
