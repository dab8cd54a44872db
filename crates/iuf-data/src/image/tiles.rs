//! The tiled view of an image: the image resized to a square working resolution and cut into
//! overlapping square tiles, each brought to the backbone's input size. A defect of 20 pixels on
//! a 1024-pixel image is 4 pixels in the whole view at 224 but 9 in a 512-pixel tile at 224.
//!
//! Tiles spread evenly from edge to edge: `n = ceil((input - overlap) / (tile - overlap))` tiles
//! per side, the first at 0 and the last ending at `input`, so neighbours overlap by at least
//! `overlap` pixels (more when the tiles do not fit exactly).

use ::image::RgbImage;
use serde::{Deserialize, Serialize};

use std::borrow::Cow;

use super::{preprocess_crop, resize_bilinear_rgb, ImageTensor};
use crate::error::{Error, Result};

/// Where the tiles of a working image lie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tiling {
    /// Side of the square working image, pixels: the image is resized to `input x input`.
    pub input: usize,
    /// Side of a tile, in working pixels.
    pub tile: usize,
    /// Least overlap of neighbouring tiles, in working pixels.
    pub overlap: usize,
}

impl Tiling {
    /// Checks the geometry: `tile <= input`, `overlap < tile`, both sides at least 16.
    pub fn check(&self) -> Result<()> {
        let bad = |reason: String| {
            Err(Error::Config {
                what: "tiling",
                reason,
            })
        };
        if self.tile < 16 || self.input < 16 {
            return bad(format!(
                "expected tile and input sides of at least 16 pixels; found tile {} and input {}",
                self.tile, self.input
            ));
        }
        if self.tile > self.input {
            return bad(format!(
                "a tile ({} px) cannot be larger than the image it is cut from ({} px)",
                self.tile, self.input
            ));
        }
        if self.overlap >= self.tile {
            return bad(format!(
                "the overlap ({} px) must be smaller than the tile ({} px)",
                self.overlap, self.tile
            ));
        }
        if self.input > 16384 {
            return bad(format!(
                "expected a working image of at most 16384 pixels a side; found {}",
                self.input
            ));
        }
        Ok(())
    }

    /// Tiles per side.
    pub fn per_side(&self) -> usize {
        if self.tile >= self.input {
            return 1;
        }
        (self.input - self.overlap).div_ceil(self.tile - self.overlap)
    }

    /// Tiles per image (`per_side` squared), in row-major order.
    pub fn count(&self) -> usize {
        self.per_side() * self.per_side()
    }

    /// The first pixel of each tile along one side, in working pixels.
    pub fn starts(&self) -> Vec<usize> {
        let n = self.per_side();
        if n == 1 {
            return vec![0];
        }
        let span = (self.input - self.tile) as f64;
        (0..n)
            .map(|i| (span * i as f64 / (n - 1) as f64).round() as usize)
            .collect()
    }

    /// Every tile's `(top, left)` in working pixels, row-major.
    pub fn origins(&self) -> Vec<(usize, usize)> {
        let s = self.starts();
        s.iter()
            .flat_map(|&y| s.iter().map(move |&x| (y, x)))
            .collect()
    }

    /// The working image: `img` resized to `input x input` (PIL's bilinear, as the whole view);
    /// `img` itself when it has that size.
    pub fn working<'a>(&self, img: &'a RgbImage) -> Cow<'a, RgbImage> {
        if img.width() as usize == self.input && img.height() as usize == self.input {
            return Cow::Borrowed(img);
        }
        Cow::Owned(resize_bilinear_rgb(
            img,
            self.input as u32,
            self.input as u32,
        ))
    }

    /// The tiles of `img`, each resized to `size x size` and normalised like the whole view
    /// ([`super::preprocess`]), in the order of [`Tiling::origins`].
    pub fn cut(&self, img: &RgbImage, size: usize) -> Vec<ImageTensor> {
        let work = self.working(img);
        self.origins()
            .into_iter()
            .map(|(y, x)| preprocess_crop(&work, (x, y), (self.tile, self.tile), size))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_cover_the_image_edge_to_edge_with_at_least_the_overlap() {
        let t = Tiling {
            input: 1024,
            tile: 512,
            overlap: 0,
        };
        assert_eq!(t.per_side(), 2);
        assert_eq!(t.starts(), [0, 512]);
        let t = Tiling {
            input: 1024,
            tile: 512,
            overlap: 64,
        };
        assert_eq!(t.per_side(), 3);
        assert_eq!(t.starts(), [0, 256, 512]);
        let t = Tiling {
            input: 1000,
            tile: 300,
            overlap: 50,
        };
        let s = t.starts();
        assert_eq!((s[0], *s.last().unwrap() + 300), (0, 1000));
        for w in s.windows(2) {
            assert!(w[0] + 300 >= w[1] + 50, "{s:?}");
        }
        let whole = Tiling {
            input: 224,
            tile: 224,
            overlap: 0,
        };
        assert_eq!((whole.count(), whole.origins()), (1, vec![(0, 0)]));
    }

    #[test]
    fn bad_geometry_is_refused_with_the_numbers() {
        let e = Tiling {
            input: 256,
            tile: 512,
            overlap: 0,
        }
        .check()
        .unwrap_err()
        .to_string();
        assert!(e.contains("512") && e.contains("256"), "{e}");
        assert!(Tiling {
            input: 512,
            tile: 128,
            overlap: 128
        }
        .check()
        .is_err());
    }

    #[test]
    fn a_tile_shows_its_part_of_the_image() {
        // Left half black, right half white: the left tiles are dark, the right ones bright.
        let img = RgbImage::from_fn(64, 64, |x, _| {
            ::image::Rgb(if x < 32 { [0; 3] } else { [255; 3] })
        });
        let t = Tiling {
            input: 64,
            tile: 32,
            overlap: 0,
        };
        let tiles = t.cut(&img, 16);
        assert_eq!(tiles.len(), 4);
        let mean = |i: usize| {
            tiles[i]
                .to_rgb()
                .pixels()
                .map(|p| p.0[0] as f64)
                .sum::<f64>()
        };
        assert_eq!((mean(0), mean(2)), (0.0, 0.0));
        assert_eq!((mean(1), mean(3)), (255.0 * 256.0, 255.0 * 256.0));
    }
}
