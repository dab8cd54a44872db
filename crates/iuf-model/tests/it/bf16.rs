//! bf16 inference (`iuf_bf16::scoped`): the transformer and the patch memory agree with f32 to
//! within bf16's rounding, really run in bf16, and repack weights changed between scopes.

use crate::build;
use candle_core::{Device, Tensor};
use iuf_bf16::Bf16Cpu;
use iuf_model::{MemoryConfig, Mode, ModelConfig, PatchMemory, Precision};

const C: usize = 16;

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// max |a - b| / max |b|.
fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let (a, b) = (values(a), values(b));
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
        / scale
}

fn cpu() -> Option<Bf16Cpu> {
    let cpu = Bf16Cpu::detect();
    if cpu.is_none() {
        eprintln!("no avx512bf16 on this CPU: bf16 inference is not tested here");
    }
    cpu
}

#[test]
fn precision_names_parse_and_bf16_resolves_only_where_supported() {
    for p in [Precision::F32, Precision::Bf16, Precision::Auto] {
        assert_eq!(p.name().parse::<Precision>().unwrap(), p);
    }
    let err = "fp16".parse::<Precision>().unwrap_err();
    assert!(err.contains("fp16") && err.contains("bf16"), "{err}");
    assert_eq!(Precision::F32.resolve().unwrap(), None);
    // Auto takes bf16 only where the AMX kernel runs.
    assert_eq!(
        Precision::Auto.resolve().unwrap(),
        Bf16Cpu::detect().filter(|c| c.amx())
    );
    match Bf16Cpu::detect() {
        Some(c) => assert_eq!(Precision::Bf16.resolve().unwrap(), Some(c)),
        None => {
            let e = Precision::Bf16.resolve().unwrap_err().to_string();
            assert!(e.contains("avx512bf16"), "{e}");
        }
    }
}

#[test]
fn transformer_in_bf16_is_close_to_f32_and_repacks_trained_weights() {
    let Some(cpu) = cpu() else { return };
    let (varmap, model) = build(&ModelConfig::tiny(C, 3));
    let x = Tensor::rand(0f32, 2f32, (2, C, 14, 14), &Device::Cpu).unwrap();
    let f32_out = model.forward(&x, &mut Mode::Eval).unwrap();
    let bf16_out = iuf_bf16::scoped(Some(cpu), || model.forward(&x, &mut Mode::Eval)).unwrap();
    let d = rel_diff(&bf16_out.feature_rec, &f32_out.feature_rec);
    eprintln!("bf16 vs f32 reconstruction: {d:.2e} of its scale");
    // Measured 4.9e-3 and 5.3e-3 in two runs (tiny preset, random inputs; inputs and weights
    // rounded to 8 significant bits in every linear layer).
    assert!(
        d < 2e-2,
        "bf16 reconstruction differs from f32 by {d} of its scale"
    );
    assert!(
        d > 0.0,
        "bf16 scope gave f32's exact values: the bf16 path did not run"
    );
    // Outside a scope: f32 again, bit for bit.
    let again = model.forward(&x, &mut Mode::Eval).unwrap();
    assert_eq!(values(&again.feature_rec), values(&f32_out.feature_rec));

    // Change every weight between scopes: the next scope must use the new ones.
    for var in varmap.all_vars() {
        var.set(&(var.as_tensor() * 0.5).unwrap()).unwrap();
    }
    let f32_new = model.forward(&x, &mut Mode::Eval).unwrap();
    let bf16_new = iuf_bf16::scoped(Some(cpu), || model.forward(&x, &mut Mode::Eval)).unwrap();
    let d = rel_diff(&bf16_new.feature_rec, &f32_new.feature_rec);
    assert!(
        d < 2e-2,
        "after a weight change bf16 differs from f32 by {d}: stale packing?"
    );
}

#[test]
fn memory_scores_in_bf16_are_distances_to_real_patches_close_to_f32() {
    let Some(cpu) = cpu() else { return };
    let dev = Device::Cpu;
    let c = 48;
    let good = Tensor::randn(0f32, 1f32, (6, c, 8, 8), &dev).unwrap();
    let cfg = MemoryConfig {
        patches: 200,
        candidates: 0,
        projection: 16,
        ..MemoryConfig::default()
    };
    let memory = PatchMemory::build(&good, &cfg).unwrap();
    // Queries: memory patches plus small noise (near neighbours, the hard case for q.m in bf16)
    // and far ones.
    let near = (good.narrow(0, 0, 2).unwrap()
        + Tensor::randn(0f32, 0.05f32, (2, c, 8, 8), &dev).unwrap())
    .unwrap();
    let far = Tensor::randn(0f32, 2f32, (2, c, 8, 8), &dev).unwrap();
    for q in [near, far] {
        let f = memory.score(&q).unwrap();
        let b = iuf_bf16::scoped(Some(cpu), || memory.score(&q)).unwrap();
        let (fv, bv) = (values(&f), values(&b));
        for (x, y) in bv.iter().zip(&fv) {
            // Never below the true nearest distance (it is a real patch's distance), and at most
            // a bf16 rounding of the products above it.
            assert!(
                *x >= y * (1.0 - 1e-3) - 1e-3,
                "bf16 {x} below the f32 nearest {y}"
            );
            assert!(
                *x <= y * 1.05 + 0.05,
                "bf16 {x} far above the f32 nearest {y}"
            );
        }
    }
}

#[test]
fn attention_in_bf16_is_close_to_f32_with_and_without_a_mask() {
    let Some(cpu) = cpu().filter(|c| c.amx()) else {
        eprintln!("no AMX: the bf16 attention kernel is not tested here");
        return;
    };
    let dev = Device::Cpu;
    // The paper's head width (32) and token count (196), 2 images, 4 heads; a batch-1 query
    // shared by both images, as the decoder's learned table is.
    let (b, n, d, heads) = (2, 196, 128, 4);
    let q = Tensor::randn(0f32, 1f32, (b, n, d), &dev).unwrap();
    let q1 = Tensor::randn(0f32, 1f32, (1, n, d), &dev).unwrap();
    let k = Tensor::randn(0f32, 1f32, (b, n, d), &dev).unwrap();
    let v = Tensor::randn(0f32, 1f32, (b, n, d), &dev).unwrap();
    let mask = iuf_model::transformer::neighbor_mask([14, 14], [7, 7], &dev).unwrap();
    for (q, mask) in [(&q, None), (&q, Some(&mask)), (&q1, Some(&mask))] {
        let f32_out = iuf_model::ops::attention(q, &k, &v, heads, mask, None).unwrap();
        let bf16_out = iuf_bf16::scoped(Some(cpu), || {
            iuf_model::ops::attention(q, &k, &v, heads, mask, None)
        })
        .unwrap();
        let diff = rel_diff(&bf16_out, &f32_out);
        eprintln!(
            "bf16 vs f32 attention (mask {}): {diff:.2e}",
            mask.is_some()
        );
        // q, k, v and the probabilities rounded to 8 significant bits (2^-9 relative each):
        // measured 5.5e-3 to 6.8e-3 of the output's largest value on these inputs.
        assert!(diff < 3e-2, "bf16 attention differs from f32 by {diff}");
        assert!(diff > 0.0, "the bf16 attention path did not run");
    }
}

/// The fused feed-forward block of bf16 inference gives the values of its two linear layers run
/// one after the other, over a [batch, tokens, D] input, and refuses weights that do not chain.
#[test]
fn fused_feed_forward_in_bf16_equals_its_two_linear_layers() {
    use iuf_model::ops::{ffn_bf16, linear_bf16, Activation, PackedWeight};
    let Some(cpu) = cpu() else { return };
    let dev = Device::Cpu;
    let (d, hidden) = (48, 200);
    let x = Tensor::randn(0f32, 1f32, (3, 70, d), &dev).unwrap();
    let w1 = Tensor::randn(0f32, 0.2f32, (hidden, d), &dev).unwrap();
    let b1 = Tensor::randn(0f32, 0.2f32, hidden, &dev).unwrap();
    let w2 = Tensor::randn(0f32, 0.2f32, (d, hidden), &dev).unwrap();
    let b2 = Tensor::randn(0f32, 0.2f32, d, &dev).unwrap();
    let p1 = PackedWeight::default().get(1, &w1).unwrap();
    let p2 = PackedWeight::default().get(1, &w2).unwrap();
    let h = linear_bf16(cpu, &x, &p1, &b1, Activation::Relu).unwrap();
    let want = linear_bf16(cpu, &h, &p2, &b2, Activation::Identity).unwrap();
    let got = ffn_bf16(cpu, &x, (&p1, &b1), (&p2, &b2)).unwrap();
    assert_eq!(got.dims(), &[3, 70, d]);
    let bits = |t: &Tensor| -> Vec<u32> { values(t).iter().map(|v| v.to_bits()).collect() };
    assert_eq!(bits(&got), bits(&want));
    // The second layer's input width must be the first one's output width.
    let err = ffn_bf16(cpu, &x, (&p1, &b1), (&p1, &b1)).unwrap_err();
    assert!(err.to_string().contains("do not fit"), "{err}");
}
