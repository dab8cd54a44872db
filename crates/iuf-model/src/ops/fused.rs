//! Fused CPU layer norm and softmax as candle custom ops, with hand-written backward passes.
//!
//! candle's own fused `candle_nn::ops::{layer_norm, softmax_last_dim}` have no backward, and the
//! differentiable composition runs about ten single-threaded elementwise passes (forward) and twice
//! as many in the backward. These ops do one pass per row (two for the layer-norm backward), split
//! rows over the rayon pool, and use the AVX2 kernels of `kernels.rs`. Only f32 on CPU; `ops.rs`
//! routes everything else to the composition.

use super::kernels;
use candle_core::backend::BackendStorage;
use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor,
};
use gemm::Parallelism;
use rayon::prelude::*;

/// Rows per rayon task: a few tasks per thread so both cores stay busy, but at least 8 rows so the
/// per-task overhead stays small against a row of a few hundred floats.
fn rows_per_task(rows: usize) -> usize {
    let tasks = 4 * rayon::current_num_threads().max(1);
    rows.div_ceil(tasks).max(8)
}

/// The contiguous f32 slice a layout selects in a storage, or an error naming the op and operand.
pub(crate) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(v) => v.as_slice(),
        other => bail!("{what}: expected f32, found {:?}", other.dtype()),
    };
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!(
            "{what}: expected a contiguous tensor, found strides {:?}",
            l.stride()
        ),
    }
}

/// Runs `f` on the f32 data of a CPU tensor, made contiguous first.
pub(crate) fn with_f32<R>(
    t: &Tensor,
    what: &str,
    f: impl FnOnce(&[f32]) -> Result<R>,
) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => f(f32_slice(cpu, layout, what)?),
        _ => bail!(
            "{what}: expected a CPU tensor, found {:?}",
            t.device().location()
        ),
    }
}

/// The row-major `[rows, cols]` matrix `data` as the left operand of a bf16 product.
pub(crate) fn rows_lhs(data: &[f32], cols: usize) -> iuf_bf16::Lhs<'_> {
    iuf_bf16::Lhs {
        data,
        rs: cols,
        cs: 1,
    }
}

/// How [`matmul`] uses the rayon pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Split {
    /// One single-threaded gemm on the calling thread (for callers already split over the pool).
    No,
    /// The rows of `dst` in one block per thread, each a single-threaded gemm. gemm's own
    /// threading splits a product into many small tasks with a synchronisation each: at one
    /// image (196 rows) that cost more than it saved.
    RowBlocks,
}

/// `dst [m, n] = beta * lhs [m, k] rhs [k, n]` with explicit (row, column) strides, as
/// single-threaded gemms (one, or one per block of rows with [`Split::RowBlocks`]).
///
/// # Safety
/// Every pointer must be valid for the elements its strides and sizes address; `dst` must not be
/// written concurrently by anyone else.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    (dst_rs, dst_cs): (usize, usize),
    lhs: *const f32,
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: *const f32,
    (rhs_rs, rhs_cs): (usize, usize),
    beta: f32,
    split: Split,
) {
    // Raw pointers are not Send: the blocks' closure carries them as addresses.
    let (dst, lhs, rhs) = (dst as usize, lhs as usize, rhs as usize);
    let block_product = |rows: std::ops::Range<usize>| {
        let (dst, lhs, rhs) = (dst as *mut f32, lhs as *const f32, rhs as *const f32);
        // SAFETY: forwarded from the caller's contract; `rows` lies inside 0..m, and blocks of
        // distinct rows write distinct elements of dst.
        unsafe {
            gemm::gemm(
                rows.len(),
                n,
                k,
                dst.add(rows.start * dst_rs),
                dst_cs as isize,
                dst_rs as isize,
                false,
                lhs.add(rows.start * lhs_rs),
                lhs_cs as isize,
                lhs_rs as isize,
                rhs,
                rhs_cs as isize,
                rhs_rs as isize,
                0.0,
                beta,
                false,
                false,
                false,
                Parallelism::None,
            )
        }
    };
    if split == Split::No {
        return block_product(0..m);
    }
    let threads = rayon::current_num_threads().max(1);
    // Blocks of whole micro-kernel tiles (16 rows), at least 32 rows each.
    let block = m.div_ceil(threads).next_multiple_of(16).max(32);
    if threads <= 1 || m <= block {
        block_product(0..m);
    } else {
        (0..m.div_ceil(block))
            .into_par_iter()
            .for_each(|i| block_product(i * block..((i + 1) * block).min(m)));
    }
}

/// True when the fused CPU kernels can run on `t` (f32 on CPU); the caller makes it contiguous.
pub(crate) fn is_cpu_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// Layer norm over the last dimension: `CustomOp3(x, weight, bias)`.
pub(crate) struct LayerNorm {
    pub(crate) eps: f32,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "iuf-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "layer_norm x")?;
        let w = f32_slice(s2, l2, "layer_norm weight")?;
        let b = f32_slice(s3, l3, "layer_norm bias")?;
        let d = l1.dims().last().copied().unwrap_or(1);
        if w.len() != d || b.len() != d {
            bail!(
                "layer_norm: weight and bias must have {d} elements (last dim of x {:?}), found {} and {}",
                l1.dims(),
                w.len(),
                b.len()
            );
        }
        let mut y = vec![0f32; x.len()];
        if let Some(rows) = x.len().checked_div(d) {
            let block = rows_per_task(rows) * d;
            y.par_chunks_mut(block)
                .zip(x.par_chunks(block))
                .for_each(|(yc, xc)| kernels::layer_norm_fwd(xc, w, b, yc, self.eps));
        }
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = weight.elem_count();
        let (dx, dw, db) = with_f32(x, "layer_norm backward x", |x| {
            with_f32(weight, "layer_norm backward weight", |w| {
                with_f32(grad, "layer_norm backward grad", |g| {
                    let mut dx = vec![0f32; x.len()];
                    let mut dw = vec![0f32; d];
                    let mut db = vec![0f32; d];
                    if let Some(rows) = x.len().checked_div(d) {
                        let block = rows_per_task(rows) * d;
                        let partials: Vec<Vec<f32>> = dx
                            .par_chunks_mut(block)
                            .zip(x.par_chunks(block).zip(g.par_chunks(block)))
                            .map(|(dxc, (xc, gc))| {
                                let mut acc = vec![0f32; 2 * d];
                                let (pw, pb) = acc.split_at_mut(d);
                                kernels::layer_norm_bwd(xc, w, gc, dxc, pw, pb, self.eps);
                                acc
                            })
                            .collect();
                        for p in partials {
                            dw.iter_mut().zip(&p[..d]).for_each(|(a, v)| *a += v);
                            db.iter_mut().zip(&p[d..]).for_each(|(a, v)| *a += v);
                        }
                    }
                    Ok((dx, dw, db))
                })
            })
        })?;
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dw, weight.shape(), dev)?),
            Some(Tensor::from_vec(db, weight.shape(), dev)?),
        ))
    }
}

/// Softmax over the last dimension: `CustomOp1(x)`.
pub(crate) struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "iuf-softmax-last-dim"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "softmax x")?;
        let d = l.dims().last().copied().unwrap_or(1);
        let mut y = vec![0f32; x.len()];
        if let Some(rows) = x.len().checked_div(d) {
            let block = rows_per_task(rows) * d;
            y.par_chunks_mut(block)
                .zip(x.par_chunks(block))
                .for_each(|(yc, xc)| kernels::softmax_fwd(xc, yc, d));
        }
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let d = res.dims().last().copied().unwrap_or(1);
        let dx = with_f32(res, "softmax backward output", |y| {
            with_f32(grad, "softmax backward grad", |g| {
                let mut dx = vec![0f32; y.len()];
                if let Some(rows) = y.len().checked_div(d) {
                    let block = rows_per_task(rows) * d;
                    dx.par_chunks_mut(block)
                        .zip(y.par_chunks(block).zip(g.par_chunks(block)))
                        .for_each(|(dxc, (yc, gc))| kernels::softmax_bwd(yc, gc, dxc, d));
                }
                Ok(dx)
            })
        })?;
        Ok(Some(Tensor::from_vec(dx, res.shape(), res.device())?))
    }
}
