//! Row kernels on f32 slices for the fused CPU ops: layer norm and softmax, forward and backward.
//!
//! Every public kernel processes a block of contiguous rows of length `d` and is compiled three
//! times: for the baseline target, with AVX2+FMA and with AVX-512, picked at run time. The build
//! has no `target-cpu` flag, so without the other copies the loops below would only use SSE2. The loops are
//! written with fixed-width lane accumulators so that LLVM vectorises the reductions (a plain
//! `iter().sum()` on floats stays sequential, since float addition is not associative).

/// Lanes of the manual reduction accumulators (two AVX registers, one AVX-512 register).
const LANES: usize = 16;

/// Defines `pub fn $name` that runs its body compiled for AVX-512 (F, BW, DQ, VL) or else
/// AVX2+FMA when the CPU has them. Both copies do the same arithmetic in the same order (Rust
/// does not contract `a * b + c` into an FMA), so they give the same bits.
macro_rules! multiversion {
    ($(#[$meta:meta])* pub fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        pub fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn inner($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) {
                    inner($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    inner($($arg),*)
                }
                if std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512dq")
                    && std::is_x86_feature_detected!("avx512vl")
                    && std::is_x86_feature_detected!("avx2")
                    && std::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has just been checked to support these features.
                    return unsafe { avx512($($arg),*) };
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has just been checked to support AVX2 and FMA.
                    return unsafe { avx2($($arg),*) };
                }
            }
            inner($($arg),*)
        }
    };
}

#[inline(always)]
fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for j in 0..LANES {
            acc[j] += c[j];
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

#[inline(always)]
fn sum_sq_dev(x: &[f32], mean: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for j in 0..LANES {
            let v = c[j] - mean;
            acc[j] += v * v;
        }
    }
    let tail: f32 = chunks
        .remainder()
        .iter()
        .map(|v| (v - mean) * (v - mean))
        .sum();
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let mut ca = a.chunks_exact(LANES);
    let mut cb = b.chunks_exact(LANES);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for j in 0..LANES {
            acc[j] += x[j] * y[j];
        }
    }
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for j in 0..LANES {
            acc[j] = if c[j] > acc[j] { c[j] } else { acc[j] };
        }
    }
    let m = acc
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    chunks
        .remainder()
        .iter()
        .fold(m, |m, &v| if v > m { v } else { m })
}

/// exp(x) for x <= 0 (softmax arguments after subtracting the row max), branch-free so it vectorises.
///
/// Cephes' `expf` range reduction and polynomial (relative error about 1e-7 on [-87, 0]); arguments
/// below -87.3 (including -inf from an additive mask) give exactly 0, as `exp` underflows there anyway.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer without a libm call.
    const ROUND: f32 = 12_582_912.0;
    let xc = if x < -87.0 { -87.0 } else { x };
    let t = xc * LOG2E + ROUND;
    let fx = t - ROUND;
    // The integer n = fx sits in t's low mantissa bits: reading it with a bit cast (not a
    // saturating `as i32`, which LLVM scalarises) keeps the whole loop in vector registers.
    let n = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let r = xc - fx * C1 - fx * C2;
    let p = ((((1.987_569_2e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * r * r + r + 1.0;
    let scale = f32::from_bits((n.wrapping_add(127) as u32) << 23);
    if x < -87.3 {
        0.0
    } else {
        y * scale
    }
}

multiversion! {
    /// Layer norm forward over rows of `w.len()`: `y = (x - mean) / sqrt(var + eps) * w + b`.
    pub fn layer_norm_fwd(x: &[f32], w: &[f32], b: &[f32], y: &mut [f32], eps: f32) {
        let d = w.len();
        let inv_d = 1.0 / d as f32;
        for (xr, yr) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
            let mean = sum(xr) * inv_d;
            let rstd = 1.0 / (sum_sq_dev(xr, mean) * inv_d + eps).sqrt();
            for i in 0..d {
                yr[i] = (xr[i] - mean) * rstd * w[i] + b[i];
            }
        }
    }
}

multiversion! {
    /// Layer norm backward over rows: writes `dx` and adds this block's share of the weight and
    /// bias gradients to `dw` and `db`. Mean and 1/std are recomputed from `x` (cheaper than storing
    /// them). With xh = (x - mean) * rstd and gw = g * w:
    /// dx = rstd * (gw - mean(gw) - xh * mean(gw * xh)), dw += g * xh, db += g.
    pub fn layer_norm_bwd(
        x: &[f32],
        w: &[f32],
        g: &[f32],
        dx: &mut [f32],
        dw: &mut [f32],
        db: &mut [f32],
        eps: f32,
    ) {
        let d = w.len();
        let inv_d = 1.0 / d as f32;
        for ((xr, gr), dxr) in x.chunks_exact(d).zip(g.chunks_exact(d)).zip(dx.chunks_exact_mut(d)) {
            let mean = sum(xr) * inv_d;
            let rstd = 1.0 / (sum_sq_dev(xr, mean) * inv_d + eps).sqrt();
            let mut acc_gw = [0f32; LANES];
            let mut acc_gwx = [0f32; LANES];
            let full = d - d % LANES;
            for k in (0..full).step_by(LANES) {
                for j in 0..LANES {
                    let i = k + j;
                    let xh = (xr[i] - mean) * rstd;
                    let gw = gr[i] * w[i];
                    acc_gw[j] += gw;
                    acc_gwx[j] += gw * xh;
                    dw[i] += gr[i] * xh;
                    db[i] += gr[i];
                }
            }
            let mut s_gw: f32 = acc_gw.iter().sum();
            let mut s_gwx: f32 = acc_gwx.iter().sum();
            for i in full..d {
                let xh = (xr[i] - mean) * rstd;
                let gw = gr[i] * w[i];
                s_gw += gw;
                s_gwx += gw * xh;
                dw[i] += gr[i] * xh;
                db[i] += gr[i];
            }
            let m_gw = s_gw * inv_d;
            let m_gwx = s_gwx * inv_d;
            for i in 0..d {
                let xh = (xr[i] - mean) * rstd;
                dxr[i] = rstd * (gr[i] * w[i] - m_gw - xh * m_gwx);
            }
        }
    }
}

multiversion! {
    /// Softmax forward over rows of length `d`.
    pub fn softmax_fwd(x: &[f32], y: &mut [f32], d: usize) {
        for (xr, yr) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
            let m = max(xr);
            // A row that is entirely -inf has no valid softmax; give NaN as the composition does.
            let m = if m == f32::NEG_INFINITY { f32::NAN } else { m };
            for i in 0..d {
                yr[i] = exp_nonpositive(xr[i] - m);
            }
            let inv = 1.0 / sum(yr);
            for v in yr.iter_mut() {
                *v *= inv;
            }
        }
    }
}

multiversion! {
    /// Softmax backward over rows of length `d`: dx = y * (g - sum(g * y)).
    pub fn softmax_bwd(y: &[f32], g: &[f32], dx: &mut [f32], d: usize) {
        for ((yr, gr), dxr) in y.chunks_exact(d).zip(g.chunks_exact(d)).zip(dx.chunks_exact_mut(d)) {
            let s = dot(yr, gr);
            for i in 0..d {
                dxr[i] = yr[i] * (gr[i] - s);
            }
        }
    }
}

/// In-place softmax over rows of length `d` after adding `bias` (an additive [rows, d] mask, or
/// empty for none): the attention-score path of `attention.rs`. AVX-512 where the CPU has it (the
/// same exp with fused multiply-adds; rows of 196 scores are 12 vectors and a masked tail),
/// else the portable kernel.
pub fn softmax_inplace(s: &mut [f32], bias: &[f32], d: usize) {
    #[cfg(target_arch = "x86_64")]
    if d > 0 && std::is_x86_feature_detected!("avx512f") {
        assert!(s.len().is_multiple_of(d) && (bias.is_empty() || bias.len() == s.len()));
        // SAFETY: the CPU has just been checked to support AVX-512 F; lengths checked above.
        return unsafe { avx512::softmax_inplace(s, bias, d) };
    }
    softmax_inplace_portable(s, bias, d)
}

/// The softmax numerators of one score row for bf16 products: `out` gets `exp(s + bias - max)`
/// as bf16 pairs (pair `p` = elements `2p`, `2p + 1`, the lower in the low half; zeros past the
/// row), and the return value is their sum before rounding, by which the caller divides the
/// product's row (the normalisation moved past the product). `bias` is the row's additive mask
/// or empty. Panics when `out` has fewer than `ceil(s.len() / 2)` lanes.
pub fn softmax_exp_pairs(cpu: iuf_bf16::Bf16Cpu, s: &[f32], bias: &[f32], out: &mut [u32]) -> f32 {
    assert!(bias.is_empty() || bias.len() == s.len());
    assert!(out.len() >= s.len().div_ceil(2));
    #[cfg(target_arch = "x86_64")]
    {
        let _ = cpu;
        // SAFETY: a Bf16Cpu exists only where avx512f and avx512bf16 do; lengths checked above.
        unsafe { avx512::softmax_exp_pairs(s, bias, out) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = cpu;
        unreachable!("no bf16 kernel on this architecture")
    }
}

multiversion! {
    /// [`softmax_inplace`] without AVX-512.
    pub fn softmax_inplace_portable(s: &mut [f32], bias: &[f32], d: usize) {
        for (r, row) in s.chunks_exact_mut(d).enumerate() {
            if !bias.is_empty() {
                let br = &bias[r * d..(r + 1) * d];
                for i in 0..d {
                    row[i] += br[i];
                }
            }
            let m = max(row);
            let m = if m == f32::NEG_INFINITY { f32::NAN } else { m };
            for v in row.iter_mut() {
                *v = exp_nonpositive(*v - m);
            }
            let inv = 1.0 / sum(row);
            for v in row.iter_mut() {
                *v *= inv;
            }
        }
    }
}

multiversion! {
    /// In-place softmax backward over rows of length `d`: g <- y * (g - sum(g * y)).
    pub fn softmax_bwd_inplace(y: &[f32], g: &mut [f32], d: usize) {
        for (yr, gr) in y.chunks_exact(d).zip(g.chunks_exact_mut(d)) {
            let s = dot(yr, gr);
            for i in 0..d {
                gr[i] = yr[i] * (gr[i] - s);
            }
        }
    }
}

multiversion! {
    /// Adds `bias` to every row of `y` (rows of `bias.len()`), then the activation.
    pub fn bias_act_rows(y: &mut [f32], bias: &[f32], act: super::Activation) {
        let d = bias.len();
        for row in y.chunks_exact_mut(d) {
            if act == super::Activation::Relu {
                for i in 0..d {
                    let v = row[i] + bias[i];
                    row[i] = if v > 0.0 { v } else { 0.0 };
                }
            } else {
                for i in 0..d {
                    row[i] += bias[i];
                }
            }
        }
    }
}

multiversion! {
    /// ReLU backward on rows: `g` where the output `y` is positive, else 0, written to `out`;
    /// adds the column sums of the result to `db` (the bias gradient).
    pub fn relu_bwd_colsum(y: &[f32], g: &[f32], out: &mut [f32], db: &mut [f32]) {
        let d = db.len();
        for ((yr, gr), or) in y.chunks_exact(d).zip(g.chunks_exact(d)).zip(out.chunks_exact_mut(d)) {
            for i in 0..d {
                let v = if yr[i] > 0.0 { gr[i] } else { 0.0 };
                or[i] = v;
                db[i] += v;
            }
        }
    }
}

multiversion! {
    /// Adds the column sums of `g` (rows of `db.len()`) to `db`.
    pub fn colsum(g: &[f32], db: &mut [f32]) {
        let d = db.len();
        for gr in g.chunks_exact(d) {
            for i in 0..d {
                db[i] += gr[i];
            }
        }
    }
}

/// Chris Wellons' `lowbias32` integer hash: 32-bit multiplies and shifts only, so eight lanes
/// run per AVX2 instruction (64-bit multiplies, as in SplitMix64, do not vectorise on AVX2).
#[inline(always)]
fn lowbias32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

/// Two 32-bit keys from a 64-bit seed for the counter-based dropout stream.
#[inline(always)]
fn dropout_keys(seed: u64) -> (u32, u32) {
    let lo = lowbias32(seed as u32 ^ 0x9e37_79b9);
    let hi = lowbias32((seed >> 32) as u32 ^ lo);
    (lo, hi)
}

/// Element `i` of stream `(k1, k2)`: two hash rounds of the counter, keyed before each.
#[inline(always)]
fn dropout_bits(k1: u32, k2: u32, i: u32) -> u32 {
    lowbias32(lowbias32(i ^ k1) ^ k2)
}

fn dropout_threshold(p: f64) -> (u32, f32) {
    let t = (p * 4_294_967_296.0).clamp(0.0, u32::MAX as f64) as u32;
    (t, (1.0 / (1.0 - p)) as f32)
}

multiversion! {
    /// Inverted-dropout multipliers for elements `start..start + out.len()` of the stream `seed`:
    /// 0 with probability `p`, else 1 / (1 - p). Element i depends only on (seed, i), so the
    /// backward pass regenerates the mask instead of storing it, on any thread count.
    pub fn dropout_mask(seed: u64, start: u64, p: f64, out: &mut [f32]) {
        let (k1, k2) = dropout_keys(seed);
        let (threshold, keep) = dropout_threshold(p);
        let start = start as u32;
        for (j, v) in out.iter_mut().enumerate() {
            let bits = dropout_bits(k1, k2, start.wrapping_add(j as u32));
            *v = if bits >= threshold { keep } else { 0.0 };
        }
    }
}

multiversion! {
    /// `out = x * m + base` with `m` the multipliers of [`dropout_mask`] (`base` empty for plain
    /// dropout): one pass for `x + dropout(r)` and for the backward of both.
    pub fn dropout_fma(seed: u64, start: u64, p: f64, x: &[f32], base: &[f32], out: &mut [f32]) {
        let (k1, k2) = dropout_keys(seed);
        let (threshold, keep) = dropout_threshold(p);
        let start = start as u32;
        if base.is_empty() {
            for (j, (o, v)) in out.iter_mut().zip(x).enumerate() {
                let bits = dropout_bits(k1, k2, start.wrapping_add(j as u32));
                *o = if bits >= threshold { v * keep } else { 0.0 };
            }
        } else {
            for (j, ((o, v), b)) in out.iter_mut().zip(x).zip(base).enumerate() {
                let bits = dropout_bits(k1, k2, start.wrapping_add(j as u32));
                *o = if bits >= threshold { v * keep + b } else { *b };
            }
        }
    }
}

/// AVX-512 versions of the hottest row kernels (explicit intrinsics: masked tails instead of
/// scalar remainders, one pass for exp and sum).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// [`super::exp_nonpositive`] on 16 lanes (the same range reduction and polynomial, with
    /// fused multiply-adds). NaN stays NaN; below -87.3 gives 0.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn exp_nonpositive(x: __m512) -> __m512 {
        let round = _mm512_set1_ps(12_582_912.0);
        // max(-87, x) keeps a NaN x (the second operand is returned when either is NaN).
        let xc = _mm512_max_ps(_mm512_set1_ps(-87.0), x);
        let t = _mm512_fmadd_ps(xc, _mm512_set1_ps(std::f32::consts::LOG2_E), round);
        let fx = _mm512_sub_ps(t, round);
        let n = _mm512_sub_epi32(_mm512_castps_si512(t), _mm512_castps_si512(round));
        let r = _mm512_fnmadd_ps(fx, _mm512_set1_ps(0.693_359_4), xc);
        let r = _mm512_fnmadd_ps(fx, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm512_set1_ps(1.987_569_2e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let y = _mm512_fmadd_ps(
            _mm512_mul_ps(p, r),
            r,
            _mm512_add_ps(r, _mm512_set1_ps(1.0)),
        );
        let scale = _mm512_slli_epi32::<23>(_mm512_add_epi32(n, _mm512_set1_epi32(127)));
        let y = _mm512_mul_ps(y, _mm512_castsi512_ps(scale));
        let under = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_set1_ps(-87.3));
        _mm512_maskz_mov_ps(!under, y)
    }

    /// The row's maximum of `s + bias` (NaN when every element is -inf), 16 lanes at a time.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn row_max(s: &[f32], bias: &[f32]) -> f32 {
        let d = s.len();
        let (full, tail) = (d / 16, ((1u32 << (d % 16)) - 1) as __mmask16);
        let b = !bias.is_empty();
        // SAFETY: full vectors stay below 16 * full <= d, the tail is masked to the rest; bias
        // is as long as s when present (callers).
        unsafe {
            let load = |c: usize, m: __mmask16| {
                let v = _mm512_maskz_loadu_ps(m, s.as_ptr().add(16 * c));
                if b {
                    _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, bias.as_ptr().add(16 * c)))
                } else {
                    v
                }
            };
            let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
            for c in 0..full {
                m = _mm512_max_ps(load(c, 0xffff), m);
            }
            if tail != 0 {
                m = _mm512_mask_max_ps(m, tail, load(full, tail), m);
            }
            let mx = _mm512_reduce_max_ps(m);
            if mx == f32::NEG_INFINITY {
                f32::NAN
            } else {
                mx
            }
        }
    }

    /// See [`super::softmax_exp_pairs`] (lengths checked there).
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn softmax_exp_pairs(s: &[f32], bias: &[f32], out: &mut [u32]) -> f32 {
        let d = s.len();
        let b = !bias.is_empty();
        // SAFETY: as for row_max; every vector below reads at most the `n` elements left from
        // its start, and each store writes at most the pairs of those elements.
        unsafe {
            let mx = _mm512_set1_ps(row_max(s, bias));
            let exp_at = |at: usize, n: usize| {
                let m: __mmask16 = ((1u32 << n.min(16)) - 1) as __mmask16;
                let mut v = _mm512_maskz_loadu_ps(m, s.as_ptr().add(at));
                if b {
                    v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, bias.as_ptr().add(at)));
                }
                _mm512_maskz_mov_ps(m, exp_nonpositive(_mm512_sub_ps(v, mx)))
            };
            let mut sum = _mm512_setzero_ps();
            let mut at = 0;
            while at < d {
                let n = (d - at).min(32);
                let lo = exp_at(at, n);
                let hi = if n > 16 {
                    exp_at(at + 16, n - 16)
                } else {
                    _mm512_setzero_ps()
                };
                sum = _mm512_add_ps(sum, _mm512_add_ps(lo, hi));
                let pairs = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
                let pm: __mmask16 = ((1u32 << n.div_ceil(2)) - 1) as __mmask16;
                _mm512_mask_storeu_epi32(out.as_mut_ptr().add(at / 2).cast(), pm, pairs);
                at += 32;
            }
            out[d.div_ceil(2)..].fill(0);
            _mm512_reduce_add_ps(sum)
        }
    }

    /// See [`super::softmax_inplace`]; `s.len()` is a multiple of `d > 0`, `bias` empty or as
    /// long as `s`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn softmax_inplace(s: &mut [f32], bias: &[f32], d: usize) {
        let full = d / 16;
        let tail: __mmask16 = ((1u32 << (d % 16)) - 1) as __mmask16;
        for r in 0..s.len() / d {
            // SAFETY (whole block): row r is s[r*d..(r+1)*d] (and bias's, when present); full
            // vectors stay below 16 * full <= d, the tail is masked to the d % 16 lanes left.
            unsafe {
                let row = s.as_mut_ptr().add(r * d);
                let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
                if bias.is_empty() {
                    for c in 0..full {
                        m = _mm512_max_ps(_mm512_loadu_ps(row.add(16 * c)), m);
                    }
                    if tail != 0 {
                        let v = _mm512_maskz_loadu_ps(tail, row.add(16 * full));
                        m = _mm512_mask_max_ps(m, tail, v, m);
                    }
                } else {
                    let br = bias.as_ptr().add(r * d);
                    for c in 0..full {
                        let v = _mm512_add_ps(
                            _mm512_loadu_ps(row.add(16 * c)),
                            _mm512_loadu_ps(br.add(16 * c)),
                        );
                        _mm512_storeu_ps(row.add(16 * c), v);
                        m = _mm512_max_ps(v, m);
                    }
                    if tail != 0 {
                        let v = _mm512_add_ps(
                            _mm512_maskz_loadu_ps(tail, row.add(16 * full)),
                            _mm512_maskz_loadu_ps(tail, br.add(16 * full)),
                        );
                        _mm512_mask_storeu_ps(row.add(16 * full), tail, v);
                        m = _mm512_mask_max_ps(m, tail, v, m);
                    }
                }
                let mx = _mm512_reduce_max_ps(m);
                // A row that is entirely -inf has no valid softmax: NaN, as the composition.
                let mx = _mm512_set1_ps(if mx == f32::NEG_INFINITY {
                    f32::NAN
                } else {
                    mx
                });
                let mut sum = _mm512_setzero_ps();
                for c in 0..full {
                    let e = exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(row.add(16 * c)), mx));
                    _mm512_storeu_ps(row.add(16 * c), e);
                    sum = _mm512_add_ps(sum, e);
                }
                if tail != 0 {
                    let v = _mm512_maskz_loadu_ps(tail, row.add(16 * full));
                    let e = _mm512_maskz_mov_ps(tail, exp_nonpositive(_mm512_sub_ps(v, mx)));
                    _mm512_mask_storeu_ps(row.add(16 * full), tail, e);
                    sum = _mm512_add_ps(sum, e);
                }
                let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(sum));
                for c in 0..full {
                    let v = _mm512_mul_ps(_mm512_loadu_ps(row.add(16 * c)), inv);
                    _mm512_storeu_ps(row.add(16 * c), v);
                }
                if tail != 0 {
                    let v = _mm512_mul_ps(_mm512_maskz_loadu_ps(tail, row.add(16 * full)), inv);
                    _mm512_mask_storeu_ps(row.add(16 * full), tail, v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_exp_pairs_are_the_rounded_numerators() {
        let Some(cpu) = iuf_bf16::Bf16Cpu::detect() else {
            eprintln!("no AVX-512 BF16 on this CPU: skipped");
            return;
        };
        for d in [1usize, 2, 15, 16, 17, 31, 32, 33, 196] {
            let s: Vec<f32> = (0..d)
                .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.7)
                .collect();
            let bias: Vec<f32> = (0..d)
                .map(|i| if i % 5 == 3 { f32::NEG_INFINITY } else { 0.0 })
                .collect();
            for bias in [Vec::new(), bias] {
                let x: Vec<f32> = s
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v + bias.get(i).copied().unwrap_or(0.0))
                    .collect();
                let m = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = x.iter().map(|v| exp_nonpositive(v - m)).collect();
                let mut out = vec![u32::MAX; d.div_ceil(2) + 3];
                let sum = softmax_exp_pairs(cpu, &s, &bias, &mut out);
                let want: f32 = e.iter().sum();
                assert!(
                    (sum - want).abs() <= 1e-5 * want,
                    "d {d}: sum {sum} against {want}"
                );
                for (i, &v) in e.iter().enumerate() {
                    let lane = out[i / 2];
                    let bits = if i % 2 == 0 {
                        lane & 0xffff
                    } else {
                        lane >> 16
                    };
                    let got = iuf_bf16::bf16_bits_to_f32(bits as u16);
                    let r = iuf_bf16::round_bf16(v);
                    // The vector exp may differ from the scalar one in the last bits, which
                    // can move the rounding by one bf16 step.
                    assert!(
                        (got - r).abs() <= r.abs() * 2f32.powi(-7),
                        "d {d}, {i}: {got} against {r}"
                    );
                }
                if d % 2 == 1 {
                    assert_eq!(out[d / 2] >> 16, 0, "d {d}: the odd tail pairs with zero");
                }
                assert!(
                    out[d.div_ceil(2)..].iter().all(|&v| v == 0),
                    "d {d}: zeros past the row"
                );
            }
        }
    }

    #[test]
    fn softmax_inplace_avx512_matches_the_portable_kernel() {
        // Row lengths around the vector width, 196 (the attention rows), masks with -inf, a
        // fully masked row (NaN like the composition) and large scores.
        for d in [1usize, 5, 15, 16, 17, 33, 196] {
            let rows = 4;
            let mut s: Vec<f32> = (0..rows * d)
                .map(|i| ((i * 7919 % 113) as f32 - 56.0) * 0.37)
                .collect();
            s[0] = 95.0;
            let mut bias = vec![0f32; rows * d];
            for (i, b) in bias.iter_mut().enumerate() {
                if i % 3 == 1 || i / d == 2 {
                    *b = f32::NEG_INFINITY;
                }
            }
            for bias in [Vec::new(), bias] {
                let mut want = s.clone();
                softmax_inplace_portable(&mut want, &bias, d);
                let mut got = s.clone();
                softmax_inplace(&mut got, &bias, d);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g.is_nan() && w.is_nan()) || (g - w).abs() <= 2e-6 * w.abs().max(1e-30),
                        "d {d}, masked {}, element {i}: {g} against {w}",
                        !bias.is_empty()
                    );
                }
            }
        }
    }

    #[test]
    fn exp_matches_std_on_softmax_range() {
        let mut worst = 0f32;
        for k in 0..=100_000 {
            let x = -90.0 * k as f32 / 100_000.0;
            let want = x.exp();
            let got = exp_nonpositive(x);
            if want > 1e-30 {
                worst = worst.max(((got - want) / want).abs());
            } else {
                assert!(got < 1e-30, "exp({x}) = {got}");
            }
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_nonpositive(0.0), 1.0);
    }

    #[test]
    fn dropout_stream_has_the_right_rate_and_independent_seeds() {
        let n = 200_000;
        let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
        for p in [0.1, 0.5] {
            dropout_mask(1, 0, p, &mut a);
            dropout_mask(2, 0, p, &mut b);
            let rate = a.iter().filter(|&&v| v == 0.0).count() as f64 / n as f64;
            assert!((rate - p).abs() < 0.005, "p {p}: rate {rate}");
            // Independent masks drop an element in both with probability p^2.
            let both = a
                .iter()
                .zip(&b)
                .filter(|(x, y)| **x == 0.0 && **y == 0.0)
                .count();
            let both = both as f64 / n as f64;
            assert!((both - p * p).abs() < 0.005, "p {p}: both {both}");
            assert!(a
                .iter()
                .all(|&v| v == 0.0 || (v - 1.0 / (1.0 - p) as f32).abs() < 1e-6));
        }
        // A block of the stream equals the same elements of the whole stream.
        let mut part = vec![0f32; 1000];
        dropout_mask(2, 5000, 0.5, &mut part);
        assert_eq!(&part[..], &b[5000..6000]);
    }

    #[test]
    fn reductions_handle_remainders() {
        let x: Vec<f32> = (0..37).map(|i| i as f32 - 10.0).collect();
        assert_eq!(sum(&x), x.iter().sum::<f32>());
        assert_eq!(max(&x), 26.0);
        assert_eq!(dot(&x, &x), x.iter().map(|v| v * v).sum::<f32>());
    }
}
