//! `cargo xtask tidy`: the gate before a commit: every `.rs` file starts with a `//!` line saying
//! what it holds, `cargo fmt --check` is clean, and clippy finds nothing with `-D warnings`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

#[derive(clap::Args)]
pub struct Args {
    /// Skip clippy (the slow part) and check headers and formatting only.
    #[arg(long)]
    pub no_clippy: bool,
}

/// Folders that hold the project's sources (build output and vendored trees excluded).
const SOURCE_DIRS: [&str; 2] = ["crates", "xtask"];

/// `.rs` files under `dir` whose first line is not a `//!` doc comment.
pub fn missing_headers(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut bad = Vec::new();
    visit(dir, &mut bad)?;
    bad.sort();
    Ok(bad)
}

fn visit(dir: &Path, bad: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with('.') || name == "target" {
            continue;
        }
        if path.is_dir() {
            visit(&path, bad)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            if !text.lines().next().is_some_and(|l| l.starts_with("//!")) {
                bad.push(path);
            }
        }
    }
    Ok(())
}

fn cargo(root: &Path, args: &[&str]) -> Result<bool> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("tidy: cargo {}", args.join(" "));
    let status = Command::new(cargo)
        .current_dir(root)
        .args(args)
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    Ok(status.success())
}

pub fn run(args: Args) -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf();
    let mut failed = Vec::new();
    let mut missing = Vec::new();
    for d in SOURCE_DIRS {
        missing.extend(missing_headers(&root.join(d))?);
    }
    if !missing.is_empty() {
        for p in &missing {
            eprintln!(
                "tidy: {} does not start with a `//!` line saying what the file holds",
                p.strip_prefix(&root).unwrap_or(p).display()
            );
        }
        failed.push("headers");
    }
    if !cargo(&root, &["fmt", "--all", "--", "--check"])? {
        failed.push("fmt (run `cargo fmt --all`)");
    }
    if !args.no_clippy
        && !cargo(
            &root,
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
        )?
    {
        failed.push("clippy");
    }
    if !failed.is_empty() {
        bail!("tidy failed: {}", failed.join(", "));
    }
    eprintln!("tidy: all clean");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_without_a_module_doc_line_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("src");
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::create_dir_all(dir.path().join("target")).unwrap();
        std::fs::write(sub.join("good.rs"), "//! Holds good things.\nfn a() {}\n").unwrap();
        std::fs::write(sub.join("bad.rs"), "// not a doc line\n").unwrap();
        std::fs::write(sub.join("empty.rs"), "").unwrap();
        std::fs::write(sub.join("notes.txt"), "no header needed").unwrap();
        std::fs::write(dir.path().join("target/gen.rs"), "fn generated() {}\n").unwrap();
        let bad = missing_headers(dir.path()).unwrap();
        assert_eq!(bad, vec![sub.join("bad.rs"), sub.join("empty.rs")]);
    }
}
