//! The output: the caller's slice ([`Out`]), what is done to each row after the product
//! ([`Epilogue`]), and the raw place the kernels write (`RawOut`, also over a new `Vec`'s spare
//! capacity).

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
    pub(crate) fn apply(self, row: &mut [f32], col0: usize) {
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
pub(crate) struct RawOut {
    pub(crate) ptr: *mut f32,
    pub(crate) rs: usize,
}

// SAFETY: a `RawOut` is only a place to write; the products give each thread disjoint rows.
unsafe impl Send for RawOut {}
// SAFETY: as above.
unsafe impl Sync for RawOut {}

impl RawOut {
    /// The same output from row `r` on.
    pub(crate) fn at_row(self, r: usize) -> Self {
        Self {
            ptr: self.ptr.wrapping_add(r * self.rs),
            rs: self.rs,
        }
    }

    /// Row `r`, columns `col0..col0 + len`, which must all have been written.
    ///
    /// # Safety
    /// The row must lie inside the caller's output, initialised, and not otherwise borrowed.
    pub(crate) unsafe fn row_mut<'x>(self, r: usize, col0: usize, len: usize) -> &'x mut [f32] {
        // SAFETY: the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(r * self.rs + col0), len) }
    }
}

/// A new `Vec` of `rows * rs` floats, row `i` at `i * rs`, written by `fill` through a [`RawOut`]
/// over its spare capacity instead of being zeroed first.
///
/// # Safety
/// `fill` must write every one of the `rows * rs` elements (and read only what it wrote), or
/// panic, which leaves the `Vec` empty.
pub(crate) unsafe fn new_filled(rows: usize, rs: usize, fill: impl FnOnce(RawOut)) -> Vec<f32> {
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
