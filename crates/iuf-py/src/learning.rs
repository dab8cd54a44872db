//! `iuf.train` and `iuf.learn`: the steps of `iuf train` and `iuf learn` (`iuf_inspect::learn`,
//! the same checks, the same learning, the same model file) run from Python.
//!
//! The step runs on a thread of its own. The calling thread waits with the GIL released and
//! wakes every 100 ms, or when the step reports progress, to call the caller's `progress`
//! callback (so the callback always runs on the caller's thread, with the GIL) and to look for
//! Ctrl-C. An exception in the callback, a KeyboardInterrupt or a warning turned into an error
//! sets a stop flag; the step's next progress report then unwinds it (with
//! `std::panic::resume_unwind`, which prints nothing), its state is dropped, and the exception
//! is raised. Before the model file is written the step waits until every report so far has
//! been delivered (a barrier), so a stopped call never writes it; the file itself is written to
//! a temporary name and renamed.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use candle_core::Device;
use iuf_incremental::{Progress as Report, Strategy};
use iuf_inspect::args::{self, Spelling};
use iuf_inspect::learn::{ConfigOptions, LearnRequest, Resources, Step, TileOptions, TrainRequest};
use iuf_model::Precision;
use pyo3::exceptions::{PyFileNotFoundError, PyTypeError, PyUserWarning, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyString;

use crate::IufError;

/// How often the waiting thread looks for Ctrl-C when the step reports nothing.
const POLL: Duration = Duration::from_millis(100);

/// The unwinding payload of a stopped step.
struct Stopped;

/// What the step tells the calling thread.
enum Event {
    /// What the step will do, once set up.
    Status(String),
    /// A remark on the arguments (becomes a Python warning).
    Note(String),
    Start {
        phase: String,
        total: u64,
    },
    Advance(u64),
    Message(String),
    Finish,
    /// The step waits for the answer: true to go on (every report so far delivered), false to
    /// stop.
    Barrier(Sender<bool>),
}

/// The step's [`Report`]er: every report goes to the calling thread; after a stop, the next
/// report unwinds the step.
struct Relay {
    events: Sender<Event>,
    stop: AtomicBool,
}

impl Relay {
    fn send(&self, event: Event) {
        if self.stop.load(Ordering::Relaxed) {
            std::panic::resume_unwind(Box::new(Stopped));
        }
        // The receiver lives until the step has ended.
        let _ = self.events.send(event);
    }

    /// Waits until the calling thread has delivered every report so far; unwinds if it says
    /// stop.
    fn barrier(&self) {
        let (tx, rx) = mpsc::channel();
        self.send(Event::Barrier(tx));
        if !rx.recv().unwrap_or(false) {
            std::panic::resume_unwind(Box::new(Stopped));
        }
    }
}

impl Report for Relay {
    fn start(&self, label: &str, total: u64) {
        self.send(Event::Start {
            phase: label.to_string(),
            total,
        });
    }

    fn inc(&self, n: u64) {
        self.send(Event::Advance(n));
    }

    fn message(&self, msg: &str) {
        self.send(Event::Message(msg.to_string()));
    }

    fn finish(&self) {
        self.send(Event::Finish);
    }
}

/// Where a learning step stands, as the `progress` callback sees it.
#[pyclass(frozen, module = "iuf", name = "Progress")]
#[derive(Clone)]
pub(crate) struct Progress {
    /// What happened: 'status' (the step is set up; `message` says what it will do), 'start'
    /// (a phase begins), 'advance' (`done` moved), 'message' (a new `message`, e.g. the loss),
    /// 'finish' (the phase is done).
    #[pyo3(get)]
    kind: &'static str,
    /// The current phase, e.g. 'features bottle' or 'epochs' ('' before the first).
    #[pyo3(get)]
    phase: String,
    /// Units of the phase done.
    #[pyo3(get)]
    done: u64,
    /// Units of the phase in all.
    #[pyo3(get)]
    total: u64,
    /// The phase's latest message (or the step's description for 'status'), None if none.
    #[pyo3(get)]
    message: Option<String>,
}

#[pymethods]
impl Progress {
    fn __repr__(&self) -> String {
        format!(
            "Progress(kind='{}', phase='{}', done={}, total={}, message={})",
            self.kind,
            self.phase,
            self.done,
            self.total,
            self.message
                .as_ref()
                .map_or("None".to_string(), |m| format!("{m:?}"))
        )
    }
}

/// The calling thread's side: the state the callback sees and the first exception raised.
struct Delivery<'py> {
    py: Python<'py>,
    callback: Option<Bound<'py, PyAny>>,
    state: Progress,
    /// Advances not yet told to the callback (several are told as one).
    advanced: bool,
    error: Option<PyErr>,
}

impl Delivery<'_> {
    fn call(&mut self, kind: &'static str) {
        if self.error.is_some() {
            return;
        }
        let Some(cb) = &self.callback else {
            return;
        };
        let event = Progress {
            kind,
            ..self.state.clone()
        };
        if let Err(e) = cb.call1((event,)) {
            self.error = Some(e);
        }
    }

    fn flush_advance(&mut self) {
        if self.advanced {
            self.advanced = false;
            self.call("advance");
        }
    }

    /// Delivers one report; answers a barrier.
    fn deliver(&mut self, event: Event) {
        if !matches!(event, Event::Advance(_)) {
            self.flush_advance();
        }
        match event {
            Event::Status(s) => {
                self.state.message = Some(s);
                self.call("status");
                self.state.message = None;
            }
            Event::Note(n) => {
                if self.error.is_none() {
                    let category = self.py.get_type::<PyUserWarning>();
                    let text = std::ffi::CString::new(n.replace('\0', " ")).unwrap_or_default();
                    if let Err(e) = PyErr::warn(self.py, &category, &text, 1) {
                        self.error = Some(e);
                    }
                }
            }
            Event::Start { phase, total } => {
                self.state = Progress {
                    kind: "start",
                    phase,
                    done: 0,
                    total,
                    message: None,
                };
                self.call("start");
            }
            Event::Advance(n) => {
                self.state.done += n;
                self.advanced = true;
            }
            Event::Message(m) => {
                self.state.message = Some(m);
                self.call("message");
            }
            Event::Finish => self.call("finish"),
            Event::Barrier(answer) => {
                let _ = answer.send(self.error.is_none());
            }
        }
    }
}

/// Runs `work` on a thread of its own with the GIL released, relaying its reports to
/// `callback` on this thread; returns what it returns as a dict.
fn run_step<'py>(
    py: Python<'py>,
    callback: Option<Bound<'py, PyAny>>,
    work: impl FnOnce(&Relay) -> anyhow::Result<serde_json::Value> + Send,
    paths: &[(&str, &Path)],
) -> PyResult<Bound<'py, PyAny>> {
    if let Some(cb) = &callback {
        if !cb.is_callable() {
            return Err(PyTypeError::new_err(format!(
                "progress: expected a callable taking one iuf.Progress, or None; found {}",
                cb.get_type().name()?
            )));
        }
    }
    let (tx, rx) = mpsc::channel();
    let relay = Relay {
        events: tx,
        stop: AtomicBool::new(false),
    };
    let mut delivery = Delivery {
        py,
        callback,
        state: Progress {
            kind: "status",
            phase: String::new(),
            done: 0,
            total: 0,
            message: None,
        },
        advanced: false,
        error: None,
    };
    let outcome = std::thread::scope(|s| {
        let relay = &relay;
        let worker = s.spawn(move || catch_unwind(AssertUnwindSafe(|| work(relay))));
        let mut rx: Receiver<Event> = rx;
        loop {
            let finished = worker.is_finished();
            // Wait for reports with the GIL released; take all that are there.
            let (back, events) = py.detach(move || {
                let mut events = Vec::new();
                match rx.recv_timeout(POLL) {
                    Ok(e) => events.push(e),
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
                }
                events.extend(rx.try_iter());
                (rx, events)
            });
            rx = back;
            for e in events {
                delivery.deliver(e);
            }
            delivery.flush_advance();
            if delivery.error.is_none() {
                if let Err(e) = py.check_signals() {
                    delivery.error = Some(e);
                }
            }
            if delivery.error.is_some() {
                relay.stop.store(true, Ordering::Relaxed);
            }
            // Every report is sent before the worker ends: one more round after it has ended
            // delivers the last of them.
            if finished {
                break;
            }
        }
        py.detach(move || worker.join())
    });
    let result = match outcome {
        Ok(r) => r,
        // A panic of the scope itself (not of the step): hand it on.
        Err(payload) => std::panic::resume_unwind(payload),
    };
    if let Some(e) = delivery.error {
        return Err(e);
    }
    match result {
        Ok(Ok(summary)) => {
            let text = serde_json::to_string(&summary)
                .map_err(|e| IufError::new_err(format!("step summary: {e}")))?;
            py.import("json")?.call_method1("loads", (text,))
        }
        Ok(Err(e)) => Err(step_error(e, paths)),
        Err(payload) if payload.is::<Stopped>() => Err(IufError::new_err(
            "the step was stopped without an exception to report",
        )),
        Err(payload) => std::panic::resume_unwind(payload),
    }
}

/// A library error as an exception: FileNotFoundError when one of the input paths does not
/// exist, else iuf.IufError; the message is the one `iuf` prints.
fn step_error(e: anyhow::Error, paths: &[(&str, &Path)]) -> PyErr {
    let message = format!("{e:#}");
    if paths
        .iter()
        .any(|(_, p)| std::fs::symlink_metadata(p).is_err())
    {
        return PyFileNotFoundError::new_err(message);
    }
    IufError::new_err(message)
}

/// A step's run with its reports, its barrier before the file is written, and its summary.
fn steps(relay: &Relay, step: Step) -> anyhow::Result<serde_json::Value> {
    for note in &step.notes {
        relay.send(Event::Note(note.clone()));
    }
    relay.send(Event::Status(step.description.clone()));
    let learned = step.run(relay)?;
    relay.barrier();
    learned.save()?;
    Ok(learned.summary())
}

/// `classes` as a list: a list of names, or one string of names separated by commas.
fn class_list(classes: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Vec<String>>> {
    let Some(c) = classes else {
        return Ok(None);
    };
    let checked = if let Ok(s) = c.cast::<PyString>() {
        args::parse_classes(&s.to_cow()?, Spelling::Keywords)
    } else {
        let names: Vec<String> = c.extract().map_err(|_| {
            PyTypeError::new_err(format!(
                "classes: expected a list of object names or a string `a,b`; found {}",
                c.get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            ))
        })?;
        let shown = c.repr().map(|r| r.to_string()).unwrap_or_default();
        args::check_class_names(&shown, &names, Spelling::Keywords).map(|_| names)
    };
    checked
        .map(Some)
        .map_err(|e| PyValueError::new_err(format!("{e:#}")))
}

fn precision(p: Option<&str>) -> PyResult<Option<Precision>> {
    p.map(|s| {
        s.parse::<Precision>()
            .map_err(|e| PyValueError::new_err(format!("precision: {e}")))
    })
    .transpose()
}

fn resources(
    weights: Option<PathBuf>,
    strict_weights: bool,
    cache_dir: Option<PathBuf>,
    feature_cache: bool,
) -> Resources {
    Resources {
        device: Device::Cpu,
        weights,
        strict_weights,
        cache_dir,
        feature_cache,
        spelling: Spelling::Keywords,
    }
}

/// Trains a new model on the first objects, as `iuf train` does, and writes it to `out`
/// (atomically). Returns the dict `iuf train --json` prints.
#[pyfunction]
#[pyo3(signature = (
    data, out, *, classes = None, method = "memory", num_classes = 15, backbone = "lite0",
    preset = "cpu", config = None, epochs = None, incremental_epochs = None, batch_size = None,
    seed = None, precision = None, tile = None, overlap = 0, tile_input = None,
    tile_memory = "shared", weights = None, strict_weights = false, cache_dir = None,
    feature_cache = true, progress = None
))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn train<'py>(
    py: Python<'py>,
    data: PathBuf,
    out: PathBuf,
    classes: Option<Bound<'py, PyAny>>,
    method: &str,
    num_classes: usize,
    backbone: &str,
    preset: &str,
    config: Option<PathBuf>,
    epochs: Option<usize>,
    incremental_epochs: Option<usize>,
    batch_size: Option<usize>,
    seed: Option<u64>,
    precision: Option<&str>,
    tile: Option<Bound<'py, PyAny>>,
    overlap: usize,
    tile_input: Option<usize>,
    tile_memory: &str,
    weights: Option<PathBuf>,
    strict_weights: bool,
    cache_dir: Option<PathBuf>,
    feature_cache: bool,
    progress: Option<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let method =
        Strategy::parse(method).map_err(|e| PyValueError::new_err(format!("method: {e}")))?;
    if !["cpu", "paper", "tiny"].contains(&preset) {
        return Err(PyValueError::new_err(format!(
            "preset: expected 'cpu', 'paper' or 'tiny'; found {preset:?}"
        )));
    }
    let per_position = match tile_memory {
        "shared" => false,
        "per-position" | "per_position" => true,
        other => {
            return Err(PyValueError::new_err(format!(
                "tile_memory: expected 'shared' or 'per-position'; found {other:?}"
            )))
        }
    };
    let tiles = match tile {
        None => None,
        Some(t) => Some(TileOptions {
            tile: match t.extract::<usize>() {
                Ok(px) => px.to_string(),
                Err(_) => t.extract::<String>().map_err(|_| {
                    PyTypeError::new_err("tile: expected a tile side in pixels (int) or 'auto'")
                })?,
            },
            overlap,
            input: tile_input,
            per_position,
        }),
    };
    let request = TrainRequest {
        data,
        classes: class_list(classes.as_ref())?,
        out,
        method,
        num_classes,
        backbone: backbone.to_string(),
        config: ConfigOptions {
            preset: preset.to_string(),
            config,
            epochs,
            incremental_epochs,
            batch_size,
            seed,
            score_margin: None,
            calibration_folds: None,
            precision: self::precision(precision)?,
            tiles,
        },
    };
    let resources = resources(weights, strict_weights, cache_dir, feature_cache);
    let mut paths: Vec<(&str, &Path)> = vec![("data", &request.data)];
    if let Some(w) = &resources.weights {
        paths.push(("weights", w));
    }
    if let Some(c) = &request.config.config {
        paths.push(("config", c));
    }
    run_step(
        py,
        progress,
        |relay| steps(relay, Step::train(&request, &resources)?),
        &paths,
    )
}

/// Teaches the trained model `model` new objects from their images only, as `iuf learn` does,
/// and writes the updated model to `out` (atomically; `model` is never modified). Returns the
/// dict `iuf learn --json` prints.
#[pyfunction]
#[pyo3(signature = (
    model, data, out, *, classes = None, epochs = None, precision = None, weights = None,
    strict_weights = false, cache_dir = None, feature_cache = true, progress = None
))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn learn<'py>(
    py: Python<'py>,
    model: PathBuf,
    data: PathBuf,
    out: PathBuf,
    classes: Option<Bound<'py, PyAny>>,
    epochs: Option<usize>,
    precision: Option<&str>,
    weights: Option<PathBuf>,
    strict_weights: bool,
    cache_dir: Option<PathBuf>,
    feature_cache: bool,
    progress: Option<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let request = LearnRequest {
        model,
        data,
        classes: class_list(classes.as_ref())?,
        out,
        epochs,
        precision: self::precision(precision)?,
    };
    let resources = resources(weights, strict_weights, cache_dir, feature_cache);
    let mut paths: Vec<(&str, &Path)> = vec![("model", &request.model), ("data", &request.data)];
    if let Some(w) = &resources.weights {
        paths.push(("weights", w));
    }
    run_step(
        py,
        progress,
        |relay| steps(relay, Step::learn(&request, &resources)?),
        &paths,
    )
}
