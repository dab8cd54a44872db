//! Inference of the `paper` reconstruction transformer (C_f 272, D 256, 8 heads, 4 + 4 layers,
//! FFN 1024, 196 tokens), the configuration of `cargo xtask perf`, in a loop: a target for a
//! sampling profiler.
//!
//! `cargo run --release -p iuf-model --example infer_loop -- [f32|bf16|train] [batch] [seconds]`
//! (defaults bf16, 8, 20), e.g. under `perf record -e cpu-clock -g`. Prints images/s. `train`
//! times the f32 training step of `cargo xtask perf` instead (forward in train mode, MSE,
//! backward); `train-bf16` the same step with mixed-precision training on (bf16 products of the
//! linear layers, `ops::mixed_precision_training`; needs AMX).

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use iuf_model::config::TransformerConfig;
use iuf_model::{Mode, Transformer};

fn main() -> candle_core::Result<()> {
    iuf_model::runtime::configure_process();
    let args: Vec<String> = std::env::args().collect();
    let what = args.get(1).map(String::as_str).unwrap_or("bf16");
    let bf16 = what == "bf16";
    let batch: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(8);
    let seconds: f64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(20.0);
    let dev = Device::Cpu;
    let cfg = TransformerConfig::paper(272);
    let varmap = VarMap::new();
    let model = Transformer::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev))
        .map_err(candle_core::Error::wrap)?;
    let x = Tensor::rand(0f32, 1f32, (batch, cfg.in_channels, 14, 14), &dev)?;
    if what == "train" || what == "train-bf16" {
        let mixed = if what == "train-bf16" {
            let cpu = iuf_bf16::Bf16Cpu::detect().filter(|c| c.amx());
            Some(cpu.expect("train-bf16 needs a CPU with AMX-BF16"))
        } else {
            None
        };
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
        let mut step = || -> candle_core::Result<()> {
            let out = model
                .forward(&x, &mut Mode::Train(&mut rng))
                .map_err(candle_core::Error::wrap)?;
            let loss = (&out.feature_rec - &x)?.sqr()?.mean_all()?;
            loss.backward()?;
            Ok(())
        };
        let step = || iuf_model::ops::mixed_precision_training(mixed, &mut step);
        return run_for(seconds, batch, what, "step", step);
    }
    let cpu = if bf16 {
        Some(iuf_bf16::Bf16Cpu::detect().expect("this CPU has no AVX-512 BF16"))
    } else {
        None
    };
    iuf_bf16::scoped(cpu, || {
        let infer = || -> candle_core::Result<()> {
            let out = model
                .forward(&x, &mut Mode::Eval)
                .map_err(candle_core::Error::wrap)?;
            out.pred.to_device(&Device::Cpu)?;
            Ok(())
        };
        run_for(seconds, batch, what, "run", infer)
    })
}

/// Runs `f` once untimed, then for `seconds`, and prints images/s and ms per call.
fn run_for(
    seconds: f64,
    batch: usize,
    what: &str,
    unit: &str,
    mut f: impl FnMut() -> candle_core::Result<()>,
) -> candle_core::Result<()> {
    f()?;
    let t = std::time::Instant::now();
    let mut n = 0usize;
    while t.elapsed().as_secs_f64() < seconds {
        f()?;
        n += 1;
    }
    let s = t.elapsed().as_secs_f64();
    println!(
        "{what} batch {batch}: {n} {unit}s, {:.2} images/s, {:.1} ms per {unit}",
        (n * batch) as f64 / s,
        1e3 * s / n as f64
    );
    Ok(())
}
