//! bf16 x bf16 -> f32 matrix products on CPUs with AVX-512 BF16 (`vdpbf16ps`).
//!
//! `C [m, n] = A [m, k] B [k, n]` with both inputs rounded to bf16 (round to nearest even) and every
//! product accumulated in f32. One `vdpbf16ps` multiplies 32 bf16 pairs and adds them into 16 f32
//! lanes, twice the multiply-adds of an f32 FMA, so on the same hardware the peak is twice f32's.
//! Neither candle 0.11 (its bf16 matmul widens to f32) nor gemm 0.19 (f16 only, no bf16 kernel) uses
//! this instruction.
//!
//! Layouts: `vdpbf16ps` works on pairs of consecutive `k` (one 32-bit lane holds `x[2p]` in its low
//! half and `x[2p + 1]` in its high half). [`PackedB`] holds the right operand as panels of
//! [`NR`] columns, each `k / 2` (rounded up) rows of 32 lanes: pack it once (at load time for weights).
//! The left operand is converted and packed block by block during the product, from f32 with any
//! strides (its cost is `1 / n` of the multiply-adds).
//! Odd `k` is padded with a zero pair half; rows and columns past the tile are padded with zeros and
//! never stored.
//!
//! Tiling: a 14 x 32 register tile (28 accumulators), `k` in blocks of [`KC`] pairs (the B panel,
//! 16 KiB, stays in L1 while the A micro-panels of one row block stream from L2), rows in blocks of
//! [`MC`]. [`matmul_par`] splits the rows over the rayon pool, one single-threaded product per block.
//!
//! Everything needs a [`Bf16Cpu`] token, which only [`Bf16Cpu::detect`] makes, and only when the CPU
//! has `avx512f` and `avx512bf16`: the unsafe kernel is unreachable elsewhere.

use std::cell::RefCell;

mod attention;
pub use attention::{HeadDims, HeadScores, HeadScratch, Rows};

/// Rows of the register tile.
pub const MR: usize = 14;
/// Columns of the register tile (two 16-lane vectors).
pub const NR: usize = 32;
/// Pairs of `k` per block.
pub const KC: usize = 128;
/// Rows per block of [`Bf16Cpu::ffn_par_vec`], whole 32-row AMX blocks: the hidden rows of a
/// block (64 x 1024 f32 = 256 KiB for the paper's FFN) stay in L2 beside both weights.
pub const FFN_ROWS: usize = 64;
/// Rows per block of the left operand (whole micro-panels).
pub const MC: usize = 14 * MR;

/// Proof that this CPU runs the bf16 kernels (x86-64 with AVX-512 F and BF16), and whether it also
/// runs the AMX one (AMX-TILE and AMX-BF16, with the kernel's permission to use the tile state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bf16Cpu {
    amx: bool,
}

impl Bf16Cpu {
    /// The token when the CPU supports the kernel, `None` elsewhere (other CPUs, other arches).
    /// The first call asks Linux for the AMX tile state (once per process).
    pub fn detect() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bf16")
            {
                static AMX: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
                let amx = *AMX.get_or_init(amx::enable);
                return Some(Self { amx });
            }
        }
        None
    }

    /// Whether products run on AMX tiles (`tdpbf16ps`) rather than AVX-512 (`vdpbf16ps`).
    pub fn amx(self) -> bool {
        self.amx
    }

    /// The tiles' register-only rate, for the fraction-of-peak figures: runs `reps` rounds of four
    /// independent 16 x 16 x 32 `tdpbf16ps` on this thread (no memory operands) and returns the
    /// FLOPs done (2 per multiply-add), `None` without AMX. Time it on every thread at once for
    /// the machine's tile peak.
    pub fn amx_register_loop(self, reps: usize) -> Option<f64> {
        if !self.amx {
            return None;
        }
        // SAFETY: the token says AMX is present and the tile state permitted; the loop runs
        // between configure and release on this thread.
        unsafe {
            amx::configure();
            amx::register_loop(reps);
            amx::release();
        }
        // Per instruction 16 x 16 outputs, each a sum of 16 pairs (32 products).
        Some(reps.max(1) as f64 * 4.0 * (16 * 16 * 32 * 2) as f64)
    }

    /// The same CPU, restricted to the AVX-512 kernel (tests and benchmarks of that kernel).
    pub fn without_amx(self) -> Self {
        Self { amx: false }
    }
}

thread_local! {
    /// The bf16 scope of this thread: the kernel token and the scope's generation.
    static SCOPE: std::cell::Cell<Option<(Bf16Cpu, u64)>> = const { std::cell::Cell::new(None) };
}

/// Outermost scopes opened so far (process-wide).
static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Runs `f` with bf16 inference on (`Some`) or off (`None`) for the code that asks [`active`] on
/// this thread (the model's linear layers and the patch memory's distance products), and restores
/// the previous setting afterwards (also on panic).
///
/// A scope is for inference: the weights must not change inside it. Layers may keep bf16 copies
/// of their weights tagged with the scope's [`generation`] and reuse them only within that scope,
/// so weights trained between two scopes are packed again.
pub fn scoped<R>(cpu: Option<Bf16Cpu>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<(Bf16Cpu, u64)>);
    impl Drop for Restore {
        fn drop(&mut self) {
            SCOPE.with(|s| s.set(self.0));
        }
    }
    let prev = SCOPE.with(|s| s.get());
    let next = cpu.map(|c| match prev {
        Some((_, g)) => (c, g),
        None => (
            c,
            GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1,
        ),
    });
    let _restore = Restore(prev);
    SCOPE.with(|s| s.set(next));
    f()
}

/// The kernel when this thread is inside a bf16 [`scoped`] call.
pub fn active() -> Option<Bf16Cpu> {
    SCOPE.with(|s| s.get()).map(|(c, _)| c)
}

/// The generation of this thread's bf16 scope (unique per outermost scope), `None` outside one.
pub fn generation() -> Option<u64> {
    SCOPE.with(|s| s.get()).map(|(_, g)| g)
}

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

fn pair(lo: f32, hi: f32) -> u32 {
    f32_to_bf16_bits(lo) as u32 | (f32_to_bf16_bits(hi) as u32) << 16
}

/// Checks that `len` elements cover a `rows x cols` matrix with strides `(rs, cs)`.
fn check_cover(what: &str, len: usize, (rows, cols): (usize, usize), (rs, cs): (usize, usize)) {
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
    k: usize,
    n: usize,
    /// Pairs per panel: `ceil(k / 2)` rounded up to a multiple of [`KT`] (zero pairs past k).
    kpp: usize,
    /// Panel `j`, pair `p`, lane `c`: at `off + (j * kpp + p) * NR + c`.
    data: Vec<u32>,
    /// Start of the panels in `data`, chosen so that they begin on a 64-byte boundary (every tile
    /// row then is one cache line). A clone keeps the offset, so it may lose the alignment, not
    /// the values.
    off: usize,
}

/// Pairs of `k` per AMX tile (16 rows of 64 bytes).
pub const KT: usize = 16;

/// Pairs of `k` per block of the AMX kernel (a multiple of [`KT`]): 32 rows of A are 16 KiB (L1).
pub const AMX_KC: usize = 128;

/// Most columns per block of the AMX kernel (a multiple of [`NR`]); the block of B (all of k,
/// at most [`AMX_B_BYTES`]) is held in L2 while every 32-row block of A passes over it.
pub const AMX_NB: usize = 1024;

/// Bytes of B per column block of the AMX kernel (all of k, kept in L2), unless one panel of
/// [`NR`] columns is larger.
pub const AMX_B_BYTES: usize = 1 << 20;

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
    fn lanes(&self) -> &[u32] {
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

/// What happens to each output row after the product: `c[col] = act(c[col] + bias[col])`, with
/// `act` ReLU or the identity (a linear layer's bias and activation, applied while the block is
/// in cache instead of in a pass of its own).
#[derive(Debug, Clone, Copy)]
pub struct Epilogue<'a> {
    /// One value per column of C.
    pub bias: &'a [f32],
    /// ReLU after the bias (else the identity).
    pub relu: bool,
}

impl Epilogue<'_> {
    /// Applies to `row`, whose element `i` is column `col0 + i` of C.
    fn apply(self, row: &mut [f32], col0: usize) {
        let bias = &self.bias[col0..col0 + row.len()];
        if self.relu {
            for (v, &b) in row.iter_mut().zip(bias) {
                let x = *v + b;
                *v = if x > 0.0 { x } else { 0.0 };
            }
        } else {
            for (v, &b) in row.iter_mut().zip(bias) {
                *v += b;
            }
        }
    }
}

/// The output `C [m, n]`: `data[row * rs + col]` (columns contiguous).
pub struct Out<'a> {
    pub data: &'a mut [f32],
    pub rs: usize,
}

/// Where the kernels write C: element `(row, col)` at `ptr + row * rs + col`. Made only by the
/// public entry points, from an [`Out`] whose length was checked or from a `Vec`'s spare capacity;
/// the kernels write every element of their rows before they read it back, so the memory behind
/// it may start uninitialised.
#[derive(Clone, Copy)]
struct RawOut {
    ptr: *mut f32,
    rs: usize,
}

// SAFETY: a `RawOut` is only a place to write; the products give each thread disjoint rows.
unsafe impl Send for RawOut {}
// SAFETY: as above.
unsafe impl Sync for RawOut {}

impl RawOut {
    /// The same output from row `r` on.
    fn at_row(self, r: usize) -> Self {
        Self {
            ptr: self.ptr.wrapping_add(r * self.rs),
            rs: self.rs,
        }
    }

    /// Row `r`, columns `col0..col0 + len`, which must all have been written.
    ///
    /// # Safety
    /// The row must lie inside the caller's output, initialised, and not otherwise borrowed.
    unsafe fn row_mut<'x>(self, r: usize, col0: usize, len: usize) -> &'x mut [f32] {
        // SAFETY: the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(r * self.rs + col0), len) }
    }
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

/// A new `Vec` of `rows * rs` floats, row `i` at `i * rs`, written by `fill` through a [`RawOut`]
/// over its spare capacity instead of being zeroed first.
///
/// # Safety
/// `fill` must write every one of the `rows * rs` elements (and read only what it wrote), or
/// panic, which leaves the `Vec` empty.
unsafe fn new_filled(rows: usize, rs: usize, fill: impl FnOnce(RawOut)) -> Vec<f32> {
    let len = rows
        .checked_mul(rs)
        .expect("iuf-bf16: output size overflows");
    let mut v: Vec<f32> = Vec::with_capacity(len);
    fill(RawOut {
        ptr: v.spare_capacity_mut().as_mut_ptr().cast::<f32>(),
        rs,
    });
    // SAFETY: the spare capacity holds `len` floats owned by `v` and used by nothing else, and
    // the caller's contract says `fill` wrote every one of them.
    unsafe { v.set_len(len) };
    v
}

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
        let tile = if self.amx { 2 * KT } else { MR };
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
        if self.amx {
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
                                kernel::tile(
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
                                    kernel::store_strip(
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

/// Converts row `row` of A, pairs `pc..pc + dst.len()`, into `dst` (zero pairs past k).
fn convert_row_into(cpu: Bf16Cpu, a: Lhs<'_>, k: usize, row: usize, pc: usize, dst: &mut [u32]) {
    let k0 = 2 * pc;
    let k1 = (2 * (pc + dst.len())).min(k);
    let mut filled = 0;
    if k0 < k1 {
        filled = (k1 - k0).div_ceil(2);
        let base = row * a.rs;
        if a.cs == 1 {
            kernel::convert_into(cpu, &a.data[base + k0..base + k1], &mut dst[..filled]);
        } else {
            let tmp: Vec<f32> = (k0..k1).map(|kk| a.data[base + kk * a.cs]).collect();
            kernel::convert_into(cpu, &tmp, &mut dst[..filled]);
        }
    }
    dst[filled..].fill(0);
}

/// Converts row `row` of A, pairs `pc..pc + kc` (zero past k), calling `put(p - pc, pair)` for
/// every pair that holds at least one element of A (the caller zero-fills the rest).
fn convert_row(
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
    if k0 >= k1 {
        return;
    }
    let base = row * a.rs;
    if a.cs == 1 {
        kernel::convert(cpu, &a.data[base + k0..base + k1], put);
    } else {
        let mut tmp = vec![0f32; k1 - k0];
        for (kk, t) in (k0..k1).zip(tmp.iter_mut()) {
            *t = a.data[base + kk * a.cs];
        }
        kernel::convert(cpu, &tmp, put);
    }
}

#[cfg(target_arch = "x86_64")]
mod kernel {
    use super::{Bf16Cpu, MR, NR};
    use std::arch::x86_64::*;

    /// Converts `src` into pairs, calling `put(p, pair)` for every pair
    /// `p < ceil(src.len() / 2)` (an odd tail is paired with zero).
    pub(super) fn convert(_cpu: Bf16Cpu, src: &[f32], mut put: impl FnMut(usize, u32)) {
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
    pub(super) fn convert_into(_cpu: Bf16Cpu, src: &[f32], dst: &mut [u32]) {
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
    pub(super) unsafe fn store_strip(
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
                    let mut v = _mm512_loadu_ps(src.add(p * 2 * super::KT * NR + i * NR + j));
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
    pub(super) unsafe fn tile(
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
}

#[cfg(not(target_arch = "x86_64"))]
mod kernel {
    use super::Bf16Cpu;

    // A `Bf16Cpu` cannot be made on other architectures, so these are never called.
    pub(super) fn convert(_cpu: Bf16Cpu, _src: &[f32], _put: impl FnMut(usize, u32)) {
        unreachable!("iuf-bf16: no kernel on this architecture")
    }

    pub(super) fn convert_into(_cpu: Bf16Cpu, _src: &[f32], _dst: &mut [u32]) {
        unreachable!("iuf-bf16: no kernel on this architecture")
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn store_strip(
        _src: *const f32,
        _dst: *mut f32,
        _ldc: usize,
        _rows: std::ops::Range<usize>,
        _cols: usize,
        _bias: Option<&[f32]>,
        _relu: bool,
    ) {
        unreachable!("iuf-bf16: no kernel on this architecture")
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn tile(
        _kc: usize,
        _a: *const u32,
        _b: *const u32,
        _c: *mut f32,
        _ldc: usize,
        _rows: usize,
        _cols: usize,
        _accumulate: bool,
    ) {
        unreachable!("iuf-bf16: no kernel on this architecture")
    }
}

#[cfg(target_arch = "x86_64")]
mod amx {
    use super::{KT, NR};
    use std::arch::asm;

    /// Every tile 16 rows of 64 bytes (palette 1): C tiles 0-3 (16 x 16 f32), A tiles 4-5
    /// (16 rows x 16 pairs), B tiles 6-7 (16 pairs x 16 columns).
    #[repr(C, align(64))]
    struct TileConfig([u8; 64]);

    static CONFIG: TileConfig = {
        let mut c = [0u8; 64];
        c[0] = 1;
        let mut t = 0;
        while t < 8 {
            c[16 + 2 * t] = 64;
            c[48 + t] = 16;
            t += 1;
        }
        TileConfig(c)
    };

    /// True when the CPU has AMX-TILE and AMX-BF16 and Linux grants this process the tile state
    /// (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`, needed once per process).
    pub(super) fn enable() -> bool {
        // Leaf 7 exists on every x86-64 CPU with AVX-512 (checked by the caller).
        let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
        let (amx_bf16, amx_tile) = (leaf7.edx & (1 << 22) != 0, leaf7.edx & (1 << 24) != 0);
        if !(amx_bf16 && amx_tile) {
            return false;
        }
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: a plain system call with integer arguments; it only changes this process's
        // permission to use the AMX register state.
        let r = unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            )
        };
        r == 0
    }

    /// Loads the tile configuration on this thread.
    ///
    /// # Safety
    /// `enable()` must have returned true in this process.
    pub(super) unsafe fn configure() {
        // SAFETY: CONFIG is a valid 64-byte palette-1 configuration; AMX is enabled (caller).
        unsafe { asm!("ldtilecfg [{0}]", in(reg) CONFIG.0.as_ptr(), options(nostack)) };
    }

    /// `reps` rounds of four independent `tdpbf16ps` on zeroed tiles, no memory operands.
    ///
    /// # Safety
    /// As for [`configure`], and tiles configured on this thread.
    pub(super) unsafe fn register_loop(reps: usize) {
        // SAFETY: tiles configured (caller); only tile registers and the counter are touched.
        unsafe {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                "tilezero tmm4",
                "tilezero tmm5",
                "tilezero tmm6",
                "tilezero tmm7",
                "2:",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                "dec {n}",
                "jnz 2b",
                n = inout(reg) reps.max(1) => _,
                options(nostack, nomem),
            )
        };
    }

    /// Releases the tile state of this thread.
    ///
    /// # Safety
    /// As for [`configure`].
    pub(super) unsafe fn release() {
        // SAFETY: AMX is enabled (caller); tilerelease only resets the tile state.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }

    /// `C [32, NR] (+)= A [32 rows, kc pairs] B [kc pairs, NR]`, A rows `kc` pairs apart, B rows
    /// `NR` lanes apart, C rows `ldc` floats apart; `accumulate` loads C first, else starts at 0.
    ///
    /// # Safety
    /// Tiles configured by [`configure`] on this thread; `a` valid for 32 * kc u32, `b` for
    /// kc * NR u32, `c` for reads and writes of 32 rows of NR floats at stride `ldc`; kc a
    /// multiple of KT.
    pub(super) unsafe fn block(
        kc: usize,
        a: *const u32,
        b: *const u32,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) {
        let a_stride = kc * 4;
        let b_stride = NR * 4;
        let c_stride = ldc * 4;
        // SAFETY: the four 16 x 16 quarters of C lie inside the block the caller vouches for.
        let (c0, c1, c2, c3) = unsafe { (c, c.add(KT), c.add(KT * ldc), c.add(KT * ldc + KT)) };
        if accumulate {
            // SAFETY: as above; tiles configured (caller).
            unsafe {
                asm!(
                    "tileloadd tmm0, [{c0} + {s}*1]",
                    "tileloadd tmm1, [{c1} + {s}*1]",
                    "tileloadd tmm2, [{c2} + {s}*1]",
                    "tileloadd tmm3, [{c3} + {s}*1]",
                    c0 = in(reg) c0,
                    c1 = in(reg) c1,
                    c2 = in(reg) c2,
                    c3 = in(reg) c3,
                    s = in(reg) c_stride,
                    options(nostack, readonly),
                )
            };
        } else {
            // SAFETY: tiles configured (caller).
            unsafe {
                asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    options(nostack, nomem)
                )
            };
        }
        for kt in (0..kc).step_by(KT) {
            // SAFETY: rows 0..16 and 16..32 of A at pairs kt..kt + 16 and pair rows kt..kt + 16 of
            // B (both column halves) lie inside the buffers the caller vouches for.
            unsafe {
                let a0 = a.add(kt);
                let a1 = a.add(KT * kc + kt);
                let b0 = b.add(kt * NR);
                let b1 = b.add(kt * NR + KT);
                asm!(
                    "tileloadd tmm4, [{a0} + {sa}*1]",
                    "tileloadd tmm6, [{b0} + {sb}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tileloadd tmm7, [{b1} + {sb}*1]",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tileloadd tmm5, [{a1} + {sa}*1]",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a0 = in(reg) a0,
                    a1 = in(reg) a1,
                    b0 = in(reg) b0,
                    b1 = in(reg) b1,
                    sa = in(reg) a_stride,
                    sb = in(reg) b_stride,
                    options(nostack, readonly),
                );
            }
        }
        // SAFETY: as for the loads.
        unsafe {
            asm!(
                "tilestored [{c0} + {s}*1], tmm0",
                "tilestored [{c1} + {s}*1], tmm1",
                "tilestored [{c2} + {s}*1], tmm2",
                "tilestored [{c3} + {s}*1], tmm3",
                c0 = in(reg) c0,
                c1 = in(reg) c1,
                c2 = in(reg) c2,
                c3 = in(reg) c3,
                s = in(reg) c_stride,
                options(nostack),
            );
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod amx {
    // A `Bf16Cpu` cannot be made on other architectures, so these are never called.
    pub(super) unsafe fn register_loop(_reps: usize) {}
    pub(super) unsafe fn configure() {}
    pub(super) unsafe fn release() {}
    pub(super) unsafe fn block(
        _kc: usize,
        _a: *const u32,
        _b: *const u32,
        _c: *mut f32,
        _ldc: usize,
        _accumulate: bool,
    ) {
        unreachable!("iuf-bf16: no kernel on this architecture")
    }
}
