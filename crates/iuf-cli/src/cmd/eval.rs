//! `iuf eval`: per-object image and pixel AUROC, average precision, PRO and F1-max of a model on a
//! dataset's test images (section 6), as a table or JSON.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use iuf_incremental::eval::{evaluate, ClassMetrics};
use iuf_incremental::runner::eval_set;
use serde_json::json;

use crate::progress::{self, Bars};
use crate::setup;
use crate::table::{self, pct};
use crate::Global;

/// Arguments of `iuf eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The model file.
    #[arg(long, value_name = "FILE")]
    pub model: PathBuf,
    /// Dataset root with the test images (MVTec AD or VisA layout).
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Objects to evaluate, comma-separated (default: those the model has learned that the dataset
    /// holds). Objects the model has not learned are evaluated too, with a warning.
    #[arg(long, value_name = "A,B,..")]
    pub classes: Option<String>,
    /// Also write the JSON result to this file.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub precision: setup::PrecisionArg,
}

/// The mean of every metric over the objects.
fn mean(metrics: &[ClassMetrics]) -> serde_json::Value {
    let n = metrics.len().max(1) as f64;
    let m = |f: fn(&ClassMetrics) -> f64| metrics.iter().map(f).sum::<f64>() / n;
    json!({
        "image_auroc": m(|c| c.image_auroc),
        "pixel_auroc": m(|c| c.pixel_auroc),
        "image_ap": m(|c| c.image_ap),
        "pixel_ap": m(|c| c.pixel_ap),
        "pro": m(|c| c.pro),
        "image_f1_max": m(|c| c.image_f1_max),
    })
}

pub fn run(g: &Global, a: EvalArgs) -> Result<ExitCode> {
    if let Some(out) = &a.out {
        let mut inputs: Vec<(&str, &Path)> = vec![("--model", &a.model), ("--data", &a.data)];
        if let Some(w) = &g.weights {
            inputs.push(("--weights", w));
        }
        setup::check_output("--out", out, false, &inputs)?;
        setup::check_writable("--out", out, false)?;
    }
    let device = setup::device(g)?;
    let mut learner = setup::load_model(&a.model, &device)?;
    a.precision.apply(&mut learner)?;
    let data = setup::dataset(&a.data)?;
    let learned = learner.learned_classes();
    let classes = match &a.classes {
        Some(list) => setup::parse_classes(list)?,
        None => {
            let common: Vec<String> = learned
                .iter()
                .filter(|c| data.classes().contains(c))
                .cloned()
                .collect();
            if common.is_empty() {
                bail!(
                    "{} knows {} but {} holds {}: nothing in common; pass --classes or another --data",
                    a.model.display(),
                    learned.join(", "),
                    a.data.display(),
                    data.classes().join(", ")
                );
            }
            common
        }
    };
    setup::check_classes(&data, &classes)?;
    for c in classes.iter().filter(|c| !learned.contains(c)) {
        progress::status(
            g.json,
            &format!(
                "warning: {} has not learned `{c}`; evaluating it anyway",
                a.model.display()
            ),
        );
    }
    let variant = setup::model_backbone(&learner, &a.model)?;
    let loaded = setup::backbone(g, variant, &device)?;
    setup::check_backbone_weights(&learner, &a.model, &loaded)?;
    let store = setup::feature_store(g, loaded, setup::image_size(&learner), &device)?;
    let bars = Bars::new(g.json);
    let mut metrics = Vec::new();
    for c in &classes {
        let set = eval_set(&data, &store, c, learner.uses_memory(), &bars).with_context(|| {
            format!("loading the test images of `{c}` from {}", a.data.display())
        })?;
        let (m, _) =
            evaluate(&learner, &set, &bars).with_context(|| format!("evaluating `{c}`"))?;
        metrics.push(m);
    }
    let result = json!({
        "model": a.model,
        "data": a.data,
        "classes": metrics,
        "mean": mean(&metrics),
    });
    if let Some(out) = &a.out {
        let text = serde_json::to_vec_pretty(&result)?;
        iuf_incremental::runner::write_atomic(out, &text)
            .with_context(|| format!("writing --out {}", out.display()))?;
    }
    if g.json {
        super::print_json(&result)?;
        return Ok(ExitCode::SUCCESS);
    }
    let row = |name: &str, images: String, m: [f64; 6], ms: String| -> Vec<String> {
        let mut r = vec![name.to_string(), images];
        r.extend(m.iter().map(|v| pct(*v)));
        r.push(ms);
        r
    };
    let vals = |m: &ClassMetrics| {
        [
            m.image_auroc,
            m.pixel_auroc,
            m.image_ap,
            m.pixel_ap,
            m.pro,
            m.image_f1_max,
        ]
    };
    let mut rows: Vec<Vec<String>> = metrics
        .iter()
        .map(|m| {
            row(
                &m.class,
                format!("{} ({} bad)", m.images, m.anomalous),
                vals(m),
                format!("{:.2}", 1000.0 * m.seconds_per_image),
            )
        })
        .collect();
    if metrics.len() > 1 {
        let n = metrics.len() as f64;
        let means: [f64; 6] =
            std::array::from_fn(|k| metrics.iter().map(|m| vals(m)[k]).sum::<f64>() / n);
        rows.push(row("mean", String::new(), means, String::new()));
    }
    print!(
        "{}",
        table::render(
            &[
                "object",
                "test images",
                "image AUROC",
                "pixel AUROC",
                "image AP",
                "pixel AP",
                "PRO",
                "F1-max",
                "ms/image"
            ],
            &rows
        )
    );
    println!("(percent; ms/image is the model's inference time, backbone features excluded)");
    Ok(ExitCode::SUCCESS)
}
