//! Helpers: an `iuf` command line built the way the README writes it
//! (`s.iuf("train").data(&data).classes("fabric").out(&model).ok()`), run with the shared weights
//! and a private cache; a tiny demo dataset in a temporary folder.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use tempfile::TempDir;

/// `../shared` beside the checkout (CI always has it).
pub fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

/// The real EfficientNet-Lite0 checkpoint (legacy .pth, converted by `--weights` on the fly).
pub fn lite0_pth() -> PathBuf {
    shared().join("weights/efficientnet-lite0/efficientnet-lite0-57934424.pth")
}

/// ../shared/datasets/mvtec-mini: real images in the MVTec AD layout.
pub fn mvtec_mini() -> PathBuf {
    shared().join("datasets/mvtec-mini")
}

/// One `iuf` command line, argument by argument in the order given; `run`, `ok` or `fails` runs it.
pub struct Iuf {
    cmd: Command,
}

impl From<Command> for Iuf {
    fn from(cmd: Command) -> Self {
        Self { cmd }
    }
}

impl Iuf {
    /// The built binary with no argument yet.
    pub fn bare() -> Self {
        Command::new(env!("CARGO_BIN_EXE_iuf")).into()
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.cmd.arg(a);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd.args(args);
        self
    }

    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        self.cmd.env(key, value);
        self
    }

    /// `name value`, e.g. `.flag("--panel", &panel)`.
    pub fn flag(self, name: &str, value: impl AsRef<OsStr>) -> Self {
        self.arg(name).arg(value)
    }

    pub fn data(self, dir: impl AsRef<OsStr>) -> Self {
        self.flag("--data", dir)
    }

    pub fn model(self, file: impl AsRef<OsStr>) -> Self {
        self.flag("--model", file)
    }

    pub fn out(self, path: impl AsRef<OsStr>) -> Self {
        self.flag("--out", path)
    }

    pub fn classes(self, list: &str) -> Self {
        self.flag("--classes", list)
    }

    pub fn method(self, list: &str) -> Self {
        self.flag("--method", list)
    }

    pub fn protocol(self, protocol: &str) -> Self {
        self.flag("--protocol", protocol)
    }

    pub fn preset(self, name: &str) -> Self {
        self.flag("--preset", name)
    }

    pub fn epochs(self, n: u32) -> Self {
        self.flag("--epochs", n.to_string())
    }

    /// The command itself, for what the builder does not say (spawning, standard streams).
    pub fn command(self) -> Command {
        self.cmd
    }

    /// Runs the command to its end, killing it (and failing the test) if it runs longer than
    /// `limit`: for cases that used to hang. Gives its outcome and its peak resident memory in
    /// bytes (Linux's VmHWM, sampled every 20 ms while it runs).
    pub fn run_within(mut self, limit: std::time::Duration) -> (Outcome, u64) {
        use std::io::Read;
        use std::process::Stdio;
        let line = format!("{:?}", self.cmd);
        let mut child = self
            .cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the iuf binary");
        let drain = |mut r: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut s = Vec::new();
                let _ = r.read_to_end(&mut s);
                String::from_utf8_lossy(&s).into_owned()
            })
        };
        let out = drain(Box::new(child.stdout.take().unwrap()));
        let err = drain(Box::new(child.stderr.take().unwrap()));
        let t = std::time::Instant::now();
        let mut peak = 0;
        let status = loop {
            peak = peak.max(peak_rss(child.id()).unwrap_or(0));
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if t.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{line} still running after {limit:?}; stderr:\n{}",
                    err.join().unwrap()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let o = Outcome {
            line,
            status,
            stdout: out.join().unwrap(),
            stderr: err.join().unwrap(),
        };
        (o, peak)
    }

    /// Runs the command to its end.
    pub fn run(mut self) -> Outcome {
        let line = format!("{:?}", self.cmd);
        let o = self.cmd.output().expect("run the iuf binary");
        Outcome {
            line,
            status: o.status,
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// Runs the command and asserts success, showing its output otherwise.
    #[track_caller]
    pub fn ok(self) -> Outcome {
        let o = self.run();
        assert!(
            o.status.success(),
            "{} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            o.line,
            o.status,
            o.stdout,
            o.stderr
        );
        o
    }

    /// Runs the command, asserts failure and returns stderr.
    #[track_caller]
    pub fn fails(self) -> String {
        let o = self.run();
        assert!(
            !o.status.success(),
            "{} succeeded but should have failed:\nstdout:\n{}\nstderr:\n{}",
            o.line,
            o.stdout,
            o.stderr
        );
        o.stderr
    }

    /// Runs the command, asserts failure with every one of `wanted` in stderr, returns stderr.
    #[track_caller]
    pub fn fails_with(self, wanted: &[&str]) -> String {
        let line = format!("{:?}", self.cmd);
        let err = self.fails();
        for w in wanted {
            assert!(err.contains(w), "{line}: no {w:?} in stderr:\n{err}");
        }
        err
    }
}

/// The peak resident memory of process `pid` so far, in bytes (Linux's VmHWM).
pub fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// A valid black 1-bit grayscale PNG of `side` x `side` pixels, written by hand so that it stays
/// small on disk (about 0.8 MB at 24000 px) however large it is decoded: one fixed-Huffman deflate
/// block of runs of zeros.
pub fn blank_png(side: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in bytes {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend(kind);
        out.extend(data);
        let crc = crc32(&out[start..]);
        out.extend(crc.to_be_bytes());
    }
    // Deflate bits go least significant first; Huffman codes most significant first.
    struct Bits {
        out: Vec<u8>,
        acc: u64,
        n: u32,
    }
    impl Bits {
        fn put(&mut self, v: u32, n: u32) {
            self.acc |= (v as u64) << self.n;
            self.n += n;
            while self.n >= 8 {
                self.out.push(self.acc as u8);
                self.acc >>= 8;
                self.n -= 8;
            }
        }
        fn code(&mut self, v: u32, n: u32) {
            self.put(v.reverse_bits() >> (32 - n), n);
        }
    }
    // Every row: filter byte 0, then ceil(side / 8) bytes of zero pixels.
    let raw = side as u64 * (1 + side.div_ceil(8) as u64);
    let mut z = Bits {
        out: vec![0x78, 0x01],
        acc: 0,
        n: 0,
    };
    z.put(1, 1); // final block
    z.put(1, 2); // fixed Huffman codes
    z.code(0x30, 8); // literal 0
    let runs = (raw - 1) / 258;
    for _ in 0..runs {
        z.code(0xc5, 8); // length 258 (symbol 285)
        z.code(0, 5); // distance 1
    }
    for _ in 0..(raw - 1) % 258 {
        z.code(0x30, 8);
    }
    z.code(0, 7); // end of block
    if z.n > 0 {
        z.out.push(z.acc as u8); // the last bits, padded to a byte
    }
    let adler = (((raw % 65521) as u32) << 16) | 1;
    let mut idat = z.out;
    idat.extend(adler.to_be_bytes());
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = side.to_be_bytes().to_vec();
    ihdr.extend(side.to_be_bytes());
    ihdr.extend([1, 0, 0, 0, 0]); // 1 bit, grayscale, deflate, no filter method, no interlace
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(&mut png, b"IDAT", &idat);
    chunk(&mut png, b"IEND", &[]);
    png
}

/// What a finished `iuf` left: its exit status, stdout and stderr.
pub struct Outcome {
    line: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    /// The JSON document on stdout.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("{}: stdout is not JSON ({e}):\n{}", self.line, self.stdout))
    }

    /// The JSON values of stdout, one per line.
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }
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

    /// `iuf SUBCOMMAND` with the shared weights, this folder's cache and 2 threads.
    pub fn iuf(&self, subcommand: &str) -> Iuf {
        self.global().arg(subcommand)
    }

    /// `iuf --json SUBCOMMAND`, otherwise as [`Scratch::iuf`].
    pub fn iuf_json(&self, subcommand: &str) -> Iuf {
        self.global().arg("--json").arg(subcommand)
    }

    fn global(&self) -> Iuf {
        Iuf::bare()
            .flag("--weights", lite0_pth())
            .flag("--cache-dir", self.path("cache"))
            .args(["--threads", "2"])
    }

    /// A scratch folder with the tiny demo dataset in it: where most tests start.
    pub fn with_demo_data() -> (Self, PathBuf) {
        let s = Self::new();
        let data = s.demo_data();
        (s, data)
    }

    /// `iuf train --data DATA --classes CLASSES`, to be told where the model goes (`.out`).
    pub fn train(&self, data: &Path, classes: &str) -> Iuf {
        self.iuf("train").data(data).classes(classes)
    }

    /// `iuf train --data DATA --classes CLASSES --preset tiny`: a model in seconds.
    pub fn train_tiny(&self, data: &Path, classes: &str) -> Iuf {
        self.train(data, classes).preset("tiny")
    }

    /// Writes `bytes` to the file `rel` in this folder (its folder created if need be).
    pub fn file(&self, rel: &str, bytes: &[u8]) -> PathBuf {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// Creates the folder `rel` in this folder.
    pub fn folder(&self, rel: &str) -> PathBuf {
        let path = self.path(rel);
        std::fs::create_dir_all(&path).unwrap();
        path
    }

    /// Writes the tiny demo dataset (3 objects, 8 train + 8 test images of 64 px) to `demo/`.
    pub fn demo_data(&self) -> PathBuf {
        let dir = self.path("demo");
        iuf_data::demo::generate(&dir, &iuf_data::demo::DemoConfig::tiny()).expect("demo dataset");
        dir
    }
}
