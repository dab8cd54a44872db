//! Batching: a seeded shuffled batch order and parallel (rayon) decoding so every core is busy.
use std::path::PathBuf;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;

use crate::error::Result;
use crate::image::{load_image, load_mask, ImageTensor};

/// Indices `0..n` shuffled with a seeded `StdRng` and cut into batches of `batch_size` (the last
/// batch may be smaller; nothing is dropped). The same seed always gives the same order.
/// `batch_size == 0` means one batch holding everything.
pub fn shuffled_batches(n: usize, batch_size: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    order.shuffle(&mut rng);
    ordered_batches(order, batch_size)
}

/// Indices `0..n` in order, cut into batches (evaluation order).
pub fn sequential_batches(n: usize, batch_size: usize) -> Vec<Vec<usize>> {
    ordered_batches((0..n).collect(), batch_size)
}

fn ordered_batches(order: Vec<usize>, batch_size: usize) -> Vec<Vec<usize>> {
    if order.is_empty() {
        return Vec::new();
    }
    let size = if batch_size == 0 {
        order.len()
    } else {
        batch_size
    };
    order.chunks(size).map(<[usize]>::to_vec).collect()
}

/// Decodes and preprocesses images in parallel; the output keeps the order of `paths`. The first
/// failure (in path order) is returned.
pub fn load_images(paths: &[PathBuf], size: usize) -> Result<Vec<ImageTensor>> {
    paths.par_iter().map(|p| load_image(p, size)).collect()
}

/// Loads masks in parallel; `None` (a normal image) gives an all-negative mask.
pub fn load_masks(masks: &[Option<PathBuf>], size: usize) -> Result<Vec<Vec<bool>>> {
    masks
        .par_iter()
        .map(|m| match m {
            Some(p) => load_mask(p, size),
            None => Ok(vec![false; size * size]),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_cover_every_index_once_and_are_seeded() {
        let a = shuffled_batches(10, 3, 7);
        assert_eq!(a.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 3, 1]);
        let mut all: Vec<usize> = a.concat();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert_eq!(a, shuffled_batches(10, 3, 7));
        assert_ne!(a, shuffled_batches(10, 3, 8));
        assert_ne!(a.concat(), (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn degenerate_batch_sizes() {
        assert!(shuffled_batches(0, 4, 1).is_empty());
        assert_eq!(shuffled_batches(5, 0, 1).len(), 1);
        assert_eq!(
            sequential_batches(5, 2),
            vec![vec![0, 1], vec![2, 3], vec![4]]
        );
    }
}
