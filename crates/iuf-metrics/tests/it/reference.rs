//! Loads tests/reference/sklearn_reference.json, written by tests/reference/make_reference.py
//! (scikit-learn's roc_auc_score, average_precision_score and precision_recall_curve; see the
//! script's docstring for every value's origin).

use std::path::Path;

use serde_json::Value;

pub fn load() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/sklearn_reference.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// A JSON number written from a float32 by the script, as that f32.
///
/// serde_json (without its `float_roundtrip` feature) may parse a decimal one f64 ulp off; the
/// f32 it rounds to is still the one the script wrote, which the check below confirms.
pub fn f32_of(v: &Value) -> f32 {
    let x = v.as_f64().expect("number");
    let y = x as f32;
    assert!(
        (f64::from(y) - x).abs() <= 4.0 * f64::EPSILON * x.abs(),
        "reference score {x} is not an f32"
    );
    y
}

pub fn f32s(v: &Value) -> Vec<f32> {
    v.as_array().expect("array").iter().map(f32_of).collect()
}

pub fn bools(v: &Value) -> Vec<bool> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|b| b.as_bool().expect("bool"))
        .collect()
}

pub fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("missing number {key}"))
}

pub fn uint(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("missing integer {key}"))
}
