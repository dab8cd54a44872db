//! K-fold cross-fitting of the threshold (`calibration.folds`): every training image is scored
//! by the method learned without it, the maps stay those of the model learned from all images,
//! and a model without enough images falls back to its held-out images.

use candle_core::{Device, Tensor};
use iuf_incremental::config::{Strategy, TrainConfig};
use iuf_incremental::{Learner, NoProgress, StepData};

use crate::learner::{backbone, classes, features, memory_features, small_memory, tiny};

fn data<'a>(f: &'a Tensor, m: &'a Tensor, ids: &'a [u32]) -> StepData<'a> {
    StepData {
        features: f,
        memory: Some(m),
        tiles: None,
        class_ids: ids,
    }
}

fn config(folds: usize, quantile: f64) -> TrainConfig {
    let mut cfg = tiny();
    small_memory(&mut cfg);
    cfg.calibration.folds = folds;
    cfg.calibration.quantile = quantile;
    cfg
}

/// `a` learned from `train` (features and memory features) and 3 held-out images.
fn learn_a(cfg: &TrainConfig, train: &(Tensor, Tensor)) -> Learner {
    let mut l = Learner::new(cfg, Strategy::Memory, &backbone(), classes(), &Device::Cpu).unwrap();
    let n = train.0.dim(0).unwrap();
    let (hf, hm) = (features(3, 0, 40), memory_features(3, 0, 40));
    l.learn_step(
        0,
        &["a".to_string()],
        &data(&train.0, &train.1, &vec![0; n]),
        Some(&data(&hf, &hm, &[0; 3])),
        &NoProgress,
    )
    .unwrap();
    l
}

/// 11 ordinary training images and one unlike the others (every feature shifted), last.
fn with_an_odd_one() -> (Tensor, Tensor) {
    let (f, m) = (features(11, 0, 3), memory_features(11, 0, 3));
    let (of, om) = (
        (features(1, 0, 99) + 0.8).unwrap(),
        (memory_features(1, 0, 99) + 0.8).unwrap(),
    );
    (
        Tensor::cat(&[&f, &of], 0).unwrap(),
        Tensor::cat(&[&m, &om], 0).unwrap(),
    )
}

/// Guarantee: with folds, the training images are scored by models that did not learn them.
/// The odd image's own patches are in the full model's memory, so the full model scores it
/// low; the fold model that left it out scores it far higher, and at quantile 1 that score is the
/// threshold. Without folds the threshold is the held-out images' maximum, far lower.
#[test]
fn each_training_image_is_scored_by_a_model_that_did_not_learn_it() {
    let train = with_an_odd_one();
    let crossed = learn_a(&config(5, 1.0), &train);
    let held_only = learn_a(&config(0, 1.0), &train);
    assert_eq!(crossed.object_images()["a"].cross_fitted, 12);
    assert_eq!(held_only.object_images()["a"].cross_fitted, 0);

    let odd_f = train.0.narrow(0, 11, 1).unwrap();
    let odd_m = train.1.narrow(0, 11, 1).unwrap();
    let in_sample = crossed
        .predict_images_as(&odd_f, Some(&odd_m), Some("a"), &NoProgress)
        .unwrap()
        .scores[0];
    let t_crossed = crossed.threshold("a", 1.0).unwrap();
    let t_held = held_only.threshold("a", 1.0).unwrap();
    assert!(
        t_crossed > 2.0 * in_sample.max(t_held),
        "the odd image scored {in_sample} by the model that learned it; threshold {t_crossed} \
         with folds, {t_held} without"
    );
}

/// Guarantee: cross-fitting changes the threshold only. The model's maps and scores (memory,
/// Gaussian, normalisation: all from every training image and the held-out ones) are bit for
/// bit those of the same model calibrated on held-out images only, and learning twice gives the
/// same threshold.
#[test]
fn cross_fitting_moves_the_threshold_and_nothing_else() {
    let train = (features(12, 0, 5), memory_features(12, 0, 5));
    let crossed = learn_a(&config(5, 0.99), &train);
    let again = learn_a(&config(5, 0.99), &train);
    let held_only = learn_a(&config(0, 0.99), &train);
    let (tf, tm) = (features(4, 0, 77), memory_features(4, 0, 77));
    let p1 = crossed.predict_images(&tf, Some(&tm), &NoProgress).unwrap();
    let p0 = held_only
        .predict_images(&tf, Some(&tm), &NoProgress)
        .unwrap();
    let values = |t: &Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
    assert_eq!(values(&p1.maps), values(&p0.maps));
    assert_eq!(p1.scores, p0.scores);
    assert_eq!(
        crossed.calibrator().norms("a"),
        held_only.calibrator().norms("a")
    );
    assert_ne!(
        crossed.calibrator().sketch("a"),
        held_only.calibrator().sketch("a")
    );
    assert_eq!(crossed.threshold("a", 0.99), again.threshold("a", 0.99));
}

/// Guarantee: an object with fewer than 2 K training images is calibrated on its held-out
/// images alone, exactly as without folds; `folds: 1` is refused with the reason.
#[test]
fn too_few_images_fall_back_to_the_held_out_ones_and_one_fold_is_refused() {
    let train = (features(9, 0, 5), memory_features(9, 0, 5));
    let crossed = learn_a(&config(5, 0.99), &train);
    let held_only = learn_a(&config(0, 0.99), &train);
    assert_eq!(crossed.object_images()["a"].cross_fitted, 0);
    assert_eq!(crossed.threshold("a", 0.99), held_only.threshold("a", 0.99));

    let cfg = config(1, 0.99);
    let err = Learner::new(&cfg, Strategy::Memory, &backbone(), classes(), &Device::Cpu)
        .err()
        .expect("one fold is refused")
        .to_string();
    assert!(err.contains("calibration.folds"), "{err}");
}
