//! Fused linear layer on the CPU: `act(x W^T + b)` as one candle custom op with a hand-written
//! backward.
//!
//! The composition `x.matmul(W^T).broadcast_add(b)` costs, besides the gemm, a single-threaded
//! bias pass, and in the backward candle's strided reduction over rows for the bias gradient
//! (slower than the gemm for the 1024-wide FFN layer) plus a zero-filled buffer and an add for
//! every intermediate. Here the bias (and ReLU) are applied in place on the gemm's output, and
//! the backward is two gemms and one vectorised column sum.
//!
//! Inside a [`mixed_precision_training`] scope the three products (y = x W^T, dx = dy W,
//! dW = dy^T x) multiply in bf16 with f32 accumulation (`iuf_bf16`), the operands packed per call
//! (the weights change every step); the bias, the ReLU, the column sums, the weights and the
//! gradients stay f32.

use std::cell::Cell;

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use iuf_bf16::{Bf16Cpu, Epilogue, PackedB};
use rayon::prelude::*;

use super::fused::{f32_slice, matmul, rows_lhs, with_f32, Split};
use super::kernels;

/// The activation applied after the bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Identity,
    Relu,
}

/// Rows per rayon task for the row-wise passes.
fn rows_per_task(rows: usize) -> usize {
    rows.div_ceil(4 * rayon::current_num_threads().max(1))
        .max(16)
}

thread_local! {
    /// The bf16 kernel of this thread's mixed-precision training scope, if any.
    static MIXED: Cell<Option<Bf16Cpu>> = const { Cell::new(None) };
}

/// Runs `f` with mixed-precision training on (`Some`) or off (`None`) for the linear layers
/// ([`super::linear`]) called on this thread, and restores the previous setting afterwards (also
/// on panic).
///
/// With `Some(cpu)` every f32 CPU linear layer created in the scope multiplies in bf16 with f32
/// accumulation, in its forward and in its backward (the op remembers the setting it was
/// created with, so a backward run outside the scope multiplies as its forward did). Unlike
/// [`iuf_bf16::scoped`] (inference: weights packed once per scope) the weights may change inside
/// the scope: every call packs them again. Training asks for it only on CPUs with AMX.
pub fn mixed_precision_training<R>(cpu: Option<Bf16Cpu>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Bf16Cpu>);
    impl Drop for Restore {
        fn drop(&mut self) {
            MIXED.with(|m| m.set(self.0));
        }
    }
    let _restore = Restore(MIXED.with(|m| m.replace(cpu)));
    f()
}

/// The kernel when this thread is inside a [`mixed_precision_training`] scope that is on.
pub fn mixed_precision_active() -> Option<Bf16Cpu> {
    MIXED.with(|m| m.get())
}

/// `CustomOp3(x [rows, in], weight [out, in], bias [out])` -> [rows, out].
pub(crate) struct Linear {
    pub(crate) act: Activation,
    /// bf16 products with f32 accumulation (forward and backward), else f32.
    pub(crate) mixed: Option<Bf16Cpu>,
}

/// `src [rows, cols]` transposed into a new `[cols, rows]`, in tiles (rows of the output split
/// over the rayon pool).
fn transpose(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const T: usize = 32;
    let mut dst = vec![0f32; rows * cols];
    if rows == 0 || cols == 0 {
        return dst;
    }
    // Each task fills T rows of the output (T columns of the input).
    dst.par_chunks_mut(T * rows)
        .enumerate()
        .for_each(|(cb, out)| {
            let c0 = cb * T;
            let cn = out.len() / rows;
            for r0 in (0..rows).step_by(T) {
                let rn = (rows - r0).min(T);
                for c in 0..cn {
                    let o = &mut out[c * rows + r0..][..rn];
                    for (r, v) in o.iter_mut().enumerate() {
                        *v = src[(r0 + r) * cols + c0 + c];
                    }
                }
            }
        });
    dst
}

/// The backward's two products in bf16: `dx [rows, in] = gz [rows, out] w [out, in]` and
/// `dw [out, in] = gz^T x`. For dw the smaller of gz and x is transposed once into a contiguous
/// buffer (the kernel's strided left operand is slow), the other packed as B.
fn backward_products_bf16(
    cpu: Bf16Cpu,
    (rows, din, dout): (usize, usize, usize),
    gz: &[f32],
    ws: &[f32],
    xs: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let w_b = PackedB::pack(dout, din, ws, (din, 1));
    let dx = cpu.matmul_par_vec(rows, rows_lhs(gz, dout), &w_b, None);
    drop(w_b);
    let dw = if dout <= din {
        // dw = (gz^T) x: A = gz^T [out, rows], B = x [rows, in].
        let gzt = transpose(gz, rows, dout);
        let x_b = PackedB::pack(rows, din, xs, (din, 1));
        cpu.matmul_par_vec(dout, rows_lhs(&gzt, rows), &x_b, None)
    } else {
        // dw^T = (x^T) gz: A = x^T [in, rows], B = gz [rows, out]; then dw^T transposed (small).
        let xt = transpose(xs, rows, din);
        let g_b = PackedB::pack(rows, dout, gz, (dout, 1));
        let dwt = cpu.matmul_par_vec(din, rows_lhs(&xt, rows), &g_b, None);
        transpose(&dwt, din, dout)
    };
    (dx, dw)
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "iuf-linear"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, b) = (
            f32_slice(sx, lx, "linear x")?,
            f32_slice(sw, lw, "linear weight")?,
            f32_slice(sb, lb, "linear bias")?,
        );
        let (&[rows, din], &[dout, win]) = (lx.dims(), lw.dims()) else {
            bail!(
                "linear: expected x [rows, in] and weight [out, in], found {:?} and {:?}",
                lx.dims(),
                lw.dims()
            );
        };
        if win != din || b.len() != dout {
            bail!(
                "linear: x {:?}, weight {:?}, bias {:?} do not fit",
                lx.dims(),
                lw.dims(),
                lb.dims()
            );
        }
        if let (Some(cpu), true) = (self.mixed, rows > 0 && dout > 0) {
            // bf16 products, W^T packed for this call; bias and activation as the f32 path's.
            let packed = PackedB::pack(din, dout, w, (1, din));
            let ep = Epilogue {
                bias: b,
                relu: self.act == Activation::Relu,
            };
            let lhs = rows_lhs(x, din);
            let y = cpu.matmul_par_vec(rows, lhs, &packed, Some(ep));
            return Ok((CpuStorage::F32(y), Shape::from((rows, dout))));
        }
        let mut y = vec![0f32; rows * dout];
        if rows > 0 && dout > 0 {
            // SAFETY: y [rows, out], x [rows, in], weight [out, in] read as its transpose.
            unsafe {
                matmul(
                    (rows, dout, din),
                    y.as_mut_ptr(),
                    (dout, 1),
                    x.as_ptr(),
                    (din, 1),
                    w.as_ptr(),
                    (1, din),
                    1.0,
                    Split::RowBlocks,
                );
            }
            let block = rows_per_task(rows) * dout;
            y.par_chunks_mut(block)
                .for_each(|yc| kernels::bias_act_rows(yc, b, self.act));
        }
        Ok((CpuStorage::F32(y), Shape::from((rows, dout))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (rows, din) = x.dims2()?;
        let dout = weight.dim(0)?;
        // Allocated by the product that fills them (zeros when there is none).
        let (mut dx, mut dw) = (Vec::new(), Vec::new());
        let mut db = vec![0f32; dout];
        with_f32(grad, "linear backward grad", |g| {
            with_f32(res, "linear backward output", |y| {
                with_f32(x, "linear backward x", |xs| {
                    with_f32(weight, "linear backward weight", |ws| {
                        if rows == 0 || dout == 0 {
                            return Ok(());
                        }
                        let block = rows_per_task(rows) * dout;
                        // The gradient behind the activation, and its column sums (= db).
                        let mut gz = Vec::new();
                        let partials: Vec<Vec<f32>> = match self.act {
                            Activation::Relu => {
                                gz = vec![0f32; rows * dout];
                                gz.par_chunks_mut(block)
                                    .zip(y.par_chunks(block).zip(g.par_chunks(block)))
                                    .map(|(oc, (yc, gc))| {
                                        let mut acc = vec![0f32; dout];
                                        kernels::relu_bwd_colsum(yc, gc, oc, &mut acc);
                                        acc
                                    })
                                    .collect()
                            }
                            Activation::Identity => g
                                .par_chunks(block)
                                .map(|gc| {
                                    let mut acc = vec![0f32; dout];
                                    kernels::colsum(gc, &mut acc);
                                    acc
                                })
                                .collect(),
                        };
                        for p in partials {
                            db.iter_mut().zip(&p).for_each(|(a, v)| *a += v);
                        }
                        let gz: &[f32] = if gz.is_empty() { g } else { &gz };
                        if let Some(cpu) = self.mixed {
                            (dx, dw) = backward_products_bf16(cpu, (rows, din, dout), gz, ws, xs);
                            return Ok(());
                        }
                        dx = vec![0f32; rows * din];
                        dw = vec![0f32; dout * din];
                        // SAFETY: dx [rows, in] = gz [rows, out] w [out, in];
                        // dw [out, in] = gz^T [out, rows] x [rows, in].
                        unsafe {
                            matmul(
                                (rows, din, dout),
                                dx.as_mut_ptr(),
                                (din, 1),
                                gz.as_ptr(),
                                (dout, 1),
                                ws.as_ptr(),
                                (din, 1),
                                1.0,
                                Split::RowBlocks,
                            );
                            matmul(
                                (dout, din, rows),
                                dw.as_mut_ptr(),
                                (din, 1),
                                gz.as_ptr(),
                                (1, dout),
                                xs.as_ptr(),
                                (din, 1),
                                1.0,
                                Split::RowBlocks,
                            );
                        }
                        Ok(())
                    })
                })
            })
        })?;
        if dx.is_empty() {
            dx = vec![0f32; rows * din];
            dw = vec![0f32; dout * din];
        }
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, (rows, din), dev)?),
            Some(Tensor::from_vec(dw, (dout, din), dev)?),
            Some(Tensor::from_vec(db, dout, dev)?),
        ))
    }
}
