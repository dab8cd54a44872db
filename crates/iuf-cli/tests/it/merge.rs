//! `iuf merge`: products learned apart (one `iuf train` each) merged into one model that scores
//! every product bit for bit as its own model did, and the merges it must refuse.

use std::path::Path;

use crate::common::{mvtec_mini, Scratch};

/// `predict --json` of `folder` with `model`: per image, its path, score, object and object
/// probability.
fn predictions(
    s: &Scratch,
    model: &Path,
    folder: &Path,
    out: &str,
) -> Vec<(String, f64, String, f64)> {
    s.iuf_json("predict")
        .model(model)
        .arg(folder)
        .out(s.path(out))
        .ok()
        .json_lines()
        .iter()
        .map(|l| {
            (
                l["path"].as_str().unwrap().to_string(),
                l["score"].as_f64().unwrap(),
                l["object"].as_str().unwrap().to_string(),
                l["object_probability"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// Guarantee: two products learned apart on real images (mvtec-mini bottle and tire, the default
/// memory method) and merged score every test image of each product exactly as the product's
/// own model did (same f32 score, bit for bit), and the merged model recognises each image's
/// product from the prototypes carried over, with no image read by the merge. The thresholds
/// are the sources'.
#[test]
fn real_products_learned_apart_and_merged_score_bit_for_bit_as_their_own_models() {
    let s = Scratch::new();
    let data = mvtec_mini();
    let (bottle, tire) = (s.path("bottle.safetensors"), s.path("tire.safetensors"));
    s.train(&data, "bottle").out(&bottle).ok();
    s.train(&data, "tire").out(&tire).ok();
    let merged = s.path("line/merged.safetensors");
    let o = s
        .iuf_json("merge")
        .arg(&bottle)
        .arg(&tire)
        .out(&merged)
        .ok()
        .json();
    assert_eq!(o["objects"][0]["object"], "bottle", "{o}");
    assert_eq!(o["objects"][1]["object"], "tire", "{o}");

    let info = s.iuf_json("info").model(&merged).ok().json();
    let source_info = s.iuf_json("info").model(&tire).ok().json();
    assert_eq!(info["method"], "memory", "{info}");
    assert_eq!(
        info["thresholds"]["tire"], source_info["thresholds"]["tire"],
        "{info}"
    );

    for (class, source) in [("bottle", &bottle), ("tire", &tire)] {
        let folder = data.join(class).join("test");
        let own = predictions(&s, source, &folder, &format!("{class}-own"));
        let both = predictions(&s, &merged, &folder, &format!("{class}-merged"));
        assert_eq!(own.len(), both.len());
        assert!(own.len() >= 80, "{class}: {} test images", own.len());
        for (a, b) in own.iter().zip(&both) {
            assert_eq!(a.0, b.0);
            assert_eq!(b.2, class, "{}: recognised as {}", b.0, b.2);
            assert_eq!(
                a.1.to_bits(),
                b.1.to_bits(),
                "{}: score {} alone, {} merged",
                a.0,
                a.1,
                b.1
            );
            // Alone the model knows one object (probability 1); merged, a softmax over both.
            assert_eq!(a.3, 1.0);
            assert!(b.3 > 0.5, "{}: probability {}", b.0, b.3);
        }
    }

    // The file a service loads: without the update statistics, a fraction of the size, every
    // score the same; `learn --more` refuses it and says why.
    let lean = s.path("line/lean.safetensors");
    s.iuf("merge")
        .arg(&bottle)
        .arg(&tire)
        .arg("--without-statistics")
        .out(&lean)
        .ok();
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    assert!(
        size(&lean) * 2 < size(&merged),
        "{} bytes without the statistics, {} with",
        size(&lean),
        size(&merged)
    );
    let folder = data.join("tire").join("test");
    let full = predictions(&s, &merged, &folder, "tire-full");
    let without = predictions(&s, &lean, &folder, "tire-lean");
    assert_eq!(full, without);
    s.iuf("learn")
        .model(&lean)
        .data(&data)
        .classes("tire")
        .arg("--more")
        .out(s.path("more.safetensors"))
        .fails_with(&[
            "without the statistics an exact update needs",
            "keep_statistics: false",
        ]);
}

/// Guarantee: merges that would not score as their sources are refused, naming the file and the
/// difference: an object in two files, another configuration, a method with a network, fewer
/// than two files, a model given twice, and an output that is one of the inputs.
#[test]
fn merges_that_cannot_keep_the_sources_scores_are_refused_with_the_reason() {
    let (s, data) = Scratch::with_demo_data();
    let fabric = s.path("fabric.safetensors");
    let mesh = s.path("mesh.safetensors");
    s.train_tiny(&data, "fabric").out(&fabric).ok();
    s.train_tiny(&data, "mesh").out(&mesh).ok();
    let out = s.path("merged.safetensors");

    // The same object in two files.
    let copy = s.path("fabric-again.safetensors");
    std::fs::copy(&fabric, &copy).unwrap();
    s.iuf("merge")
        .arg(&fabric)
        .arg(&mesh)
        .arg(&copy)
        .out(&out)
        .fails_with(&[
            "fabric-again.safetensors",
            "object `fabric` is also in",
            "fabric.safetensors",
        ]);
    assert!(!out.exists(), "nothing written on a refusal");

    // Another configuration (here the seed of every draw).
    let seeded = s.path("washer-seed-1.safetensors");
    s.train_tiny(&data, "washer")
        .flag("--seed", "1")
        .out(&seeded)
        .ok();
    s.iuf("merge")
        .arg(&fabric)
        .arg(&seeded)
        .out(&out)
        .fails_with(&[
            "washer-seed-1.safetensors",
            "configuration differs",
            "`seed` is 0 there and 1 here",
        ]);

    // A method with a network.
    let network = s.path("network.safetensors");
    s.train_tiny(&data, "washer")
        .method("iuf")
        .epochs(1)
        .out(&network)
        .ok();
    s.iuf("merge")
        .arg(&fabric)
        .arg(&network)
        .out(&out)
        .fails_with(&[
            "network.safetensors",
            "method `iuf` keeps a reconstruction network",
            "cannot be merged",
        ]);

    // One file only (unless it is to lose its statistics), a file twice, the output over an
    // input.
    s.iuf("merge")
        .arg(&fabric)
        .out(&out)
        .fails_with(&["merge needs two or more", "--without-statistics"]);
    s.iuf("merge")
        .arg(&fabric)
        .arg(&fabric)
        .out(&out)
        .fails_with(&["is given twice"]);
    s.iuf("merge")
        .arg(&fabric)
        .arg(&mesh)
        .out(&mesh)
        .fails_with(&["--out"]);
    assert!(!out.exists());

    // And the merge that is allowed: two tiny products.
    s.iuf("merge").arg(&fabric).arg(&mesh).out(&out).ok();
    let info = s.iuf_json("info").model(&out).ok().json();
    assert_eq!(info["learned"].as_array().map(Vec::len), Some(2), "{info}");
}
