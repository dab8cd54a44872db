//! The learner on synthetic features: determinism, every strategy runs, the compression loss trains
//! the model, incremental steps project and pull, files reload.

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarMap;
use iuf_incremental::config::Strategy;
use iuf_incremental::feature_store::BackboneId;
use iuf_incremental::{Learner, NoProgress, StepData, StepRecord, TrainConfig};
use iuf_model::{IufModel, Mode};

pub(crate) const C: usize = 24;

pub(crate) fn backbone() -> BackboneId {
    BackboneId {
        name: "synthetic".into(),
        weights_digest: "none".into(),
    }
}

/// Deterministic pseudo-random features: class `k` has its own mean pattern.
pub(crate) fn features(n: usize, class: u32, seed: u64) -> Tensor {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f32> = (0..n * C * 14 * 14)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let noise = (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            let ch = (i / 196) % C;
            ((ch as u32 + class) % 5) as f32 * 0.3 + noise
        })
        .collect();
    Tensor::from_vec(v, (n, C, 14, 14), &Device::Cpu).unwrap()
}

pub(crate) fn tiny() -> TrainConfig {
    let mut cfg = TrainConfig::tiny(C, 4);
    cfg.base.epochs = 2;
    cfg.incremental.epochs = 2;
    cfg.finetune_epochs = 2;
    cfg
}

fn weights(l: &Learner, dir: &std::path::Path, name: &str) -> Vec<(String, Vec<f32>)> {
    let p = dir.join(name);
    l.save(&p).unwrap();
    let loaded = iuf_model::load_model(&p, &Device::Cpu).unwrap();
    let data = loaded.varmap.data().lock().unwrap();
    let mut v: Vec<(String, Vec<f32>)> = data
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_tensor().flatten_all().unwrap().to_vec1().unwrap(),
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// One step's images: their features, their memory features (for the memory methods) and their
/// class ids.
type Images<'a> = (&'a Tensor, Option<&'a Tensor>, &'a [u32]);

fn step_data((features, memory, class_ids): Images<'_>) -> StepData<'_> {
    StepData {
        features,
        memory,
        tiles: None,
        class_ids,
    }
}

/// Step `step` of `l`: it learns the objects `names` on `train`, normalising on `holdout` if given.
fn learn(
    l: &mut Learner,
    step: usize,
    names: &[&str],
    train: Images<'_>,
    holdout: Option<Images<'_>>,
) -> iuf_incremental::Result<StepRecord> {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let holdout = holdout.map(step_data);
    l.learn_step(
        step,
        &names,
        &step_data(train),
        holdout.as_ref(),
        &NoProgress,
    )
}

/// A new IUF learner's base step, with [`tiny`] as `tweak` changes it, on 8 images of class 0
/// (seed 1, named "a"): the learner and the step's final total loss.
fn base_step(tweak: impl FnOnce(&mut TrainConfig)) -> (Learner, f64) {
    let mut cfg = tiny();
    tweak(&mut cfg);
    let features = features(8, 0, 1);
    let ids = vec![0u32; features.dim(0).unwrap()];
    let mut l = Learner::new(&cfg, Strategy::Iuf, &backbone(), classes(), &Device::Cpu).unwrap();
    let r = learn(&mut l, 0, &["a"], (&features, None, &ids), None).unwrap();
    (l, r.final_loss.total)
}

pub(crate) fn classes() -> Vec<String> {
    vec!["a".into(), "b".into()]
}

#[test]
fn same_seed_gives_the_same_model_and_another_seed_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let train = |seed: u64| base_step(|cfg| cfg.seed = seed).0;
    let a = weights(&train(7), dir.path(), "a.safetensors");
    let b = weights(&train(7), dir.path(), "b.safetensors");
    let c = weights(&train(8), dir.path(), "c.safetensors");
    assert_eq!(a, b, "same config and seed must give the same weights");
    assert_ne!(a, c);
}

#[test]
fn every_strategy_learns_two_steps_and_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let (fa, fb) = (features(8, 0, 2), features(8, 1, 3));
    let (ia, ib) = (vec![0u32; 8], vec![1u32; 8]);
    for s in Strategy::ALL {
        if s == Strategy::Joint || !s.is_trained() || s.uses_memory() {
            // joint: one step by definition, covered by the runner test; memory methods: below.
            continue;
        }
        let mut l = Learner::new(&tiny(), s, &backbone(), classes(), &Device::Cpu).unwrap();
        let r0 = learn(&mut l, 0, &["a"], (&fa, None, &ia), None).unwrap();
        assert_eq!(r0.optimizer, "adamw");
        let path = dir.path().join(format!("{s}.safetensors"));
        l.save(&path).unwrap();
        let mut l = Learner::load(&path, &Device::Cpu).unwrap();
        assert_eq!(l.strategy(), s);
        let r1 = learn(&mut l, 1, &["b"], (&fb, None, &ib), None).unwrap();
        let expected = if s.is_iuf() {
            "constrained-sgd"
        } else {
            "adamw"
        };
        assert_eq!(r1.optimizer, expected, "{s}");
        assert!(r1.final_loss.total.is_finite(), "{s}: {:?}", r1.final_loss);
        if s.penalty().is_some() {
            assert!(
                r1.final_loss.penalty > 0.0,
                "{s}: the penalty must act in the second step"
            );
        }
        assert_eq!(l.learned_classes(), vec!["a".to_string(), "b".to_string()]);
        let p = l.predict(&fa).unwrap();
        assert_eq!(p.maps.dims(), &[8, 224, 224]);
        assert!(p.scores.iter().all(|x| x.is_finite()));
    }
}

#[test]
fn relearning_a_class_or_exceeding_capacity_is_an_error() {
    let f = features(4, 0, 4);
    let ids = vec![0u32; 4];
    let mut cfg = tiny();
    cfg.model.num_classes = 2;
    let mut l = Learner::new(
        &cfg,
        Strategy::Finetune,
        &backbone(),
        vec!["a".into()],
        &Device::Cpu,
    )
    .unwrap();
    learn(&mut l, 0, &["a"], (&f, None, &ids), None).unwrap();
    let again = learn(&mut l, 1, &["a"], (&f, None, &ids), None);
    assert!(again.unwrap_err().to_string().contains("already learned"));
    let ids1 = vec![1u32; 4];
    learn(&mut l, 1, &["b"], (&f, None, &ids1), None).unwrap();
    let full = learn(&mut l, 2, &["c"], (&f, None, &ids1), None);
    assert!(full.unwrap_err().to_string().contains("K = 2"));
}

#[test]
fn the_compression_loss_alone_changes_the_parameters() {
    // Section 4.4: with a real gradient, minimising L_sc moves the decoder weights (the reference's
    // fully detached version would leave them unchanged).
    let dev = Device::Cpu;
    let cfg = TrainConfig::tiny(C, 2);
    let varmap = VarMap::new();
    let model = IufModel::new(
        &cfg.model,
        iuf_incremental::seeded_init::seeded_var_builder(&varmap, 3, &dev),
    )
    .unwrap();
    let x = features(6, 0, 5);
    let out = model.forward(&x, &mut Mode::Eval).unwrap();
    let mut buf = iuf_incremental::scl::SclBuffer::default();
    let scl_cfg = iuf_incremental::scl::SclConfig {
        tail: iuf_incremental::scl::SclTail::Keep { keep: 1 },
        buffer_rows: 64,
    };
    let loss = buf.loss(&out.intermediate, &scl_cfg).unwrap();
    let grads = loss.backward().unwrap();
    let data = varmap.data().lock().unwrap();
    let moved: Vec<&String> = data
        .iter()
        .filter(|(_, v)| {
            grads.get(v.as_tensor()).is_some_and(|g| {
                g.abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    > 0.0
            })
        })
        .map(|(k, _)| k)
        .collect();
    assert!(
        moved.iter().any(|k| k.contains("decoder")),
        "no decoder parameter has an SCL gradient: {moved:?}"
    );
    drop(data);
    // One SGD step on L_sc alone lowers it.
    let before = loss.to_scalar::<f32>().unwrap();
    let vars = varmap.all_vars();
    let mut opt = <candle_nn::SGD as candle_nn::Optimizer>::new(vars, 0.5).unwrap();
    candle_nn::Optimizer::step(&mut opt, &grads).unwrap();
    let out = model.forward(&x, &mut Mode::Eval).unwrap();
    let after = iuf_incremental::scl::SclBuffer::default()
        .loss(&out.intermediate, &scl_cfg)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(after < before, "L_sc {before} -> {after}");
}

#[test]
fn incremental_iuf_step_keeps_the_dominant_old_output_direction() {
    // Section 4.6: after the base step, the W2 gradients are projected so that the dominant old
    // output direction (weight 0) is frozen; the pull of 4.5 keeps weights near the old ones.
    let (fa, fb) = (features(8, 0, 6), features(8, 1, 7));
    let (ia, ib) = (vec![0u32; 8], vec![1u32; 8]);
    let run = |s: Strategy| {
        let mut l = Learner::new(&tiny(), s, &backbone(), classes(), &Device::Cpu).unwrap();
        learn(&mut l, 0, &["a"], (&fa, None, &ia), None).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let before = weights(&l, dir.path(), "before.safetensors");
        learn(&mut l, 1, &["b"], (&fb, None, &ib), None).unwrap();
        let after = weights(&l, dir.path(), "after.safetensors");
        let dist: f64 = before
            .iter()
            .zip(&after)
            .map(|((_, a), (_, b))| {
                a.iter()
                    .zip(b)
                    .map(|(x, y)| ((x - y) as f64).powi(2))
                    .sum::<f64>()
            })
            .sum();
        dist.sqrt()
    };
    let constrained = run(Strategy::Iuf);
    let free = run(Strategy::IufNoUpdate);
    assert!(
        constrained < free,
        "the update strategy must move the weights less: {constrained} vs {free}"
    );
}

#[test]
fn predictions_are_finite_and_maps_match_scores() {
    let f = features(4, 0, 8);
    let mut l = Learner::new(
        &tiny(),
        Strategy::Joint,
        &backbone(),
        classes(),
        &Device::Cpu,
    )
    .unwrap();
    learn(&mut l, 0, &["a", "b"], (&f, None, &[0, 0, 1, 1]), None).unwrap();
    let p = l.predict(&f).unwrap();
    let max: Vec<f32> = p
        .maps
        .flatten_from(1)
        .unwrap()
        .max(D::Minus1)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1()
        .unwrap();
    for (s, m) in p.scores.iter().zip(max) {
        assert!(
            *s <= m + 1e-5,
            "an average-pooled maximum cannot exceed the map's maximum"
        );
    }
    let probs: Vec<f32> = p.class_probs.sum(1).unwrap().to_vec1().unwrap();
    assert!(probs.iter().all(|s| (s - 1.0).abs() < 1e-4));
}

#[test]
fn objects_are_recognised_after_an_incremental_step_and_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let (fa, fb) = (features(6, 0, 11), features(6, 1, 12));
    let mut l = Learner::new(&tiny(), Strategy::Iuf, &backbone(), classes(), &Device::Cpu).unwrap();
    for (step, (name, f, id)) in [("a", &fa, 0u32), ("b", &fb, 1u32)].into_iter().enumerate() {
        learn(&mut l, step, &[name], (f, None, &[id; 6]), None).unwrap();
    }
    let path = dir.path().join("m.safetensors");
    l.save(&path).unwrap();
    let reloaded = Learner::load(&path, &Device::Cpu).unwrap();
    for learner in [&l, &reloaded] {
        for (f, want) in [(&fa, 0u32), (&fb, 1u32)] {
            let p = learner.predict(f).unwrap();
            let ids: Vec<u32> = p.object_probs.argmax(1).unwrap().to_vec1().unwrap();
            assert!(ids.iter().all(|&i| i == want), "{ids:?}, want {want}");
            let sums: Vec<f32> = p.object_probs.sum(1).unwrap().to_vec1().unwrap();
            assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-4), "{sums:?}");
        }
    }
}

/// Memory features `[n, 16, 28, 28]`: class `k` has its own pattern, plus noise.
pub(crate) fn memory_features(n: usize, class: u32, seed: u64) -> Tensor {
    let base = features(n, class, seed).narrow(1, 0, 16).unwrap();
    base.upsample_nearest2d(28, 28).unwrap()
}

pub(crate) fn small_memory(cfg: &mut TrainConfig) {
    cfg.memory.patches = 64;
    cfg.memory.candidates = 512;
    cfg.memory.projection = 16;
}

fn map_values(p: &iuf_incremental::Predictions) -> Vec<f32> {
    p.maps.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn memory_models_learn_a_new_object_without_changing_an_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let (fa, fb) = (features(8, 0, 2), features(8, 1, 3));
    let (ma, mb) = (memory_features(8, 0, 2), memory_features(8, 1, 3));
    let (ha, hb) = (features(3, 0, 12), features(3, 1, 13));
    let (hma, hmb) = (memory_features(3, 0, 12), memory_features(3, 1, 13));
    let (ta, tma) = (features(4, 0, 22), memory_features(4, 0, 22));
    for s in [Strategy::Memory, Strategy::IufMemory] {
        let mut cfg = tiny();
        small_memory(&mut cfg);
        let mut l = Learner::new(&cfg, s, &backbone(), classes(), &Device::Cpu).unwrap();
        assert_eq!(l.has_network(), s == Strategy::IufMemory);
        let (train, holdout): (Images<'_>, Images<'_>) =
            ((&fa, Some(&ma), &[0; 8]), (&ha, Some(&hma), &[0; 3]));
        let r0 = learn(&mut l, 0, &["a"], train, Some(holdout)).unwrap();
        if s == Strategy::Memory {
            assert_eq!((r0.epochs, r0.optimizer.as_str()), (0, "none"));
        }
        assert_eq!(l.memory_sizes()["a"], 64);
        let norms_a = l.norms("a").expect("normalised on the hold-out").clone();
        assert!(norms_a["memory"].scale > 0.0);
        assert!(norms_a["gaussian"].scale > 0.0);
        assert_eq!(
            norms_a.contains_key("reconstruction"),
            s == Strategy::IufMemory
        );
        let before = l.predict_images(&ta, Some(&tma), &NoProgress).unwrap();
        assert!(before.scores.iter().all(|x| x.is_finite()));
        // A memory model needs the memory features.
        assert!(l.predict(&ta).is_err());
        let path = dir.path().join(format!("{s}.safetensors"));
        l.save(&path).unwrap();
        let mut l = Learner::load(&path, &Device::Cpu).unwrap();
        let reloaded = l.predict_images(&ta, Some(&tma), &NoProgress).unwrap();
        assert_eq!(map_values(&before), map_values(&reloaded), "{s}: reload");
        let (train, holdout): (Images<'_>, Images<'_>) =
            ((&fb, Some(&mb), &[1; 8]), (&hb, Some(&hmb), &[1; 3]));
        learn(&mut l, 1, &["b"], train, Some(holdout)).unwrap();
        assert_eq!(
            l.norms("a").unwrap(),
            &norms_a,
            "{s}: a's normalisation changed"
        );
        let after = l
            .predict_images_as(&ta, Some(&tma), Some("a"), &NoProgress)
            .unwrap();
        if s == Strategy::Memory {
            // Nothing of `a` can change: its maps are bit-identical.
            assert_eq!(
                map_values(&before),
                map_values(&after),
                "memory: a's maps changed"
            );
            // And `a`'s images are still recognised as `a`.
            let probs: Vec<Vec<f32>> = after.object_probs.to_vec2().unwrap();
            assert!(probs.iter().all(|p| p[0] > p[1]), "{probs:?}");
        }
        // b's images score against b's memory; a's images are far from it.
        let own = l
            .predict_images_as(&ta, Some(&tma), Some("a"), &NoProgress)
            .unwrap();
        let other = l
            .predict_images_as(&ta, Some(&tma), Some("b"), &NoProgress)
            .unwrap();
        let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
        assert!(
            mean(&other.scores) > mean(&own.scores),
            "{s}: {:?} vs {:?}",
            other.scores,
            own.scores
        );
    }
}

#[test]
fn a_memory_needs_at_least_one_image_and_works_from_two() {
    let mut cfg = tiny();
    small_memory(&mut cfg);
    let mut l = Learner::new(&cfg, Strategy::Memory, &backbone(), classes(), &Device::Cpu).unwrap();
    let none = Tensor::zeros((0, C, 14, 14), DType::F32, &Device::Cpu).unwrap();
    let none_m = Tensor::zeros((0, 16, 28, 28), DType::F32, &Device::Cpu).unwrap();
    let err = learn(&mut l, 0, &["a"], (&none, Some(&none_m), &[]), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no training images"), "{err}");
    let (f, m) = (features(2, 0, 5), memory_features(2, 0, 5));
    learn(&mut l, 0, &["a"], (&f, Some(&m), &[0, 0]), None).unwrap();
    // Two images hold 2 x 784 patches: the memory keeps its 64.
    assert_eq!(l.memory_sizes()["a"], 64);
    let p = l.predict_images(&f, Some(&m), &NoProgress).unwrap();
    assert!(p.scores.iter().all(|x| x.is_finite()));
}

#[test]
fn bf16_trains_in_mixed_precision_on_amx_and_auto_trains_in_f32() {
    use iuf_model::Precision;
    let dir = tempfile::tempdir().unwrap();
    let train = |precision: Precision| {
        base_step(|cfg| {
            cfg.seed = 7;
            cfg.precision = precision;
        })
    };
    let (f32_model, f32_loss) = train(Precision::F32);
    let f32_weights = weights(&f32_model, dir.path(), "f32.safetensors");
    let (auto_model, _) = train(Precision::Auto);
    assert_eq!(
        weights(&auto_model, dir.path(), "auto.safetensors"),
        f32_weights,
        "auto trains in f32"
    );
    if Precision::Bf16.resolve_training().ok().flatten().is_none() {
        eprintln!("skipped the bf16 half: this CPU has no AMX");
        return;
    }
    let (bf16_model, bf16_loss) = train(Precision::Bf16);
    assert_ne!(
        weights(&bf16_model, dir.path(), "bf16.safetensors"),
        f32_weights,
        "bf16 training must run the bf16 products"
    );
    let rel = (bf16_loss - f32_loss).abs() / f32_loss;
    eprintln!("final loss f32 {f32_loss} bf16 {bf16_loss} (relative difference {rel:.2e})");
    assert!(rel < 0.05, "final loss f32 {f32_loss}, bf16 {bf16_loss}");
}
