//! Resumable HTTP download into a `.part` file: an existing partial file is continued with an HTTP
//! Range request; a server that ignores the range makes the download start over.
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetched {
    /// Size of the complete file.
    pub size: u64,
    /// Bytes that were already in the `.part` file and were kept.
    pub resumed_from: u64,
}

/// `Content-Range: bytes <start>-<end>/<total>` -> (start, total if known).
fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    let total = if total.trim() == "*" {
        None
    } else {
        Some(total.trim().parse().ok()?)
    };
    Some((start.trim().parse().ok()?, total))
}

/// Downloads `url` into `part`, continuing where an earlier attempt stopped. Calls `progress` with
/// (bytes in the file, total size when known). Errors leave the bytes received so far in `part`.
pub fn fetch_resumable(
    agent: &ureq::Agent,
    url: &str,
    part: &Path,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<Fetched> {
    let have = fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    // No transparent gzip: byte offsets must be those of the file itself.
    let mut request = agent.get(url).set("Accept-Encoding", "identity");
    if have > 0 {
        request = request.set("Range", &format!("bytes={have}-"));
    }
    let response = match request.call() {
        Ok(r) => r,
        // The range starts at the end of the file: the earlier attempt had received everything.
        Err(ureq::Error::Status(416, _)) if have > 0 => {
            return Ok(Fetched {
                size: have,
                resumed_from: have,
            })
        }
        Err(e) => return Err(anyhow::Error::new(e).context(format!("GET {url}"))),
    };
    let length = response
        .header("Content-Length")
        .and_then(|v| v.trim().parse::<u64>().ok());
    let (start, total) = match response.status() {
        206 => {
            let header = response
                .header("Content-Range")
                .unwrap_or_default()
                .to_string();
            let Some((start, total)) = parse_content_range(&header) else {
                bail!(
                    "GET {url}: expected a Content-Range header with a 206 reply; found `{header}`"
                );
            };
            if start != have {
                bail!("GET {url}: asked for bytes from {have}; the server sent bytes from {start}");
            }
            (have, total.or(length.map(|l| l + have)))
        }
        200 => {
            if have > 0 {
                eprintln!(
                    "the server does not resume downloads; starting again from the beginning"
                );
            }
            (0, length)
        }
        other => bail!("GET {url}: expected status 200 or 206; found {other}"),
    };
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .append(start > 0)
        .truncate(start == 0)
        .open(part)
        .with_context(|| format!("opening {}", part.display()))?;
    let mut reader = response.into_reader();
    let mut buf = vec![0u8; 1 << 18];
    let mut done = start;
    progress(done, total);
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "reading {url} after {done} bytes (kept in {})",
                    part.display()
                )))
            }
        };
        file.write_all(&buf[..n])
            .with_context(|| format!("writing {}", part.display()))?;
        done += n as u64;
        progress(done, total);
    }
    file.flush()
        .with_context(|| format!("writing {}", part.display()))?;
    if let Some(total) = total {
        if done != total {
            bail!(
                "GET {url}: the connection ended after {done} of {total} bytes (kept in {})",
                part.display()
            );
        }
    }
    Ok(Fetched {
        size: done,
        resumed_from: start,
    })
}

/// A progress line on stderr, redrawn at most twice a second.
pub struct Progress {
    label: String,
    start: Instant,
    last: Option<Instant>,
    first_bytes: Option<u64>,
}

impl Progress {
    pub fn new(label: &str) -> Self {
        Self {
            label: label.to_string(),
            start: Instant::now(),
            last: None,
            first_bytes: None,
        }
    }

    pub fn update(&mut self, done: u64, total: Option<u64>) {
        let first = *self.first_bytes.get_or_insert(done);
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now - t < Duration::from_millis(500))
        {
            return;
        }
        self.last = Some(now);
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let rate = mib(done - first) / (now - self.start).as_secs_f64().max(1e-3);
        match total {
            Some(t) if t > 0 => eprint!(
                "\r{}: {:.1} / {:.1} MiB ({:.1}%), {:.1} MiB/s   ",
                self.label,
                mib(done),
                mib(t),
                100.0 * done as f64 / t as f64,
                rate
            ),
            _ => eprint!(
                "\r{}: {:.1} MiB, {:.1} MiB/s   ",
                self.label,
                mib(done),
                rate
            ),
        }
    }

    /// Ends the progress line.
    pub fn finish_line(&self) {
        if self.last.is_some() {
            eprintln!();
        }
    }

    pub fn finish(&mut self, size: u64) {
        self.last = None;
        self.update(size, Some(size));
        eprintln!();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::BufRead;
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};
    use std::thread::JoinHandle;

    /// How the test server answers one connection.
    #[derive(Clone, Copy)]
    pub enum Reply {
        /// Honour `Range: bytes=N-` with 206 (416 past the end); no range: 200 with everything.
        Ranges,
        /// 200 with the full Content-Length, but the connection closes after this many bytes.
        DropAfter(usize),
        /// Always 200 with everything, whatever the request asks.
        IgnoreRange,
    }

    /// The Range header of every request the test server received, in order.
    pub type SeenRanges = Arc<Mutex<Vec<Option<String>>>>;

    /// A one-file HTTP server on 127.0.0.1 that answers exactly `script.len()` connections, then
    /// stops. Returns its URL, the Range headers it received and its thread.
    pub fn serve(data: Vec<u8>, script: Vec<Reply>) -> (String, SeenRanges, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/archive.bin", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = Arc::clone(&seen);
        let handle = std::thread::spawn(move || {
            for reply in script {
                let (mut stream, _) = listener.accept().unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                let mut range = None;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':') {
                        if k.eq_ignore_ascii_case("range") {
                            range = Some(v.trim().to_string());
                        }
                    }
                }
                seen2.lock().unwrap().push(range.clone());
                let from = range
                    .as_deref()
                    .and_then(|r| r.strip_prefix("bytes="))
                    .and_then(|r| r.trim_end_matches('-').parse::<usize>().ok());
                let total = data.len();
                let (head, body): (String, &[u8]) = match (reply, from) {
                    (Reply::Ranges, Some(f)) if f >= total => (
                        format!("HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{total}\r\nContent-Length: 0\r\n"),
                        &[],
                    ),
                    (Reply::Ranges, Some(f)) => (
                        format!(
                            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {f}-{}/{total}\r\nContent-Length: {}\r\n",
                            total - 1,
                            total - f
                        ),
                        &data[f..],
                    ),
                    (Reply::DropAfter(k), _) => (
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n"),
                        &data[..k.min(total)],
                    ),
                    _ => (format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n"), &data[..]),
                };
                let _ = stream.write_all(format!("{head}Connection: close\r\n\r\n").as_bytes());
                let _ = stream.write_all(body);
                let _ = stream.flush();
            }
        });
        (url, seen, handle)
    }

    pub fn pseudo_random(n: usize) -> Vec<u8> {
        let mut x: u32 = 0x1234_5678;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x >> 24) as u8
            })
            .collect()
    }

    fn agent() -> ureq::Agent {
        ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(20))
            .build()
    }

    #[test]
    fn content_range_parsing() {
        assert_eq!(
            parse_content_range("bytes 100-199/200"),
            Some((100, Some(200)))
        );
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }

    #[test]
    fn interrupted_download_resumes_with_a_range_request() {
        let data = pseudo_random(300_000);
        let (url, seen, server) =
            serve(data.clone(), vec![Reply::DropAfter(70_000), Reply::Ranges]);
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("a.part");
        let mut calls = 0;
        let first = fetch_resumable(&agent(), &url, &part, &mut |_, _| calls += 1);
        assert!(first.is_err(), "the first connection is cut");
        assert_eq!(
            fs::metadata(&part).unwrap().len(),
            70_000,
            "received bytes are kept"
        );
        let second = fetch_resumable(&agent(), &url, &part, &mut |_, _| {}).unwrap();
        assert_eq!(
            second,
            Fetched {
                size: 300_000,
                resumed_from: 70_000
            }
        );
        assert_eq!(fs::read(&part).unwrap(), data);
        server.join().unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            vec![None, Some("bytes=70000-".to_string())]
        );
        assert!(calls > 0, "progress reported");
    }

    #[test]
    fn server_ignoring_ranges_restarts_from_zero() {
        let data = pseudo_random(50_000);
        let (url, _, server) = serve(data.clone(), vec![Reply::IgnoreRange]);
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("a.part");
        fs::write(&part, vec![0xAB; 20_000]).unwrap();
        let fetched = fetch_resumable(&agent(), &url, &part, &mut |_, _| {}).unwrap();
        assert_eq!(
            fetched,
            Fetched {
                size: 50_000,
                resumed_from: 0
            }
        );
        assert_eq!(fs::read(&part).unwrap(), data);
        server.join().unwrap();
    }

    #[test]
    fn complete_part_file_is_recognised_by_416() {
        let data = pseudo_random(10_000);
        let (url, seen, server) = serve(data.clone(), vec![Reply::Ranges]);
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("a.part");
        fs::write(&part, &data).unwrap();
        let fetched = fetch_resumable(&agent(), &url, &part, &mut |_, _| {}).unwrap();
        assert_eq!(
            fetched,
            Fetched {
                size: 10_000,
                resumed_from: 10_000
            }
        );
        server.join().unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            vec![Some("bytes=10000-".to_string())]
        );
    }
}
