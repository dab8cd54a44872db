//! The watch's journal: an append-only file of JSON lines under `--out` that makes `iuf watch`
//! exact across crashes. Each image is keyed by its path under `--in`, size and modification
//! time. A `start` line is written before an image is inspected; its `done` line, written and
//! fsync'd after, holds the image's whole result. The result lines (`results.jsonl`, stdout,
//! the sinks) are derived from the `done` lines, in their order, and written only after them:
//! after a kill the journal has every result that may have been shown, and a restart writes the
//! ones `results.jsonl` lacks. An image started and not done is inspected again; one whose
//! inspection was cut [`MAX_ATTEMPTS`] times (the process killed while on it, say a decoder
//! exhausting memory) is recorded as failed instead of being tried forever.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Starts without a `done` after which an image is recorded as failed.
pub const MAX_ATTEMPTS: u32 = 3;

/// An image's identity: the same path with another size or modification time is a new image.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Key {
    /// Relative to `--in`, `/`-separated.
    pub path: String,
    pub size: u64,
    /// Nanoseconds since 1970.
    pub mtime_ns: i128,
}

/// A sort still to be carried out after its `done` line: `from` goes to `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SortStep {
    pub from: PathBuf,
    pub to: PathBuf,
    /// `move` or `copy`.
    pub mode: String,
}

/// One line of the journal.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Line {
    Start {
        key: Key,
    },
    Done {
        key: Key,
        /// The result's number: its line in `results.jsonl`, counted from 0.
        n: u64,
        result: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sort: Option<SortStep>,
    },
}

/// What the journal says after it was read.
pub struct Recovered {
    /// Results in `results.jsonl` (the rest of the journal's are still to be written).
    pub written: u64,
    /// The journal's results from number `min(keep_from, written)` on, with their numbers.
    pub results: Vec<(u64, Value)>,
    /// The sorts of the last results (a crash may have come between a `done` and its sort).
    pub recent_sorts: Vec<SortStep>,
}

/// The open journal and results file.
pub struct Journal {
    file: File,
    path: PathBuf,
    results: File,
    results_path: PathBuf,
    done: HashSet<Key>,
    /// Starts without a `done`, by image.
    attempts: HashMap<Key, u32>,
    /// Results written so far (the next result's number).
    count: u64,
}

/// Cuts `path` after its last complete line (a line a kill cut short is dropped) and hands each
/// complete line, with its index, to `each`; gives the number of lines.
fn complete_lines(path: &Path, mut each: impl FnMut(usize, &str) -> Result<()>) -> Result<u64> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut lines = 0u64;
    let mut good = 0u64;
    let mut r = BufReader::new(f);
    let mut buf = String::new();
    loop {
        buf.clear();
        let n = r
            .read_line(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 || !buf.ends_with('\n') {
            break;
        }
        good += n as u64;
        each(lines as usize, buf.trim_end())?;
        lines += 1;
    }
    let len = std::fs::metadata(path)?.len();
    if len > good {
        tracing::warn!(
            "{}: dropping an incomplete last line ({} bytes) that an interrupted run left",
            path.display(),
            len - good
        );
        OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|f| f.set_len(good))
            .with_context(|| format!("truncating {}", path.display()))?;
    }
    Ok(lines)
}

impl Journal {
    /// Opens (or creates) `watch-journal.jsonl` and `results.jsonl` in `out` and reads what an
    /// earlier run left; the results from number `keep_from` on are kept (for sinks that had
    /// not delivered them), and those `results.jsonl` lacks.
    pub fn open(out: &Path, keep_from: u64) -> Result<(Self, Recovered)> {
        let path = out.join("watch-journal.jsonl");
        let results_path = out.join("results.jsonl");
        let mut done = HashSet::new();
        let mut attempts: HashMap<Key, u32> = HashMap::new();
        // Counted first: only the results from here on are kept in memory.
        let written = complete_lines(&results_path, |_, _| Ok(()))?;
        let keep_from = keep_from.min(written);
        let mut results: Vec<(u64, Value)> = Vec::new();
        let mut count = 0u64;
        let mut sorts: VecDeque<SortStep> = VecDeque::new();
        complete_lines(&path, |i, text| {
            let line: Line = serde_json::from_str(text).with_context(|| {
                format!(
                    "{} line {}: not a journal line of iuf watch; this --out holds another \
                     program's file, or a damaged journal: choose another --out",
                    path.display(),
                    i + 1
                )
            })?;
            match line {
                Line::Start { key } => *attempts.entry(key).or_default() += 1,
                Line::Done {
                    key,
                    n,
                    result,
                    sort,
                } => {
                    if n != count {
                        bail!(
                            "{} line {}: result number {n} where {count} was expected; the \
                             journal was edited or mixed with another: choose another --out",
                            path.display(),
                            i + 1,
                        );
                    }
                    count += 1;
                    attempts.remove(&key);
                    done.insert(key);
                    if n >= keep_from {
                        results.push((n, result));
                    }
                    // The last results' sorts only: a kill can have cut short no other.
                    sorts.extend(sort);
                    if sorts.len() > 64 {
                        sorts.pop_front();
                    }
                }
            }
            Ok(())
        })?;
        if written > count {
            bail!(
                "{} has {written} results but the journal {} only {count}: they belong to \
                 different runs; choose another --out (or move both away)",
                results_path.display(),
                path.display(),
            );
        }
        let recent_sorts: Vec<SortStep> = sorts.into();
        let open = |p: &Path| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("opening {}", p.display()))
        };
        let journal = Self {
            file: open(&path)?,
            path,
            results: open(&results_path)?,
            results_path,
            done,
            attempts,
            count,
        };
        Ok((
            journal,
            Recovered {
                written,
                results,
                recent_sorts,
            },
        ))
    }

    /// Whether this image has a result already.
    pub fn is_done(&self, key: &Key) -> bool {
        self.done.contains(key)
    }

    /// Times this image's inspection was started and cut short.
    pub fn attempts(&self, key: &Key) -> u32 {
        self.attempts.get(key).copied().unwrap_or(0)
    }

    fn append(&mut self, lines: &[Line]) -> Result<()> {
        let mut text = String::new();
        for l in lines {
            text.push_str(&serde_json::to_string(l)?);
            text.push('\n');
        }
        self.file
            .write_all(text.as_bytes())
            .with_context(|| format!("writing the journal {}", self.path.display()))
    }

    /// Records that these images are about to be inspected (not fsync'd: a lost `start` only
    /// means an attempt is not counted).
    pub fn start(&mut self, keys: &[Key]) -> Result<()> {
        let lines: Vec<Line> = keys
            .iter()
            .map(|k| Line::Start { key: k.clone() })
            .collect();
        for k in keys {
            *self.attempts.entry(k.clone()).or_default() += 1;
        }
        self.append(&lines)
    }

    /// Records results, durably (fsync) before anything else sees them; gives each its number.
    pub fn done(&mut self, results: Vec<(Key, Value, Option<SortStep>)>) -> Result<Vec<u64>> {
        let mut lines = Vec::with_capacity(results.len());
        let mut numbers = Vec::with_capacity(results.len());
        for (i, (key, result, sort)) in results.into_iter().enumerate() {
            let n = self.count + i as u64;
            numbers.push(n);
            lines.push(Line::Done {
                key,
                n,
                result,
                sort,
            });
        }
        self.append(&lines)?;
        self.file
            .sync_data()
            .with_context(|| format!("syncing the journal {}", self.path.display()))?;
        for l in lines {
            if let Line::Done { key, .. } = l {
                self.attempts.remove(&key);
                self.done.insert(key);
            }
        }
        self.count += numbers.len() as u64;
        Ok(numbers)
    }

    /// Appends result lines to `results.jsonl` (after their `done` lines).
    pub fn write_results(&mut self, results: &[&Value]) -> Result<()> {
        let mut text = String::new();
        for r in results {
            text.push_str(&serde_json::to_string(r)?);
            text.push('\n');
        }
        // Appends go to the end whatever the position; seeking keeps `len` honest for readers.
        let _ = self.results.seek(SeekFrom::End(0));
        self.results
            .write_all(text.as_bytes())
            .with_context(|| format!("writing {}", self.results_path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(p: &str) -> Key {
        Key {
            path: p.into(),
            size: 10,
            mtime_ns: 5,
        }
    }

    /// Guarantee: results recorded in the journal but not yet in results.jsonl (a kill between
    /// the two) come back after a restart, exactly once; a torn last line is dropped; an image
    /// started and not done is not done.
    #[test]
    fn a_restart_writes_the_results_the_journal_has_and_results_jsonl_lacks() {
        let t = tempfile::tempdir().unwrap();
        let (mut j, r) = Journal::open(t.path(), u64::MAX).unwrap();
        assert!(r.results.is_empty());
        j.start(&[key("a.png"), key("b.png")]).unwrap();
        let n = j
            .done(vec![
                (key("a.png"), json!({"path": "a.png"}), None),
                (key("b.png"), json!({"path": "b.png"}), None),
            ])
            .unwrap();
        assert_eq!(n, [0, 1]);
        j.write_results(&[&json!({"path": "a.png"})]).unwrap();
        j.start(&[key("c.png")]).unwrap();
        drop(j);
        // A kill in the middle of a line.
        let mut f = OpenOptions::new()
            .append(true)
            .open(t.path().join("results.jsonl"))
            .unwrap();
        f.write_all(b"{\"path\": \"b.p").unwrap();
        let (j, r) = Journal::open(t.path(), u64::MAX).unwrap();
        assert_eq!(r.written, 1);
        assert_eq!(r.results, vec![(1, json!({"path": "b.png"}))]);
        assert!(j.is_done(&key("a.png")) && j.is_done(&key("b.png")));
        assert!(!j.is_done(&key("c.png")));
        assert_eq!(j.attempts(&key("c.png")), 1);
        assert_eq!(j.count, 2);
        let text = std::fs::read_to_string(t.path().join("results.jsonl")).unwrap();
        assert_eq!(text.lines().count(), 1, "the torn line is gone: {text:?}");
        let (_, r) = Journal::open(t.path(), 0).unwrap();
        assert_eq!(r.results.len(), 2, "from 0: every result");
        // A journal of another program is refused, naming the file.
        std::fs::write(t.path().join("watch-journal.jsonl"), "hello\n").unwrap();
        let e = Journal::open(t.path(), 0).err().unwrap().to_string();
        assert!(e.contains("watch-journal.jsonl line 1"), "{e}");
    }
}
