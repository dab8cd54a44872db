//! The two kernels, the only code with intrinsics or inline assembly: AVX-512 BF16
//! (`kernel/avx512.rs`, also the conversions and the AMX kernel's strip copy) and AMX
//! (`kernel/amx.rs`). On other architectures each has a stand-in here with the same functions,
//! never called: a [`Bf16Cpu`](crate::Bf16Cpu) cannot be made there.

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512;

#[cfg(not(target_arch = "x86_64"))]
pub(crate) mod avx512 {
    use crate::{Bf16Cpu, NR};

    pub(crate) fn convert(_cpu: Bf16Cpu, _src: &[f32], _put: impl FnMut(usize, u32)) {
        unreachable!("iuf-bf16: no kernel on this architecture")
    }

    pub(crate) fn convert_into(_cpu: Bf16Cpu, _src: &[f32], _dst: &mut [u32]) {
        unreachable!("iuf-bf16: no kernel on this architecture")
    }

    pub(crate) fn interleave(
        _cpu: Bf16Cpu,
        _lo: &[f32],
        _hi: Option<&[f32]>,
        _dst: &mut [u32; NR],
    ) {
        unreachable!("iuf-bf16: no kernel on this architecture")
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn store_strip(
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
    pub(crate) unsafe fn tile(
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
pub(crate) mod amx;

#[cfg(not(target_arch = "x86_64"))]
pub(crate) mod amx {
    pub(crate) unsafe fn register_loop(_reps: usize) {}
    pub(crate) unsafe fn configure() {}
    pub(crate) unsafe fn release() {}
    pub(crate) unsafe fn block(
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
