//! Progress bars for the library's long loops (feature extraction, epochs, evaluation) and a log
//! writer that keeps tracing output from tearing through a bar.

use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use iuf_incremental::Progress;

/// Every bar lives in one `MultiProgress` so that log lines can be printed above it.
fn multi() -> &'static MultiProgress {
    static MULTI: OnceLock<MultiProgress> = OnceLock::new();
    // Draws to stderr only when it is a terminal (indicatif hides itself otherwise), so pipes and
    // tests see clean output.
    MULTI.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
}

/// Removes any bar still on screen (before the final output or an error message).
pub fn clear() {
    let _ = multi().clear();
}

/// Runs `f` (which prints) with the bars taken off the screen.
pub fn suspend<R>(f: impl FnOnce() -> R) -> R {
    multi().suspend(f)
}

/// Prints a status line on stderr without breaking a bar (hidden under `--json`).
pub fn status(quiet: bool, msg: &str) {
    if !quiet {
        multi().suspend(|| eprintln!("{msg}"));
    }
}

/// The library's [`Progress`] as indicatif bars: one bar per phase. Feature phases vanish when
/// done (there are many, one per object); training phases stay with their last loss.
pub struct Bars {
    current: Mutex<Option<(ProgressBar, bool)>>,
    hidden: bool,
}

impl Bars {
    /// Bars on stderr; `hidden` draws nothing (for `--json`).
    pub fn new(hidden: bool) -> Self {
        Self {
            current: Mutex::new(None),
            hidden,
        }
    }

    fn with_current(&self, f: impl FnOnce(&ProgressBar)) {
        if let Some((bar, _)) = self.current.lock().expect("progress lock").as_ref() {
            f(bar);
        }
    }
}

impl Progress for Bars {
    fn start(&self, label: &str, total: u64) {
        let mut cur = self.current.lock().expect("progress lock");
        if let Some((old, _)) = cur.take() {
            old.finish_and_clear();
        }
        if self.hidden {
            return;
        }
        let bar = multi().add(ProgressBar::new(total));
        let style = ProgressStyle::with_template(
            "{prefix:>28} [{bar:30.cyan/blue}] {pos}/{len} {elapsed_precise} eta {eta} {msg}",
        )
        .expect("valid progress template")
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(label.to_string());
        bar.enable_steady_tick(Duration::from_millis(250));
        let transient = label.starts_with("features");
        *cur = Some((bar, transient));
    }

    fn inc(&self, n: u64) {
        self.with_current(|b| b.inc(n));
    }

    fn message(&self, msg: &str) {
        self.with_current(|b| b.set_message(msg.to_string()));
    }

    fn finish(&self) {
        if let Some((bar, transient)) = self.current.lock().expect("progress lock").take() {
            if transient {
                bar.finish_and_clear();
            } else {
                bar.finish();
            }
        }
    }
}

/// A `tracing` writer that prints above the progress bars instead of through them.
#[derive(Default)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        multi().suspend(|| std::io::stderr().write_all(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
