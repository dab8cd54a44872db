//! `iuf bench`: an incremental protocol for one or several methods side by side. Per method a
//! resumable run folder with `results.json` and `report.md`; combined, a `report.md` with the
//! comparison (ACC, FM and efficiency: training time, inference time, peak memory, model size), a
//! `results.json` holding every run, and `auroc.svg`, the per-step image and pixel AUROC of every
//! object.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use iuf_backbone::EfficientNetVariant;
use iuf_data::protocol::Protocol;
use iuf_data::DatasetRoot;
use iuf_incremental::runner::{
    by_size_markdown, comparison_markdown, run_name, run_protocol, write_atomic,
};
use iuf_incremental::{FeatureStore, Progress, RunResults, RunSpec, Strategy, TrainConfig};
use serde_json::json;

use crate::progress;
use crate::progress::Bars;
use crate::setup::{self, ConfigArgs};
use crate::table::{self, pct};
use crate::{plot, Global};

/// Arguments of `iuf bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Dataset root (MVTec AD or VisA layout).
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// The protocol: a paper protocol (MVTec AD: 14-1, 10-5, 3x5, 10-1x5; VisA: 11-1, 8-4, 8-1x4),
    /// `joint` (every object at once), or steps of objects such as `bottle,pill | tire | magnetic_tile`.
    #[arg(long, value_name = "SPEC")]
    pub protocol: String,
    /// Methods, comma-separated, or `all`: iuf, iuf-no-oasa, iuf-no-scl, iuf-no-update, finetune,
    /// joint, ewc, mas, si, and class-mean (untrained reference: distance to each object's mean
    /// feature per position; every trained method should beat it).
    #[arg(long, value_name = "A,B,..", default_value = "iuf,finetune")]
    pub method: String,
    /// Output folder (created). Re-running with the same folder resumes after the last finished step.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Room for objects K (default: the number of objects in the protocol).
    #[arg(long, value_name = "K")]
    pub num_classes: Option<usize>,
    /// Frozen backbone: lite0 (default), lite1, lite2, or b0..b7 with --weights.
    #[arg(long, default_value = "lite0")]
    pub backbone: String,
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Parses `iuf,finetune` or `all`.
pub fn parse_methods(list: &str) -> Result<Vec<Strategy>> {
    if list.trim() == "all" {
        return Ok(Strategy::ALL.to_vec());
    }
    let mut out = Vec::new();
    for m in list.split(',') {
        let s = Strategy::parse(m).context("fix --method")?;
        if out.contains(&s) {
            bail!("--method `{list}` lists `{s}` twice");
        }
        out.push(s);
    }
    Ok(out)
}

/// A benchmark ready to run.
pub struct BenchPlan<'a> {
    pub data: &'a DatasetRoot,
    pub protocol: Protocol,
    pub methods: Vec<Strategy>,
    pub config: TrainConfig,
    pub out: PathBuf,
    /// The command that reproduces the run, for the report.
    pub command: String,
}

/// Quotes a command-line word for a POSIX shell when needed.
pub fn shell_word(w: &str) -> String {
    if !w.is_empty()
        && w.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=,:+@%".contains(c))
    {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', r"'\''"))
    }
}

/// This process's command line, quoted.
pub fn command_line() -> String {
    let mut words: Vec<String> = std::env::args().collect();
    if let Some(first) = words.first_mut() {
        *first = "iuf".into();
    }
    words
        .iter()
        .map(|w| shell_word(w))
        .collect::<Vec<_>>()
        .join(" ")
}

impl BenchPlan<'_> {
    /// The runs, in order: every method on the whole view, and with a tiled view in the
    /// configuration, every memory method again with it (`<method>-tiles`).
    pub fn runs(&self) -> Vec<(Strategy, bool)> {
        let mut out = Vec::new();
        for &m in &self.methods {
            out.push((m, false));
            if self.config.tiles.is_some() && m.uses_memory() {
                out.push((m, true));
            }
        }
        out
    }
}

/// Runs every method of `plan` in turn (each resumable) and writes the combined outputs.
pub fn run_plan(
    plan: &BenchPlan<'_>,
    store: &FeatureStore,
    bars: &dyn Progress,
    quiet: bool,
) -> Result<Vec<RunResults>> {
    // Check every object's files before hours of training, not in the middle of it.
    plan.data
        .index(&plan.protocol.all_classes())
        .with_context(|| format!("checking the dataset {}", plan.data.root().display()))?;
    std::fs::create_dir_all(&plan.out)
        .with_context(|| format!("creating --out {}", plan.out.display()))?;
    let mut runs = Vec::new();
    for (method, tiled) in plan.runs() {
        let name = run_name(method.name(), tiled);
        let dir = plan.out.join(&name);
        progress::status(
            quiet,
            &format!(
                "== {name}: protocol `{}` -> {}",
                plan.protocol.name,
                dir.display()
            ),
        );
        // Each method's peak memory is its own (the mark is process-wide otherwise).
        setup::reset_peak_rss();
        let mut config = plan.config.clone();
        if !tiled {
            config.tiles = None;
        }
        let spec = RunSpec {
            method,
            protocol: plan.protocol.clone(),
            config,
            dir: dir.clone(),
        };
        let results = run_protocol(&spec, plan.data, store, bars).with_context(|| {
            format!(
                "running {name} in {} (an interrupted run resumes; delete the folder to start over)",
                dir.display()
            )
        })?;
        runs.push(results);
    }
    write_atomic(
        &plan.out.join("auroc.svg"),
        plot::auroc_svg(&runs).as_bytes(),
    )?;
    let all = serde_json::to_vec_pretty(&runs).context("serialising results")?;
    write_atomic(&plan.out.join("results.json"), &all)?;
    write_atomic(
        &plan.out.join("report.md"),
        report(plan, store, &runs).as_bytes(),
    )?;
    Ok(runs)
}

fn report(plan: &BenchPlan<'_>, store: &FeatureStore, runs: &[RunResults]) -> String {
    let c = &plan.config;
    let t = &c.model.transformer;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# `{}` on {}\n",
        plan.protocol.name,
        plan.data.root().display()
    );
    let steps: Vec<String> = plan.protocol.steps.iter().map(|st| st.join(", ")).collect();
    let _ = writeln!(s, "Steps: {}\n", steps.join(" | "));
    let _ = writeln!(
        s,
        "Preset `{}`: D {}, {} heads, {}+{} layers, batch {}, {} base epochs, {} incremental epochs \
         (IUF, constrained SGD) / {} (fine-tuning baselines, AdamW); K = {}; backbone {}.\n",
        c.preset,
        t.hidden_dim,
        t.nheads,
        t.num_encoder_layers,
        t.num_decoder_layers,
        c.batch_size,
        c.base.epochs,
        c.incremental.epochs,
        c.finetune_epochs,
        c.model.num_classes,
        store.backbone_id().name
    );
    if let Some(t) = &c.tiles {
        let tl = &t.tiling;
        let _ = writeln!(
            s,
            "Views: the whole image at {0} px, and {1} x {1} tiles of {2} px (overlap at least {3}) \
             cut from the image resized to {4} px, each at {0} px, with {5} memory (memory \
             methods); maps fused at {6} px.\n",
            c.model.image_size(),
            tl.per_side(),
            tl.tile,
            tl.overlap,
            tl.input,
            if t.per_position { "a per-position" } else { "one shared" },
            t.map_side(c.model.image_size()),
        );
    }
    let _ = writeln!(s, "## Comparison\n");
    let _ = writeln!(
        s,
        "ACC: mean AUROC over every object after the last step; FM: mean drop from an object's best \
         AUROC to its last (forgetting). Percent.\n"
    );
    s.push_str(&comparison_markdown(runs));
    let _ = writeln!(
        s,
        "\nTraining time is the sum over steps; inference time is the model per test image after the \
         last step (backbone features come from the cache); peak memory is the process's resident \
         set while the method ran; model size is the file after the last step.\n"
    );
    let sizes = by_size_markdown(runs);
    if !sizes.is_empty() {
        let _ = writeln!(
            s,
            "## By defect size\n\nAfter the last step, averaged over objects and defect kinds: \
             image AUROC of the size's images against the good ones, pixel AUROC over them, and \
             the share flagged at the calibrated threshold. Per object and kind: each method's \
             report.md.\n"
        );
        s.push_str(&sizes);
        s.push('\n');
    }
    let _ = writeln!(s, "## Per-step AUROC\n");
    let _ = writeln!(
        s,
        "![per-step image and pixel AUROC of every object](auroc.svg)\n"
    );
    let _ = writeln!(s, "Per-method details (every metric, every step):\n");
    for r in runs {
        let _ = writeln!(s, "- [{}]({}/report.md)", r.name(), r.name());
    }
    let _ = writeln!(s, "\nReproduce:\n\n    {}", plan.command);
    s
}

/// The comparison as a terminal table, then a line for each method with objects left out of the
/// pixel ACC / FM (their masks hold no defect pixel).
pub fn comparison_table(runs: &[RunResults]) -> String {
    let o = |v: Option<f64>| v.map_or("-".into(), pct);
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                r.name(),
                o(r.acc.image),
                o(r.acc.pixel),
                o(r.fm.image),
                o(r.fm.pixel),
                format!("{:.0}", r.train_seconds.iter().sum::<f64>()),
                format!("{:.2}", r.infer_ms_per_image.last().copied().unwrap_or(0.0)),
                r.peak_rss_bytes.map_or("-".into(), setup::mib),
                r.model_bytes.last().map_or("-".into(), |b| setup::mib(*b)),
            ]
        })
        .collect();
    let mut s = table::render(
        &[
            "method",
            "image ACC",
            "pixel ACC",
            "image FM",
            "pixel FM",
            "train (s)",
            "ms/image",
            "peak memory",
            "model size",
        ],
        &rows,
    );
    for r in runs {
        let absent = r.without_pixel_metrics();
        if !absent.is_empty() {
            s.push_str(&format!(
                "({}: no pixel metrics for {}, whose masks hold no defect pixel; pixel ACC and FM are \
                 over the other objects)\n",
                r.method,
                absent.join(", ")
            ));
        }
    }
    s
}

/// The short JSON summary of a benchmark.
pub fn summary_json(out: &Path, runs: &[RunResults]) -> serde_json::Value {
    json!({
        "out": out,
        "report": out.join("report.md"),
        "plot": out.join("auroc.svg"),
        "methods": runs.iter().map(|r| json!({
            "method": r.method,
            "run": r.name(),
            "acc": r.acc,
            "fm": r.fm,
            "train_seconds": r.train_seconds,
            "infer_ms_per_image": r.infer_ms_per_image,
            "peak_rss_bytes": r.peak_rss_bytes,
            "model_bytes": r.model_bytes,
            "results": out.join(r.name()).join("results.json"),
            "warnings": r.warnings,
        })).collect::<Vec<_>>(),
    })
}

/// The combined files bench writes in `--out`.
const COMBINED: [&str; 3] = ["report.md", "results.json", "auroc.svg"];

/// Before any work: bench replaces no file it did not write. A method's folder must be a run folder
/// of bench (its `run.json` says which run; resuming checks it is this one) or hold nothing yet;
/// the combined files may be replaced only in a folder bench recognises as its own, one holding a
/// run folder.
fn check_own_files(out: &Path, runs: &[(Strategy, bool)]) -> Result<()> {
    if !out.is_dir() {
        return Ok(());
    }
    let is_run_dir = |name: &str| out.join(name).join("run.json").is_file();
    for &(m, tiled) in runs {
        let name = run_name(m.name(), tiled);
        let dir = out.join(&name);
        if dir.symlink_metadata().is_err() || is_run_dir(&name) {
            continue;
        }
        // Hidden entries are at most the temporaries of a killed run (removed when it resumes).
        let holds_files = !dir.is_dir()
            || std::fs::read_dir(&dir)
                .with_context(|| format!("reading {}", dir.display()))?
                .flatten()
                .any(|e| !e.file_name().to_string_lossy().starts_with('.'));
        if holds_files {
            bail!(
                "{} holds files but no run.json, so it is not a run folder of iuf bench, which \
                 would write its {m} run there; bench replaces no file it did not write: move them \
                 away or choose another --out",
                dir.display()
            );
        }
    }
    if Strategy::ALL
        .iter()
        .flat_map(|m| [run_name(m.name(), false), run_name(m.name(), true)])
        .any(|n| is_run_dir(&n))
    {
        return Ok(());
    }
    for name in COMBINED {
        let f = out.join(name);
        if f.symlink_metadata().is_ok() {
            bail!(
                "{} already exists and bench did not write it (--out {} holds no run folder of iuf \
                 bench); bench replaces no file it did not write: choose an empty or new --out, or \
                 move the file away",
                f.display(),
                out.display()
            );
        }
    }
    Ok(())
}

pub fn run(g: &Global, a: BenchArgs) -> Result<ExitCode> {
    let mut inputs: Vec<(&str, &Path)> = vec![("--data", &a.data)];
    if let Some(w) = &g.weights {
        inputs.push(("--weights", w));
    }
    if let Some(c) = &a.config.config {
        inputs.push(("--config", c));
    }
    setup::check_output("--out", &a.out, true, &inputs)?;
    setup::check_writable("--out", &a.out, true)?;
    let methods = parse_methods(&a.method)?;
    let tiled = a.config.tiles.tile.is_some();
    let planned: Vec<(Strategy, bool)> = methods
        .iter()
        .flat_map(|&m| [(m, false), (m, true)])
        .filter(|&(m, t)| !t || (tiled && m.uses_memory()))
        .collect();
    check_own_files(&a.out, &planned)?;
    let device = setup::device(g)?;
    let data = setup::dataset(&a.data)?;
    let protocol = Protocol::parse(&a.protocol, data.classes()).context("fix --protocol")?;
    let variant = EfficientNetVariant::parse(&a.backbone).context("fix --backbone")?;
    let loaded = setup::backbone(g, variant, &device)?;
    let k = a.num_classes.unwrap_or(protocol.all_classes().len());
    let mut config = setup::train_config(&a.config, loaded.backbone.out_channels(), k)?;
    setup::apply_tiles(&a.config.tiles, &mut config, &data, &protocol.all_classes())?;
    if protocol.all_classes().len() > config.model.num_classes {
        bail!(
            "the protocol has {} objects but the model has room for {} (raise --num-classes)",
            protocol.all_classes().len(),
            config.model.num_classes
        );
    }
    let store = setup::feature_store(g, loaded, config.model.image_size(), &device)?;
    let plan = BenchPlan {
        data: &data,
        protocol,
        methods,
        config,
        out: a.out.clone(),
        command: command_line(),
    };
    let bars = Bars::new(g.json);
    let runs = run_plan(&plan, &store, &bars, g.json)?;
    progress::clear();
    if g.json {
        super::print_json(&summary_json(&a.out, &runs))?;
    } else {
        print!("{}", comparison_table(&runs));
        let sizes = by_size_markdown(&runs);
        if !sizes.is_empty() {
            print!("\nby defect size (after the last step):\n{sizes}");
        }
        println!(
            "(ACC and FM in percent)\nreport: {}\nplot:   {}",
            a.out.join("report.md").display(),
            a.out.join("auroc.svg").display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
