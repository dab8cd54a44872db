//! Fault injection: damaged inputs, caches and weights, colliding outputs, and kill -9 during a
//! bench. Each case names the guarantee it checks. The rule where nothing more specific applies: a
//! clear error that names the file and what was expected, and no user file lost or changed.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::common::{lite0_pth, mvtec_mini, Iuf, Scratch};

/// The ways a file gets damaged: cut short, one flipped bit, emptied.
const DAMAGES: [&str; 3] = ["truncated", "bit-flipped", "zero-byte"];

fn damage(path: &Path, how: &str) {
    let mut bytes = std::fs::read(path).unwrap();
    match how {
        "truncated" => bytes.truncate(bytes.len() / 2),
        "bit-flipped" => {
            let at = bytes.len() * 3 / 4;
            bytes[at] ^= 0x08;
        }
        "zero-byte" => bytes.clear(),
        other => panic!("unknown damage {other}"),
    }
    std::fs::write(path, bytes).unwrap();
}

/// Messages carry no runs of spaces inside a line (stray line-continuation indentation).
#[track_caller]
fn assert_tidy(msg: &str) {
    for line in msg.lines() {
        let body = line.trim_start();
        assert!(!body.contains("  "), "stray spaces in: {line:?}");
    }
}

/// `iuf` without `--weights` (the weights come from the cache) and with a pip that cannot fetch.
fn bare(s: &Scratch, cache: &Path) -> Iuf {
    Iuf::bare()
        .env("IUF_PYTHON", s.path("no-python-here"))
        .flag("--cache-dir", cache)
        .args(["--threads", "2"])
}

/// A scratch folder with the demo data and a one-object memory model of it, `m.safetensors`
/// (seconds): (folder, data, model).
fn demo_model() -> (Scratch, PathBuf, PathBuf) {
    let (s, data) = Scratch::with_demo_data();
    let m = s.path("m.safetensors");
    s.train_tiny(&data, "fabric").out(&m).ok();
    (s, data, m)
}

fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let b = std::fs::read(&p).unwrap();
                out.push((p, b));
            }
        }
    }
    out.sort();
    out
}

/// Guarantees (issue 14 item 5): the same weights in .pth and in the cached .safetensors are the
/// same weights for a model; damaged cached weights are never used, and the error names the file
/// to delete; a model that records the weights' file sha256 (older iuf) still loads.
#[test]
fn weights_are_identified_by_their_tensors_and_damaged_cached_weights_are_refused() {
    let (s, data, m) = demo_model(); // trained with --weights <the .pth>
    let cache = s.folder("cache2");
    let cached = cache.join("efficientnet-lite0-57934424.safetensors");
    iuf_backbone::fetch::convert_pth_file(&lite0_pth(), &cached).unwrap();
    let image = data.join("fabric/test/good/000.png");
    // `iuf [--weights W] predict`, the weights from the cache unless given.
    let predict = |iuf: Iuf, out: &str| iuf.arg("predict").model(&m).arg(&image).out(s.path(out));
    predict(bare(&s, &cache), "p0").ok();
    let good = std::fs::read(&cached).unwrap();
    for how in DAMAGES {
        std::fs::write(&cached, &good).unwrap();
        damage(&cached, how);
        let err = predict(bare(&s, &cache), &format!("p-{how}")).fails();
        assert!(
            err.contains(&format!("delete {}", cached.display())) && err.contains("damaged"),
            "{how}: {err}"
        );
        assert_tidy(&err);
        assert!(
            !s.path(&format!("p-{how}")).exists(),
            "{how}: work was done"
        );
    }
    // A model of an older iuf records the sha256 of the .pth file: still the same weights.
    std::fs::write(&cached, &good).unwrap();
    let mut old = iuf_model::load_model(&m, &candle_core::Device::Cpu).unwrap();
    let pth_sha = iuf_backbone::fetch::sha256_hex(&std::fs::read(lite0_pth()).unwrap());
    old.meta.extra["backbone_weights"] = serde_json::Value::String(pth_sha);
    let state = old.state.clone();
    iuf_model::save_model(&m, &old.varmap, &old.meta, &state).unwrap();
    let o = predict(bare(&s, &cache), "p-old").ok();
    assert!(o.stderr.contains("by a file's sha256"), "{}", o.stderr);
    // Other weights are refused with a tidy message.
    let mut tensors = iuf_backbone::fetch::read_weights_file(&cached)
        .unwrap()
        .tensors;
    // The safetensors file's tensors come back in hash order, and many are zero counters
    // (`num_batches_tracked`), unchanged by scaling: change a named weight.
    let stem = tensors
        .iter_mut()
        .find(|(name, _)| name == "_conv_stem.weight")
        .expect("the Lite0 weights have a stem convolution");
    stem.1 = (&stem.1 * 1.5).unwrap();
    assert_ne!(
        iuf_backbone::fetch::tensors_digest(&tensors).unwrap(),
        iuf_backbone::fetch::read_weights_file(&cached)
            .unwrap()
            .digest
    );
    let other = s.path("other.safetensors");
    iuf_backbone::fetch::write_safetensors(&tensors, &other).unwrap();
    let err = predict(bare(&s, &cache).flag("--weights", &other), "p-other")
        .fails_with(&["pass --weights with the file the model was trained with"]);
    assert_tidy(&err);
}

/// Guarantee (issue 14 item 10): a --cache-dir that is a file (or that cannot be written) is
/// named before any work, with what is wrong; nothing is written there.
#[test]
fn a_cache_folder_that_is_a_file_or_read_only_is_named_before_any_work() {
    let (s, data) = Scratch::with_demo_data();
    let file = s.file("cache-file", b"user data");
    let out = s.path("m.safetensors");
    let train = |cache: &Path| {
        bare(&s, cache)
            .arg("train")
            .data(&data)
            .classes("fabric")
            .out(&out)
    };
    let err = train(&file).fails_with(&["--cache-dir", "is a file, not a folder"]);
    assert!(!err.contains("PyPI"), "{err}");
    assert_tidy(&err);
    assert_eq!(std::fs::read(&file).unwrap(), b"user data");
    assert!(!out.exists());
    // A folder below a file cannot be created either.
    train(&file.join("sub")).fails_with(&["--cache-dir", "not a folder"]);
    // Read-only: root ignores permission bits, so this part only runs for other users;
    // `readonly::read_only_output_folders_are_named_before_any_work` checks it as root too.
    use std::os::unix::fs::PermissionsExt;
    let ro = s.folder("ro");
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    if std::fs::write(ro.join("probe"), b"").is_err() {
        train(&ro).fails_with(&["--cache-dir", "cannot write"]);
    }
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Guarantees (issue 14 item 1): predict replaces no file it did not write in this run (a user's
/// file where a heatmap or predictions.jsonl would go, the files of an earlier run) unless
/// --overwrite; the check runs before any work; the panel may not be one of the run's own files.
#[test]
fn predict_replaces_no_file_it_did_not_write_in_this_run() {
    let (s, data, m) = demo_model();
    let image = data.join("fabric/test/good/000.png");
    let out = s.folder("out");
    let mine = s.file("out/000.png", b"the user's own picture");
    let predict = |extra: &[&str]| {
        s.iuf_json("predict")
            .model(&m)
            .arg(&image)
            .out(&out)
            .args(extra)
    };
    let err =
        predict(&[]).fails_with(&[&mine.display().to_string(), "already exists", "--overwrite"]);
    assert_tidy(&err);
    assert_eq!(std::fs::read(&mine).unwrap(), b"the user's own picture");
    assert!(!out.join("predictions.jsonl").exists(), "work was done");
    // A predictions.jsonl of the user, too.
    std::fs::remove_file(&mine).unwrap();
    std::fs::write(out.join("predictions.jsonl"), b"mine").unwrap();
    predict(&[]).fails_with(&["predictions.jsonl"]);
    assert_eq!(
        std::fs::read(out.join("predictions.jsonl")).unwrap(),
        b"mine"
    );
    std::fs::remove_file(out.join("predictions.jsonl")).unwrap();
    // A panel where this run's heatmap goes.
    let panel = out.join("000.png");
    predict(&["--panel", panel.to_str().unwrap()]).fails_with(&["--panel", "heatmap"]);
    // A clean run, then a second run into the same folder: refused, then allowed with --overwrite.
    let first = predict(&[]).ok().json_lines();
    assert_eq!(first.len(), 1);
    predict(&[]).fails_with(&["already exists"]);
    predict(&["--overwrite"]).ok();
    // Every file there is one this run wrote, no temporaries left.
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["000.png", "predictions.jsonl"]);
}

/// Guarantee (issue 14 item 2): no command writes its output over the weights file it reads,
/// whichever command it is; refused before any work, the weights unchanged.
#[test]
fn no_command_writes_over_its_weights_file() {
    let (s, data, m) = demo_model();
    let weights = s.path("weights.pth");
    std::fs::copy(lite0_pth(), &weights).unwrap();
    let before = std::fs::read(&weights).unwrap();
    let cache = s.path("cache");
    let w = || bare(&s, &cache).flag("--weights", &weights);
    let runs = [
        w().arg("train").data(&data).classes("fabric").out(&weights),
        w().arg("learn")
            .model(&m)
            .data(&data)
            .classes("mesh")
            .out(&weights),
        w().arg("eval").model(&m).data(&data).out(&weights),
    ];
    for cmd in runs {
        let err = cmd.fails_with(&["is the input --weights"]);
        assert_tidy(&err);
    }
    assert_eq!(std::fs::read(&weights).unwrap(), before);
}

/// Guarantees: damaged images and masks given to predict are reported by name and skipped (or
/// drawn without the outline) while the others are scored; a damaged training image stops train
/// with its name before a model is written; no input is changed.
#[test]
fn damaged_images_and_masks_are_named_and_change_nothing() {
    let (s, data, m) = demo_model();
    let images = s.folder("images");
    let masks = s.folder("masks");
    let crack = std::fs::read_dir(data.join("fabric/test"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .find(|t| t != "good")
        .expect("a defect type");
    for how in DAMAGES {
        std::fs::copy(
            data.join(format!("fabric/test/{crack}/000.png")),
            images.join(format!("{how}.png")),
        )
        .unwrap();
        std::fs::copy(
            data.join(format!("fabric/ground_truth/{crack}/000_mask.png")),
            masks.join(format!("{how}_mask.png")),
        )
        .unwrap();
        damage(&masks.join(format!("{how}_mask.png")), how);
    }
    std::fs::copy(
        data.join("fabric/test/good/000.png"),
        images.join("intact.png"),
    )
    .unwrap();
    for how in DAMAGES {
        let img = images.join(format!("{how}-image.png"));
        std::fs::copy(data.join("fabric/test/good/001.png"), &img).unwrap();
        damage(&img, how);
    }
    let before = (snapshot(&images), snapshot(&masks));
    let lines = s
        .iuf_json("predict")
        .model(&m)
        .arg(&images)
        .flag("--masks", &masks)
        .out(s.path("pred"))
        .run()
        .json_lines();
    assert_eq!(lines.len(), 7, "{lines:?}");
    for l in &lines {
        let path = l["path"].as_str().unwrap();
        let name = Path::new(path).file_name().unwrap().to_str().unwrap();
        if name.ends_with("-image.png") {
            // A damaged image: reported by name, not scored.
            assert!(l["score"].is_null(), "{name}: {l}");
            assert!(l["error"].as_str().unwrap().contains(name), "{l}");
        } else if name == "intact.png" {
            assert!(l["score"].is_number() && l["error"].is_null(), "{l}");
        } else {
            // A damaged mask: the image is scored, the mask is named as the reason.
            assert!(l["score"].is_number(), "{l}");
            let e = l["error"].as_str().unwrap_or_else(|| panic!("{name}: {l}"));
            assert!(
                e.contains("_mask.png") && e.contains("without the outline"),
                "{e}"
            );
        }
    }
    assert_eq!(
        (snapshot(&images), snapshot(&masks)),
        before,
        "inputs changed"
    );

    // A damaged training image: train stops naming it, and writes no model.
    let victim = data.join("mesh/train/good/000.png");
    for how in DAMAGES {
        let good = std::fs::read(&victim).unwrap();
        damage(&victim, how);
        let out = s.path(&format!("bad-{how}.safetensors"));
        let err = s.train_tiny(&data, "mesh").out(&out).fails();
        assert!(err.contains("000.png"), "{how}: {err}");
        assert_tidy(&err);
        assert!(!out.exists(), "{how}");
        std::fs::write(&victim, good).unwrap();
    }
}

/// Guarantee: a damaged model file (truncated, one flipped bit, empty) is refused by every reader
/// with its name and the fix, and is left as it is.
#[test]
fn damaged_model_files_are_named_and_left_alone() {
    let (s, data, m) = demo_model();
    let good = std::fs::read(&m).unwrap();
    for how in DAMAGES {
        std::fs::write(&m, &good).unwrap();
        damage(&m, how);
        let damaged = std::fs::read(&m).unwrap();
        for (name, cmd) in [
            ("info", s.iuf("info").model(&m)),
            ("eval", s.iuf("eval").model(&m).data(&data)),
        ] {
            let err = cmd.fails();
            assert!(
                err.contains("m.safetensors") && err.contains("re-created"),
                "{how} {name}: {err}"
            );
            assert_tidy(&err);
        }
        assert_eq!(
            std::fs::read(&m).unwrap(),
            damaged,
            "{how}: the file was changed"
        );
    }
}

/// Guarantee (issue 14 item 4): damaged feature-cache entries (truncated, a flipped bit, emptied)
/// are detected, recomputed and rewritten: eval gives the same numbers as with an intact cache.
#[test]
fn damaged_feature_cache_entries_are_recomputed() {
    let (s, data, m) = demo_model();
    let eval = || {
        let o = s.iuf_json("eval").model(&m).data(&data).ok();
        (o.json(), o.stderr)
    };
    let (reference, _) = eval();
    let entries: Vec<PathBuf> = snapshot(&s.path("cache/features"))
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    assert!(entries.len() >= 3, "{entries:?}");
    for (i, e) in entries.iter().enumerate() {
        damage(e, DAMAGES[i % 3]);
    }
    let (again, _) = eval();
    let strip = |mut v: serde_json::Value| {
        // Timings differ between runs; every metric must not.
        if let Some(classes) = v["classes"].as_array_mut() {
            for c in classes {
                c.as_object_mut().unwrap().remove("seconds_per_image");
            }
        }
        v
    };
    assert_eq!(strip(again.clone()), strip(reference), "{again}");
    // Rewritten: a third run reads every entry back intact.
    let (_, log) = eval();
    assert!(!log.to_lowercase().contains("recomput"), "{log}");
}

/// Guarantee (issue 14 item 8 under kill -9): a bench killed at any point (inside step 0, between
/// steps, inside step 1) and run again resumes to step models and metrics identical to an
/// uninterrupted run's, and leaves no temporary file behind.
#[test]
fn bench_killed_with_sigkill_resumes_to_the_uninterrupted_result() {
    let (s, data) = Scratch::with_demo_data();
    let bench = |out: &Path| {
        s.iuf("bench")
            .data(&data)
            .protocol("fabric | mesh")
            .method("memory")
            .preset("tiny")
            .out(out)
    };
    let whole = s.path("whole");
    bench(&whole).ok();
    let digests = |out: &Path| -> Vec<(String, String)> {
        let dir = out.join("memory");
        (0..2)
            .map(|step| {
                let bytes = std::fs::read(dir.join(format!("step-{step}.safetensors"))).unwrap();
                // safetensors: an 8-byte little-endian header length, then the JSON header.
                let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
                let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
                let h = &header["__metadata__"];
                let results: serde_json::Value = serde_json::from_str(
                    &std::fs::read_to_string(dir.join("results.json")).unwrap(),
                )
                .unwrap();
                (
                    h["iuf.sha256"].as_str().unwrap().to_string(),
                    results["metrics"].to_string(),
                )
            })
            .collect()
    };
    let reference = digests(&whole);
    // Kill points: as soon as the run folder exists (inside step 0), when step 0 is written
    // (between the steps), and shortly after (inside step 1).
    let points: [(&str, &str, u64); 3] = [
        ("inside-0", "run.json", 0),
        ("between", "step-0.json", 0),
        ("inside-1", "step-0.json", 300),
    ];
    for (name, file, delay_ms) in points {
        let out = s.path(name);
        let mut child = bench(&out)
            .command()
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let marker = out.join("memory").join(file);
        let start = std::time::Instant::now();
        while !marker.exists() && start.elapsed().as_secs() < 300 {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        // SIGKILL (Child::kill sends it on Unix).
        let _ = child.kill();
        let status = child.wait().unwrap();
        // The kill came before the end: otherwise this case would test nothing.
        assert!(
            !status.success(),
            "{name}: the run finished before the kill"
        );
        assert!(
            !out.join("memory/step-1.json").exists(),
            "{name}: killed too late"
        );
        bench(&out).ok();
        assert_eq!(digests(&out), reference, "{name}");
        let temps: Vec<_> = snapshot(&out)
            .into_iter()
            .map(|(p, _)| p)
            .filter(|p| p.to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(temps.is_empty(), "{name}: {temps:?}");
    }
}

/// A small real dataset from ../shared/datasets/mvtec-mini: `bottle` with its masks and `tire`
/// with every mask blackened (a dataset shipped with empty masks): the first 16 training images,
/// 4 good and 3 + 3 defective test images of each.
fn real_data_with_black_tire_masks(s: &Scratch) -> PathBuf {
    let src = mvtec_mini();
    let dst = s.path("black-masks");
    let first = |dir: &Path, n: usize| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names.truncate(n);
        names
    };
    for (class, defects) in [
        ("bottle", ["broken_large", "contamination"]),
        ("tire", ["cut", "hole"]),
    ] {
        let copy = |rel: &str, n: usize| -> Vec<String> {
            let names = first(&src.join(class).join(rel), n);
            std::fs::create_dir_all(dst.join(class).join(rel)).unwrap();
            for f in &names {
                std::fs::copy(
                    src.join(class).join(rel).join(f),
                    dst.join(class).join(rel).join(f),
                )
                .unwrap();
            }
            names
        };
        copy("train/good", 16);
        copy("test/good", 4);
        for d in defects {
            for f in copy(&format!("test/{d}"), 3) {
                let rel = format!("ground_truth/{d}/{}", f.replace(".png", "_mask.png"));
                let (from, to) = (src.join(class).join(&rel), dst.join(class).join(&rel));
                std::fs::create_dir_all(to.parent().unwrap()).unwrap();
                if class == "tire" {
                    let (w, h) = image::image_dimensions(&from).unwrap();
                    image::GrayImage::new(w, h).save(&to).unwrap();
                } else {
                    std::fs::copy(&from, &to).unwrap();
                }
            }
        }
    }
    dst
}

/// Guarantee (issue 14): a test set whose defect masks are all empty is evaluated: `iuf eval` exits
/// 0 with the object's image-level metrics, shows its pixel metrics absent ("n/a", JSON `null`),
/// warns naming the object and what is missing, and averages the pixel metrics over the other
/// objects; `iuf bench` runs through and its pixel ACC / FM are those of the other objects.
#[test]
fn all_empty_masks_give_image_metrics_and_absent_pixel_metrics_with_a_warning() {
    let s = Scratch::new();
    let data = real_data_with_black_tire_masks(&s);
    let m = s.path("m.safetensors");
    s.train_tiny(&data, "bottle,tire").epochs(1).out(&m).ok();
    // `iuf [--json] eval`
    let eval = |iuf: Iuf| iuf.model(&m).data(&data);

    let o = eval(s.iuf("eval")).ok();
    let (table, err) = (&o.stdout, &o.stderr);
    assert!(
        err.contains("warning: class `tire`")
            && err.contains("masks of its 6 defective test images are all empty")
            && err.contains("pixel AUROC, pixel AP and PRO")
            && err.contains("image-level metrics (AUROC, AP, F1-max) are computed"),
        "{err}"
    );
    assert!(!err.contains("`bottle`"), "{err}");
    assert_tidy(err);
    let row = |name: &str| -> Vec<String> {
        let line = table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no `{name}` row:\n{table}"));
        line.split("  ")
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())
            .collect()
    };
    // object, test images, image AUROC, pixel AUROC, image AP, pixel AP, PRO, F1-max, ms/image
    let tire = row("tire");
    assert_eq!(tire[1], "10 (6 bad)", "{table}");
    for k in [2, 4, 7] {
        assert!(tire[k].parse::<f64>().is_ok(), "image metric {k}: {tire:?}");
    }
    assert_eq!([&tire[3], &tire[5], &tire[6]], ["n/a"; 3], "{table}");
    assert!(row("bottle")[3].parse::<f64>().is_ok(), "{table}");
    assert!(table.contains("n/a: no pixel metrics for tire"), "{table}");

    let v = eval(s.iuf_json("eval")).ok().json();
    let classes = v["classes"].as_array().unwrap();
    let tire = classes.iter().find(|c| c["class"] == "tire").unwrap();
    let bottle = classes.iter().find(|c| c["class"] == "bottle").unwrap();
    for k in ["image_auroc", "image_ap", "image_f1_max"] {
        let x = tire[k].as_f64().unwrap_or_else(|| panic!("{k}: {tire}"));
        assert!((0.0..=1.0).contains(&x), "{k} = {x}");
    }
    for k in ["pixel_auroc", "pixel_ap", "pro"] {
        assert!(tire[k].is_null(), "{k}: {tire}");
        // The mean of a pixel metric is over the objects that have it: bottle's own.
        assert_eq!(v["mean"][k], bottle[k], "{k}: {v}");
    }
    assert!(
        tire["warning"].as_str().unwrap().contains("`tire`"),
        "{tire}"
    );
    assert!(bottle.get("warning").is_none(), "{bottle}");

    // The protocol runner: tire is learned at step 1 with no pixel value, bottle's pixel ACC/FM
    // are the run's.
    let out = s.path("bench");
    // `iuf [--json] bench`
    let bench = |iuf: Iuf| {
        iuf.data(&data)
            .protocol("bottle | tire")
            .method("class-mean")
            .preset("tiny")
            .out(&out)
    };
    let printed = bench(s.iuf("bench")).ok().stdout;
    assert!(
        printed.contains("class-mean: no pixel metrics for tire"),
        "{printed}"
    );
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("class-mean/results.json")).unwrap())
            .unwrap();
    let pixel = &r["metrics"]["pixel_auroc"];
    assert!(pixel[0][1].is_null() && pixel[1][1].is_null(), "{pixel}");
    assert_eq!(r["acc"]["pixel"], pixel[1][0], "{r}");
    let image = &r["metrics"]["image_auroc"][1];
    let mean = (image[0].as_f64().unwrap() + image[1].as_f64().unwrap()) / 2.0;
    assert!(
        (r["acc"]["image"].as_f64().unwrap() - mean).abs() < 1e-12,
        "{r}"
    );
    assert!(r["warnings"][0].as_str().unwrap().contains("`tire`"), "{r}");
    // The --json summary carries them too (the finished run is resumed, not recomputed).
    let summary = bench(s.iuf_json("bench")).run().json();
    assert_eq!(
        summary["methods"][0]["warnings"], r["warnings"],
        "{summary}"
    );
    let report = std::fs::read_to_string(out.join("class-mean/report.md")).unwrap();
    assert!(report.contains("No pixel metrics for `tire`"), "{report}");
    let steps: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("| 0 |") || l.starts_with("| 1 |"))
        .collect();
    assert!(
        steps.iter().any(|l| l.contains("| - |")) && steps.iter().any(|l| l.contains("| n/a |")),
        "{report}"
    );
}

/// Guarantee (issue 23 item 1): no command writes an output file inside an input folder (the
/// folder rule applied to files): `--out` of eval, learn and train and predict's `--panel` inside
/// `--data` or an input folder are refused before any work, naming both; the data is unchanged.
#[test]
fn no_output_file_lies_inside_an_input_folder() {
    let (s, data, m) = demo_model();
    let before = snapshot(&data);
    let image = data.join("fabric/test/good/000.png");
    let runs = [
        s.iuf("eval").model(&m).data(&data).out(&image),
        s.iuf("learn")
            .model(&m)
            .data(&data)
            .classes("mesh")
            .out(data.join("mesh/train/good/000.png")),
        s.train_tiny(&data, "fabric")
            .out(data.join("fabric/new-model.safetensors")),
        s.iuf("predict")
            .model(&m)
            .arg(data.join("fabric/test"))
            .out(s.path("pred"))
            .flag("--panel", data.join("fabric/test/panel.png")),
    ];
    for cmd in runs {
        let err = cmd.fails_with(&["lies inside the input", &data.display().to_string()]);
        assert_tidy(&err);
    }
    assert_eq!(snapshot(&data), before, "the data changed");
    assert!(!s.path("pred").exists(), "work was done");
}

/// Guarantee (issue 23 item 2): predict writes every output through a temporary file and a rename,
/// so a `predictions.jsonl` that is a symlink or a hard link to the model or an image is replaced
/// as a link, never written through; a folder under `--out` that is a link to a folder outside it
/// is refused before any work, naming it.
#[test]
fn predict_never_writes_through_a_link() {
    let (s, data, m) = demo_model();
    let image = data.join("fabric/test/good/000.png");
    let out = s.path("out");
    let predict = |out: &Path| {
        s.iuf_json("predict")
            .model(&m)
            .arg(&image)
            .out(out)
            .arg("--overwrite")
    };
    predict(&out).ok();
    let (model, picture) = (std::fs::read(&m).unwrap(), std::fs::read(&image).unwrap());
    let jsonl = out.join("predictions.jsonl");
    // A symlink to the model, then a hard link to the image being scored.
    std::fs::remove_file(&jsonl).unwrap();
    std::os::unix::fs::symlink(&m, &jsonl).unwrap();
    predict(&out).ok();
    assert_eq!(
        std::fs::read(&m).unwrap(),
        model,
        "the model was written through"
    );
    std::fs::remove_file(&jsonl).unwrap();
    std::fs::hard_link(&image, &jsonl).unwrap();
    predict(&out).ok();
    assert_eq!(
        std::fs::read(&image).unwrap(),
        picture,
        "the image was written through"
    );
    let meta = std::fs::symlink_metadata(&jsonl).unwrap();
    assert!(meta.is_file() && !meta.file_type().is_symlink());
    assert!(std::fs::read_to_string(&jsonl).unwrap().contains("000.png"));
    // A folder inside --out that leads outside it.
    let images = s.folder("images/sub");
    std::fs::copy(&image, images.join("a.png")).unwrap();
    let elsewhere = s.folder("elsewhere");
    let out2 = s.folder("out2");
    std::os::unix::fs::symlink(&elsewhere, out2.join("sub")).unwrap();
    let err = s
        .iuf("predict")
        .model(&m)
        .arg(s.path("images"))
        .out(&out2)
        .arg("--overwrite")
        .fails_with(&[&out2.join("sub").display().to_string(), "outside --out"]);
    assert_tidy(&err);
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    assert!(!out2.join("predictions.jsonl").exists(), "work was done");
}

/// Guarantee (issue 23 item 3): `--overwrite` replaces earlier outputs, never inputs: a panel
/// naming an input image (inside an input folder) or the ground-truth mask of an input image is
/// refused with --overwrite too, and the file is unchanged.
#[test]
fn predict_overwrite_never_replaces_an_input() {
    let (s, data, m) = demo_model();
    let crack = std::fs::read_dir(data.join("fabric/test"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .find(|t| t != "good")
        .expect("a defect type");
    let image = data.join(format!("fabric/test/{crack}/000.png"));
    let mask = data.join(format!("fabric/ground_truth/{crack}/000_mask.png"));
    assert!(mask.is_file());
    let before = snapshot(&data);
    for panel in [&image, &mask] {
        let err = s
            .iuf("predict")
            .model(&m)
            .arg(data.join(format!("fabric/test/{crack}")))
            .out(s.path("pred"))
            .flag("--panel", panel)
            .arg("--overwrite")
            .fails_with(&["--panel", &panel.display().to_string(), "input"]);
        assert_tidy(&err);
    }
    assert_eq!(snapshot(&data), before, "an input changed");
}

/// Guarantee (issue 23 item 4): bench replaces no file it did not write: a `--out` holding the
/// user's own report.md, results.json or auroc.svg (no run folder of bench beside them), or a
/// method folder holding files but no run.json, is refused before any work, naming the file; a
/// `--out` holding the --weights file is refused; bench's own folder is resumed.
#[test]
fn bench_replaces_no_file_it_did_not_write() {
    let (s, data) = Scratch::with_demo_data();
    let bench = |iuf: Iuf, out: &Path| {
        iuf.data(&data)
            .protocol("fabric | mesh")
            .method("class-mean")
            .preset("tiny")
            .out(out)
    };
    for name in ["report.md", "results.json", "auroc.svg"] {
        let out = s.folder(&format!("user-{name}"));
        let mine = s.file(&format!("user-{name}/{name}"), b"the user's own");
        let err =
            bench(s.iuf("bench"), &out).fails_with(&[&mine.display().to_string(), "did not write"]);
        assert_tidy(&err);
        assert_eq!(std::fs::read(&mine).unwrap(), b"the user's own");
        assert!(!out.join("class-mean").exists(), "{name}: work was done");
    }
    let out = s.folder("user-method");
    let mine = s.file("user-method/class-mean/notes.txt", b"mine");
    bench(s.iuf("bench"), &out)
        .fails_with(&[&out.join("class-mean").display().to_string(), "run.json"]);
    assert_eq!(std::fs::read(&mine).unwrap(), b"mine");
    // The weights inside --out.
    let out = s.folder("with-weights");
    let weights = out.join("weights.pth");
    std::fs::copy(lite0_pth(), &weights).unwrap();
    let cache = s.path("cache");
    bench(
        bare(&s, &cache).flag("--weights", &weights).arg("bench"),
        &out,
    )
    .fails_with(&["the input --weights", &weights.display().to_string()]);
    // Its own folder: written, then resumed and rewritten.
    let own = s.path("own");
    bench(s.iuf("bench"), &own).ok();
    bench(s.iuf("bench"), &own).ok();
    assert!(own.join("report.md").is_file());
}

/// Guarantee (issue 23 item 11): the temporaries a killed predict leaves (`.<name>.tmp-<pid>` of a
/// process that no longer runs) are removed by the next run from every folder it writes: `--out`,
/// the heatmaps' sub-folders and the panel's folder; other hidden files stay.
#[test]
fn predict_removes_the_temporaries_of_a_killed_run() {
    let (s, data, m) = demo_model();
    // No process has this id (above Linux's largest pid).
    let dead = 99_999_999;
    let out = s.path("out");
    let stale = [
        s.file(&format!("out/.predictions.jsonl.tmp-{dead}"), b"half"),
        s.file(&format!("out/good/.000.png.tmp-{dead}"), b"half"),
        s.file(&format!("panels/.panel.png.tmp-{dead}"), b"half"),
    ];
    let keep = s.file("out/good/.keep", b"user");
    s.iuf("predict")
        .model(&m)
        .arg(data.join("fabric/test"))
        .out(&out)
        .flag("--panel", s.path("panels/panel.png"))
        .ok();
    for t in &stale {
        assert!(!t.exists(), "{} is left", t.display());
    }
    assert!(keep.exists());
}

/// Writes to `dest` a copy of the shared Lite0 `.pth` with `bits` bits flipped inside the data of
/// its largest tensor stored row by row, found by searching the file for that tensor's bytes: the
/// lowest mantissa bit of spread-out values, so the file still reads and trains (the damage of a
/// bad disk or copy, which nothing else notices).
fn lite0_with_flipped_bits(dest: &Path, bits: usize) {
    let mut bytes = std::fs::read(lite0_pth()).unwrap();
    let mut tensors = iuf_backbone::fetch::read_weights_file(&lite0_pth())
        .unwrap()
        .tensors;
    tensors.sort_by_key(|(_, t)| std::cmp::Reverse(t.elem_count()));
    // Where a tensor's values lie in the file, if stored as they are read (row-major f32).
    let stored = |t: &candle_core::Tensor| -> Option<(usize, usize)> {
        let data: Vec<u8> = t
            .flatten_all()
            .ok()?
            .to_vec1::<f32>()
            .ok()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let mid = data.len() / 8 * 4;
        let window = data.get(mid..mid + 64)?;
        let start = bytes.windows(window.len()).position(|w| w == window)? - mid;
        (bytes.get(start..start + data.len())? == &data[..]).then_some((start, data.len()))
    };
    let (start, len) = tensors
        .iter()
        .find_map(|(_, t)| stored(t))
        .expect("a tensor of the .pth is stored as it is read");
    for i in 0..bits {
        let value = (i * len / 4) / bits;
        bytes[start + 4 * value] ^= 1 << (i % 8);
    }
    std::fs::write(dest, bytes).unwrap();
}

/// Guarantee (issue 23 item 5): `--weights` with the published Lite0 checkpoint's tensor names
/// and shapes but other values (12 flipped bits in a tensor's data) are used only with a warning
/// that names the file, the digest they have and the published one; the model records their
/// digest; `--strict-weights` refuses them before any work. The intact file gives no warning.
#[test]
fn weights_with_flipped_bits_are_named_with_their_digest() {
    let (s, data) = Scratch::with_demo_data();
    let flipped = s.path("lite0-flipped.pth");
    lite0_with_flipped_bits(&flipped, 12);
    let digest = iuf_backbone::fetch::read_weights_file(&flipped)
        .unwrap()
        .digest;
    let published = iuf_backbone::fetch::LITE0_TENSORS_SHA256;
    assert_ne!(digest, published);
    let train = |weights: &Path, out: &Path| {
        Iuf::bare()
            .flag("--weights", weights)
            .flag("--cache-dir", s.path("cache"))
            .args(["--threads", "2"])
            .arg("train")
            .data(&data)
            .classes("fabric")
            .preset("tiny")
            .out(out)
    };
    let m = s.path("m.safetensors");
    let o = train(&flipped, &m).ok();
    let warning = o
        .stderr
        .lines()
        .find(|l| l.contains("not the published efficientnet-lite0 weights"))
        .unwrap_or_else(|| panic!("no warning:\n{}", o.stderr));
    eprintln!("{warning}");
    for want in [
        format!("--weights {}", flipped.display()),
        format!("tensor digest {digest}, expected {published}"),
        "--strict-weights".to_string(),
    ] {
        assert!(warning.contains(&want), "no {want:?} in {warning}");
    }
    assert_tidy(warning);
    let info = s.iuf_json("info").model(&m).ok().json();
    assert_eq!(info["backbone_weights_sha256"], digest.as_str());
    let info = s.iuf("info").model(&m).ok().stdout;
    assert!(
        info.contains(&format!(
            "{digest} (not the published efficientnet-lite0-57934424.pth"
        )),
        "{info}"
    );

    let strict = s.path("strict.safetensors");
    let err = train(&flipped, &strict)
        .arg("--strict-weights")
        .fails_with(&[
            "--strict-weights refuses them",
            &format!("tensor digest {digest}"),
        ]);
    assert_tidy(&err);
    assert!(!strict.exists(), "work was done");

    // The published file: no warning, with or without --strict-weights.
    let o = train(&lite0_pth(), &s.path("intact.safetensors"))
        .arg("--strict-weights")
        .ok();
    assert!(!o.stderr.contains("not the published"), "{}", o.stderr);
    let info = s
        .iuf("info")
        .model(s.path("intact.safetensors"))
        .ok()
        .stdout;
    assert!(
        info.contains(&format!(
            "{published} (the published efficientnet-lite0-57934424.pth)"
        )),
        "{info}"
    );
}

/// The model file at `from` edited as someone with the file but not the key could: a threshold
/// changed and every digest recomputed (`iuf_model::save_model`), the signature of `from` copied
/// back into the header. Written to `to`.
fn edit_keeping_the_signature(from: &Path, to: &Path) {
    let bytes = std::fs::read(from).unwrap();
    let header = iuf_model::file::header(from, &bytes).unwrap();
    let mut m = iuf_model::load_model(from, &candle_core::Device::Cpu).unwrap();
    for t in m.meta.thresholds.values_mut() {
        *t *= 10.0;
    }
    let state = m.state.clone();
    iuf_model::save_model(to, &m.varmap, &m.meta, &state).unwrap();
    let keep: Vec<(&str, String)> = [
        iuf_model::file::KEY_SIGNATURE,
        iuf_model::file::KEY_SIGNATURE_KEY,
    ]
    .into_iter()
    .map(|k| (k, header[k].clone()))
    .collect();
    let edited = iuf_model::file::with_header(to, &std::fs::read(to).unwrap(), &keep).unwrap();
    std::fs::write(to, edited).unwrap();
}

/// Guarantee (issue 23, beyond the list): with `--require-signed PUBKEY`, predict takes only a
/// model signed with that key's private key (`iuf sign`): an unsigned model, a signed model
/// edited with its digests recomputed, and a model signed with another key are refused before
/// any work, each with what is wrong. Signing changes no score; a new private key is readable by
/// its owner only and never replaces a file.
#[test]
fn predict_require_signed_takes_only_models_signed_with_its_key() {
    use std::os::unix::fs::PermissionsExt;
    let (s, data, m) = demo_model();
    let key = s.path("keys/line7.key");
    std::fs::create_dir_all(s.path("keys")).unwrap();
    let public = s.iuf("sign").flag("--generate-key", &key).ok().stdout;
    let public = public.trim();
    assert_eq!(public.len(), 64, "{public}");
    let pubfile = s.path("keys/line7.key.pub");
    assert!(std::fs::read_to_string(&pubfile).unwrap().contains(public));
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    s.iuf("sign")
        .flag("--generate-key", &key)
        .fails_with(&["already exists", "never replaces a key"]);
    let other = s.path("keys/other.key");
    s.iuf("sign").flag("--generate-key", &other).ok();

    let signed = s.path("signed.safetensors");
    s.iuf("sign")
        .model(&m)
        .flag("--key", &key)
        .out(&signed)
        .ok();
    s.iuf("sign")
        .model(&m)
        .flag("--key", &key)
        .out(&m)
        .fails_with(&["--out", "is the input --model"]);
    let image = data.join("fabric/test/good/000.png");
    let predict = |model: &Path, out: &str| {
        s.iuf_json("predict")
            .model(model)
            .arg(&image)
            .out(s.path(out))
    };
    let plain = predict(&m, "p-plain").ok().json_lines();
    let checked = predict(&signed, "p-signed")
        .flag("--require-signed", &pubfile)
        .ok()
        .json_lines();
    assert_eq!(plain[0]["score"], checked[0]["score"]);
    assert_eq!(plain[0]["decision"], checked[0]["decision"]);
    // The key itself in hex works as well as its file.
    predict(&signed, "p-hex")
        .flag("--require-signed", public)
        .ok();

    let edited = s.path("edited.safetensors");
    edit_keeping_the_signature(&signed, &edited);
    // Without --require-signed the edited file loads: its digests hold.
    predict(&edited, "p-edited-unchecked").ok();
    let other_pub = s.path("keys/other.key.pub");
    for (model, pubkey, wanted, out) in [
        (&m, &pubfile, "is not signed", "p-unsigned"),
        (&edited, &pubfile, "changed after it was signed", "p-edited"),
        (
            &signed,
            &other_pub,
            "not by the key --require-signed gives",
            "p-other",
        ),
    ] {
        let err = predict(model, out)
            .flag("--require-signed", pubkey)
            .fails_with(&[wanted, &model.display().to_string()]);
        assert_tidy(&err);
        assert!(!s.path(out).exists(), "{out}: work was done");
    }
    s.iuf("predict")
        .model(&signed)
        .arg(&image)
        .out(s.path("p-private"))
        .flag("--require-signed", &key)
        .fails_with(&["is a private key"]);
}

/// Makes a named pipe (FIFO) at `path`.
fn mkfifo(path: &Path) {
    let made = std::process::Command::new("mkfifo").arg(path).status();
    assert!(made.unwrap().success(), "mkfifo {}", path.display());
}

/// Guarantee (issue 23 item 6): images are read only from regular files, after links are
/// resolved, under a size limit checked before reading. `predict` on a folder holding a FIFO
/// named `f.png` blocked for ever and `x.jpg -> /dev/zero` grew it to 8 GB; now each is reported
/// by name with what it is (and a sparse 513 MiB `big.png` with its size and the limit) while the
/// good image is scored. `train` on data holding them stops before any work, naming each, where
/// it blocked on the FIFO before.
#[cfg(unix)]
#[test]
fn pipes_device_links_and_oversized_files_are_refused_not_read() {
    use std::time::Duration;
    let (s, data, m) = demo_model();
    let images = s.folder("images");
    std::fs::copy(
        data.join("fabric/test/good/000.png"),
        images.join("good.png"),
    )
    .unwrap();
    mkfifo(&images.join("f.png"));
    std::os::unix::fs::symlink("/dev/zero", images.join("x.jpg")).unwrap();
    let big = std::fs::File::create(images.join("big.png")).unwrap();
    big.set_len(513 << 20).unwrap(); // sparse: no disk used
    let (o, peak) = s
        .iuf_json("predict")
        .model(&m)
        .arg(&images)
        .out(s.path("pred"))
        .run_within(Duration::from_secs(120));
    assert!(
        !o.status.success(),
        "three files are unreadable: {}",
        o.stderr
    );
    assert!(peak < 2 << 30, "predict peaked at {} MiB", peak >> 20);
    let lines = o.json_lines();
    assert_eq!(lines.len(), 4, "{lines:?}");
    let error = |name: &str| {
        let l = lines
            .iter()
            .find(|l| l["path"].as_str().unwrap().ends_with(name))
            .unwrap_or_else(|| panic!("no line for {name}: {lines:?}"));
        assert!(l["score"].is_null(), "{l}");
        l["error"].as_str().unwrap().to_string()
    };
    for (name, wanted) in [
        ("f.png", "f.png: the file is a named pipe (FIFO), not a regular file"),
        (
            "x.jpg",
            "x.jpg: it leads through a link to /dev/zero, which is a character device, not a regular file",
        ),
        (
            "big.png",
            "big.png: the file is 537919488 bytes (513 MiB), over the limit of 536870912 bytes (512 MiB) for an image or mask file",
        ),
    ] {
        let e = error(name);
        assert!(e.contains(wanted), "{e}");
        assert_tidy(&e);
    }
    assert!(lines
        .iter()
        .any(|l| l["path"].as_str().unwrap().ends_with("good.png") && l["score"].is_number()));

    // Training data: the index names every such file before any work; no model is written.
    mkfifo(&data.join("fabric/train/good/f.png"));
    std::os::unix::fs::symlink("/dev/zero", data.join("fabric/train/good/x.jpg")).unwrap();
    let out = s.path("bad.safetensors");
    let (o, _) = s
        .train_tiny(&data, "fabric")
        .out(&out)
        .run_within(Duration::from_secs(120));
    assert!(!o.status.success(), "{}", o.stderr);
    for wanted in [
        "f.png: expected a regular image file; found a named pipe (FIFO)",
        "x.jpg: expected a regular image file; found a link to /dev/zero, which is a character device",
    ] {
        assert!(o.stderr.contains(wanted), "no {wanted:?} in:\n{}", o.stderr);
    }
    assert!(!out.exists());
}
