//! `iuf serve` as a client sees it: real models on real images (../shared/datasets/mvtec-mini), the
//! JSON API, bad requests, reload, metrics, and the page in a real headless browser.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{blank_png, mvtec_mini, peak_rss, Scratch};

/// Two real models, trained once for every test here: `a` knows bottle; `b` is `a` after
/// `iuf learn` of pill.
struct Models {
    /// Where they are, with the feature cache every service here shares.
    scratch: Scratch,
    a: PathBuf,
    b: PathBuf,
}

fn models() -> &'static Models {
    static MODELS: OnceLock<Models> = OnceLock::new();
    MODELS.get_or_init(|| {
        let s = Scratch::new();
        let data = mvtec_mini();
        let (a, b) = (s.path("a.safetensors"), s.path("b.safetensors"));
        s.train(&data, "bottle").out(&a).ok();
        s.iuf("learn")
            .model(&a)
            .data(&data)
            .classes("pill")
            .out(&b)
            .ok();
        Models { scratch: s, a, b }
    })
}

fn image(rel: &str) -> Vec<u8> {
    std::fs::read(mvtec_mini().join(rel)).unwrap()
}

fn sha256(path: &Path) -> String {
    iuf_backbone::fetch::sha256_hex(&std::fs::read(path).unwrap())
}

/// A running `iuf serve`, stopped when dropped.
struct Service {
    child: Child,
    url: String,
}

impl Service {
    fn start(model: &Path, extra: &[&str]) -> Self {
        let mut child = models()
            .scratch
            .iuf("serve")
            .flag("--bind", "127.0.0.1:0")
            .model(model)
            .args(extra)
            .command()
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start iuf serve");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut seen = String::new();
        let url = loop {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("iuf serve stopped before listening:\n{seen}"))
                .unwrap();
            seen.push_str(&line);
            seen.push('\n');
            if let Some(rest) = line.strip_prefix("listening on ") {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        // Keep draining stderr so the service never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self { child, url }
    }

    /// The answer to a request; `body` None means GET.
    fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Answer {
        let mut req = ureq::request(method, &format!("{}{path}", self.url));
        for (k, v) in headers {
            req = req.set(k, v);
        }
        let r = match body {
            Some(b) => req.send_bytes(b),
            None => req.call(),
        };
        let (status, text) = match r {
            Ok(resp) => (resp.status(), resp.into_string().unwrap()),
            Err(ureq::Error::Status(code, resp)) => (code, resp.into_string().unwrap()),
            Err(e) => panic!("{method} {path}: {e}"),
        };
        Answer {
            request: format!("{method} {path}"),
            status,
            text,
        }
    }

    /// A connection that has sent the head of a POST announcing `length` bytes of body.
    fn post_head(&self, path: &str, length: usize) -> TcpStream {
        let host = self.url.strip_prefix("http://").unwrap();
        let mut c = TcpStream::connect(host).unwrap();
        write!(
            c,
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        c
    }

    /// The status answered to a POST that announces `length` bytes of body and sends none: a
    /// body the service would not read could make the kernel reset the connection and drop the
    /// answer before it is read.
    fn raw_status(&self, path: &str, length: usize) -> u16 {
        let mut c = self.post_head(path, length);
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        read_status(&mut c)
    }

    /// The status answered to a POST whose body arrives in two halves, 300 ms apart; panics if
    /// the service answers before the second half is sent.
    fn raw_status_after_slow_body(&self, path: &str, body: &[u8]) -> u16 {
        use std::io::Read;
        let mut c = self.post_head(path, body.len());
        let half = body.len() / 2;
        c.write_all(&body[..half]).unwrap();
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut early = [0u8; 64];
        match c.read(&mut early) {
            Ok(n) => panic!(
                "{path}: answered before the body was in: {:?}",
                String::from_utf8_lossy(&early[..n])
            ),
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "{path}: {e}"
            ),
        }
        c.write_all(&body[half..]).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        read_status(&mut c)
    }

    /// (status, JSON answer) of a POST of `bytes`.
    fn post(&self, path: &str, bytes: &[u8]) -> (u16, Value) {
        self.call("POST", path, &[], Some(bytes)).json()
    }

    fn inspect(&self, bytes: &[u8]) -> (u16, Value) {
        self.post("/v1/inspect", bytes)
    }

    /// A connection that has sent half of a request header and nothing more.
    fn half_header(&self) -> TcpStream {
        let host = self.url.strip_prefix("http://").unwrap();
        let mut c = TcpStream::connect(host).unwrap();
        write!(c, "GET /healthz HTTP/1.1\r\nHost: {host}\r\nAccept: ").unwrap();
        c
    }

    /// Sends `signal` (`TERM`, `INT`) to the service.
    fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args(["-s", signal, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -s {signal}");
    }

    /// How long the service took to exit, successfully, within `limit`; panics otherwise.
    fn exits_within(&mut self, limit: Duration) -> Duration {
        let t = Instant::now();
        while t.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "iuf serve stopped with {status}");
                return t.elapsed();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("iuf serve still running {limit:?} after the signal");
    }
}

/// Whether the service closed `c` within `limit` (end of stream, or a reset); it may answer
/// first (408).
fn closed_within(c: &mut TcpStream, limit: Duration) -> bool {
    use std::io::Read;
    let t = Instant::now();
    let mut buf = [0u8; 256];
    loop {
        let left = limit.saturating_sub(t.elapsed());
        if left.is_zero() {
            return false;
        }
        c.set_read_timeout(Some(left)).unwrap();
        match c.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// A request's answer: its status and body.
struct Answer {
    request: String,
    status: u16,
    text: String,
}

impl Answer {
    fn text(self) -> (u16, String) {
        (self.status, self.text)
    }

    fn json(self) -> (u16, Value) {
        let v = serde_json::from_str(&self.text).unwrap_or_else(|e| {
            panic!(
                "{} answered {} with no JSON ({e}): {}",
                self.request, self.status, self.text
            )
        });
        (self.status, v)
    }
}

/// The status of the HTTP answer read to the end of `c`.
fn read_status(c: &mut TcpStream) -> u16 {
    use std::io::Read;
    let mut answer = Vec::new();
    let _ = c.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {answer:?}"))
}

/// The status and JSON body of the HTTP answer read to the end of `c`.
fn read_json_answer(c: &mut TcpStream) -> (u16, Value) {
    use std::io::Read;
    let mut answer = Vec::new();
    let _ = c.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer in {answer:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {answer:?}"));
    let json = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("answer {status} with no JSON body ({e}): {answer:?}"));
    (status, json)
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn multipart(parts: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "iufTestBoundary7MA4YWxkTrZu0gW";
    let mut body = Vec::new();
    for (name, bytes) in parts {
        write!(
            body,
            "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .unwrap();
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    write!(body, "--{boundary}--\r\n").unwrap();
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-4 * a.abs().max(1.0)
}

/// Guarantees: answers match `iuf predict --json` field for field; bad requests get 400/413/422
/// naming what was wrong and never take the service down; concurrent clients are batched and
/// answered correctly; a corrupt model offered for reload is refused while the old one keeps
/// serving; a good one is swapped in; reload needs the token; metrics count it all.
#[test]
fn real_data_serve_answers_like_predict_refuses_bad_requests_and_reloads() {
    let m = models();
    let t = tempfile::tempdir().unwrap();
    let served = t.path().join("served.safetensors");
    std::fs::copy(&m.a, &served).unwrap();
    let svc = Service::start(&served, &["--token", "s3cret", "--max-body-mib", "1"]);

    assert_eq!(
        svc.call("GET", "/healthz", &[], None).text(),
        (200, "ok\n".into())
    );
    let (status, ready) = svc.call("GET", "/readyz", &[], None).json();
    assert_eq!(
        (status, ready["model_sha256"].as_str()),
        (200, Some(sha256(&m.a).as_str()))
    );
    let (_, info) = svc.call("GET", "/v1/model", &[], None).json();
    assert_eq!(info["learned"][0]["class"], "bottle");
    assert_eq!(info["sha256"], sha256(&m.a));

    // Same image, same model: the answer carries predict's fields and values.
    let defect = "bottle/test/broken_large/000.png";
    let (status, o) = svc.inspect(&image(defect));
    assert_eq!(status, 200, "{o}");
    let s = Scratch::new();
    let p = s
        .iuf_json("predict")
        .model(&m.a)
        .arg(mvtec_mini().join(defect))
        .out(s.path("pred"))
        .ok()
        .json_lines();
    let want = &p[0];
    for k in ["object", "decision", "quantile"] {
        assert_eq!(o[k], want[k], "{k}: serve {o} predict {want}");
    }
    for k in ["score", "threshold", "object_probability"] {
        assert!(
            close(o[k].as_f64().unwrap(), want[k].as_f64().unwrap()),
            "{k}: serve {o} predict {want}"
        );
    }
    assert_eq!(o["decision"], "defect");
    assert_eq!(o["model_sha256"], sha256(&m.a));
    for k in ["queue", "decode", "backbone", "model", "heatmap"] {
        assert!(o["time_ms"][k].as_f64().unwrap() >= 0.0, "{o}");
    }
    assert!(o.get("heatmap").is_none(), "no heatmap unless asked for");
    let (_, h) = svc.post("/v1/inspect?heatmap=png", &image(defect));
    let url = h["heatmap"].as_str().unwrap();
    use base64::Engine;
    let png = base64::engine::general_purpose::STANDARD
        .decode(url.strip_prefix("data:image/png;base64,").unwrap())
        .unwrap();
    assert_eq!(image::load_from_memory(&png).unwrap().width(), 256);

    // Several images as multipart: one answer each, in order; a bad part fails alone.
    let good = image("bottle/test/good/000.png");
    let (ct, body) = multipart(&[
        ("good.png", &good),
        ("notes.txt", b"not an image"),
        ("defect.png", &image(defect)),
    ]);
    let (status, list) = svc
        .call("POST", "/v1/inspect", &[("Content-Type", &ct)], Some(&body))
        .json();
    assert_eq!(status, 200, "{list}");
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 3);
    assert_eq!(list[0]["path"], "good.png");
    assert!(
        list[1]["error"]
            .as_str()
            .unwrap()
            .contains("notes.txt: not an image"),
        "{}",
        list[1]
    );
    assert!(close(
        list[2]["score"].as_f64().unwrap(),
        o["score"].as_f64().unwrap()
    ));

    // Bad requests: each refused with a status and a reason.
    let mut truncated = good.clone();
    truncated.truncate(good.len() / 2);
    for (bytes, reason) in [
        (
            &b"hello, not an image"[..],
            "expected PNG, JPEG, BMP or TIFF",
        ),
        (b"GIF89a not really", "Gif images are not read here"),
        (&truncated, "damaged or truncated Png image"),
    ] {
        let (status, e) = svc.inspect(bytes);
        assert_eq!(status, 422);
        assert!(e["error"].as_str().unwrap().contains(reason), "{e}");
    }
    let (status, e) = svc.inspect(b"");
    assert_eq!(status, 400, "{e}");
    // Too large: refused from its Content-Length, before the body is read.
    assert_eq!(
        svc.raw_status("/v1/inspect", 3 << 20),
        413,
        "a 3 MiB body over --max-body-mib 1"
    );
    let (status, e) = svc.post("/v1/inspect?heatmap=gif", &good);
    assert_eq!(status, 400, "{e}");
    assert!(e["error"].as_str().unwrap().contains("heatmap=gif"), "{e}");
    // A bad query is answered only once the body is in: answering earlier and closing the
    // connection made clients still sending see a broken pipe instead of the 400 (a CI failure).
    assert_eq!(
        svc.raw_status_after_slow_body("/v1/inspect?heatmap=gif", &good),
        400
    );
    let (status, e) = svc.post("/v1/inspect?object=tire", &good);
    assert_eq!(status, 400);
    assert!(e["error"].as_str().unwrap().contains("tire"), "{e}");
    // A client that promises a body and disconnects halfway.
    let host = svc.url.strip_prefix("http://").unwrap();
    let mut c = TcpStream::connect(host).unwrap();
    write!(
        c,
        "POST /v1/inspect HTTP/1.1\r\nHost: {host}\r\nContent-Length: 100000\r\n\r\n"
    )
    .unwrap();
    c.write_all(&good[..1000]).unwrap();
    drop(c);

    // Concurrent clients: batched, each answered with its own image's score.
    let good_score = svc.inspect(&good).1["score"].as_f64().unwrap();
    let want = [
        (good.clone(), good_score),
        (image(defect), o["score"].as_f64().unwrap()),
    ];
    std::thread::scope(|scope| {
        for c in 0..6 {
            let (svc, want) = (&svc, &want);
            scope.spawn(move || {
                for r in 0..4 {
                    let (bytes, score) = &want[(c + r) % 2];
                    let (status, o) = svc.inspect(bytes);
                    assert_eq!(status, 200, "{o}");
                    assert!(
                        close(o["score"].as_f64().unwrap(), *score),
                        "{o} against {score}"
                    );
                }
            });
        }
    });

    // Reload: the token is required; a corrupt file is refused and the old model keeps serving.
    let (status, _) = svc.call("POST", "/v1/reload", &[], None).json();
    assert_eq!(status, 401);
    let bytes_b = std::fs::read(&m.b).unwrap();
    std::fs::write(&served, &bytes_b[..bytes_b.len() / 3]).unwrap();
    let auth = [("Authorization", "Bearer s3cret")];
    let (status, e) = svc.call("POST", "/v1/reload", &auth, None).json();
    assert_eq!(status, 422, "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("keeps serving"),
        "{e}"
    );
    let (status, o2) = svc.inspect(&good);
    assert_eq!(
        (status, &o2["model_sha256"]),
        (200, &Value::String(sha256(&m.a)))
    );
    // The new model, written as `iuf learn` writes (temp file, rename).
    std::fs::write(t.path().join(".tmp"), &bytes_b).unwrap();
    std::fs::rename(t.path().join(".tmp"), &served).unwrap();
    let (status, r) = svc.call("POST", "/v1/reload", &auth, None).json();
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        (r["reloaded"].as_bool(), r["sha256"].as_str()),
        (Some(true), Some(sha256(&m.b).as_str()))
    );
    let (_, pill) = svc.inspect(&image("pill/test/good/000.png"));
    assert_eq!(pill["object"], "pill", "{pill}");
    assert_eq!(pill["model_sha256"], sha256(&m.b));
    let (_, info) = svc.call("GET", "/v1/model", &[], None).json();
    assert_eq!(info["learned"].as_array().unwrap().len(), 2);

    let metrics = svc.call("GET", "/metrics", &[], None).text().1;
    for want in [
        "iuf_http_requests_total{route=\"/v1/inspect\",status=\"200\"}",
        "iuf_http_requests_total{route=\"/v1/inspect\",status=\"422\"}",
        "iuf_http_requests_total{route=\"/v1/inspect\",status=\"413\"}",
        "iuf_http_requests_total{route=\"/v1/reload\",status=\"401\"}",
        "iuf_reloads_total{outcome=\"refused\"} 1",
        "iuf_reloads_total{outcome=\"swapped\"} 1",
        "iuf_batch_images_count",
        "iuf_queue_images 0",
        "iuf_worker_panics_total 0",
        &format!("sha256=\"{}\"", sha256(&m.b)),
    ] {
        assert!(metrics.contains(want), "metrics lack {want}:\n{metrics}");
    }
}

/// Guarantee: clients are shown the model file's name, never the folder the service keeps it in
/// (`GET /v1/model` and `/metrics`).
#[test]
fn serve_shows_clients_the_model_file_name_never_its_folder() {
    let t = tempfile::tempdir().unwrap();
    let served = t.path().join("line7.safetensors");
    std::fs::copy(&models().a, &served).unwrap();
    let svc = Service::start(&served, &[]);
    let folder = t.path().to_str().unwrap();
    let (status, info) = svc.call("GET", "/v1/model", &[], None).json();
    assert_eq!(
        (status, info["model"].as_str()),
        (200, Some("line7.safetensors"))
    );
    assert!(!info.to_string().contains(folder), "{info}");
    let metrics = svc.call("GET", "/metrics", &[], None).text().1;
    assert!(metrics.contains("path=\"line7.safetensors\""), "{metrics}");
    assert!(!metrics.contains(folder), "{metrics}");
}

/// Guarantee (issue 23 item 7): the service reads each uploaded image's size from its header
/// before decoding anything; an image that alone exceeds `--decode-budget-mp` gets 413 with a
/// JSON error naming the part, its size and the limit; the images of a request are decoded a
/// batch at a time within the budget (three 9 MP images under 10 MP run one by one, where all of
/// a request's images were decoded at once before), and the service goes on serving.
#[test]
fn serve_decodes_within_its_budget_and_answers_413_for_an_image_over_it() {
    let m = models();
    let svc = Service::start(&m.a, &["--decode-budget-mp", "10"]);
    let huge = blank_png(12000);
    let (status, e) = svc.inspect(&huge);
    assert_eq!(status, 413, "{e}");
    assert_eq!(
        e["error"],
        "body: the image is 12000x12000 pixels (144 MP), over the 10 MP this service decodes at \
         once; send a smaller image"
    );
    let mid = blank_png(3000);
    let good = image("bottle/test/good/000.png");
    let (ct, body) = multipart(&[("a.png", &mid), ("huge.png", &huge), ("b.png", &good)]);
    let (status, e) = svc
        .call("POST", "/v1/inspect", &[("Content-Type", &ct)], Some(&body))
        .json();
    assert_eq!(status, 413, "{e}");
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .starts_with("huge.png: the image is 12000x12000 pixels (144 MP)"),
        "{e}"
    );
    let (ct, body) = multipart(&[("a.png", &mid), ("b.png", &mid), ("c.png", &mid)]);
    let (status, v) = svc
        .call("POST", "/v1/inspect", &[("Content-Type", &ct)], Some(&body))
        .json();
    assert_eq!(status, 200, "{v}");
    let outcomes = v.as_array().unwrap();
    assert_eq!(outcomes.len(), 3, "{v}");
    for o in outcomes {
        assert!(o["score"].is_number(), "{o}");
        assert_eq!(o["time_ms"]["batch"], 1, "{o}");
    }
    let (status, v) = svc.inspect(&good);
    assert_eq!(status, 200, "{v}");
}

/// Guarantee (issue 23 item 7), measured: 8 parts of a 12000 x 12000 PNG (0.6 GB each decoded)
/// keep the service under 2 GB with a budget of 150 MP, where it decoded all 8 at once (4.3 GB)
/// before. Slow: the fast version above checks the batches.
#[test]
#[ignore = "decodes 8 images of 144 MP; the fast version runs always"]
fn serve_memory_stays_within_the_decode_budget() {
    let m = models();
    let svc = Service::start(&m.a, &["--decode-budget-mp", "150", "--timeout-s", "600"]);
    let huge = blank_png(12000);
    let parts: Vec<(String, &[u8])> = (0..8).map(|i| (format!("{i}.png"), &huge[..])).collect();
    let parts: Vec<(&str, &[u8])> = parts.iter().map(|(n, b)| (n.as_str(), *b)).collect();
    let (ct, body) = multipart(&parts);
    let before = peak_rss(svc.child.id()).unwrap();
    let (status, v) = svc
        .call("POST", "/v1/inspect", &[("Content-Type", &ct)], Some(&body))
        .json();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v.as_array().unwrap().len(), 8);
    let peak = peak_rss(svc.child.id()).unwrap();
    eprintln!(
        "serve peak resident memory: {} MiB ({} MiB before the request)",
        peak >> 20,
        before >> 20
    );
    assert!(peak < 2 << 30, "the service peaked at {} MiB", peak >> 20);
}

/// Guarantee: a full queue answers 503 with Retry-After at once (the clients refused may retry)
/// and every admitted request is still answered correctly; a request with more images than the
/// queue can ever hold gets 413, not a 503 that no retry could cure.
#[test]
fn real_data_serve_sheds_load_with_503_when_its_queue_is_full() {
    let m = models();
    let svc = Service::start(&m.a, &["--max-batch", "1", "--queue", "1"]);
    let good = image("bottle/test/good/000.png");
    let (ct, body) = multipart(&[("a.png", &good), ("b.png", &good)]);
    let (status, e) = svc
        .call("POST", "/v1/inspect", &[("Content-Type", &ct)], Some(&body))
        .json();
    assert_eq!(status, 413, "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("queues at most 1"),
        "{e}"
    );
    let url = format!("{}/v1/inspect", svc.url);
    // All clients start together, so a busy machine cannot spread them out to one at a time.
    let start = std::sync::Barrier::new(12);
    let answers: Vec<(u16, Option<String>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..12)
            .map(|_| {
                let (url, good, start) = (&url, &good, &start);
                scope.spawn(move || {
                    start.wait();
                    match ureq::post(url).send_bytes(good) {
                        Ok(r) => (r.status(), None),
                        Err(ureq::Error::Status(code, r)) => {
                            (code, r.header("Retry-After").map(str::to_string))
                        }
                        Err(e) => panic!("{e}"),
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let shed: Vec<_> = answers.iter().filter(|(s, _)| *s == 503).collect();
    assert!(
        !shed.is_empty(),
        "12 simultaneous requests into a queue of 1: {answers:?}"
    );
    assert!(
        shed.iter().all(|(_, retry)| retry.as_deref() == Some("1")),
        "{answers:?}"
    );
    assert!(
        answers.iter().all(|(s, _)| *s == 200 || *s == 503),
        "{answers:?}"
    );
    assert!(answers.iter().any(|(s, _)| *s == 200), "{answers:?}");
    // Still serving after shedding.
    assert_eq!(svc.inspect(&good).0, 200);
}

/// A headless Chromium (from the system packages) driven over the DevTools protocol on a pipe.
struct Browser {
    child: Child,
    to: std::fs::File,
    from: std::sync::mpsc::Receiver<Value>,
    next: u64,
}

fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|n| std::env::split_paths(&path).map(move |d| d.join(n)))
        .find(|p| p.is_file())
}

impl Browser {
    fn start(exe: &Path, profile: &Path) -> Self {
        use std::os::fd::FromRawFd;
        use std::os::unix::process::CommandExt;
        let mut to_browser = [0; 2];
        let mut from_browser = [0; 2];
        // SAFETY: pipe2 fills the two-element arrays; close-on-exec keeps our ends out of the child.
        unsafe {
            assert_eq!(libc::pipe2(to_browser.as_mut_ptr(), libc::O_CLOEXEC), 0);
            assert_eq!(libc::pipe2(from_browser.as_mut_ptr(), libc::O_CLOEXEC), 0);
        }
        let (child_in, child_out) = (to_browser[0], from_browser[1]);
        let mut cmd = Command::new(exe);
        cmd.args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--remote-debugging-pipe",
            "--window-size=1280,860",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        // SAFETY: only async-signal-safe fcntl and dup2 calls between fork and exec; the DevTools pipe is
        // read from fd 3 and written to fd 4 by the browser.
        unsafe {
            cmd.pre_exec(move || {
                // Copies above 10 first: dup2 onto the same number would keep close-on-exec.
                let (i, o) = (
                    libc::fcntl(child_in, libc::F_DUPFD, 10),
                    libc::fcntl(child_out, libc::F_DUPFD, 10),
                );
                if i < 0 || o < 0 || libc::dup2(i, 3) < 0 || libc::dup2(o, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start chromium");
        // SAFETY: the fds come from pipe2 above and are owned here from now on.
        let (to, from, a, b) = unsafe {
            (
                std::fs::File::from_raw_fd(to_browser[1]),
                std::fs::File::from_raw_fd(from_browser[0]),
                std::fs::File::from_raw_fd(child_in),
                std::fs::File::from_raw_fd(child_out),
            )
        };
        drop((a, b));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(from);
            loop {
                let mut msg = Vec::new();
                if r.read_until(0, &mut msg).unwrap_or(0) == 0 {
                    return;
                }
                msg.pop();
                if let Ok(v) = serde_json::from_slice::<Value>(&msg) {
                    if tx.send(v).is_err() {
                        return;
                    }
                }
            }
        });
        Self {
            child,
            to,
            from: rx,
            next: 0,
        }
    }

    /// Sends one DevTools command and waits for its answer.
    fn send(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut msg = serde_json::json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = Value::String(s.into());
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .from
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no answer from chromium to {method}"));
            if v["id"].as_u64() == Some(id) {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    fn eval(&mut self, session: &str, expression: &str) -> Value {
        let r = self.send(
            Some(session),
            "Runtime.evaluate",
            serde_json::json!({ "expression": expression, "returnByValue": true }),
        );
        r["result"]["value"].clone()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Guarantee: a person can use the page at `/`: it lists what the model knows, and an image chosen
/// in the file input comes back with its heatmap, score and verdict on screen. Runs in a real
/// headless Chromium. Where no browser is installed the test says so and passes, unless
/// IUF_REQUIRE_BROWSER is set (`.ci/run` sets it after installing Chromium). IUF_SCREENSHOT=FILE
/// keeps the screenshot (docs/serve-page.png is made this way).
#[test]
fn real_data_serve_page_works_in_headless_chromium() {
    let Some(exe) = chromium() else {
        assert!(
            std::env::var_os("IUF_REQUIRE_BROWSER").is_none(),
            "IUF_REQUIRE_BROWSER is set but no chromium is on PATH"
        );
        eprintln!("skipped: no chromium, chromium-browser or google-chrome on PATH");
        return;
    };
    let m = models();
    let svc = Service::start(&m.b, &[]);
    let t = tempfile::tempdir().unwrap();
    let mut b = Browser::start(&exe, &t.path().join("profile"));
    let targets = b.send(None, "Target.getTargets", serde_json::json!({}));
    let page = targets["targetInfos"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == "page")
        .expect("a page target")["targetId"]
        .clone();
    let session = b.send(
        None,
        "Target.attachToTarget",
        serde_json::json!({ "targetId": page, "flatten": true }),
    )["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    let s = session.as_str();
    b.send(
        Some(s),
        "Page.navigate",
        serde_json::json!({ "url": format!("{}/", svc.url) }),
    );
    let wait = |b: &mut Browser, what: &str, js: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v = b.eval(s, js);
            if v.as_bool() == Some(true) {
                return;
            }
            if Instant::now() > deadline {
                let text = b.eval(s, "document.body.innerText");
                panic!("page: timed out waiting for {what}; the page shows:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait(
        &mut b,
        "the model table",
        "document.querySelectorAll('#objects tr').length === 3",
    );
    let objects = b.eval(s, "document.getElementById('objects').innerText");
    assert!(objects.as_str().unwrap().contains("pill"), "{objects}");

    // Choose a defective image in the file input, as a person would.
    let doc = b.send(Some(s), "DOM.getDocument", serde_json::json!({}));
    let input = b.send(
        Some(s),
        "DOM.querySelector",
        serde_json::json!({ "nodeId": doc["root"]["nodeId"], "selector": "#file" }),
    )["nodeId"]
        .clone();
    // The browser reads the file by its plain absolute path (no `..`).
    let file =
        std::fs::canonicalize(mvtec_mini().join("bottle/test/broken_large/000.png")).unwrap();
    b.send(
        Some(s),
        "DOM.setFileInputFiles",
        serde_json::json!({ "nodeId": input, "files": [file] }),
    );
    wait(
        &mut b,
        "the verdict and the heatmap",
        "(() => { const h = document.getElementById('heatmap'); \
          return ['DEFECT', 'OK'].includes(document.getElementById('verdict').textContent) \
              && h.complete && h.naturalWidth > 0; })()",
    );
    let verdict = b.eval(s, "document.getElementById('verdict').textContent");
    let api = svc.inspect(&std::fs::read(&file).unwrap()).1;
    assert_eq!(
        verdict.as_str().unwrap(),
        api["decision"].as_str().unwrap().to_uppercase()
    );
    assert_eq!(verdict, "DEFECT");
    let shown = b.eval(s, "document.getElementById('result').innerText");
    assert!(shown.as_str().unwrap().contains("bottle"), "{shown}");

    let shot = b.send(
        Some(s),
        "Page.captureScreenshot",
        serde_json::json!({ "format": "png" }),
    );
    use base64::Engine;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap())
        .unwrap();
    let img = image::load_from_memory(&png).unwrap();
    assert!(img.width() >= 800, "{}", img.width());
    if let Some(keep) = std::env::var_os("IUF_SCREENSHOT") {
        std::fs::write(keep, &png).unwrap();
    }
}

/// Opens `n` half-header connections to `svc`, checks that a normal client is answered
/// (`/healthz`, and an image) while they are open, and returns them with how long those
/// answers took.
fn normal_client_beside_half_headers(svc: &Service, n: usize) -> (Vec<TcpStream>, Duration) {
    let open: Vec<TcpStream> = (0..n).map(|_| svc.half_header()).collect();
    let t = Instant::now();
    assert_eq!(svc.call("GET", "/healthz", &[], None).text().0, 200);
    let (status, o) = svc.inspect(&image("bottle/test/good/000.png"));
    assert_eq!(status, 200, "{o}");
    let took = t.elapsed();
    eprintln!("{n} half-header connections open: a normal client answered in {took:?}");
    (open, took)
}

/// Guarantee: a connection that has not sent a whole request header within --header-timeout-s
/// (half a header, or idle after an answer) is closed, and normal clients are answered
/// meanwhile. The 300-connection version is `..._300_...` (ignored: it waits the default 10 s).
#[test]
fn serve_closes_half_header_connections_after_the_header_timeout() {
    let svc = Service::start(&models().a, &["--header-timeout-s", "1"]);
    let (mut open, took) = normal_client_beside_half_headers(&svc, 50);
    assert!(took < Duration::from_secs(5), "{took:?}");
    // Idle after an answer: closed too.
    let mut idle = svc.half_header();
    write!(idle, "*/*\r\n\r\n").unwrap();
    open.push(idle);
    let t = Instant::now();
    for (i, c) in open.iter_mut().enumerate() {
        assert!(
            closed_within(c, Duration::from_secs(6)),
            "connection {i} still open {:?} after a 1 s header timeout",
            t.elapsed()
        );
    }
    eprintln!(
        "51 connections closed {:?} after the normal client",
        t.elapsed()
    );
    assert_eq!(svc.call("GET", "/healthz", &[], None).text().0, 200);
}

/// Guarantee: with --max-connections connections open and none of them busy, a new client is
/// answered at once: the connection idle for longest is closed to make room.
#[test]
fn serve_at_its_connection_limit_closes_idle_connections_for_new_clients() {
    let svc = Service::start(&models().a, &["--max-connections", "16"]);
    let (mut open, took) = normal_client_beside_half_headers(&svc, 50);
    assert!(took < Duration::from_secs(5), "{took:?}");
    let still_open = open
        .iter_mut()
        .map(|c| closed_within(c, Duration::from_millis(200)))
        .filter(|closed| !closed)
        .count();
    assert!(
        still_open <= 16,
        "{still_open} of 50 idle connections open past a limit of 16"
    );
}

/// Slow version of the header-timeout guarantee, at the default settings: 300 half-header
/// connections, a normal client answered beside them, all 300 closed by the 10 s timeout.
#[test]
#[ignore = "waits out the default 10 s header timeout; the fast version runs always"]
fn serve_answers_beside_300_half_header_connections_and_closes_them() {
    let svc = Service::start(&models().a, &[]);
    let (mut open, took) = normal_client_beside_half_headers(&svc, 300);
    assert!(took < Duration::from_secs(5), "{took:?}");
    let t = Instant::now();
    for (i, c) in open.iter_mut().enumerate() {
        assert!(
            closed_within(c, Duration::from_secs(16)),
            "connection {i} still open {:?} later",
            t.elapsed()
        );
    }
    eprintln!(
        "300 connections closed {:?} after the normal client",
        t.elapsed()
    );
}

/// Guarantee: on SIGTERM with a half-header connection open, the request in progress is still
/// answered, the half-header connection is closed, and the process exits within its stated
/// bound (--drain-s 10 + 5 s).
#[test]
fn serve_stops_on_sigterm_with_a_half_header_connection_open() {
    let mut svc = Service::start(&models().a, &[]);
    let mut half = svc.half_header();
    let body = image("bottle/test/good/000.png");
    let mut busy = svc.post_head("/v1/inspect", body.len());
    busy.write_all(&body[..body.len() / 2]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    svc.signal("TERM");
    let t = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    busy.write_all(&body[body.len() / 2..]).unwrap();
    busy.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    assert_eq!(
        read_status(&mut busy),
        200,
        "the request in progress is answered"
    );
    assert!(closed_within(&mut half, Duration::from_secs(15)));
    svc.exits_within(Duration::from_secs(15).saturating_sub(t.elapsed()));
    eprintln!("exited {:?} after SIGTERM", t.elapsed());
}

/// Guarantee: a request still in progress when --drain-s runs out is cut off, and the process
/// exits within --drain-s + 5 s.
#[test]
fn serve_stops_within_its_drain_deadline_when_a_request_never_ends() {
    let mut svc = Service::start(&models().a, &["--drain-s", "1"]);
    let mut busy = svc.post_head("/v1/inspect", 1000);
    busy.write_all(&[0u8; 10]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    svc.signal("TERM");
    let took = svc.exits_within(Duration::from_secs(6));
    eprintln!("exited {took:?} after SIGTERM with a request that never ends");
    assert!(
        took >= Duration::from_millis(900),
        "{took:?}: did not wait for the request"
    );
}

/// Guarantee: `serve --watch` exits on SIGTERM and on SIGINT (the watcher no longer keeps the
/// model worker alive).
#[test]
fn serve_watch_stops_on_sigterm_and_sigint() {
    for signal in ["TERM", "INT"] {
        let mut svc = Service::start(&models().a, &["--watch"]);
        assert_eq!(svc.call("GET", "/healthz", &[], None).text().0, 200);
        svc.signal(signal);
        let took = svc.exits_within(Duration::from_secs(15));
        eprintln!("--watch: exited {took:?} after SIG{signal}");
    }
}

/// Guarantee (issue 23 item 12): every HTTP error is JSON `{"error": ...}` in the API's terms,
/// naming the request and what was wrong, with no flag of the command line (`--object`,
/// `--weights`, `--token`, `--max-body-mib`) and no folder of the service's machine: a
/// duplicated or unknown query parameter, an unknown object, an unknown route, a method a route
/// does not take, a body over the size limit, a request over the time limit, a reload without
/// the token, and reloads of a PNG and of a model trained on other backbone weights.
#[test]
fn serve_answers_every_error_as_json_in_the_api_terms() {
    let t = tempfile::tempdir().unwrap();
    let served = t.path().join("served.safetensors");
    std::fs::copy(&models().a, &served).unwrap();
    let svc = Service::start(&served, &["--token", "s3cret", "--max-body-mib", "1"]);
    let folder = t.path().to_str().unwrap().to_string();
    let in_api_terms = |what: &str, (status, e): (u16, Value), want: u16, words: &[&str]| {
        assert_eq!(status, want, "{what}: {e}");
        let msg = e["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no error in {e}"));
        assert!(
            !msg.contains("--"),
            "{what}: a command-line flag in {msg:?}"
        );
        assert!(
            !msg.contains(&folder),
            "{what}: the service's folder in {msg:?}"
        );
        for w in words {
            assert!(msg.contains(w), "{what}: no {w:?} in {msg:?}");
        }
    };
    let good = image("bottle/test/good/000.png");
    in_api_terms(
        "a duplicated query parameter",
        svc.post("/v1/inspect?heatmap=png&heatmap=none", &good),
        400,
        &["`heatmap`", "more than once"],
    );
    in_api_terms(
        "an unknown query parameter",
        svc.post("/v1/inspect?heatmapp=png", &good),
        400,
        &["`heatmapp`", "`heatmap`", "`object`"],
    );
    in_api_terms(
        "an unknown object",
        svc.post("/v1/inspect?object=tire", &good),
        400,
        &["object=tire", "bottle"],
    );
    in_api_terms(
        "an unknown route",
        svc.call("GET", "/v1/nothing", &[], None).json(),
        404,
        &["GET /v1/nothing", "POST /v1/inspect"],
    );
    in_api_terms(
        "a method the route does not take",
        svc.call("GET", "/v1/inspect", &[], None).json(),
        405,
        &["GET /v1/inspect", "POST"],
    );
    in_api_terms(
        "a reload without the token",
        svc.call("POST", "/v1/reload", &[], None).json(),
        401,
        &["Authorization: Bearer"],
    );
    let mut big = svc.post_head("/v1/inspect", 3 << 20);
    big.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    in_api_terms(
        "a body over the limit",
        read_json_answer(&mut big),
        413,
        &["1 MiB"],
    );
    let hurried = Service::start(&models().a, &["--timeout-s", "1"]);
    let mut slow = hurried.post_head("/v1/inspect", good.len());
    slow.write_all(&good[..100]).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    in_api_terms(
        "a request over the time limit",
        read_json_answer(&mut slow),
        408,
        &["POST /v1/inspect", "1 s"],
    );

    // Reloads that are refused say why in the API's terms; the old model keeps serving.
    let auth = [("Authorization", "Bearer s3cret")];
    let replace = |bytes: &[u8]| {
        std::fs::write(t.path().join(".tmp"), bytes).unwrap();
        std::fs::rename(t.path().join(".tmp"), &served).unwrap();
    };
    replace(&good);
    in_api_terms(
        "a reload of a PNG",
        svc.call("POST", "/v1/reload", &auth, None).json(),
        422,
        &["served.safetensors is a PNG image", "keeps serving"],
    );
    let other = t.path().join("other.safetensors");
    let mut m = iuf_model::load_model(&models().a, &candle_core::Device::Cpu).unwrap();
    m.meta.extra["backbone_weights"] = Value::String("0".repeat(64));
    let state = m.state.clone();
    iuf_model::save_model(&other, &m.varmap, &m.meta, &state).unwrap();
    replace(&std::fs::read(&other).unwrap());
    in_api_terms(
        "a reload of a model trained on other backbone weights",
        svc.call("POST", "/v1/reload", &auth, None).json(),
        422,
        &["served.safetensors", "0000000000000000", "keeps serving"],
    );
    let (status, o) = svc.inspect(&good);
    assert_eq!(
        (status, &o["model_sha256"]),
        (200, &Value::String(sha256(&models().a)))
    );
}

/// Guarantee (issue 23 item 9): after SIGTERM, while a request is still in flight, `/readyz`
/// answers 503 (a load balancer takes the instance out) and new images get 503 with
/// Retry-After, while liveness stays 200; the request in flight is answered, and the process
/// exits within its stated bound (--drain-s 10 + 5 s).
#[test]
fn serve_is_not_ready_while_it_drains_after_sigterm() {
    let mut svc = Service::start(&models().a, &[]);
    assert_eq!(svc.call("GET", "/readyz", &[], None).json().0, 200);
    let body = image("bottle/test/good/000.png");
    let mut busy = svc.post_head("/v1/inspect", body.len());
    busy.write_all(&body[..body.len() / 2]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    svc.signal("TERM");
    let t = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    let (status, e) = svc.call("GET", "/readyz", &[], None).json();
    assert_eq!(status, 503, "readiness while draining: {e}");
    assert!(e["error"].as_str().unwrap().contains("stopping"), "{e}");
    let refused = ureq::post(&format!("{}/v1/inspect", svc.url)).send_bytes(&body);
    match refused {
        Err(ureq::Error::Status(503, r)) => {
            assert_eq!(r.header("Retry-After"), Some("1"));
            let e: Value = serde_json::from_str(&r.into_string().unwrap()).unwrap();
            assert!(e["error"].as_str().unwrap().contains("stopping"), "{e}");
        }
        other => panic!("new work while draining: {other:?}"),
    }
    assert_eq!(svc.call("GET", "/healthz", &[], None).text().0, 200);
    assert!(
        svc.child.try_wait().unwrap().is_none(),
        "exited with a request in flight"
    );
    busy.write_all(&body[body.len() / 2..]).unwrap();
    busy.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    assert_eq!(
        read_status(&mut busy),
        200,
        "the request in flight is answered"
    );
    let took = svc.exits_within(Duration::from_secs(15).saturating_sub(t.elapsed()));
    eprintln!("exited {took:?} after the request in flight was answered");
}

/// Guarantee (issue 23, beyond the list): `serve --require-signed PUBKEY` starts only with a
/// model signed with that key, and a reload of an unsigned model is refused in the API's terms
/// while the signed one keeps serving; a signed new model is swapped in.
#[test]
fn serve_require_signed_refuses_unsigned_models_at_start_and_on_reload() {
    let m = models();
    let t = tempfile::tempdir().unwrap();
    let key = t.path().join("line.key");
    m.scratch.iuf("sign").flag("--generate-key", &key).ok();
    let pubkey = t.path().join("line.key.pub");
    let served = t.path().join("served.safetensors");
    m.scratch
        .iuf("sign")
        .model(&m.a)
        .flag("--key", &key)
        .out(&served)
        .ok();
    let unsigned_start = m
        .scratch
        .iuf("serve")
        .flag("--bind", "127.0.0.1:0")
        .model(&m.a)
        .flag("--require-signed", &pubkey)
        .fails_with(&["is not signed"]);
    assert!(unsigned_start.contains(&m.a.display().to_string()));

    let svc = Service::start(&served, &["--require-signed", pubkey.to_str().unwrap()]);
    let good = image("bottle/test/good/000.png");
    let (status, o) = svc.inspect(&good);
    assert_eq!(status, 200, "{o}");
    let signed_sha = sha256(&served);
    let replace = |from: &Path| {
        std::fs::copy(from, t.path().join(".tmp")).unwrap();
        std::fs::rename(t.path().join(".tmp"), &served).unwrap();
    };
    replace(&m.b);
    let (status, e) = svc.call("POST", "/v1/reload", &[], None).json();
    assert_eq!(status, 422, "{e}");
    let msg = e["error"].as_str().unwrap();
    for want in ["served.safetensors is not signed", "keeps serving"] {
        assert!(msg.contains(want), "no {want:?} in {msg:?}");
    }
    assert!(!msg.contains("--"), "{msg}");
    assert_eq!(svc.inspect(&good).1["model_sha256"], signed_sha.as_str());
    let b_signed = t.path().join("b-signed.safetensors");
    m.scratch
        .iuf("sign")
        .model(&m.b)
        .flag("--key", &key)
        .out(&b_signed)
        .ok();
    replace(&b_signed);
    let (status, r) = svc.call("POST", "/v1/reload", &[], None).json();
    assert_eq!((status, &r["reloaded"]), (200, &Value::Bool(true)), "{r}");
}

/// Guarantees (issue 25): `POST /v1/objects/{name}/good` and `PUT /v1/objects/{name}/threshold`
/// need the token; they change the served model file (the previous one kept beside it) and swap
/// it in like a reload, answering with its sha256; the other object's scores do not move; bad
/// requests are refused with the reason; `/metrics` shows the drift watch's per-object figures.
#[test]
fn real_data_serve_adds_good_images_and_sets_thresholds() {
    let dir = tempfile::tempdir().unwrap();
    let served = dir.path().join("served.safetensors");
    std::fs::copy(&models().b, &served).unwrap();
    let first = sha256(&served);
    let svc = Service::start(&served, &["--token", "s3cret"]);
    let auth = [("Authorization", "Bearer s3cret")];
    let bottle = image("bottle/test/good/000.png");
    let (_, before) = svc.inspect(&bottle);
    assert_eq!(before["object"], "bottle");

    let pills: Vec<Vec<u8>> = (0..6)
        .map(|i| image(&format!("pill/train/good/{i:03}.png")))
        .collect();
    let parts: Vec<(String, &[u8])> = pills
        .iter()
        .enumerate()
        .map(|(i, b)| (format!("p{i}.png"), &b[..]))
        .collect();
    let parts: Vec<(&str, &[u8])> = parts.iter().map(|(n, b)| (n.as_str(), *b)).collect();
    let (ctype, body) = multipart(&parts);
    let path = "/v1/objects/pill/good";
    let (status, err) = svc
        .call("POST", path, &[("Content-Type", &ctype)], Some(&body))
        .json();
    assert_eq!(status, 401, "{err}");
    let (status, ans) = svc
        .call(
            "POST",
            path,
            &[auth[0], ("Content-Type", &ctype)],
            Some(&body),
        )
        .json();
    assert_eq!(status, 200, "{ans}");
    assert_eq!(ans["object"], "pill");
    assert_eq!(
        ans["added"]["train"].as_u64().unwrap() + ans["added"]["holdout"].as_u64().unwrap(),
        6
    );
    let new = ans["model_sha256"].as_str().unwrap().to_string();
    assert_ne!(new, first);
    assert_eq!(sha256(&served), new, "the served file is the new model");
    assert_eq!(ans["previous_sha256"], first);
    let kept = dir.path().join(ans["previous_kept_as"].as_str().unwrap());
    assert_eq!(sha256(&kept), first, "the previous model is kept beside it");
    let (_, after) = svc.inspect(&bottle);
    assert_eq!(after["model_sha256"], new);
    assert_eq!(after["score"], before["score"], "bottle's score moved");
    assert_eq!(after["threshold"], before["threshold"]);
    let (_, info) = svc.call("GET", "/v1/model", &[], None).json();
    assert_eq!(info["good_added"][0]["object"], "pill", "{info}");

    // Thresholds: by value, recorded with who set it; bad bodies and objects refused.
    let put = |body: &str, headers: &[(&str, &str)]| {
        svc.call(
            "PUT",
            "/v1/objects/bottle/threshold",
            headers,
            Some(body.as_bytes()),
        )
        .json()
    };
    let (status, _) = put(r#"{"value": 9.5}"#, &[]);
    assert_eq!(status, 401);
    let (status, ans) = put(r#"{"value": 9.5, "by": "line-3"}"#, &auth);
    assert_eq!(status, 200, "{ans}");
    assert_eq!(ans["threshold"]["set_by"], "api:line-3");
    let (_, judged) = svc.inspect(&bottle);
    assert_eq!(judged["threshold"], 9.5, "{judged}");
    assert_eq!(judged["model_sha256"], ans["model_sha256"]);
    for (body, wanted) in [
        (r#"{"value": 1, "quantile": 0.5}"#, "exactly one"),
        (r#"{"quantile": 2}"#, "quantile must lie in [0, 1]"),
        ("not json", "must be JSON"),
    ] {
        let (status, e) = put(body, &auth);
        assert_eq!(status, 400, "{body}: {e}");
        assert!(e["error"].as_str().unwrap().contains(wanted), "{body}: {e}");
    }
    let (status, e) = svc
        .call(
            "PUT",
            "/v1/objects/tire/threshold",
            &auth,
            Some(br#"{"value": 1}"#),
        )
        .json();
    assert_eq!(status, 422, "{e}");
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("has not learned `tire`"),
        "{e}"
    );
    let (_, metrics) = svc.call("GET", "/metrics", &[], None).text();
    for wanted in [
        "iuf_drift_score{object=\"bottle\",quantile=\"0.5\"}",
        "iuf_drift_rate_above_threshold{object=\"bottle\"}",
        "iuf_drift_state{object=\"bottle\"} 0",
    ] {
        assert!(metrics.contains(wanted), "no {wanted} in:\n{metrics}");
    }
}
