//! The AVX-512 BF16 kernel (`vdpbf16ps`): f32 -> bf16 pair conversion (`vcvtne2ps2bf16`), the
//! 14 x 32 register tile, and the strip copy that brings the AMX kernel's blocks of C out with
//! the bias and ReLU. The safe functions take the [`Bf16Cpu`] token as proof of the CPU features;
//! the others are `unsafe` with their contracts stated.

use crate::{Bf16Cpu, KT, MR, NR};
use std::arch::x86_64::*;

/// Converts `src` into pairs, calling `put(p, pair)` for every pair
/// `p < ceil(src.len() / 2)` (an odd tail is paired with zero).
pub(crate) fn convert(_cpu: Bf16Cpu, src: &[f32], mut put: impl FnMut(usize, u32)) {
    let mut chunk = [0u32; 16];
    for (c, part) in src.chunks(32).enumerate() {
        // SAFETY: `_cpu` proves avx512f + avx512bf16; the loads read only `part`.
        unsafe { convert32(part, &mut chunk) };
        for (j, v) in chunk[..part.len().div_ceil(2)].iter().enumerate() {
            put(c * 16 + j, *v);
        }
    }
}

/// Converts `src` into `dst`, pair `p` = (src[2p], src[2p + 1]), an odd tail paired with zero.
/// Panics unless `dst.len() == ceil(src.len() / 2)`.
pub(crate) fn convert_into(_cpu: Bf16Cpu, src: &[f32], dst: &mut [u32]) {
    assert_eq!(
        dst.len(),
        src.len().div_ceil(2),
        "iuf-bf16: convert_into sizes"
    );
    let mut chunk = [0u32; 16];
    for (part, out) in src.chunks(32).zip(dst.chunks_mut(16)) {
        if out.len() == 16 {
            // SAFETY: `_cpu` proves avx512f + avx512bf16; `out` holds exactly 16 u32.
            unsafe { convert32(part, out.try_into().expect("16 lanes")) };
        } else {
            // SAFETY: as above, into the local chunk.
            unsafe { convert32(part, &mut chunk) };
            out.copy_from_slice(&chunk[..out.len()]);
        }
    }
}

/// Up to 32 floats -> 16 bf16 pairs (missing floats read as zero).
///
/// # Safety
/// The CPU must have avx512f and avx512bf16.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn convert32(part: &[f32], out: &mut [u32; 16]) {
    let n = part.len().min(32);
    let lo_mask: __mmask16 = if n >= 16 { 0xffff } else { (1u16 << n) - 1 };
    let hi_n = n.saturating_sub(16);
    let hi_mask: __mmask16 = if hi_n >= 16 {
        0xffff
    } else {
        (1u16 << hi_n) - 1
    };
    // SAFETY: masked loads touch only the first n floats of `part`; the store writes 64 bytes
    // into `out` (16 u32).
    unsafe {
        let lo = _mm512_maskz_loadu_ps(lo_mask, part.as_ptr());
        let hi = _mm512_maskz_loadu_ps(hi_mask, part.as_ptr().wrapping_add(16));
        let bh = _mm512_cvtne2ps_pbh(hi, lo);
        _mm512_storeu_si512(
            out.as_mut_ptr().cast(),
            std::mem::transmute::<__m512bh, __m512i>(bh),
        );
    }
}

/// `dst[c] = pair(lo[c], hi[c])` for the columns given (`hi` zero when `None`), zeros past them.
pub(crate) fn interleave(_cpu: Bf16Cpu, lo: &[f32], hi: Option<&[f32]>, dst: &mut [u32; NR]) {
    // SAFETY: `_cpu` proves avx512f + avx512bf16.
    unsafe { interleave_avx512(lo, hi, dst) }
}

/// [`interleave`] with AVX-512: both rows rounded by `vcvtneps2bf16`, widened and merged.
#[target_feature(enable = "avx512f,avx512bf16")]
fn interleave_avx512(lo: &[f32], hi: Option<&[f32]>, dst: &mut [u32; NR]) {
    debug_assert!(lo.len() <= NR && hi.is_none_or(|h| h.len() == lo.len()));
    for half in 0..NR / 16 {
        let c0 = 16 * half;
        let n = lo.len().saturating_sub(c0).min(16);
        let mask: __mmask16 = ((1u32 << n) - 1) as __mmask16;
        // SAFETY: the masked loads read only the n columns from c0 of each row; the store
        // writes 16 lanes of dst from c0 (c0 + 16 <= NR).
        unsafe {
            let bits = |row: &[f32]| {
                let x = _mm512_maskz_loadu_ps(mask, row.as_ptr().wrapping_add(c0));
                _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(
                    _mm512_cvtneps_pbh(x),
                ))
            };
            let l = bits(lo);
            let v = match hi {
                Some(h) => _mm512_or_si512(l, _mm512_slli_epi32::<16>(bits(h))),
                None => l,
            };
            _mm512_storeu_si512(dst.as_mut_ptr().add(c0).cast(), v);
        }
    }
}

/// Copies rows `rows` of a strip of C blocks (`panels` blocks of 32 rows x [`NR`] columns,
/// each `MB * NR` floats after the previous, 64-byte aligned) to `dst` (rows `ldc` apart),
/// `cols` columns in all, row by row, as `act(c + bias)` when `bias` is given (ReLU
/// when `relu`), else unchanged. Each row is written with aligned masked stores (rotated by
/// the row's offset in its cache line), so no store splits a line.
///
/// # Safety
/// The CPU must have avx512f; `src` must be readable for the blocks holding `cols` columns
/// and `dst` writable at `i * ldc + j` for i in rows, j < cols; `bias`, when given, must hold
/// `cols` values (checked).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn store_strip(
    src: *const f32,
    dst: *mut f32,
    ldc: usize,
    rows: std::ops::Range<usize>,
    cols: usize,
    bias: Option<&[f32]>,
    relu: bool,
) {
    assert!(bias.is_none_or(|b| b.len() >= cols));
    let zero = _mm512_setzero_ps();
    let iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for i in rows {
        let row = dst.wrapping_add(i * ldc);
        let sh = (row as usize / 4) % 16;
        let line = row.wrapping_sub(sh);
        let idx = _mm512_and_si512(
            _mm512_sub_epi32(iota, _mm512_set1_epi32(sh as i32)),
            _mm512_set1_epi32(15),
        );
        let low: __mmask16 = ((1u32 << sh) - 1) as u16;
        for c0 in (0..cols).step_by(16) {
            let w = (cols - c0).min(16);
            let m: __mmask16 = if w == 16 { 0xffff } else { (1u16 << w) - 1 };
            let (p, j) = (c0 / NR, c0 % NR);
            // SAFETY: block p, row i, columns j..j + w of `src`; the bias masked to `cols`;
            // the stores write only row i's columns c0..c0 + w (masked), all the caller's.
            unsafe {
                let mut v = _mm512_loadu_ps(src.add(p * 2 * KT * NR + i * NR + j));
                if let Some(b) = bias {
                    v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, b.as_ptr().add(c0)));
                    if relu {
                        v = _mm512_max_ps(v, zero);
                    }
                }
                let r = _mm512_permutexvar_ps(idx, v);
                let mm = (m as u32) << sh;
                _mm512_mask_storeu_ps(line.wrapping_add(c0), mm as u16 & !low, r);
                if (mm >> 16) as u16 != 0 {
                    _mm512_mask_storeu_ps(line.wrapping_add(c0 + 16), (mm >> 16) as u16, r);
                }
            }
        }
    }
}

/// One MR x NR tile: `C (+)= A_panel B_panel` over `kc` pairs; stores `rows` x `cols`.
///
/// # Safety
/// The CPU must have avx512f and avx512bf16; `a` must hold kc * MR u32, `b` kc * NR u32, and
/// `c` must be writable at `i * ldc + j` for i < rows <= MR, j < cols <= NR.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bf16")]
pub(crate) unsafe fn tile(
    kc: usize,
    a: *const u32,
    b: *const u32,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    accumulate: bool,
) {
    let mut acc0 = [_mm512_setzero_ps(); MR];
    let mut acc1 = [_mm512_setzero_ps(); MR];
    for p in 0..kc {
        // SAFETY: p < kc, so b + p * NR + 16 + 15 < kc * NR and a + p * MR + i < kc * MR.
        unsafe {
            let bp = b.add(p * NR);
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.cast()));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(16).cast()));
            let ap = a.add(p * MR);
            for i in 0..MR {
                let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*ap.add(i) as i32));
                acc0[i] = _mm512_dpbf16_ps(acc0[i], av, b0);
                acc1[i] = _mm512_dpbf16_ps(acc1[i], av, b1);
            }
        }
    }
    let mask = |from: usize| -> __mmask16 {
        let n = cols.saturating_sub(from).min(16);
        if n == 16 {
            0xffff
        } else {
            (1u16 << n) - 1
        }
    };
    let (m0, m1) = (mask(0), mask(16));
    for i in 0..rows.min(MR) {
        // SAFETY: row i < rows; the masks select columns < cols, all inside the caller's C.
        unsafe {
            let row = c.add(i * ldc);
            let (mut v0, mut v1) = (acc0[i], acc1[i]);
            if accumulate {
                v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, row));
                if m1 != 0 {
                    v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, row.add(16)));
                }
            }
            _mm512_mask_storeu_ps(row, m0, v0);
            if m1 != 0 {
                _mm512_mask_storeu_ps(row.add(16), m1, v1);
            }
        }
    }
}
