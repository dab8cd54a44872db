//! `iuf merge`: models learned apart (one `iuf train` per product, on any machine) merged into one
//! model file that knows every object and scores each as its source did.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use iuf_incremental::merge::{self, Source};
use iuf_inspect::open;
use serde_json::json;

use crate::setup;
use crate::Global;

/// Arguments of `iuf merge`.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The model files to merge (two or more), each written by `iuf train` or `iuf learn` with a
    /// method without a network (`memory`, the default, or `class-mean`), with the same backbone
    /// weights and settings, and with no object in two of them. The merged model lists their
    /// objects in this order. One model is enough with --without-statistics.
    #[arg(value_name = "MODEL", num_args = 1.., required = true)]
    pub models: Vec<PathBuf>,
    /// Leave out the statistics that exact updates need (each Gaussian's image count and scatter
    /// matrices: 13.9 of a default object's 18.8 MiB). The file a service loads: every object
    /// scores exactly as with them, and `iuf learn --more` refuses its objects, so keep the
    /// sources (add good images to them, then merge again).
    #[arg(long)]
    pub without_statistics: bool,
    /// Where to write the merged model (written atomically; an existing file is replaced, but
    /// never one of the inputs).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// The names `iuf merge` gives the model files in messages (they are positional arguments).
const NAMES: open::Names = open::Names {
    model: "`iuf merge`",
    weights: "--weights",
};

pub fn run(g: &Global, a: MergeArgs) -> Result<ExitCode> {
    if a.models.len() < 2 && !a.without_statistics {
        bail!(
            "one model given: merge needs two or more (or one with --without-statistics, which \
             writes it without its update statistics)"
        );
    }
    for (i, m) in a.models.iter().enumerate() {
        if let Some(j) = a.models[..i].iter().position(|o| {
            o == m || setup::resolved(o).is_some_and(|r| Some(r) == setup::resolved(m))
        }) {
            bail!(
                "model {} is given twice (arguments {} and {}); each model file is merged once",
                m.display(),
                j + 1,
                i + 1
            );
        }
    }
    let inputs: Vec<(&str, &Path)> = a.models.iter().map(|m| ("a model", m.as_path())).collect();
    setup::check_output("--out", &a.out, false, &inputs)?;
    setup::check_writable("--out", &a.out, false)?;
    let loaded = a
        .models
        .iter()
        .map(|m| open::read_model_file(m, &NAMES))
        .collect::<Result<Vec<_>>>()?;
    let sources: Vec<Source<'_>> = a
        .models
        .iter()
        .zip(&loaded)
        .map(|(p, m)| Source::new(p, m))
        .collect();
    let mut merged = merge::merge(&sources).context("cannot merge these models")?;
    if a.without_statistics {
        merged = merged.without_statistics()?;
    }
    if let Some(parent) = a.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating the folder of --out {}", a.out.display()))?;
    }
    merged
        .save(&a.out)
        .with_context(|| format!("writing the merged model to {}", a.out.display()))?;
    let bytes = std::fs::metadata(&a.out).map(|m| m.len()).unwrap_or(0);
    if g.json {
        super::print_json(&json!({
            "model": a.out,
            "model_bytes": bytes,
            "objects": merged.objects.iter().map(|(o, p)| json!({"object": o, "from": p})).collect::<Vec<_>>(),
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    for (o, p) in &merged.objects {
        println!("  {o} (from {})", p.display());
    }
    println!(
        "model: {} ({}), knows {} objects from {} files",
        a.out.display(),
        setup::mib(bytes),
        merged.objects.len(),
        a.models.len()
    );
    Ok(ExitCode::SUCCESS)
}
