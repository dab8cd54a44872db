//! GFLOP/s of the bf16 product at the shapes of `cargo xtask perf` (the 2048^3 peak product and the
//! paper transformer's linear layers at batch 8 and 1), on the rayon pool (`RAYON_NUM_THREADS`),
//! B packed once, A converted in every product as in inference:
//! `cargo run --release -p iuf-bf16 --example shapes [runs] [avx512]` (median of `runs`, default 15;
//! `avx512` forces the AVX-512 kernel on an AMX CPU). With AMX it also times one attention head
//! of the paper transformer (196 queries and keys, width 32: `head_scores`, the scores converted
//! to pairs where a caller's softmax would write them, `head_apply`; the softmax itself is not
//! timed), 64 heads split over the pool as in inference.
use iuf_bf16::*;
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runs: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(15);
    let mut cpu = Bf16Cpu::detect().expect("this CPU has no AVX-512 BF16");
    if args.iter().any(|a| a == "avx512") {
        cpu = cpu.without_amx();
    }
    println!(
        "kernel {}, {} threads, median of {runs}",
        if cpu.amx() { "AMX" } else { "AVX-512" },
        rayon::current_num_threads()
    );
    // The tiles' register-only rate on every thread at once (best of 5).
    let threads = rayon::current_num_threads();
    let mut best = 0f64;
    for _ in 0..5 {
        let t0 = std::time::Instant::now();
        let flops: f64 = rayon::broadcast(|_| cpu.amx_register_loop(2_000_000).unwrap_or(0.0))
            .iter()
            .sum();
        best = best.max(flops / t0.elapsed().as_secs_f64() / 1e9);
    }
    if cpu.amx() {
        println!("AMX register-only peak ({threads} threads): {best:.0} GFLOP/s");
    }
    for &(m, k, n) in &[
        (2048usize, 2048usize, 2048usize),
        (1568, 256, 1024),
        (1568, 1024, 256),
        (1568, 256, 256),
        (1568, 256, 768),
        (196, 256, 256),
        (196, 256, 1024),
    ] {
        let a = values(m * k, 7919);
        let b = values(k * n, 104729);
        let pb = PackedB::pack(k, n, &b, (n, 1));
        let mut c = vec![0f32; m * n];
        let flops = 2.0 * (m * n * k) as f64;
        let reps = (2e8 / flops) as usize + 1;
        report(&format!("{m} x {k} x {n}"), flops, reps, runs, || {
            let lhs = Lhs {
                data: &a,
                rs: k,
                cs: 1,
            };
            cpu.matmul_par(
                m,
                lhs,
                &pb,
                Out {
                    data: &mut c,
                    rs: n,
                },
            );
        });
    }
    if cpu.amx() {
        attention_heads(cpu, runs);
    }
}

/// 64 heads (8 images x 8 heads) of 196 x 196 x 32 per run, one `HeadScratch` per thread.
fn attention_heads(cpu: Bf16Cpu, runs: usize) {
    use rayon::prelude::*;
    let (n, dh, heads) = (196usize, 32usize, 64usize);
    let d = 8 * dh;
    let x = values(8 * n * d, 7919);
    let dims = HeadDims { nq: n, nk: n, dh };
    // q k^T and P v: 2 * n * n * dh multiply-adds, 2 FLOP each.
    let flops = (heads * 4 * n * n * dh) as f64;
    let label = format!("attention heads {n} x {n} x {dh} (products and conversions, no softmax)");
    report(&label, flops, 1, runs, || {
        (0..heads)
            .into_par_iter()
            .for_each_init(HeadScratch::default, |scratch, bh| {
                let (b, h) = (bh / 8, bh % 8);
                let rows = Rows {
                    data: &x[b * n * d + h * dh..(b + 1) * n * d],
                    rs: d,
                };
                let hs = cpu.head_scores(dims, rows, rows, 0.2, scratch);
                // The caller's softmax is not timed: the scores go to the product as they are.
                for i in 0..n {
                    let row = &hs.s[i * hs.ld..i * hs.ld + n];
                    cpu.convert_pairs(row, &mut hs.p[i * hs.ldp..(i + 1) * hs.ldp]);
                }
                std::hint::black_box(cpu.head_apply(rows, scratch).0[0]);
            });
    });
}

/// `len` values in [-1, 1], a different sequence for each multiplier.
fn values(len: usize, mul: usize) -> Vec<f32> {
    (0..len)
        .map(|x| ((x * mul) % 2001) as f32 / 1000.0 - 1.0)
        .collect()
}

/// Times `reps` calls of `f` (`flops` each) `runs` times after 2 untimed rounds and prints the
/// median GFLOP/s and the range.
fn report(label: &str, flops: f64, reps: usize, runs: usize, mut f: impl FnMut()) {
    let mut t = Vec::new();
    for r in 0..runs + 2 {
        let t0 = std::time::Instant::now();
        for _ in 0..reps {
            f();
        }
        if r >= 2 {
            t.push(t0.elapsed().as_secs_f64() / reps as f64);
        }
    }
    t.sort_by(|x, y| x.total_cmp(y));
    let g = |s: f64| flops / s / 1e9;
    println!(
        "{label}: {:.0} GFLOP/s (range {:.0}-{:.0})",
        g(t[t.len() / 2]),
        g(t[t.len() - 1]),
        g(t[0])
    );
}
