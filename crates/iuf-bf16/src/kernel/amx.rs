//! The AMX kernel (`tdpbf16ps`) in inline assembly: asking Linux for the tile state, the tile
//! configuration, and one 32 x 32 block of C as four 16 x 16 tiles accumulated over k.

use crate::{KT, NR};
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
pub(crate) fn enable() -> bool {
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
pub(crate) unsafe fn configure() {
    // SAFETY: CONFIG is a valid 64-byte palette-1 configuration; AMX is enabled (caller).
    unsafe { asm!("ldtilecfg [{0}]", in(reg) CONFIG.0.as_ptr(), options(nostack)) };
}

/// `reps` rounds of four independent `tdpbf16ps` on zeroed tiles, no memory operands.
///
/// # Safety
/// As for [`configure`], and tiles configured on this thread.
pub(crate) unsafe fn register_loop(reps: usize) {
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
pub(crate) unsafe fn release() {
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
pub(crate) unsafe fn block(
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
