//! The C library from C and from Rust, on a real model (the `memory` method, learned here from
//! real mvtec-mini images with the shared Lite0 weights) and real images:
//!
//! - `c_program_answers_what_predict_answers`: `tests/c/inspect.c`, compiled with the system `cc`
//!   against `include/iuf.h` and the built `libiuf_c.so`, inspects the images from raw RGB files;
//!   its scores, thresholds, decisions, objects, probabilities (bit for bit) and maps must equal
//!   those of `iuf predict`'s path (`iuf_inspect::Inspector` on predict's batches of 8, the
//!   `Outcome` that `predict --json` prints, the map brought to the image's size). The program
//!   also checks error codes and messages and that 4 threads on one handle agree.
//! - `threads_inspecting_one_handle_agree`: the same from Rust threads, without a C compiler.
//! - `open_failures_say_which_part_and_name_the_file`: error codes and messages of bad models and
//!   weights.

use std::ffi::{c_char, CStr, CString};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use candle_core::Device;
use image::RgbImage;
use iuf_c::*;
use iuf_incremental::{FeatureStore, Learner, NoProgress, Strategy, TrainConfig};
use iuf_inspect::open::{self, WeightsSource};
use iuf_inspect::{Model, Outcome, Timings};

/// `../shared` beside the checkout.
fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

fn lite0() -> PathBuf {
    shared().join("weights/efficientnet-lite0/efficientnet-lite0-57934424.pth")
}

fn mvtec_mini() -> PathBuf {
    shared().join("datasets/mvtec-mini")
}

const CLASSES: [&str; 2] = ["bottle", "pill"];
/// Training images per object (the first ones): enough for a memory, quick to learn.
const TRAIN_IMAGES: usize = 30;

/// A model learned once for every test of this file, and the images they inspect.
struct Fixture {
    _dir: tempfile::TempDir,
    model: PathBuf,
    /// Two images of each test folder of each object.
    images: Vec<PathBuf>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temporary folder");
        let data = dir.path().join("data");
        let mut images = Vec::new();
        for class in CLASSES {
            let src = mvtec_mini().join(class);
            let good = data.join(class).join("train/good");
            std::fs::create_dir_all(&good).unwrap();
            for f in sorted(&src.join("train/good"))
                .into_iter()
                .take(TRAIN_IMAGES)
            {
                std::os::unix::fs::symlink(&f, good.join(f.file_name().unwrap())).unwrap();
            }
            for sub in ["test", "ground_truth"] {
                std::os::unix::fs::symlink(src.join(sub), data.join(class).join(sub)).unwrap();
            }
            for kind in sorted(&src.join("test")) {
                images.extend(sorted(&kind).into_iter().take(2));
            }
        }
        let device = Device::Cpu;
        let loaded = open::backbone(
            iuf_backbone::EfficientNetVariant::Lite0,
            WeightsSource::File(&lite0()),
            &open::CLI,
            &device,
        )
        .expect("the shared Lite0 weights");
        let cfg = TrainConfig::preset("cpu", loaded.backbone.out_channels(), CLASSES.len())
            .expect("the cpu preset");
        let store = FeatureStore::new(
            None,
            loaded.backbone,
            loaded.id,
            cfg.model.image_size(),
            device.clone(),
        )
        .expect("a feature store");
        let classes: Vec<String> = CLASSES.iter().map(|c| c.to_string()).collect();
        let mut learner = Learner::new(
            &cfg,
            Strategy::Memory,
            store.backbone_id(),
            classes.clone(),
            &device,
        )
        .expect("a memory model");
        let dataset = iuf_data::DatasetRoot::open(&data).expect("the mvtec-mini subset");
        iuf_incremental::learn_classes(&mut learner, &dataset, &store, &classes, &NoProgress)
            .expect("learning bottle and pill");
        let model = dir.path().join("model.safetensors");
        learner.save(&model).expect("saving the model");
        Fixture {
            _dir: dir,
            model,
            images,
        }
    })
}

fn sorted(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn c(s: &Path) -> CString {
    CString::new(s.to_str().unwrap()).unwrap()
}

fn last_error() -> String {
    // SAFETY: the library returns a NUL-terminated string, valid until its next call here.
    unsafe { CStr::from_ptr(iuf_last_error_message()) }
        .to_string_lossy()
        .into_owned()
}

/// What `iuf predict` answers for `images`: decoded as predict decodes, inspected in predict's
/// batches of 8, as the `Outcome`s `predict --json` prints, with the maps at the images' size.
fn predict(paths: &[PathBuf]) -> Vec<(Outcome, Vec<f32>)> {
    let model = Model::open(&fixture().model, Some(&lite0()), &Device::Cpu, &open::CLI)
        .expect("opening the model");
    let inspector = model.inspector().unwrap();
    let mut out = Vec::new();
    for chunk in paths.chunks(8) {
        let decoded: Vec<RgbImage> = chunk
            .iter()
            .map(|p| iuf_data::image::load_rgb(p).unwrap())
            .collect();
        let refs: Vec<&RgbImage> = decoded.iter().collect();
        let scored = inspector
            .inspect(&refs, None, model.quantile(), &mut Timings::default())
            .unwrap();
        for ((p, img), s) in chunk.iter().zip(&decoded).zip(scored) {
            let map = iuf_inspect::resize_map(
                &s.map,
                s.map_w,
                s.map_h,
                img.width() as usize,
                img.height() as usize,
            );
            out.push((Outcome::scored(p, &s, model.quantile()), map));
        }
    }
    out
}

/// The built `libiuf_c.so` beside this test's executable (`target/<profile>/deps/..`).
fn library_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    for d in [deps.parent().unwrap(), deps] {
        if d.join("libiuf_c.so").is_file() {
            return d.to_path_buf();
        }
    }
    panic!(
        "no libiuf_c.so in {} or its parent: `cargo test -p iuf-c` builds it with the tests \
         (crate-type cdylib)",
        deps.display()
    );
}

fn have_cc() -> bool {
    Command::new("cc").arg("--version").output().is_ok()
}

#[test]
fn c_program_answers_what_predict_answers() {
    if !have_cc() {
        eprintln!(
            "SKIPPED c_program_answers_what_predict_answers: no C compiler `cc` on PATH \
             (install gcc or clang to run the C test)"
        );
        return;
    }
    let fx = fixture();
    let lib = library_dir();
    let work = tempfile::tempdir().unwrap();
    let exe = work.path().join("inspect");
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cc = Command::new("cc")
        .args([
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-O1",
        ])
        .arg("-I")
        .arg(crate_dir.join("include"))
        .arg(crate_dir.join("tests/c/inspect.c"))
        .arg("-o")
        .arg(&exe)
        .arg(format!("-L{}", lib.display()))
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .args(["-liuf_c", "-lpthread"])
        .output()
        .expect("running cc");
    assert!(
        cc.status.success(),
        "cc failed to build tests/c/inspect.c:\n{}",
        String::from_utf8_lossy(&cc.stderr)
    );

    // The pixels as predict decodes them, handed over as raw RGB.
    let mut list = String::new();
    for (i, p) in fx.images.iter().enumerate() {
        let img = iuf_data::image::load_rgb(p).unwrap();
        let raw = work.path().join(format!("{i}.rgb"));
        std::fs::write(&raw, img.as_raw()).unwrap();
        list += &format!("{} {} {}\n", raw.display(), img.width(), img.height());
    }
    let list_path = work.path().join("list.txt");
    std::fs::write(&list_path, list).unwrap();
    let run = Command::new(&exe)
        .arg(&fx.model)
        .arg(lite0())
        .arg(&list_path)
        .arg(work.path())
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "the C program failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    eprintln!("{stdout}");

    let objects: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("object "))
        .map(|l| l.split(' ').nth(1).unwrap())
        .collect();
    assert_eq!(objects, CLASSES, "iuf_model_objects");
    let reference = predict(&fx.images);
    let results: Vec<Vec<&str>> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("result "))
        .map(|l| l.split(' ').collect())
        .collect();
    assert_eq!(results.len(), fx.images.len(), "one result per image");
    let hex32 = |s: &str| f32::from_bits(u32::from_str_radix(s, 16).unwrap());
    let mut recognised = std::collections::BTreeSet::new();
    for (i, (r, (o, map))) in results.iter().zip(&reference).enumerate() {
        let name = fx.images[i].display();
        assert_eq!(r[1], o.object.as_deref().unwrap(), "{name}: object");
        recognised.insert(r[1].to_string());
        assert_eq!(
            hex32(r[3]).to_bits(),
            o.score.unwrap().to_bits(),
            "{name}: score {} from C, {} from predict",
            hex32(r[3]),
            o.score.unwrap()
        );
        match o.threshold {
            Some(t) => assert_eq!(hex32(r[4]).to_bits(), t.to_bits(), "{name}: threshold"),
            None => assert!(hex32(r[4]).is_nan(), "{name}: no threshold is NaN"),
        }
        let decision = match o.decision {
            None => iuf_decision::IUF_DECISION_NONE,
            Some("ok") => iuf_decision::IUF_DECISION_OK,
            Some("defect") => iuf_decision::IUF_DECISION_DEFECT,
            Some(d) => panic!("decision {d}"),
        } as i32;
        assert_eq!(r[5].parse::<i32>().unwrap(), decision, "{name}: decision");
        assert_eq!(
            hex32(r[6]).to_bits(),
            o.object_probability.unwrap().to_bits(),
            "{name}: object probability"
        );
        let quantile = f64::from_bits(u64::from_str_radix(r[7], 16).unwrap());
        if let Some(q) = o.quantile {
            assert_eq!(quantile.to_bits(), q.to_bits(), "{name}: quantile");
        }
        let bytes = std::fs::read(work.path().join(format!("{i}.f32"))).unwrap();
        let c_map: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_ne_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(c_map.len(), map.len(), "{name}: map size");
        assert!(
            c_map
                .iter()
                .zip(map)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{name}: the map differs from predict's"
        );
    }
    assert_eq!(
        recognised.len(),
        CLASSES.len(),
        "the images of both objects were recognised as both objects"
    );
    assert!(stdout.contains("threads 4 agree"), "{stdout}");
}

/// Inspects every fixture image through the C functions; returns (result, map) per image.
fn inspect_all(model: *const iuf_model, images: &[RgbImage]) -> Vec<(iuf_result, Vec<f32>)> {
    images
        .iter()
        .map(|img| {
            let (w, h) = img.dimensions();
            let mut map = vec![0f32; (w * h) as usize];
            let mut r = std::mem::MaybeUninit::<iuf_result>::uninit();
            // SAFETY: a live handle, packed rows, buffers of the sizes passed.
            let status = unsafe {
                iuf_inspect_rgb(
                    model,
                    img.as_raw().as_ptr(),
                    w,
                    h,
                    3 * w as usize,
                    std::ptr::null(),
                    r.as_mut_ptr(),
                    map.as_mut_ptr(),
                    map.len(),
                )
            };
            assert_eq!(status, iuf_status::IUF_OK, "{}", last_error());
            // SAFETY: written on IUF_OK.
            (unsafe { r.assume_init() }, map)
        })
        .collect()
}

struct Handle(*mut iuf_model);
// SAFETY: the library documents handles as usable from any thread at once.
unsafe impl Send for Handle {}
// SAFETY: as above.
unsafe impl Sync for Handle {}

impl Handle {
    fn get(&self) -> *const iuf_model {
        self.0
    }
}

#[test]
fn threads_inspecting_one_handle_agree() {
    let fx = fixture();
    let mut handle: *mut iuf_model = std::ptr::null_mut();
    // SAFETY: valid C strings and a slot for the handle.
    let status =
        unsafe { iuf_model_open(c(&fx.model).as_ptr(), c(&lite0()).as_ptr(), &mut handle) };
    assert_eq!(status, iuf_status::IUF_OK, "{}", last_error());
    let h = Handle(handle);
    let images: Vec<RgbImage> = fx
        .images
        .iter()
        .take(6)
        .map(|p| iuf_data::image::load_rgb(p).unwrap())
        .collect();
    let alone = inspect_all(h.get(), &images);
    let together: Vec<Vec<(iuf_result, Vec<f32>)>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..3)
            .map(|_| s.spawn(|| inspect_all(h.get(), &images)))
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    for run in together {
        for ((a, am), (b, bm)) in alone.iter().zip(&run) {
            assert_eq!(a.score.to_bits(), b.score.to_bits());
            assert_eq!(a.object_index, b.object_index);
            assert_eq!(a.decision, b.decision);
            assert_eq!(am, bm);
        }
    }
    // SAFETY: the handle from iuf_model_open, no longer used.
    unsafe { iuf_model_free(h.0) };
}

fn open_fails(model: &Path, weights: Option<&Path>) -> (iuf_status, String) {
    let mut handle: *mut iuf_model = std::ptr::dangling_mut();
    let w = weights.map(c);
    // SAFETY: valid C strings or NULL, a slot for the handle.
    let status = unsafe {
        iuf_model_open(
            c(model).as_ptr(),
            w.as_ref().map_or(std::ptr::null(), |w| w.as_ptr()),
            &mut handle,
        )
    };
    assert!(handle.is_null(), "a failed open leaves NULL in the slot");
    (status, last_error())
}

#[test]
fn open_failures_say_which_part_and_name_the_file() {
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();

    let missing = dir.path().join("missing.safetensors");
    let (s, m) = open_fails(&missing, Some(&lite0()));
    assert_eq!(s, iuf_status::IUF_ERR_MODEL);
    assert!(m.contains("missing.safetensors: no such file"), "{m}");
    assert!(m.contains("iuf_model_open's path"), "{m}");

    let bytes = std::fs::read(&fx.model).unwrap();
    let damaged = dir.path().join("damaged.safetensors");
    std::fs::write(&damaged, &bytes[..bytes.len() / 2]).unwrap();
    let (s, m) = open_fails(&damaged, Some(&lite0()));
    assert_eq!(s, iuf_status::IUF_ERR_MODEL);
    assert!(
        m.contains("cannot load model") && m.contains("damaged.safetensors"),
        "{m}"
    );

    let image = &fx.images[0];
    let (s, m) = open_fails(image, Some(&lite0()));
    assert_eq!(s, iuf_status::IUF_ERR_MODEL);
    assert!(m.contains("not a model file"), "{m}");

    let no_weights = dir.path().join("no-weights.pth");
    let (s, m) = open_fails(&fx.model, Some(&no_weights));
    assert_eq!(s, iuf_status::IUF_ERR_WEIGHTS);
    assert!(
        m.contains("iuf_model_open's weights_path") && m.contains("no-weights.pth: no such file"),
        "{m}"
    );

    // The model file given as weights: read, and refused as no weights.
    let (s, m) = open_fails(&fx.model, Some(&fx.model));
    assert_eq!(s, iuf_status::IUF_ERR_WEIGHTS, "{m}");
    assert!(m.contains("model.safetensors"), "{m}");

    // SAFETY: a NULL path is an argument error, not a crash.
    let s = unsafe {
        iuf_model_open(
            std::ptr::null(),
            std::ptr::null(),
            &mut std::ptr::null_mut(),
        )
    };
    assert_eq!(s, iuf_status::IUF_ERR_INVALID_ARGUMENT);
    let bad: *const c_char = c"\xff\xfe".as_ptr();
    // SAFETY: a NUL-terminated string that is not UTF-8.
    let s = unsafe { iuf_model_open(bad, std::ptr::null(), &mut std::ptr::null_mut()) };
    assert_eq!(s, iuf_status::IUF_ERR_INVALID_ARGUMENT);
    assert!(last_error().contains("not UTF-8"), "{}", last_error());
}
