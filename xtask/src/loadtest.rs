//! `cargo xtask loadtest`: starts `iuf serve` (release build) on loopback and drives it with bounded
//! concurrent clients, then a fault phase: a reload in the middle of the load, a corrupt model file
//! offered for reload, oversized and garbage bodies, and a client that disconnects mid-upload. Every
//! answer is checked against `iuf predict`'s score for the model the answer names: nothing may be
//! wrong, mixed or lost. Prints a Markdown report (throughput, p50/p95/p99 latency). `--replicas N`
//! runs N services behind nginx and fails them under load (`replicas`); `--target URL` drives a
//! service that is already running.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

mod replicas;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// MVTec-layout data: model A learns bottle and pill, model B learns tire after A; the load
    /// sends their 256 x 256 test PNGs.
    #[arg(long, default_value = "../shared/datasets/mvtec-mini")]
    data: PathBuf,
    /// Backbone weights for every `iuf` command.
    #[arg(
        long,
        default_value = "../shared/weights/efficientnet-lite0/efficientnet-lite0-57934424.pth"
    )]
    weights: PathBuf,
    /// Concurrent clients of each load phase (default 1,4,16; with --replicas 4,16).
    #[arg(long, value_delimiter = ',')]
    clients: Vec<usize>,
    /// Requests per client in each load phase.
    #[arg(long, default_value_t = 40)]
    requests: usize,
    /// The service's --max-batch settings to compare (one service run each).
    #[arg(long, value_delimiter = ',', default_value = "8")]
    max_batch: Vec<usize>,
    /// The service's --batch-wait-ms settings to compare (each with each --max-batch).
    #[arg(long, value_delimiter = ',', default_value = "2")]
    batch_wait_ms: Vec<u64>,
    /// Worker threads of the service and of `iuf predict`.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Working folder (models, feature cache); models already there are reused.
    #[arg(long, default_value = "target/loadtest")]
    work: PathBuf,
    /// `--precision` of the service and of `iuf predict` (default: the model's, f32).
    #[arg(long, value_name = "f32|bf16|auto")]
    precision: Option<String>,
    /// Also write the report to this file.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Start this many replicas (at least 3) behind nginx (`deploy/nginx/iuf.conf`) and drive
    /// them through it while one is killed with SIGKILL, one has its model replaced and reloaded,
    /// and one is stopped with SIGTERM; needs nginx installed.
    #[arg(long, value_name = "N", default_value_t = 0, conflicts_with = "target")]
    replicas: usize,
    /// Drive a service that is already running (a replica, or a load balancer in front of
    /// several) instead of starting one: it must serve this test's model A or B (from --work),
    /// since every answer is checked against them. No faults are injected.
    #[arg(long, value_name = "URL")]
    target: Option<String>,
}

fn iuf(args: &Args, bin: &Path) -> Command {
    let mut c = Command::new(bin);
    c.arg("--weights")
        .arg(&args.weights)
        .arg("--cache-dir")
        .arg(args.work.join("cache"))
        .arg("--threads")
        .arg(args.threads.to_string());
    c
}

fn precision(args: &Args) -> Vec<String> {
    args.precision
        .iter()
        .flat_map(|p| ["--precision".to_string(), p.clone()])
        .collect()
}

fn check(out: std::process::Output, what: &str) -> Result<std::process::Output> {
    if !out.status.success() {
        bail!(
            "{what} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

fn sha256(path: &Path) -> Result<String> {
    Ok(iuf_backbone::fetch::sha256_hex(&std::fs::read(path)?))
}

/// `iuf predict --json` scores of `images` with `model`, and its per-image milliseconds.
fn predict(args: &Args, bin: &Path, model: &Path, images: &[PathBuf]) -> Result<(Vec<f64>, f64)> {
    let out_dir = args.work.join("predict");
    let _ = std::fs::remove_dir_all(&out_dir);
    let out = check(
        iuf(args, bin)
            .arg("--json")
            .arg("predict")
            .args(precision(args))
            .arg("--model")
            .arg(model)
            .args(images)
            .arg("--out")
            .arg(&out_dir)
            .output()?,
        "iuf predict",
    )?;
    let scores = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l)?;
            v["score"].as_f64().context("a prediction without a score")
        })
        .collect::<Result<Vec<_>>>()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let per_image = stderr
        .lines()
        .find_map(|l| l.strip_prefix("per image: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("predict printed no per-image time")?;
    Ok((scores, per_image))
}

struct Service {
    child: Child,
    host: String,
}

impl Service {
    fn start(
        args: &Args,
        bin: &Path,
        model: &Path,
        max_batch: usize,
        wait_ms: u64,
    ) -> Result<Self> {
        Self::start_at(args, bin, model, max_batch, wait_ms, "127.0.0.1:0")
    }

    /// `iuf serve` on `bind` (`127.0.0.1:0`: a free port); returns once it listens.
    fn start_at(
        args: &Args,
        bin: &Path,
        model: &Path,
        max_batch: usize,
        wait_ms: u64,
        bind: &str,
    ) -> Result<Self> {
        let mut child = iuf(args, bin)
            .args(["serve", "--bind", bind, "--token", "loadtest"])
            .args(precision(args))
            .arg("--model")
            .arg(model)
            .args(["--max-batch", &max_batch.to_string()])
            .args(["--batch-wait-ms", &wait_ms.to_string()])
            .args(["--max-body-mib", "4"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting iuf serve")?;
        let mut lines = BufReader::new(child.stderr.take().context("stderr")?).lines();
        let host = loop {
            let line = lines
                .next()
                .context("iuf serve stopped before listening")??;
            if let Some(rest) = line.strip_prefix("listening on http://") {
                break rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string();
            }
        };
        std::thread::spawn(move || {
            for l in lines.map_while(Result::ok) {
                if l.contains("panic") {
                    eprintln!("service: {l}");
                }
            }
        });
        Ok(Self { child, host })
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.host)
    }

    fn stop(mut self) -> Result<()> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait()?;
        ensure!(status.success(), "iuf serve exited with {status}");
        Ok(())
    }
}

/// (status, JSON) of a request; transport errors are errors.
fn post(agent: &ureq::Agent, url: &str, body: &[u8], auth: bool) -> Result<(u16, Value)> {
    let mut req = agent.post(url);
    if auth {
        req = req.set("Authorization", "Bearer loadtest");
    }
    let (status, text) = match req.send_bytes(body) {
        Ok(r) => (r.status(), r.into_string()?),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string()?),
        Err(e) => return Err(e.into()),
    };
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

/// What a load phase saw.
#[derive(Default)]
struct Tally {
    latencies: Vec<f64>,
    ok: usize,
    /// Deliberately bad requests answered with the right refusal.
    refused_as_expected: usize,
    /// Anything else: a failed request, a wrong or mixed-up result.
    failures: Vec<String>,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

/// The expected scores of each image, by the sha256 of the model that answers.
struct Truth {
    images: Vec<Vec<u8>>,
    by_model: Vec<(String, Vec<f64>)>,
}

impl Truth {
    fn check(&self, image: usize, answer: &Value) -> Result<(), String> {
        let sha = answer["model_sha256"].as_str().unwrap_or("");
        let Some((_, scores)) = self.by_model.iter().find(|(s, _)| s == sha) else {
            return Err(format!("an answer from an unknown model `{sha}`"));
        };
        let got = answer["score"].as_f64().unwrap_or(f64::NAN);
        let want = scores[image];
        if (got - want).abs() > 1e-4 * want.abs().max(1.0) {
            return Err(format!(
                "image {image}: score {got} from model {}, expected {want}",
                &sha[..12]
            ));
        }
        Ok(())
    }
}

/// `clients` threads, each sending `requests` images; returns the tally and the wall time.
fn load(svc: &Service, truth: &Truth, clients: usize, requests: usize) -> (Tally, f64) {
    load_url(&svc.url(""), truth, clients, requests, &AtomicUsize::new(0))
}

/// [`load`] against any base URL (a service, or a load balancer in front of several); `next`
/// counts the requests sent, so that another thread can act in the middle of the load.
fn load_url(
    base: &str,
    truth: &Truth,
    clients: usize,
    requests: usize,
    next: &AtomicUsize,
) -> (Tally, f64) {
    let tally = Mutex::new(Tally::default());
    let url = format!("{}/v1/inspect", base.trim_end_matches('/'));
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..clients {
            s.spawn(|| {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(60))
                    .build();
                for _ in 0..requests {
                    let i = next.fetch_add(1, Ordering::Relaxed) % truth.images.len();
                    let t = Instant::now();
                    let r = post(&agent, &url, &truth.images[i], false);
                    let ms = 1e3 * t.elapsed().as_secs_f64();
                    let mut tl = tally.lock().unwrap();
                    match r {
                        Ok((200, v)) => match truth.check(i, &v) {
                            Ok(()) => {
                                tl.ok += 1;
                                tl.latencies.push(ms);
                            }
                            Err(e) => tl.failures.push(e),
                        },
                        Ok((status, v)) => tl.failures.push(format!("status {status}: {v}")),
                        Err(e) => tl.failures.push(format!("transport: {e}")),
                    }
                }
            });
        }
    });
    let wall = t.elapsed().as_secs_f64();
    let mut tally = tally.into_inner().unwrap();
    tally
        .latencies
        .sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    (tally, wall)
}

/// Sends a request head announcing `announced` bytes, `sent` of them, then hangs up.
fn disconnect_mid_upload(host: &str, body: &[u8], announced: usize) -> Result<()> {
    let mut c = TcpStream::connect(host)?;
    write!(
        c,
        "POST /v1/inspect HTTP/1.1\r\nHost: {host}\r\nContent-Length: {announced}\r\n\r\n"
    )?;
    c.write_all(&body[..body.len().min(announced / 2)])?;
    Ok(())
}

/// The bad and disruptive requests sent while the load runs; each must get its expected answer.
fn chaos(svc: &Service, served: &Path, a: &Path, b: &Path, tally: &Mutex<Tally>) -> Result<()> {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build();
    let inspect = svc.url("/v1/inspect");
    let reload = svc.url("/v1/reload");
    let expect = |what: &str, got: Result<(u16, Value)>, want: u16| {
        let mut t = tally.lock().unwrap();
        match got {
            Ok((s, _)) if s == want => t.refused_as_expected += 1,
            Ok((s, v)) => t
                .failures
                .push(format!("{what}: status {s} (expected {want}): {v}")),
            Err(e) => t.failures.push(format!("{what}: {e}")),
        }
    };
    let pause = || std::thread::sleep(Duration::from_millis(300));
    pause();
    expect(
        "garbage body",
        post(&agent, &inspect, b"definitely not an image", false),
        422,
    );
    let png = std::fs::read(a)?;
    expect(
        "truncated PNG",
        post(&agent, &inspect, &png[..64.min(png.len())], false),
        422,
    );
    pause();
    // A corrupt model offered for reload: refused, the old one keeps serving.
    let model_a = std::fs::read(a)?;
    std::fs::write(served, &model_a[..model_a.len() / 2])?;
    expect(
        "corrupt model reload",
        post(&agent, &reload, b"", true),
        422,
    );
    std::fs::write(served, &model_a)?;
    pause();
    // Oversized (5 MiB > --max-body-mib 4): refused from the Content-Length.
    let big = vec![0u8; 5 << 20];
    match post(&agent, &inspect, &big, false) {
        Ok((413, _)) => tally.lock().unwrap().refused_as_expected += 1,
        // The service may answer 413 and close before the whole body is written.
        Err(e) if e.to_string().contains("Broken pipe") || e.to_string().contains("reset") => {
            tally.lock().unwrap().refused_as_expected += 1
        }
        other => tally
            .lock()
            .unwrap()
            .failures
            .push(format!("oversized body: {other:?}")),
    }
    disconnect_mid_upload(&svc.host, &png, 1 << 20)?;
    pause();
    // The service outlives the client that hung up.
    match ureq::get(&svc.url("/healthz")).call() {
        Ok(r) if r.status() == 200 => tally.lock().unwrap().refused_as_expected += 1,
        other => tally.lock().unwrap().failures.push(format!(
            "health after a client hung up mid-upload: {other:?}"
        )),
    }
    // The reload in the middle of the load: model B, written as `iuf learn` writes it.
    let tmp = served.with_extension("incoming");
    std::fs::copy(b, &tmp)?;
    std::fs::rename(&tmp, served)?;
    expect("reload to model B", post(&agent, &reload, b"", true), 200);
    Ok(())
}

pub fn run(mut args: Args) -> Result<()> {
    if args.clients.is_empty() {
        args.clients = if args.replicas > 0 {
            vec![4, 16]
        } else {
            vec![1, 4, 16]
        };
    }
    std::fs::create_dir_all(&args.work)?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", "iuf-cli"])
        .status()?;
    ensure!(status.success(), "cargo build --release -p iuf-cli failed");
    let bin = PathBuf::from("target/release/iuf");
    let (a, b) = (
        args.work.join("a.safetensors"),
        args.work.join("b.safetensors"),
    );
    if !a.is_file() {
        eprintln!("training model A (bottle, pill)");
        check(
            iuf(&args, &bin)
                .arg("train")
                .arg("--data")
                .arg(&args.data)
                .args(["--classes", "bottle,pill", "--out"])
                .arg(&a)
                .output()?,
            "iuf train",
        )?;
    }
    if !b.is_file() {
        eprintln!("model B: A after learning tire");
        check(
            iuf(&args, &bin)
                .arg("learn")
                .arg("--model")
                .arg(&a)
                .arg("--data")
                .arg(&args.data)
                .args(["--classes", "tire", "--out"])
                .arg(&b)
                .output()?,
            "iuf learn",
        )?;
    }
    let mut paths = Vec::new();
    for class in ["bottle", "pill"] {
        for kind in std::fs::read_dir(args.data.join(class).join("test"))? {
            let mut files: Vec<PathBuf> = std::fs::read_dir(kind?.path())?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "png"))
                .collect();
            files.sort();
            paths.extend(files.into_iter().take(4));
        }
    }
    paths.sort();
    eprintln!(
        "{} test images; reference scores with iuf predict",
        paths.len()
    );
    let (scores_a, predict_ms) = predict(&args, &bin, &a, &paths)?;
    let (scores_b, _) = predict(&args, &bin, &b, &paths)?;
    let (_, predict_one_ms) = predict(&args, &bin, &a, &paths[..1])?;
    let truth = Truth {
        images: paths.iter().map(std::fs::read).collect::<Result<_, _>>()?,
        by_model: vec![(sha256(&a)?, scores_a), (sha256(&b)?, scores_b)],
    };

    if args.target.is_some() || args.replicas > 0 {
        let (mut report, failures) = match &args.target {
            Some(url) => target(&args, url, &truth)?,
            None => replicas::run(&args, &bin, &a, &b, &truth)?,
        };
        report.insert_str(
            0,
            &format!(
                "`iuf predict` with model A: {predict_ms:.1} ms per image on {} images.\n\n",
                paths.len()
            ),
        );
        return finish(&args, &report, &failures, true);
    }

    let served = args.work.join("served.safetensors");
    let mut report = String::new();
    let mut total_failures = Vec::new();
    report.push_str(&format!(
        "Precision: {}; service and predict with --threads {}.\n\n",
        args.precision.as_deref().unwrap_or("the model's (f32)"),
        args.threads
    ));
    report.push_str(&format!(
        "`iuf predict` with model A: **{predict_ms:.1} ms per image** on {} images (batches of 8, \
         heatmaps written), {predict_one_ms:.1} ms for a single image; {:.1} images/s.\n\n",
        paths.len(),
        1e3 / predict_ms
    ));
    report.push_str(
        "| max batch | wait ms | clients | requests | images/s | p50 ms | p95 ms | p99 ms | failed |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (&mb, &wait) in args
        .max_batch
        .iter()
        .flat_map(|m| args.batch_wait_ms.iter().map(move |w| (m, w)))
    {
        std::fs::copy(&a, &served)?;
        let svc = Service::start(&args, &bin, &served, mb, wait)?;
        // Warm-up: the first batches allocate. Its answers are checked too.
        total_failures.extend(load(&svc, &truth, 2, 4).0.failures);
        for &c in &args.clients {
            let (t, wall) = load(&svc, &truth, c, args.requests);
            let row = format!("| {mb} | {wait} {}", row(c, args.requests, &t, wall, None));
            eprint!("{row}");
            report.push_str(&row);
            total_failures.extend(t.failures);
        }
        svc.stop()?;
    }

    // Faults under load: 4 clients while the chaos thread works.
    let mb = *args.max_batch.last().context("--max-batch is empty")?;
    let wait = *args
        .batch_wait_ms
        .last()
        .context("--batch-wait-ms is empty")?;
    std::fs::copy(&a, &served)?;
    let svc = Service::start(&args, &bin, &served, mb, wait)?;
    let chaos_tally = Mutex::new(Tally::default());
    let ((load_tally, wall), chaos_result) = std::thread::scope(|s| {
        let chaos = s.spawn(|| chaos(&svc, &served, &a, &b, &chaos_tally));
        let l = load(&svc, &truth, 4, args.requests.max(30));
        (l, chaos.join().expect("chaos thread"))
    });
    chaos_result?;
    let after = load(&svc, &truth, 1, 3).0;
    let metrics = ureq::get(&svc.url("/metrics")).call()?.into_string()?;
    let panics = metrics
        .lines()
        .find_map(|l| l.strip_prefix("iuf_worker_panics_total "))
        .unwrap_or("?")
        .to_string();
    svc.stop()?;
    let chaos_tally = chaos_tally.into_inner().unwrap();
    let sha_b = &truth.by_model[1].0;
    let served_b = !after.latencies.is_empty() && after.failures.is_empty();
    report.push_str(&format!(
        "\nFault phase (max batch {mb}, wait {wait} ms, 4 clients, {} requests, {:.1} images/s): {} correct answers, \
         {} failed; deliberate faults answered as expected: {} of 6 (garbage 422, truncated PNG 422, \
         corrupt model reload 422, oversized 413, a client hanging up mid-upload, reload to B 200); \
         after the reload the service answers with model B ({}): {}; worker panics: {panics}.\n",
        4 * args.requests.max(30),
        load_tally.ok as f64 / wall,
        load_tally.ok,
        load_tally.failures.len(),
        chaos_tally.refused_as_expected,
        &sha_b[..12],
        if served_b { "yes" } else { "no" }
    ));
    total_failures.extend(load_tally.failures);
    total_failures.extend(chaos_tally.failures);
    total_failures.extend(after.failures);
    finish(
        &args,
        &report,
        &total_failures,
        chaos_tally.refused_as_expected == 6 && panics == "0",
    )
}

/// `--target URL`: the load phases against a running service; its report and failures.
fn target(args: &Args, url: &str, truth: &Truth) -> Result<(String, Vec<String>)> {
    let mut failures = load_url(url, truth, 2, 4, &AtomicUsize::new(0)).0.failures;
    let mut report = format!(
        "Target {url}:\n\n\
         | clients | requests | images/s | p50 ms | p95 ms | p99 ms | failed |\n\
         |---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for &c in &args.clients {
        let (t, wall) = load_url(url, truth, c, args.requests, &AtomicUsize::new(0));
        let row = row(c, args.requests, &t, wall, None);
        eprint!("{row}");
        report.push_str(&row);
        failures.extend(t.failures);
    }
    Ok((report, failures))
}

/// A report row of a load phase: clients, requests, throughput, latency percentiles, failures,
/// and what happened during it when told.
fn row(clients: usize, requests: usize, t: &Tally, wall: f64, events: Option<&str>) -> String {
    let mut r = format!(
        "| {clients} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
        clients * requests,
        t.ok as f64 / wall,
        percentile(&t.latencies, 0.5),
        percentile(&t.latencies, 0.95),
        percentile(&t.latencies, 0.99),
        t.failures.len()
    );
    if let Some(e) = events {
        r.push_str(&format!(" {e} |"));
    }
    r.push('\n');
    r
}

/// Prints (and writes) the report, lists the failures; an error when there is any, or `ok` is false.
fn finish(args: &Args, report: &str, failures: &[String], ok: bool) -> Result<()> {
    print!("{report}");
    if let Some(path) = &args.report {
        std::fs::write(path, report).with_context(|| format!("writing {}", path.display()))?;
    }
    for f in failures {
        eprintln!("FAILURE: {f}");
    }
    ensure!(
        failures.is_empty() && ok,
        "{} failure(s) in the load test",
        failures.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 51.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v[..1], 0.95), 1.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn an_answer_is_checked_against_the_model_it_names() {
        let truth = Truth {
            images: vec![vec![], vec![]],
            by_model: vec![
                ("aaaaaaaaaaaaaaaa".into(), vec![1.0, 2.0]),
                ("bbbbbbbbbbbbbbbb".into(), vec![3.0, 4.0]),
            ],
        };
        let answer =
            |sha: &str, score: f64| serde_json::json!({ "model_sha256": sha, "score": score });
        assert!(truth.check(1, &answer("aaaaaaaaaaaaaaaa", 2.0)).is_ok());
        assert!(truth.check(1, &answer("bbbbbbbbbbbbbbbb", 4.0)).is_ok());
        // B's score reported as A's: a mix-up.
        assert!(truth.check(1, &answer("aaaaaaaaaaaaaaaa", 4.0)).is_err());
        assert!(truth.check(0, &answer("cccccccccccccccc", 1.0)).is_err());
    }
}
