//! `iuf learn`: teaches a trained model new objects from their images only (an incremental step of
//! the model's method; for IUF sections 4.5 and 4.6), or with `--more` adds good images to objects
//! it has learned (memory methods). The input model file is never modified.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use iuf_incremental::learn_more;
use iuf_inspect::learn::{LearnRequest, Step};
use serde_json::json;

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
    /// Add the good images of `--data` (`<object>/train/good`) to objects the model has already
    /// learned (`--classes`, required) instead of learning new ones: the object's memory becomes
    /// a coreset of its old memory and the new patches, its Gaussian is updated exactly, its
    /// threshold recalibrated with the new images' hold-out; no other object changes. For the
    /// memory methods (`--method memory`); a network method is refused.
    #[arg(long)]
    pub more: bool,
    /// Epochs of this step (default: the model's recipe, `iuf info` shows it). More epochs make a
    /// hard new object better learned; the old objects stay protected by the model's method.
    #[arg(long, value_name = "N")]
    pub epochs: Option<usize>,
    #[command(flatten)]
    pub precision: setup::PrecisionArg,
}

pub fn run(g: &Global, a: LearnArgs) -> Result<ExitCode> {
    let device = setup::device(g)?;
    if a.more {
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
        let mut learner = setup::load_model(&a.model, &device)?;
        a.precision.apply(&mut learner)?;
        return more(g, &a, learner, &device);
    }
    let classes = a.classes.as_deref().map(setup::parse_classes).transpose()?;
    let request = LearnRequest {
        model: a.model,
        data: a.data,
        classes,
        out: a.out,
        epochs: a.epochs,
        precision: a.precision.precision,
    };
    let step = Step::learn(&request, &setup::resources(g, &device))?;
    super::train::run_step(g, step)
}

/// `iuf learn --more`: good images added to learned objects, one object after the other.
fn more(
    g: &Global,
    a: &LearnArgs,
    mut learner: iuf_incremental::Learner,
    device: &candle_core::Device,
) -> Result<ExitCode> {
    let Some(list) = &a.classes else {
        bail!(
            "--more adds good images to objects {} has learned: name them with --classes (it \
             knows {})",
            a.model.display(),
            learner.learned_classes().join(", ")
        );
    };
    if a.epochs.is_some() {
        bail!("--epochs has no meaning with --more: adding good images trains nothing");
    }
    let classes = setup::parse_classes(list)?;
    let data = setup::dataset(&a.data)?;
    setup::check_classes(&data, &classes)?;
    for c in &classes {
        learner.check_add_good(c).with_context(|| {
            format!(
                "--more: cannot add good images to `{c}` of {}",
                a.model.display()
            )
        })?;
    }
    let variant = setup::model_backbone(&learner, &a.model)?;
    let loaded = setup::backbone(g, variant, device)?;
    setup::check_backbone_weights(&learner, &a.model, &loaded)?;
    let store = setup::feature_store(g, loaded, learner.image_size(), device)?;
    let bars = Bars::new(g.json);
    let mut records = Vec::new();
    for c in &classes {
        progress::status(
            g.json,
            &format!(
                "adding the good images of {} to `{c}` of {}",
                a.data.join(c).join("train").join("good").display(),
                a.model.display()
            ),
        );
        let r = learn_more(&mut learner, &data, &store, c, &bars).with_context(|| {
            format!(
                "adding good images of `{c}` from {} (model {} -> {})",
                a.data.display(),
                a.model.display(),
                a.out.display()
            )
        })?;
        records.push(r);
    }
    iuf_inspect::learn::save(&learner, &a.out)?;
    let sha = std::fs::read(&a.out)
        .map(|b| iuf_backbone::fetch::sha256_hex(&b))
        .unwrap_or_default();
    if g.json {
        super::print_json(&json!({
            "model": a.out,
            "model_sha256": sha,
            "added": records,
        }))?;
    } else {
        for r in &records {
            let t = |v: Option<f32>| v.map_or("none".to_string(), |v| format!("{v:.4}"));
            println!(
                "`{}`: {} good image(s) added, {} held out to recalibrate; threshold {} -> {} ({:.1} s)",
                r.object,
                r.train,
                r.holdout,
                t(r.threshold_before),
                t(r.threshold_after),
                r.seconds
            );
        }
        println!("wrote {} (sha256 {sha})", a.out.display());
    }
    Ok(ExitCode::SUCCESS)
}
