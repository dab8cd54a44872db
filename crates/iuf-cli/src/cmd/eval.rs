//! `iuf eval`: per-object image and pixel AUROC, average precision, PRO and F1-max of a model on a
//! dataset's test images (section 6), as a table or JSON. An object whose defect masks are all
//! empty gets its image-level metrics and no pixel metrics ("n/a", JSON `null`), with a warning;
//! the means are over the objects that have the metric.

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

/// The metrics of the table's columns: image AUROC, pixel AUROC, image AP, pixel AP, PRO, F1-max;
/// the pixel ones are `None` for an object without defect pixels in its masks.
fn columns(m: &ClassMetrics) -> [Option<f64>; 6] {
    [
        Some(m.image_auroc),
        m.pixel_auroc,
        Some(m.image_ap),
        m.pixel_ap,
        m.pro,
        Some(m.image_f1_max),
    ]
}

/// The mean of column `k` over the objects that have it; `None` when none has.
fn column_mean(metrics: &[ClassMetrics], k: usize) -> Option<f64> {
    let vals: Vec<f64> = metrics.iter().filter_map(|m| columns(m)[k]).collect();
    (!vals.is_empty()).then(|| vals.iter().sum::<f64>() / vals.len() as f64)
}

/// The mean of every metric over the objects that have it (`null` when none has).
fn mean(metrics: &[ClassMetrics]) -> serde_json::Value {
    let m = |k| column_mean(metrics, k);
    json!({
        "image_auroc": m(0),
        "pixel_auroc": m(1),
        "image_ap": m(2),
        "pixel_ap": m(3),
        "pro": m(4),
        "image_f1_max": m(5),
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
    let store = setup::feature_store(g, loaded, learner.image_size(), &device)?;
    let bars = Bars::new(g.json);
    let mut metrics = Vec::new();
    for c in &classes {
        let set = eval_set(&data, c, &learner)
            .with_context(|| format!("loading the test set of `{c}` from {}", a.data.display()))?;
        let (m, _) = evaluate(&learner, &set, &store, &bars)
            .with_context(|| format!("evaluating `{c}` from {}", a.data.display()))?;
        if let Some(w) = &m.warning {
            progress::status(g.json, &format!("warning: {w}"));
        }
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
    let row = |name: &str, images: String, m: [Option<f64>; 6], ms: String| -> Vec<String> {
        let mut r = vec![name.to_string(), images];
        r.extend(m.iter().map(|v| v.map_or_else(|| "n/a".to_string(), pct)));
        r.push(ms);
        r
    };
    let mut rows: Vec<Vec<String>> = metrics
        .iter()
        .map(|m| {
            row(
                &m.class,
                format!("{} ({} bad)", m.images, m.anomalous),
                columns(m),
                format!("{:.2}", 1000.0 * m.seconds_per_image),
            )
        })
        .collect();
    if metrics.len() > 1 {
        let means: [Option<f64>; 6] = std::array::from_fn(|k| column_mean(&metrics, k));
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
    let absent: Vec<&str> = metrics
        .iter()
        .filter(|m| !m.has_pixel_metrics())
        .map(|m| m.class.as_str())
        .collect();
    if !absent.is_empty() {
        println!(
            "(n/a: no pixel metrics for {}, whose masks hold no defect pixel; the means are over the \
             objects that have the metric)",
            absent.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
