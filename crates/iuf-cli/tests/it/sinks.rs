//! The sinks of `watch` and `serve` against real destinations: a mosquitto broker from the
//! system packages (stopped and restarted in the middle of a run), and a local HTTP endpoint
//! that fails its first requests.
//!
//! The MQTT test needs `mosquitto` and `mosquitto_sub` (Debian: `apt-get install mosquitto
//! mosquitto-clients`; `.ci/run` installs them). Without them it says so and passes, unless
//! IUF_REQUIRE_MQTT is set (`.ci/run` sets it once they are installed): then it fails.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::Scratch;
use crate::watch::{fixture, Watching};

const LIMIT: Duration = Duration::from_secs(60);

/// An executable on PATH or in the sbin folders (where Debian puts mosquitto).
fn program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// mosquitto and mosquitto_sub, or None (the test then skips, unless IUF_REQUIRE_MQTT is set).
fn mosquitto() -> Option<(PathBuf, PathBuf)> {
    let found = program("mosquitto").zip(program("mosquitto_sub"));
    if found.is_none() {
        assert!(
            std::env::var_os("IUF_REQUIRE_MQTT").is_none(),
            "IUF_REQUIRE_MQTT is set but mosquitto or mosquitto_sub is not installed"
        );
        eprintln!(
            "skipped: the MQTT sink test needs a real broker: mosquitto and mosquitto_sub \
             (apt-get install mosquitto mosquitto-clients)"
        );
    }
    found
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A mosquitto broker on `port` that keeps its sessions in `dir` across a restart.
struct Broker {
    child: Child,
}

impl Broker {
    fn start(exe: &Path, dir: &Path, port: u16) -> Self {
        let conf = dir.join("mosquitto.conf");
        // Started as root, mosquitto becomes the user `mosquitto` unless told to stay who it is,
        // and then cannot save its sessions in our folder.
        let me = Command::new("id").arg("-un").output().unwrap();
        let me = String::from_utf8_lossy(&me.stdout).trim().to_string();
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
                 persistence_location {}/\nuser {me}\n",
                dir.display()
            ),
        )
        .unwrap();
        let child = Command::new(exe)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        let t = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "mosquitto did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child }
    }

    /// SIGTERM (mosquitto saves its sessions), then waits for the exit.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-s", "TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `mosquitto_sub` with a persistent session (QoS 1, clean session off), so that what is
/// published while it reconnects after a broker restart is kept for it: (topic, JSON).
struct Subscriber {
    child: Child,
    got: Receiver<(String, Value)>,
}

impl Subscriber {
    fn start(exe: &Path, port: u16, topic: &str, extra: &[&str]) -> Self {
        let mut child = Command::new(exe)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-q",
                "1",
                "-v",
                "-t",
                topic,
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto_sub");
        let (tx, got) = std::sync::mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                let (topic, payload) = l.split_once(' ').unwrap_or((&l, ""));
                let v = serde_json::from_str(payload).unwrap_or(Value::Null);
                if tx.send((topic.to_string(), v)).is_err() {
                    break;
                }
            }
        });
        Self { child, got }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Guarantee: with --mqtt every result reaches a subscriber on `<prefix>/<object>/verdict`,
/// with QoS 1; the broker stopped in the middle of a run and started again loses none (they
/// wait in the queue); with --mqtt-retain a late subscriber gets the last verdict at once.
#[test]
fn mqtt_results_reach_a_subscriber_and_survive_a_broker_restart() {
    let Some((mosquitto, sub)) = mosquitto() else {
        return;
    };
    let f = fixture();
    let s = Scratch::new();
    let (input, out, state) = (s.folder("camera"), s.path("out"), s.folder("broker"));
    let port = free_port();
    let broker = Broker::start(&mosquitto, &state, port);
    let subscriber = Subscriber::start(&sub, port, "line/#", &["-c", "-i", "iuf-test-sub"]);
    // Subscribed once a message published now comes back.
    let pubber = program("mosquitto_pub");
    let t = Instant::now();
    loop {
        if let Some(p) = &pubber {
            let _ = Command::new(p)
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
                .args(["-t", "line/probe", "-m", "{}"])
                .status();
        }
        if subscriber
            .got
            .recv_timeout(Duration::from_millis(300))
            .is_ok()
            || pubber.is_none()
        {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the subscriber never subscribed"
        );
    }
    if pubber.is_none() {
        std::thread::sleep(Duration::from_secs(1));
    }
    let url = format!("mqtt://127.0.0.1:{port}");
    let w = Watching::start(
        &f.a,
        &input,
        &out,
        &[
            "--mqtt",
            &url,
            "--mqtt-topic",
            "line",
            "--mqtt-retain",
            "-v",
        ],
    );
    const N: usize = 20;
    let drop_images = |range: std::ops::Range<usize>| {
        for i in range {
            std::fs::write(
                input.join(format!("{i:02}.png")),
                &f.images[i % f.images.len()],
            )
            .unwrap();
            w.expect(LIMIT);
        }
    };
    drop_images(0..N / 2);
    broker.stop();
    // Inspected while the broker is away: the results wait in the sink's queue.
    drop_images(N / 2..N);
    w.wait_stderr("unreachable", LIMIT);
    let _broker = Broker::start(&mosquitto, &state, port);
    let mut ids = BTreeSet::new();
    let t = Instant::now();
    while ids.len() < N {
        assert!(
            t.elapsed() < LIMIT,
            "{} of {N} results reached the subscriber: {ids:?}\nwatch stderr:\n{}",
            ids.len(),
            w.stderr()
        );
        if let Ok((topic, v)) = subscriber.got.recv_timeout(Duration::from_millis(200)) {
            if topic == "line/probe" {
                continue;
            }
            assert_eq!(topic, "line/fabric/verdict", "{v}");
            assert_eq!(v["kind"], "verdict");
            assert_eq!(v["source"], "watch");
            assert!(
                v["score"].is_number() && v["model_sha256"].is_string(),
                "{v}"
            );
            ids.insert(v["id"].as_str().unwrap().to_string());
        }
    }
    let expected: BTreeSet<String> = (0..N).map(|n| format!("watch:{n}")).collect();
    assert_eq!(ids, expected);
    // A late subscriber gets the retained last verdict at once.
    let late = Subscriber::start(&sub, port, "line/fabric/verdict", &["-C", "1", "-W", "10"]);
    let (_, last) = late.got.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(last["id"], format!("watch:{}", N - 1));
    let err = w.stop(Duration::from_secs(15));
    assert!(
        err.contains("again after"),
        "the reconnection is logged:\n{err}"
    );
}

/// A local HTTP endpoint's URL, the bodies it accepted in order, and the requests it got.
struct Endpoint {
    url: String,
    bodies: Arc<Mutex<Vec<Value>>>,
    requests: Arc<Mutex<usize>>,
    /// Requests still to be failed.
    failing: Arc<Mutex<usize>>,
}

/// A local HTTP endpoint: answers 503 to its first `fail` requests, then 200, and keeps the
/// bodies it accepted, in order.
fn endpoint(fail: usize) -> Endpoint {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let requests = Arc::new(Mutex::new(0));
    let failing = Arc::new(Mutex::new(fail));
    let (b, r, fl) = (bodies.clone(), requests.clone(), failing.clone());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { continue };
            let mut reader = BufReader::new(c.try_clone().unwrap());
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let l = line.trim_end().to_ascii_lowercase();
                if l.is_empty() {
                    break;
                }
                if let Some(v) = l.strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            *r.lock().unwrap() += 1;
            let fail = {
                let mut f = fl.lock().unwrap();
                let fail = *f > 0;
                *f = f.saturating_sub(1);
                fail
            };
            let status = if fail {
                "503 Service Unavailable"
            } else {
                b.lock()
                    .unwrap()
                    .push(serde_json::from_slice(&body).unwrap());
                "200 OK"
            };
            let _ = write!(
                c,
                "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    Endpoint {
        url,
        bodies,
        requests,
        failing,
    }
}

/// A running `iuf serve` (stopped when dropped) and its stderr so far.
struct Serve {
    child: Child,
    url: String,
    stderr: Arc<Mutex<String>>,
}

impl Serve {
    fn start(model: &Path, extra: &[&str]) -> Self {
        let mut child = fixture()
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
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let err = stderr.clone();
        let pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(pipe).lines() {
                let Ok(l) = l else { break };
                if let Some(rest) = l.strip_prefix("listening on ") {
                    let _ = tx.send(rest.split_whitespace().next().unwrap().to_string());
                }
                let mut e = err.lock().unwrap();
                e.push_str(&l);
                e.push('\n');
            }
        });
        let url = rx
            .recv_timeout(LIMIT)
            .unwrap_or_else(|_| panic!("iuf serve did not listen:\n{}", stderr.lock().unwrap()));
        Self { child, url, stderr }
    }

    fn inspect(&self, bytes: &[u8]) -> Value {
        ureq::post(&format!("{}/v1/inspect", self.url))
            .send_bytes(bytes)
            .unwrap()
            .into_json()
            .unwrap()
    }

    fn metrics(&self) -> String {
        ureq::get(&format!("{}/metrics", self.url))
            .call()
            .unwrap()
            .into_string()
            .unwrap()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the metric line that starts with `name` in a Prometheus text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().parse().ok())
}

/// Guarantee: serve with --webhook POSTs every result to an endpoint that fails its first
/// three requests: all arrive, in the order they were answered, counted in /metrics with the
/// failed attempts. With a dead endpoint and --sink-queue 2, the oldest results are dropped,
/// counted in /metrics and logged, never silently.
#[test]
fn webhook_gets_every_serve_result_in_order_after_failures_and_counts_drops() {
    let f = fixture();
    let Endpoint {
        url,
        bodies,
        requests,
        ..
    } = endpoint(3);
    let svc = Serve::start(&f.a, &["--webhook", &url]);
    let answers: Vec<Value> = (0..5)
        .map(|i| svc.inspect(&f.images[i % f.images.len()]))
        .collect();
    let t = Instant::now();
    while bodies.lock().unwrap().len() < 5 {
        assert!(
            t.elapsed() < LIMIT,
            "{} of 5 results arrived after {} requests:\n{}",
            bodies.lock().unwrap().len(),
            requests.lock().unwrap(),
            svc.stderr.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let got = bodies.lock().unwrap().clone();
    for (a, b) in answers.iter().zip(&got) {
        assert_eq!(b["kind"], "verdict");
        assert_eq!(b["source"], "serve");
        assert_eq!(b["score"], a["score"], "in order: {got:?}");
        assert_eq!(b["model_sha256"], a["model_sha256"]);
    }
    let seq: Vec<u64> = got
        .iter()
        .map(|b| {
            b["id"]
                .as_str()
                .unwrap()
                .rsplit(':')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(seq, [0, 1, 2, 3, 4]);
    // The endpoint keeps a body before it answers: the sink counts the delivery a moment later.
    let t = Instant::now();
    let mut m = svc.metrics();
    while metric(&m, "iuf_sink_delivered_total{sink=\"webhook\"}") != Some(5.0) {
        assert!(t.elapsed() < Duration::from_secs(10), "{m}");
        std::thread::sleep(Duration::from_millis(50));
        m = svc.metrics();
    }
    assert_eq!(
        metric(&m, "iuf_sink_retries_total{sink=\"webhook\"}"),
        Some(3.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "iuf_sink_dropped_total{sink=\"webhook\"}"),
        Some(0.0),
        "{m}"
    );

    // Nobody listens: a queue of 2 keeps the newest two of five.
    let dead = format!("http://127.0.0.1:{}/hook", free_port());
    let svc = Serve::start(
        &f.a,
        &[
            "--webhook",
            &dead,
            "--sink-queue",
            "2",
            "--sink-drain-s",
            "1",
        ],
    );
    for i in 0..5 {
        svc.inspect(&f.images[i % f.images.len()]);
    }
    let m = svc.metrics();
    assert_eq!(
        metric(&m, "iuf_sink_dropped_total{sink=\"webhook\"}"),
        Some(3.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "iuf_sink_queue_events{sink=\"webhook\"}"),
        Some(2.0),
        "{m}"
    );
    let log = svc.stderr.lock().unwrap().clone();
    assert!(log.contains("dropped the oldest"), "{log}");
}

/// Guarantee: results that a sink had not delivered when `watch` was killed (-9) are sent
/// again after the restart (the journal has them, `--out/sink-webhook.cursor` says how far the
/// sink got): every result reaches the endpoint, none is lost.
#[test]
fn watch_sends_again_after_a_kill_what_a_sink_had_not_delivered() {
    let f = fixture();
    let s = Scratch::new();
    let (input, out) = (s.folder("camera"), s.path("out"));
    let hook = endpoint(usize::MAX);
    let w = Watching::start(&f.a, &input, &out, &["--webhook", &hook.url]);
    for i in 0..5 {
        std::fs::write(
            input.join(format!("{i}.png")),
            &f.images[i % f.images.len()],
        )
        .unwrap();
        w.expect(LIMIT);
    }
    // Killed while the endpoint refuses everything: the five results were never delivered.
    w.kill();
    assert!(hook.bodies.lock().unwrap().is_empty());
    *hook.failing.lock().unwrap() = 0;
    let w = Watching::start(&f.a, &input, &out, &["--webhook", &hook.url]);
    w.wait_stderr("sending again 5 result(s)", LIMIT);
    std::fs::write(input.join("5.png"), &f.images[0]).unwrap();
    w.expect(LIMIT);
    let t = Instant::now();
    let ids = || -> BTreeSet<String> {
        let b = hook.bodies.lock().unwrap();
        b.iter()
            .map(|v| v["id"].as_str().unwrap().to_string())
            .collect()
    };
    while ids().len() < 6 {
        assert!(t.elapsed() < LIMIT, "{:?}\n{}", ids(), w.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    let expected: BTreeSet<String> = (0..6).map(|n| format!("watch:{n}")).collect();
    assert_eq!(ids(), expected);
    w.stop(Duration::from_secs(15));
    assert_eq!(
        std::fs::read_to_string(out.join("sink-webhook.cursor"))
            .unwrap()
            .trim(),
        "6"
    );
}
