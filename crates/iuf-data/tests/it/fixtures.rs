//! Builders of small fake dataset trees (tiny PNG/JPEG files) in temporary folders.
use std::fs;
use std::path::Path;

use image::{GrayImage, ImageBuffer, Luma, Rgb, RgbImage};

pub fn rgb(w: u32, h: u32, seed: u8) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([
            (x * 7 + seed as u32) as u8,
            (y * 5 + seed as u32 * 3) as u8,
            ((x + y) * 3) as u8,
        ])
    })
}

pub fn mask(w: u32, h: u32) -> GrayImage {
    GrayImage::from_fn(w, h, |x, y| {
        Luma([if x < w / 2 && y < h / 2 { 255 } else { 0 }])
    })
}

pub fn write_png(path: &Path, img: &RgbImage) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save(path).unwrap();
}

pub fn write_mask(path: &Path, img: &GrayImage) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save(path).unwrap();
}

pub fn write_jpeg(path: &Path, img: &RgbImage) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save_with_format(path, image::ImageFormat::Jpeg)
        .unwrap();
}

/// A 16-bit RGB PNG whose 8-bit reduction is `img`'s values times 257.
pub fn write_png16(path: &Path, img: &RgbImage) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let wide: ImageBuffer<Rgb<u16>, Vec<u16>> =
        ImageBuffer::from_fn(img.width(), img.height(), |x, y| {
            let p = img.get_pixel(x, y).0;
            Rgb([p[0] as u16 * 257, p[1] as u16 * 257, p[2] as u16 * 257])
        });
    wide.save(path).unwrap();
}

/// A clean MVTec-layout class: `n_train` train images, `n_good` normal test images and, per defect
/// type, that many defective test images with masks; all `size x size`.
pub fn mvtec_class(
    root: &Path,
    class: &str,
    n_train: usize,
    n_good: usize,
    defects: &[(&str, usize)],
    size: u32,
) {
    let dir = root.join(class);
    for i in 0..n_train {
        write_png(
            &dir.join(format!("train/good/{i:03}.png")),
            &rgb(size, size, i as u8),
        );
    }
    for i in 0..n_good {
        write_png(
            &dir.join(format!("test/good/{i:03}.png")),
            &rgb(size, size, 100 + i as u8),
        );
    }
    for (t, n) in defects {
        for i in 0..*n {
            write_png(
                &dir.join(format!("test/{t}/{i:03}.png")),
                &rgb(size, size, 200 + i as u8),
            );
            write_mask(
                &dir.join(format!("ground_truth/{t}/{i:03}_mask.png")),
                &mask(size, size),
            );
        }
    }
}

/// The problems of a [`iuf_data::Error::Broken`] error, as text; panics on any other error.
pub fn broken_problems(err: iuf_data::Error) -> Vec<String> {
    match err {
        iuf_data::Error::Broken { problems, .. } => {
            problems.iter().map(ToString::to_string).collect()
        }
        other => panic!("expected a Broken error, got {other}"),
    }
}

/// Whether some problem mentions every one of `parts`.
pub fn mentions(problems: &[String], parts: &[&str]) -> bool {
    problems
        .iter()
        .any(|p| parts.iter().all(|part| p.contains(part)))
}
