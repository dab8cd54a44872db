//! Bad input: every error names the file or value at fault and the fix; nothing is half-written;
//! one unreadable image among good ones is reported while the others are still processed.

use crate::common::{fails, json_lines, ok, stdout, Scratch};

#[test]
fn missing_data_folder_names_it_and_the_expected_layout() {
    let s = Scratch::new();
    let missing = s.path("no-such-dataset");
    let err = fails(&s.iuf([
        "train".as_ref(),
        "--data".as_ref(),
        missing.as_os_str(),
        "--out".as_ref(),
        s.path("m.safetensors").as_os_str(),
    ]));
    assert!(err.contains("no-such-dataset"), "{err}");
    assert!(err.contains("MVTec AD layout"), "{err}");
    assert!(!s.path("m.safetensors").exists());
}

#[test]
fn unknown_class_lists_the_dataset_classes() {
    let s = Scratch::new();
    let data = s.demo_data();
    let err = fails(&s.iuf([
        "train".as_ref(),
        "--data".as_ref(),
        data.as_os_str(),
        "--classes".as_ref(),
        "fabric,bottle".as_ref(),
        "--out".as_ref(),
        s.path("m.safetensors").as_os_str(),
    ]));
    assert!(err.contains("class `bottle` is not in dataset"), "{err}");
    assert!(err.contains("fabric, mesh, washer"), "{err}");
}

#[test]
fn corrupt_model_file_is_named_with_the_fix() {
    let s = Scratch::new();
    let data = s.demo_data();
    let model = s.path("broken.safetensors");
    std::fs::write(&model, b"this is not a model").unwrap();
    for cmd in ["eval", "info"] {
        let mut args = vec![cmd.into(), "--model".into(), model.clone().into_os_string()];
        if cmd == "eval" {
            args.extend(["--data".into(), data.clone().into_os_string()]);
        }
        let err = fails(&s.iuf(&args));
        assert!(err.contains("broken.safetensors"), "{cmd}: {err}");
        assert!(err.contains("iuf train"), "{cmd}: {err}");
    }
    let err = fails(&s.iuf([
        "info".as_ref(),
        "--model".as_ref(),
        s.path("absent.safetensors").as_os_str(),
    ]));
    assert!(err.contains("absent.safetensors: no such file"), "{err}");
}

#[test]
fn bad_flags_are_refused_before_any_work() {
    let s = Scratch::new();
    let data = s.demo_data();
    let model = s.path("m.safetensors");
    std::fs::write(&model, b"x").unwrap();
    let err = fails(&s.iuf([
        "learn".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        "--data".as_ref(),
        data.as_os_str(),
        "--out".as_ref(),
        model.as_os_str(),
    ]));
    assert!(err.contains("never modifies its input"), "{err}");
    let err = fails(&s.iuf([
        "bench".as_ref(),
        "--data".as_ref(),
        data.as_os_str(),
        "--protocol".as_ref(),
        "fabric | nope".as_ref(),
        "--out".as_ref(),
        s.path("b").as_os_str(),
    ]));
    assert!(
        err.contains("fix --protocol") && err.contains("`nope`"),
        "{err}"
    );
    let err = fails(&s.iuf([
        "bench".as_ref(),
        "--data".as_ref(),
        data.as_os_str(),
        "--protocol".as_ref(),
        "fabric".as_ref(),
        "--method".as_ref(),
        "iuf,magic".as_ref(),
        "--out".as_ref(),
        s.path("b").as_os_str(),
    ]));
    assert!(err.contains("unknown method `magic`"), "{err}");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_iuf"))
        .args(["--threads", "0", "info", "--model", "x"])
        .output()
        .unwrap();
    let err = fails(&o);
    assert!(err.contains("--threads must be at least 1"), "{err}");
    let err = fails(&s.iuf([
        "train".as_ref(),
        "--data".as_ref(),
        data.as_os_str(),
        "--out".as_ref(),
        s.path("m2.safetensors").as_os_str(),
        "--weights".as_ref(),
        s.path("no-weights.pth").as_os_str(),
    ]));
    assert!(err.contains("no-weights.pth: no such file"), "{err}");
}

#[test]
fn predict_skips_an_unreadable_image_and_reports_it_with_shared_lite0_weights() {
    let s = Scratch::new();
    let data = s.demo_data();
    let model = s.path("m.safetensors");
    ok(&s.iuf([
        "train".as_ref(),
        "--data".as_ref(),
        data.as_os_str(),
        "--classes".as_ref(),
        "washer".as_ref(),
        "--preset".as_ref(),
        "tiny".as_ref(),
        "--epochs".as_ref(),
        "1".as_ref(),
        "--out".as_ref(),
        model.as_os_str(),
    ]));
    let images = s.path("images");
    std::fs::create_dir_all(&images).unwrap();
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
    let o = s.iuf([
        "--json".as_ref(),
        "predict".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        images.as_os_str(),
        "--out".as_ref(),
        s.path("pred").as_os_str(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let lines = json_lines(&o);
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
    let o = s.iuf([
        "predict".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        images.as_os_str(),
        "--out".as_ref(),
        s.path("pred2").as_os_str(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("FAILED") && err.contains("1b-corrupt.png"),
        "{err}"
    );
    assert!(stdout(&o).contains("1 unreadable"), "{}", stdout(&o));
}

/// Guarantee: no command writes over one of its inputs, however the output is spelled (relative,
/// with `..`, through a symlink); the check runs before any work and the inputs stay byte-identical.
#[test]
fn an_output_that_is_or_holds_an_input_is_refused_before_any_work() {
    let s = Scratch::new();
    let data = s.demo_data();
    let model = s.path("m.safetensors");
    std::fs::write(&model, b"a model the commands must not overwrite").unwrap();
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
    for out in [images.clone(), images.join("heatmaps")] {
        let err = fails(&s.iuf([
            "predict".as_ref(),
            "--model".as_ref(),
            model.as_os_str(),
            images.as_os_str(),
            "--out".as_ref(),
            out.as_os_str(),
        ]));
        assert!(
            err.contains("--out") && err.contains("the input PATH"),
            "{err}"
        );
    }
    // An input inside --out is refused too.
    let err = fails(&s.iuf([
        "predict".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        images.as_os_str(),
        "--out".as_ref(),
        data.join("mesh").as_os_str(),
    ]));
    assert!(err.contains("contains the input PATH"), "{err}");
    assert_eq!(
        snapshot(&images),
        before,
        "predict changed its input images"
    );
    // eval --out MODEL, spelled with `..` and through a symlink.
    std::fs::create_dir_all(s.path("sub")).unwrap();
    let dotted = s.path("sub/../m.safetensors");
    let link = s.path("link.safetensors");
    std::os::unix::fs::symlink(&model, &link).unwrap();
    for out in [dotted, link] {
        let err = fails(&s.iuf([
            "eval".as_ref(),
            "--model".as_ref(),
            model.as_os_str(),
            "--data".as_ref(),
            data.as_os_str(),
            "--out".as_ref(),
            out.as_os_str(),
        ]));
        assert!(err.contains("is the input --model"), "{err}");
    }
    assert_eq!(
        std::fs::read(&model).unwrap(),
        b"a model the commands must not overwrite"
    );
    // bench --out inside --data.
    let err = fails(&s.iuf([
        "bench".as_ref(),
        "--data".as_ref(),
        data.as_os_str(),
        "--protocol".as_ref(),
        "fabric | mesh".as_ref(),
        "--out".as_ref(),
        data.join("runs").as_os_str(),
    ]));
    assert!(err.contains("lies inside the input --data"), "{err}");
    assert!(!data.join("runs").exists());
}

/// Guarantee: an output that cannot be written is reported before any work (a folder where a file
/// is expected, a file where a folder is expected, a panel format that cannot be written).
#[test]
fn unwritable_outputs_are_refused_before_any_work() {
    let s = Scratch::new();
    let data = s.demo_data();
    let folder = s.path("existing-folder");
    std::fs::create_dir_all(&folder).unwrap();
    let err = fails(&s.iuf([
        "train".as_ref(),
        "--data".as_ref(),
        data.as_os_str(),
        "--out".as_ref(),
        folder.as_os_str(),
    ]));
    assert!(
        err.contains("is a folder; a file name is expected"),
        "{err}"
    );
    let model = s.path("m.safetensors");
    std::fs::write(&model, b"not read: the flags are checked first").unwrap();
    let file = s.path("a-file");
    std::fs::write(&file, b"x").unwrap();
    let images = data.join("mesh/test/good");
    let err = fails(&s.iuf([
        "predict".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        images.as_os_str(),
        "--out".as_ref(),
        file.as_os_str(),
    ]));
    assert!(err.contains("is a file; a folder is expected"), "{err}");
    let err = fails(&s.iuf([
        "predict".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        images.as_os_str(),
        "--out".as_ref(),
        s.path("pred").as_os_str(),
        "--panel".as_ref(),
        s.path("panel.gif").as_os_str(),
    ]));
    assert!(
        err.contains("expected a file name ending in .png or .jpg"),
        "{err}"
    );
    assert!(
        !s.path("pred").exists(),
        "nothing is written before the checks pass"
    );
}

/// Guarantee: learning into a model with no free object slot fails before any work, naming the
/// model, its room and the fix; nothing is written.
#[test]
fn learning_into_a_full_model_names_its_room_before_any_work_with_shared_lite0_weights() {
    let s = Scratch::new();
    let data = s.demo_data();
    let m0 = s.path("m0.safetensors");
    ok(&s.iuf([
        "train".as_ref(),
        "--data".as_ref(),
        data.as_os_str(),
        "--classes".as_ref(),
        "fabric".as_ref(),
        "--num-classes".as_ref(),
        "1".as_ref(),
        "--out".as_ref(),
        m0.as_os_str(),
    ]));
    let out = s.path("m1.safetensors");
    let err = fails(&s.iuf([
        "learn".as_ref(),
        "--model".as_ref(),
        m0.as_os_str(),
        "--data".as_ref(),
        data.as_os_str(),
        "--classes".as_ref(),
        "mesh".as_ref(),
        "--out".as_ref(),
        out.as_os_str(),
    ]));
    assert!(
        err.contains("m0.safetensors has room for 1 objects and 1 are taken (fabric)"),
        "{err}"
    );
    assert!(err.contains("--num-classes"), "{err}");
    assert!(!out.exists());
}
