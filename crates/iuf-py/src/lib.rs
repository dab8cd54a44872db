//! `iuf._iuf`, the native part of the Python package `iuf` (`python/iuf/` holds the Python part,
//! the type stubs and the docstrings' long form). A thin layer over `iuf_inspect`, the scoring path
//! of `iuf predict`, `iuf serve` and the C library: the same model opening, preprocessing, model
//! and thresholds, here with Python values in and out:
//!
//! - [`Model`]: `Model.load(path, weights=None)` opens a model as `iuf predict --model` does;
//!   `inspect` and `inspect_batch` score images given as paths, encoded bytes or `H x W x 3` uint8
//!   numpy arrays, with the GIL released while the images are decoded and scored.
//! - [`Inspection`]: one image's answer, the fields of a line of `iuf predict --json` (built by
//!   the same `iuf_inspect::Outcome::scored`) and the anomaly map at the image's size as a float32
//!   numpy array.
//! - `train` and `learn` ([`learning`]): the steps of `iuf train` and `iuf learn`, on a thread of
//!   their own, reporting [`learning::Progress`] to an optional callback.
//! - `metrics`: the sklearn-exact functions of iuf-metrics on numpy arrays.
//!
//! Errors are Python exceptions whose messages are those of the library the CLI prints: `IufError`
//! and its subclasses `ModelError`, `WeightsError`, `ImageError`; `FileNotFoundError` for a missing
//! model, weights or image file; `ValueError`/`TypeError` for arguments of the wrong kind.

mod learning;

use std::io::Cursor;
use std::path::PathBuf;

use candle_core::Device;
use image::RgbImage;
use iuf_inspect::open::Names;
use iuf_inspect::{Inspection as Scored, OpenError, Outcome, Timings};
use numpy::prelude::*;
use numpy::{PyArray2, PyArray3, PyReadonlyArray1, PyReadonlyArray3, PyUntypedArray};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyFileNotFoundError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes};
use rayon::prelude::*;

create_exception!(
    iuf,
    IufError,
    PyException,
    "Base class of the errors iuf raises (besides FileNotFoundError, ValueError and TypeError)."
);
create_exception!(
    iuf,
    ModelError,
    IufError,
    "The model file is not a model, is damaged, names an unknown backbone, or has learned no object."
);
create_exception!(
    iuf,
    WeightsError,
    IufError,
    "The backbone weights are damaged, cannot be fetched, or are not those the model was trained on."
);
create_exception!(
    iuf,
    ImageError,
    IufError,
    "An image could not be decoded or scored."
);

/// How the binding names its arguments in messages (the CLI says `--model` and `--weights`).
const NAMES: Names = Names {
    model: "Model.load's path",
    weights: "Model.load's weights",
};

/// Images per call of the inspector: `iuf predict`'s batches of at most 8.
const CHUNK: usize = 8;

/// An image as the caller gave it, taken out of Python (so the GIL can be released).
enum Source {
    Path(PathBuf),
    Bytes(Vec<u8>),
    Pixels(RgbImage),
}

/// A failure decoding or scoring, with the Python exception it becomes.
enum Failure {
    NotFound(String),
    Image(String),
}

impl From<Failure> for PyErr {
    fn from(f: Failure) -> Self {
        match f {
            Failure::NotFound(m) => PyFileNotFoundError::new_err(m),
            Failure::Image(m) => ImageError::new_err(m),
        }
    }
}

/// Takes one image argument out of Python: bytes or bytearray (an encoded image), a numpy array
/// (`H x W x 3`, uint8; any strides), or a path (str or os.PathLike).
fn source(what: &str, obj: &Bound<'_, PyAny>) -> PyResult<Source> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(Source::Bytes(b.as_bytes().to_vec()));
    }
    if let Ok(b) = obj.cast::<PyByteArray>() {
        return Ok(Source::Bytes(b.to_vec()));
    }
    if let Ok(a) = obj.cast::<PyUntypedArray>() {
        return pixels(what, a).map(Source::Pixels);
    }
    if let Ok(p) = obj.extract::<PathBuf>() {
        return Ok(Source::Path(p));
    }
    Err(PyTypeError::new_err(format!(
        "{what}: expected a path (str or os.PathLike), the bytes of an encoded image (PNG, JPEG, \
         BMP or TIFF), or an H x W x 3 uint8 numpy array (RGB); found {}",
        obj.get_type().name()?
    )))
}

/// The pixels of an `H x W x 3` uint8 array, copied into an image (rows packed).
fn pixels(what: &str, a: &Bound<'_, PyUntypedArray>) -> PyResult<RgbImage> {
    let expected = "expected an H x W x 3 uint8 array (RGB, 8 bits per channel)";
    let dtype = a.dtype();
    if !dtype.is_equiv_to(&numpy::dtype::<u8>(a.py())) {
        return Err(PyTypeError::new_err(format!(
            "{what}: {expected}; found a {dtype} array of shape {:?} (convert with \
             np.asarray(image, dtype=np.uint8) after scaling to 0..255)",
            a.shape()
        )));
    }
    let shape = a.shape();
    if a.ndim() != 3 || shape[2] != 3 || shape[0] == 0 || shape[1] == 0 {
        return Err(PyValueError::new_err(format!(
            "{what}: {expected}; found shape {shape:?}{}",
            if a.ndim() == 2 {
                " (a grayscale image: stack it to 3 channels, e.g. np.repeat(image[..., None], 3, axis=2))"
            } else if a.ndim() == 3 && shape[2] == 4 {
                " (RGBA: drop the alpha channel, image[..., :3])"
            } else {
                ""
            }
        )));
    }
    let (h, w) = (shape[0], shape[1]);
    let (Ok(wu), Ok(hu)) = (u32::try_from(w), u32::try_from(h)) else {
        return Err(PyValueError::new_err(format!(
            "{what}: the image is {w} x {h} pixels; too large"
        )));
    };
    let array = a.cast::<PyArray3<u8>>()?.readonly();
    let data = match array.as_slice() {
        Ok(s) => s.to_vec(),
        // Any strides (a crop, a flipped view, BGR reversed with [..., ::-1]).
        Err(_) => array.as_array().iter().copied().collect(),
    };
    RgbImage::from_raw(wu, hu, data)
        .ok_or_else(|| PyValueError::new_err(format!("{what}: the pixel buffer has a wrong size")))
}

/// Decodes an image given by path (as `iuf predict` reads files) or by its encoded bytes (as
/// `iuf serve` reads uploads: PNG, JPEG, BMP or TIFF).
fn decode(what: &str, s: Source) -> Result<RgbImage, Failure> {
    match s {
        Source::Pixels(img) => Ok(img),
        Source::Path(p) => iuf_data::image::load_rgb(&p).map_err(|e| {
            let message = format!("{what}: {e}");
            if std::fs::symlink_metadata(&p).is_err() {
                Failure::NotFound(message)
            } else {
                Failure::Image(message)
            }
        }),
        Source::Bytes(b) => decode_bytes(what, &b),
    }
}

fn decode_bytes(what: &str, bytes: &[u8]) -> Result<RgbImage, Failure> {
    if bytes.is_empty() {
        return Err(Failure::Image(format!(
            "{what}: empty bytes; expected a PNG, JPEG, BMP or TIFF image"
        )));
    }
    let reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Failure::Image(format!("{what}: {e}")))?;
    match reader.format() {
        Some(
            image::ImageFormat::Png
            | image::ImageFormat::Jpeg
            | image::ImageFormat::Bmp
            | image::ImageFormat::Tiff,
        ) => {}
        Some(format) => {
            return Err(Failure::Image(format!(
                "{what}: {format:?} images are not read here; pass PNG, JPEG, BMP or TIFF"
            )))
        }
        None => {
            let head: String = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
            return Err(Failure::Image(format!(
                "{what}: not an image iuf reads ({} bytes starting {head}); expected PNG, JPEG, \
                 BMP or TIFF",
                bytes.len()
            )));
        }
    }
    reader
        .decode()
        .map(|img| img.into_rgb8())
        .map_err(|e| Failure::Image(format!("{what}: {e}")))
}

/// One image's answer: the fields of a line of `iuf predict --json` and the anomaly map.
#[pyclass(frozen, module = "iuf", name = "Inspection")]
struct Inspection {
    /// The image's anomaly score (higher: more anomalous).
    #[pyo3(get)]
    score: f32,
    /// The object's decision threshold, or None when the object has no calibrated threshold.
    #[pyo3(get)]
    threshold: Option<f32>,
    /// 'ok', 'defect', or None when the object has no threshold.
    #[pyo3(get)]
    decision: Option<&'static str>,
    /// The object the image was judged as.
    #[pyo3(get)]
    object: String,
    /// How sure the model is that the image shows `object` (0 to 1).
    #[pyo3(get)]
    object_probability: f32,
    /// The quantile of held-out good scores the threshold is, None without a threshold.
    #[pyo3(get)]
    quantile: Option<f64>,
    /// The anomaly map at the image's size (H x W, float32), on the scale of score and threshold.
    #[pyo3(get)]
    map: Py<PyArray2<f32>>,
}

#[pymethods]
impl Inspection {
    fn __repr__(&self) -> String {
        let opt = |v: Option<String>| v.unwrap_or_else(|| "None".into());
        format!(
            "Inspection(score={}, threshold={}, decision={}, object='{}', \
             object_probability={}, quantile={})",
            self.score,
            opt(self.threshold.map(|t| t.to_string())),
            opt(self.decision.map(|d| format!("'{d}'"))),
            self.object,
            self.object_probability,
            opt(self.quantile.map(|q| q.to_string())),
        )
    }
}

/// A scored image before it becomes Python values: predict's outcome and the map at the image's
/// size.
struct Answer {
    outcome: Outcome,
    map: Vec<f32>,
    width: usize,
    height: usize,
}

impl Answer {
    fn into_py(self, py: Python<'_>) -> PyResult<Inspection> {
        let o = self.outcome;
        let map = numpy::ndarray::Array2::from_shape_vec((self.height, self.width), self.map)
            .map_err(|e| ImageError::new_err(format!("anomaly map: {e}")))?
            .into_pyarray(py)
            .unbind();
        Ok(Inspection {
            score: o.score.unwrap_or(f32::NAN),
            threshold: o.threshold,
            decision: o.decision,
            object: o.object.unwrap_or_default(),
            object_probability: o.object_probability.unwrap_or(f32::NAN),
            quantile: o.quantile,
            map,
        })
    }
}

/// An iuf model file opened with its backbone, ready to inspect images.
///
/// Open once with Model.load (about a second) and keep it. Several Python threads may use one
/// model at once: the GIL is released while images are decoded and scored.
#[pyclass(frozen, module = "iuf", name = "Model")]
struct Model {
    inner: iuf_inspect::Model,
}

#[pymethods]
impl Model {
    /// Opens the model file `path` (written by `iuf train` or `iuf learn`) with the backbone
    /// weights it was trained on, as `iuf predict --model` does. `weights`: a .safetensors or
    /// .pth file (as `iuf --weights`), or None for the download cache ($IUF_CACHE, else
    /// ~/.cache/iuf). Raises FileNotFoundError, ModelError or WeightsError.
    #[staticmethod]
    #[pyo3(signature = (path, weights = None))]
    fn load(py: Python<'_>, path: PathBuf, weights: Option<PathBuf>) -> PyResult<Self> {
        let opened =
            py.detach(|| iuf_inspect::Model::open(&path, weights.as_deref(), &Device::Cpu, &NAMES));
        match opened {
            Ok(inner) => Ok(Self { inner }),
            Err(OpenError::Model(e)) => {
                let message = format!("{e:#}");
                Err(match std::fs::symlink_metadata(&path) {
                    Err(_) => PyFileNotFoundError::new_err(message),
                    Ok(_) => ModelError::new_err(message),
                })
            }
            Err(OpenError::Weights(e)) => {
                let message = format!("{e:#}");
                Err(match weights.as_deref().map(std::fs::symlink_metadata) {
                    Some(Err(_)) => PyFileNotFoundError::new_err(message),
                    _ => WeightsError::new_err(message),
                })
            }
        }
    }

    /// The objects the model has learned, in the order it learned them.
    #[getter]
    fn objects(&self) -> Vec<String> {
        self.inner.objects()
    }

    /// The model file.
    #[getter]
    fn path(&self) -> PathBuf {
        self.inner.path.clone()
    }

    /// The quantile of the model's thresholds.
    #[getter]
    fn quantile(&self) -> f64 {
        self.inner.quantile()
    }

    /// What the model file holds: the dict `iuf info --json` prints.
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let value = iuf_inspect::info::model_json(&self.inner.path, &self.inner.learner)
            .map_err(|e| ModelError::new_err(format!("{e:#}")))?;
        let text = serde_json::to_string(&value)
            .map_err(|e| ModelError::new_err(format!("model description: {e}")))?;
        py.import("json")?.call_method1("loads", (text,))
    }

    /// Inspects one image as `iuf predict` does: `image` is a path, the bytes of a PNG, JPEG,
    /// BMP or TIFF file, or an H x W x 3 uint8 RGB array. `object`: None to let the model
    /// recognise the object, or one of `objects` to judge the image as that object. Returns an
    /// Inspection (score, threshold, decision, object, object_probability, quantile, map).
    #[pyo3(signature = (image, object = None))]
    fn inspect(
        &self,
        py: Python<'_>,
        image: &Bound<'_, PyAny>,
        object: Option<String>,
    ) -> PyResult<Inspection> {
        let sources = vec![source("image", image)?];
        let mut answers = self.run(py, sources, object, false)?;
        answers
            .pop()
            .ok_or_else(|| ImageError::new_err("the model answered nothing"))?
            .into_py(py)
    }

    /// Inspects a list of images (each as for `inspect`) in `iuf predict`'s batches of at most
    /// 8; returns one Inspection per image, in order. A failing image raises for the whole call,
    /// its message starting `images[i]`.
    #[pyo3(signature = (images, object = None))]
    fn inspect_batch(
        &self,
        py: Python<'_>,
        images: &Bound<'_, PyAny>,
        object: Option<String>,
    ) -> PyResult<Vec<Inspection>> {
        if images.cast::<PyBytes>().is_ok()
            || images.cast::<PyUntypedArray>().is_ok()
            || images.extract::<PathBuf>().is_ok()
        {
            return Err(PyTypeError::new_err(
                "inspect_batch: expected a list of images (paths, bytes or arrays); for one image \
                 call inspect",
            ));
        }
        let mut sources = Vec::new();
        for (i, item) in images.try_iter()?.enumerate() {
            sources.push(source(&format!("images[{i}]"), &item?)?);
        }
        self.run(py, sources, object, true)?
            .into_iter()
            .map(|a| a.into_py(py))
            .collect()
    }

    /// Benchmark aid (crates/iuf-py/bench/inspect_timing.py): scores one image `repeat` times on the
    /// Rust side only (the image taken out of Python once, the answers not turned into Python
    /// values) and returns the seconds of each call, to set against `inspect`'s.
    #[pyo3(signature = (image, repeat = 10))]
    fn _rust_inspect_seconds(
        &self,
        py: Python<'_>,
        image: &Bound<'_, PyAny>,
        repeat: usize,
    ) -> PyResult<Vec<f64>> {
        let source = source("image", image)?;
        let model = &self.inner;
        py.detach(move || -> Result<Vec<f64>, Failure> {
            let decoded = vec![decode("image", source)?];
            let inspector = model
                .inspector()
                .map_err(|e| Failure::Image(format!("{e:#}")))?;
            (0..repeat)
                .map(|_| {
                    let start = std::time::Instant::now();
                    score(model, &inspector, &decoded, &[PathBuf::new()], None)?;
                    Ok(start.elapsed().as_secs_f64())
                })
                .collect()
        })
        .map_err(PyErr::from)
    }

    fn __repr__(&self) -> String {
        format!(
            "Model('{}', objects={:?})",
            self.inner.path.display(),
            self.inner.objects()
        )
    }
}

impl Model {
    /// Decodes and scores `sources` with the GIL released.
    fn run(
        &self,
        py: Python<'_>,
        sources: Vec<Source>,
        object: Option<String>,
        batch: bool,
    ) -> PyResult<Vec<Answer>> {
        if let Some(o) = &object {
            if !self.inner.objects().iter().any(|n| n == o) {
                return Err(PyValueError::new_err(format!(
                    "object `{o}` is not an object model {} knows ({})",
                    self.inner.path.display(),
                    self.inner.objects().join(", ")
                )));
            }
        }
        let model = &self.inner;
        py.detach(move || -> Result<Vec<Answer>, Failure> {
            let inspector = model
                .inspector()
                .map_err(|e| Failure::Image(format!("{e:#}")))?;
            let mut answers = Vec::with_capacity(sources.len());
            let mut sources = sources.into_iter().enumerate().peekable();
            while sources.peek().is_some() {
                let chunk: Vec<(usize, Source)> = sources.by_ref().take(CHUNK).collect();
                let paths: Vec<PathBuf> = chunk
                    .iter()
                    .map(|(_, s)| match s {
                        Source::Path(p) => p.clone(),
                        _ => PathBuf::new(),
                    })
                    .collect();
                // Decoded in parallel, as `iuf predict` decodes a batch; the first failing image
                // (in order) is the one reported.
                let decoded: Vec<Result<RgbImage, Failure>> = chunk
                    .into_par_iter()
                    .map(|(i, s)| {
                        let what = match batch {
                            true => format!("images[{i}]"),
                            false => "image".to_string(),
                        };
                        decode(&what, s)
                    })
                    .collect();
                let decoded = decoded.into_iter().collect::<Result<Vec<_>, _>>()?;
                answers.extend(score(
                    model,
                    &inspector,
                    &decoded,
                    &paths,
                    object.as_deref(),
                )?);
            }
            Ok(answers)
        })
        .map_err(PyErr::from)
    }
}

/// Scores decoded images (at most [`CHUNK`]) as `iuf predict` does: the inspector's verdicts,
/// predict's outcomes and the maps at the images' sizes.
fn score(
    model: &iuf_inspect::Model,
    inspector: &iuf_inspect::Inspector<'_>,
    decoded: &[RgbImage],
    paths: &[PathBuf],
    object: Option<&str>,
) -> Result<Vec<Answer>, Failure> {
    let quantile = model.quantile();
    let refs: Vec<&RgbImage> = decoded.iter().collect();
    let scored: Vec<Scored> = inspector
        .inspect(&refs, object, quantile, &mut Timings::default())
        .map_err(|e| Failure::Image(format!("{e:#}")))?;
    if scored.len() != decoded.len() {
        return Err(Failure::Image(format!(
            "the model answered {} results for {} images",
            scored.len(),
            decoded.len()
        )));
    }
    // The maps brought to the images' sizes in parallel, as predict's heatmaps are.
    Ok(scored
        .into_par_iter()
        .zip(decoded)
        .zip(paths)
        .map(|((s, img), path)| {
            let (w, h) = (img.width() as usize, img.height() as usize);
            Answer {
                outcome: Outcome::scored(path, &s, quantile),
                map: iuf_inspect::resize_map(&s.map, s.map_w, s.map_h, w, h),
                width: w,
                height: h,
            }
        })
        .collect())
}

fn metric_error(e: iuf_metrics::MetricsError) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// Image-level scores and labels as slices.
fn scores_labels<'a>(
    scores: &'a PyReadonlyArray1<'_, f32>,
    labels: &'a PyReadonlyArray1<'_, bool>,
) -> PyResult<(&'a [f32], &'a [bool])> {
    let s = scores
        .as_slice()
        .map_err(|e| PyValueError::new_err(format!("scores: {e}")))?;
    let l = labels
        .as_slice()
        .map_err(|e| PyValueError::new_err(format!("labels: {e}")))?;
    Ok((s, l))
}

/// Maps and masks (`N x H x W`) as one slice per image, and the image size.
struct Parts<'a> {
    maps: Vec<&'a [f32]>,
    masks: Vec<&'a [u8]>,
    width: usize,
    height: usize,
}

fn parts<'a>(
    maps: &'a PyReadonlyArray3<'_, f32>,
    masks: &'a PyReadonlyArray3<'_, u8>,
) -> PyResult<Parts<'a>> {
    let (ms, ks) = (maps.shape(), masks.shape());
    if ms != ks {
        return Err(PyValueError::new_err(format!(
            "maps and masks: expected the same N x H x W shape, found {ms:?} and {ks:?}"
        )));
    }
    let (height, width) = (ms[1], ms[2]);
    let m = maps
        .as_slice()
        .map_err(|e| PyValueError::new_err(format!("maps: {e}")))?;
    let k = masks
        .as_slice()
        .map_err(|e| PyValueError::new_err(format!("masks: {e}")))?;
    let size = (height * width).max(1);
    Ok(Parts {
        maps: m.chunks(size).collect(),
        masks: k.chunks(size).collect(),
        width,
        height,
    })
}

/// Image AUROC (scikit-learn's roc_auc_score).
#[pyfunction]
fn auroc(
    py: Python<'_>,
    scores: PyReadonlyArray1<'_, f32>,
    labels: PyReadonlyArray1<'_, bool>,
) -> PyResult<f64> {
    let (s, l) = scores_labels(&scores, &labels)?;
    py.detach(|| iuf_metrics::auroc(s, l)).map_err(metric_error)
}

/// Average precision (scikit-learn's average_precision_score).
#[pyfunction]
fn average_precision(
    py: Python<'_>,
    scores: PyReadonlyArray1<'_, f32>,
    labels: PyReadonlyArray1<'_, bool>,
) -> PyResult<f64> {
    let (s, l) = scores_labels(&scores, &labels)?;
    py.detach(|| iuf_metrics::average_precision(s, l))
        .map_err(metric_error)
}

/// Best F1 over thresholds and the threshold reaching it.
#[pyfunction]
fn f1_max(
    py: Python<'_>,
    scores: PyReadonlyArray1<'_, f32>,
    labels: PyReadonlyArray1<'_, bool>,
) -> PyResult<(f64, f32)> {
    let (s, l) = scores_labels(&scores, &labels)?;
    py.detach(|| iuf_metrics::f1_max(s, l))
        .map(|f| (f.f1, f.threshold))
        .map_err(metric_error)
}

/// Pixel AUROC over every pixel of every map.
#[pyfunction]
fn pixel_auroc(
    py: Python<'_>,
    maps: PyReadonlyArray3<'_, f32>,
    masks: PyReadonlyArray3<'_, u8>,
) -> PyResult<f64> {
    let p = parts(&maps, &masks)?;
    py.detach(|| iuf_metrics::auroc_multi(&p.maps, &p.masks))
        .map_err(metric_error)
}

/// Pixel average precision over every pixel of every map.
#[pyfunction]
fn pixel_average_precision(
    py: Python<'_>,
    maps: PyReadonlyArray3<'_, f32>,
    masks: PyReadonlyArray3<'_, u8>,
) -> PyResult<f64> {
    let p = parts(&maps, &masks)?;
    py.detach(|| iuf_metrics::average_precision_multi(&p.maps, &p.masks))
        .map_err(metric_error)
}

/// Pixel F1-max over every pixel of every map.
#[pyfunction]
fn pixel_f1_max(
    py: Python<'_>,
    maps: PyReadonlyArray3<'_, f32>,
    masks: PyReadonlyArray3<'_, u8>,
) -> PyResult<(f64, f32)> {
    let p = parts(&maps, &masks)?;
    py.detach(|| iuf_metrics::f1_max_multi(&p.maps, &p.masks))
        .map(|f| (f.f1, f.threshold))
        .map_err(metric_error)
}

/// Normalised area under the PRO curve up to `max_fpr`.
#[pyfunction]
#[pyo3(signature = (maps, masks, max_fpr = iuf_metrics::PRO_MAX_FPR))]
fn au_pro(
    py: Python<'_>,
    maps: PyReadonlyArray3<'_, f32>,
    masks: PyReadonlyArray3<'_, u8>,
    max_fpr: f64,
) -> PyResult<f64> {
    let p = parts(&maps, &masks)?;
    py.detach(|| iuf_metrics::pro_auc(&p.maps, &p.masks, p.width, p.height, max_fpr))
        .map_err(metric_error)
}

/// The version of the iuf crates this module was built from.
const VERSION: &str = env!("CARGO_PKG_VERSION");

#[pymodule]
fn _iuf(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("__version__", VERSION)?;
    m.add("IufError", py.get_type::<IufError>())?;
    m.add("ModelError", py.get_type::<ModelError>())?;
    m.add("WeightsError", py.get_type::<WeightsError>())?;
    m.add("ImageError", py.get_type::<ImageError>())?;
    m.add("PRO_MAX_FPR", iuf_metrics::PRO_MAX_FPR)?;
    m.add_class::<Model>()?;
    m.add_class::<Inspection>()?;
    m.add_class::<learning::Progress>()?;
    m.add_function(wrap_pyfunction!(learning::train, m)?)?;
    m.add_function(wrap_pyfunction!(learning::learn, m)?)?;
    m.add_function(wrap_pyfunction!(auroc, m)?)?;
    m.add_function(wrap_pyfunction!(average_precision, m)?)?;
    m.add_function(wrap_pyfunction!(f1_max, m)?)?;
    m.add_function(wrap_pyfunction!(pixel_auroc, m)?)?;
    m.add_function(wrap_pyfunction!(pixel_average_precision, m)?)?;
    m.add_function(wrap_pyfunction!(pixel_f1_max, m)?)?;
    m.add_function(wrap_pyfunction!(au_pro, m)?)?;
    Ok(())
}
