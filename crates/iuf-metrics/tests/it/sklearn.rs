//! AUROC, average precision and F1-max against scikit-learn 1.9 (values in
//! tests/reference/sklearn_reference.json, made by tests/reference/make_reference.py).

use iuf_metrics::{
    auroc, auroc_multi, average_precision, average_precision_multi, f1_max, f1_max_multi,
    MetricsError, RankedScores,
};
use serde_json::Value;

use crate::generator::{generate, Params};
use crate::reference::{bools, f32_of, f32s, load, num, uint};

const TOLERANCE: f64 = 1e-9;

fn assert_close(name: &str, metric: &str, found: f64, expected: f64) {
    assert!(
        (found - expected).abs() <= TOLERANCE,
        "{name}: {metric} = {found}, scikit-learn says {expected} (diff {:e})",
        (found - expected).abs()
    );
}

/// Checks every metric the case has a reference for; returns the largest absolute difference.
fn check_case(case: &Value, scores: &[f32], labels: &[bool]) -> f64 {
    let name = case["name"].as_str().expect("name");
    let mut worst = 0f64;
    match case.get("auroc").and_then(Value::as_f64) {
        Some(expected) => {
            let found = auroc(scores, labels).unwrap();
            assert_close(name, "AUROC", found, expected);
            worst = worst.max((found - expected).abs());
        }
        // scikit-learn leaves AUROC undefined with one class: we must error, not return NaN.
        None => assert!(matches!(
            auroc(scores, labels),
            Err(MetricsError::MissingClass { .. })
        )),
    }
    let ap = average_precision(scores, labels).unwrap();
    assert_close(
        name,
        "average precision",
        ap,
        num(case, "average_precision"),
    );
    worst = worst.max((ap - num(case, "average_precision")).abs());
    let best = f1_max(scores, labels).unwrap();
    assert_close(name, "F1-max", best.f1, num(case, "f1_max"));
    worst = worst.max((best.f1 - num(case, "f1_max")).abs());
    assert_eq!(
        best.threshold,
        f32_of(&case["f1_threshold"]),
        "{name}: F1-max threshold"
    );
    worst
}

#[test]
fn fixed_vectors_match_sklearn() {
    let reference = load();
    let cases = reference["fixed"].as_array().expect("fixed cases");
    assert!(cases.len() >= 10);
    for case in cases {
        let scores = f32s(&case["scores"]);
        let labels = bools(&case["labels"]);
        check_case(case, &scores, &labels);
    }
}

#[test]
fn fixed_vectors_split_into_parts_match_sklearn() {
    // The multi-slice entry points must agree with scikit-learn on the concatenation.
    for case in load()["fixed"].as_array().expect("fixed cases") {
        let name = case["name"].as_str().expect("name");
        let scores = f32s(&case["scores"]);
        let labels = bools(&case["labels"]);
        let cut = [0, scores.len() / 3, scores.len() / 3, scores.len()];
        let score_parts: Vec<&[f32]> = cut.windows(2).map(|w| &scores[w[0]..w[1]]).collect();
        let label_parts: Vec<&[bool]> = cut.windows(2).map(|w| &labels[w[0]..w[1]]).collect();
        if let Some(expected) = case.get("auroc").and_then(Value::as_f64) {
            let found = auroc_multi(&score_parts, &label_parts).unwrap();
            assert_close(name, "AUROC (parts)", found, expected);
        }
        let found = average_precision_multi(&score_parts, &label_parts).unwrap();
        assert_close(name, "AP (parts)", found, num(case, "average_precision"));
        let found = f1_max_multi(&score_parts, &label_parts).unwrap();
        assert_close(name, "F1-max (parts)", found.f1, num(case, "f1_max"));
    }
}

#[test]
fn hand_checked_values_in_reference() {
    // Guards against a silently regenerated JSON: these few were checked by hand.
    let reference = load();
    let fixed = reference["fixed"].as_array().expect("fixed cases");
    let by_name = |n: &str| fixed.iter().find(|c| c["name"] == n).expect(n);
    // All scores equal: one threshold, the ROC is the diagonal, AP = precision = 3/12.
    assert_eq!(num(by_name("all_equal_scores"), "auroc"), 0.5);
    assert_eq!(num(by_name("all_equal_scores"), "average_precision"), 0.25);
    assert_eq!(num(by_name("perfect"), "auroc"), 1.0);
    assert_eq!(num(by_name("inverted"), "auroc"), 0.0);
}

fn params(case: &Value) -> Params {
    Params {
        n: uint(case, "n"),
        seed_score: uint(case, "seed_score"),
        seed_label: uint(case, "seed_label"),
        score_bits: uint(case, "score_bits") as u32,
        label_modulus: uint(case, "label_modulus"),
        label_base: uint(case, "label_base"),
        label_slope: uint(case, "label_slope"),
    }
}

#[test]
fn million_sized_generated_cases_match_sklearn() {
    for case in load()["generated"].as_array().expect("generated cases") {
        let name = case["name"].as_str().expect("name");
        let (scores, labels) = generate(&params(case));
        // The generator must be the script's: same first scores, same number of positives.
        assert_eq!(
            &scores[..5],
            f32s(&case["first_scores"]).as_slice(),
            "{name}"
        );
        let positives = labels.iter().filter(|&&l| l).count() as u64;
        assert_eq!(positives, uint(case, "positives"), "{name}");
        let worst = check_case(case, &scores, &labels);
        eprintln!("{name}: largest difference to scikit-learn {worst:e}");
        // Per-image split (224 x 224 "maps"), as pixel metrics are called.
        let ranked = RankedScores::from_parts(
            &scores.chunks(224 * 224).collect::<Vec<_>>(),
            &labels.chunks(224 * 224).collect::<Vec<_>>(),
        )
        .unwrap();
        assert_close(
            name,
            "AUROC (maps)",
            ranked.auroc().unwrap(),
            num(case, "auroc"),
        );
        assert_close(
            name,
            "AP (maps)",
            ranked.average_precision().unwrap(),
            num(case, "average_precision"),
        );
    }
}
