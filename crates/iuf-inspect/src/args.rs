//! Checks of a front end's arguments before any work starts, shared by the `iuf` program and the
//! bindings: how the caller spells an argument in messages ([`Spelling`]), output paths that
//! could replace an input or cannot be written, the dataset folder and the class list.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use iuf_data::DatasetRoot;

use crate::open::Names;

/// How a front end names its arguments in messages: the `iuf` program's flags (`--tile-input`)
/// or a function's keyword arguments (`tile_input`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spelling {
    /// `--data`, `--no-feature-cache`.
    Flags,
    /// `data`, `feature_cache=False`.
    Keywords,
}

impl Spelling {
    /// How the caller names the argument the `iuf` program calls `--{flag}`.
    pub fn arg(self, flag: &str) -> String {
        match self {
            Spelling::Flags => format!("--{flag}"),
            Spelling::Keywords => match flag.strip_prefix("no-") {
                Some(rest) => format!("{}=False", rest.replace('-', "_")),
                None => flag.replace('-', "_"),
            },
        }
    }

    /// The names of the model file and the weights in messages of [`crate::open`].
    pub fn names(self) -> Names {
        match self {
            Spelling::Flags => crate::open::CLI,
            Spelling::Keywords => Names {
                model: "model",
                weights: "weights",
            },
        }
    }
}

/// `p` as the file system resolves it (symlinks, `..`, relative spelling): canonical if it exists,
/// else its canonical parent joined with its name (an output not written yet).
pub fn resolved(p: &Path) -> Option<PathBuf> {
    if let Ok(c) = p.canonicalize() {
        return Some(c);
    }
    let parent = p
        .parent()
        .filter(|x| !x.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Some(resolved(parent)?.join(p.file_name()?))
}

/// Fails before any work if `out` cannot be written: a file expected where a folder stands (or
/// the reverse), or a folder that refuses new files (read-only). Probes the nearest existing
/// folder on the way to `out` with a temporary file it removes again.
pub fn check_writable(flag: &str, out: &Path, out_is_dir: bool) -> Result<()> {
    if out.is_dir() && !out_is_dir {
        bail!(
            "{flag} {} is a folder; a file name is expected (for example {}/model.safetensors)",
            out.display(),
            out.display()
        );
    }
    if out.exists() && !out.is_dir() && out_is_dir {
        bail!("{flag} {} is a file; a folder is expected", out.display());
    }
    let mut dir = if out_is_dir {
        out
    } else {
        out.parent().unwrap_or(Path::new("."))
    };
    if dir.as_os_str().is_empty() {
        dir = Path::new(".");
    }
    while !dir.exists() {
        dir = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
    }
    if !dir.is_dir() {
        bail!(
            "{flag} {}: {} is a file, not a folder",
            out.display(),
            dir.display()
        );
    }
    let probe = dir.join(format!(".iuf-write-probe-{}", std::process::id()));
    match std::fs::File::create(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => bail!(
            "{flag} {}: cannot write in {} ({e}); choose a folder you can write to",
            out.display(),
            dir.display()
        ),
    }
}

/// The one rule of every command that writes: no output may be one of its inputs, however either
/// is spelled, nor lie inside an input folder (a file output included: a report written into the
/// dataset could replace an image). An output folder (`out_is_dir`) also may not hold an input.
/// Checked before any work starts. `inputs` are `(flag, path)` pairs for the message.
pub fn check_output(
    flag: &str,
    out: &Path,
    out_is_dir: bool,
    inputs: &[(&str, &Path)],
) -> Result<()> {
    let Some(o) = resolved(out) else {
        return Ok(());
    };
    for (name, input) in inputs {
        let Some(i) = resolved(input) else {
            continue;
        };
        let what = if o == i {
            "is"
        } else if i.is_dir() && o.starts_with(&i) {
            "lies inside"
        } else if out_is_dir && i.starts_with(&o) {
            "contains"
        } else {
            continue;
        };
        bail!(
            "{flag} {} {what} the input {name} {}: writing there could replace or mix with what \
             the command reads; choose an {flag} outside every input",
            out.display(),
            input.display()
        );
    }
    Ok(())
}

/// Opens a dataset root with an error that says what layout is expected.
pub fn dataset(root: &Path, spelling: Spelling) -> Result<DatasetRoot> {
    DatasetRoot::open(root).with_context(|| {
        format!(
            "cannot use {} as a dataset; pass {} with a folder in MVTec AD layout \
             (<class>/train/good, <class>/test/<type>, <class>/ground_truth/<type>) or VisA layout \
             (split_csv/1cls.csv)",
            root.display(),
            spelling.arg("data")
        )
    })
}

/// Splits `a,b , c` into class names (no empty names, no duplicates).
pub fn parse_classes(list: &str, spelling: Spelling) -> Result<Vec<String>> {
    let names: Vec<String> = list.split(',').map(|c| c.trim().to_string()).collect();
    check_class_names(&format!("`{list}`"), &names, spelling)?;
    Ok(names)
}

/// Refuses an empty class name or one listed twice; `shown` is the list as the caller wrote it.
pub fn check_class_names(shown: &str, names: &[String], spelling: Spelling) -> Result<()> {
    let flag = spelling.arg("classes");
    for (i, c) in names.iter().enumerate() {
        if c.trim().is_empty() {
            bail!(
                "{flag} {shown}: empty class name; write names separated by commas, e.g. \
                 bottle,cable"
            );
        }
        if names[..i].contains(c) {
            bail!("{flag} {shown}: `{c}` is listed twice");
        }
    }
    Ok(())
}

/// Checks that every class exists in the dataset (naming the dataset's classes otherwise).
pub fn check_classes(data: &DatasetRoot, classes: &[String], spelling: Spelling) -> Result<()> {
    for c in classes {
        if !data.classes().iter().any(|k| k == c) {
            bail!(
                "class `{c}` is not in dataset {}; it has: {} (fix {})",
                data.root().display(),
                data.classes().join(", "),
                spelling.arg("classes")
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_lists_are_checked() {
        let f = Spelling::Flags;
        assert_eq!(parse_classes(" a, b ,c", f).unwrap(), ["a", "b", "c"]);
        assert!(parse_classes("a,,b", f).is_err());
        let twice = parse_classes("a,b,a", f).unwrap_err().to_string();
        assert_eq!(twice, "--classes `a,b,a`: `a` is listed twice");
    }

    #[test]
    fn spellings_name_flags_and_keywords() {
        assert_eq!(Spelling::Flags.arg("tile-input"), "--tile-input");
        assert_eq!(Spelling::Keywords.arg("tile-input"), "tile_input");
        assert_eq!(
            Spelling::Keywords.arg("no-feature-cache"),
            "feature_cache=False"
        );
    }
}
