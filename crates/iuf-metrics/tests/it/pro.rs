//! PRO (MVTec AD definition, section 6 of ALGORITHM.md) against values computed by hand on tiny
//! masks, and against the brute-force per-threshold evaluation in make_reference.py.

use iuf_metrics::{pro_auc, PRO_MAX_FPR};

use crate::reference::{f32s, load, num, uint};

fn assert_close(found: f64, expected: f64) {
    assert!(
        (found - expected).abs() <= 1e-12,
        "PRO {found}, expected {expected}"
    );
}

/// Two 4x2 images, three regions, ten normal pixels.
///
/// ```text
/// image 0 mask   image 0 map          image 1 mask   image 1 map
/// 1 1 0 0        .9 .5 .3 .1          0 0 0 0        .4 .2 .7 .1
/// 0 0 0 1        .2 .1 .6 .8          0 1 1 1        .3 .9 .5 .2
/// ```
/// Regions: A = image 0's top-left pair (scores .9 .5), B = image 0's single pixel (.8), C = image
/// 1's bottom run of three (.9 .5 .2). Normal scores, high to low: .7 .6 .4 .3 .3 .2 .2 .1 .1 .1.
///
/// threshold  FPR   A    B   C     PRO = mean(A, B, C)
/// 0.9        0     1/2  0   1/3   5/18
/// 0.8        0     1/2  1   1/3   11/18
/// 0.7        0.1   1/2  1   1/3   11/18
/// 0.6        0.2   1/2  1   1/3   11/18
/// 0.5        0.2   1    1   2/3   8/9
/// 0.4        0.3   1    1   2/3   8/9
/// 0.3        0.5   1    1   2/3   8/9
/// 0.2        0.7   1    1   1     1
/// 0.1        1     1    1   1     1
fn two_images() -> (Vec<Vec<f32>>, Vec<Vec<bool>>) {
    let maps = vec![
        vec![0.9, 0.5, 0.3, 0.1, 0.2, 0.1, 0.6, 0.8],
        vec![0.4, 0.2, 0.7, 0.1, 0.3, 0.9, 0.5, 0.2],
    ];
    let masks = vec![
        [1, 1, 0, 0, 0, 0, 0, 1].map(|m| m == 1).to_vec(),
        [0, 0, 0, 0, 0, 1, 1, 1].map(|m| m == 1).to_vec(),
    ];
    (maps, masks)
}

fn pro_of(maps: &[Vec<f32>], masks: &[Vec<bool>], width: usize, max_fpr: f64) -> f64 {
    let maps: Vec<&[f32]> = maps.iter().map(Vec::as_slice).collect();
    let masks: Vec<&[bool]> = masks.iter().map(Vec::as_slice).collect();
    let height = maps[0].len() / width;
    pro_auc(&maps, &masks, width, height, max_fpr).unwrap()
}

#[test]
fn hand_computed_two_images_at_30_percent() {
    let (maps, masks) = two_images();
    // Up to FPR 0.3 (a curve point lands exactly on 0.3, no interpolation):
    // 0.1 * 11/18 + 0.1 * 11/18 + 0.1 * 8/9 = 3.8/18; divided by 0.3 = 19/27.
    assert_close(pro_of(&maps, &masks, 4, PRO_MAX_FPR), 19.0 / 27.0);
}

#[test]
fn hand_computed_two_images_interpolated() {
    let (maps, masks) = two_images();
    // Up to 0.6: 3.8/18 (to 0.3) + 0.2 * 8/9 (0.3 to 0.5) + the trapezoid from (0.5, 8/9) to the
    // point interpolated at 0.6 on the way to (0.7, 1), i.e. y = 17/18: 0.1 * (8/9 + 17/18) / 2.
    // Total 8.65/18, divided by 0.6.
    assert_close(pro_of(&maps, &masks, 4, 0.6), 8.65 / 18.0 / 0.6);
    // The whole curve: adds 0.2 * (8/9 + 1) / 2 from 0.5 to 0.7 and 0.3 * 1 from 0.7 to 1.
    assert_close(pro_of(&maps, &masks, 4, 1.0), 15.8 / 18.0);
}

#[test]
fn hand_computed_regions_weigh_equally_whatever_their_size() {
    // 5x2 image: a 2x2 region scored low (0.2) and a one-pixel region scored high (0.9).
    // mask 1 1 0 0 1    map .2 .2 .5 .1 .9
    //      1 1 0 0 0        .2 .2 .1 .1 .1
    // threshold 0.9: FPR 0, PRO (0 + 1) / 2 = 1/2 (pixel-wise overlap would be only 1/5)
    // threshold 0.5: FPR 1/5, PRO 1/2; threshold 0.2: FPR 1/5, PRO 1; threshold 0.1: FPR 1, PRO 1.
    // Area to 0.3: 0.2 * 1/2 + 0.1 * 1 = 0.2; divided by 0.3 = 2/3.
    let maps = vec![vec![0.2, 0.2, 0.5, 0.1, 0.9, 0.2, 0.2, 0.1, 0.1, 0.1]];
    let masks = vec![[1, 1, 0, 0, 1, 1, 1, 0, 0, 0].map(|m| m == 1).to_vec()];
    assert_close(pro_of(&maps, &masks, 5, PRO_MAX_FPR), 2.0 / 3.0);
}

#[test]
fn hand_computed_constant_map_is_the_diagonal() {
    // One threshold: the curve goes straight from (0, 0) to (1, 1). Up to 0.3 that is a triangle
    // of area 0.3 * 0.3 / 2 = 0.045, normalised 0.15.
    let maps = vec![vec![0.5; 9]; 2];
    let masks = vec![
        [0, 1, 0, 0, 1, 0, 0, 0, 0].map(|m| m == 1).to_vec(),
        vec![false; 9],
    ];
    assert_close(pro_of(&maps, &masks, 3, PRO_MAX_FPR), 0.15);
}

#[test]
fn hand_computed_perfect_and_worst_maps() {
    let masks = vec![[0, 0, 1, 1, 0, 0].map(|m| m == 1).to_vec()];
    // Anomalous pixels above every normal one: PRO is 1 from FPR 0 on.
    let perfect = vec![vec![0.1, 0.2, 0.8, 0.9, 0.3, 0.0]];
    assert_close(pro_of(&perfect, &masks, 3, PRO_MAX_FPR), 1.0);
    // Anomalous pixels below every normal one: PRO stays 0 until FPR 1.
    let worst = vec![vec![0.5, 0.6, 0.1, 0.0, 0.7, 0.8]];
    assert_close(pro_of(&worst, &masks, 3, PRO_MAX_FPR), 0.0);
}

#[test]
fn random_maps_match_brute_force_reference() {
    // 6 maps of 23x17 with 40 score levels (many ties), rectangular and diagonal-only regions,
    // one image without anomaly; masks passed as u8 as decoded from PNG.
    let reference = load();
    let pro = &reference["pro"];
    let (width, height) = (uint(pro, "width") as usize, uint(pro, "height") as usize);
    let maps: Vec<Vec<f32>> = pro["maps"].as_array().unwrap().iter().map(f32s).collect();
    let masks: Vec<Vec<u8>> = pro["masks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u8 * 255)
                .collect()
        })
        .collect();
    let map_refs: Vec<&[f32]> = maps.iter().map(Vec::as_slice).collect();
    let mask_refs: Vec<&[u8]> = masks.iter().map(Vec::as_slice).collect();
    for result in pro["results"].as_array().unwrap() {
        let max_fpr = num(result, "max_fpr");
        let found = pro_auc(&map_refs, &mask_refs, width, height, max_fpr).unwrap();
        let expected = num(result, "pro_auc");
        assert!(
            (found - expected).abs() <= 1e-9,
            "max_fpr {max_fpr}: PRO {found}, brute force {expected}"
        );
    }
}
