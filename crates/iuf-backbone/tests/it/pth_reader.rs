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

/// A legacy checkpoint written opcode by opcode: `{'w': tensor}`, the tensor a view (`offset`,
/// `size`, `stride`) of a FloatStorage holding 1.0, 2.0, 3.0, 4.0.
fn legacy_checkpoint(offset: i64, size: &[i64], stride: &[i64]) -> Vec<u8> {
    let long = |p: &mut Vec<u8>, v: i64| {
        p.extend([0x8a, 8]); // LONG1, 8 bytes
        p.extend(v.to_le_bytes());
    };
    // The magic number (LONG1), the protocol version 1001 (BININT2), an empty sys-info dict.
    let mut p = vec![0x80, 2, 0x8a, 10];
    p.extend(&0x1950a86a20f9469cfc6c_i128.to_le_bytes()[..10]);
    p.extend(b".\x80\x02M\xe9\x03.\x80\x02}.");
    // {'w': _rebuild_tensor_v2(<persistent storage>, offset, size, stride, False, OrderedDict())}
    p.extend(b"\x80\x02}(X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n(");
    // BINPERSID of ('storage', torch.FloatStorage, '0', 'cpu', 4).
    p.extend(b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\n");
    p.extend(b"X\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04tQ");
    long(&mut p, offset);
    p.push(b'(');
    size.iter().for_each(|&n| long(&mut p, n));
    p.extend(b"t(");
    stride.iter().for_each(|&s| long(&mut p, s));
    p.extend(b"t\x89ccollections\nOrderedDict\n)RtRu.");
    // The storage keys ['0'], then the storage: its element count and little-endian f32s.
    p.extend(b"\x80\x02]X\x01\x00\x00\x000a.");
    p.extend(4u64.to_le_bytes());
    p.extend([1f32, 2.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()));
    p
}

#[test]
fn empty_tensors_past_their_storage_are_refused() {
    // The hand-written checkpoint reads: a view, and empty tensors inside the storage or at its
    // end.
    let got = read_pth(&legacy_checkpoint(1, &[2], &[1])).unwrap();
    assert_eq!(got[0].0, "w");
    assert_eq!(got[0].1.to_vec1::<f32>().unwrap(), [2.0, 3.0]);
    for offset in [0, 4] {
        let got = read_pth(&legacy_checkpoint(offset, &[0], &[1])).unwrap();
        assert_eq!(got[0].1.dims(), &[0]);
    }
    // An empty tensor starting past the end of its storage (it once panicked on a slice out of
    // range, contiguous or not), and one whose contiguous strides overflow: errors naming it.
    for (offset, size, stride, says) in [
        (
            5,
            &[0][..],
            &[1][..],
            "starts at element 5 of a storage holding 4",
        ),
        (1 << 40, &[0], &[1], "starts at element 1099511627776"),
        (9, &[2, 0], &[5, 1], "starts at element 9"),
        (0, &[0, 1 << 40, 1 << 40], &[1, 1, 1], "sizes overflow"),
    ] {
        let err = read_pth(&legacy_checkpoint(offset, size, stride))
            .expect_err("a corrupt empty tensor must be refused");
        let msg = err.to_string();
        assert!(msg.contains("tensor `w`") && msg.contains(says), "{msg}");
    }
}
