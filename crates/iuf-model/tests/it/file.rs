//! The model file: bit-identical reload, and precise errors for corrupt or mismatched files.

use std::collections::HashMap;
use std::path::Path;

use crate::build;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use iuf_model::{
    load_model, save_model, IufModel, LearnedClass, Mode, ModelConfig, ModelError, ModelMeta,
    TensorProblem,
};

const C: usize = 16;

fn saved_model(dir: &Path) -> (std::path::PathBuf, VarMap, IufModel, ModelMeta) {
    let cfg = ModelConfig::tiny(C, 3);
    let (varmap, model) = build(&cfg);
    let mut meta = ModelMeta::new(
        cfg,
        "efficientnet-lite0",
        vec!["bottle".into(), "cable".into(), "zipper".into()],
    );
    meta.learned = vec![
        LearnedClass {
            class: "bottle".into(),
            step: 0,
        },
        LearnedClass {
            class: "cable".into(),
            step: 0,
        },
        LearnedClass {
            class: "zipper".into(),
            step: 1,
        },
    ];
    meta.thresholds.insert("bottle".into(), 0.75);
    meta.extra = serde_json::json!({"trainer": {"lr": 1e-4, "epochs": [3, 2]}});
    let gram = Tensor::rand(0f32, 1f32, (32, 32), &Device::Cpu).unwrap();
    let state = vec![(
        "state.gram.transformer.encoder.layers.0.linear2".to_string(),
        gram,
    )];
    let path = dir.join("model.safetensors");
    save_model(&path, &varmap, &meta, &state).unwrap();
    (path, varmap, model, meta)
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn saved_model_reloads_bit_identically() {
    let dir = tempfile::tempdir().unwrap();
    let (path, varmap, model, meta) = saved_model(dir.path());
    let loaded = load_model(&path, &Device::Cpu).unwrap();
    assert_eq!(loaded.meta, meta);
    assert_eq!(loaded.state.len(), 1);
    assert_eq!(
        loaded.state[0].0,
        "state.gram.transformer.encoder.layers.0.linear2"
    );
    let original = varmap.data().lock().unwrap();
    let reloaded = loaded.varmap.data().lock().unwrap();
    assert_eq!(original.len(), reloaded.len());
    for (name, var) in original.iter() {
        assert_eq!(
            values(var.as_tensor()),
            values(reloaded[name].as_tensor()),
            "{name}"
        );
    }
    drop((original, reloaded));
    let x = Tensor::rand(0f32, 1f32, (2, C, 14, 14), &Device::Cpu).unwrap();
    let a = model.forward(&x, &mut Mode::Eval).unwrap();
    let b = loaded
        .model()
        .unwrap()
        .forward(&x, &mut Mode::Eval)
        .unwrap();
    assert_eq!(values(&a.feature_rec), values(&b.feature_rec));
    assert_eq!(values(&a.logits), values(&b.logits));
    // No temporary file is left beside the model.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

/// The error of loading a saved model after `damage` changed the bytes of its file.
fn load_error_after(damage: impl FnOnce(&mut Vec<u8>)) -> ModelError {
    let dir = tempfile::tempdir().unwrap();
    let (path, ..) = saved_model(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    damage(&mut bytes);
    std::fs::write(&path, &bytes).unwrap();
    load_model(&path, &Device::Cpu).err().unwrap()
}

#[test]
fn truncated_file_is_reported_as_corrupt() {
    let err = load_error_after(|bytes| bytes.truncate(bytes.len() - 100));
    assert!(matches!(err, ModelError::Corrupt { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("model.safetensors") && msg.contains("corrupt"),
        "{msg}"
    );
}

#[test]
fn flipped_data_byte_fails_the_digest() {
    let msg = load_error_after(|bytes| {
        let n = bytes.len();
        bytes[n - 7] ^= 0x40;
    })
    .to_string();
    assert!(
        msg.contains("model.safetensors") && msg.contains("digest"),
        "{msg}"
    );
}

#[test]
fn missing_file_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.safetensors");
    let msg = load_model(&path, &Device::Cpu).err().unwrap().to_string();
    assert!(msg.contains("absent.safetensors"), "{msg}");
}

/// Rewrites the header of a saved file (tensors untouched), e.g. to change the stored config.
fn rewrite_header(path: &Path, edit: impl FnOnce(&mut HashMap<String, String>)) {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut header = meta.metadata().clone().unwrap();
    edit(&mut header);
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors: Vec<(String, safetensors::tensor::TensorView<'_>)> = st.tensors();
    let out = safetensors::serialize(tensors, Some(header)).unwrap();
    std::fs::write(path, out).unwrap();
}

fn edit_config(path: &Path, edit: impl FnOnce(&mut ModelConfig)) {
    edit_meta(path, |m| edit(&mut m.config));
}

/// Rewrites the metadata, with a matching metadata digest (a consistent file of other metadata).
fn edit_meta(path: &Path, edit: impl FnOnce(&mut ModelMeta)) {
    rewrite_header(path, |h| {
        let mut meta: ModelMeta = serde_json::from_str(&h["iuf.meta"]).unwrap();
        edit(&mut meta);
        let json = serde_json::to_string(&meta).unwrap();
        // A consistent file of another config: its metadata digest matches.
        use sha2::Digest;
        let digest = sha2::Sha256::digest(json.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        h.insert("iuf.meta_sha256".into(), hex);
        h.insert("iuf.meta".into(), json);
    });
}

fn tensor_problems(path: &Path) -> Vec<TensorProblem> {
    match load_model(path, &Device::Cpu) {
        Err(ModelError::Tensors {
            source_name,
            problems,
        }) => {
            assert!(source_name.contains("model.safetensors"));
            problems
        }
        Err(e) => panic!("expected a tensor mismatch, got {e}"),
        Ok(_) => panic!("expected a tensor mismatch, the file loaded"),
    }
}

#[test]
fn config_with_more_classes_names_the_misshaped_head() {
    let dir = tempfile::tempdir().unwrap();
    let (path, ..) = saved_model(dir.path());
    edit_config(&path, |c| c.num_classes = 4);
    let problems = tensor_problems(&path);
    assert_eq!(
        problems,
        [
            TensorProblem::Shape {
                name: "discriminator.head.fc2.bias".into(),
                expected: vec![4],
                found: vec![3],
            },
            TensorProblem::Shape {
                name: "discriminator.head.fc2.weight".into(),
                expected: vec![4, 32],
                found: vec![3, 32],
            },
        ]
    );
    let msg = load_model(&path, &Device::Cpu).err().unwrap().to_string();
    assert!(
        msg.contains("discriminator.head.fc2.weight` has shape [3, 32], expected [4, 32]"),
        "{msg}"
    );
}

#[test]
fn config_with_other_depth_names_missing_and_unexpected_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let (path, ..) = saved_model(dir.path());
    edit_config(&path, |c| {
        c.transformer.num_decoder_layers = 3;
    });
    let problems = tensor_problems(&path);
    assert!(problems.contains(&TensorProblem::Missing {
        name: "transformer.decoder.layers.2.linear2.weight".into(),
        expected: vec![32, 64],
    }));
    assert!(problems
        .iter()
        .all(|p| matches!(p, TensorProblem::Missing { .. })));

    let (path, ..) = saved_model(dir.path());
    edit_config(&path, |c| {
        c.transformer.num_encoder_layers = 1;
        c.discriminator.depth = 1;
    });
    let problems = tensor_problems(&path);
    assert!(problems.contains(&TensorProblem::Unexpected {
        name: "transformer.encoder.layers.1.norm2.bias".into(),
        found: vec![32],
    }));
}

#[test]
fn wrong_format_version_and_foreign_files_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (path, ..) = saved_model(dir.path());
    rewrite_header(&path, |h| {
        h.insert("iuf.format_version".into(), "99".into());
    });
    let msg = load_model(&path, &Device::Cpu).err().unwrap().to_string();
    assert!(
        msg.contains("version \"99\"") && msg.contains("version 1"),
        "{msg}"
    );

    let foreign = dir.path().join("weights.safetensors");
    let t = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
    t.save_safetensors("x", &foreign).unwrap();
    let err = load_model(&foreign, &Device::Cpu).err().unwrap();
    assert!(matches!(err, ModelError::Format { .. }), "{err}");
    assert!(err.to_string().contains("not an iuf model file"), "{err}");
}

#[test]
fn saving_checks_the_varmap_and_state_names() {
    let dir = tempfile::tempdir().unwrap();
    let (path, varmap, _, meta) = saved_model(dir.path());
    let mut other = meta.clone();
    other.config.num_classes = 5;
    let err = save_model(&path, &varmap, &other, &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("discriminator.head.fc2.weight"), "{err}");
    let t = Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap();
    let err = save_model(&path, &varmap, &meta, &[("gram".into(), t)])
        .unwrap_err()
        .to_string();
    assert!(err.contains("state."), "{err}");
}

/// Guarantee: one changed byte in the header metadata (here a digit of `layer_norm_eps`, the JSON
/// still valid) is reported as damage instead of loading with other scores.
#[test]
fn altered_metadata_fails_the_metadata_digest() {
    let msg = load_error_after(|bytes| {
        let key = b"layer_norm_eps";
        let at = bytes
            .windows(key.len())
            .position(|w| w == key)
            .expect("the config is in the header");
        let digit = at + bytes[at..].iter().position(|b| b.is_ascii_digit()).unwrap();
        bytes[digit] = if bytes[digit] == b'9' {
            b'8'
        } else {
            bytes[digit] + 1
        };
    })
    .to_string();
    assert!(
        msg.contains("model.safetensors") && msg.contains("metadata"),
        "{msg}"
    );
}

/// Guarantee: the temporary files a killed writer left (`.<name>.tmp-<pid>` of a process that no
/// longer runs) are removed at the next write to the same folder; a live writer's, and files that
/// only look similar (a user's `results.tmp123`), are kept.
#[test]
fn a_save_removes_the_stale_temporary_files_of_dead_writers() {
    let dir = tempfile::tempdir().unwrap();
    // Above Linux's largest pid (2^22): no such process.
    let dead = [".old.safetensors.tmp-4194999", ".results.json.tmp-4194998"];
    let live = format!(".other.safetensors.tmp-{}", std::process::id());
    let keep = [
        "notes.tmp-draft",
        "data.tmp",
        "results.tmp4194999",
        "photo.tmp-4194999",
    ];
    for name in dead
        .iter()
        .chain(&keep)
        .map(|s| s.to_string())
        .chain([live.clone()])
    {
        std::fs::write(dir.path().join(name), b"x").unwrap();
    }
    let (path, ..) = saved_model(dir.path());
    assert!(path.is_file());
    for name in dead {
        assert!(!dir.path().join(name).exists(), "{name} was left");
    }
    for name in keep.iter().map(|s| s.to_string()).chain([live]) {
        assert!(dir.path().join(&name).exists(), "{name} was removed");
    }
}

/// Guarantee: a damaged class list in the metadata (a file written before the metadata digest, or
/// edited with its digest) is refused on load, naming the file and the field, instead of loading as
/// a model that "has learned no object".
#[test]
fn inconsistent_class_fields_name_the_file_and_the_field() {
    let dir = tempfile::tempdir().unwrap();
    type Edit = fn(&mut ModelMeta);
    let cases: [(Edit, &str); 5] = [
        (|m| m.class_names[2] = "zipp\u{1}r".into(), "entry 2"),
        (|m| m.class_names[1] = String::new(), "entry 1"),
        (|m| m.class_names[2] = "bottle".into(), "twice"),
        (
            |m| m.class_names = vec!["bottle".into(), "cable".into(), "zipper".into(), "x".into()],
            "room for 3",
        ),
        (
            |m| m.class_names[1] = "cab1e".into(),
            "`learned` names \"cable\"",
        ),
    ];
    for (edit, expect) in cases {
        let (path, ..) = saved_model(dir.path());
        edit_meta(&path, edit);
        let msg = load_model(&path, &Device::Cpu).err().unwrap().to_string();
        assert!(
            msg.contains("model.safetensors")
                && msg.contains("class_names")
                && msg.contains(expect),
            "{expect}: {msg}"
        );
    }
    // The same damage in a file without the metadata digest (written before it existed).
    let (path, ..) = saved_model(dir.path());
    rewrite_header(&path, |h| {
        h.remove("iuf.meta_sha256");
        let meta = h["iuf.meta"].replace("\"zipper\"", "\"zi\\u0000er\"");
        h.insert("iuf.meta".into(), meta);
    });
    let msg = load_model(&path, &Device::Cpu).err().unwrap().to_string();
    assert!(
        msg.contains("class_names") && msg.contains("model.safetensors"),
        "{msg}"
    );
}

/// Guarantee: the content digest a signature covers is the same before and after header entries
/// are added (a signed file loads as before, tensors byte for byte), and changes with any edit
/// of the metadata or the tensors, even with the stored digests recomputed; a file whose data no
/// longer matches its digests has none.
#[test]
fn the_content_digest_ignores_added_header_entries_and_follows_every_edit() {
    use iuf_model::file::{content_digest, with_header, KEY_SIGNATURE};
    let dir = tempfile::tempdir().unwrap();
    let (path, varmap, _, meta) = saved_model(dir.path());
    let bytes = std::fs::read(&path).unwrap();
    let digest = content_digest(&path, &bytes).unwrap();
    let signed = with_header(&path, &bytes, &[(KEY_SIGNATURE, "ab".repeat(64))]).unwrap();
    assert_eq!(content_digest(&path, &signed).unwrap(), digest);
    let signed_path = dir.path().join("signed.safetensors");
    std::fs::write(&signed_path, &signed).unwrap();
    let loaded = load_model(&signed_path, &Device::Cpu).unwrap();
    assert_eq!(loaded.meta, meta);
    assert_eq!(
        iuf_model::file::header(&signed_path, &signed).unwrap()[KEY_SIGNATURE],
        "ab".repeat(64)
    );

    let mut edited = meta.clone();
    edited.thresholds.insert("bottle".into(), 0.5);
    let other = dir.path().join("edited.safetensors");
    save_model(&other, &varmap, &edited, &loaded.state).unwrap();
    assert_ne!(
        content_digest(&other, &std::fs::read(&other).unwrap()).unwrap(),
        digest
    );
    let mut state = loaded.state.clone();
    state[0].1 = (&state[0].1 + 1.0).unwrap();
    save_model(&other, &varmap, &meta, &state).unwrap();
    assert_ne!(
        content_digest(&other, &std::fs::read(&other).unwrap()).unwrap(),
        digest
    );
    let mut flipped = bytes.clone();
    let at = flipped.len() - 10;
    flipped[at] ^= 1;
    let err = content_digest(&path, &flipped).unwrap_err().to_string();
    assert!(err.contains("altered or damaged"), "{err}");
}
