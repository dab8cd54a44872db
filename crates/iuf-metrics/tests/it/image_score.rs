//! Image score (max of the k x k average pool, section 6 of ALGORITHM.md) against numpy's
//! sliding-window mean in float64 (tests/reference/make_reference.py, `image_score_cases`).

use iuf_metrics::image_score;

use crate::reference::{f32s, load, num, uint};

#[test]
fn image_score_matches_numpy_sliding_window() {
    for case in load()["image_score"].as_array().expect("image score cases") {
        let (width, height, k) = (
            uint(case, "width") as usize,
            uint(case, "height") as usize,
            uint(case, "k") as usize,
        );
        let map = f32s(&case["map"]);
        let found = f64::from(image_score(&map, width, height, k).unwrap());
        let expected = num(case, "score");
        // The result is an f32: within one rounding of the float64 reference.
        assert!(
            (found - expected).abs() <= 1e-7 * expected.abs(),
            "{width}x{height} k={k}: {found} vs numpy {expected}"
        );
    }
}
