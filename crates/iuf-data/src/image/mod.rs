//! The image pipeline of ALGORITHM.md section 1: decode to 8-bit RGB, resize with PIL's
//! antialiased bilinear filter, scale to [0, 1] and normalise with the ImageNet mean/std; masks are
//! resized nearest and are positive where > 0.
mod resample;
pub mod tiles;

use std::io::BufReader;
use std::path::Path;

use ::image::error::LimitErrorKind;
use ::image::{DynamicImage, ImageBuffer, ImageDecoder, ImageReader, Pixel, RgbImage};

pub use crate::error::megapixels;
use crate::error::{Error, Result};
use crate::file_kind::FileKind;

/// The model input size of the reference (224x224).
pub const DEFAULT_SIZE: usize = 224;
/// ImageNet channel means (R, G, B) used by torchvision's `Normalize`.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (R, G, B).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// A normalised 3-channel image, channels-first (CHW), ready for a backbone.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageTensor {
    /// `3 * height * width` values: channel `c`, row `y`, column `x` at `(c * height + y) * width + x`.
    pub data: Vec<f32>,
    pub height: usize,
    pub width: usize,
}

impl ImageTensor {
    pub const CHANNELS: usize = 3;

    /// Undoes the normalisation and rounds back to 8-bit RGB (for overlays and reports).
    pub fn to_rgb(&self) -> RgbImage {
        let plane = self.height * self.width;
        RgbImage::from_fn(self.width as u32, self.height as u32, |x, y| {
            let i = y as usize * self.width + x as usize;
            let px: [u8; 3] = std::array::from_fn(|c| {
                let v = self.data[c * plane + i] * IMAGENET_STD[c] + IMAGENET_MEAN[c];
                (v * 255.0).round().clamp(0.0, 255.0) as u8
            });
            ::image::Rgb(px)
        })
    }
}

/// The largest image or mask file read, in bytes: the decoder's memory limit (a file larger than
/// what it may decode to would not decode within it). Checked before the first byte is read.
pub fn file_limit() -> u64 {
    decoder_memory_limit()
}

/// An image decoder for the file at `path` (a regular file under [`file_limit`], format from
/// its content, else from its extension), with nothing decoded yet.
fn decoder(path: &Path) -> Result<impl ImageDecoder> {
    let file = crate::input_file::open(path, file_limit())?;
    let mut reader = ImageReader::new(BufReader::new(file));
    if let Ok(format) = ::image::ImageFormat::from_path(path) {
        reader.set_format(format);
    }
    let reader = reader
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    let decoder = reader.into_decoder().map_err(|source| Error::Decode {
        path: path.to_path_buf(),
        source,
    });
    decoder.map_err(|e| explain(path, e))
}

/// Decodes the image at `path`, refusing it before decoding when its header gives more than
/// `max_pixels` pixels.
fn open(path: &Path, max_pixels: Option<u64>) -> Result<DynamicImage> {
    let decoder = decoder(path)?;
    let (width, height) = decoder.dimensions();
    if let Some(limit) = max_pixels.filter(|&l| width as u64 * height as u64 > l) {
        return Err(Error::OverBudget {
            path: path.to_path_buf(),
            width,
            height,
            limit,
        });
    }
    // The decoder's memory limit, checked before the buffer is allocated (as `decode` does).
    ::image::Limits::default()
        .reserve(decoder.total_bytes())
        .and_then(|()| DynamicImage::from_decoder(decoder))
        .map_err(|source| Error::Decode {
            path: path.to_path_buf(),
            source,
        })
        .map_err(|e| explain(path, e))
}

/// Width and height of the image at `path` from its header, nothing decoded (read as every image
/// is: a regular file under [`file_limit`]).
pub fn dimensions(path: &Path) -> Result<(u32, u32)> {
    Ok(decoder(path)?.dimensions())
}

/// Says what an image that failed to decode is when the decoder's own words would mislead: an
/// empty file or a folder ("unexpected end of file"), or a valid image over the decoder's memory
/// limit ("Memory limit exceeded").
fn explain(path: &Path, e: Error) -> Error {
    let kind = FileKind::of(path);
    if matches!(kind, FileKind::Empty | FileKind::Folder) {
        return Error::NotImage {
            path: path.to_path_buf(),
            kind,
        };
    }
    if let Error::Decode {
        source: ::image::ImageError::Limits(l),
        ..
    } = &e
    {
        if l.kind() == LimitErrorKind::InsufficientMemory {
            let size = crate::input_file::open(path, file_limit())
                .ok()
                .and_then(|f| {
                    ImageReader::new(BufReader::new(f))
                        .with_guessed_format()
                        .ok()
                })
                .and_then(|r| r.into_decoder().ok())
                .map(|d| (d.dimensions(), d.total_bytes()));
            return Error::TooLarge {
                path: path.to_path_buf(),
                reason: too_large(size),
            };
        }
    }
    e
}

/// The decoder's memory limit in bytes (the `image` crate's default, which nothing here changes).
pub fn decoder_memory_limit() -> u64 {
    ::image::Limits::default()
        .max_alloc
        .unwrap_or(512 * 1024 * 1024)
}

/// Why an image over the decoder's memory limit is refused, given its `(width, height)` and decoded
/// size in bytes when they could be read: its size, the limit, and the fix (there is no setting to
/// raise the limit).
pub fn too_large(size: Option<((u32, u32), u64)>) -> String {
    const MIB: u64 = 1024 * 1024;
    let limit = decoder_memory_limit() / MIB;
    let what = match size {
        Some(((w, h), bytes)) => format!(
            "the image is {w}x{h} pixels ({} MiB decoded)",
            bytes.div_ceil(MIB)
        ),
        None => "the image is too large to decode".to_string(),
    };
    format!(
        "{what}, over the decoder's memory limit of {limit} MiB (a fixed limit, no setting raises \
         it); downscale the image (e.g. to 4096 pixels on its longer side) and retry"
    )
}

/// Decodes a PNG, JPEG, BMP or TIFF file (format from its content) to 8-bit RGB: grayscale becomes
/// three equal channels, 16-bit samples are scaled to 8 bits, alpha is dropped (as PIL's
/// `convert("RGB")` does).
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    Ok(open(path, None)?.into_rgb8())
}

/// [`load_rgb`], refusing the image before it is decoded when its header gives more than
/// `max_pixels` pixels ([`Error::OverBudget`]): a caller that has reserved room for the image
/// from its [`dimensions`] never decodes more, even if the file changed since.
pub fn load_rgb_within(path: &Path, max_pixels: u64) -> Result<RgbImage> {
    Ok(open(path, Some(max_pixels))?.into_rgb8())
}

/// PIL's `resize((w, h), BILINEAR)`, bit-exact: antialiased when shrinking. Returns the image
/// unchanged when either requested size is zero (there is nothing meaningful to produce).
pub fn resize_bilinear_rgb(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    resize_bilinear(img, width, height)
}

/// [`resize_bilinear_rgb`] for 8-bit images of any pixel type (its channels resized alike).
fn resize_bilinear<P: Pixel<Subpixel = u8>>(
    img: &ImageBuffer<P, Vec<u8>>,
    width: u32,
    height: u32,
) -> ImageBuffer<P, Vec<u8>> {
    let (in_w, in_h) = img.dimensions();
    if width == 0 || height == 0 || in_w == 0 || in_h == 0 {
        return img.clone();
    }
    let out = resample::bilinear(
        img.as_raw(),
        in_w as usize,
        in_h as usize,
        P::CHANNEL_COUNT as usize,
        width as usize,
        height as usize,
    );
    ImageBuffer::from_raw(width, height, out).unwrap_or_else(|| img.clone())
}

/// Resizes to `size x size` (aspect ratio not kept, no crop), scales to [0, 1] and normalises with
/// the ImageNet mean/std: exactly torchvision's `Resize` + `ToTensor` + `Normalize` on a PIL image.
pub fn preprocess(img: &RgbImage, size: usize) -> ImageTensor {
    let resized = resize_bilinear_rgb(img, size as u32, size as u32);
    normalise(
        resized.as_raw(),
        resized.width() as usize,
        resized.height() as usize,
    )
}

/// [`preprocess`] of the `w x h` rectangle of `img` at `(x, y)`, as of `img.crop(box)` in PIL,
/// without copying the crop. Panics when the rectangle is empty or leaves the image.
pub fn preprocess_crop(
    img: &RgbImage,
    (x, y): (usize, usize),
    (w, h): (usize, usize),
    size: usize,
) -> ImageTensor {
    let (iw, ih) = (img.width() as usize, img.height() as usize);
    assert!(
        w > 0 && h > 0 && x + w <= iw && y + h <= ih && size > 0,
        "crop {w}x{h} at ({x}, {y}) of a {iw}x{ih} image"
    );
    let region = resample::Region {
        src: img.as_raw(),
        stride: iw,
        x0: x,
        y0: y,
        w,
        h,
        c: 3,
    };
    normalise(&resample::bilinear_region(region, size, size), size, size)
}

/// Interleaved RGB bytes to a normalised planar tensor: the same f32 operations as torchvision's
/// ToTensor (x / 255) then Normalize ((x - mean) / std).
/// The 256 values of each channel are computed once (the same operations, so the same bits).
fn normalise(rgb: &[u8], w: usize, h: usize) -> ImageTensor {
    let lut: [[f32; 256]; 3] = std::array::from_fn(|c| {
        std::array::from_fn(|v| (v as f32 / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c])
    });
    let plane = w * h;
    let mut data = vec![0f32; 3 * plane];
    let (r, rest) = data.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (((px, r), g), b) in rgb.chunks_exact(3).zip(r).zip(g).zip(b) {
        *r = lut[0][px[0] as usize];
        *g = lut[1][px[1] as usize];
        *b = lut[2][px[2] as usize];
    }
    ImageTensor {
        data,
        height: h,
        width: w,
    }
}

/// [`load_rgb`] then [`preprocess`].
pub fn load_image(path: &Path, size: usize) -> Result<ImageTensor> {
    Ok(preprocess(&load_rgb(path)?, size))
}

/// Binary map of a decoded mask at its own size: positive where any colour channel is > 0.
fn mask_pixels(img: &DynamicImage) -> (usize, usize, Vec<bool>) {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let positive = match img {
        DynamicImage::ImageLuma8(m) => m.as_raw().iter().map(|&v| v > 0).collect(),
        _ => img
            .to_rgb16()
            .pixels()
            .map(|p| p.0.iter().any(|&v| v > 0))
            .collect(),
    };
    (w, h, positive)
}

/// Resizes a row-major `width x height` binary map to `out_width x out_height` with PIL's
/// `resize(NEAREST)` rule.
pub fn resize_mask_nearest(
    mask: &[bool],
    width: usize,
    height: usize,
    out_width: usize,
    out_height: usize,
) -> Result<Vec<bool>> {
    if mask.len() != width * height || width == 0 || height == 0 {
        return Err(Error::Shape {
            what: "mask".into(),
            expected: format!("{width}x{height} = {} non-empty pixels", width * height),
            found: format!("{} values", mask.len()),
        });
    }
    let xs = resample::nearest_indices(width, out_width);
    let ys = resample::nearest_indices(height, out_height);
    let mut out = Vec::with_capacity(out_width * out_height);
    for &y in &ys {
        out.extend(xs.iter().map(|&x| mask[y * width + x]));
    }
    Ok(out)
}

/// Loads a ground-truth mask as `size * size` booleans, row-major: resized nearest, positive
/// where > 0 after the resize (ALGORITHM.md section 1).
pub fn load_mask(path: &Path, size: usize) -> Result<Vec<bool>> {
    let (w, h, positive) = load_mask_pixels(path)?;
    resize_mask_nearest(&positive, w, h, size, size)
}

/// A ground-truth mask at its own size: `(width, height, positive)`, row-major, positive where
/// any channel is > 0.
pub fn load_mask_pixels(path: &Path) -> Result<(usize, usize, Vec<bool>)> {
    Ok(mask_pixels(&open(path, None)?))
}

/// Resizes any 8-bit grayscale image with PIL's bilinear filter (heatmaps, masks as soft maps).
pub fn resize_bilinear_gray(
    img: &::image::GrayImage,
    width: u32,
    height: u32,
) -> ::image::GrayImage {
    resize_bilinear(img, width, height)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic busy test image.
    fn pattern(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            let v = x
                .wrapping_mul(2654435761)
                .wrapping_add(y.wrapping_mul(40503))
                >> 7;
            ::image::Rgb([v as u8, (v >> 8) as u8, (x * 7 + y * 3) as u8])
        })
    }

    #[test]
    fn a_crop_is_preprocessed_as_the_cropped_image() {
        let img = pattern(97, 61);
        for ((x, y), (w, h), size) in [
            ((5, 7), (40, 30), 24),
            ((0, 0), (97, 61), 33),
            ((50, 1), (47, 60), 47),
        ] {
            let crop = ::image::imageops::crop_imm(&img, x as u32, y as u32, w as u32, h as u32)
                .to_image();
            let want = preprocess(&crop, size);
            let got = preprocess_crop(&img, (x, y), (w, h), size);
            assert_eq!(got.data, want.data, "crop {w}x{h} at ({x}, {y}) to {size}");
        }
    }

    #[test]
    fn gray_and_rgb_resizes_agree_channel_by_channel() {
        // The one- and three-channel passes are separate code: each RGB channel resized must
        // equal that channel resized as a gray image (shrinking and enlarging, both pass orders).
        let img = pattern(83, 129);
        for (w, h) in [(31, 17), (83, 40), (20, 129), (150, 200)] {
            let rgb = resize_bilinear_rgb(&img, w, h);
            for ch in 0..3 {
                let gray = ::image::GrayImage::from_fn(83, 129, |x, y| {
                    ::image::Luma([img.get_pixel(x, y).0[ch]])
                });
                let got = resize_bilinear_gray(&gray, w, h);
                let want: Vec<u8> = rgb.pixels().map(|p| p.0[ch]).collect();
                assert_eq!(got.as_raw(), &want, "{w}x{h} channel {ch}");
            }
        }
    }

    /// Guarantee (issue 23 item 12): an empty image file or a folder is named for what it is, not
    /// with the decoder's "unexpected end of file".
    #[test]
    fn an_empty_file_or_a_folder_is_named_for_what_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.png");
        std::fs::write(&empty, b"").unwrap();
        let err = load_rgb(&empty).unwrap_err().to_string();
        assert!(
            err.contains("empty.png: the file is empty (0 bytes); expected a PNG"),
            "{err}"
        );
        let err = load_rgb(dir.path()).unwrap_err().to_string();
        assert!(err.contains("the file is a folder"), "{err}");
        assert!(too_large(Some(((30000, 20000), 1_800_000_000)))
            .starts_with("the image is 30000x20000 pixels (1717 MiB decoded), over the decoder's memory limit of 512 MiB"));
    }

    /// Guarantee (issue 23 item 6): images and masks are read only from regular files (after
    /// links), under the file size limit checked before reading: a FIFO named `f.png` blocked
    /// for ever, and `x.jpg -> /dev/zero` was decoded as an endless JPEG.
    #[cfg(unix)]
    #[test]
    fn images_and_masks_are_read_only_from_regular_files_under_the_size_limit() {
        use crate::input_file::tests::within;
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("f.png");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.unwrap().success());
        let zero = dir.path().join("x.jpg");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let big = dir.path().join("big.png");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(file_limit() + 1)
            .unwrap();
        let (f, z, b) = (fifo.clone(), zero.clone(), big.clone());
        let errors = within("reading a FIFO, /dev/zero and a sparse file", move || {
            [
                load_rgb(&f).unwrap_err().to_string(),
                load_mask(&f, 8).unwrap_err().to_string(),
                load_rgb(&z).unwrap_err().to_string(),
                load_mask(&z, 8).unwrap_err().to_string(),
                dimensions(&z).unwrap_err().to_string(),
                load_rgb(&b).unwrap_err().to_string(),
            ]
        });
        for (err, wanted) in errors.iter().zip([
            "f.png: the file is a named pipe (FIFO), not a regular file",
            "f.png: the file is a named pipe (FIFO), not a regular file",
            "x.jpg: it leads through a link to /dev/zero, which is a character device, not a regular file",
            "x.jpg: it leads through a link to /dev/zero",
            "x.jpg: it leads through a link to /dev/zero",
            "big.png: the file is 536870913 bytes (513 MiB), over the limit of 536870912 bytes (512 MiB) for an image or mask file",
        ]) {
            assert!(err.contains(wanted), "{err}");
        }
    }

    /// Guarantee (issue 23 item 7): an image's size is read from its header, and an image over
    /// the caller's pixel budget is refused before it is decoded.
    #[test]
    fn an_image_over_the_pixel_budget_is_refused_before_decoding() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wide.png");
        ::image::GrayImage::new(3000, 2000).save(&path).unwrap();
        assert_eq!(dimensions(&path).unwrap(), (3000, 2000));
        let err = load_rgb_within(&path, 5_000_000).unwrap_err().to_string();
        assert!(
            err.contains(
                "wide.png: the image is 3000x2000 pixels (6 MP), over the decode budget of 5 MP"
            ),
            "{err}"
        );
        assert_eq!(
            load_rgb_within(&path, 6_000_000).unwrap().dimensions(),
            (3000, 2000)
        );
    }

    #[test]
    fn preprocess_normalises_per_channel() {
        let img = RgbImage::from_pixel(8, 8, ::image::Rgb([255, 0, 128]));
        let t = preprocess(&img, 4);
        assert_eq!((t.height, t.width, t.data.len()), (4, 4, 48));
        let expect = |c: usize, v: f32| (v / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
        assert_eq!(t.data[0], expect(0, 255.0));
        assert_eq!(t.data[16], expect(1, 0.0));
        assert_eq!(t.data[47], expect(2, 128.0));
        assert_eq!(t.to_rgb().get_pixel(3, 3).0, [255, 0, 128]);
    }

    #[test]
    fn mask_resize_is_nearest_and_binary() {
        // 4x2 mask with one positive pixel at (x=3, y=1).
        let mut m = vec![false; 8];
        m[7] = true;
        let r = resize_mask_nearest(&m, 4, 2, 2, 2).unwrap();
        assert_eq!(r, [false, false, false, true]);
        assert!(resize_mask_nearest(&m, 3, 2, 2, 2).is_err());
    }
}
