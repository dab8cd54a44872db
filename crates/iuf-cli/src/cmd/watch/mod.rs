//! `iuf watch`: a hot folder. Every image that appears under `--in` (recursively) is inspected
//! once, as soon as it is completely written, with predict's scoring path ([`Predictor`]): a JSON
//! line per image (`predict --json`'s fields and the model's sha256) in `--out/results.jsonl` and
//! on stdout, a heatmap per defect, the result sent to the sinks, the image optionally sorted
//! into `ok/`, `defect/` or `failed/`. The journal ([`journal`]) makes it exact across kills:
//! nothing skipped, nothing inspected twice. The model is reloaded when its file is replaced.

mod journal;
mod scan;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use iuf_incremental::NoProgress;
use iuf_inspect::Outcome;
use notify::Watcher;
use serde_json::{json, Value};

use self::journal::{Journal, Key, SortStep, MAX_ATTEMPTS};
use self::scan::{Stamp, Tracker};
use super::predict::{self, Heatmaps, Item, Predictor};
use crate::budget::{DecodeBudget, DecodeBudgetArg};
use crate::serve::model::{self, Served};
use crate::sink::{Event, SinkArgs, Sinks};
use crate::{setup, Global};

/// Images inspected together at most (fewer when the decode budget says so).
const CHUNK: usize = 8;
/// How often the model file is checked for a replacement.
const MODEL_CHECK: Duration = Duration::from_secs(1);

/// How inspected images are sorted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SortMode {
    /// Move each image into the sort folder (a rename; a copy, then the original removed, across
    /// file systems).
    Move,
    /// Copy each image into the sort folder; the original stays.
    Copy,
}

impl SortMode {
    fn name(self) -> &'static str {
        match self {
            Self::Move => "move",
            Self::Copy => "copy",
        }
    }
}

/// Arguments of `iuf watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The model file; replaced (say by `iuf learn` writing over it), it is loaded again and
    /// the results name the new model's sha256. A file that does not load is refused and the
    /// old model goes on.
    #[arg(long, value_name = "FILE")]
    pub model: PathBuf,
    /// The folder to watch, recursively. Images (png, jpg, jpeg, bmp, tif, tiff) are inspected
    /// once each, when completely written: closed by their writer or renamed into place (write
    /// to a hidden or other-extension name such as `.x.png` or `x.png.tmp`, then rename), or
    /// unchanged for --settle-ms when found by a rescan. Hidden files and folders are skipped.
    /// Nothing is written in it, except the sort folders when --sort-dir puts them there.
    #[arg(long = "in", value_name = "DIR")]
    pub input: PathBuf,
    /// Folder for `results.jsonl` (a JSON line per image), the heatmaps (`heatmaps/`) and the
    /// journal (`watch-journal.jsonl`) that makes a restart exact: no image skipped, none done
    /// twice. Must lie outside --in. Without it, results go to stdout only and a restart
    /// inspects every image again.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Sort each inspected image into `ok/`, `defect/` or `failed/` (could not be inspected)
    /// under --sort-dir, keeping its path under --in; a name taken gets `-1`, `-2`, ...
    /// Nothing is ever deleted. Needs --out.
    #[arg(long, value_enum, value_name = "MODE")]
    pub sort: Option<SortMode>,
    /// Where the sort folders go (default: --out). May be --in itself or lie inside it: its
    /// `ok/`, `defect/` and `failed/` are then not watched.
    #[arg(long, value_name = "DIR", requires = "sort")]
    pub sort_dir: Option<PathBuf>,
    /// Which images get a heatmap under --out/heatmaps.
    #[arg(long, value_enum, default_value_t = Heatmaps::Defects)]
    pub heatmaps: Heatmaps,
    /// A file found by a rescan (or any file with --poll) is taken once its size and
    /// modification time have not changed for this long.
    #[arg(long, value_name = "MS", default_value_t = 500)]
    pub settle_ms: u64,
    /// Find new files by rescanning the folder only, no file events (for network file systems,
    /// where events do not come).
    #[arg(long)]
    pub poll: bool,
    /// Milliseconds between rescans: the fallback for files that events missed (default 10000),
    /// or the only way to find files with --poll (default 1000).
    #[arg(long, value_name = "MS")]
    pub rescan_ms: Option<u64>,
    /// Quantile of the held-out good scores used as the defect threshold (default: the
    /// model's calibration quantile).
    #[arg(long, value_name = "Q")]
    pub quantile: Option<f64>,
    /// Judge every image as this object instead of the one the model recognises.
    #[arg(long, value_name = "NAME")]
    pub object: Option<String>,
    #[command(flatten)]
    pub precision: setup::PrecisionArg,
    /// Also checked on every reload.
    #[command(flatten)]
    pub signed: super::sign::RequireSigned,
    #[command(flatten)]
    pub decode_budget: DecodeBudgetArg,
    #[command(flatten)]
    pub sinks: SinkArgs,
}

/// Set by SIGTERM or SIGINT: finish the images in hand, then stop.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    if STOP.swap(true, Ordering::SeqCst) {
        // A second signal: at once (the journal makes that safe). `_exit` is async-signal-safe.
        // SAFETY: ends the process; touches no state.
        unsafe { libc::_exit(130) };
    }
}

fn install_signals() {
    // SAFETY: the handler only stores to an atomic or calls `_exit`.
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
    }
}

/// The model file's identity as far as a replacement goes.
fn model_stamp(path: &Path) -> Option<(u64, SystemTime, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?, m.ino()))
}

/// Everything the loop works with.
struct Watch<'a> {
    g: &'a Global,
    a: &'a WatchArgs,
    device: candle_core::Device,
    signed_by: Option<ed25519_dalek::VerifyingKey>,
    served: Arc<Served>,
    model_stamp: Option<(u64, SystemTime, u64)>,
    budget: DecodeBudget,
    journal: Option<Journal>,
    /// Images inspected in this run without --out (nothing else remembers them).
    seen: std::collections::HashSet<Key>,
    tracker: Tracker,
    sinks: Sinks,
    sort_dir: Option<PathBuf>,
    inspected: u64,
    failed: u64,
}

pub fn run(g: &Global, a: WatchArgs) -> Result<ExitCode> {
    if !a.input.is_dir() {
        bail!(
            "--in {}: no such folder; give the folder the camera writes into",
            a.input.display()
        );
    }
    let mut inputs: Vec<(&str, &Path)> = vec![("--in", &a.input), ("--model", &a.model)];
    if let Some(w) = &g.weights {
        inputs.push(("--weights", w));
    }
    if let Some(out) = &a.out {
        setup::check_output("--out", out, true, &inputs)?;
        setup::check_writable("--out", out, true)?;
    }
    if let Some(q) = a.quantile {
        if !(0.0..=1.0).contains(&q) {
            bail!("--quantile must lie in [0, 1]; found {q}");
        }
    }
    let root = std::path::absolute(&a.input)
        .with_context(|| format!("resolving --in {}", a.input.display()))?;
    let sort_dir = match (a.sort, &a.out) {
        (None, _) => None,
        (Some(_), None) => bail!(
            "--sort needs --out: the journal there is what makes sorting safe across a crash \
             (an image is moved only once its result is recorded)"
        ),
        (Some(_), Some(out)) => {
            let dir = std::path::absolute(a.sort_dir.as_ref().unwrap_or(out))
                .context("resolving --sort-dir")?;
            let rin = setup::resolved(&root).unwrap_or_else(|| root.clone());
            for class in ["ok", "defect", "failed"] {
                let d = dir.join(class);
                let rd = setup::resolved(&d).unwrap_or_else(|| d.clone());
                if rin.starts_with(&rd) {
                    bail!(
                        "--sort-dir {}: its {class}/ folder would hold --in {}: sorted images \
                         would land in the watched folder; choose another --sort-dir",
                        dir.display(),
                        a.input.display()
                    );
                }
            }
            setup::check_output("--sort-dir", &dir, true, &[("--model", a.model.as_path())])?;
            Some(dir)
        }
    };
    // Only the sort folders inside --in are excluded from it.
    let excluded: Vec<PathBuf> = sort_dir
        .iter()
        .flat_map(|d| ["ok", "defect", "failed"].map(|c| d.join(c)))
        .filter(|d| d.starts_with(&root))
        .collect();
    let budget = a.decode_budget.resolve()?;
    let signed_by = a.signed.key()?;
    let device = setup::device(g)?;
    install_signals();
    let t = Instant::now();
    let served = model::load(g, &a.model, &device, &a.precision, signed_by.as_ref(), None)?;
    if let Some(o) = &a.object {
        iuf_inspect::Inspector::new(&served.learner, &served.backbone.backbone)?.check_object(o)?;
    }
    eprintln!(
        "model {} (sha256 {}, {} object(s)) loaded in {:.2} s",
        a.model.display(),
        &served.sha256[..16],
        served.learner.learned_classes().len(),
        t.elapsed().as_secs_f64()
    );
    let sinks = a.sinks.start("watch", |_| Default::default())?;
    // What each sink had delivered before a stop (none: a sink new to this --out starts with
    // the results to come).
    let cursors: Vec<(&'static str, Option<u64>)> = sinks
        .names()
        .into_iter()
        .map(|name| (name, a.out.as_deref().and_then(|o| read_cursor(o, name))))
        .collect();
    let (journal, recovered) = match &a.out {
        Some(out) => {
            std::fs::create_dir_all(out)
                .with_context(|| format!("creating --out {}", out.display()))?;
            let keep_from = cursors.iter().filter_map(|c| c.1).min().unwrap_or(u64::MAX);
            let (j, r) = Journal::open(out, keep_from)?;
            (Some(j), Some(r))
        }
        None => {
            eprintln!(
                "note: without --out nothing is remembered: a restart inspects every image in \
                 --in again"
            );
            (None, None)
        }
    };
    let settle = Duration::from_millis(a.settle_ms);
    let mut w = Watch {
        g,
        a: &a,
        device,
        signed_by,
        model_stamp: model_stamp(&a.model),
        served: Arc::new(served),
        budget,
        journal,
        seen: Default::default(),
        tracker: Tracker::new(root.clone(), excluded, settle),
        sinks,
        sort_dir,
        inspected: 0,
        failed: 0,
    };
    if let (Some(r), Some(out)) = (recovered, &a.out) {
        // A sink new to this --out starts with the results to come; each delivery moves its
        // cursor on.
        for &(name, cursor) in &cursors {
            if cursor.is_none() {
                write_cursor(out, name, r.written);
            }
        }
        let dir = out.clone();
        w.sinks.on_delivered(move |name| {
            let dir = dir.clone();
            Arc::new(move |n| write_cursor(&dir, name, n + 1))
        });
        // Results written before a stop that a sink had not delivered go to it again (at least
        // once: one may arrive twice, with its id).
        for &(name, cursor) in &cursors {
            let from = cursor.unwrap_or(r.written);
            let again: Vec<&(u64, Value)> = r
                .results
                .iter()
                .filter(|(n, _)| *n >= from && *n < r.written)
                .collect();
            if !again.is_empty() {
                eprintln!(
                    "{name} sink: sending again {} result(s) not delivered before the stop",
                    again.len()
                );
            }
            for (n, v) in again {
                w.sinks.send_to(name, verdict_event(*n, v));
            }
        }
        let unwritten: Vec<(u64, Value)> = r
            .results
            .into_iter()
            .filter(|(n, _)| *n >= r.written)
            .collect();
        if !unwritten.is_empty() {
            eprintln!(
                "recovering {} result(s) recorded before a stop but not yet written",
                unwritten.len()
            );
        }
        for (n, result) in unwritten {
            w.emit(n, &result, None)?;
        }
        for s in r.recent_sorts {
            finish_sort(&s)?;
        }
    }
    let result = w.watch(&root);
    w.sinks.finish();
    let (inspected, failed) = (w.inspected, w.failed);
    result?;
    eprintln!("stopped: {inspected} image(s) inspected in this run, {failed} could not be");
    Ok(ExitCode::SUCCESS)
}

impl Watch<'_> {
    /// The loop: events and rescans find files, ready ones are inspected, until a stop signal.
    fn watch(&mut self, root: &Path) -> Result<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut watcher = None;
        if !self.a.poll {
            let made = notify::recommended_watcher(move |e| {
                let _ = tx.send(e);
            })
            .and_then(|mut wt| {
                wt.watch(root, notify::RecursiveMode::Recursive)
                    .map(|()| wt)
            });
            match made {
                Ok(wt) => watcher = Some(wt),
                Err(e) => eprintln!(
                    "warning: file events unavailable for {} ({e}); rescanning every {} ms \
                     instead (as with --poll)",
                    root.display(),
                    self.a.rescan_ms.unwrap_or(1000)
                ),
            }
        }
        let rescan_every =
            Duration::from_millis(self.a.rescan_ms.unwrap_or(if watcher.is_some() {
                10_000
            } else {
                1000
            }));
        eprintln!(
            "watching {} ({}; rescan every {:.1} s; Ctrl-C stops)",
            root.display(),
            if watcher.is_some() {
                "file events"
            } else {
                "polling"
            },
            rescan_every.as_secs_f64()
        );
        self.rescan(root);
        let mut last_rescan = Instant::now();
        let mut last_model_check = Instant::now();
        while !STOP.load(Ordering::SeqCst) {
            let ready = self.tracker.ready();
            if !ready.is_empty() {
                self.inspect_ready(ready)?;
                continue;
            }
            let wait = [
                self.tracker.next_check(),
                Some(rescan_every.saturating_sub(last_rescan.elapsed())),
                Some(MODEL_CHECK.saturating_sub(last_model_check.elapsed())),
                Some(Duration::from_millis(250)),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_default();
            if self.events(&rx, wait, root) {
                last_rescan = Instant::now();
            }
            if last_rescan.elapsed() >= rescan_every {
                self.rescan(root);
                last_rescan = Instant::now();
            }
            if last_model_check.elapsed() >= MODEL_CHECK {
                self.check_model();
                last_model_check = Instant::now();
            }
        }
        drop(watcher);
        Ok(())
    }

    /// Takes in the file events that come within `wait`; true when they asked for a rescan
    /// (which was done).
    fn events(
        &mut self,
        rx: &Receiver<notify::Result<notify::Event>>,
        wait: Duration,
        root: &Path,
    ) -> bool {
        let mut first = Some(wait);
        let mut rescanned = false;
        loop {
            let got = match first.take() {
                Some(w) => rx.recv_timeout(w),
                None => rx.try_recv().map_err(|_| RecvTimeoutError::Timeout),
            };
            match got {
                Ok(Ok(e)) => {
                    if e.need_rescan() {
                        tracing::warn!("file events were lost (queue overflow): rescanning");
                        self.rescan(root);
                        rescanned = true;
                    }
                    for dir in self.tracker.event(&e) {
                        self.rescan(&dir);
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!("file event error ({e}): rescanning");
                    self.rescan(root);
                    rescanned = true;
                }
                Err(_) => return rescanned,
            }
        }
    }

    /// Adds the images under `dir` that have no result yet.
    fn rescan(&mut self, dir: &Path) {
        let (journal, seen) = (&self.journal, &self.seen);
        self.tracker.scan(dir, |k| {
            seen.contains(k) || journal.as_ref().is_some_and(|j| j.is_done(k))
        });
    }

    /// Loads the model again when its file was replaced; a file that does not load is refused
    /// and the old model goes on.
    fn check_model(&mut self) {
        let now = model_stamp(&self.a.model);
        if now.is_none() || now == self.model_stamp {
            return;
        }
        self.model_stamp = now;
        match model::load(
            self.g,
            &self.a.model,
            &self.device,
            &self.a.precision,
            self.signed_by.as_ref(),
            Some(&self.served),
        ) {
            Ok(new) if new.sha256 == self.served.sha256 => {}
            Ok(new) => {
                eprintln!(
                    "model file replaced: reloaded {} (sha256 {} -> {})",
                    self.a.model.display(),
                    &self.served.sha256[..16],
                    &new.sha256[..16]
                );
                self.served = Arc::new(new);
            }
            Err(refused) => eprintln!(
                "warning: model file changed but the new one is refused: {:#}; the model with \
                 sha256 {} goes on",
                refused.cause,
                &self.served.sha256[..16]
            ),
        }
    }

    /// Inspects the ready files: each once, a batch at a time; a file whose inspection was cut
    /// short before runs alone (a file that kills the process should not take others with it).
    fn inspect_ready(&mut self, ready: Vec<(PathBuf, Stamp)>) -> Result<()> {
        let mut fresh: Vec<(PathBuf, Key)> = Vec::new();
        let mut retried: Vec<(PathBuf, Key)> = Vec::new();
        for (p, stamp) in ready {
            let Some(key) = self.tracker.key(&p, stamp) else {
                continue;
            };
            if self.seen.contains(&key) || self.journal.as_ref().is_some_and(|j| j.is_done(&key)) {
                continue;
            }
            let attempts = self.journal.as_ref().map_or(0, |j| j.attempts(&key));
            if attempts >= MAX_ATTEMPTS {
                let why = format!(
                    "inspecting this file was cut short {attempts} times (the process was killed \
                     or crashed while on it); it is recorded as failed and not tried again"
                );
                eprintln!("FAILED  {}: {why}", p.display());
                let outcome = Outcome::failed(&p, why);
                self.record(vec![(p, key, outcome)])?;
            } else if attempts > 0 {
                retried.push((p, key));
            } else {
                fresh.push((p, key));
            }
        }
        let batches = retried
            .into_iter()
            .map(|x| vec![x])
            .chain(chunks(fresh, CHUNK));
        for batch in batches {
            self.inspect(batch)?;
            if STOP.load(Ordering::SeqCst) {
                // The rest stays for the next run (the journal has no start for it).
                break;
            }
        }
        Ok(())
    }

    /// Inspects one batch and records its results.
    fn inspect(&mut self, batch: Vec<(PathBuf, Key)>) -> Result<()> {
        let started = Instant::now();
        if let Some(j) = &mut self.journal {
            let keys: Vec<Key> = batch.iter().map(|(_, k)| k.clone()).collect();
            j.start(&keys)?;
        }
        let items: Vec<Item> = batch
            .iter()
            .map(|(p, k)| Item {
                path: p.clone(),
                heatmap: PathBuf::from("heatmaps").join(format!("{}.png", k.path)),
                mask: None,
            })
            .collect();
        let served = self.served.clone();
        let predictor = Predictor {
            learner: &served.learner,
            backbone: &served.backbone.backbone,
            quantile: self.a.quantile.unwrap_or(served.quantile),
            object: self.a.object.clone(),
            out_dir: self.a.out.clone().unwrap_or_default(),
            panel_max: 0,
            budget: self.budget,
            heatmaps: if self.a.out.is_some() {
                self.a.heatmaps
            } else {
                Heatmaps::None
            },
        };
        let t = Instant::now();
        let run = predictor.run(&items, &NoProgress, |_| Ok(()))?;
        let scoring = t.elapsed();
        let mut results = Vec::with_capacity(batch.len());
        for (p, key) in batch {
            let mut outcome = run
                .outcomes
                .iter()
                .find(|o| o.path == p)
                .cloned()
                .unwrap_or_else(|| Outcome::failed(&p, "no result came back".into()));
            if outcome.score.is_some() {
                outcome.model_sha256 = Some(served.sha256.clone());
            }
            // A file that changed while it was read is looked at again as the new file it is.
            if Stamp::of(&p).is_some_and(|s| self.tracker.key(&p, s).as_ref() != Some(&key)) {
                self.tracker.again(p.clone());
            }
            results.push((p, key, outcome));
        }
        let n = results.len();
        self.record(results)?;
        // What the watch adds to predict's scoring (journal, fsync, output), for `-vv`.
        let all = started.elapsed();
        tracing::debug!(
            "batch of {n}: {:.1} ms, of which scoring {:.1} ms and the watch's own work {:.1} ms",
            1e3 * all.as_secs_f64(),
            1e3 * scoring.as_secs_f64(),
            1e3 * (all - scoring).as_secs_f64()
        );
        Ok(())
    }

    /// Records results in the journal (durably), then writes them out, then sorts the images.
    fn record(&mut self, results: Vec<(PathBuf, Key, Outcome)>) -> Result<()> {
        let mut entries = Vec::with_capacity(results.len());
        let mut outcomes = Vec::with_capacity(results.len());
        for (p, key, outcome) in results {
            let mut value = serde_json::to_value(&outcome)?;
            let sort = match (self.a.sort, &self.sort_dir) {
                (Some(mode), Some(dir)) => {
                    let class = match outcome.decision {
                        Some("defect") => "defect",
                        Some(_) => "ok",
                        None if outcome.score.is_some() => "ok",
                        None => "failed",
                    };
                    let to = free_name(&dir.join(class).join(&key.path));
                    value["sorted_to"] = json!(to);
                    Some(SortStep {
                        from: p.clone(),
                        to,
                        mode: mode.name().into(),
                    })
                }
                _ => None,
            };
            if outcome.score.is_some() {
                self.inspected += 1;
            } else {
                self.failed += 1;
            }
            entries.push((key, value, sort));
            outcomes.push(outcome);
        }
        let numbers = match &mut self.journal {
            Some(j) => j.done(
                entries
                    .iter()
                    .map(|(k, v, s)| (k.clone(), v.clone(), s.clone()))
                    .collect(),
            )?,
            None => {
                let base = self.seen.len() as u64;
                for (k, _, _) in &entries {
                    self.seen.insert(k.clone());
                }
                (base..base + entries.len() as u64).collect()
            }
        };
        for (((_, value, sort), outcome), n) in entries.iter().zip(&outcomes).zip(numbers) {
            self.emit(n, value, Some(outcome))?;
            if let Some(s) = sort {
                finish_sort(s)?;
            }
        }
        Ok(())
    }

    /// Writes result number `n` (already in the journal) to results.jsonl, stdout and the sinks.
    fn emit(&mut self, n: u64, value: &Value, outcome: Option<&Outcome>) -> Result<()> {
        if let Some(j) = &mut self.journal {
            j.write_results(&[value])?;
        }
        if self.g.json || outcome.is_none() {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{value}").context("writing to stdout")?;
            out.flush().context("writing to stdout")?;
        } else if let Some(o) = outcome {
            predict::print_human(o);
        }
        self.sinks.send(verdict_event(n, value));
        Ok(())
    }
}

/// The sink event of result number `n`.
fn verdict_event(n: u64, value: &Value) -> Event {
    let mut e = Event::verdict_fields("watch", &format!("watch:{n}"), value.clone());
    e.number = Some(n);
    e
}

/// `--out/sink-<name>.cursor`: how many results the sink had delivered, in order.
fn cursor_path(out: &Path, name: &str) -> PathBuf {
    out.join(format!("sink-{name}.cursor"))
}

fn read_cursor(out: &Path, name: &str) -> Option<u64> {
    std::fs::read_to_string(cursor_path(out, name))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Written to a temporary name and renamed (not synced: a cursor lost in a power cut only
/// means results sent twice).
fn write_cursor(out: &Path, name: &str, delivered: u64) {
    let path = cursor_path(out, name);
    let tmp = iuf_model::temp_path(&path);
    if let Err(e) =
        std::fs::write(&tmp, format!("{delivered}\n")).and_then(|()| std::fs::rename(&tmp, &path))
    {
        let _ = std::fs::remove_file(&tmp);
        tracing::warn!("writing {}: {e}", path.display());
    }
}

fn chunks<T>(v: Vec<T>, n: usize) -> impl Iterator<Item = Vec<T>> {
    let mut it = v.into_iter().peekable();
    std::iter::from_fn(move || {
        it.peek()?;
        Some(it.by_ref().take(n).collect())
    })
}

/// `path`, or `stem-1.ext`, `stem-2.ext`, ... when it is taken.
fn free_name(path: &Path) -> PathBuf {
    if path.symlink_metadata().is_err() {
        return path.to_path_buf();
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    (1..)
        .map(|k| path.with_file_name(format!("{stem}-{k}{ext}")))
        .find(|p| p.symlink_metadata().is_err())
        .expect("a free name")
}

/// Carries out a recorded sort unless it is done already (it may have been, before a kill).
fn finish_sort(s: &SortStep) -> Result<()> {
    if s.to.symlink_metadata().is_ok() || s.from.symlink_metadata().is_err() {
        return Ok(());
    }
    let dir = s.to.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if s.mode == "move" && std::fs::rename(&s.from, &s.to).is_ok() {
        return Ok(());
    }
    // A copy (or a move across file systems): to a temporary name, synced, renamed; a move
    // then removes the original, which the copy now holds.
    let tmp = iuf_model::temp_path(&s.to);
    let copied = std::fs::copy(&s.from, &tmp)
        .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, &s.to));
    if let Err(e) = copied {
        let _ = std::fs::remove_file(&tmp);
        return Err(e)
            .with_context(|| format!("sorting {} into {}", s.from.display(), s.to.display()));
    }
    if s.mode == "move" {
        std::fs::remove_file(&s.from)
            .with_context(|| format!("removing {} after copying it", s.from.display()))?;
    }
    Ok(())
}
