//! `iuf watch` as a camera station sees it: images dropped into a folder one at a time, renamed
//! into place, written slowly, or undecodable; kill -9 and restarts in the middle of a drop; the
//! model file replaced while it runs. Each image must get exactly one result.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::Scratch;

/// A model of the demo's fabric (`a`), one of fabric and mesh (`b`), and fabric test images.
pub struct Fixture {
    pub scratch: Scratch,
    pub a: PathBuf,
    pub b: PathBuf,
    /// Good and defective fabric test images (64 px PNGs).
    pub images: Vec<Vec<u8>>,
}

pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let s = Scratch::new();
        let data = s.demo_data();
        let (a, b) = (s.path("a.safetensors"), s.path("b.safetensors"));
        s.train_tiny(&data, "fabric").out(&a).ok();
        s.train_tiny(&data, "fabric,mesh").out(&b).ok();
        let mut images = Vec::new();
        for kind in ["good", "crack", "stain"] {
            let dir = data.join("fabric/test").join(kind);
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            files.sort();
            images.extend(files.iter().take(3).map(|f| std::fs::read(f).unwrap()));
        }
        Fixture {
            scratch: s,
            a,
            b,
            images,
        }
    })
}

/// A running `iuf --json watch`: its result lines as they come, its stderr so far.
pub struct Watching {
    child: Child,
    lines: Receiver<Value>,
    stderr: Arc<Mutex<String>>,
}

impl Watching {
    /// Starts `iuf --json watch --model MODEL --in IN --out OUT --settle-ms 300 EXTRA...` and
    /// waits until it watches.
    pub fn start(model: &Path, input: &Path, out: &Path, extra: &[&str]) -> Self {
        let mut child = fixture()
            .scratch
            .iuf_json("watch")
            .model(model)
            .flag("--in", input)
            .out(out)
            .args(["--settle-ms", "300"])
            .args(extra)
            .command()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start iuf watch");
        let (tx, lines) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines() {
                let Ok(l) = l else { break };
                let v: Value =
                    serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let err = stderr.clone();
        let pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(pipe).lines() {
                let Ok(l) = l else { break };
                let mut e = err.lock().unwrap();
                e.push_str(&l);
                e.push('\n');
            }
        });
        let w = Self {
            child,
            lines,
            stderr,
        };
        w.wait_stderr("watching ", Duration::from_secs(120));
        w
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until stderr holds `text`.
    pub fn wait_stderr(&self, text: &str, limit: Duration) {
        let t = Instant::now();
        while !self.stderr().contains(text) {
            assert!(
                t.elapsed() < limit,
                "no {text:?} from iuf watch within {limit:?}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The next result line within `limit`.
    pub fn next(&self, limit: Duration) -> Option<Value> {
        match self.lines.recv_timeout(limit) {
            Ok(v) => Some(v),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                std::thread::sleep(Duration::from_millis(100));
                None
            }
        }
    }

    /// The next result line; fails the test after `limit`.
    #[track_caller]
    pub fn expect(&self, limit: Duration) -> Value {
        self.next(limit).unwrap_or_else(|| {
            panic!(
                "no result from iuf watch within {limit:?}; stderr:\n{}",
                self.stderr()
            )
        })
    }

    /// SIGTERM, then the exit within `limit` (successful).
    pub fn stop(mut self, limit: Duration) -> String {
        let ok = std::process::Command::new("kill")
            .args(["-s", "TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let t = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "iuf watch stopped with {status}:\n{}",
                    self.stderr()
                );
                return self.stderr();
            }
            assert!(
                t.elapsed() < limit,
                "iuf watch still running {limit:?} after SIGTERM:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// kill -9.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The file name of a result's path.
fn name(v: &Value) -> String {
    Path::new(v["path"].as_str().unwrap())
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// Writes `bytes` to `path` through a hidden temporary name and a rename.
fn drop_by_rename(path: &Path, bytes: &[u8]) {
    let tmp = path.with_file_name(format!(
        ".{}.part",
        path.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The lines of `results.jsonl`.
fn results(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out.join("results.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const LIMIT: Duration = Duration::from_secs(60);

/// Guarantee: every image dropped (written in place, renamed into place, or found at start)
/// gets exactly one result, in results.jsonl and on stdout; a file still being written is not
/// inspected before its writer closes it, even after a pause longer than the settle time; an
/// undecodable file gets an error line and the watch goes on; a defect gets a heatmap;
/// SIGTERM stops it.
#[test]
fn watch_inspects_each_image_once_when_complete_and_never_half_written() {
    let f = fixture();
    let s = Scratch::new();
    let (input, out) = (s.folder("camera"), s.path("out"));
    std::fs::write(input.join("before.png"), &f.images[0]).unwrap();
    let w = Watching::start(&f.a, &input, &out, &[]);
    let first = w.expect(LIMIT);
    assert_eq!(name(&first), "before.png");
    assert_eq!(first["object"], "fabric");
    assert!(first["score"].is_number() && first["model_sha256"].is_string());

    // One at a time: written in place (closed by the writer), and renamed into place.
    std::fs::create_dir_all(input.join("line2")).unwrap();
    for (i, img) in f.images.iter().enumerate() {
        let p = if i % 2 == 0 {
            input.join(format!("img{i}.png"))
        } else {
            input.join("line2").join(format!("img{i}.png"))
        };
        if i % 3 == 0 {
            drop_by_rename(&p, img);
        } else {
            std::fs::write(&p, img).unwrap();
        }
        let v = w.expect(LIMIT);
        assert_eq!(name(&v), format!("img{i}.png"), "{v}");
        assert!(v.get("error").is_none(), "{v}");
    }

    // Half written, then a pause longer than the settle time: not inspected until closed.
    let half = input.join("slow.png");
    let img = &f.images[4];
    let mut file = std::fs::File::create(&half).unwrap();
    file.write_all(&img[..img.len() / 2]).unwrap();
    file.flush().unwrap();
    assert!(
        w.next(Duration::from_millis(1500)).is_none(),
        "a half-written file was inspected: {}",
        w.stderr()
    );
    file.write_all(&img[img.len() / 2..]).unwrap();
    drop(file);
    let v = w.expect(LIMIT);
    assert_eq!(name(&v), "slow.png");
    assert!(v["score"].is_number(), "the complete file is scored: {v}");

    // Undecodable: an error line, and the watch goes on.
    std::fs::write(input.join("broken.png"), b"\x89PNG\r\n\x1a\n truncated").unwrap();
    let v = w.expect(LIMIT);
    assert_eq!(name(&v), "broken.png");
    assert!(v["error"].is_string() && v.get("score").is_none(), "{v}");
    std::fs::write(input.join("after.png"), &f.images[1]).unwrap();
    assert_eq!(name(&w.expect(LIMIT)), "after.png");
    // Temporary and other files are never taken.
    std::fs::write(input.join("x.png.tmp"), &f.images[1]).unwrap();
    std::fs::write(input.join(".hidden.png"), &f.images[1]).unwrap();
    std::fs::write(input.join("notes.txt"), b"hello").unwrap();
    assert!(w.next(Duration::from_millis(1000)).is_none());

    let err = w.stop(Duration::from_secs(10));
    assert!(err.contains("stopped:"), "{err}");
    let all = results(&out);
    let names: Vec<String> = all.iter().map(name).collect();
    let unique: HashSet<&String> = names.iter().collect();
    assert_eq!(names.len(), 2 + f.images.len() + 2, "{names:?}");
    assert_eq!(
        unique.len(),
        names.len(),
        "a file inspected twice: {names:?}"
    );
    // Defects have heatmaps, written under --out only.
    let defects: Vec<&Value> = all.iter().filter(|v| v["decision"] == "defect").collect();
    assert!(
        !defects.is_empty(),
        "the fixture's cracks and stains: {all:?}"
    );
    for d in defects {
        assert!(
            Path::new(d["heatmap"].as_str().unwrap()).starts_with(&out),
            "{d}"
        );
        assert!(Path::new(d["heatmap"].as_str().unwrap()).is_file());
    }
    // A restart with nothing new inspects nothing again.
    let w = Watching::start(&f.a, &input, &out, &[]);
    assert!(w.next(Duration::from_millis(1500)).is_none());
    w.stop(Duration::from_secs(10));
    assert_eq!(results(&out).len(), names.len());
}

/// Guarantee: kill -9 and a restart, three times while 60 images are dropped and sorted
/// (moved), skip none and inspect none twice: results.jsonl has one line per image, every
/// image ends in exactly one sort folder, none is left behind or lost.
#[test]
fn watch_kill_9_and_restart_during_a_drop_skips_none_and_duplicates_none() {
    let f = fixture();
    let s = Scratch::new();
    let (input, out) = (s.folder("camera"), s.path("out"));
    const N: usize = 60;
    let extra = ["--sort", "move"];
    let dropper = {
        let input = input.clone();
        let images = f.images.clone();
        std::thread::spawn(move || {
            for i in 0..N {
                let p = input.join(format!("{i:03}.png"));
                let img = &images[i % images.len()];
                if i % 2 == 0 {
                    drop_by_rename(&p, img);
                } else {
                    std::fs::write(&p, img).unwrap();
                }
                std::thread::sleep(Duration::from_millis(40));
            }
        })
    };
    let mut seen = 0;
    for cycle in 0..3 {
        let w = Watching::start(&f.a, &input, &out, &extra);
        // A few results, then a kill in the middle of the work.
        for _ in 0..4 + cycle {
            w.expect(LIMIT);
        }
        std::thread::sleep(Duration::from_millis(37 * (cycle as u64 + 1)));
        w.kill();
        let now = results(&out).len();
        assert!(now > seen, "no progress in cycle {cycle}");
        seen = now;
    }
    dropper.join().unwrap();
    let w = Watching::start(&f.a, &input, &out, &extra);
    let t = Instant::now();
    while results(&out).len() < N {
        assert!(
            t.elapsed() < Duration::from_secs(180),
            "{} of {N} results; stderr:\n{}",
            results(&out).len(),
            w.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    w.stop(Duration::from_secs(10));
    let all = results(&out);
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for v in &all {
        assert!(v["score"].is_number(), "{v}");
        *count.entry(name(v)).or_default() += 1;
    }
    let twice: Vec<_> = count.iter().filter(|(_, &c)| c > 1).collect();
    assert!(twice.is_empty(), "inspected twice: {twice:?}");
    assert_eq!(count.len(), N, "skipped: {count:?}");
    // Sorted: every image in exactly one of ok/ and defect/, none left in --in.
    let mut sorted = Vec::new();
    for class in ["ok", "defect"] {
        if let Ok(d) = std::fs::read_dir(out.join(class)) {
            sorted.extend(d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()));
        }
    }
    sorted.sort();
    let expected: Vec<String> = (0..N).map(|i| format!("{i:03}.png")).collect();
    assert_eq!(sorted, expected);
    let left: Vec<_> = std::fs::read_dir(&input)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| !n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(left.is_empty(), "left in --in: {left:?}");
    for v in &all {
        let to = Path::new(v["sorted_to"].as_str().unwrap());
        assert!(to.is_file(), "{v}");
    }
}

/// Guarantee: a model file replaced while the watch runs is loaded again, and the next results
/// name the new model's sha256; a damaged replacement is refused and the old model goes on.
#[test]
fn watch_reloads_a_replaced_model_and_names_its_sha256() {
    let f = fixture();
    let s = Scratch::new();
    let (input, out) = (s.folder("camera"), s.path("out"));
    let model = s.path("served.safetensors");
    std::fs::copy(&f.a, &model).unwrap();
    let sha = |p: &Path| iuf_backbone::fetch::sha256_hex(&std::fs::read(p).unwrap());
    let w = Watching::start(&model, &input, &out, &[]);
    std::fs::write(input.join("1.png"), &f.images[0]).unwrap();
    assert_eq!(w.expect(LIMIT)["model_sha256"], sha(&f.a));

    // A damaged file put in place: refused, the old model goes on.
    let tmp = s.path(".served.tmp");
    std::fs::write(&tmp, b"not a model").unwrap();
    std::fs::rename(&tmp, &model).unwrap();
    w.wait_stderr("refused", LIMIT);
    std::fs::write(input.join("2.png"), &f.images[1]).unwrap();
    assert_eq!(w.expect(LIMIT)["model_sha256"], sha(&f.a));

    // The new model, renamed into place as `iuf learn` writes it.
    std::fs::copy(&f.b, &tmp).unwrap();
    std::fs::rename(&tmp, &model).unwrap();
    w.wait_stderr("reloaded", LIMIT);
    std::fs::write(input.join("3.png"), &f.images[2]).unwrap();
    assert_eq!(w.expect(LIMIT)["model_sha256"], sha(&f.b));
    w.stop(Duration::from_secs(10));
}

/// Guarantee: bad flags are refused before any work, naming the flag.
#[test]
fn watch_refuses_an_out_inside_in_and_sort_without_out() {
    let f = fixture();
    let s = Scratch::new();
    let input = s.folder("camera");
    let iuf = || f.scratch.iuf("watch").model(&f.a).flag("--in", &input);
    iuf()
        .out(input.join("results"))
        .fails_with(&["--out", "lies inside the input --in"]);
    let bad = s.path("nope");
    f.scratch
        .iuf("watch")
        .model(&f.a)
        .flag("--in", &bad)
        .fails_with(&["--in", "no such folder"]);
    // --in camera/ok with --sort-dir camera: sorted images would land in the watched folder.
    let ok = s.folder("camera/ok");
    f.scratch
        .iuf("watch")
        .model(&f.a)
        .flag("--in", &ok)
        .out(s.path("out"))
        .args(["--sort", "copy"])
        .flag("--sort-dir", &input)
        .fails_with(&["--sort-dir", "would hold --in"]);
    iuf()
        .args(["--sort", "move"])
        .fails_with(&["--sort needs --out"]);
}

/// Guarantee: with --poll (no file events, as on a network file system) images are found by
/// the rescan and taken once they hold still, each once.
#[test]
fn watch_poll_finds_images_by_rescanning_each_once() {
    let f = fixture();
    let s = Scratch::new();
    let (input, out) = (s.folder("camera"), s.path("out"));
    let w = Watching::start(&f.a, &input, &out, &["--poll", "--rescan-ms", "200"]);
    assert!(w.stderr().contains("polling"), "{}", w.stderr());
    for i in 0..3 {
        std::fs::create_dir_all(input.join(format!("d{i}"))).unwrap();
        std::fs::write(input.join(format!("d{i}/{i}.png")), &f.images[i]).unwrap();
        assert_eq!(name(&w.expect(LIMIT)), format!("{i}.png"));
    }
    assert!(w.next(Duration::from_millis(1000)).is_none());
    w.stop(Duration::from_secs(10));
    assert_eq!(results(&out).len(), 3);
}
