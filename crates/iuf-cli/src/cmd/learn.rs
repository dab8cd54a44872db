//! `iuf learn`: teaches a trained model new objects from their images only (an incremental step of
//! the model's method; for IUF sections 4.5 and 4.6). The input model file is never modified.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use iuf_incremental::learn_classes;

use crate::progress::{self, Bars};
use crate::setup;
use crate::Global;

/// Arguments of `iuf learn`.
#[derive(Debug, Args)]
pub struct LearnArgs {
    /// The trained model (read only).
    #[arg(long, value_name = "FILE")]
    pub model: PathBuf,
    /// Dataset root holding the new objects (the old objects' images are not needed).
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// New objects to learn, comma-separated (default: every class of the dataset the model does
    /// not know yet).
    #[arg(long, value_name = "A,B,..")]
    pub classes: Option<String>,
    /// Where to write the updated model (must differ from --model).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Epochs of this step (default: the model's recipe, `iuf info` shows it). More epochs make a
    /// hard new object better learned; the old objects stay protected by the model's method.
    #[arg(long, value_name = "N")]
    pub epochs: Option<usize>,
    #[command(flatten)]
    pub precision: setup::PrecisionArg,
}

pub fn run(g: &Global, a: LearnArgs) -> Result<ExitCode> {
    if setup::resolved(&a.model) == setup::resolved(&a.out) {
        bail!(
            "--out {} is the input model; `iuf learn` never modifies its input: choose another --out",
            a.out.display()
        );
    }
    let mut inputs: Vec<(&str, &Path)> = vec![("--data", &a.data)];
    if let Some(w) = &g.weights {
        inputs.push(("--weights", w));
    }
    setup::check_output("--out", &a.out, false, &inputs)?;
    setup::check_writable("--out", &a.out, false)?;
    let device = setup::device(g)?;
    let mut learner = setup::load_model(&a.model, &device)?;
    a.precision.apply(&mut learner)?;
    let data = setup::dataset(&a.data)?;
    let known = learner.learned_classes();
    let classes = match &a.classes {
        Some(list) => setup::parse_classes(list)?,
        None => data
            .classes()
            .iter()
            .filter(|c| !known.contains(c))
            .cloned()
            .collect(),
    };
    if classes.is_empty() {
        bail!(
            "nothing to learn: every class of {} is already known to {} ({}); pass --classes or a \
             dataset with new objects",
            a.data.display(),
            a.model.display(),
            known.join(", ")
        );
    }
    setup::check_classes(&data, &classes)?;
    if let Some(c) = classes.iter().find(|c| known.contains(c)) {
        bail!(
            "{} has already learned `{c}` (it knows {}); an object is learned once: drop it from --classes",
            a.model.display(),
            known.join(", ")
        );
    }
    let meta = learner.meta();
    let need = classes
        .iter()
        .filter(|c| !meta.class_names.contains(c))
        .count();
    let slots = meta.config.num_classes;
    if meta.class_names.len() + need > slots {
        bail!(
            "{} has room for {slots} objects and {} are taken ({}); {} new one(s) do not fit. The \
             room is fixed when a model is created: train a new one with a larger --num-classes",
            a.model.display(),
            meta.class_names.len(),
            meta.class_names.join(", "),
            need
        );
    }
    if a.epochs.is_some() && !learner.has_network() {
        progress::status(
            g.json,
            &format!(
                "note: --epochs has no effect on a `{}` model (it trains no network)",
                learner.strategy()
            ),
        );
    }
    if let Some(epochs) = a.epochs {
        if epochs == 0 {
            bail!("--epochs must be at least 1");
        }
        let mut cfg = learner.config().clone();
        cfg.incremental.epochs = epochs;
        cfg.finetune_epochs = epochs;
        learner
            .set_config(&cfg)
            .with_context(|| format!("setting --epochs {epochs}"))?;
    }
    let variant = setup::model_backbone(&learner, &a.model)?;
    let loaded = setup::backbone(g, variant, &device)?;
    setup::check_backbone_weights(&learner, &a.model, &loaded)?;
    let store = setup::feature_store(g, loaded, learner.image_size(), &device)?;
    progress::status(
        g.json,
        &format!(
            "teaching {} ({}) the new object(s) {}; it knows {}",
            a.model.display(),
            learner.strategy(),
            classes.join(", "),
            known.join(", ")
        ),
    );
    let bars = Bars::new(g.json);
    let record =
        learn_classes(&mut learner, &data, &store, &classes, &bars).with_context(|| {
            format!(
                "learning {} from {} (model {} -> {})",
                classes.join(", "),
                a.data.display(),
                a.model.display(),
                a.out.display()
            )
        })?;
    super::train::save(&learner, &a.out)?;
    super::train::report_step(g, &learner, &record, &a.out)?;
    Ok(ExitCode::SUCCESS)
}
