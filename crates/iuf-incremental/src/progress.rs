//! Progress reporting for long loops (feature extraction, epochs, evaluation), decoupled from any
//! terminal library: the CLI implements [`Progress`] with progress bars, tests use [`NoProgress`].

/// Receives progress of long-running work.
pub trait Progress: Sync {
    /// A new phase with `total` units of work begins.
    fn start(&self, label: &str, total: u64);
    /// `n` more units are done.
    fn inc(&self, n: u64);
    /// A status message for the current phase (e.g. the running loss).
    fn message(&self, msg: &str);
    /// The current phase is finished.
    fn finish(&self);
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _label: &str, _total: u64) {}
    fn inc(&self, _n: u64) {}
    fn message(&self, _msg: &str) {}
    fn finish(&self) {}
}
