//! The whole workflow on the tiny demo dataset with the shared Lite0 weights and the `tiny` preset:
//! train, learn a new object, info, eval, predict, bench, and the demo's code path.

use crate::common::Scratch;

#[test]
fn train_learn_info_eval_predict_with_shared_lite0_weights() {
    let (s, data) = Scratch::with_demo_data();
    let m0 = s.path("models/m0.safetensors");
    let m1 = s.path("models/m1.safetensors");

    let out = s
        .train(&data, "fabric")
        .method("iuf")
        .preset("tiny")
        .out(&m0)
        .ok()
        .stdout;
    assert!(out.contains("learned fabric"), "{out}");
    assert!(m0.is_file());
    let before = std::fs::read(&m0).unwrap();

    // learn: the input model is never modified; the output knows both objects.
    let learned = s
        .iuf_json("learn")
        .model(&m0)
        .data(&data)
        .classes("mesh")
        .out(&m1)
        .epochs(3)
        .ok()
        .json();
    assert_eq!(learned["learned"], serde_json::json!(["fabric", "mesh"]));
    assert_eq!(learned["step"]["step"], 1);
    assert_eq!(
        learned["step"]["epochs"], 3,
        "--epochs sets this step's epochs"
    );
    assert_eq!(learned["step"]["optimizer"], "constrained-sgd");
    assert_eq!(
        std::fs::read(&m0).unwrap(),
        before,
        "learn modified its input"
    );

    // info: objects, their steps, thresholds, the config.
    let info = s.iuf_json("info").model(&m1).ok().json();
    assert_eq!(info["method"], "iuf");
    assert_eq!(info["backbone"], "efficientnet-lite0");
    let digest = info["backbone_weights_sha256"].as_str().unwrap();
    assert_eq!(
        digest.len(),
        64,
        "the weights' sha256 is recorded: {digest}"
    );
    assert_eq!(info["num_classes"], 15);
    assert_eq!(
        info["learned"][0],
        serde_json::json!({"class": "fabric", "step": 0})
    );
    assert_eq!(
        info["learned"][1],
        serde_json::json!({"class": "mesh", "step": 1})
    );
    assert!(info["thresholds"]["mesh"].as_f64().unwrap() > 0.0, "{info}");
    assert_eq!(info["config"]["preset"], "tiny");
    let text = s.iuf("info").model(&m1).ok().stdout;
    assert!(text.contains("2 of 15 slots used: fabric, mesh"), "{text}");

    // eval: defaults to the learned objects the dataset holds.
    let ev = s.iuf_json("eval").model(&m1).data(&data).ok().json();
    let classes = ev["classes"].as_array().unwrap();
    assert_eq!(classes.len(), 2);
    for c in classes {
        assert_eq!(c["images"], 8, "{c}");
        for k in ["image_auroc", "pixel_auroc", "pro", "pixel_ap"] {
            let v = c[k].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&v), "{k} = {v}");
        }
    }
    let table = s
        .iuf("eval")
        .model(&m1)
        .data(&data)
        .classes("mesh")
        .ok()
        .stdout;
    assert!(
        table.contains("image AUROC") && table.contains("mesh"),
        "{table}"
    );

    // predict a folder: one JSON line per image, heatmaps with the mask found in the MVTec tree.
    let pred = s.path("pred");
    let o = s
        .iuf_json("predict")
        .model(&m1)
        .arg(data.join("mesh/test"))
        .out(&pred)
        .flag("--panel", s.path("panel.jpg"))
        .ok();
    let lines = o.json_lines();
    assert_eq!(lines.len(), 8);
    for l in &lines {
        let score = l["score"].as_f64().unwrap();
        assert!(score.is_finite() && score >= 0.0, "{l}");
        let obj = l["object"].as_str().unwrap();
        assert!(["fabric", "mesh"].contains(&obj), "{l}");
        assert!(
            ["defect", "ok"].contains(&l["decision"].as_str().unwrap()),
            "{l}"
        );
        let heat = std::path::PathBuf::from(l["heatmap"].as_str().unwrap());
        let img = image::open(&heat).unwrap();
        assert_eq!(
            (img.width(), img.height()),
            (64, 64),
            "heatmaps keep the image size"
        );
        let defective = !l["path"].as_str().unwrap().contains("/good/");
        assert_eq!(l["mask"].is_string(), defective, "{l}");
    }
    let written = std::fs::read_to_string(pred.join("predictions.jsonl")).unwrap();
    assert_eq!(written.lines().count(), 8);
    // The per-image latency, by stage, goes to stderr (stdout stays JSON lines).
    let err = &o.stderr;
    let timing = err
        .lines()
        .find(|l| l.starts_with("per image: "))
        .unwrap_or_else(|| panic!("no timing line in {err}"));
    for stage in ["decode", "backbone", "model", "heatmap"] {
        assert!(timing.contains(stage), "{timing}");
    }
    let bytes = std::fs::read(s.path("panel.jpg")).unwrap();
    assert_eq!(&bytes[..2], b"\xff\xd8", "a .jpg panel is a JPEG");
    let panel = image::load_from_memory(&bytes).unwrap();
    assert!(panel.width() > panel.height());

    // A lower quantile never raises the threshold (info reports the calibration quantile's).
    let o = s
        .iuf_json("predict")
        .model(&m1)
        .arg(data.join("mesh/test/good/000.png"))
        .out(s.path("pred-q"))
        .flag("--quantile", "0.0")
        .flag("--object", "mesh")
        .ok();
    let low = o.json_lines()[0]["threshold"].as_f64().unwrap();
    let high = info["thresholds"]["mesh"].as_f64().unwrap();
    // (Relative slack: one side went through f32 JSON, the other through f64.)
    assert!(
        low <= high * (1.0 + 1e-6),
        "q 0 threshold {low} > q 0.99 threshold {high}"
    );
}

#[test]
fn bench_two_methods_writes_reports_and_plot_with_shared_lite0_weights() {
    let (s, data) = Scratch::with_demo_data();
    let out = s.path("bench");
    let bench = || {
        s.iuf_json("bench")
            .data(&data)
            .protocol("fabric | mesh")
            .method("iuf,finetune")
            .preset("tiny")
            .epochs(1)
            .flag("--incremental-epochs", "1")
            .out(&out)
    };
    let summary = bench().ok().json();
    let methods = summary["methods"].as_array().unwrap();
    assert_eq!(methods.len(), 2);
    assert_eq!(methods[0]["method"], "iuf");
    assert_eq!(methods[1]["method"], "finetune");
    for m in methods {
        assert_eq!(m["train_seconds"].as_array().unwrap().len(), 2, "{m}");
        assert!(m["acc"]["image"].as_f64().is_some(), "{m}");
    }
    for f in [
        "report.md",
        "auroc.svg",
        "results.json",
        "iuf/results.json",
        "iuf/report.md",
        "finetune/results.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("| method | image ACC |"), "{report}");
    assert!(
        report.contains("| iuf |") && report.contains("| finetune |"),
        "{report}"
    );
    assert!(report.contains("auroc.svg"), "{report}");
    assert!(
        report.contains("bench --data"),
        "reproducing command: {report}"
    );
    let svg = std::fs::read_to_string(out.join("auroc.svg")).unwrap();
    // 2 methods x 2 panels x (2 objects + mean).
    assert_eq!(svg.matches("<polyline").count(), 12);

    // A second run resumes: nothing is trained again, results are identical.
    let again = bench().ok().json();
    assert_eq!(again["methods"][0]["acc"], summary["methods"][0]["acc"]);
}

#[test]
fn demo_quick_runs_end_to_end_with_shared_lite0_weights() {
    let s = Scratch::new();
    let out = s.path("demo-out");
    let v = s
        .iuf_json("demo")
        .args(["--quick", "--small-defects"])
        .out(&out)
        .ok()
        .json();
    let methods: Vec<&str> = v["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["method"].as_str().unwrap())
        .collect();
    assert_eq!(methods, ["memory", "iuf+memory", "iuf", "finetune"]);
    // Four methods, and the small-defect part's two views.
    assert_eq!(v["heatmap_panels"].as_array().unwrap().len(), 6);
    for p in v["heatmap_panels"].as_array().unwrap() {
        assert!(std::path::Path::new(p.as_str().unwrap()).is_file(), "{p}");
    }
    assert!(out.join("report.md").is_file());
    assert!(out.join("heatmaps/iuf/fabric").is_dir());
    assert!(out.join("heatmaps/memory/fabric").is_dir());
    // --small-defects: the memory on the whole view and with tiles beside it, side by side.
    let small: Vec<&str> = v["small_defects"]["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["run"].as_str().unwrap())
        .collect();
    assert_eq!(small, ["memory", "memory-tiles"], "{}", v["small_defects"]);
    for view in ["memory", "memory-tiles"] {
        let dir = out.join("small-defects/heatmaps").join(view);
        assert!(dir.join("spot-16px.png").is_file(), "{}", dir.display());
        assert!(dir.join("good.png").is_file(), "{}", dir.display());
    }
    let report = std::fs::read_to_string(out.join("small-defects/report.md")).unwrap();
    assert!(report.contains("tiles"), "{report}");
}

/// The default method is the per-object memory: no network in the file, a memory per object, a new
/// object learned without touching the old one's, predictions with heatmaps.
#[test]
fn default_memory_model_trains_learns_and_predicts_with_shared_lite0_weights() {
    let (s, data) = Scratch::with_demo_data();
    let m0 = s.path("m0.safetensors");
    let m1 = s.path("m1.safetensors");
    let out = s.train(&data, "fabric").out(&m0).ok().stdout;
    assert!(
        out.contains("learned fabric") && out.contains("patches"),
        "{out}"
    );
    let learned = s
        .iuf_json("learn")
        .model(&m0)
        .data(&data)
        .classes("mesh")
        .out(&m1)
        .ok()
        .json();
    assert_eq!(learned["step"]["optimizer"], "none");
    let info_of = |m: &std::path::Path| s.iuf_json("info").model(m).ok().json();
    let (i0, i1) = (info_of(&m0), info_of(&m1));
    assert_eq!(i1["method"], "memory");
    assert_eq!(i1["network"], false);
    assert_eq!(i1["parameters"], 0);
    assert!(i1["memory_patches"]["mesh"].as_u64().unwrap() > 0, "{i1}");
    assert_eq!(
        i0["thresholds"]["fabric"], i1["thresholds"]["fabric"],
        "learning mesh changed fabric's threshold"
    );
    let text = s.iuf("info").model(&m1).ok().stdout;
    assert!(text.contains("network    none"), "{text}");
    let lines = s
        .iuf_json("predict")
        .model(&m1)
        .arg(data.join("mesh/test"))
        .out(s.path("pred"))
        .ok()
        .json_lines();
    assert_eq!(lines.len(), 8);
    let mut mesh = 0;
    for l in &lines {
        assert!(l["score"].as_f64().unwrap().is_finite(), "{l}");
        mesh += usize::from(l["object"] == "mesh");
        assert!(std::path::Path::new(l["heatmap"].as_str().unwrap()).is_file());
    }
    assert_eq!(mesh, 8, "mesh images are recognised as mesh: {lines:?}");
}

/// Guarantee: every method is a model like any other, the class-mean floor included (issue 21:
/// it is a learner made of one scorer): `train --method class-mean` writes a model that `info`
/// describes and `predict` judges with the calibrator's verdict (object, score, threshold,
/// decision) for every image.
#[test]
fn the_class_mean_floor_is_a_model_that_predict_judges() {
    let (s, data) = Scratch::with_demo_data();
    let model = s.path("cm.safetensors");
    s.train_tiny(&data, "fabric,mesh")
        .method("class-mean")
        .out(&model)
        .ok();
    let info = s.iuf_json("info").model(&model).ok().json();
    assert_eq!(info["method"], "class-mean");
    assert_eq!(info["network"], false);
    let out = s.path("pred");
    let lines = s
        .iuf_json("predict")
        .model(&model)
        .arg(data.join("fabric/test"))
        .out(&out)
        .ok()
        .json_lines();
    let scored: Vec<_> = lines.iter().filter(|l| l.get("score").is_some()).collect();
    assert!(!scored.is_empty(), "{lines:?}");
    for l in scored {
        let (score, threshold) = (
            l["score"].as_f64().unwrap(),
            l["threshold"].as_f64().unwrap(),
        );
        let decision = if score > threshold { "defect" } else { "ok" };
        assert_eq!(l["decision"], decision, "{l}");
        assert!(l["object"] == "fabric" || l["object"] == "mesh", "{l}");
    }
}

/// Guarantee (issue 22): a model with a tiled view trains, learns a new object, says what its
/// views are, and predicts with maps at the tiles' scale; impossible tilings are refused before
/// any work, naming the numbers.
#[test]
fn a_tiled_model_trains_learns_and_predicts_with_shared_lite0_weights() {
    let (s, data) = Scratch::with_demo_data();
    let (m0, m1) = (s.path("t0.safetensors"), s.path("t1.safetensors"));
    // 64-pixel demo images: 2 x 2 tiles of 32 px, each seen at 224.
    s.train(&data, "fabric")
        .args(["--tile", "32"])
        .out(&m0)
        .ok();
    s.iuf("learn")
        .model(&m0)
        .data(&data)
        .classes("washer")
        .out(&m1)
        .ok();
    let text = s.iuf("info").model(&m1).ok().stdout;
    assert!(
        text.contains("2 x 2 tiles of 32 px") && text.contains("resized to 64 px"),
        "{text}"
    );
    let lines = s
        .iuf_json("predict")
        .model(&m1)
        .arg(data.join("washer/test"))
        .out(s.path("pred"))
        .ok()
        .json_lines();
    assert_eq!(lines.len(), 8);
    for l in &lines {
        assert!(l["score"].as_f64().unwrap().is_finite(), "{l}");
        assert_eq!(l["object"], "washer", "{l}");
    }
    // bench shows the whole view and the tiled view side by side.
    let bench = s.path("bench");
    let out = s
        .iuf("bench")
        .data(&data)
        .protocol("fabric")
        .method("memory")
        .args(["--tile", "32"])
        .out(&bench)
        .ok()
        .stdout;
    assert!(
        out.contains("memory-tiles") && bench.join("memory/results.json").is_file(),
        "{out}"
    );
    let report = std::fs::read_to_string(bench.join("report.md")).unwrap();
    assert!(report.contains("2 x 2 tiles of 32 px"), "{report}");
    s.train(&data, "fabric")
        .args(["--tile", "128"])
        .out(s.path("x.safetensors"))
        .fails_with(&["128", "64"]);
    s.train(&data, "fabric")
        .args(["--tile", "auto"])
        .out(s.path("x.safetensors"))
        .fails_with(&["--tile auto", "64 px"]);
    s.train(&data, "fabric")
        .args(["--tile", "32", "--method", "iuf"])
        .preset("tiny")
        .out(s.path("x.safetensors"))
        .fails_with(&["tiled view", "memory"]);
}
