//! `iuf learn --more` (good images added to a learned object) and `iuf threshold` (a threshold
//! set after learning), on the tiny demo dataset with the shared Lite0 weights.

use serde_json::Value;

use crate::common::Scratch;

/// `object` and `score` of every line of `predict --json`, in path order.
fn scores(lines: &[Value]) -> Vec<(String, String, Value, Value)> {
    let mut v: Vec<_> = lines
        .iter()
        .map(|l| {
            (
                l["path"].as_str().unwrap().to_string(),
                l["object"].as_str().unwrap().to_string(),
                l["score"].clone(),
                l["threshold"].clone(),
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Guarantee: `--more` adds good images to one object (its memory is rebuilt within the cap, its
/// threshold recalibrated, `info` records it), the input model is not modified, and every image
/// of the other object scores bit-identically with the same threshold.
#[test]
fn learn_more_changes_only_its_object_with_shared_lite0_weights() {
    let (s, data) = Scratch::with_demo_data();
    let m1 = s.path("m1.safetensors");
    let m2 = s.path("m2.safetensors");
    s.train(&data, "fabric,mesh").out(&m1).ok();
    let before = std::fs::read(&m1).unwrap();
    let predict = |m: &std::path::Path, dir: &str, out: &str| {
        let lines = s
            .iuf_json("predict")
            .model(m)
            .arg(data.join(dir))
            .out(s.path(out))
            .ok()
            .json_lines();
        scores(&lines)
    };
    let mesh_before = predict(&m1, "mesh/test", "p1");
    // The demo's fabric training images stand for more good images of fabric.
    let added = s
        .iuf_json("learn")
        .model(&m1)
        .data(&data)
        .classes("fabric")
        .arg("--more")
        .out(&m2)
        .ok()
        .json();
    let r = &added["added"][0];
    assert_eq!(r["object"], "fabric", "{added}");
    assert!(
        r["train"].as_u64().unwrap() > 0 && r["holdout"].as_u64().unwrap() > 0,
        "{added}"
    );
    assert_eq!(
        added["model_sha256"].as_str().unwrap(),
        iuf_backbone::fetch::sha256_hex(&std::fs::read(&m2).unwrap())
    );
    assert_eq!(
        std::fs::read(&m1).unwrap(),
        before,
        "--more modified its input"
    );
    let mesh_after = predict(&m2, "mesh/test", "p2");
    assert_eq!(
        mesh_before, mesh_after,
        "mesh's scores or thresholds changed"
    );
    let info = |m: &std::path::Path| s.iuf_json("info").model(m).ok().json();
    let (i1, i2) = (info(&m1), info(&m2));
    assert_eq!(i1["thresholds"]["mesh"], i2["thresholds"]["mesh"]);
    assert_eq!(i2["good_added"][0]["object"], "fabric", "{i2}");
    let (n1, n2) = (
        &i1["object_images"]["fabric"]["train"],
        &i2["object_images"]["fabric"]["train"],
    );
    assert_eq!(
        n2.as_u64().unwrap(),
        n1.as_u64().unwrap() + r["train"].as_u64().unwrap()
    );
    assert_eq!(i1["object_images"]["mesh"], i2["object_images"]["mesh"]);
    assert!(i2["memory_patches"]["fabric"].as_u64().unwrap() <= 4096);
    let text = s.iuf("info").model(&m2).ok().stdout;
    assert!(text.contains("good images added at"), "{text}");
}

/// Guarantee: `--more` is refused with the reason: without `--classes`, for an object the model
/// has not learned, and for a method that is not a memory (the class-mean floor here).
#[test]
fn learn_more_refusals_name_the_reason_with_shared_lite0_weights() {
    let (s, data) = Scratch::with_demo_data();
    let m = s.path("m.safetensors");
    s.train(&data, "fabric").out(&m).ok();
    s.iuf("learn")
        .model(&m)
        .data(&data)
        .arg("--more")
        .out(s.path("x.safetensors"))
        .fails_with(&["--more adds good images to objects", "--classes", "fabric"]);
    s.iuf("learn")
        .model(&m)
        .data(&data)
        .classes("mesh")
        .arg("--more")
        .out(s.path("x.safetensors"))
        .fails_with(&["has not learned `mesh`"]);
    let cm = s.path("cm.safetensors");
    s.train(&data, "fabric").method("class-mean").out(&cm).ok();
    s.iuf("learn")
        .model(&cm)
        .data(&data)
        .classes("fabric")
        .arg("--more")
        .out(s.path("x.safetensors"))
        .fails_with(&["for the memory methods", "class-mean"]);
    assert!(!s.path("x.safetensors").exists());
}

/// Guarantee: `iuf threshold` sets one object's threshold by value or quantile; `predict` judges
/// with it, `info` shows who set it, the other object keeps its own; bad requests are refused.
#[test]
fn threshold_sets_and_records_with_shared_lite0_weights() {
    let (s, data) = Scratch::with_demo_data();
    let m1 = s.path("m1.safetensors");
    let m2 = s.path("m2.safetensors");
    let m3 = s.path("m3.safetensors");
    s.train(&data, "fabric,mesh").out(&m1).ok();
    let set = s
        .iuf_json("threshold")
        .model(&m1)
        .flag("--object", "fabric")
        .flag("--value", "123.5")
        .flag("--by", "alice")
        .out(&m2)
        .ok()
        .json();
    assert_eq!(set["threshold"]["value"], 123.5, "{set}");
    assert_eq!(set["threshold"]["set_by"], "alice");
    let lines = s
        .iuf_json("predict")
        .model(&m2)
        .arg(data.join("fabric/test"))
        .out(s.path("p"))
        .ok()
        .json_lines();
    for l in &lines {
        if l["object"] == "fabric" {
            assert_eq!(l["threshold"], 123.5, "{l}");
            assert_eq!(l["decision"], "ok", "{l}");
        }
    }
    let (i1, i2) = (
        s.iuf_json("info").model(&m1).ok().json(),
        s.iuf_json("info").model(&m2).ok().json(),
    );
    assert_eq!(
        i2["threshold_settings"]["fabric"]["rule"],
        serde_json::json!({"value": 123.5})
    );
    assert_eq!(i2["thresholds"]["fabric"], 123.5);
    assert_eq!(i1["thresholds"]["mesh"], i2["thresholds"]["mesh"]);
    let text = s.iuf("info").model(&m2).ok().stdout;
    assert!(text.contains("value 123.5 by alice at 20"), "{text}");
    // A quantile rule reads the sketch: 1.0 is the highest held-out good score.
    let q = s
        .iuf_json("threshold")
        .model(&m2)
        .flag("--object", "fabric")
        .flag("--quantile", "1")
        .out(&m3)
        .ok()
        .json();
    assert_eq!(q["threshold_before"], 123.5);
    assert!(q["threshold"]["value"].as_f64().unwrap() < 123.5, "{q}");
    s.iuf("threshold")
        .model(&m1)
        .flag("--object", "fabric")
        .flag("--value", "1")
        .flag("--quantile", "0.5")
        .out(s.path("x"))
        .fails_with(&["cannot be used with"]);
    s.iuf("threshold")
        .model(&m1)
        .flag("--object", "washer")
        .flag("--value", "1")
        .out(s.path("x"))
        .fails_with(&["has not learned `washer`"]);
    s.iuf("threshold")
        .model(&m1)
        .flag("--object", "fabric")
        .flag("--quantile", "1.5")
        .out(s.path("x"))
        .fails_with(&["--quantile must lie in [0, 1]"]);
    s.iuf("threshold")
        .model(&m1)
        .flag("--object", "fabric")
        .flag("--value", "1")
        .out(&m1)
        .fails_with(&["never modifies its input"]);
}
