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

/// The definition evaluated plainly: every pixel sorted by score from the highest down, one curve
/// point per distinct score, the trapezoid rule cut at `max_fpr`. `regions[i]` is pixel i's region
/// (0 = normal) and `sizes[r - 1]` region r's size.
fn plain_pro(scores: &[f32], regions: &[usize], sizes: &[usize], max_fpr: f64) -> f64 {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let normal = regions.iter().filter(|&&r| r == 0).count() as f64;
    let (mut x, mut y, mut area) = (0.0f64, 0.0f64, 0.0f64);
    let (mut fp, mut overlap) = (0usize, 0.0f64);
    let mut points = Vec::new();
    let mut k = 0;
    while k < order.len() {
        let s = scores[order[k]];
        while k < order.len() && scores[order[k]] == s {
            match regions[order[k]] {
                0 => fp += 1,
                r => overlap += 1.0 / sizes[r - 1] as f64,
            }
            k += 1;
        }
        points.push((fp as f64 / normal, (overlap / sizes.len() as f64).min(1.0)));
    }
    points.push((1.0, 1.0));
    for (px, py) in points {
        if px <= max_fpr {
            area += 0.5 * (y + py) * (px - x);
            (x, y) = (px, py);
        } else {
            let at = y + (py - y) * (max_fpr - x) / (px - x);
            area += 0.5 * (y + at) * (max_fpr - x);
            break;
        }
    }
    area / max_fpr
}

/// Maps large enough for every path of the fast curve (65,536 score buckets, buckets sorted
/// alone, the sweep stopping inside one): rectangular defects that never touch (so the regions
/// are known by construction), scores spread over many exponents, squeezed into one bucket,
/// rounded to a few values (ties), or negative.
#[test]
fn large_maps_equal_the_plain_definition() {
    let (w, h, n) = (96usize, 80usize, 12usize);
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut unit = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    let shapes: [fn(f32, bool) -> f32; 4] = [
        |u, a| (u + if a { 0.3 } else { 0.0 }).powi(6) * 1e3,
        |u, a| 1.0 + (u + if a { 0.2 } else { 0.0 }) * 1e-3,
        |u, a| ((u + if a { 0.25 } else { 0.0 }) * 10.0).round() / 10.0,
        |u, a| -3.0 + 4.0 * u + if a { 1.0 } else { 0.0 },
    ];
    for shape in shapes {
        let mut maps = Vec::new();
        let mut masks = Vec::new();
        let mut all_scores = Vec::new();
        let mut all_regions = Vec::new();
        let mut sizes = Vec::new();
        for i in 0..n {
            let mut region = vec![0usize; w * h];
            if i % 4 != 3 {
                // Up to three rectangles in separate 32-pixel columns, a gap between them.
                for c in 0..1 + i % 3 {
                    let (rw, rh) = (2 + (unit() * 20.0) as usize, 1 + (unit() * 30.0) as usize);
                    let (x0, y0) = (c * 32 + (unit() * 8.0) as usize, (unit() * 40.0) as usize);
                    sizes.push(rw * rh);
                    for y in y0..y0 + rh {
                        region[y * w + x0..y * w + x0 + rw].fill(sizes.len());
                    }
                }
            }
            let map: Vec<f32> = region.iter().map(|&r| shape(unit(), r != 0)).collect();
            masks.push(region.iter().map(|&r| r != 0).collect::<Vec<bool>>());
            all_scores.extend_from_slice(&map);
            all_regions.extend_from_slice(&region);
            maps.push(map);
        }
        for max_fpr in [0.001, 0.05, PRO_MAX_FPR, 0.999, 1.0] {
            let expected = plain_pro(&all_scores, &all_regions, &sizes, max_fpr);
            let found = pro_of(&maps, &masks, w, max_fpr);
            assert!(
                (found - expected).abs() <= 1e-12,
                "max_fpr {max_fpr}: PRO {found}, plain definition {expected}"
            );
        }
    }
}
