//! Process-wide settings for running the model on the CPU, which a program applies once at start
//! ([`configure_process`]); libraries never call it.
//!
//! - **Freed buffers kept for reuse.** candle's CPU backend allocates a new output buffer for every
//!   op, and the transformer's are large (a batch-8 FFN activation is 6.4 MB). glibc's malloc
//!   serves blocks this size with `mmap` and returns them to the kernel on `free`, so every op of
//!   every batch page-faulted its output in again (81% of inference's page faults came from
//!   writing fresh linear-layer outputs; bf16 inference ran 1.08x faster without them). The cost:
//!   the process keeps its peak heap until it exits, or until [`release_freed_buffers`].
//! - **candle's thread pool parks sooner.** candle 0.11 runs elementwise ops on a pool of its own
//!   beside rayon's, whose workers spin 25,000 rounds after each op before they sleep. On two
//!   cores that spinning took the core from the rayon worker of the next op (a matrix product):
//!   with 200 rounds bf16 inference ran 1.05-1.38x and training 1.04-1.12x faster (2 threads).
//!   `CANDLE_BARRIER_POOL_SPIN_LIMIT` set by the user is left alone.

/// Spin rounds of candle's pool workers before they park (candle's default is 25,000).
const CANDLE_SPIN_LIMIT: &str = "200";

/// Applies both settings of this module. Call it first thing in `main`, before any thread is
/// started or any candle op runs (it sets an environment variable that candle reads once).
pub fn configure_process() {
    retain_freed_buffers();
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", CANDLE_SPIN_LIMIT);
    }
}

/// Raises glibc's mmap and trim thresholds to 1 GiB, so buffers up to that size come from the
/// heap and are reused after `free`. A no-op where the C library is not glibc.
pub fn retain_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const GIB: libc::c_int = 1 << 30;
        // SAFETY: mallopt only changes malloc's tuning parameters; both are plain integers.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, GIB);
            libc::mallopt(libc::M_TRIM_THRESHOLD, GIB);
        }
    }
}

/// Hands the freed memory malloc keeps back to the kernel (`malloc_trim`), e.g. before measuring
/// the next part of a program's peak memory. A no-op where the C library is not glibc.
pub fn release_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}
