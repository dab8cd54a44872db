//! `cargo xtask bench`: a paper protocol on an MVTec AD or VisA root with the `paper` (GPU) or `cpu`
//! preset, through the `iuf bench` code path (the release binary, so the reports and plots are
//! exactly the CLI's). Runs live in a resumable work folder under `target/`; the light outputs
//! (reports, plots, results JSON, never model files) are copied to `docs/results/<protocol>/<preset>/`
//! and `docs/results/README.md` indexes every result there.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use iuf_incremental::RunResults;

#[derive(clap::Args)]
pub struct Args {
    /// Dataset root: MVTec AD (for 14-1, 10-5, 3x5, 10-1x5) or VisA (11-1, 8-4, 8-1x4).
    #[arg(long)]
    pub data: PathBuf,
    /// A paper protocol (datasets/protocols.json).
    #[arg(long)]
    pub protocol: String,
    /// `paper` (the paper's schedule, for a GPU) or `cpu` (a 2-core machine).
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "paper"])]
    pub preset: String,
    /// Methods, comma-separated, or `all`.
    #[arg(long, default_value = "iuf,finetune,ewc,joint")]
    pub method: String,
    /// Build with CUDA and run on the first GPU.
    #[arg(long)]
    pub cuda: bool,
    /// Resumable run folder (default: target/xtask-bench/<protocol>-<preset>).
    #[arg(long)]
    pub work: Option<PathBuf>,
    /// Where the light outputs go (default: docs/results).
    #[arg(long)]
    pub results: Option<PathBuf>,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// `10-1x5` as a folder name (the paper names are already safe; `×` and spaces are normalised).
fn protocol_dir(name: &str) -> String {
    name.chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                'x'
            }
        })
        .collect::<String>()
        .to_lowercase()
}

pub fn run(args: Args) -> Result<()> {
    let paper = iuf_data::protocol::paper_protocols()?;
    let spec = protocol_dir(&args.protocol);
    let Some(protocol) = paper.iter().find(|p| p.name == spec) else {
        let names: Vec<&str> = paper.iter().map(|p| p.name.as_str()).collect();
        bail!(
            "`{}` is not a paper protocol; known: {} (custom orders: `iuf bench` directly)",
            args.protocol,
            names.join(", ")
        );
    };
    let root = workspace_root();
    let work = args.work.unwrap_or_else(|| {
        root.join("target/xtask-bench")
            .join(format!("{}-{}", protocol.name, args.preset))
    });
    let results_root = args.results.unwrap_or_else(|| root.join("docs/results"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["run", "--release", "-p", "iuf-cli"]);
    if args.cuda {
        cmd.args(["--features", "cuda"]);
    }
    cmd.arg("--");
    if args.cuda {
        cmd.args(["--device", "cuda"]);
    }
    cmd.arg("bench")
        .arg("--data")
        .arg(&args.data)
        .args([
            "--protocol",
            &protocol.name,
            "--method",
            &args.method,
            "--preset",
            &args.preset,
        ])
        .arg("--out")
        .arg(&work);
    eprintln!("xtask bench: {cmd:?}");
    let status = cmd
        .status()
        .context("running `cargo run --release -p iuf-cli -- bench`")?;
    if !status.success() {
        bail!(
            "`iuf bench` failed ({status}); its error is above (a re-run resumes after the last \
             finished step)"
        );
    }
    let dest = results_root.join(&protocol.name).join(&args.preset);
    copy_light_outputs(&work, &dest)?;
    write_index(&results_root)?;
    eprintln!("results: {}", dest.join("report.md").display());
    Ok(())
}

/// Copies reports, plots and results JSON (not model files or per-step state) from a bench folder.
pub fn copy_light_outputs(work: &Path, dest: &Path) -> Result<()> {
    std::fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    for f in ["report.md", "auroc.svg", "results.json"] {
        copy(&work.join(f), &dest.join(f))?;
    }
    let runs = read_runs(&work.join("results.json"))?;
    for r in &runs {
        let (from, to) = (work.join(&r.method), dest.join(&r.method));
        std::fs::create_dir_all(&to).with_context(|| format!("creating {}", to.display()))?;
        for f in ["report.md", "results.json"] {
            copy(&from.join(f), &to.join(f))?;
        }
    }
    Ok(())
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to)
        .map(|_| ())
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))
}

fn read_runs(path: &Path) -> Result<Vec<RunResults>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not an `iuf bench` results.json", path.display()))
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.1}", 100.0 * v))
}

/// `docs/results/README.md`: one row per method of every `<protocol>/<preset>/results.json`.
pub fn write_index(results_root: &Path) -> Result<()> {
    let mut entries: Vec<(String, String, PathBuf)> = Vec::new();
    for p in sorted_dirs(results_root)? {
        for preset in sorted_dirs(&p)? {
            let json = preset.join("results.json");
            if json.is_file() {
                let name = |x: &Path| {
                    x.file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned()
                };
                entries.push((name(&p), name(&preset), json));
            }
        }
    }
    let mut s = String::from(
        "# Benchmark results\n\nWritten by `cargo xtask bench`; each row links to its full report. ACC and FM \
         (forgetting) of image / pixel AUROC, percent.\n\n| protocol | preset | method | image ACC | pixel ACC | image FM | pixel FM | train (s) | complete |\n|---|---|---|---:|---:|---:|---:|---:|---|\n",
    );
    for (protocol, preset, json) in &entries {
        for r in read_runs(json)? {
            let _ = writeln!(
                s,
                "| [{protocol}]({protocol}/{preset}/report.md) | {preset} | {} | {} | {} | {} | {} | {:.0} | {} |",
                r.method,
                pct(r.acc.image),
                pct(r.acc.pixel),
                pct(r.fm.image),
                pct(r.fm.pixel),
                r.train_seconds.iter().sum::<f64>(),
                if r.complete { "yes" } else { "no" }
            );
        }
    }
    let _ = writeln!(
        s,
        "\nReproduce a row: `cargo xtask bench --data <MVTec AD or VisA root> --protocol <protocol> --preset <preset>`."
    );
    let path = results_root.join("README.md");
    std::fs::write(&path, s).with_context(|| format!("writing {}", path.display()))
}

fn sorted_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_names_become_folder_names() {
        assert_eq!(protocol_dir("10-1x5"), "10-1x5");
        assert_eq!(protocol_dir("3 x 5"), "3x5");
        assert_eq!(protocol_dir("10-1×5"), "10-1x5");
    }

    fn run_json(method: &str) -> serde_json::Value {
        serde_json::json!({
            "method": method,
            "protocol": {"name": "14-1", "steps": [["a"], ["b"]]},
            "config": serde_json::to_value(iuf_incremental::TrainConfig::tiny(8, 2)).unwrap(),
            "steps": [["a"], ["b"]],
            "classes": ["a", "b"],
            "metrics": {},
            "acc": {"image": 0.9, "pixel": 0.95},
            "fm": {"image": 0.01, "pixel": null},
            "train_seconds": [1.0, 2.0],
            "eval_seconds": [1.0, 1.0],
            "infer_ms_per_image": [1.0, 1.0],
            "model_bytes": [1, 1],
            "peak_rss_bytes": null,
            "complete": true
        })
    }

    #[test]
    fn light_outputs_are_copied_without_models_and_indexed() {
        let t = tempfile::tempdir().unwrap();
        let work = t.path().join("work");
        std::fs::create_dir_all(work.join("iuf")).unwrap();
        let all = serde_json::to_string(&[run_json("iuf")]).unwrap();
        for (f, text) in [
            ("report.md", "# report"),
            ("auroc.svg", "<svg/>"),
            ("results.json", all.as_str()),
            ("iuf/report.md", "# iuf"),
            ("iuf/results.json", "{}"),
            ("iuf/step-0.safetensors", "model"),
            ("iuf/run.json", "{}"),
        ] {
            std::fs::write(work.join(f), text).unwrap();
        }
        let results = t.path().join("results");
        copy_light_outputs(&work, &results.join("14-1/cpu")).unwrap();
        let dest = results.join("14-1/cpu");
        for f in [
            "report.md",
            "auroc.svg",
            "results.json",
            "iuf/report.md",
            "iuf/results.json",
        ] {
            assert!(dest.join(f).is_file(), "{f}");
        }
        assert!(!dest.join("iuf/step-0.safetensors").exists());
        assert!(!dest.join("iuf/run.json").exists());
        write_index(&results).unwrap();
        let index = std::fs::read_to_string(results.join("README.md")).unwrap();
        assert!(
            index.contains(
                "| [14-1](14-1/cpu/report.md) | cpu | iuf | 90.0 | 95.0 | 1.0 | - | 3 | yes |"
            ),
            "{index}"
        );
    }

    #[test]
    fn index_of_an_empty_results_folder_has_only_the_header() {
        let dir = tempfile::tempdir().unwrap();
        write_index(dir.path()).unwrap();
        let s = std::fs::read_to_string(dir.path().join("README.md")).unwrap();
        assert!(s.contains("| protocol | preset | method |"));
        assert_eq!(s.matches("](").count(), 0);
    }
}
