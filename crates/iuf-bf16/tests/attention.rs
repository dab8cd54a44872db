//! One attention head on AMX tiles (`head_scores`, the caller's softmax, `head_apply`) against an
//! f64 reference.

mod common;

use common::values;
use iuf_bf16::{round_bf16, Bf16Cpu, HeadDims, HeadScratch, Rows};

/// Element `(r, c)` of `m`.
fn at(m: Rows<'_>, r: usize, c: usize) -> f32 {
    m.data[r * m.rs + c]
}

/// The head in f64 from the bf16-rounded inputs, with an exact softmax in between.
fn reference(
    dims: HeadDims,
    q: Rows<'_>,
    k: Rows<'_>,
    v: Rows<'_>,
    scale: f32,
) -> (Vec<f64>, Vec<f64>) {
    let HeadDims { nq, nk, dh } = dims;
    let r = |x: f32| round_bf16(x) as f64;
    let mut s = vec![0f64; nq * nk];
    let mut o = vec![0f64; nq * dh];
    for i in 0..nq {
        for j in 0..nk {
            s[i * nk + j] = (0..dh)
                .map(|c| r(at(q, i, c) * scale) * r(at(k, j, c)))
                .sum();
        }
        let row = &s[i * nk..(i + 1) * nk];
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = row.iter().map(|x| (x - m).exp()).collect();
        let z: f64 = e.iter().sum();
        for c in 0..dh {
            o[i * dh + c] = (0..nk).map(|j| r((e[j] / z) as f32) * r(at(v, j, c))).sum();
        }
    }
    (s, o)
}

#[test]
fn one_head_matches_an_f64_reference_over_awkward_shapes() {
    let Some(cpu) = Bf16Cpu::detect().filter(|c| c.amx()) else {
        eprintln!("no AMX on this CPU: skipped");
        return;
    };
    let mut scratch = HeadScratch::default();
    // Shapes below, at and past the tiles; the paper's head (196 x 196 x 32); a wide head;
    // strided rows (heads cut out of a [N, D] matrix); the scratch reused across shapes.
    for (nq, nk, dh, rs) in [
        (1, 1, 1, 1),
        (5, 7, 3, 8),
        (16, 32, 32, 32),
        (33, 17, 16, 40),
        (196, 196, 32, 256),
        (50, 64, 64, 64),
        (9, 300, 40, 41),
        (3, 5, 2, 2),
        // No keys (the product is zero) and no queries.
        (4, 0, 8, 8),
        (0, 5, 8, 8),
    ] {
        let dims = HeadDims { nq, nk, dh };
        let (qd, kd, vd) = (values(nq * rs, 1), values(nk * rs, 2), values(nk * rs, 3));
        let (q, k, v) = (
            Rows { data: &qd, rs },
            Rows { data: &kd, rs },
            Rows { data: &vd, rs },
        );
        let scale = 1.0 / (dh as f32).sqrt();
        let (want_s, want_o) = reference(dims, q, k, v, scale);
        let h = cpu.head_scores(dims, q, k, scale, &mut scratch);
        let (s, ld) = (h.s, h.ld);
        for i in 0..nq {
            for j in 0..nk {
                let (got, want) = (s[i * ld + j] as f64, want_s[i * nk + j]);
                // f32 sums of dh exact bf16 products.
                let bound = 1e-6 * (dh as f64) * 1.0f64.max(want.abs());
                assert!(
                    (got - want).abs() <= bound,
                    "{dims:?} s[{i}][{j}] {got} against {want}"
                );
            }
            // The caller's softmax, in f32.
            let row = &mut s[i * ld..i * ld + nk];
            let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            row.iter_mut().for_each(|x| *x = (*x - m).exp());
            let z: f32 = row.iter().sum();
            row.iter_mut().for_each(|x| *x /= z);
            cpu.convert_pairs(row, &mut h.p[i * h.ldp..(i + 1) * h.ldp]);
        }
        let (o, ldo) = cpu.head_apply(v, &mut scratch);
        for i in 0..nq {
            for c in 0..dh {
                let (got, want) = (o[i * ldo + c] as f64, want_o[i * dh + c]);
                // Probabilities rounded to bf16 from slightly different f32 values: a few
                // bf16 ulps of the largest term, plus the f32 sum.
                let bound = 2e-2 * 2f64.powi(-7) * 4.0 + 1e-5;
                assert!(
                    (got - want).abs() <= bound,
                    "{dims:?} o[{i}][{c}] {got} against {want}"
                );
            }
        }
    }
}
