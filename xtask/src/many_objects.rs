//! `cargo xtask many-objects`: a synthetic model of many objects for the scale measurements of
//! issue 26 (file size, `iuf serve` start-up, resident memory, latency): the objects of a few
//! real one-product models (`iuf train --classes X`), repeated under new names with the merge of
//! `iuf merge` (`iuf_incremental::merge`), so that each copy scores exactly as its product.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use iuf_incremental::merge::{self, Source};

const ABOUT: &str = "\
Object i of the output is the object of source i mod n, named `<object>-<i>` (the first n keep
their names, so they score as the sources under the sources' names). The file is
about (objects x the sources' size per object): mind the free disk, and delete it when done.";

#[derive(clap::Args)]
#[command(after_help = ABOUT)]
pub struct Args {
    /// One-product model files to repeat (`iuf train --classes X`), written with the same
    /// settings (the merge refuses others).
    #[arg(value_name = "MODEL", required = true)]
    pub models: Vec<PathBuf>,
    /// Objects in the output.
    #[arg(long, default_value_t = 300)]
    pub objects: usize,
    /// The output model file (written atomically).
    #[arg(long)]
    pub out: PathBuf,
    /// Without the update statistics, as `iuf merge --without-statistics` writes the file a
    /// service loads.
    #[arg(long)]
    pub without_statistics: bool,
}

pub fn run(a: Args) -> Result<()> {
    if a.objects == 0 {
        bail!("--objects 0: at least one object is needed");
    }
    let t = Instant::now();
    let loaded = a
        .models
        .iter()
        .map(|m| iuf_model::load_model(m, &candle_core::Device::Cpu))
        .collect::<std::result::Result<Vec<_>, _>>()
        .context("reading the source models")?;
    for (m, path) in loaded.iter().zip(&a.models) {
        if m.meta.learned.len() != 1 {
            bail!(
                "{} knows {} objects; give one-product models (`iuf train --classes X`)",
                path.display(),
                m.meta.learned.len()
            );
        }
    }
    let sources: Vec<Source<'_>> = (0..a.objects)
        .map(|n| {
            let i = n % loaded.len();
            let class = loaded[i].meta.learned[0].class.clone();
            let name = if n < loaded.len() {
                class.clone()
            } else {
                format!("{class}-{n}")
            };
            Source {
                path: &a.models[i],
                model: &loaded[i],
                rename: BTreeMap::from([(class, name)]),
            }
        })
        .collect();
    let mut merged = merge::merge(&sources).context("merging the copies")?;
    if a.without_statistics {
        merged = merged.without_statistics()?;
    }
    merged
        .save(&a.out)
        .with_context(|| format!("writing {}", a.out.display()))?;
    let bytes = std::fs::metadata(&a.out)?.len();
    println!(
        "{}: {} objects, {:.1} MiB ({:.2} MiB per object), {:.1} s",
        a.out.display(),
        merged.objects.len(),
        bytes as f64 / 1048576.0,
        bytes as f64 / 1048576.0 / merged.objects.len() as f64,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
