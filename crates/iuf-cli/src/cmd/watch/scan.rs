//! Which files under `--in` are images ready to inspect: file events (inotify through `notify`)
//! mark a file as written and closed, or renamed into place; a rescan finds what events missed
//! (and is all there is with `--poll`), and such a file is taken once its size and modification
//! time have held still for the settle time.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{Event, EventKind};

use super::journal::Key;

/// A file's size and modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub size: u64,
    pub mtime: SystemTime,
}

impl Stamp {
    pub fn of(path: &Path) -> Option<Stamp> {
        let m = std::fs::metadata(path).ok()?;
        m.is_file().then_some(())?;
        Some(Stamp {
            size: m.len(),
            mtime: m.modified().ok()?,
        })
    }

    pub fn mtime_ns(&self) -> i128 {
        match self.mtime.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => d.as_nanos() as i128,
            Err(e) => -(e.duration().as_nanos() as i128),
        }
    }
}

/// How long a file seen being written must hold still when its close event never comes.
const OPEN_STILL: Duration = Duration::from_secs(60);

/// A file that may become ready.
#[derive(Debug)]
struct Candidate {
    /// Closed after writing, or renamed into place, since the last change seen.
    closed: bool,
    /// Seen being written by an event and not closed since: waits for its close event (or,
    /// should that event be lost, [`OPEN_STILL`] without a change).
    open: bool,
    /// The stamp last seen, and when it was first seen as it is.
    stamp: Option<(Stamp, Instant)>,
}

/// The files under watch that are not inspected yet.
pub struct Tracker {
    root: PathBuf,
    /// Folders whose files are never inputs (the sort folders inside `--in`).
    excluded: Vec<PathBuf>,
    settle: Duration,
    candidates: HashMap<PathBuf, Candidate>,
}

/// Whether `path` has an image extension.
pub fn is_image(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
        iuf_data::IMAGE_EXTENSIONS
            .iter()
            .any(|x| e.eq_ignore_ascii_case(x))
    })
}

impl Tracker {
    pub fn new(root: PathBuf, excluded: Vec<PathBuf>, settle: Duration) -> Self {
        Self {
            root,
            excluded,
            settle,
            candidates: HashMap::new(),
        }
    }

    /// `path` relative to `--in` when it may be an input: under it, no hidden name on the way
    /// (temporary files such as `.x.png.tmp`), an image extension, outside the sort folders.
    pub fn relative(&self, path: &Path) -> Option<String> {
        let rel = path.strip_prefix(&self.root).ok()?;
        let mut parts = Vec::new();
        for c in rel.components() {
            let s = c.as_os_str().to_str()?;
            if s.starts_with('.') {
                return None;
            }
            parts.push(s);
        }
        if parts.is_empty() || !is_image(path) {
            return None;
        }
        if self.excluded.iter().any(|x| path.starts_with(x)) {
            return None;
        }
        Some(parts.join("/"))
    }

    /// The key of the file at `path` as it is now.
    pub fn key(&self, path: &Path, stamp: Stamp) -> Option<Key> {
        Some(Key {
            path: self.relative(path)?,
            size: stamp.size,
            mtime_ns: stamp.mtime_ns(),
        })
    }

    /// Takes one file event in. Gives the folders to scan (created folders: files written into
    /// them before their watch was set up make no event).
    pub fn event(&mut self, e: &Event) -> Vec<PathBuf> {
        let mut scan = Vec::new();
        match &e.kind {
            EventKind::Create(CreateKind::Folder) => scan.extend(e.paths.iter().cloned()),
            EventKind::Create(_) | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any) => {
                for p in &e.paths {
                    self.changed(p, false);
                }
            }
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
                for p in &e.paths {
                    self.changed(p, true);
                }
            }
            EventKind::Modify(ModifyKind::Name(mode)) => match mode {
                RenameMode::From => {
                    for p in &e.paths {
                        self.candidates.remove(p);
                    }
                }
                RenameMode::To => {
                    for p in &e.paths {
                        self.renamed_in(p, &mut scan);
                    }
                }
                RenameMode::Both => {
                    if let [from, to] = &e.paths[..] {
                        self.candidates.remove(from);
                        self.renamed_in(to, &mut scan);
                    }
                }
                _ => {
                    // The backend could not tell which side: look at each path.
                    for p in &e.paths {
                        if p.exists() {
                            self.renamed_in(p, &mut scan);
                        } else {
                            self.candidates.remove(p);
                        }
                    }
                }
            },
            EventKind::Remove(_) => {
                for p in &e.paths {
                    self.candidates.remove(p);
                }
            }
            _ => {}
        }
        scan
    }

    /// A file or folder renamed into the watched tree: a file is complete (it was written under
    /// another name); a folder is scanned.
    fn renamed_in(&mut self, p: &Path, scan: &mut Vec<PathBuf>) {
        if p.is_dir() {
            scan.push(p.to_path_buf());
        } else {
            self.changed(p, true);
        }
    }

    fn changed(&mut self, p: &Path, closed: bool) {
        if self.relative(p).is_none() {
            return;
        }
        let c = self.candidates.entry(p.to_path_buf()).or_insert(Candidate {
            closed: false,
            open: false,
            stamp: None,
        });
        c.closed = closed;
        c.open = !closed;
        if !closed {
            c.stamp = None;
        }
    }

    /// Every image file under `dir` (following links, each real folder once) that is not in
    /// `skip`, added as a candidate that is ready once it has held still for the settle time.
    pub fn scan(&mut self, dir: &Path, skip: impl Fn(&Key) -> bool) {
        let mut seen = HashSet::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let Ok(meta) = std::fs::metadata(&d) else {
                continue;
            };
            {
                use std::os::unix::fs::MetadataExt;
                if !seen.insert((meta.dev(), meta.ino())) {
                    continue;
                }
            }
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                if e.file_name().to_string_lossy().starts_with('.')
                    || self.excluded.iter().any(|x| p.starts_with(x))
                {
                    continue;
                }
                if p.is_dir() {
                    stack.push(p);
                } else if self.relative(&p).is_some() && !self.candidates.contains_key(&p) {
                    if let Some(key) = Stamp::of(&p).and_then(|s| self.key(&p, s)) {
                        if !skip(&key) {
                            self.candidates.insert(
                                p,
                                Candidate {
                                    closed: false,
                                    open: false,
                                    stamp: None,
                                },
                            );
                        }
                    }
                }
            }
        }
    }

    /// The candidates ready now, in path order, with their stamps; those gone are forgotten.
    /// Closed ones are ready at once; the others once their stamp has held still for the settle
    /// time, or at once when their modification time is older than it (found by a scan).
    pub fn ready(&mut self) -> Vec<(PathBuf, Stamp)> {
        let now = Instant::now();
        let wall = SystemTime::now();
        let mut ready = Vec::new();
        let base = self.settle;
        self.candidates.retain(|p, c| {
            let Some(stamp) = Stamp::of(p) else {
                return false;
            };
            let settle = if c.open { OPEN_STILL.max(base) } else { base };
            let still = match c.stamp {
                Some((s, since)) if s == stamp => now.duration_since(since) >= settle,
                Some(_) => {
                    c.stamp = Some((stamp, now));
                    false
                }
                None => {
                    c.stamp = Some((stamp, now));
                    !c.closed
                        && !c.open
                        && wall
                            .duration_since(stamp.mtime)
                            .is_ok_and(|age| age >= settle)
                }
            };
            if c.closed || still {
                ready.push((p.clone(), stamp));
                false
            } else {
                true
            }
        });
        ready.sort_by(|a, b| a.0.cmp(&b.0));
        ready
    }

    /// How long until a waiting candidate may be ready (None: none is waiting).
    pub fn next_check(&self) -> Option<Duration> {
        let now = Instant::now();
        self.candidates
            .values()
            .map(|c| match c.stamp {
                Some((_, since)) => {
                    let settle = if c.open {
                        OPEN_STILL.max(self.settle)
                    } else {
                        self.settle
                    };
                    settle.saturating_sub(now.duration_since(since))
                }
                None => Duration::ZERO,
            })
            .min()
            .map(|d| d.max(Duration::from_millis(10)))
    }

    /// Puts a file back to be looked at again (it changed while it was read).
    pub fn again(&mut self, p: PathBuf) {
        self.candidates.insert(
            p,
            Candidate {
                closed: false,
                open: false,
                stamp: None,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guarantee: a file found by a scan is taken only once it holds still; a closed one at
    /// once; hidden and temporary names, other extensions and the sort folders never.
    #[test]
    fn files_are_ready_once_closed_or_still() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().to_path_buf();
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::create_dir_all(root.join("ok")).unwrap();
        for f in [
            "a.png",
            "sub/b.jpg",
            ".c.png",
            "d.png.tmp",
            "notes.txt",
            "ok/e.png",
        ] {
            std::fs::write(root.join(f), b"x").unwrap();
        }
        let mut tr = Tracker::new(
            root.clone(),
            vec![root.join("ok")],
            Duration::from_millis(150),
        );
        tr.scan(&root, |_| false);
        // Just written: not yet still.
        assert!(tr.ready().is_empty());
        std::thread::sleep(Duration::from_millis(200));
        let names: Vec<String> = tr
            .ready()
            .iter()
            .map(|(p, _)| tr.relative(p).unwrap())
            .collect();
        assert_eq!(names, ["a.png", "sub/b.jpg"]);
        // A close-write event makes a file ready at once.
        let p = root.join("f.png");
        std::fs::write(&p, b"y").unwrap();
        let close =
            Event::new(EventKind::Access(AccessKind::Close(AccessMode::Write))).add_path(p.clone());
        tr.event(&close);
        assert_eq!(tr.ready().len(), 1);
        assert!(tr.relative(&root.join("x/.hidden/g.png")).is_none());
    }
}
