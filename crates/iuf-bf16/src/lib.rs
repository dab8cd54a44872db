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
//! [`MC`]. [`Bf16Cpu::matmul_par`] splits the rows over the rayon pool, one single-threaded product per block.
//!
//! Everything needs a [`Bf16Cpu`] token, which only [`Bf16Cpu::detect`] makes, and only when the CPU
//! has `avx512f` and `avx512bf16`: the unsafe kernel is unreachable elsewhere.
//!
//! Files: [`Bf16Cpu`] (`cpu.rs`) and the per-thread inference scope (`scope.rs`); the scalar
//! conversion and the row conversion of A (`convert.rs`); the operands (`pack.rs`: [`PackedB`],
//! [`Lhs`]) and the output (`out.rs`: [`Out`], [`Epilogue`]); the products built on the kernels
//! (`driver.rs`: [`Bf16Cpu::matmul`] and the rest); the kernels themselves, the only `unsafe`
//! code with intrinsics or inline assembly (`kernel/avx512.rs`, `kernel/amx.rs`, and `kernel.rs`
//! with their stand-ins on other architectures); one attention head on AMX (`attention.rs`).

mod attention;
mod convert;
mod cpu;
mod driver;
mod kernel;
mod out;
mod pack;
mod scope;

pub use attention::{HeadDims, HeadScores, HeadScratch, Rows};
pub use convert::{bf16_bits_to_f32, f32_to_bf16_bits, round_bf16};
pub use cpu::Bf16Cpu;
pub use out::{Epilogue, Out};
pub use pack::{Lhs, PackedB};
pub use scope::{active, generation, scoped};

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
