//! `cargo xtask perf`: training and inference speed of the `paper` reconstruction transformer
//! (section 3: C_f 272, D 256, 8 heads, 4 + 4 layers, FFN 1024, 196 tokens) at batch 8 on the CPU,
//! with its analytic FLOP count, the fraction of the machine's matmul peak measured in the same
//! run, and the same numbers for the PyTorch implementation in `xtask/scripts/perf_torch.py` when
//! PyTorch is installed (its f32 figures and, for inference, its own bf16 path under autocast).
//! Where the CPU has AVX-512 BF16 the same network is also timed with bf16 products: inference in
//! a bf16 scope, and on AMX CPUs the training step in mixed precision (`bf16_*` keys of `--json`).
//! Every figure is a median over `--runs` timed runs after `--warmup` ones.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use iuf_model::config::TransformerConfig;
use iuf_model::{Mode, Transformer};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::{json, Value};

/// Whether to run the PyTorch reference beside the candle model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Torch {
    /// Run it when `python3 -c "import torch"` succeeds.
    Auto,
    /// Do not run it.
    Skip,
}

#[derive(clap::Args)]
pub struct Args {
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Timed runs per measurement (the median is reported).
    #[arg(long, default_value_t = 7)]
    runs: usize,
    /// Untimed runs before each measurement.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Images per batch for the throughput figures.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Backbone channels C_f (272 = EfficientNet-B4 levels of the paper).
    #[arg(long, default_value_t = 272)]
    channels: usize,
    /// Threads for both candle (rayon) and PyTorch.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[arg(long, value_enum, default_value_t = Torch::Auto)]
    torch: Torch,
}

/// Matmul FLOPs (2 per multiply-add) of one image's forward pass, counted from the config: every
/// linear layer and both attention products; elementwise work is not counted. Per attention block
/// four D x D projections and q k^T, a v over N x N; the decoder has two attention blocks per layer.
pub fn forward_flops_per_image(cfg: &TransformerConfig) -> f64 {
    let n = cfg.num_tokens() as f64;
    let d = cfg.hidden_dim as f64;
    let ff = cfg.dim_feedforward as f64;
    let c = cfg.in_channels as f64;
    let attention = 4.0 * 2.0 * n * d * d + 2.0 * 2.0 * n * n * d;
    let ffn = 2.0 * 2.0 * n * d * ff;
    let encoder = cfg.num_encoder_layers as f64 * (attention + ffn);
    let decoder = cfg.num_decoder_layers as f64 * (2.0 * attention + ffn);
    let io = 2.0 * 2.0 * n * c * d;
    encoder + decoder + io
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        0.5 * (v[m - 1] + v[m])
    }
}

/// Median wall time in seconds of `f` over `runs` runs after `warmup` untimed ones.
fn median_secs(warmup: usize, runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..warmup {
        f()?;
    }
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(median(times))
}

fn load_average() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// GFLOP/s of a 2048^3 f32 candle matmul: the machine's practical matmul peak for this run.
fn matmul_peak_gflops(dev: &Device, runs: usize) -> Result<f64> {
    let n = 2048;
    let a = Tensor::rand(-1f32, 1f32, (n, n), dev)?;
    let b = Tensor::rand(-1f32, 1f32, (n, n), dev)?;
    let secs = median_secs(1, runs, || {
        a.matmul(&b)?;
        Ok(())
    })?;
    Ok(2.0 * (n as f64).powi(3) / secs / 1e9)
}

/// GFLOP/s of a 2048^3 bf16 product (iuf-bf16, B packed once, A converted each time).
fn bf16_matmul_gflops(cpu: iuf_bf16::Bf16Cpu, runs: usize) -> Result<f64> {
    let n = 2048;
    let a: Vec<f32> = (0..n * n)
        .map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0)
        .collect();
    let b = iuf_bf16::PackedB::pack(n, n, &a, (n, 1));
    let mut c = vec![0f32; n * n];
    let secs = median_secs(1, runs, || {
        let lhs = iuf_bf16::Lhs {
            data: &a,
            rs: n,
            cs: 1,
        };
        cpu.matmul_par(
            n,
            lhs,
            &b,
            iuf_bf16::Out {
                data: &mut c,
                rs: n,
            },
        );
        Ok(())
    })?;
    Ok(2.0 * (n as f64).powi(3) / secs / 1e9)
}

/// GFLOP/s of the AMX tiles alone (`tdpbf16ps` on registers, no memory operands) on `threads`
/// threads at once, best of 5: the ceiling the bf16 kernels are measured against. `None` without
/// AMX.
fn bf16_tile_peak_gflops(cpu: iuf_bf16::Bf16Cpu, threads: usize) -> Option<f64> {
    if !cpu.amx() {
        return None;
    }
    let mut best = 0f64;
    for _ in 0..5 {
        let t = Instant::now();
        let flops: f64 = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads.max(1))
                .map(|_| s.spawn(|| cpu.amx_register_loop(2_000_000).unwrap_or(0.0)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
        });
        best = best.max(flops / t.elapsed().as_secs_f64() / 1e9);
    }
    Some(best)
}

/// Inference (batch and batch 1) with bf16 products, in one inference scope (the weights are
/// packed once, in the first warmup run), and on AMX CPUs the mixed-precision training step.
fn measure_bf16(
    cpu: iuf_bf16::Bf16Cpu,
    cfg: &TransformerConfig,
    args: &Args,
    dev: &Device,
) -> Result<(f64, f64, Option<f64>)> {
    let varmap = VarMap::new();
    let model = Transformer::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, dev))?;
    let x = Tensor::rand(0f32, 1f32, (args.batch, cfg.in_channels, 14, 14), dev)?;
    let x1 = x.narrow(0, 0, 1)?.contiguous()?;
    // Mixed-precision training (bf16 products of the linear layers, f32 weights and sums), as
    // `--precision bf16` trains on AMX CPUs: the same step as the f32 one.
    let train_s = if cpu.amx() {
        let mut rng = StdRng::seed_from_u64(0);
        let step = median_secs(args.warmup, args.runs, || {
            iuf_model::ops::mixed_precision_training(Some(cpu), || train_step(&model, &x, &mut rng))
        })?;
        Some(step)
    } else {
        None
    };
    let (batch_s, b1_s) = iuf_bf16::scoped(Some(cpu), || {
        let batch_s = median_secs(args.warmup, args.runs, || infer(&model, &x))?;
        let b1_s = median_secs(args.warmup, args.runs.max(15), || infer(&model, &x1))?;
        anyhow::Ok((batch_s, b1_s))
    })?;
    Ok((batch_s, b1_s, train_s))
}

/// A training step: forward (jitter and dropout on) + MSE (section 3.6) + backward.
fn train_step(model: &Transformer, x: &Tensor, rng: &mut StdRng) -> Result<()> {
    let out = model.forward(x, &mut Mode::Train(rng))?;
    let loss = (&out.feature_rec - x)?.sqr()?.mean_all()?;
    loss.backward()?;
    Ok(())
}

/// Inference: the forward in eval mode, its prediction on the CPU.
fn infer(model: &Transformer, input: &Tensor) -> Result<()> {
    let out = model.forward(input, &mut Mode::Eval)?;
    out.pred.to_device(&Device::Cpu)?;
    Ok(())
}

struct CandleNumbers {
    train_step_s: f64,
    infer_batch_s: f64,
    infer_b1_s: f64,
}

fn measure_candle(cfg: &TransformerConfig, args: &Args, dev: &Device) -> Result<CandleNumbers> {
    let varmap = VarMap::new();
    let model = Transformer::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, dev))?;
    let x = Tensor::rand(0f32, 1f32, (args.batch, cfg.in_channels, 14, 14), dev)?;
    let x1 = x.narrow(0, 0, 1)?.contiguous()?;
    let mut rng = StdRng::seed_from_u64(0);
    let train_step_s = median_secs(args.warmup, args.runs, || train_step(&model, &x, &mut rng))?;
    let infer_batch_s = median_secs(args.warmup, args.runs, || infer(&model, &x))?;
    let infer_b1_s = median_secs(args.warmup, args.runs.max(15), || infer(&model, &x1))?;
    Ok(CandleNumbers {
        train_step_s,
        infer_batch_s,
        infer_b1_s,
    })
}

fn torch_available() -> bool {
    Command::new("python3")
        .args(["-c", "import torch"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn measure_torch(args: &Args) -> Result<Value> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/perf_torch.py");
    let out = Command::new("python3")
        .arg(&script)
        .args(["--threads", &args.threads.to_string()])
        .args(["--batch", &args.batch.to_string()])
        .args(["--warmup", &args.warmup.to_string()])
        .args(["--runs", &args.runs.to_string()])
        .args(["--channels", &args.channels.to_string()])
        .env("OMP_NUM_THREADS", args.threads.to_string())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line)
        .with_context(|| format!("{} printed no JSON line: {stdout}", script.display()))
}

pub fn run(args: Args) -> Result<()> {
    anyhow::ensure!(
        args.batch > 0 && args.runs > 0,
        "--batch and --runs must be positive"
    );
    // candle's matmul and the fused ops both size their parallelism from RAYON_NUM_THREADS.
    std::env::set_var("RAYON_NUM_THREADS", args.threads.to_string());
    // As the `iuf` program does: freed op outputs are reused instead of faulted in again, and
    // candle's elementwise pool parks sooner instead of spinning against rayon's workers.
    iuf_model::runtime::configure_process();
    let dev = Device::Cpu;
    let cfg = TransformerConfig::paper(args.channels);
    let flops_fwd = forward_flops_per_image(&cfg);
    // Backward of a matmul costs two matmuls of the same size: training = 3x forward.
    let flops_train = 3.0 * flops_fwd;
    let load_before = load_average();

    eprintln!("measuring the matmul peak ...");
    let peak = matmul_peak_gflops(&dev, args.runs)?;
    eprintln!("measuring candle (batch {}) ...", args.batch);
    let c = measure_candle(&cfg, &args, &dev)?;
    // bf16 inference where the CPU has AVX-512 BF16, and mixed-precision training where it has AMX.
    let bf16 = match iuf_bf16::Bf16Cpu::detect() {
        Some(cpu) => {
            eprintln!(
                "measuring bf16 ({} kernel) ...",
                if cpu.amx() { "AMX" } else { "AVX-512" }
            );
            let peak = bf16_matmul_gflops(cpu, args.runs)?;
            let tile_peak = bf16_tile_peak_gflops(cpu, args.threads);
            let (batch_s, b1_s, train_s) = measure_bf16(cpu, &cfg, &args, &dev)?;
            Some((cpu, peak, tile_peak, batch_s, b1_s, train_s))
        }
        None => {
            eprintln!("no avx512bf16 on this CPU: bf16 skipped");
            None
        }
    };
    let batch = args.batch as f64;
    let train_ips = batch / c.train_step_s;
    let infer_ips = batch / c.infer_batch_s;
    let train_frac = train_ips * flops_train / 1e9 / peak;
    let infer_frac = infer_ips * flops_fwd / 1e9 / peak;

    let torch = match args.torch {
        Torch::Auto if torch_available() => {
            eprintln!("measuring PyTorch (batch {}) ...", args.batch);
            Some(measure_torch(&args)?)
        }
        Torch::Auto => {
            eprintln!("PyTorch is not installed (python3 -c \"import torch\" failed): skipped");
            None
        }
        Torch::Skip => None,
    };
    let load_after = load_average();

    println!(
        "paper transformer (C_f {}, D {}, {} heads, {}+{} layers, FFN {}, {} tokens), batch {}, {} threads",
        cfg.in_channels,
        cfg.hidden_dim,
        cfg.nheads,
        cfg.num_encoder_layers,
        cfg.num_decoder_layers,
        cfg.dim_feedforward,
        cfg.num_tokens(),
        args.batch,
        args.threads
    );
    println!(
        "matmul FLOPs per image: forward {:.2} GFLOP, training step {:.2} GFLOP; matmul peak {:.1} GFLOP/s",
        flops_fwd / 1e9,
        flops_train / 1e9,
        peak
    );
    println!("medians of {} runs after {} warmup", args.runs, args.warmup);
    println!(
        "{:<28} {:>12} {:>12} {:>10}",
        "", "candle", "pytorch", "ratio"
    );
    let tv = |k: &str| {
        torch
            .as_ref()
            .and_then(|t| t.get(k))
            .and_then(Value::as_f64)
    };
    let row = |name: &str, ours: f64, theirs: Option<f64>, higher_is_better: bool| {
        let ratio = theirs.map(|t| if higher_is_better { ours / t } else { t / ours });
        println!(
            "{:<28} {:>12.2} {:>12} {:>10}",
            name,
            ours,
            theirs.map_or("-".into(), |t| format!("{t:.2}")),
            ratio.map_or("-".into(), |r| format!("{r:.2}x"))
        );
    };
    row("train images/s", train_ips, tv("train_images_per_s"), true);
    row(
        "inference images/s",
        infer_ips,
        tv("infer_images_per_s"),
        true,
    );
    row(
        "inference batch-1 ms",
        c.infer_b1_s * 1e3,
        tv("infer_b1_ms"),
        false,
    );
    if let Some((_, _, _, batch_s, b1_s, train_s)) = bf16 {
        if let Some(t) = train_s {
            row(
                "bf16 mixed train images/s",
                batch / t,
                tv("train_images_per_s"),
                true,
            );
        }
        row(
            "bf16 inference images/s",
            batch / batch_s,
            tv("infer_images_per_s"),
            true,
        );
        row(
            "bf16 inference batch-1 ms",
            b1_s * 1e3,
            tv("infer_b1_ms"),
            false,
        );
        // PyTorch's own bf16 CPU path (autocast, oneDNN): the same comparison in bf16.
        row(
            "  vs PyTorch bf16 images/s",
            batch / batch_s,
            tv("bf16_infer_images_per_s"),
            true,
        );
        row(
            "  vs PyTorch bf16 b1 ms",
            b1_s * 1e3,
            tv("bf16_infer_b1_ms"),
            false,
        );
    }
    if let Some((cpu, bf16_peak, tile_peak, batch_s, _, _)) = bf16 {
        println!(
            "bf16 2048^3 product ({}): {:.1} GFLOP/s ({:.2}x the f32 matmul); bf16 inference at {:.0}% of it",
            if cpu.amx() { "AMX" } else { "AVX-512" },
            bf16_peak,
            bf16_peak / peak,
            100.0 * batch / batch_s * flops_fwd / 1e9 / bf16_peak
        );
        if let Some(tp) = tile_peak {
            println!(
                "AMX tiles register-only: {:.0} GFLOP/s; the 2048^3 product at {:.0}% of it, bf16 inference at {:.0}%",
                tp,
                100.0 * bf16_peak / tp,
                100.0 * batch / batch_s * flops_fwd / 1e9 / tp
            );
        }
    }
    println!(
        "fraction of matmul peak: training {:.0}%, inference {:.0}%",
        100.0 * train_frac,
        100.0 * infer_frac
    );
    if let (Some(a), Some(b)) = (load_before, load_after) {
        println!("load average (1 min) before {a:.2}, after {b:.2}");
    }

    if let Some(path) = &args.json {
        let ratio = |ours: f64, k: &str| tv(k).map(|t| ours / t);
        let bf16_json = bf16.map(|(cpu, bf16_peak, tile_peak, batch_s, b1_s, train_s)| {
            json!({
                "bf16_kernel": if cpu.amx() { "amx" } else { "avx512" },
                "bf16_matmul_gflops": bf16_peak,
                "bf16_tile_peak_gflops": tile_peak,
                "bf16_matmul_fraction_of_tile_peak": tile_peak.map(|t| bf16_peak / t),
                "bf16_infer_fraction_of_tile_peak":
                    tile_peak.map(|t| batch / batch_s * flops_fwd / 1e9 / t),
                "bf16_infer_images_per_s": batch / batch_s,
                "bf16_infer_batch_s": batch_s,
                "bf16_infer_b1_ms": b1_s * 1e3,
                "bf16_infer_speedup_vs_torch": ratio(batch / batch_s, "infer_images_per_s"),
                "bf16_infer_b1_speedup_vs_torch": tv("infer_b1_ms").map(|t| t / (b1_s * 1e3)),
                "bf16_infer_speedup_vs_f32": c.infer_batch_s / batch_s,
                "bf16_train_step_s": train_s,
                "bf16_train_images_per_s": train_s.map(|t| batch / t),
                "bf16_train_speedup_vs_torch":
                    train_s.and_then(|t| ratio(batch / t, "train_images_per_s")),
                "bf16_train_speedup_vs_f32": train_s.map(|t| c.train_step_s / t),
                "bf16_infer_speedup_vs_torch_bf16":
                    ratio(batch / batch_s, "bf16_infer_images_per_s"),
                "bf16_infer_b1_speedup_vs_torch_bf16":
                    tv("bf16_infer_b1_ms").map(|t| t / (b1_s * 1e3)),
            })
        });
        let mut report = json!({
            "train_images_per_s": train_ips,
            "infer_images_per_s": infer_ips,
            "infer_b1_ms": c.infer_b1_s * 1e3,
            "train_step_s": c.train_step_s,
            "infer_batch_s": c.infer_batch_s,
            "torch_train_images_per_s": tv("train_images_per_s"),
            "torch_infer_images_per_s": tv("infer_images_per_s"),
            "torch_infer_b1_ms": tv("infer_b1_ms"),
            "torch_bf16_infer_images_per_s": tv("bf16_infer_images_per_s"),
            "torch_bf16_infer_b1_ms": tv("bf16_infer_b1_ms"),
            "torch_version": torch.as_ref().and_then(|t| t.get("torch_version")).cloned(),
            "train_speedup_vs_torch": ratio(train_ips, "train_images_per_s"),
            "infer_speedup_vs_torch": ratio(infer_ips, "infer_images_per_s"),
            "flops_per_image_forward": flops_fwd,
            "flops_per_image_train": flops_train,
            "matmul_peak_gflops": peak,
            "train_fraction_of_peak": train_frac,
            "infer_fraction_of_peak": infer_frac,
            "batch": args.batch,
            "threads": args.threads,
            "runs": args.runs,
            "warmup": args.warmup,
            "load_average_before": load_before,
            "load_average_after": load_after,
        });
        // bf16 figures under their own keys (absent on CPUs without AVX-512 BF16).
        if let (Some(Value::Object(extra)), Some(obj)) = (bf16_json, report.as_object_mut()) {
            obj.extend(extra);
        }
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_flop_count_matches_hand_count() {
        // Hand count for N 196, D 256, FF 1024, C 272: encoder layer 347.6 M, decoder layer
        // 489.6 M, projections 54.6 M -> 3.404 GFLOP per image.
        let f = forward_flops_per_image(&TransformerConfig::paper(272));
        assert!((f / 1e9 - 3.4039).abs() < 1e-3, "{f}");
    }

    #[test]
    fn median_of_even_and_odd_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
