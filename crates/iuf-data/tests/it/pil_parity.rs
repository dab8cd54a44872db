//! PIL parity: ../shared/fixtures/efficientnet_lite0_features.safetensors holds PIL's BILINEAR
//! resize + ToTensor + Normalize of two real images; tests/fixtures/pil_resize.safetensors (made by
//! tests/fixtures/make_pil_resize.py with Pillow 13.0.0) holds raw Pillow resizes of random images.
use std::path::Path;

use image::{GrayImage, RgbImage};
use iuf_data::image::{load_image, preprocess, resize_bilinear_rgb, resize_mask_nearest};
use safetensors::SafeTensors;

use crate::shared;

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn f32s(st: &SafeTensors<'_>, name: &str) -> Vec<f32> {
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::F32);
    t.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

const FILES: [&str; 2] = [
    "bottle/test/broken_large/000.png",
    "magnetic_tile/test/crack/000.png",
];

#[test]
fn pil_parity_preprocess_matches_the_efficientnet_fixture() {
    let bytes = read(&shared().join("fixtures/efficientnet_lite0_features.safetensors"));
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let u8s = st.tensor("input.image_u8").unwrap();
    assert_eq!(u8s.shape(), [2, 256, 256, 3]);
    let expected = f32s(&st, "input.tensor");
    let per_image = 3 * 224 * 224;
    let mut worst = 0f32;
    for (i, file) in FILES.iter().enumerate() {
        let raw = u8s.data()[i * 256 * 256 * 3..(i + 1) * 256 * 256 * 3].to_vec();
        let img = RgbImage::from_raw(256, 256, raw).unwrap();
        let want = &expected[i * per_image..(i + 1) * per_image];
        let from_fixture = preprocess(&img, 224);
        let from_file = load_image(&shared().join("datasets/mvtec-mini").join(file), 224).unwrap();
        let (e1, e2) = (
            max_abs(&from_fixture.data, want),
            max_abs(&from_file.data, want),
        );
        eprintln!("{file}: max abs error {e1:e} (fixture pixels), {e2:e} (decoded file)");
        worst = worst.max(e1).max(e2);
    }
    assert!(worst < 1e-3, "max abs error {worst}");
    // The resize is bit-exact, so only f32 rounding in the normalisation could differ.
    assert!(worst < 1e-6, "max abs error {worst}");
}

/// The raw Pillow resizes (tests/fixtures/pil_resize.safetensors).
fn pil_resize_fixture() -> Vec<u8> {
    read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pil_resize.safetensors"))
}

/// Case `i` of `kind` (`bilinear` or `nearest`) in the Pillow fixture: the input and Pillow's
/// output, each as (height, width, bytes).
fn pil_case<'a>(st: &'a SafeTensors<'_>, kind: &str, i: usize) -> [(usize, usize, &'a [u8]); 2] {
    ["input", "output"].map(|part| {
        let t = st.tensor(&format!("{kind}.{i}.{part}")).unwrap();
        (t.shape()[0], t.shape()[1], t.data())
    })
}

#[test]
fn bilinear_resize_is_bit_exact_with_pillow() {
    let bytes = pil_resize_fixture();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    for i in 0..6 {
        let [(ih, iw, input), (oh, ow, output)] = pil_case(&st, "bilinear", i);
        let (ih, iw, oh, ow) = (ih as u32, iw as u32, oh as u32, ow as u32);
        let img = RgbImage::from_raw(iw, ih, input.to_vec()).unwrap();
        let got = resize_bilinear_rgb(&img, ow, oh);
        let differ = got
            .as_raw()
            .iter()
            .zip(output)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(differ, 0, "case {i}: {iw}x{ih} -> {ow}x{oh}");
    }
}

#[test]
fn nearest_mask_resize_is_exact_with_pillow() {
    let bytes = pil_resize_fixture();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    for i in 0..3 {
        let [(ih, iw, input), (oh, ow, output)] = pil_case(&st, "nearest", i);
        let src = GrayImage::from_raw(iw as u32, ih as u32, input.to_vec()).unwrap();
        let positive: Vec<bool> = src.as_raw().iter().map(|&v| v > 0).collect();
        let got = resize_mask_nearest(&positive, iw, ih, ow, oh).unwrap();
        let want: Vec<bool> = output.iter().map(|&v| v > 0).collect();
        assert_eq!(got, want, "case {i}: {iw}x{ih} -> {ow}x{oh}");
    }
}
