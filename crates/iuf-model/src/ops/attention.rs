//! Fused multi-head attention core on the CPU: `softmax(q k^T * scale + mask)` with dropout, times
//! `v`, as one candle custom op with a hand-written backward.
//!
//! The composition (split heads, batched `q k^T`, mask add, softmax, dropout, `@ v`, merge heads)
//! materialises five [B * H, Nq, Nk] tensors in the autograd graph; candle's backward then adds
//! a zero-initialised gradient buffer and an add pass for each. Here every (image, head) pair is
//! one rayon task that runs single-threaded gemms on strided views of the [B, N, D] inputs (no
//! head split or merge copies), keeps its Nq x Nk scores in cache, and stores only the softmax
//! probabilities for the backward; the dropout mask is regenerated from its seed.
//!
//! Inference inside a bf16 scope on an AMX CPU (no gradient, no dropout) takes `head_bf16`
//! instead: both products of each head in bf16 on AMX tiles (`iuf_bf16::Bf16Cpu::head_scores`
//! and `head_apply`), the softmax in f32 between them writing its exponentials as the second
//! product's bf16 operand.

use std::sync::Mutex;

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::fused::{f32_slice, matmul, with_f32, Split};
use super::kernels;

/// Dropout on the attention probabilities (section 3: attention dropout 0.1 in training).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionDropout {
    /// Probability of zeroing an attention weight.
    pub p: f64,
    /// Seed of the counter-based mask stream: element (b, h, i, j) uses counter
    /// `((b * H + h) * Nq + i) * Nk + j`, so the mask is the same on every thread count.
    pub seed: u64,
}

/// Shape of one call: batch, heads, query and key tokens, head width.
#[derive(Debug, Clone, Copy)]
struct Dims {
    b: usize,
    h: usize,
    nq: usize,
    nk: usize,
    dh: usize,
}

impl Dims {
    fn d(&self) -> usize {
        self.h * self.dh
    }

    /// `s [Nq, Nk] = beta a b^T` for one head: `a` and `b` point at the head's `dh` columns of
    /// `[B, N, D]` rows (`Nq` rows of `a`, `Nk` of `b`).
    ///
    /// # Safety
    /// `a` and `b` must address those rows and columns; `s` holds `Nq * Nk` elements.
    unsafe fn head_scores(self, a: *const f32, b: *const f32, s: &mut [f32], beta: f32) {
        let d = self.d();
        // SAFETY: forwarded from the caller's contract.
        unsafe {
            matmul(
                (self.nq, self.nk, self.dh),
                s.as_mut_ptr(),
                (self.nk, 1),
                a,
                (d, 1),
                b,
                (1, d),
                beta,
                Split::No,
            );
        }
    }

    /// One head's rows weighted by a pair's `[Nq, Nk]` matrix `w`: `out = beta w x` (`Nq` rows of
    /// `out` from `Nk` rows of `x`) or, with `transposed`, `out = beta w^T x` (`Nk` rows from
    /// `Nq`). `out` and `x` point at the head's `dh` columns of `[B, N, D]` rows.
    ///
    /// # Safety
    /// `out` and `x` must address those rows and columns, `w` hold `Nq * Nk` elements, and
    /// nobody else write `out`'s elements meanwhile.
    unsafe fn head_weighted(
        self,
        w: &[f32],
        transposed: bool,
        x: *const f32,
        out: *mut f32,
        beta: f32,
    ) {
        let d = self.d();
        let ((m, k), w_strides) = if transposed {
            ((self.nk, self.nq), (1, self.nk))
        } else {
            ((self.nq, self.nk), (self.nk, 1))
        };
        // SAFETY: forwarded from the caller's contract.
        unsafe {
            matmul(
                (m, self.dh, k),
                out,
                (d, 1),
                w.as_ptr(),
                w_strides,
                x,
                (d, 1),
                beta,
                Split::No,
            );
        }
    }
}

/// A raw pointer that rayon tasks share; each task writes a disjoint set of elements.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: only used to write disjoint (image, head) column blocks from different tasks.
unsafe impl Send for SharedMut {}
// SAFETY: as above.
unsafe impl Sync for SharedMut {}

impl SharedMut {
    fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: callers stay inside the allocation the pointer came from.
        unsafe { self.0.add(offset) }
    }
}

pub(crate) struct Attention {
    heads: usize,
    scale: f32,
    /// Additive [Nq, Nk] mask, or empty.
    mask: Vec<f32>,
    dropout: Option<AttentionDropout>,
    /// Whether the forward keeps the probabilities for the backward (only when a gradient can
    /// flow; inference keeps nothing).
    keep_probs: KeepProbs,
    probs: Mutex<Option<Vec<f32>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeepProbs {
    Yes,
    No,
}

impl Attention {
    pub(crate) fn new(
        heads: usize,
        scale: f32,
        mask: Vec<f32>,
        dropout: Option<AttentionDropout>,
        keep_probs: KeepProbs,
    ) -> Self {
        Self {
            heads,
            scale,
            mask,
            dropout,
            keep_probs,
            probs: Mutex::new(None),
        }
    }

    fn dims(&self, lq: &Layout, lk: &Layout, lv: &Layout) -> Result<Dims> {
        let (q, k, v) = (lq.dims(), lk.dims(), lv.dims());
        if q.len() != 3 || k.len() != 3 || k != v || q[0] != k[0] || q[2] != k[2] {
            bail!("attention: expected q [B, Nq, D] and k = v [B, Nk, D], found q {q:?}, k {k:?}, v {v:?}");
        }
        let h = self.heads;
        if h == 0 || q[2] % h != 0 {
            bail!("attention: width {} is not a multiple of {h} heads", q[2]);
        }
        let dims = Dims {
            b: q[0],
            h,
            nq: q[1],
            nk: k[1],
            dh: q[2] / h,
        };
        if !self.mask.is_empty() && self.mask.len() != dims.nq * dims.nk {
            bail!(
                "attention: mask has {} elements, expected [{}, {}]",
                self.mask.len(),
                dims.nq,
                dims.nk
            );
        }
        Ok(dims)
    }

    /// Probabilities of one (image, head) pair into `p` [Nq, Nk]: softmax(scale q k^T + mask).
    fn probabilities(&self, dm: Dims, bh: usize, q: &[f32], k: &[f32], p: &mut [f32]) {
        let (b, h) = (bh / dm.h, bh % dm.h);
        let d = dm.d();
        // SAFETY: q and k are [B, N, D] slices; the head's columns h*dh..(h+1)*dh of image b lie
        // inside them; p has Nq * Nk elements.
        unsafe {
            let qh = q.as_ptr().add(b * dm.nq * d + h * dm.dh);
            let kh = k.as_ptr().add(b * dm.nk * d + h * dm.dh);
            dm.head_scores(qh, kh, p, self.scale);
        }
        kernels::softmax_inplace(p, &self.mask, dm.nk);
    }

    /// Inference in a bf16 scope on AMX: pair `bh`'s `softmax(scale q k^T + mask) v` with bf16
    /// products (`iuf_bf16::Bf16Cpu::head_scores` / `head_apply`). Between them the softmax's
    /// exponentials are computed in f32 and written straight into the product's bf16 operand;
    /// the division by their sum is applied to the product's rows (dh values instead of Nk).
    #[allow(clippy::too_many_arguments)]
    fn head_bf16(
        &self,
        cpu: iuf_bf16::Bf16Cpu,
        dm: Dims,
        bh: usize,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        out: SharedMut,
    ) {
        thread_local! {
            /// The head's buffers and the reciprocal softmax sums of its rows.
            static SCRATCH: std::cell::RefCell<(iuf_bf16::HeadScratch, Vec<f32>)> =
                std::cell::RefCell::new(Default::default());
        }
        let (b, h) = (bh / dm.h, bh % dm.h);
        let d = dm.d();
        fn head(x: &[f32], b: usize, n: usize, d: usize, col: usize) -> iuf_bf16::Rows<'_> {
            iuf_bf16::Rows {
                data: &x[b * n * d + col..(b + 1) * n * d],
                rs: d,
            }
        }
        let col = h * dm.dh;
        let dims = iuf_bf16::HeadDims {
            nq: dm.nq,
            nk: dm.nk,
            dh: dm.dh,
        };
        SCRATCH.with(|scratch| {
            let (scratch, inv) = &mut *scratch.borrow_mut();
            inv.resize(dm.nq, 0.0);
            let hs = cpu.head_scores(
                dims,
                head(q, b, dm.nq, d, col),
                head(k, b, dm.nk, d, col),
                self.scale,
                scratch,
            );
            for (i, inv) in inv.iter_mut().enumerate() {
                let mask = if self.mask.is_empty() {
                    &[][..]
                } else {
                    &self.mask[i * dm.nk..(i + 1) * dm.nk]
                };
                // The exponentials as bf16 pairs; row i of the product is divided by their sum.
                let sum = kernels::softmax_exp_pairs(
                    cpu,
                    &hs.s[i * hs.ld..i * hs.ld + dm.nk],
                    mask,
                    &mut hs.p[i * hs.ldp..(i + 1) * hs.ldp],
                );
                *inv = 1.0 / sum;
            }
            let (o, ldo) = cpu.head_apply(head(v, b, dm.nk, d, col), scratch);
            for (i, &inv) in inv.iter().enumerate() {
                let src = &o[i * ldo..i * ldo + dm.dh];
                let dst = out.at((b * dm.nq + i) * d + col);
                for (c, x) in src.iter().enumerate() {
                    // SAFETY: pair (b, h) writes only its own columns h*dh..(h+1)*dh of image
                    // b's rows of `out` ([B, Nq, D]); the memory may not be initialised yet, so
                    // it is written through the pointer, never read or borrowed.
                    unsafe { dst.add(c).write(x * inv) };
                }
            }
        });
    }

    /// `p` times the dropout multipliers of pair `bh` into `out`.
    fn dropped(&self, dm: Dims, bh: usize, p: &[f32], out: &mut [f32], drop: AttentionDropout) {
        let start = (bh * dm.nq * dm.nk) as u64;
        kernels::dropout_mask(drop.seed, start, drop.p, out);
        out.iter_mut().zip(p).for_each(|(o, p)| *o *= p);
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "iuf-attention"
    }

    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dm = self.dims(lq, lk, lv)?;
        let q = f32_slice(sq, lq, "attention q")?;
        let k = f32_slice(sk, lk, "attention k")?;
        let v = f32_slice(sv, lv, "attention v")?;
        let d = dm.d();
        let pairs = dm.b * dm.h;
        let pn = dm.nq * dm.nk;
        if let (KeepProbs::No, None, Some(cpu), true) = (
            self.keep_probs,
            self.dropout,
            iuf_bf16::active().filter(|c| c.amx()),
            pn > 0 && pairs > 0,
        ) {
            // Every element is written by its (image, head) pair, so the output is not zeroed
            // first: written through the spare capacity, its length set once all pairs are done.
            let len = dm.b * dm.nq * d;
            let mut out: Vec<f32> = Vec::with_capacity(len);
            let out_ptr = SharedMut(out.as_mut_ptr());
            (0..pairs)
                .into_par_iter()
                .for_each(|bh| self.head_bf16(cpu, dm, bh, q, k, v, out_ptr));
            // SAFETY: the pairs (b, h) cover every row of every image and every column block
            // h*dh..(h+1)*dh of D = H * dh, so all `len` elements have been written.
            unsafe { out.set_len(len) };
            return Ok((CpuStorage::F32(out), lq.shape().clone()));
        }
        let mut out = vec![0f32; dm.b * dm.nq * d];
        let out_ptr = SharedMut(out.as_mut_ptr());
        let keep = self.keep_probs == KeepProbs::Yes;
        let mut probs = if keep {
            vec![0f32; pairs * pn]
        } else {
            Vec::new()
        };

        let head = |bh: usize, p: &mut [f32], scratch: &mut Vec<f32>| {
            self.probabilities(dm, bh, q, k, p);
            let weights: &[f32] = match self.dropout {
                Some(drop) => {
                    scratch.resize(pn, 0.0);
                    self.dropped(dm, bh, p, scratch, drop);
                    scratch
                }
                None => p,
            };
            let (b, h) = (bh / dm.h, bh % dm.h);
            // SAFETY: pair (b, h) writes only its own columns h*dh..(h+1)*dh of image b's rows.
            unsafe {
                let vh = v.as_ptr().add(b * dm.nk * d + h * dm.dh);
                dm.head_weighted(
                    weights,
                    false,
                    vh,
                    out_ptr.at(b * dm.nq * d + h * dm.dh),
                    1.0,
                );
            }
        };
        if pn > 0 && pairs > 0 {
            if keep {
                probs
                    .par_chunks_mut(pn)
                    .enumerate()
                    .for_each_init(Vec::new, |scratch, (bh, p)| head(bh, p, scratch));
            } else {
                (0..pairs).into_par_iter().for_each_init(
                    || (vec![0f32; pn], Vec::new()),
                    |(p, scratch), bh| head(bh, p, scratch),
                );
            }
        }
        if keep {
            *self.probs.lock().expect("attention probabilities lock") = Some(probs);
        }
        Ok((CpuStorage::F32(out), lq.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dm = self.dims(q.layout(), k.layout(), v.layout())?;
        let stored = self
            .probs
            .lock()
            .expect("attention probabilities lock")
            .take();
        let d = dm.d();
        let pn = dm.nq * dm.nk;
        let mut dq = vec![0f32; q.elem_count()];
        let mut dk = vec![0f32; k.elem_count()];
        let mut dv = vec![0f32; v.elem_count()];
        let (dq_ptr, dk_ptr, dv_ptr) = (
            SharedMut(dq.as_mut_ptr()),
            SharedMut(dk.as_mut_ptr()),
            SharedMut(dv.as_mut_ptr()),
        );
        with_f32(q, "attention backward q", |qs| {
            with_f32(k, "attention backward k", |ks| {
                with_f32(v, "attention backward v", |vs| {
                    with_f32(grad, "attention backward grad", |go| {
                        let pair = |bh: usize, p: &[f32], dp: &mut Vec<f32>, pd: &mut Vec<f32>| {
                            let (b, h) = (bh / dm.h, bh % dm.h);
                            let qo = b * dm.nq * d + h * dm.dh;
                            let ko = b * dm.nk * d + h * dm.dh;
                            dp.resize(pn, 0.0);
                            let weights: &[f32] = match self.dropout {
                                Some(drop) => {
                                    pd.resize(pn, 0.0);
                                    self.dropped(dm, bh, p, pd, drop);
                                    pd
                                }
                                None => p,
                            };
                            // SAFETY (all four products): the operands are the [B, N, D]
                            // slices at this pair's head columns and the pair's own Nq x Nk
                            // buffers; each pair writes only its own columns of dq, dk, dv.
                            unsafe {
                                // dV = W^T dO, W the (dropped-out) weights.
                                let goh = go.as_ptr().add(qo);
                                dm.head_weighted(weights, true, goh, dv_ptr.at(ko), 1.0);
                                // dW = dO V^T.
                                dm.head_scores(goh, vs.as_ptr().add(ko), dp, 1.0);
                            }
                            if let Some(drop) = self.dropout {
                                // dP = dW * M: reuse the mask stream (pd holds P * M; rebuild M).
                                let start = (bh * pn) as u64;
                                kernels::dropout_mask(drop.seed, start, drop.p, pd);
                                dp.iter_mut().zip(pd.iter()).for_each(|(g, m)| *g *= m);
                            }
                            // dS = P * (dP - rowsum(dP * P)).
                            kernels::softmax_bwd_inplace(p, dp, dm.nk);
                            // SAFETY: as above.
                            unsafe {
                                // dQ = scale dS K.
                                let (kh, qh) = (ks.as_ptr().add(ko), qs.as_ptr().add(qo));
                                dm.head_weighted(dp, false, kh, dq_ptr.at(qo), self.scale);
                                // dK = scale dS^T Q.
                                dm.head_weighted(dp, true, qh, dk_ptr.at(ko), self.scale);
                            }
                        };
                        let pairs = dm.b * dm.h;
                        if pn == 0 || pairs == 0 {
                            return Ok(());
                        }
                        match &stored {
                            Some(probs) => probs.par_chunks(pn).enumerate().for_each_init(
                                || (Vec::new(), Vec::new()),
                                |(dp, pd), (bh, p)| pair(bh, p, dp, pd),
                            ),
                            // A second backward through the same graph: recompute P.
                            None => (0..pairs).into_par_iter().for_each_init(
                                || (vec![0f32; pn], Vec::new(), Vec::new()),
                                |(p, dp, pd), bh| {
                                    self.probabilities(dm, bh, qs, ks, p);
                                    pair(bh, p, dp, pd)
                                },
                            ),
                        }
                        Ok(())
                    })
                })
            })
        })?;
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), dev)?),
            Some(Tensor::from_vec(dk, k.shape(), dev)?),
            Some(Tensor::from_vec(dv, v.shape(), dev)?),
        ))
    }
}
