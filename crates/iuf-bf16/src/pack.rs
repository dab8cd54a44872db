//! The operands: the right one packed once into pair-interleaved panels ([`PackedB`]), the left
//! one as f32 with any strides ([`Lhs`], converted block by block during the product), the
//! check that a slice covers its shape, and the 64-byte aligned scratch the kernels' blocks use.

use crate::convert::pair;
use crate::{KT, NR};

/// Checks that `len` elements cover a `rows x cols` matrix with strides `(rs, cs)`.
pub(crate) fn check_cover(
    what: &str,
    len: usize,
    (rows, cols): (usize, usize),
    (rs, cs): (usize, usize),
) {
    if rows == 0 || cols == 0 {
        return;
    }
    let last = (rows - 1) * rs + (cols - 1) * cs;
    assert!(
        last < len,
        "iuf-bf16: {what} [{rows}, {cols}] with strides ({rs}, {cs}) needs {} elements, found {len}",
        last + 1
    );
}

/// The right operand `B [k, n]` in bf16, pair-interleaved in panels of [`NR`] columns.
#[derive(Debug, Clone)]
pub struct PackedB {
    pub(crate) k: usize,
    pub(crate) n: usize,
    /// Pairs per panel: `ceil(k / 2)` rounded up to a multiple of [`KT`] (zero pairs past k).
    pub(crate) kpp: usize,
    /// Panel `j`, pair `p`, lane `c`: at `off + (j * kpp + p) * NR + c`.
    data: Vec<u32>,
    /// Start of the panels in `data`, chosen so that they begin on a 64-byte boundary (every tile
    /// row then is one cache line). A clone keeps the offset, so it may lose the alignment, not
    /// the values.
    off: usize,
}

impl PackedB {
    /// Packs `B[kk][col] = src[kk * rs + col * cs]`. A linear layer's weight `W [out, in]` is
    /// `B = W^T` with `(rs, cs) = (1, in)`. Panics if `src` is too short.
    pub fn pack(k: usize, n: usize, src: &[f32], (rs, cs): (usize, usize)) -> Self {
        check_cover("B", src.len(), (k, n), (rs, cs));
        let kpp = k.div_ceil(2).next_multiple_of(KT);
        let panels = n.div_ceil(NR);
        let len = panels * kpp * NR;
        let mut data = vec![0u32; len + 15];
        let off = data.as_ptr().align_offset(64).min(15);
        let at = |kk: usize, col: usize| {
            if kk < k {
                src[kk * rs + col * cs]
            } else {
                0.0
            }
        };
        let kp = k.div_ceil(2);
        for (j, panel) in data[off..off + len]
            .chunks_mut((kpp * NR).max(1))
            .enumerate()
        {
            let cols = (n - j * NR).min(NR);
            // Two common layouts without the per-element index arithmetic (same values):
            // rows of B contiguous (`cs == 1`, e.g. attention's v) and columns of B contiguous
            // (`rs == 1`, a weight W [out, in] as W^T, or attention's k^T).
            if cs == 1 {
                for (p, lanes) in panel.chunks_mut(NR).take(kp).enumerate() {
                    let r0 = &src[2 * p * rs + j * NR..][..cols];
                    if 2 * p + 1 < k {
                        let r1 = &src[(2 * p + 1) * rs + j * NR..][..cols];
                        for ((lane, &lo), &hi) in lanes.iter_mut().zip(r0).zip(r1) {
                            *lane = pair(lo, hi);
                        }
                    } else {
                        for (lane, &lo) in lanes.iter_mut().zip(r0) {
                            *lane = pair(lo, 0.0);
                        }
                    }
                }
                continue;
            }
            if rs == 1 {
                for c in 0..cols {
                    let column = &src[(j * NR + c) * cs..][..k];
                    for (p, two) in column.chunks(2).enumerate() {
                        panel[p * NR + c] = pair(two[0], two.get(1).copied().unwrap_or(0.0));
                    }
                }
                continue;
            }
            for (p, lanes) in panel.chunks_mut(NR).take(kp).enumerate() {
                for (c, lane) in lanes[..cols].iter_mut().enumerate() {
                    let col = j * NR + c;
                    *lane = pair(at(2 * p, col), at(2 * p + 1, col));
                }
            }
        }
        Self {
            k,
            n,
            kpp,
            data,
            off,
        }
    }

    /// Rows of B (the inner dimension).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns of B (of the product).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Bytes held.
    pub fn size_bytes(&self) -> usize {
        self.data.len() * 4
    }

    /// The panels (see `data`).
    pub(crate) fn lanes(&self) -> &[u32] {
        &self.data[self.off..]
    }
}

/// The left operand: f32 `A [m, k]`, `A[i][kk] = data[i * rs + kk * cs]`, converted to bf16 and
/// packed block by block during the product.
#[derive(Debug, Clone, Copy)]
pub struct Lhs<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

/// The first `len` elements of `buf` from a 64-byte boundary (one cache line per tile row),
/// growing it when needed. Elements are 4 bytes, so at most 15 are skipped.
pub(crate) fn aligned<T: Copy + Default>(buf: &mut Vec<T>, len: usize) -> &mut [T] {
    if buf.len() < len + 15 {
        buf.resize(len + 15, T::default());
    }
    let off = buf.as_ptr().align_offset(64).min(15);
    &mut buf[off..off + len]
}
