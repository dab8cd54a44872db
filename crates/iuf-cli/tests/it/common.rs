//! Helpers: running the built `iuf` binary with the shared weights and a private cache, and a tiny
//! demo dataset in a temporary folder.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

/// `../shared` beside the checkout (CI always has it).
pub fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

/// The real EfficientNet-Lite0 checkpoint (legacy .pth, converted by `--weights` on the fly).
pub fn lite0_pth() -> PathBuf {
    shared().join("weights/efficientnet-lite0/efficientnet-lite0-57934424.pth")
}

/// A scratch folder with its own cache.
pub struct Scratch {
    pub dir: TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temporary folder"),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Runs `iuf` with the shared weights, this folder's cache and 2 threads, then `args`.
    pub fn iuf<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        Command::new(env!("CARGO_BIN_EXE_iuf"))
            .arg("--weights")
            .arg(lite0_pth())
            .arg("--cache-dir")
            .arg(self.path("cache"))
            .args(["--threads", "2"])
            .args(args)
            .output()
            .expect("run the iuf binary")
    }

    /// Writes the tiny demo dataset (3 objects, 8 train + 8 test images of 64 px) to `demo/`.
    pub fn demo_data(&self) -> PathBuf {
        let dir = self.path("demo");
        iuf_data::demo::generate(&dir, &iuf_data::demo::DemoConfig::tiny()).expect("demo dataset");
        dir
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts success, showing stderr otherwise.
#[track_caller]
pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "iuf failed ({}):\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(o),
        stderr(o)
    );
    stdout(o)
}

/// Asserts failure and returns stderr.
#[track_caller]
pub fn fails(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "iuf succeeded but should have failed:\nstdout:\n{}\nstderr:\n{}",
        stdout(o),
        stderr(o)
    );
    stderr(o)
}

/// The JSON values of stdout, one per line.
pub fn json_lines(o: &Output) -> Vec<serde_json::Value> {
    stdout(o)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The JSON document on stdout.
pub fn json(o: &Output) -> serde_json::Value {
    serde_json::from_str(&stdout(o))
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", stdout(o)))
}
