//! The products: [`Bf16Cpu::matmul`] and its parallel, epilogue and new-`Vec` forms, the fused
//! feed-forward block ([`Bf16Cpu::ffn_par_vec`]), and the two kernels' blocking for the caches
//! (rows of A converted block by block, B's panels walked, C written through a `RawOut`).

use std::cell::RefCell;

use crate::convert::{convert_row, convert_row_into};
use crate::kernel::{amx, avx512};
use crate::out::{new_filled, RawOut};
use crate::pack::{aligned, check_cover};
use crate::{
    Bf16Cpu, Epilogue, Lhs, Out, PackedB, AMX_B_BYTES, AMX_KC, AMX_NB, FFN_ROWS, KC, KT, MC, MR, NR,
};

thread_local! {
    /// Scratch for the packed A block (reused, so no page faults per call).
    static A_BLOCK: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    /// Scratch for the AMX kernel's blocks of C (reused likewise).
    static C_BLOCK: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

impl Bf16Cpu {
    /// `C = A B` (overwriting C), single-threaded. `m` rows; `k` and `n` come from `b`. Panics
    /// when a slice is too short for its shape and strides.
    pub fn matmul(self, m: usize, a: Lhs<'_>, b: &PackedB, c: Out<'_>) {
        check_cover("C", c.data.len(), (m, b.n), (c.rs, 1));
        check_cover("A", a.data.len(), (m, b.k), (a.rs, a.cs));
        let out = RawOut {
            ptr: c.data.as_mut_ptr(),
            rs: c.rs,
        };
        // SAFETY: `c.data` covers m rows of n columns at stride c.rs (checked) and is borrowed
        // mutably for the call.
        unsafe { self.matmul_rows(0..m, a, b, out, None) }
    }

    /// [`Bf16Cpu::matmul`] with the rows split over the rayon pool (one block per thread, whole
    /// tiles), each block a single-threaded product.
    pub fn matmul_par(self, m: usize, a: Lhs<'_>, b: &PackedB, c: Out<'_>) {
        self.matmul_par_then(m, a, b, c, None)
    }

    /// [`Bf16Cpu::matmul_par`], then `ep` on every row of C (`C = act(A B + bias)`). Panics when
    /// the bias does not have one value per column.
    pub fn matmul_par_then(
        self,
        m: usize,
        a: Lhs<'_>,
        b: &PackedB,
        c: Out<'_>,
        ep: Option<Epilogue<'_>>,
    ) {
        check_cover("C", c.data.len(), (m, b.n), (c.rs, 1));
        let out = RawOut {
            ptr: c.data.as_mut_ptr(),
            rs: c.rs,
        };
        // SAFETY: as in `matmul`.
        unsafe { self.matmul_par_raw(m, a, b, out, ep) }
    }

    /// `act(A B + bias)` (with `ep`, else `A B`) in a new `Vec` of `m * n` values, row `i` at
    /// `i * n`, on the rayon pool as [`Bf16Cpu::matmul_par_then`] and with the same values, but
    /// without filling the output with zeros first (every element is written exactly once by the
    /// product). Panics as that function does.
    pub fn matmul_par_vec(
        self,
        m: usize,
        a: Lhs<'_>,
        b: &PackedB,
        ep: Option<Epilogue<'_>>,
    ) -> Vec<f32> {
        // SAFETY: the product writes every element of its m rows of n (and reads only what it
        // wrote) or panics.
        unsafe { new_filled(m, b.n, |out| self.matmul_par_raw(m, a, b, out, ep)) }
    }

    /// A feed-forward block, `act(relu(A B1 + bias1) B2 + bias2)` (`ep2` for the second bias and
    /// activation, `None` for neither), in a new `Vec` of `m * b2.n()` values, without the hidden
    /// layer ever being written out whole: the rows go in blocks of [`FFN_ROWS`] over the rayon
    /// pool, and each block's hidden rows (f32, in a per-thread buffer that stays in cache) feed
    /// the second product at once. The values are those of the two products done one after the
    /// other ([`Bf16Cpu::matmul_par_vec`] twice). Panics unless `b1.n() == b2.k()`, or as those
    /// products do.
    pub fn ffn_par_vec(
        self,
        m: usize,
        a: Lhs<'_>,
        b1: &PackedB,
        bias1: &[f32],
        b2: &PackedB,
        ep2: Option<Epilogue<'_>>,
    ) -> Vec<f32> {
        use rayon::prelude::*;
        assert_eq!(b1.n, b2.k, "iuf-bf16: ffn inner widths");
        assert_eq!(bias1.len(), b1.n, "iuf-bf16: bias length against columns");
        if let Some(ep) = ep2 {
            assert_eq!(ep.bias.len(), b2.n, "iuf-bf16: bias length against columns");
        }
        check_cover("A", a.data.len(), (m, b1.k), (a.rs, a.cs));
        let hidden_n = b1.n;
        let ep1 = Epilogue {
            bias: bias1,
            relu: true,
        };
        thread_local! {
            /// The hidden rows of one block.
            static HIDDEN: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
        }
        let block = |out: RawOut, rows: std::ops::Range<usize>| {
            HIDDEN.with(|h| {
                let mut h = h.borrow_mut();
                let hidden = aligned(&mut h, rows.len() * hidden_n);
                let start = rows.start;
                let count = rows.len();
                // SAFETY: `hidden` holds count rows of hidden_n floats, owned by this thread; the
                // first product writes every one of them. Then rows start.. of the output, which
                // no other block touches (blocks are disjoint row ranges), get every element.
                unsafe {
                    let h_out = RawOut {
                        ptr: hidden.as_mut_ptr(),
                        rs: hidden_n,
                    };
                    self.matmul_rows(rows, a, b1, h_out, Some(ep1));
                    let h_in = Lhs {
                        data: hidden,
                        rs: hidden_n,
                        cs: 1,
                    };
                    self.matmul_rows(0..count, h_in, b2, out.at_row(start), ep2);
                }
            })
        };
        let parts: Vec<std::ops::Range<usize>> = (0..m)
            .step_by(FFN_ROWS)
            .map(|start| start..(start + FFN_ROWS).min(m))
            .collect();
        // SAFETY: the blocks cover rows 0..m, each writing all n columns of its rows.
        unsafe {
            new_filled(m, b2.n, |out| {
                if rayon::current_num_threads() <= 1 || parts.len() <= 1 {
                    parts.into_iter().for_each(|rows| block(out, rows));
                } else {
                    parts.into_par_iter().for_each(|rows| block(out, rows));
                }
            })
        }
    }

    /// The body of [`Bf16Cpu::matmul_par_then`].
    ///
    /// # Safety
    /// `c` must be valid for writes (and reads of what was written) of m rows of n columns at
    /// its stride, and used by nothing else during the call.
    unsafe fn matmul_par_raw(
        self,
        m: usize,
        a: Lhs<'_>,
        b: &PackedB,
        c: RawOut,
        ep: Option<Epilogue<'_>>,
    ) {
        use rayon::prelude::*;
        if let Some(ep) = ep {
            assert_eq!(ep.bias.len(), b.n, "iuf-bf16: bias length against columns");
        }
        check_cover("A", a.data.len(), (m, b.k), (a.rs, a.cs));
        let threads = rayon::current_num_threads().max(1);
        let tile = if self.amx() { 2 * KT } else { MR };
        let block = m.div_ceil(threads).next_multiple_of(tile).max(2 * tile);
        if threads <= 1 || m <= block {
            // SAFETY: the caller's contract.
            return unsafe { self.matmul_rows(0..m, a, b, c, ep) };
        }
        // Blocks of whole output rows: disjoint row ranges of C.
        let parts: Vec<std::ops::Range<usize>> = (0..m)
            .step_by(block)
            .map(|start| start..(start + block).min(m))
            .collect();
        parts.into_par_iter().for_each(|rows| {
            let start = rows.start;
            // SAFETY: rows start.. of C, disjoint from every other part's (caller's contract).
            unsafe { self.matmul_rows(rows, a, b, c.at_row(start), ep) };
        });
    }

    /// Rows `rows` of the product into `c`, whose row 0 is product row `rows.start`.
    ///
    /// # Safety
    /// `c` must be valid for writes (and reads of what was written) of `rows.len()` rows of n
    /// columns at its stride, and used by nothing else during the call.
    unsafe fn matmul_rows(
        self,
        rows: std::ops::Range<usize>,
        a: Lhs<'_>,
        b: &PackedB,
        c: RawOut,
        ep: Option<Epilogue<'_>>,
    ) {
        let (k, n) = (b.k, b.n);
        check_cover("A", a.data.len(), (rows.end, k), (a.rs, a.cs));
        let rows_here = rows.len();
        if rows_here == 0 || n == 0 {
            return;
        }
        if k == 0 {
            for r in 0..rows_here {
                // SAFETY: row r of the caller's C; written (zeros) before the slice is made.
                let row = unsafe {
                    for col in 0..n {
                        c.ptr.add(r * c.rs + col).write(0.0);
                    }
                    c.row_mut(r, 0, n)
                };
                if let Some(ep) = ep {
                    ep.apply(row, 0);
                }
            }
            return;
        }
        if self.amx() {
            // SAFETY: the caller's contract.
            unsafe { self.matmul_rows_amx(rows, a, b, c, ep) }
        } else {
            // SAFETY: the caller's contract.
            unsafe { self.matmul_rows_avx512(rows.clone(), a, b, c) };
            if let Some(ep) = ep {
                for r in 0..rows_here {
                    // SAFETY: every element of the row was written by the product.
                    ep.apply(unsafe { c.row_mut(r, 0, n) }, 0);
                }
            }
        }
    }

    /// AVX-512 kernel: 14 x 32 register tiles, k in blocks of [`KC`] pairs.
    ///
    /// # Safety
    /// As for `matmul_rows` (the first k block writes every element of C, later ones read it).
    unsafe fn matmul_rows_avx512(
        self,
        rows: std::ops::Range<usize>,
        a: Lhs<'_>,
        b: &PackedB,
        c: RawOut,
    ) {
        let (k, n, kpp) = (b.k, b.n, b.kpp);
        let rows_here = rows.len();
        A_BLOCK.with(|buf| {
            let mut buf = buf.borrow_mut();
            for ic in (0..rows_here).step_by(MC) {
                let mrows = (rows_here - ic).min(MC);
                let panels_a = mrows.div_ceil(MR);
                for pc in (0..kpp).step_by(KC) {
                    let kc = (kpp - pc).min(KC);
                    let need = panels_a * kc * MR;
                    if buf.len() < need {
                        buf.resize(need, 0);
                    }
                    let block = &mut buf[..need];
                    block.fill(0);
                    for (r, panel) in block.chunks_mut(kc * MR).enumerate() {
                        for i in 0..(mrows - r * MR).min(MR) {
                            let row = rows.start + ic + r * MR + i;
                            convert_row(self, a, k, row, pc, kc, |p, v| panel[p * MR + i] = v);
                        }
                    }
                    for jp in 0..n.div_ceil(NR) {
                        let cols = (n - jp * NR).min(NR);
                        let b_panel = &b.lanes()[(jp * kpp + pc) * NR..(jp * kpp + pc + kc) * NR];
                        for (ip, a_panel) in block.chunks(kc * MR).enumerate() {
                            let r = ic + ip * MR;
                            let tile_rows = (rows_here - r).min(MR);
                            // SAFETY: a_panel holds kc * MR lanes, b_panel kc * NR; C's rows
                            // r..r + tile_rows, columns jp * NR..+cols are the caller's; the
                            // first k block (pc == 0) writes all of them, later ones read them
                            // back; the token proves the CPU features.
                            unsafe {
                                avx512::tile(
                                    kc,
                                    a_panel.as_ptr(),
                                    b_panel.as_ptr(),
                                    c.ptr.add(r * c.rs + jp * NR),
                                    c.rs,
                                    tile_rows,
                                    cols,
                                    pc > 0,
                                );
                            }
                        }
                    }
                }
            }
        });
    }

    /// AMX kernel, blocked for the caches: column blocks of B of at most [`AMX_NB`] columns and
    /// [`AMX_B_BYTES`] (all of k: the block stays in L2), in them blocks of 32 rows of A, in them
    /// k blocks of [`AMX_KC`] pairs (the rows converted to bf16 pairs, 16 KiB, in L1) times every
    /// 32-column panel of the B block. Each 32 x 32 block of C is four 16 x 16 f32 tiles kept in
    /// a 64-byte aligned per-thread scratch (a tile row is one cache line there, which C's rows
    /// need not be) across the k blocks; after the last one the whole 32-row strip of the
    /// column block is copied to C row by row (one contiguous run per row, better for the
    /// hardware prefetcher than 32 rows of 128 bytes per block), the epilogue applied on the way
    /// (so C is only written, once, and never read).
    ///
    /// # Safety
    /// As for `matmul_rows`.
    unsafe fn matmul_rows_amx(
        self,
        rows: std::ops::Range<usize>,
        a: Lhs<'_>,
        b: &PackedB,
        c: RawOut,
        ep: Option<Epilogue<'_>>,
    ) {
        let (k, n, kpp) = (b.k, b.n, b.kpp);
        let rows_here = rows.len();
        const MB: usize = 2 * KT;
        let panels = n.div_ceil(NR);
        let panel_bytes = kpp * NR * 4;
        let panels_per_block = (AMX_B_BYTES / panel_bytes)
            .clamp(1, AMX_NB / NR)
            .min(panels);
        A_BLOCK.with(|abuf| {
            C_BLOCK.with(|cbuf| {
                let mut abuf = abuf.borrow_mut();
                let mut cbuf = cbuf.borrow_mut();
                // Each block starts on a 64-byte boundary (one cache line per tile row).
                let ablock = aligned(&mut abuf, MB * kpp.min(AMX_KC));
                let cblock = aligned(&mut cbuf, panels_per_block * MB * NR).as_mut_ptr();
                let relu = ep.is_some_and(|e| e.relu);
                // SAFETY: the token says AMX is present and the tile state permitted
                // (`amx::enable`).
                unsafe { amx::configure() };
                for jc in (0..panels).step_by(panels_per_block) {
                    let jend = (jc + panels_per_block).min(panels);
                    for ib in (0..rows_here).step_by(MB) {
                        let mrows = (rows_here - ib).min(MB);
                        for pc in (0..kpp).step_by(AMX_KC) {
                            // kpp and AMX_KC are multiples of KT, so is kc.
                            let kc = (kpp - pc).min(AMX_KC);
                            let last = pc + kc == kpp;
                            let block = &mut ablock[..MB * kc];
                            for (i, dst) in block.chunks_mut(kc).enumerate() {
                                if i < mrows {
                                    convert_row_into(self, a, k, rows.start + ib + i, pc, dst);
                                } else {
                                    dst.fill(0);
                                }
                            }
                            for jp in jc..jend {
                                let b_block =
                                    &b.lanes()[(jp * kpp + pc) * NR..(jp * kpp + pc + kc) * NR];
                                let slot = jp - jc;
                                // SAFETY: block is MB rows of kc pairs, b_block kc rows of NR
                                // lanes, kc a multiple of KT; the slot is MB rows of NR floats,
                                // written by the first k block before later ones read it; tiles
                                // configured above.
                                unsafe {
                                    amx::block(
                                        kc,
                                        block.as_ptr(),
                                        b_block.as_ptr(),
                                        cblock.add(slot * MB * NR),
                                        NR,
                                        pc > 0,
                                    )
                                };
                            }
                            if last {
                                let cols = n.min(jend * NR) - jc * NR;
                                let bias = ep.map(|e| &e.bias[jc * NR..jc * NR + cols]);
                                // SAFETY: the strip's blocks were written by the last k block
                                // above; C's rows ib..ib + mrows, columns jc * NR..+cols are the
                                // caller's; the token proves avx512f.
                                unsafe {
                                    avx512::store_strip(
                                        cblock,
                                        c.ptr.add(ib * c.rs + jc * NR),
                                        c.rs,
                                        0..mrows,
                                        cols,
                                        bias,
                                        relu,
                                    )
                                };
                            }
                        }
                    }
                }
                // SAFETY: as for `configure`.
                unsafe { amx::release() };
            })
        });
    }
}
