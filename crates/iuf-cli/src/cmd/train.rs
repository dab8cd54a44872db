//! `iuf train`: a new model on the first objects (the base step), with thresholds calibrated on
//! held-out good images.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use iuf_backbone::EfficientNetVariant;
use iuf_incremental::{learn_classes, Learner, StepRecord, Strategy};
use serde_json::json;

use crate::progress::{self, Bars};
use crate::setup::{self, ConfigArgs};
use crate::Global;

/// Arguments of `iuf train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Dataset root in MVTec AD layout (<class>/train/good, <class>/test/<type>) or VisA layout.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Objects to learn, comma-separated (default: every class of the dataset).
    #[arg(long, value_name = "A,B,..")]
    pub classes: Option<String>,
    /// Where to write the model file (written atomically; an existing file is replaced).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// How the model will learn. `memory` (default): no network; each object keeps a memory of its
    /// normal patch features, learned in seconds, and nothing learned can be forgotten (the best
    /// measured on mvtec-mini). `iuf+memory`: IUF's reconstruction fused with the memory. The
    /// network methods: iuf, iuf-no-oasa, iuf-no-scl, iuf-no-update, finetune, joint, ewc, mas,
    /// si. Later `iuf learn` steps use the same method.
    #[arg(long, default_value = "memory", value_parser = parse_method)]
    pub method: Strategy,
    /// Room for objects: the largest number of objects this model can ever know (fixed at creation;
    /// later `iuf learn` steps fill the free slots).
    #[arg(long, value_name = "K", default_value_t = 15)]
    pub num_classes: usize,
    /// Frozen backbone of the new model: lite0, lite1, lite2 (pip-fetchable) or b0..b7 (with --weights).
    #[arg(long, default_value = "lite0")]
    pub backbone: String,
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// clap value parser for `--method`.
pub fn parse_method(s: &str) -> std::result::Result<Strategy, String> {
    Strategy::parse(s).map_err(|e| e.to_string())
}

pub fn run(g: &Global, a: TrainArgs) -> Result<ExitCode> {
    let mut inputs: Vec<(&str, &Path)> = vec![("--data", &a.data)];
    if let Some(w) = &g.weights {
        inputs.push(("--weights", w));
    }
    if let Some(c) = &a.config.config {
        inputs.push(("--config", c));
    }
    setup::check_output("--out", &a.out, false, &inputs)?;
    setup::check_writable("--out", &a.out, false)?;
    let device = setup::device(g)?;
    let data = setup::dataset(&a.data)?;
    let classes = match &a.classes {
        Some(list) => setup::parse_classes(list)?,
        None => data.classes().to_vec(),
    };
    setup::check_classes(&data, &classes)?;
    let variant = EfficientNetVariant::parse(&a.backbone).context("fix --backbone")?;
    let loaded = setup::backbone(g, variant, &device)?;
    let mut cfg = setup::train_config(&a.config, loaded.backbone.out_channels(), a.num_classes)?;
    setup::apply_tiles(&a.config.tiles, &mut cfg, &data, &classes)?;
    if classes.len() > cfg.model.num_classes {
        bail!(
            "{} objects requested but the model has room for {} (raise --num-classes)",
            classes.len(),
            cfg.model.num_classes
        );
    }
    let store = setup::feature_store(g, loaded, cfg.model.image_size(), &device)?;
    let mut learner = Learner::new(
        &cfg,
        a.method,
        store.backbone_id(),
        classes.clone(),
        &device,
    )
    .context("creating the model")?;
    let what = if a.method.trains_network() {
        format!(
            "training {} on {} ({} preset, {} base epochs)",
            a.method,
            classes.join(", "),
            cfg.preset,
            learner.config().base.epochs
        )
    } else {
        format!(
            "building the memory of {} (at most {} patches each; no network to train)",
            classes.join(", "),
            learner.config().memory.patches
        )
    };
    progress::status(g.json, &what);
    let bars = Bars::new(g.json);
    let record =
        learn_classes(&mut learner, &data, &store, &classes, &bars).with_context(|| {
            format!(
                "training on {} from {}",
                classes.join(", "),
                a.data.display()
            )
        })?;
    save(&learner, &a.out)?;
    report_step(g, &learner, &record, &a.out)?;
    Ok(ExitCode::SUCCESS)
}

/// Writes the model, creating the folder.
pub fn save(learner: &Learner, out: &Path) -> Result<()> {
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating the folder of --out {}", out.display()))?;
    }
    learner
        .save(out)
        .with_context(|| format!("writing the model to {}", out.display()))
}

/// What one `train` / `learn` step did, as text or JSON.
pub fn report_step(g: &Global, learner: &Learner, record: &StepRecord, out: &Path) -> Result<()> {
    let bytes = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    let q = learner.config().calibration.quantile;
    let thresholds: Vec<(String, Option<f32>)> = record
        .classes
        .iter()
        .map(|c| (c.clone(), learner.threshold(c, q)))
        .collect();
    if g.json {
        return super::print_json(&json!({
            "model": out,
            "model_bytes": bytes,
            "step": record,
            "learned": learner.learned_classes(),
            "threshold_quantile": q,
            "thresholds": thresholds.iter().map(|(c, t)| (c.clone(), *t)).collect::<std::collections::BTreeMap<_, _>>(),
        }));
    }
    if record.epochs == 0 {
        let sizes = learner.memory_sizes();
        let what = if record.classes.iter().any(|c| sizes.contains_key(c)) {
            let patches: Vec<String> = record
                .classes
                .iter()
                .map(|c| format!("{} patches", sizes.get(c).copied().unwrap_or(0)))
                .collect();
            format!("memory: {}", patches.join(", "))
        } else {
            let names: Vec<&str> = learner.scorers().iter().map(|s| s.name()).collect();
            format!("scorers: {}", names.join(", "))
        };
        println!(
            "step {}: learned {} from {} images in {:.1} s ({what})",
            record.step,
            record.classes.join(", "),
            record.images,
            record.train_seconds,
        );
    } else {
        println!(
        "step {}: learned {} from {} images in {:.1} s ({} epochs, {}, final loss {:.4}: rec {:.4}, ce {:.3}, sc {:.4})",
        record.step,
        record.classes.join(", "),
        record.images,
        record.train_seconds,
        record.epochs,
        record.optimizer,
        record.final_loss.total,
        record.final_loss.rec,
        record.final_loss.ce,
        record.final_loss.sc
    );
    }
    for (c, t) in &thresholds {
        match t {
            Some(t) => {
                println!("  threshold of {c} (quantile {q} of held-out good scores): {t:.4}")
            }
            None => {
                println!("  {c}: no held-out images, so no threshold (predict reports no decision)")
            }
        }
    }
    println!(
        "model: {} ({}), knows {}",
        out.display(),
        setup::mib(bytes),
        learner.learned_classes().join(", ")
    );
    Ok(())
}
