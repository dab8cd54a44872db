//! Tests of the fused CPU ops against the plain candle composition: forward, backward, and finite
//! differences of the fused gradients.

use super::*;
use candle_core::{Device, Var};

fn randn(shape: &[usize], seed: u64) -> Tensor {
    // Deterministic pseudo-random values (a small LCG), so failures reproduce exactly.
    let n: usize = shape.iter().product();
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn fused_applies(t: &Tensor) -> bool {
    // The tests below are about the fused path: make sure dispatch really takes it.
    fused::is_cpu_f32(t)
}

#[test]
fn layer_norm_forward_matches_composition() {
    for (shape, seed) in [
        (vec![2, 5, 256], 1),
        (vec![7, 37], 2),
        (vec![3, 1], 3),
        (vec![4, 2, 3, 19], 4),
    ] {
        let d = *shape.last().unwrap();
        let x = randn(&shape, seed).affine(3.0, 0.5).unwrap();
        let w = randn(&[d], seed + 10);
        let b = randn(&[d], seed + 20);
        assert!(fused_applies(&x));
        let got = layer_norm(&x, &w, &b, 1e-5).unwrap();
        let want = layer_norm_composed(&x, &w, &b, 1e-5).unwrap();
        let err = max_abs_diff(&got, &want);
        assert!(err < 1e-5, "shape {shape:?}: max error {err}");
    }
}

#[test]
fn layer_norm_forward_accepts_non_contiguous_input() {
    let x = randn(&[6, 40], 5).t().unwrap();
    let w = randn(&[6], 6);
    let b = randn(&[6], 7);
    let got = layer_norm(&x, &w, &b, 1e-5).unwrap();
    let want = layer_norm_composed(&x, &w, &b, 1e-5).unwrap();
    assert!(max_abs_diff(&got, &want) < 1e-5);
}

/// `sum(y * r)`: the scalar every gradient check here differentiates.
fn weighted_sum(y: &Tensor, r: &Tensor) -> Tensor {
    (y * r).unwrap().sum_all().unwrap()
}

/// Gradients of `sum(f(inputs) * r)` w.r.t. each input.
fn grads<const N: usize>(
    f: impl Fn([&Tensor; N]) -> Result<Tensor>,
    inputs: &[Tensor; N],
    r: &Tensor,
) -> [Tensor; N] {
    let vars = inputs.clone().map(|t| Var::from_tensor(&t).unwrap());
    let y = f(vars.each_ref().map(|v| v.as_tensor())).unwrap();
    let grads = weighted_sum(&y, r).backward().unwrap();
    vars.map(|v| grads.get(v.as_tensor()).expect("gradient").clone())
}

#[test]
fn layer_norm_backward_matches_composition() {
    for (shape, seed) in [(vec![3, 9, 256], 11), (vec![5, 37], 12)] {
        let d = *shape.last().unwrap();
        let xwb = [
            randn(&shape, seed).affine(2.0, -0.3).unwrap(),
            randn(&[d], seed + 1),
            randn(&[d], seed + 2),
        ];
        let r = randn(&shape, seed + 3);
        let got = grads(|[x, w, b]| layer_norm(x, w, b, 1e-5), &xwb, &r);
        let want = grads(|[x, w, b]| layer_norm_composed(x, w, b, 1e-5), &xwb, &r);
        for (name, g, e) in [
            ("x", &got[0], &want[0]),
            ("weight", &got[1], &want[1]),
            ("bias", &got[2], &want[2]),
        ] {
            let scale = e
                .abs()
                .unwrap()
                .max_keepdim(0)
                .unwrap()
                .flatten_all()
                .unwrap();
            let scale = scale.max(0).unwrap().to_scalar::<f32>().unwrap().max(1.0);
            let err = max_abs_diff(g, e) / scale;
            assert!(
                err < 1e-5,
                "shape {shape:?}, grad of {name}: relative error {err}"
            );
        }
    }
}

/// Central finite difference of a scalar function of one tensor, at every element.
fn finite_difference(f: &dyn Fn(&Tensor) -> f32, x: &Tensor, h: f32) -> Vec<f32> {
    let base = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    (0..base.len())
        .map(|i| {
            let mut plus = base.clone();
            let mut minus = base.clone();
            plus[i] += h;
            minus[i] -= h;
            let p = Tensor::from_vec(plus, x.shape(), x.device()).unwrap();
            let m = Tensor::from_vec(minus, x.shape(), x.device()).unwrap();
            (f(&p) - f(&m)) / (2.0 * h)
        })
        .collect()
}

fn assert_close(what: &str, analytic: &Tensor, numeric: &[f32], tol: f32) {
    let a = analytic.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for (i, (a, n)) in a.iter().zip(numeric).enumerate() {
        assert!(
            (a - n).abs() <= tol * (1.0 + n.abs()),
            "{what}[{i}]: analytic {a}, finite difference {n}"
        );
    }
}

/// Checks the autograd gradients of `sum(f(inputs) * r)` against central finite differences
/// (step `h`) with [`assert_close`]'s tolerance `tol`, input by input; `names` name the gradients
/// in failures.
fn assert_grads_match_finite_differences<const N: usize>(
    f: impl Fn([&Tensor; N]) -> Result<Tensor>,
    inputs: &[Tensor; N],
    r: &Tensor,
    (h, tol): (f32, f32),
    names: [&str; N],
) {
    let analytic = grads(&f, inputs, r);
    let loss = |args: [&Tensor; N]| -> f32 {
        let y = f(args).unwrap();
        weighted_sum(&y, r).to_scalar::<f32>().unwrap()
    };
    for (i, name) in names.into_iter().enumerate() {
        let numeric = finite_difference(
            &|t| {
                let mut args = inputs.each_ref();
                args[i] = t;
                loss(args)
            },
            &inputs[i],
            h,
        );
        assert_close(name, &analytic[i], &numeric, tol);
    }
}

/// Checks three gradients against the composition's (max absolute error below `tol`).
fn assert_grads_equal(
    what: &str,
    names: [&str; 3],
    got: &[Tensor; 3],
    want: &[Tensor; 3],
    tol: f32,
) {
    for ((name, g), e) in names.into_iter().zip(got).zip(want) {
        let err = max_abs_diff(g, e);
        assert!(err < tol, "{what}, grad of {name}: max error {err}");
    }
}

#[test]
fn layer_norm_gradients_match_finite_differences() {
    let (rows, d) = (3, 21);
    let xwb = [randn(&[rows, d], 31), randn(&[d], 32), randn(&[d], 33)];
    let r = randn(&[rows, d], 34);
    assert_grads_match_finite_differences(
        |[x, w, b]| layer_norm(x, w, b, 1e-5),
        &xwb,
        &r,
        (1e-2, 2e-2),
        ["dx", "dweight", "dbias"],
    );
}

#[test]
fn softmax_forward_matches_composition() {
    for (shape, seed) in [
        (vec![2, 8, 196, 196], 41),
        (vec![5, 37], 42),
        (vec![4, 1], 43),
    ] {
        let x = randn(&shape, seed).affine(5.0, 0.0).unwrap();
        assert!(fused_applies(&x));
        let got = softmax_last_dim(&x).unwrap();
        let want = softmax_last_dim_composed(&x).unwrap();
        let err = max_abs_diff(&got, &want);
        assert!(err < 1e-6, "shape {shape:?}: max error {err}");
    }
}

#[test]
fn softmax_forward_handles_additive_minus_infinity_mask() {
    // The neighbour mask of section 3.5 is an additive -inf mask: masked keys get exactly 0.
    let x = randn(&[3, 10], 44);
    let mask: Vec<f32> = (0..30)
        .map(|i| if i % 3 == 0 { f32::NEG_INFINITY } else { 0.0 })
        .collect();
    let mask = Tensor::from_vec(mask, (3, 10), &Device::Cpu).unwrap();
    let xm = (x + &mask).unwrap();
    let got = softmax_last_dim(&xm).unwrap();
    let want = softmax_last_dim_composed(&xm).unwrap();
    assert!(max_abs_diff(&got, &want) < 1e-6);
    let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for i in (0..30).step_by(3) {
        assert_eq!(got[i], 0.0);
    }
}

#[test]
fn softmax_backward_matches_composition_and_finite_differences() {
    let shape = [4, 3, 50];
    let x = randn(&shape, 51).affine(3.0, 0.0).unwrap();
    let r = randn(&shape, 52);
    let [got] = grads(|[x]| softmax_last_dim(x), std::array::from_ref(&x), &r);
    let [want] = grads(
        |[x]| softmax_last_dim_composed(x),
        std::array::from_ref(&x),
        &r,
    );
    let err = max_abs_diff(&got, &want);
    assert!(err < 1e-6, "max error {err}");

    let small = x.narrow(2, 0, 13).unwrap().contiguous().unwrap();
    let rs = r.narrow(2, 0, 13).unwrap().contiguous().unwrap();
    assert_grads_match_finite_differences(
        |[x]| softmax_last_dim(x),
        &[small],
        &rs,
        (1e-2, 1e-2),
        ["dx"],
    );
}

#[test]
fn other_dtypes_take_the_composition() {
    let x = randn(&[3, 16], 61).to_dtype(DType::F64).unwrap();
    let w = randn(&[16], 62).to_dtype(DType::F64).unwrap();
    let b = randn(&[16], 63).to_dtype(DType::F64).unwrap();
    assert!(!fused_applies(&x));
    let y = layer_norm(&x, &w, &b, 1e-5).unwrap();
    assert_eq!(y.dtype(), DType::F64);
    let s = softmax_last_dim(&x).unwrap();
    assert_eq!(s.dtype(), DType::F64);
    let sums = s.sum(1).unwrap().to_vec1::<f64>().unwrap();
    assert!(sums.iter().all(|v| (v - 1.0).abs() < 1e-12));
}

fn attention_inputs(b: usize, nq: usize, nk: usize, d: usize, seed: u64) -> [Tensor; 3] {
    [
        randn(&[b, nq, d], seed),
        randn(&[b, nk, d], seed + 1),
        randn(&[b, nk, d], seed + 2),
    ]
}

fn test_mask(nq: usize, nk: usize) -> Tensor {
    // Forbid a band of keys per query (like the neighbour mask of section 3.5), never a full row.
    let m: Vec<f32> = (0..nq * nk)
        .map(|i| {
            let (r, c) = (i / nk, i % nk);
            if r.abs_diff(c) <= 1 {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    Tensor::from_vec(m, (nq, nk), &Device::Cpu).unwrap()
}

#[test]
fn attention_forward_matches_composition() {
    let drop = AttentionDropout { p: 0.25, seed: 9 };
    for (mask, dropout) in [
        (false, None),
        (true, None),
        (false, Some(drop)),
        (true, Some(drop)),
    ] {
        let [q, k, v] = attention_inputs(2, 7, 9, 24, 71);
        let m = mask.then(|| test_mask(7, 9));
        let got = attention(&q, &k, &v, 4, m.as_ref(), dropout).unwrap();
        let want = attention_composed(&q, &k, &v, 4, m.as_ref(), dropout).unwrap();
        assert_eq!(got.dims(), &[2, 7, 24]);
        let err = max_abs_diff(&got, &want);
        assert!(
            err < 1e-5,
            "mask {mask}, dropout {dropout:?}: max error {err}"
        );
    }
}

#[test]
fn attention_shares_a_batch_one_query() {
    let [q, k, v] = attention_inputs(3, 5, 6, 8, 81);
    let q1 = q.narrow(0, 0, 1).unwrap();
    let got = attention(&q1, &k, &v, 2, None, None).unwrap();
    let want =
        attention_composed(&q1.broadcast_as((3, 5, 8)).unwrap(), &k, &v, 2, None, None).unwrap();
    assert!(max_abs_diff(&got, &want) < 1e-5);
}

#[test]
fn attention_backward_matches_composition() {
    let drop = AttentionDropout { p: 0.2, seed: 5 };
    for (mask, dropout) in [(false, None), (true, Some(drop))] {
        let qkv = attention_inputs(2, 6, 8, 12, 91);
        let r = randn(&[2, 6, 12], 95);
        let m = mask.then(|| test_mask(6, 8));
        let m = m.as_ref();
        let got = grads(|[q, k, v]| attention(q, k, v, 3, m, dropout), &qkv, &r);
        let want = grads(
            |[q, k, v]| attention_composed(q, k, v, 3, m, dropout),
            &qkv,
            &r,
        );
        assert_grads_equal(&format!("mask {mask}"), ["q", "k", "v"], &got, &want, 1e-5);
    }
}

#[test]
fn attention_gradients_match_finite_differences() {
    let qkv = attention_inputs(1, 4, 5, 6, 101);
    let r = randn(&[1, 4, 6], 105);
    let m = test_mask(4, 5);
    assert_grads_match_finite_differences(
        |[q, k, v]| attention(q, k, v, 3, Some(&m), None),
        &qkv,
        &r,
        (1e-2, 2e-2),
        ["dq", "dk", "dv"],
    );
}

#[test]
fn attention_second_backward_recomputes_probabilities() {
    let qkv = attention_inputs(2, 5, 5, 6, 111);
    let r = randn(&[2, 5, 6], 115);
    let vars = qkv.clone().map(|t| Var::from_tensor(&t).unwrap());
    let y = attention(
        vars[0].as_tensor(),
        vars[1].as_tensor(),
        vars[2].as_tensor(),
        3,
        None,
        None,
    )
    .unwrap();
    let loss = weighted_sum(&y, &r);
    let first = loss.backward().unwrap();
    let second = loss.backward().unwrap();
    for v in &vars {
        let (a, b) = (
            first.get(v.as_tensor()).unwrap(),
            second.get(v.as_tensor()).unwrap(),
        );
        assert!(max_abs_diff(a, b) < 1e-6);
    }
}

#[test]
fn linear_matches_composition_forward_and_backward() {
    // Small, and large enough (150 rows in, 70 out) that the products split into row blocks
    // over threads.
    for (act, (rows, out)) in [
        (Activation::Identity, (9, 13)),
        (Activation::Relu, (9, 13)),
        (Activation::Relu, (75, 70)),
    ] {
        let xwb = [
            randn(&[2, rows, 20], 121),
            randn(&[out, 20], 122),
            randn(&[out], 123),
        ];
        let got = linear(&xwb[0], &xwb[1], &xwb[2], act).unwrap();
        let want = linear_composed(&xwb[0], &xwb[1], &xwb[2], act).unwrap();
        assert_eq!(got.dims(), &[2, rows, out]);
        assert!(max_abs_diff(&got, &want) < 1e-5, "{act:?} forward");
        let r = randn(&[2, rows, out], 124);
        let g = grads(|[x, w, b]| linear(x, w, b, act), &xwb, &r);
        let e = grads(|[x, w, b]| linear_composed(x, w, b, act), &xwb, &r);
        assert_grads_equal(&format!("{act:?}"), ["x", "weight", "bias"], &g, &e, 1e-4);
    }
}

#[test]
fn linear_gradients_match_finite_differences() {
    let act = Activation::Relu;
    let xwb = [randn(&[5, 6], 131), randn(&[4, 6], 132), randn(&[4], 133)];
    let r = randn(&[5, 4], 134);
    // ReLU kinks: a small step keeps every pre-activation on its side for these inputs.
    assert_grads_match_finite_differences(
        |[x, w, b]| linear(x, w, b, act),
        &xwb,
        &r,
        (1e-3, 2e-2),
        ["dx", "dweight", "dbias"],
    );
}

#[test]
fn dropout_ops_match_the_mask_composition() {
    let x = randn(&[3, 50_000], 141); // several parallel chunks
    let r = randn(&[3, 50_000], 142);
    let (p, seed) = (0.1, 77);
    let mut m = vec![0f32; x.elem_count()];
    kernels::dropout_mask(seed, 0, p, &mut m);
    let mask = Tensor::from_vec(m, x.shape(), &Device::Cpu).unwrap();
    let want = x.mul(&mask).unwrap();
    assert!(max_abs_diff(&dropout(&x, p, seed).unwrap(), &want) < 1e-6);
    let want_add = (&r + &want).unwrap();
    assert!(max_abs_diff(&add_dropout(&r, &x, p, seed).unwrap(), &want_add) < 1e-6);

    let (xv, rv) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&r).unwrap());
    let g = randn(&[3, 50_000], 143);
    let y = add_dropout(
        rv.as_tensor(),
        &dropout(xv.as_tensor(), p, seed + 1).unwrap(),
        p,
        seed,
    )
    .unwrap();
    let grads = (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
    let mut m1 = vec![0f32; x.elem_count()];
    kernels::dropout_mask(seed + 1, 0, p, &mut m1);
    let m1 = Tensor::from_vec(m1, x.shape(), &Device::Cpu).unwrap();
    let want_dx = g.mul(&mask).unwrap().mul(&m1).unwrap();
    assert!(max_abs_diff(grads.get(xv.as_tensor()).unwrap(), &want_dx) < 1e-6);
    assert!(max_abs_diff(grads.get(rv.as_tensor()).unwrap(), &g) < 1e-6);
    // Roughly a fraction p of the elements is dropped.
    let dropped = mask
        .eq(0f32)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .mean_all()
        .unwrap();
    let dropped = dropped.to_scalar::<f32>().unwrap();
    assert!((dropped - 0.1).abs() < 0.01, "dropped {dropped}");
}

/// `||a - b|| / ||b||` (Frobenius).
fn rel_error(a: &Tensor, b: &Tensor) -> f32 {
    let norm = |t: &Tensor| {
        t.sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .sqrt()
    };
    norm(&(a - b).unwrap()) / norm(b)
}

#[test]
fn mixed_precision_linear_is_close_to_f32() {
    use candle_core::CustomOp3;
    let Some(cpu) = iuf_bf16::Bf16Cpu::detect() else {
        eprintln!("skipped: this CPU has no AVX-512 BF16");
        return;
    };
    let mut kernels = vec![cpu.without_amx()];
    if cpu.amx() {
        kernels.push(cpu);
    }
    // Odd row counts (an odd k for dw), rows over several row blocks, and both ways of dw:
    // out <= in (dy transposed) and out > in (x transposed, dw^T transposed back).
    let shapes = [
        (Activation::Identity, (37, 20, 13)),
        (Activation::Relu, (37, 20, 13)),
        (Activation::Relu, (151, 64, 96)),
        (Activation::Identity, (151, 96, 40)),
        (Activation::Relu, (392, 256, 256)),
        (Activation::Identity, (392, 256, 1024)),
    ];
    // bf16 operands carry 8 significant bits (relative rounding error <= 2^-9 each), products
    // accumulated in f32: about 2-3e-3 relative (Frobenius) error on these inputs.
    let tol = 1e-2;
    for cpu in kernels {
        for (act, (rows, din, dout)) in shapes {
            let [x, w, b] = [
                randn(&[rows, din], 141),
                randn(&[dout, din], 142),
                randn(&[dout], 143),
            ];
            let r = randn(&[rows, dout], 144);
            let what = format!("amx {} {act:?} rows {rows} in {din} out {dout}", cpu.amx());
            // Forward.
            let want_y = linear(&x, &w, &b, act).unwrap();
            let got_y = mixed_precision_training(Some(cpu), || linear(&x, &w, &b, act).unwrap());
            // Backward, both ops given the same output (so the same ReLU mask: a pre-activation
            // near zero may change sign in bf16, which is the forward's error, not the
            // backward's).
            let f32_op = super::linear::Linear { act, mixed: None };
            let bf16_op = super::linear::Linear {
                act,
                mixed: Some(cpu),
            };
            let (wx, ww, wb) = f32_op.bwd(&x, &w, &b, &want_y, &r).unwrap();
            let (gx, gw, gb) = bf16_op.bwd(&x, &w, &b, &want_y, &r).unwrap();
            for (name, a, e) in [
                ("y", &got_y, &want_y),
                ("dx", &gx.unwrap(), &wx.unwrap()),
                ("dweight", &gw.unwrap(), &ww.unwrap()),
            ] {
                assert_eq!(a.dims(), e.dims(), "{what}: {name}");
                let err = rel_error(a, e);
                eprintln!("{what}: {name} relative error {err:.2e}");
                assert!(err < tol, "{what}: {name} relative error {err}");
                // Not bit-equal: the products really ran in bf16.
                assert!(
                    err > 1e-5,
                    "{what}: {name} identical to f32, bf16 did not run"
                );
            }
            // The bias gradient is a column sum of dy in f32 both ways.
            assert_eq!(
                max_abs_diff(&gb.unwrap(), &wb.unwrap()),
                0.0,
                "{what}: dbias"
            );
            // Through autograd, the op remembers the scope it was created in (here the backward
            // runs outside it). Without a ReLU the gradients are the direct backward's.
            if act == Activation::Identity {
                let vars = [&x, &w, &b].map(|t| Var::from_tensor(t).unwrap());
                let y = mixed_precision_training(Some(cpu), || {
                    linear(
                        vars[0].as_tensor(),
                        vars[1].as_tensor(),
                        vars[2].as_tensor(),
                        act,
                    )
                })
                .unwrap();
                let grads = weighted_sum(&y, &r).backward().unwrap();
                let (gx, gw, _) = bf16_op.bwd(&x, &w, &b, &got_y, &r).unwrap();
                for (v, e) in [(&vars[0], gx.unwrap()), (&vars[1], gw.unwrap())] {
                    let g = grads.get(v.as_tensor()).expect("gradient");
                    assert_eq!(max_abs_diff(g, &e), 0.0, "{what}: autograd");
                }
            }
        }
    }
}

#[test]
fn mixed_precision_off_is_bitwise_f32() {
    let xwb = [
        randn(&[75, 20], 151),
        randn(&[70, 20], 152),
        randn(&[70], 153),
    ];
    let r = randn(&[75, 70], 154);
    let act = Activation::Relu;
    let linear_grads = || grads(|[x, w, b]| linear(x, w, b, act), &xwb, &r);
    let want = linear_grads();
    let got = mixed_precision_training(None, linear_grads);
    for (a, b) in got.iter().zip(&want) {
        assert_eq!(max_abs_diff(a, b), 0.0);
    }
    assert!(mixed_precision_active().is_none());
}
