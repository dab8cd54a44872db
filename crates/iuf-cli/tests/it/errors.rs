//! Bad input: every error names the file or value at fault and the fix; nothing is half-written;
//! one unreadable image among good ones is reported while the others are still processed.

use std::path::PathBuf;

use crate::common::{blank_png, Iuf, Scratch};

#[test]
fn missing_data_folder_names_it_and_the_expected_layout() {
    let s = Scratch::new();
    let missing = s.path("no-such-dataset");
    s.iuf("train")
        .data(&missing)
        .out(s.path("m.safetensors"))
        .fails_with(&["no-such-dataset", "MVTec AD layout"]);
    assert!(!s.path("m.safetensors").exists());
}

#[test]
fn unknown_class_lists_the_dataset_classes() {
    let (s, data) = Scratch::with_demo_data();
    s.train(&data, "fabric,bottle")
        .out(s.path("m.safetensors"))
        .fails_with(&["class `bottle` is not in dataset", "fabric, mesh, washer"]);
}

#[test]
fn corrupt_model_file_is_named_with_the_fix() {
    let (s, data) = Scratch::with_demo_data();
    let model = s.file("broken.safetensors", b"this is not a model");
    for cmd in [
        s.iuf("eval").model(&model).data(&data),
        s.iuf("info").model(&model),
    ] {
        cmd.fails_with(&["broken.safetensors", "iuf train"]);
    }
    s.iuf("info")
        .model(s.path("absent.safetensors"))
        .fails_with(&["absent.safetensors: no such file"]);
}

#[test]
fn bad_flags_are_refused_before_any_work() {
    let (s, data) = Scratch::with_demo_data();
    let model = s.file("m.safetensors", b"x");
    let cases: [(Iuf, &[&str]); 6] = [
        (
            s.iuf("learn").model(&model).data(&data).out(&model),
            &["never modifies its input"],
        ),
        (
            s.iuf("bench")
                .data(&data)
                .protocol("fabric | nope")
                .out(s.path("b")),
            &["fix --protocol", "`nope`"],
        ),
        (
            s.iuf("bench")
                .data(&data)
                .protocol("fabric")
                .method("iuf,magic")
                .out(s.path("b")),
            &["unknown method `magic`"],
        ),
        (
            Iuf::bare().args(["--threads", "0", "info", "--model", "x"]),
            &["--threads must be at least 1"],
        ),
        (
            s.iuf("train")
                .data(&data)
                .out(s.path("m2.safetensors"))
                .flag("--weights", s.path("no-weights.pth")),
            &["no-weights.pth: no such file"],
        ),
        (
            s.iuf("train")
                .data(&data)
                .out(s.path("m3.safetensors"))
                .flag("--score-margin", "0.4"),
            &[
                "calibration.score_margin must lie in [0, 0.25]",
                "found 0.4",
            ],
        ),
    ];
    for (cmd, wanted) in cases {
        cmd.fails_with(wanted);
    }
}

#[test]
fn predict_skips_an_unreadable_image_and_reports_it_with_shared_lite0_weights() {
    let (s, data) = Scratch::with_demo_data();
    let model = s.path("m.safetensors");
    s.train_tiny(&data, "washer").epochs(1).out(&model).ok();
    let images = s.folder("images");
    for (i, f) in ["washer/test/good/000.png", "washer/test/crack/000.png"]
        .iter()
        .enumerate()
    {
        std::fs::copy(data.join(f), images.join(format!("{i}.png"))).unwrap();
    }
    std::fs::write(
        images.join("1b-corrupt.png"),
        b"\x89PNG\r\n\x1a\n truncated",
    )
    .unwrap();
    // `iuf [--json] predict`
    let predict = |iuf: Iuf, out: &str| iuf.model(&model).arg(&images).out(s.path(out)).run();
    let o = predict(s.iuf_json("predict"), "pred");
    assert_eq!(o.status.code(), Some(1), "{}", o.stdout);
    let lines = o.json_lines();
    assert_eq!(lines.len(), 3, "{lines:?}");
    let bad: Vec<_> = lines.iter().filter(|l| l["error"].is_string()).collect();
    assert_eq!(bad.len(), 1);
    assert!(bad[0]["path"].as_str().unwrap().ends_with("1b-corrupt.png"));
    assert!(
        bad[0]["error"].as_str().unwrap().contains("1b-corrupt.png"),
        "{bad:?}"
    );
    assert!(bad[0].get("score").is_none());
    let good: Vec<_> = lines.iter().filter(|l| l["score"].is_number()).collect();
    assert_eq!(good.len(), 2);
    for l in good {
        assert!(
            std::path::Path::new(l["heatmap"].as_str().unwrap()).is_file(),
            "{l}"
        );
        assert_eq!(l["object"], "washer");
    }
    // The same through the text output: the failure goes to stderr, the exit code says it.
    let o = predict(s.iuf("predict"), "pred2");
    assert_eq!(o.status.code(), Some(1));
    let err = &o.stderr;
    assert!(
        err.contains("FAILED") && err.contains("1b-corrupt.png"),
        "{err}"
    );
    assert!(o.stdout.contains("1 unreadable"), "{}", o.stdout);
}

/// Guarantee: no command writes over one of its inputs, however the output is spelled (relative,
/// with `..`, through a symlink); the check runs before any work and the inputs stay byte-identical.
#[test]
fn an_output_that_is_or_holds_an_input_is_refused_before_any_work() {
    let (s, data) = Scratch::with_demo_data();
    let model = s.file("m.safetensors", b"a model the commands must not overwrite");
    let images = data.join("mesh/test/good");
    let snapshot = |dir: &std::path::Path| -> Vec<(std::path::PathBuf, Vec<u8>)> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                let b = std::fs::read(&p).unwrap();
                (p, b)
            })
            .collect();
        v.sort();
        v
    };
    let before = snapshot(&images);
    // predict --out IMAGES (and --out inside IMAGES) would replace the inputs with heatmaps.
    let predict = |out: &std::path::Path| s.iuf("predict").model(&model).arg(&images).out(out);
    for out in [images.clone(), images.join("heatmaps")] {
        predict(&out).fails_with(&["--out", "the input PATH"]);
    }
    // An input inside --out is refused too.
    predict(&data.join("mesh")).fails_with(&["contains the input PATH"]);
    assert_eq!(
        snapshot(&images),
        before,
        "predict changed its input images"
    );
    // eval --out MODEL, spelled with `..` and through a symlink.
    s.folder("sub");
    let dotted = s.path("sub/../m.safetensors");
    let link = s.path("link.safetensors");
    std::os::unix::fs::symlink(&model, &link).unwrap();
    for out in [dotted, link] {
        s.iuf("eval")
            .model(&model)
            .data(&data)
            .out(&out)
            .fails_with(&["is the input --model"]);
    }
    assert_eq!(
        std::fs::read(&model).unwrap(),
        b"a model the commands must not overwrite"
    );
    // bench --out inside --data.
    s.iuf("bench")
        .data(&data)
        .protocol("fabric | mesh")
        .out(data.join("runs"))
        .fails_with(&["lies inside the input --data"]);
    assert!(!data.join("runs").exists());
}

/// Guarantee: an output that cannot be written is reported before any work (a folder where a file
/// is expected, a file where a folder is expected, a panel format that cannot be written).
#[test]
fn unwritable_outputs_are_refused_before_any_work() {
    let (s, data) = Scratch::with_demo_data();
    let folder = s.folder("existing-folder");
    s.iuf("train")
        .data(&data)
        .out(&folder)
        .fails_with(&["is a folder; a file name is expected"]);
    let model = s.file("m.safetensors", b"not read: the flags are checked first");
    let file = s.file("a-file", b"x");
    let images = data.join("mesh/test/good");
    let predict = |out: PathBuf| s.iuf("predict").model(&model).arg(&images).out(out);
    predict(file).fails_with(&["is a file; a folder is expected"]);
    predict(s.path("pred"))
        .flag("--panel", s.path("panel.gif"))
        .fails_with(&["expected a file name ending in .png or .jpg"]);
    assert!(
        !s.path("pred").exists(),
        "nothing is written before the checks pass"
    );
}

/// Guarantee: learning into a model with no free object slot fails before any work, naming the
/// model, its room and the fix; nothing is written.
#[test]
fn learning_into_a_full_model_names_its_room_before_any_work_with_shared_lite0_weights() {
    let (s, data) = Scratch::with_demo_data();
    let m0 = s.path("m0.safetensors");
    s.train(&data, "fabric")
        .flag("--num-classes", "1")
        .out(&m0)
        .ok();
    let out = s.path("m1.safetensors");
    s.iuf("learn")
        .model(&m0)
        .data(&data)
        .classes("mesh")
        .out(&out)
        .fails_with(&[
            "m0.safetensors has room for 1 objects and 1 are taken (fabric)",
            "--num-classes",
        ]);
    assert!(!out.exists());
}

/// Guarantee (issue 23 item 12): an image predict cannot decode says why in words a user can act
/// on: an empty file is "empty (0 bytes)" (not "unexpected end of file"); a valid image over the
/// decoder's memory limit gives its size, the limit and the fix (not "damaged or truncated ...
/// Memory limit exceeded").
#[test]
fn predict_says_an_image_is_empty_or_too_large_with_shared_lite0_weights() {
    let (s, data) = Scratch::with_demo_data();
    let model = s.path("m.safetensors");
    s.train_tiny(&data, "washer").epochs(1).out(&model).ok();
    let images = s.folder("images");
    std::fs::copy(
        data.join("washer/test/good/000.png"),
        images.join("good.png"),
    )
    .unwrap();
    std::fs::write(images.join("empty.png"), b"").unwrap();
    std::fs::write(images.join("huge.png"), blank_png(24000)).unwrap();
    // The hand-written PNG is valid: its header reads back.
    let dims = image::ImageReader::open(images.join("huge.png"))
        .unwrap()
        .with_guessed_format()
        .unwrap()
        .into_dimensions()
        .unwrap();
    assert_eq!(dims, (24000, 24000));
    let err = s
        .iuf("predict")
        .model(&model)
        .arg(&images)
        .out(s.path("pred"))
        // A budget above the image's 576 MP, on any machine: the decoder's own limit is checked.
        .flag("--decode-budget-mp", "1000")
        .fails_with(&[
            "empty.png: the file is empty (0 bytes); expected a PNG, JPEG, BMP or TIFF image",
            "huge.png: the image is 24000x24000 pixels (550 MiB decoded), over the decoder's memory limit of 512 MiB",
            "downscale the image",
        ]);
    assert!(!err.contains("unexpected end of file"), "{err}");
    assert!(!err.contains("Memory limit exceeded"), "{err}");
}

/// Guarantee (issue 23 item 12): a `--model` that is plainly no model says what it is (a PNG
/// image, a folder, an empty file, a zip archive) instead of a parser's "header too large" or "no
/// such file".
#[test]
fn a_model_that_is_no_model_file_is_named_for_what_it_is() {
    let s = Scratch::new();
    let cases = [
        (
            s.file("photo.safetensors", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"),
            "photo.safetensors is a PNG image, not a model file (models are .safetensors files written by `iuf train`",
        ),
        (s.folder("models"), "models is a folder, not a model file"),
        (
            s.file("empty.safetensors", b""),
            "empty.safetensors is empty (0 bytes), not a model file",
        ),
        (
            s.file("backbone.pth", b"PK\x03\x04 archive"),
            "backbone.pth is a zip archive (a PyTorch .pth checkpoint?), not a model file",
        ),
    ];
    for (model, wanted) in cases {
        s.iuf("info").model(&model).fails_with(&[wanted]);
    }
}

/// Guarantee (issue 23 item 12): `--panel-max 0` (a blank panel) is refused before any work.
#[test]
fn panel_max_zero_is_refused_before_any_work() {
    let (s, data) = Scratch::with_demo_data();
    let model = s.file("m.safetensors", b"not read: the flags are checked first");
    s.iuf("predict")
        .model(&model)
        .arg(data.join("mesh/test/good"))
        .out(s.path("pred"))
        .flag("--panel", s.path("panel.png"))
        .flag("--panel-max", "0")
        .fails_with(&["--panel-max must be at least 1; found 0"]);
    assert!(!s.path("pred").exists());
    assert!(!s.path("panel.png").exists());
}

/// Guarantee (issue 23 item 7): predict decodes at most `--decode-budget-mp` pixels at once,
/// reading each image's size from its header first: a batch takes images only while they fit
/// together (here one 9 MP image at a time under 10 MP, where 8 were decoded at once before), and
/// only an image that alone exceeds the budget is refused, naming its size and the limit; every
/// other image of the folder is scored.
#[test]
fn predict_decodes_within_its_budget_and_refuses_only_an_image_over_it() {
    let (s, data) = Scratch::with_demo_data();
    let model = s.path("m.safetensors");
    s.train_tiny(&data, "washer").epochs(1).out(&model).ok();
    let images = s.folder("images");
    for name in ["a.png", "b.png", "c.png"] {
        std::fs::write(images.join(name), blank_png(3000)).unwrap(); // 9 MP each
    }
    std::fs::write(images.join("huge.png"), blank_png(12000)).unwrap(); // 144 MP
    let o = s
        .iuf_json("predict")
        .model(&model)
        .arg(&images)
        .out(s.path("pred"))
        .flag("--decode-budget-mp", "10")
        .run();
    assert!(!o.status.success(), "huge.png is refused: {}", o.stderr);
    let lines = o.json_lines();
    assert_eq!(lines.len(), 4, "{lines:?}");
    for l in &lines {
        let path = l["path"].as_str().unwrap();
        if path.ends_with("huge.png") {
            let e = l["error"].as_str().unwrap();
            assert!(
                e.contains(
                    "huge.png: the image is 12000x12000 pixels (144 MP), over the decode budget \
                     of 10 MP (--decode-budget-mp); downscale the image or raise the budget"
                ),
                "{e}"
            );
        } else {
            assert!(l["score"].is_number(), "{l}");
        }
    }
    assert!(
        o.stderr
            .contains("(batches of up to 1 image(s); decode budget 10 MP (--decode-budget-mp))"),
        "{}",
        o.stderr
    );
    // Without the flag the budget is sized for the machine, and named.
    let o = s
        .iuf_json("predict")
        .model(&model)
        .arg(images.join("a.png"))
        .out(s.path("pred2"))
        .ok();
    assert!(
        o.stderr.contains("GiB available, at 8 bytes a pixel"),
        "{}",
        o.stderr
    );
}

/// Guarantee (issue 23 item 7), measured: predict on 8 images of 12000 x 12000 (0.6 GB each
/// decoded) stays under 2 GB with a budget of 150 MP, where it decoded all 8 at once (about 4.6
/// GB) before. Slow (a minute or more on two cores): the fast version above checks the batches.
#[test]
#[ignore = "decodes 8 images of 144 MP; the fast version runs always"]
fn predict_memory_stays_within_the_decode_budget() {
    let (s, data) = Scratch::with_demo_data();
    let model = s.path("m.safetensors");
    s.train_tiny(&data, "washer").epochs(1).out(&model).ok();
    let images = s.folder("images");
    let png = blank_png(12000);
    for i in 0..8 {
        std::fs::write(images.join(format!("{i}.png")), &png).unwrap();
    }
    let (o, peak) = s
        .iuf_json("predict")
        .model(&model)
        .arg(&images)
        .out(s.path("pred"))
        .flag("--decode-budget-mp", "150")
        .run_within(std::time::Duration::from_secs(600));
    assert!(o.status.success(), "{}", o.stderr);
    assert_eq!(o.json_lines().len(), 8);
    eprintln!("predict peak resident memory: {} MiB", peak >> 20);
    assert!(peak < 2 << 30, "predict peaked at {} MiB", peak >> 20);
}
