//! Real images: the CLI on ../shared/datasets/mvtec-mini (MVTec AD layout; `magnetic_tile` is
//! grayscale), kept cheap: one object, the `tiny` preset, one epoch.

use crate::common::{mvtec_mini, Scratch};

#[test]
fn real_mvtec_mini_train_eval_predict_on_bottle() {
    let s = Scratch::new();
    let data = mvtec_mini();
    let model = s.path("bottle.safetensors");
    s.train_tiny(&data, "bottle").epochs(1).out(&model).ok();
    let ev = s.iuf_json("eval").model(&model).data(&data).ok().json();
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
    let lines = s
        .iuf_json("predict")
        .model(&model)
        .args(
            [
                "bottle/test/broken_large/000.png",
                "magnetic_tile/test/good/000.png",
                "magnetic_tile/test/crack/000.png",
            ]
            .map(|f| data.join(f)),
        )
        .out(s.path("pred"))
        .ok()
        .json_lines();
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
