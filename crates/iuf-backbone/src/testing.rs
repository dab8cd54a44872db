//! Helpers of the unit tests, compiled into the integration tests too (`tests/it/common.rs`
//! includes this file), so it may use candle only.

use candle_core::Tensor;

/// Largest absolute difference of two f32 tensors, after checking the shapes agree.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}
