//! The token that proves the CPU runs the kernels: every product is a method of [`Bf16Cpu`], and
//! only [`Bf16Cpu::detect`] makes one.

use crate::kernel::amx;

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
