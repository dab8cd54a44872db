//! The PyTorch checkpoint reader on small fixtures made by xtask/scripts/backbone_pth_fixtures.py
//! (the same checkpoint in legacy and zip format, a pickled nn.Module) and on the real legacy
//! EfficientNet-Lite0 file of ../shared; truncated files fail cleanly.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use iuf_backbone::pth::{detect_format, read_pth, PthFormat};

use crate::common::{fixtures, lite0_pth_path};

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("pth").join(name)).unwrap()
}

fn expected(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join("pth").join(name), &Device::Cpu).unwrap()
}

/// Same names in the same order as `torch.save` saw them, same dtypes, bitwise-equal values.
fn assert_same(got: &[(String, Tensor)], want: &HashMap<String, Tensor>, order: &[&str]) {
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, order);
    for (name, tensor) in got {
        let want = &want[name];
        assert_eq!(tensor.dtype(), want.dtype(), "{name}");
        assert_eq!(tensor.dims(), want.dims(), "{name}");
        let (a, b) = (
            tensor.flatten_all().unwrap().to_dtype(DType::F64).unwrap(),
            want.flatten_all().unwrap().to_dtype(DType::F64).unwrap(),
        );
        assert_eq!(
            a.to_vec1::<f64>().unwrap(),
            b.to_vec1::<f64>().unwrap(),
            "{name}"
        );
    }
}

const CHECKPOINT_NAMES: [&str; 12] = [
    "a",
    "row",
    "transposed",
    "bn.num_batches_tracked",
    "half",
    "bfloat",
    "double",
    "mask",
    "int32",
    "int8",
    "empty",
    "param",
];

#[test]
fn legacy_checkpoint_with_state_dict_key_and_data_parallel_prefix() {
    let bytes = read("checkpoint_legacy.pth");
    assert_eq!(detect_format(&bytes).unwrap(), PthFormat::Legacy);
    let got = read_pth(&bytes).unwrap();
    assert_same(&got, &expected("expected.safetensors"), &CHECKPOINT_NAMES);
    // int64 beyond i32 survives.
    let steps = got[3].1.to_scalar::<i64>().unwrap();
    assert_eq!(steps, 12_345_678_901);
}

#[test]
fn zip_checkpoint_gives_the_same_tensors() {
    let bytes = read("checkpoint_zip.pth.tar");
    assert_eq!(detect_format(&bytes).unwrap(), PthFormat::Zip);
    assert_same(
        &read_pth(&bytes).unwrap(),
        &expected("expected.safetensors"),
        &CHECKPOINT_NAMES,
    );
}

#[test]
fn pickled_module_gives_its_state_dict() {
    let got = read_pth(&read("module_legacy.pth")).unwrap();
    let order = [
        "0.weight",
        "0.bias",
        "2.weight",
        "2.bias",
        "2.running_mean",
        "2.running_var",
        "2.num_batches_tracked",
    ];
    assert_same(&got, &expected("module_expected.safetensors"), &order);
}

#[test]
fn real_lite0_legacy_file_reads_every_tensor() {
    let bytes = std::fs::read(lite0_pth_path()).unwrap();
    assert_eq!(detect_format(&bytes).unwrap(), PthFormat::Legacy);
    let tensors = read_pth(&bytes).unwrap();
    // 296 entries in torch.load's state_dict: 66 convs/BNs x ... as listed by PyTorch.
    assert_eq!(tensors.len(), 296);
    assert_eq!(tensors[0].0, "_conv_stem.weight");
    assert_eq!(tensors[0].1.dims(), &[32, 3, 3, 3]);
    assert_eq!(tensors[5].0, "_bn0.num_batches_tracked");
    assert_eq!(tensors[5].1.dtype(), DType::I64);
    let last = tensors.last().unwrap();
    assert_eq!((last.0.as_str(), last.1.dims()), ("_fc.bias", &[1000][..]));
}

#[test]
fn truncated_checkpoints_fail_cleanly() {
    let legacy = std::fs::read(lite0_pth_path()).unwrap();
    // Inside the header pickles, the object pickle, the key list and the raw data.
    for cut in [
        1,
        10,
        20,
        100,
        5_000,
        42_000,
        47_000,
        47_200,
        1_000_000,
        legacy.len() - 1,
    ] {
        let err = read_pth(&legacy[..cut]).expect_err("truncated legacy file must fail");
        let msg = err.to_string();
        assert!(
            msg.contains("truncated") || msg.contains("corrupt"),
            "cut {cut}: {msg}"
        );
    }
    let zip = read("checkpoint_zip.pth.tar");
    for cut in [4, 100, zip.len() / 2, zip.len() - 10] {
        assert!(read_pth(&zip[..cut]).is_err(), "cut {cut}");
    }
    let small = read("checkpoint_legacy.pth");
    for cut in 0..small.len() {
        assert!(read_pth(&small[..cut]).is_err(), "cut {cut}");
    }
}
