//! `cargo xtask perf`: training and inference speed of the `paper` reconstruction transformer
//! (section 3: C_f 272, D 256, 8 heads, 4 + 4 layers, FFN 1024, 196 tokens) at batch 8 on the CPU,
//! with its analytic FLOP count, the fraction of the machine's matmul peak measured in the same
//! run, and the same numbers for the PyTorch implementation in `xtask/scripts/perf_torch.py` when
//! PyTorch is installed (its f32 figures and, for inference, its own bf16 path under autocast).
//! Where the CPU has AVX-512 BF16 the same network is also timed with bf16 products: inference in
//! a bf16 scope, and on AMX CPUs the training step in mixed precision (`bf16_*` keys of `--json`).
//! Every figure is a median over `--runs` timed runs after `--warmup` ones. With `--rounds R` the
//! three phases (candle f32, candle bf16, PyTorch) run in turn R times; figures are then medians
//! over the rounds and each ratio the median of the rounds' own ratios, with its range.

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
    /// Measure candle (f32, bf16) and PyTorch in turn this many times. Each ratio is then the
    /// median of the rounds' own ratios, so a host whose speed drifts between the candle and the
    /// PyTorch phases does not skew it; the table adds each ratio's range over the rounds.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
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
) -> Result<Bf16Numbers> {
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
    Ok(Bf16Numbers {
        batch_s,
        b1_s,
        train_s,
    })
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

/// candle's f32 figures of one round (seconds).
struct CandleNumbers {
    train_step_s: f64,
    infer_batch_s: f64,
    infer_b1_s: f64,
}

/// candle's figures with bf16 products in one round (seconds); `train_s` on AMX CPUs only.
struct Bf16Numbers {
    batch_s: f64,
    b1_s: f64,
    train_s: Option<f64>,
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

/// Everything one round measured: candle in f32, candle with bf16 products, then PyTorch, back to
/// back, so that the round's ratios compare figures taken within a minute or two of each other.
struct Round {
    images: f64,
    candle: CandleNumbers,
    bf16: Option<Bf16Numbers>,
    torch: Option<Value>,
}

impl Round {
    fn torch(&self, key: &str) -> Option<f64> {
        self.torch.as_ref()?.get(key)?.as_f64()
    }

    fn to_json(&self) -> Value {
        json!({
            "train_step_s": self.candle.train_step_s,
            "infer_batch_s": self.candle.infer_batch_s,
            "infer_b1_ms": self.candle.infer_b1_s * 1e3,
            "bf16_infer_batch_s": self.bf16.as_ref().map(|b| b.batch_s),
            "bf16_infer_b1_ms": self.bf16.as_ref().map(|b| b.b1_s * 1e3),
            "bf16_train_step_s": self.bf16.as_ref().and_then(|b| b.train_s),
            "torch": self.torch,
        })
    }
}

/// A figure compared with PyTorch's: a table row and a `--json` ratio key.
struct Compared {
    label: &'static str,
    /// `--json` key of the ratio (median over rounds of each round's ratio).
    key: &'static str,
    ours: fn(&Round) -> Option<f64>,
    theirs: fn(&Round) -> Option<f64>,
    /// Images per second (ratio ours / theirs), not milliseconds (ratio theirs / ours).
    higher_is_better: bool,
}

const COMPARED: [Compared; 8] = [
    Compared {
        label: "train images/s",
        key: "train_speedup_vs_torch",
        ours: |r| Some(r.images / r.candle.train_step_s),
        theirs: |r| r.torch("train_images_per_s"),
        higher_is_better: true,
    },
    Compared {
        label: "inference images/s",
        key: "infer_speedup_vs_torch",
        ours: |r| Some(r.images / r.candle.infer_batch_s),
        theirs: |r| r.torch("infer_images_per_s"),
        higher_is_better: true,
    },
    Compared {
        label: "inference batch-1 ms",
        key: "infer_b1_speedup_vs_torch",
        ours: |r| Some(r.candle.infer_b1_s * 1e3),
        theirs: |r| r.torch("infer_b1_ms"),
        higher_is_better: false,
    },
    Compared {
        label: "bf16 mixed train images/s",
        key: "bf16_train_speedup_vs_torch",
        ours: |r| Some(r.images / r.bf16.as_ref()?.train_s?),
        theirs: |r| r.torch("train_images_per_s"),
        higher_is_better: true,
    },
    Compared {
        label: "bf16 inference images/s",
        key: "bf16_infer_speedup_vs_torch",
        ours: |r| Some(r.images / r.bf16.as_ref()?.batch_s),
        theirs: |r| r.torch("infer_images_per_s"),
        higher_is_better: true,
    },
    Compared {
        label: "bf16 inference batch-1 ms",
        key: "bf16_infer_b1_speedup_vs_torch",
        ours: |r| Some(r.bf16.as_ref()?.b1_s * 1e3),
        theirs: |r| r.torch("infer_b1_ms"),
        higher_is_better: false,
    },
    // PyTorch's own bf16 CPU path (autocast, oneDNN): the same comparison in bf16.
    Compared {
        label: "  vs PyTorch bf16 images/s",
        key: "bf16_infer_speedup_vs_torch_bf16",
        ours: |r| Some(r.images / r.bf16.as_ref()?.batch_s),
        theirs: |r| r.torch("bf16_infer_images_per_s"),
        higher_is_better: true,
    },
    Compared {
        label: "  vs PyTorch bf16 b1 ms",
        key: "bf16_infer_b1_speedup_vs_torch_bf16",
        ours: |r| Some(r.bf16.as_ref()?.b1_s * 1e3),
        theirs: |r| r.torch("bf16_infer_b1_ms"),
        higher_is_better: false,
    },
];

/// Median, smallest and largest of a figure over the rounds that have it.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

fn spread(rounds: &[Round], f: impl Fn(&Round) -> Option<f64>) -> Option<Spread> {
    let v: Vec<f64> = rounds.iter().filter_map(f).collect();
    if v.is_empty() {
        return None;
    }
    Some(Spread {
        min: v.iter().copied().fold(f64::INFINITY, f64::min),
        max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        median: median(v),
    })
}

impl Compared {
    fn ratio(&self, r: &Round) -> Option<f64> {
        let (ours, theirs) = ((self.ours)(r)?, (self.theirs)(r)?);
        Some(if self.higher_is_better {
            ours / theirs
        } else {
            theirs / ours
        })
    }
}

pub fn run(args: Args) -> Result<()> {
    anyhow::ensure!(
        args.batch > 0 && args.runs > 0 && args.rounds > 0,
        "--batch, --runs and --rounds must be positive"
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
    // bf16 inference where the CPU has AVX-512 BF16, and mixed-precision training where it has AMX.
    let bf16_cpu = iuf_bf16::Bf16Cpu::detect();
    let bf16_peaks = match bf16_cpu {
        Some(cpu) => {
            eprintln!(
                "measuring the bf16 product ({} kernel) ...",
                if cpu.amx() { "AMX" } else { "AVX-512" }
            );
            Some((
                bf16_matmul_gflops(cpu, args.runs)?,
                bf16_tile_peak_gflops(cpu, args.threads),
            ))
        }
        None => {
            eprintln!("no avx512bf16 on this CPU: bf16 skipped");
            None
        }
    };
    let with_torch = match args.torch {
        Torch::Auto if torch_available() => true,
        Torch::Auto => {
            eprintln!("PyTorch is not installed (python3 -c \"import torch\" failed): skipped");
            false
        }
        Torch::Skip => false,
    };
    let mut rounds = Vec::with_capacity(args.rounds);
    for round in 1..=args.rounds {
        let of = format!("round {round}/{}: ", args.rounds);
        eprintln!("{of}measuring candle (batch {}) ...", args.batch);
        let candle = measure_candle(&cfg, &args, &dev)?;
        let bf16 = match bf16_cpu {
            Some(cpu) => {
                eprintln!("{of}measuring candle with bf16 products ...");
                Some(measure_bf16(cpu, &cfg, &args, &dev)?)
            }
            None => None,
        };
        let torch = if with_torch {
            eprintln!("{of}measuring PyTorch (batch {}) ...", args.batch);
            Some(measure_torch(&args)?)
        } else {
            None
        };
        rounds.push(Round {
            images: args.batch as f64,
            candle,
            bf16,
            torch,
        });
    }
    let load_after = load_average();

    let med = |f: fn(&Round) -> Option<f64>| spread(&rounds, f).map(|s| s.median);
    let batch = args.batch as f64;
    let train_step_s = med(|r| Some(r.candle.train_step_s)).unwrap_or(f64::NAN);
    let infer_batch_s = med(|r| Some(r.candle.infer_batch_s)).unwrap_or(f64::NAN);
    let infer_b1_s = med(|r| Some(r.candle.infer_b1_s)).unwrap_or(f64::NAN);
    let bf16_batch_s = med(|r| Some(r.bf16.as_ref()?.batch_s));
    let bf16_b1_s = med(|r| Some(r.bf16.as_ref()?.b1_s));
    let bf16_train_s = med(|r| r.bf16.as_ref()?.train_s);
    let train_ips = batch / train_step_s;
    let infer_ips = batch / infer_batch_s;
    let train_frac = train_ips * flops_train / 1e9 / peak;
    let infer_frac = infer_ips * flops_fwd / 1e9 / peak;
    let torch_version = rounds
        .iter()
        .find_map(|r| r.torch.as_ref()?.get("torch_version").cloned());

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
    if args.rounds == 1 {
        println!("medians of {} runs after {} warmup", args.runs, args.warmup);
    } else {
        println!(
            "{} rounds (candle f32, candle bf16, PyTorch in turn), each a median of {} runs after \
             {} warmup; figures are medians over the rounds, each ratio the median of the rounds' \
             own ratios, with their range",
            args.rounds, args.runs, args.warmup
        );
    }
    println!(
        "{:<28} {:>12} {:>12} {:>10} {:>14}",
        "",
        "candle",
        "pytorch",
        "ratio",
        if args.rounds > 1 { "ratio range" } else { "" }
    );
    let mut ratios = serde_json::Map::new();
    let mut ranges = serde_json::Map::new();
    for c in &COMPARED {
        let Some(ours) = spread(&rounds, c.ours) else {
            continue;
        };
        let theirs = spread(&rounds, c.theirs);
        let ratio = spread(&rounds, |r| c.ratio(r));
        println!(
            "{:<28} {:>12.2} {:>12} {:>10} {:>14}",
            c.label,
            ours.median,
            theirs.map_or("-".into(), |t| format!("{:.2}", t.median)),
            ratio.map_or("-".into(), |r| format!("{:.2}x", r.median)),
            match ratio {
                Some(r) if args.rounds > 1 => format!("{:.2}-{:.2}x", r.min, r.max),
                _ => String::new(),
            }
        );
        ratios.insert(c.key.into(), json!(ratio.map(|r| r.median)));
        if let Some(r) = ratio {
            ranges.insert(c.key.into(), json!([r.min, r.max]));
        }
    }
    if let (Some((bf16_peak, tile_peak)), Some(batch_s)) = (bf16_peaks, bf16_batch_s) {
        println!(
            "bf16 2048^3 product ({}): {:.1} GFLOP/s ({:.2}x the f32 matmul); bf16 inference at {:.0}% of it",
            if bf16_cpu.is_some_and(|c| c.amx()) {
                "AMX"
            } else {
                "AVX-512"
            },
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
        let tv = |k: &'static str| spread(&rounds, |r| r.torch(k)).map(|s| s.median);
        let bf16_json = match (bf16_cpu, bf16_peaks, bf16_batch_s, bf16_b1_s) {
            (Some(cpu), Some((bf16_peak, tile_peak)), Some(batch_s), Some(b1_s)) => json!({
                "bf16_kernel": if cpu.amx() { "amx" } else { "avx512" },
                "bf16_matmul_gflops": bf16_peak,
                "bf16_tile_peak_gflops": tile_peak,
                "bf16_matmul_fraction_of_tile_peak": tile_peak.map(|t| bf16_peak / t),
                "bf16_infer_fraction_of_tile_peak":
                    tile_peak.map(|t| batch / batch_s * flops_fwd / 1e9 / t),
                "bf16_infer_images_per_s": batch / batch_s,
                "bf16_infer_batch_s": batch_s,
                "bf16_infer_b1_ms": b1_s * 1e3,
                "bf16_infer_speedup_vs_f32":
                    med(|r| Some(r.candle.infer_batch_s / r.bf16.as_ref()?.batch_s)),
                "bf16_train_step_s": bf16_train_s,
                "bf16_train_images_per_s": bf16_train_s.map(|t| batch / t),
                "bf16_train_speedup_vs_f32":
                    med(|r| Some(r.candle.train_step_s / r.bf16.as_ref()?.train_s?)),
            }),
            _ => json!({}),
        };
        let mut report = json!({
            "train_images_per_s": train_ips,
            "infer_images_per_s": infer_ips,
            "infer_b1_ms": infer_b1_s * 1e3,
            "train_step_s": train_step_s,
            "infer_batch_s": infer_batch_s,
            "torch_train_images_per_s": tv("train_images_per_s"),
            "torch_infer_images_per_s": tv("infer_images_per_s"),
            "torch_infer_b1_ms": tv("infer_b1_ms"),
            "torch_bf16_infer_images_per_s": tv("bf16_infer_images_per_s"),
            "torch_bf16_infer_b1_ms": tv("bf16_infer_b1_ms"),
            "torch_version": torch_version,
            "flops_per_image_forward": flops_fwd,
            "flops_per_image_train": flops_train,
            "matmul_peak_gflops": peak,
            "train_fraction_of_peak": train_frac,
            "infer_fraction_of_peak": infer_frac,
            "batch": args.batch,
            "threads": args.threads,
            "runs": args.runs,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "ratio_ranges": ranges,
            "per_round": rounds.iter().map(Round::to_json).collect::<Vec<_>>(),
            "load_average_before": load_before,
            "load_average_after": load_after,
        });
        // The ratios to PyTorch, and bf16 figures under their own keys (absent on CPUs without
        // AVX-512 BF16).
        if let Some(obj) = report.as_object_mut() {
            if let Value::Object(bf16) = bf16_json {
                obj.extend(bf16);
            }
            obj.extend(ratios);
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

    fn round(candle_b1_ms: f64, torch: Option<Value>) -> Round {
        Round {
            images: 8.0,
            candle: CandleNumbers {
                train_step_s: 2.0,
                infer_batch_s: 0.5,
                infer_b1_s: candle_b1_ms / 1e3,
            },
            bf16: None,
            torch,
        }
    }

    #[test]
    fn ratios_are_per_round_and_point_the_right_way() {
        let rounds = [
            // Round 1: PyTorch 4 images/s in training (we do 4: 1x), 8 in inference (we do 16:
            // 2x), batch 1 in 30 ms (we take 10: 3x faster).
            round(
                10.0,
                Some(
                    json!({"train_images_per_s": 4.0, "infer_images_per_s": 8.0, "infer_b1_ms": 30.0}),
                ),
            ),
            // Round 2: a slower host for both: batch 1 20 ms against 40 (2x).
            round(20.0, Some(json!({"infer_b1_ms": 40.0}))),
            round(15.0, None),
        ];
        let by_key = |k: &str| COMPARED.iter().find(|c| c.key == k).unwrap();
        let train = spread(&rounds, |r| by_key("train_speedup_vs_torch").ratio(r)).unwrap();
        assert_eq!((train.median, train.min, train.max), (1.0, 1.0, 1.0));
        let infer = spread(&rounds, |r| by_key("infer_speedup_vs_torch").ratio(r)).unwrap();
        assert_eq!(infer.median, 2.0);
        // Batch-1 milliseconds: lower is better, so the ratio is theirs / ours; the round
        // without PyTorch gives no ratio; the median of 3x and 2x is 2.5x, not the ratio of
        // the medians (35 / 15).
        let b1 = spread(&rounds, |r| by_key("infer_b1_speedup_vs_torch").ratio(r)).unwrap();
        assert_eq!((b1.median, b1.min, b1.max), (2.5, 2.0, 3.0));
        // No bf16 figures: no bf16 ratio.
        assert!(spread(&rounds, |r| by_key("bf16_infer_speedup_vs_torch").ratio(r)).is_none());
    }

    #[test]
    fn median_of_even_and_odd_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
