//! `iuf train`: a new model on the first objects (the base step), with thresholds calibrated on
//! held-out good images.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use iuf_incremental::Strategy;
use iuf_inspect::learn::{Learned, Step, TrainRequest};

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
    let device = setup::device(g)?;
    let classes = a.classes.as_deref().map(setup::parse_classes).transpose()?;
    let request = TrainRequest {
        data: a.data,
        classes,
        out: a.out,
        method: a.method,
        num_classes: a.num_classes,
        backbone: a.backbone,
        config: a.config.options(),
    };
    let step = Step::train(&request, &setup::resources(g, &device))?;
    run_step(g, step)
}

/// Runs a checked `train` or `learn` step with progress bars and reports it.
pub fn run_step(g: &Global, step: Step) -> Result<ExitCode> {
    for note in &step.notes {
        progress::status(g.json, note);
    }
    progress::status(g.json, &step.description);
    let learned = step.run(&Bars::new(g.json))?;
    learned.save()?;
    report_step(g, &learned)?;
    Ok(ExitCode::SUCCESS)
}

/// What one `train` / `learn` step did, as text or JSON.
pub fn report_step(g: &Global, learned: &Learned) -> Result<()> {
    if g.json {
        return super::print_json(&learned.summary());
    }
    let Learned {
        learner,
        record,
        out,
    } = learned;
    let bytes = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    let q = learner.config().calibration.quantile;
    let thresholds = learned.thresholds();
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
                // The good scores the quantile is of: held out, and with cross-fitting
                // (`calibration.folds`) every training image scored by a model without it.
                let of = match learner.object_images().get(c.as_str()) {
                    Some(n) if n.cross_fitted > 0 => format!(
                        "{} good scores: {} held out, {} cross-fitted",
                        n.holdout + n.cross_fitted,
                        n.holdout,
                        n.cross_fitted
                    ),
                    _ => "held-out good scores".to_string(),
                };
                println!("  threshold of {c} (quantile {q} of {of}): {t:.4}")
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
