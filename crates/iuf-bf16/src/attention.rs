//! One attention head on AMX tiles, for inference: `S = scale q k^T` and then `O = P v`, with the
//! inputs rounded to bf16 and every sum accumulated in f32. The softmax that turns the scores `S`
//! into the probabilities `P` is the caller's (in f32, on the score rows in place), between the
//! two calls:
//!
//! ```text
//! let h = cpu.head_scores(dims, q, k, scale, &mut scratch);  // S rows h.ld apart
//! for i in 0..dims.nq {
//!     // softmax of h.s[i * h.ld..][..nk], written as bf16 pairs into h.p[i * h.ldp..][..h.ldp]
//!     // (zero past the keys), e.g. with `cpu.convert_pairs`; unnormalised is fine when the
//!     // caller scales row i of O afterwards.
//! }
//! let (o, ldo) = cpu.head_apply(v, &mut scratch);            // O rows ldo apart
//! ```
//!
//! Writing the probabilities as pairs is left to the caller so that its softmax can write them
//! directly from the exponentials (one pass over the scores instead of three).
//!
//! Layouts (all in [`HeadScratch`], reused between heads so nothing is allocated per head): the
//! query rows as bf16 pairs along the head width (the left operand of `q k^T`); the keys as panels
//! of 32 keys, each `dh / 2` pair rows of 32 lanes (the right operand, the layout of a
//! [`crate::PackedB`]); the probabilities as bf16 pairs along the keys; the values as panels of
//! 32 columns, each `nk / 2` pair rows (pairs of consecutive keys). Every extent is padded to 32
//! with zeros: a head width of 32 is one `tdpbf16ps` per 16 x 16 block of scores, 196 keys are 7
//! steps of the `P v` product.

use crate::kernel::{amx, avx512};
use crate::pack::{aligned, check_cover};
use crate::{Bf16Cpu, KT, NR};

/// The shape of one head: `nq` queries, `nk` keys, head width `dh`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadDims {
    pub nq: usize,
    pub nk: usize,
    pub dh: usize,
}

impl HeadDims {
    /// Queries padded to whole 32-row blocks.
    fn nq32(self) -> usize {
        self.nq.next_multiple_of(2 * KT)
    }
    /// Keys padded to whole 32-key panels (also the row length of the score block).
    fn nk32(self) -> usize {
        self.nk.next_multiple_of(NR)
    }
    /// Head width padded to whole 32-column panels.
    fn dh32(self) -> usize {
        self.dh.next_multiple_of(NR)
    }
}

/// An f32 matrix of `rows` rows whose row `r` starts at `data[r * rs]` (columns contiguous).
#[derive(Debug, Clone, Copy)]
pub struct Rows<'a> {
    pub data: &'a [f32],
    pub rs: usize,
}

impl Rows<'_> {
    fn row(&self, r: usize, cols: usize) -> &[f32] {
        &self.data[r * self.rs..r * self.rs + cols]
    }
}

/// One thread's buffers for [`Bf16Cpu::head_scores`] and [`Bf16Cpu::head_apply`]: grown to the
/// largest head seen, reused for every head after it.
#[derive(Debug, Default)]
pub struct HeadScratch {
    dims: Option<HeadDims>,
    q: Vec<u32>,
    k: Vec<u32>,
    p: Vec<u32>,
    v: Vec<u32>,
    s: Vec<f32>,
    o: Vec<f32>,
    row: Vec<f32>,
}

/// The scores of one head, and the rows the caller fills with its probabilities.
#[derive(Debug)]
pub struct HeadScores<'s> {
    /// `S = scale q k^T`: row `i` is `s[i * ld..i * ld + nk]`.
    pub s: &'s mut [f32],
    pub ld: usize,
    /// The probabilities as bf16 pairs along the keys (pair `p` = keys `2p` and `2p + 1`, the
    /// lower key in the low half): row `i` (`i < nq`) is `p[i * ldp..(i + 1) * ldp]`, to be
    /// filled by the caller, zero past the last key. Rows past `nq` are zero already.
    pub p: &'s mut [u32],
    pub ldp: usize,
}

impl Bf16Cpu {
    /// `src` as bf16 pairs into `dst` (pair `p` = `src[2p]`, `src[2p + 1]`, an odd tail paired
    /// with zero), zeros past them. Panics when `dst` has fewer than `ceil(src.len() / 2)` lanes.
    pub fn convert_pairs(self, src: &[f32], dst: &mut [u32]) {
        let half = src.len().div_ceil(2);
        avx512::convert_into(self, src, &mut dst[..half]);
        dst[half..].fill(0);
    }

    /// `S = scale q k^T` for one head: `q` has `dims.nq` rows and `k` `dims.nk` rows of
    /// `dims.dh` columns. Returns the scores (the columns past `nk` hold zeros of the padding)
    /// and the probability rows for the caller to fill before [`Bf16Cpu::head_apply`]. The
    /// query is scaled before it is rounded to bf16.
    ///
    /// Panics without AMX ([`Bf16Cpu::amx`]) or when a matrix is too short for its shape.
    pub fn head_scores<'s>(
        self,
        dims: HeadDims,
        q: Rows<'_>,
        k: Rows<'_>,
        scale: f32,
        scratch: &'s mut HeadScratch,
    ) -> HeadScores<'s> {
        assert!(self.amx(), "iuf-bf16: head_scores needs AMX");
        let HeadDims { nq, nk, dh } = dims;
        if nq > 0 {
            check_cover("q", q.data.len(), (nq, dh), (q.rs, 1));
        }
        if nk > 0 {
            check_cover("k", k.data.len(), (nk, dh), (k.rs, 1));
        }
        scratch.dims = Some(dims);
        let (nq32, nk32, dp) = (dims.nq32(), dims.nk32(), dims.dh32() / 2);
        let half = dh.div_ceil(2);
        let HeadScratch {
            q: qbuf,
            k: kbuf,
            s: sbuf,
            p: pbuf,
            row,
            ..
        } = scratch;
        // Query rows: scaled, rounded, as pairs along the head width.
        let qp = aligned(qbuf, nq32 * dp);
        let tmp = aligned(row, dh);
        for i in 0..nq {
            for (t, &x) in tmp.iter_mut().zip(q.row(i, dh)) {
                *t = x * scale;
            }
            self.convert_pairs(tmp, &mut qp[i * dp..(i + 1) * dp]);
        }
        qp[nq * dp..].fill(0);
        // Keys: panels of NR keys, pair row p of a panel holding pair p of each of its keys.
        let kp = aligned(kbuf, nk32 * dp);
        kp.fill(0);
        let mut pairs = [0u32; 512];
        for n in 0..nk {
            let (panel, j) = (n / NR, n % NR);
            for chunk in 0..half.div_ceil(512) {
                let c0 = chunk * 512;
                let c1 = (c0 + 512).min(half);
                let src = &k.row(n, dh)[2 * c0..(2 * c1).min(dh)];
                avx512::convert_into(self, src, &mut pairs[..c1 - c0]);
                for (p, &v) in pairs[..c1 - c0].iter().enumerate() {
                    kp[(panel * dp + c0 + p) * NR + j] = v;
                }
            }
        }
        let ld = nk32;
        let s = aligned(sbuf, nq32 * ld);
        self.tile_product(qp, kp, s, dp, nq32, nk32 / NR);
        let ldp = nk32 / 2;
        let p = aligned(pbuf, nq32 * ldp);
        p[nq * ldp..].fill(0);
        HeadScores { s, ld, p, ldp }
    }

    /// `O = P v` for the head of the last [`Bf16Cpu::head_scores`] call on `scratch`, `P` being
    /// the probability rows the caller wrote into [`HeadScores::p`], `v` `nk` rows of `dh`
    /// columns. Returns `O` and its row stride: row `i` is `o[i * ldo..i * ldo + dh]`.
    ///
    /// Panics without AMX, without a previous `head_scores`, or when `v` is too short.
    pub fn head_apply<'s>(self, v: Rows<'_>, scratch: &'s mut HeadScratch) -> (&'s [f32], usize) {
        assert!(self.amx(), "iuf-bf16: head_apply needs AMX");
        let dims = scratch
            .dims
            .expect("iuf-bf16: head_apply without head_scores");
        let HeadDims { nk, dh, .. } = dims;
        if nk > 0 {
            check_cover("v", v.data.len(), (nk, dh), (v.rs, 1));
        }
        let (nq32, nk32, dh32) = (dims.nq32(), dims.nk32(), dims.dh32());
        let kp2 = nk32 / 2;
        let HeadScratch {
            p: pbuf,
            v: vbuf,
            o: obuf,
            ..
        } = scratch;
        let pp = aligned(pbuf, nq32 * kp2);
        // Values: panels of NR columns, pair row r holding keys 2r and 2r + 1 of each column.
        let vp = aligned(vbuf, dh32 * kp2);
        vp[nk.div_ceil(2) * NR..].fill(0);
        for r in 0..nk.div_ceil(2) {
            let lo = v.row(2 * r, dh);
            let hi = (2 * r + 1 < nk).then(|| v.row(2 * r + 1, dh));
            for panel in 0..dh32 / NR {
                let c0 = panel * NR;
                let cols = dh.saturating_sub(c0).min(NR);
                let dst: &mut [u32; NR] = (&mut vp[(panel * kp2 + r) * NR..][..NR])
                    .try_into()
                    .expect("one panel row");
                avx512::interleave(self, &lo[c0..c0 + cols], hi.map(|h| &h[c0..c0 + cols]), dst);
            }
        }
        let o = aligned(obuf, nq32 * dh32);
        self.tile_product(pp, vp, o, kp2, nq32, dh32 / NR);
        (o, dh32)
    }
}

impl Bf16Cpu {
    /// `c [rows, panels * NR] = a b` on AMX tiles: `a` rows of `kc` pairs, `b` `panels` panels
    /// of `kc` pair rows of NR lanes (the layout of a [`crate::PackedB`]); `rows` a multiple of 32
    /// and `kc` of KT (zero gives zeros). The callers have checked that the token has AMX.
    fn tile_product(
        self,
        a: &[u32],
        b: &[u32],
        c: &mut [f32],
        kc: usize,
        rows: usize,
        panels: usize,
    ) {
        debug_assert!(self.amx());
        let ldc = panels * NR;
        assert!(rows.is_multiple_of(2 * KT) && kc.is_multiple_of(KT));
        assert!(a.len() >= rows * kc && b.len() >= panels * kc * NR && c.len() >= rows * ldc);
        // SAFETY: AMX is present and the tile state permitted (the token, checked by the
        // callers). Each block reads 32 rows of kc pairs inside a, one panel of kc pair rows of
        // NR lanes inside b, and writes 32 rows of NR floats at stride ldc inside c (sizes
        // asserted above); kc is a multiple of KT.
        unsafe {
            amx::configure();
            for ib in (0..rows).step_by(2 * KT) {
                for panel in 0..panels {
                    amx::block(
                        kc,
                        a.as_ptr().add(ib * kc),
                        b.as_ptr().add(panel * kc * NR),
                        c.as_mut_ptr().add(ib * ldc + panel * NR),
                        ldc,
                        false,
                    );
                }
            }
            amx::release();
        }
    }
}
