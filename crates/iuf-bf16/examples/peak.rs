//! Single-threaded GFLOP/s of the two bf16 kernels (AVX-512 `vdpbf16ps`, AMX `tdpbf16ps`) at a few
//! shapes: `cargo run --release -p iuf-bf16 --example peak` (best of 5).
use iuf_bf16::*;
fn main() {
    let cpu = Bf16Cpu::detect().unwrap();
    for &(m, n, k) in &[
        (196usize, 256usize, 256usize),
        (14, 32, 256),
        (588, 1024, 256),
    ] {
        let a: Vec<f32> = (0..m * k).map(|x| (x % 7) as f32).collect();
        let b: Vec<f32> = (0..k * n).map(|x| (x % 5) as f32).collect();
        let pb = PackedB::pack(k, n, &b, (n, 1));

        let mut c = vec![0f32; m * n];
        for packed in [false, true] {
            let reps = (2e9 / (2.0 * (m * n * k) as f64)) as usize + 1;
            let mut best = f64::MAX;
            for _ in 0..5 {
                let t = std::time::Instant::now();
                for _ in 0..reps {
                    let lhs = Lhs {
                        data: &a,
                        rs: k,
                        cs: 1,
                    };
                    let c2 = if packed { cpu } else { cpu.without_amx() };
                    c2.matmul(
                        m,
                        lhs,
                        &pb,
                        Out {
                            data: &mut c,
                            rs: n,
                        },
                    );
                }
                best = best.min(t.elapsed().as_secs_f64());
            }
            println!(
                "{m}x{k}x{n} amx={packed}: {:.1} GFLOP/s single thread",
                2.0 * (m * n * k * reps) as f64 / best / 1e9
            );
        }
    }
}
