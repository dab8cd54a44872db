//! The bf16 product against f64 references.
//!
//! Error model. Each input is rounded to bf16 (8 significant bits, round to nearest even: relative
//! error at most u = 2^-8, half an ulp), so a product a_r b_r is within (2u + u^2) |a b| of a b
//! (we allow 2^-7 and let the summation term absorb u^2); the kernel then sums in f32,
//! adding at most about k 2^-24 sum |a_r b_r|. Two checks follow from it:
//! - against the f64 product of the bf16-ROUNDED inputs: only the f32 summation error is left,
//!   bound k 2^-23 sum|a_r b_r|; a packing error (a wrong pair, lane, panel or block) breaks it;
//! - against the f64 product of the f32 inputs: bound (2^-7 + k 2^-23) sum|a b|, the accuracy a
//!   caller can rely on.

mod common;

use common::values;
use iuf_bf16::{round_bf16, Bf16Cpu, Lhs, Out, PackedB, AMX_KC, AMX_NB, KC, KT, MC, MR, NR};

/// Both kernels this CPU runs: AMX (when present) and AVX-512.
fn kernels() -> Vec<Bf16Cpu> {
    match Bf16Cpu::detect() {
        None => {
            eprintln!("no avx512bf16 on this CPU: the kernels are not tested here");
            Vec::new()
        }
        Some(cpu) if cpu.amx() => vec![cpu, cpu.without_amx()],
        Some(cpu) => {
            eprintln!("no AMX on this CPU: only the AVX-512 kernel is tested");
            vec![cpu]
        }
    }
}

/// `A [m, k]` stored row after row: `A[i][kk] = a[i * k + kk]`.
fn row_major(a: &[f32], k: usize) -> Lhs<'_> {
    Lhs {
        data: a,
        rs: k,
        cs: 1,
    }
}

/// `cpu.matmul` into a new output of `m` rows `b.n()` apart (NaN before the product, which
/// overwrites all of it).
fn matmul(cpu: Bf16Cpu, m: usize, a: Lhs<'_>, b: &PackedB) -> Vec<f32> {
    let mut c = vec![f32::NAN; m * b.n()];
    cpu.matmul(
        m,
        a,
        b,
        Out {
            data: &mut c,
            rs: b.n(),
        },
    );
    c
}

/// Rayon pools of one and of three threads, to run a product on each.
fn pools_of_1_and_3_threads() -> Vec<rayon::ThreadPool> {
    [1, 3]
        .iter()
        .map(|&t| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .unwrap()
        })
        .collect()
}

struct Case {
    m: usize,
    n: usize,
    k: usize,
}

/// Checks `c` (row stride `rs`) against both references; returns the largest error relative to
/// sum|a b| seen against the f32 inputs.
fn check(case: &Case, a: &dyn Fn(usize, usize) -> f32, b: &[f32], c: &[f32], rs: usize) -> f64 {
    let Case { m, n, k } = *case;
    let mut worst = 0f64;
    for i in 0..m {
        for j in 0..n {
            let (mut exact, mut rounded, mut mag, mut mag_r) = (0f64, 0f64, 0f64, 0f64);
            for kk in 0..k {
                let (x, y) = (a(i, kk), b[kk * n + j]);
                exact += x as f64 * y as f64;
                mag += (x as f64 * y as f64).abs();
                let (xr, yr) = (round_bf16(x) as f64, round_bf16(y) as f64);
                rounded += xr * yr;
                mag_r += (xr * yr).abs();
            }
            let got = c[i * rs + j] as f64;
            let sum_err = k as f64 * 2f64.powi(-23) * mag_r + 1e-30;
            assert!(
                (got - rounded).abs() <= sum_err,
                "[{m}, {k}] x [{k}, {n}] at ({i}, {j}): {got} vs {rounded} from the bf16 inputs \
                 (bound {sum_err}): packing or summation is wrong"
            );
            let bound = (2f64.powi(-7) + k as f64 * 2f64.powi(-23)) * mag + 1e-30;
            assert!(
                (got - exact).abs() <= bound,
                "({i}, {j}): {got} vs {exact} (bound {bound})"
            );
            if mag > 0.0 {
                worst = worst.max((got - exact).abs() / mag);
            }
        }
    }
    worst
}

fn shapes() -> Vec<Case> {
    let mut v = vec![
        Case { m: 1, n: 1, k: 1 },
        Case { m: 3, n: 5, k: 2 },
        Case { m: MR, n: NR, k: 2 },
        Case {
            m: MR + 1,
            n: NR + 1,
            k: 3,
        },
        Case {
            m: 13,
            n: 31,
            k: 2 * KC,
        },
        Case {
            m: 29,
            n: 65,
            k: 2 * KC + 1,
        },
        Case {
            m: 7,
            n: 17,
            k: 4 * KC + 3,
        },
        Case {
            m: MC + 15,
            n: 48,
            k: 37,
        },
    ];
    v.push(Case {
        m: 2 * MC + 3,
        n: 97,
        k: 300,
    });
    // The AMX kernel's cache blocks: whole 32-row blocks and column and k blocks that divide
    // evenly, then edges of each (a partial column block, k past two blocks and odd, rows past
    // whole 32-row blocks).
    v.push(Case {
        m: 64,
        n: AMX_NB + NR,
        k: 4 * AMX_KC,
    });
    v.push(Case {
        m: 2 * 2 * KT + 5,
        n: AMX_NB + 2 * NR + 7,
        k: 2 * 2 * AMX_KC + 2 * KT + 1,
    });
    v
}

#[test]
fn rounding_is_to_nearest_even() {
    // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1).
    assert_eq!(round_bf16(1.0 + 2f32.powi(-8)), 1.0);
    // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties to even (1 + 2^-6).
    assert_eq!(round_bf16(1.0 + 3.0 * 2f32.powi(-8)), 1.0 + 2f32.powi(-6));
    assert_eq!(
        round_bf16(1.0 + 2f32.powi(-8) + 2f32.powi(-12)),
        1.0 + 2f32.powi(-7)
    );
    assert_eq!(round_bf16(-3.0), -3.0);
    assert!(round_bf16(f32::NAN).is_nan());
    assert_eq!(round_bf16(f32::INFINITY), f32::INFINITY);
}

#[test]
fn row_major_lhs_against_f64() {
    for cpu in kernels() {
        let mut worst = 0f64;
        for (t, case) in shapes().iter().enumerate() {
            let (m, n, k) = (case.m, case.n, case.k);
            let a = values(m * k, 2 * t as u64 + 1);
            let b = values(k * n, 2 * t as u64 + 2);
            let packed = PackedB::pack(k, n, &b, (n, 1));
            // Output rows padded by 3: the padding must stay untouched.
            let rs = n + 3;
            let mut c = vec![f32::NAN; m * rs];
            cpu.matmul(m, row_major(&a, k), &packed, Out { data: &mut c, rs });
            worst = worst.max(check(case, &|i, kk| a[i * k + kk], &b, &c, rs));
            for i in 0..m {
                assert!(c[i * rs + n..i * rs + rs].iter().all(|x| x.is_nan()));
            }
        }
        // Measured: 6.2e-3 (the k = 1 case, a single product); within 2^-7 = 7.8e-3, the product
        // term of the bound without the summation slack.
        eprintln!("{cpu:?}: worst |error| / sum|a b| against the f32 inputs: {worst:.2e}");
        assert!(worst <= 2f64.powi(-7), "worst relative error {worst}");
    }
}

#[test]
fn strided_lhs_transposed_weights_and_threads_agree() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    for cpu in kernels() {
        for (t, case) in shapes().iter().enumerate() {
            let (m, n, k) = (case.m, case.n, case.k);
            // A stored transposed: A[i][kk] = at[kk * m + i].
            let at = values(m * k, 7 * t as u64 + 3);
            let b = values(k * n, 7 * t as u64 + 4);
            // B stored transposed too, like a linear layer's weight [out, in].
            let bt: Vec<f32> = (0..n * k).map(|x| b[(x % k) * n + x / k]).collect();
            let packed = PackedB::pack(k, n, &bt, (1, k));
            let strided = Lhs {
                data: &at,
                rs: 1,
                cs: m,
            };
            let c1 = matmul(cpu, m, strided, &packed);
            check(case, &|i, kk| at[kk * m + i], &b, &c1, n);

            let mut c2 = vec![0f32; m * n];
            pool.install(|| {
                cpu.matmul_par(
                    m,
                    strided,
                    &packed,
                    Out {
                        data: &mut c2,
                        rs: n,
                    },
                )
            });
            assert_eq!(c1, c2, "{cpu:?}, 3 threads, {m}x{n}x{k}");
        }
    }
}

#[test]
fn the_two_kernels_agree() {
    let Some(cpu) = Bf16Cpu::detect().filter(|c| c.amx()) else {
        eprintln!("no AMX on this CPU: nothing to compare");
        return;
    };
    // Same bf16 inputs, both sums in f32 (in different orders): equal to within the summation
    // error of the bound above.
    let (m, n, k) = (45, 70, 3 * KC + 9);
    let a = values(m * k, 11);
    let b = values(k * n, 12);
    let packed = PackedB::pack(k, n, &b, (n, 1));
    let c1 = matmul(cpu, m, row_major(&a, k), &packed);
    let c2 = matmul(cpu.without_amx(), m, row_major(&a, k), &packed);
    for (x, y) in c1.iter().zip(&c2) {
        assert!((x - y).abs() <= 1e-4 * (1.0 + x.abs()), "{x} vs {y}");
    }
}

#[test]
fn exactly_representable_inputs_give_exact_products() {
    for cpu in kernels() {
        // Small integers are exact in bf16 and their sums exact in f32: any packing slip shows.
        let (m, n, k) = (MR + 3, NR + 7, 2 * KC + 5);
        let a: Vec<f32> = (0..m * k).map(|x| ((x * 7) % 11) as f32 - 5.0).collect();
        let b: Vec<f32> = (0..k * n).map(|x| ((x * 5) % 13) as f32 - 6.0).collect();
        let packed = PackedB::pack(k, n, &b, (n, 1));
        let c = matmul(cpu, m, row_major(&a, k), &packed);
        for i in 0..m {
            for j in 0..n {
                let want: f32 = (0..k).map(|kk| a[i * k + kk] * b[kk * n + j]).sum();
                assert_eq!(c[i * n + j], want, "{cpu:?} ({i}, {j})");
            }
        }
    }
}

#[test]
#[should_panic(expected = "needs")]
fn a_short_output_is_refused() {
    let Some(cpu) = Bf16Cpu::detect() else {
        panic!("needs avx512bf16 (not on this CPU; the panic keeps the test meaningful)");
    };
    let b = PackedB::pack(4, 4, &[0.0; 16], (4, 1));
    let mut c = vec![0f32; 15];
    cpu.matmul(
        4,
        row_major(&[0.0; 16], 4),
        &b,
        Out {
            data: &mut c,
            rs: 4,
        },
    );
}

#[test]
fn scopes_nest_and_restore() {
    let Some(cpu) = Bf16Cpu::detect() else {
        assert_eq!(iuf_bf16::scoped(None, iuf_bf16::active), None);
        return;
    };
    assert_eq!(iuf_bf16::active(), None);
    let (g1, inner) = iuf_bf16::scoped(Some(cpu), || {
        let g = iuf_bf16::generation().unwrap();
        let inner = iuf_bf16::scoped(None, iuf_bf16::active);
        assert_eq!(iuf_bf16::active(), Some(cpu));
        // A nested bf16 scope keeps the outer generation.
        assert_eq!(iuf_bf16::scoped(Some(cpu), iuf_bf16::generation), Some(g));
        (g, inner)
    });
    assert_eq!(inner, None);
    assert_eq!(iuf_bf16::active(), None);
    let g2 = iuf_bf16::scoped(Some(cpu), || iuf_bf16::generation().unwrap());
    assert_ne!(g1, g2, "a new outermost scope must get a new generation");
}

#[test]
fn the_epilogue_adds_the_bias_and_applies_relu_exactly() {
    use iuf_bf16::Epilogue;
    for cpu in kernels() {
        for (t, &(m, n, k)) in [
            (1, 1, 0),
            (45, 70, 37),
            (2 * MC + 3, AMX_NB + 33, 2 * AMX_KC + 5),
        ]
        .iter()
        .enumerate()
        {
            let a = values(m * k, 40 + t as u64);
            let b = values(k * n, 50 + t as u64);
            let bias = values(n, 60 + t as u64);
            let packed = PackedB::pack(k, n, &b, (n, 1));
            let lhs = row_major(&a, k);
            let mut plain = vec![f32::NAN; m * n];
            cpu.matmul_par(
                m,
                lhs,
                &packed,
                Out {
                    data: &mut plain,
                    rs: n,
                },
            );
            for relu in [false, true] {
                let mut got = vec![f32::NAN; m * n];
                let ep = Epilogue { bias: &bias, relu };
                cpu.matmul_par_then(
                    m,
                    lhs,
                    &packed,
                    Out {
                        data: &mut got,
                        rs: n,
                    },
                    Some(ep),
                );
                for (idx, (&g, &p)) in got.iter().zip(&plain).enumerate() {
                    let x = p + bias[idx % n];
                    let want = if relu && x.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
                        0.0
                    } else {
                        x
                    };
                    assert_eq!(
                        g.to_bits(),
                        want.to_bits(),
                        "{cpu:?} [{m}, {k}] x [{k}, {n}] relu {relu} at {idx}: {g} vs {want}"
                    );
                }
            }
        }
    }
}

#[test]
fn the_vec_output_matches_the_slice_output_bit_for_bit() {
    use iuf_bf16::Epilogue;
    let pools = pools_of_1_and_3_threads();
    let mut cases = shapes();
    cases.push(Case { m: 5, n: 9, k: 0 });
    cases.push(Case {
        m: 4 * 2 * KT + 3,
        n: 3 * NR + 5,
        k: AMX_KC * 2 + 7,
    });
    for cpu in kernels() {
        for (t, case) in cases.iter().enumerate() {
            let (m, n, k) = (case.m, case.n, case.k);
            let b = values(k * n, 90 + t as u64);
            let bias = values(n, 95 + t as u64);
            let packed = PackedB::pack(k, n, &b, (n, 1));
            // A row-major and A transposed (strided rows).
            let a = values(m * k, 80 + t as u64);
            let at: Vec<f32> = (0..m * k).map(|x| a[(x % m) * k + x / m]).collect();
            let lhss = [
                row_major(&a, k),
                Lhs {
                    data: &at,
                    rs: 1,
                    cs: m,
                },
            ];
            for lhs in lhss {
                let single = matmul(cpu, m, lhs, &packed);
                for ep in [
                    None,
                    Some(Epilogue {
                        bias: &bias,
                        relu: false,
                    }),
                    Some(Epilogue {
                        bias: &bias,
                        relu: true,
                    }),
                ] {
                    for pool in &pools {
                        let mut want = vec![f32::NAN; m * n];
                        pool.install(|| {
                            cpu.matmul_par_then(
                                m,
                                lhs,
                                &packed,
                                Out {
                                    data: &mut want,
                                    rs: n,
                                },
                                ep,
                            )
                        });
                        let got = pool.install(|| cpu.matmul_par_vec(m, lhs, &packed, ep));
                        let what = format!(
                            "{cpu:?} [{m}, {k}] x [{k}, {n}], A rs {}, {} threads, epilogue {:?}",
                            lhs.rs,
                            pool.current_num_threads(),
                            ep.map(|e| e.relu)
                        );
                        assert_eq!(got.len(), m * n, "{what}");
                        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(&got), bits(&want), "{what}");
                        if ep.is_none() {
                            assert_eq!(bits(&got), bits(&single), "{what}, single-threaded");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn the_fused_feed_forward_equals_its_two_products_bit_for_bit() {
    use iuf_bf16::{Epilogue, FFN_ROWS};
    let pools = pools_of_1_and_3_threads();
    // Rows below, at and past one block and several blocks; widths off the tiles; k over two
    // AMX k blocks in the second product.
    for cpu in kernels() {
        for (t, &(m, k, hidden, n)) in [
            (1usize, 5usize, 7usize, 3usize),
            (FFN_ROWS - 1, 40, 70, 33),
            (FFN_ROWS, 64, 96, 32),
            (3 * FFN_ROWS + 17, 70, 2 * AMX_KC + 9, 45),
        ]
        .iter()
        .enumerate()
        {
            let a = values(m * k, 200 + t as u64);
            let w1 = values(k * hidden, 210 + t as u64);
            let w2 = values(hidden * n, 220 + t as u64);
            let (b1, b2) = (values(hidden, 230 + t as u64), values(n, 240 + t as u64));
            let p1 = PackedB::pack(k, hidden, &w1, (hidden, 1));
            let p2 = PackedB::pack(hidden, n, &w2, (n, 1));
            let lhs = row_major(&a, k);
            let ep1 = Epilogue {
                bias: &b1,
                relu: true,
            };
            let h = cpu.matmul_par_vec(m, lhs, &p1, Some(ep1));
            for ep2 in [
                None,
                Some(Epilogue {
                    bias: &b2,
                    relu: false,
                }),
            ] {
                let hl = row_major(&h, hidden);
                let want: Vec<u32> = cpu
                    .matmul_par_vec(m, hl, &p2, ep2)
                    .iter()
                    .map(|x| x.to_bits())
                    .collect();
                for pool in &pools {
                    let got: Vec<u32> = pool
                        .install(|| cpu.ffn_par_vec(m, lhs, &p1, &b1, &p2, ep2))
                        .iter()
                        .map(|x| x.to_bits())
                        .collect();
                    assert_eq!(
                        got,
                        want,
                        "amx {}, m {m} k {k} hidden {hidden} n {n}, {} threads",
                        cpu.amx(),
                        pool.current_num_threads()
                    );
                }
            }
        }
    }
}
