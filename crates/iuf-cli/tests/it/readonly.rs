//! Read-only output folders, checked for real. Root ignores permission bits, so where the tests
//! run as root (CI does) the commands run as the unprivileged user and group 65534 (`nobody`).

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{Iuf, Scratch};

const NOBODY: u32 = 65534;

/// A command's name and the command with its outputs in a given folder.
type Case<'a> = (&'static str, Box<dyn Fn(&Path) -> Iuf + 'a>);

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

    fn iuf(&self, subcommand: &str) -> Iuf {
        self.iuf_with_cache(&self.s.path("cache"), subcommand)
    }

    fn iuf_with_cache(&self, cache: &Path, subcommand: &str) -> Iuf {
        Iuf::from(self.command(cache)).arg(subcommand)
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
    let model = s.file("given.safetensors", b"not read: outputs are checked first");
    chmod(&model, 0o644);
    let ro = s.folder("ro");
    chmod(&ro, 0o555);
    let rw = s.folder("rw");
    chmod(&rw, 0o777);

    let with_model = |subcommand| run.iuf(subcommand).model(&model);
    let predict = || with_model("predict").arg(data.join("fabric/test/good"));
    let cases: Vec<Case<'_>> = vec![
        (
            "train --out",
            Box::new(|dir| run.iuf("train").data(&data).out(dir.join("m.safetensors"))),
        ),
        (
            "learn --out",
            Box::new(|dir| {
                with_model("learn")
                    .data(&data)
                    .out(dir.join("m2.safetensors"))
            }),
        ),
        (
            "eval --out",
            Box::new(|dir| with_model("eval").data(&data).out(dir.join("eval.json"))),
        ),
        (
            "predict --out",
            Box::new(|dir| predict().out(dir.join("pred"))),
        ),
        (
            "predict --panel",
            Box::new(|dir| {
                predict()
                    .out(s.path("rw/pred-for-panel"))
                    .flag("--panel", dir.join("panel.png"))
            }),
        ),
        (
            "bench --out",
            Box::new(|dir| {
                run.iuf("bench")
                    .data(&data)
                    .protocol("fabric | mesh")
                    .out(dir.join("bench"))
            }),
        ),
    ];
    for (name, cmd) in &cases {
        let err = cmd(&ro).fails();
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
        let err = cmd(&dir).fails();
        assert!(!err.contains("cannot write in"), "{name} control: {err}");
    }
    // The cache folder.
    let out = s.path("rw/m-cache.safetensors");
    run.iuf_with_cache(&ro.join("cache"), "train")
        .data(&data)
        .out(&out)
        .fails_with(&["--cache-dir", "cannot write"]);
    assert_eq!(
        std::fs::read_dir(&ro).unwrap().count(),
        0,
        "nothing is written in the read-only folder"
    );
    chmod(&ro, 0o755);
}
