//! Real images: the CLI on ../shared/datasets/mvtec-mini (MVTec AD layout; `magnetic_tile` is
//! grayscale), kept cheap: one object, the `tiny` preset, one epoch.

use crate::common::{json, json_lines, ok, shared, Scratch};

#[test]
fn real_mvtec_mini_train_eval_predict_on_bottle() {
    let s = Scratch::new();
    let data = shared().join("datasets/mvtec-mini");
    let model = s.path("bottle.safetensors");
    ok(&s.iuf([
        "train".as_ref(),
        "--data".as_ref(),
        data.as_os_str(),
        "--classes".as_ref(),
        "bottle".as_ref(),
        "--preset".as_ref(),
        "tiny".as_ref(),
        "--epochs".as_ref(),
        "1".as_ref(),
        "--out".as_ref(),
        model.as_os_str(),
    ]));
    let o = s.iuf([
        "--json".as_ref(),
        "eval".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        "--data".as_ref(),
        data.as_os_str(),
    ]);
    ok(&o);
    let ev = json(&o);
    let bottle = &ev["classes"][0];
    assert_eq!(bottle["class"], "bottle");
    // mvtec-mini/README.md: bottle has 20 good and 63 defective test images.
    assert_eq!(bottle["images"], 83);
    assert_eq!(bottle["anomalous"], 63);
    // One epoch of the tiny network is far from trained: check only that every metric is one.
    for k in [
        "image_auroc",
        "pixel_auroc",
        "image_ap",
        "pixel_ap",
        "pro",
        "image_f1_max",
    ] {
        let v = bottle[k].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{k} = {v}");
    }

    // A grayscale object's images are scored too (3 equal channels).
    let o = s.iuf([
        "--json".as_ref(),
        "predict".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        data.join("bottle/test/broken_large/000.png").as_os_str(),
        data.join("magnetic_tile/test/good/000.png").as_os_str(),
        data.join("magnetic_tile/test/crack/000.png").as_os_str(),
        "--out".as_ref(),
        s.path("pred").as_os_str(),
    ]);
    ok(&o);
    let lines = json_lines(&o);
    assert_eq!(lines.len(), 3);
    assert!(lines[0]["mask"]
        .as_str()
        .unwrap()
        .ends_with("ground_truth/broken_large/000_mask.png"));
    assert!(lines[1].get("mask").is_none(), "good images have no mask");
    assert!(lines[2]["mask"]
        .as_str()
        .unwrap()
        .ends_with("ground_truth/crack/000_mask.png"));
    assert!(lines.iter().all(|l| l["score"].is_number()));
}
