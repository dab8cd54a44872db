//! Read-only output folders, checked for real. Root ignores permission bits, so where the tests
//! run as root (CI does) the commands run as the unprivileged user and group 65534 (`nobody`).

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{fails, Scratch};

const NOBODY: u32 = 65534;

/// A command's name and its arguments with outputs in a given folder.
type Case<'a> = (&'static str, Box<dyn Fn(&Path) -> Vec<PathBuf> + 'a>);

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// Runs `iuf` (as `nobody` when this process is root) with a cache folder it can write and no
/// way to fetch weights, so that any command getting past its output checks fails on weights.
struct Unprivileged<'a> {
    s: &'a Scratch,
    exe: PathBuf,
}

impl<'a> Unprivileged<'a> {
    fn new(s: &'a Scratch) -> Self {
        chmod(s.dir.path(), 0o755);
        let cache = s.path("cache");
        std::fs::create_dir_all(&cache).unwrap();
        chmod(&cache, 0o777);
        let mut me = Self {
            s,
            exe: PathBuf::from(env!("CARGO_BIN_EXE_iuf")),
        };
        // The build folder may lie where `nobody` cannot reach: then run a copy from here.
        if !me.runs() {
            let copy = s.path("iuf");
            std::fs::copy(&me.exe, &copy).unwrap();
            chmod(&copy, 0o755);
            me.exe = copy;
            assert!(me.runs(), "cannot run {} as uid {NOBODY}", me.exe.display());
        }
        me
    }

    fn command(&self, cache: &Path) -> Command {
        let mut c = Command::new(&self.exe);
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            // std drops the supplementary groups too when root changes its uid.
            c.uid(NOBODY).gid(NOBODY);
        }
        c.env("IUF_PYTHON", self.s.path("no-python-here"))
            .env("HOME", self.s.path("cache"))
            .arg("--cache-dir")
            .arg(cache)
            .args(["--threads", "1"]);
        c
    }

    fn runs(&self) -> bool {
        self.command(&self.s.path("cache"))
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    fn iuf(&self, args: &[&OsStr]) -> Output {
        self.iuf_with_cache(&self.s.path("cache"), args)
    }

    fn iuf_with_cache(&self, cache: &Path, args: &[&OsStr]) -> Output {
        self.command(cache)
            .args(args)
            .output()
            .expect("run the iuf binary")
    }
}

/// Guarantee (issue 14 item 3): an output in a folder that refuses new files is named before any
/// work, by every command that writes (train, learn, eval, predict and its panel, bench, and the
/// cache folder), and nothing is written there. A control run into a writable folder gets past
/// the check, so the refusal is the folder's doing.
#[test]
fn read_only_output_folders_are_named_before_any_work() {
    let s = Scratch::new();
    let run = Unprivileged::new(&s);
    let data = s.demo_data();
    let model = s.path("given.safetensors");
    std::fs::write(&model, b"not read: outputs are checked first").unwrap();
    chmod(&model, 0o644);
    let ro = s.path("ro");
    std::fs::create_dir_all(&ro).unwrap();
    chmod(&ro, 0o555);
    let rw = s.path("rw");
    std::fs::create_dir_all(&rw).unwrap();
    chmod(&rw, 0o777);

    let cases: Vec<Case<'_>> = vec![
        (
            "train --out",
            Box::new(|dir| {
                vec![
                    "train".into(),
                    "--data".into(),
                    data.clone(),
                    "--out".into(),
                    dir.join("m.safetensors"),
                ]
            }),
        ),
        (
            "learn --out",
            Box::new(|dir| {
                vec![
                    "learn".into(),
                    "--model".into(),
                    model.clone(),
                    "--data".into(),
                    data.clone(),
                    "--out".into(),
                    dir.join("m2.safetensors"),
                ]
            }),
        ),
        (
            "eval --out",
            Box::new(|dir| {
                vec![
                    "eval".into(),
                    "--model".into(),
                    model.clone(),
                    "--data".into(),
                    data.clone(),
                    "--out".into(),
                    dir.join("eval.json"),
                ]
            }),
        ),
        (
            "predict --out",
            Box::new(|dir| {
                vec![
                    "predict".into(),
                    "--model".into(),
                    model.clone(),
                    data.join("fabric/test/good"),
                    "--out".into(),
                    dir.join("pred"),
                ]
            }),
        ),
        (
            "predict --panel",
            Box::new(|dir| {
                vec![
                    "predict".into(),
                    "--model".into(),
                    model.clone(),
                    data.join("fabric/test/good"),
                    "--out".into(),
                    s.path("rw/pred-for-panel"),
                    "--panel".into(),
                    dir.join("panel.png"),
                ]
            }),
        ),
        (
            "bench --out",
            Box::new(|dir| {
                vec![
                    "bench".into(),
                    "--data".into(),
                    data.clone(),
                    "--protocol".into(),
                    "fabric | mesh".into(),
                    "--out".into(),
                    dir.join("bench"),
                ]
            }),
        ),
    ];
    let as_args = |v: &[PathBuf]| -> Vec<std::ffi::OsString> {
        v.iter().map(|p| p.as_os_str().to_owned()).collect()
    };
    for (name, args) in &cases {
        let refused = as_args(&args(&ro));
        let refused: Vec<&OsStr> = refused.iter().map(|a| a.as_os_str()).collect();
        let err = fails(&run.iuf(&refused));
        assert!(
            err.contains("cannot write in") && err.contains(&ro.display().to_string()),
            "{name} into a read-only folder: {err}"
        );
        assert!(
            err.contains("choose a folder you can write to"),
            "{name}: {err}"
        );
        // Control: the same command into a writable folder gets past the check (and stops
        // later, at the unreadable model or at the weights it may not fetch).
        let dir = rw.join(name.replace([' ', '-'], ""));
        std::fs::create_dir_all(&dir).unwrap();
        chmod(&dir, 0o777);
        let control = as_args(&args(&dir));
        let control: Vec<&OsStr> = control.iter().map(|a| a.as_os_str()).collect();
        let err = fails(&run.iuf(&control));
        assert!(!err.contains("cannot write in"), "{name} control: {err}");
    }
    // The cache folder.
    let out = s.path("rw/m-cache.safetensors");
    let args: [&OsStr; 5] = [
        "train".as_ref(),
        "--data".as_ref(),
        data.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ];
    let err = fails(&run.iuf_with_cache(&ro.join("cache"), &args));
    assert!(
        err.contains("--cache-dir") && err.contains("cannot write"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(&ro).unwrap().count(),
        0,
        "nothing is written in the read-only folder"
    );
    chmod(&ro, 0o755);
}
