//! `iuf threshold`: sets one object's decision threshold after learning, by a quantile of its
//! held-out good scores or by value, and records who set it when. The input model file is never
//! modified; the new one differs only in its metadata (every tensor is unchanged).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;
use iuf_incremental::ThresholdRule;
use serde_json::json;

use crate::setup;
use crate::Global;

/// Arguments of `iuf threshold`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("rule").required(true).args(["quantile", "value"])))]
pub struct ThresholdArgs {
    /// The model (read only).
    #[arg(long, value_name = "FILE")]
    pub model: PathBuf,
    /// The object whose threshold is set (one the model has learned; `iuf info` lists them).
    #[arg(long, value_name = "NAME")]
    pub object: String,
    /// The threshold is this quantile (0-1) of the object's held-out good image scores (the
    /// sketch kept at calibration, and updated by `learn --more`): 0.995 calls fewer good images
    /// defects than 0.99, and misses more defects.
    #[arg(long, value_name = "Q")]
    pub quantile: Option<f64>,
    /// The threshold is this image score (the `score` of `predict --json`).
    #[arg(long, value_name = "V", allow_negative_numbers = true)]
    pub value: Option<f32>,
    /// Who sets it, recorded in the model file (default: $USER, else `unknown`).
    #[arg(long, value_name = "NAME")]
    pub by: Option<String>,
    /// Where to write the model with the new threshold (must differ from --model).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

pub fn run(g: &Global, a: ThresholdArgs) -> Result<ExitCode> {
    if setup::resolved(&a.model) == setup::resolved(&a.out) {
        bail!(
            "--out {} is the input model; `iuf threshold` never modifies its input: choose another --out",
            a.out.display()
        );
    }
    setup::check_output("--out", &a.out, false, &[("--model", &a.model)])?;
    setup::check_writable("--out", &a.out, false)?;
    let rule = match (a.quantile, a.value) {
        (Some(q), None) => {
            if !(0.0..=1.0).contains(&q) {
                bail!("--quantile must lie in [0, 1]; found {q}");
            }
            ThresholdRule::Quantile(q)
        }
        (None, Some(v)) => {
            if !v.is_finite() {
                bail!("--value must be a finite number; found {v}");
            }
            ThresholdRule::Value(v)
        }
        _ => bail!("give exactly one of --quantile and --value"),
    };
    let by =
        a.by.clone()
            .or_else(|| std::env::var("USER").ok())
            .filter(|s| !s.trim().is_empty())
            .unwrap_or_else(|| "unknown".into());
    let mut learner = setup::load_model(&a.model, &Device::Cpu)?;
    let before = learner.threshold(&a.object, learner.config().calibration.quantile);
    let setting = learner
        .set_threshold(&a.object, rule, &by)
        .with_context(|| {
            format!(
                "setting the threshold of `{}` in {}",
                a.object,
                a.model.display()
            )
        })?;
    iuf_inspect::learn::save(&learner, &a.out)?;
    report(g, &a.out, &a.object, before, &setting)?;
    Ok(ExitCode::SUCCESS)
}

fn report(
    g: &Global,
    out: &Path,
    object: &str,
    before: Option<f32>,
    s: &iuf_incremental::ThresholdSetting,
) -> Result<()> {
    let sha = std::fs::read(out)
        .map(|b| iuf_backbone::fetch::sha256_hex(&b))
        .with_context(|| format!("reading back {}", out.display()))?;
    if g.json {
        return super::print_json(&json!({
            "model": out,
            "model_sha256": sha,
            "object": object,
            "threshold_before": before,
            "threshold": s,
        }));
    }
    let before = before.map_or("none".into(), |t| format!("{t:.4}"));
    println!(
        "`{object}`: threshold {before} -> {:.4} ({}), set by {} at {}",
        s.value, s.rule, s.set_by, s.set_at
    );
    println!("wrote {} (sha256 {sha})", out.display());
    Ok(())
}
