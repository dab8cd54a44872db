//! The per-thread inference scope: whether the code that asks [`active`] multiplies in bf16.

use crate::Bf16Cpu;

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
