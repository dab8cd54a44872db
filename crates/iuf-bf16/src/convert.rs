//! f32 -> bf16: one value (round to nearest even), a pair of them in one 32-bit lane, and rows of
//! the left operand by the AVX-512 kernel.

use std::borrow::Cow;

use crate::kernel::avx512;
use crate::{Bf16Cpu, Lhs};

/// f32 -> bf16 bits, round to nearest even (NaN stays NaN), as `vcvtne2ps2bf16` does for normal
/// numbers. (The instruction also flushes f32 subnormals to zero; they are below bf16's precision
/// relative to any normal operand, so the packed weights and the packed activations agree to within
/// that.)
pub fn f32_to_bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// bf16 bits -> f32 (exact).
pub fn bf16_bits_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// `x` rounded to bf16 and back (the value the kernel multiplies).
pub fn round_bf16(x: f32) -> f32 {
    bf16_bits_to_f32(f32_to_bf16_bits(x))
}

/// `lo` and `hi` as bf16 in one lane (`lo` in the low half), the layout `vdpbf16ps` reads.
pub(crate) fn pair(lo: f32, hi: f32) -> u32 {
    f32_to_bf16_bits(lo) as u32 | (f32_to_bf16_bits(hi) as u32) << 16
}

/// Elements `k0..k1` of row `row` of A: borrowed when the row is contiguous, else gathered.
fn row_part(a: Lhs<'_>, row: usize, k0: usize, k1: usize) -> Cow<'_, [f32]> {
    let base = row * a.rs;
    if a.cs == 1 {
        Cow::Borrowed(&a.data[base + k0..base + k1])
    } else {
        Cow::Owned((k0..k1).map(|kk| a.data[base + kk * a.cs]).collect())
    }
}

/// Converts row `row` of A, pairs `pc..pc + dst.len()`, into `dst` (zero pairs past k).
pub(crate) fn convert_row_into(
    cpu: Bf16Cpu,
    a: Lhs<'_>,
    k: usize,
    row: usize,
    pc: usize,
    dst: &mut [u32],
) {
    let k0 = 2 * pc;
    let k1 = (2 * (pc + dst.len())).min(k);
    let mut filled = 0;
    if k0 < k1 {
        filled = (k1 - k0).div_ceil(2);
        avx512::convert_into(cpu, &row_part(a, row, k0, k1), &mut dst[..filled]);
    }
    dst[filled..].fill(0);
}

/// Converts row `row` of A, pairs `pc..pc + kc` (zero past k), calling `put(p - pc, pair)` for
/// every pair that holds at least one element of A (the caller zero-fills the rest).
pub(crate) fn convert_row(
    cpu: Bf16Cpu,
    a: Lhs<'_>,
    k: usize,
    row: usize,
    pc: usize,
    kc: usize,
    put: impl FnMut(usize, u32),
) {
    let k0 = 2 * pc;
    let k1 = (2 * (pc + kc)).min(k);
    if k0 < k1 {
        avx512::convert(cpu, &row_part(a, row, k0, k1), put);
    }
}
