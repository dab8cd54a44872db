//! `cargo xtask loadtest --replicas N`: N `iuf serve` replicas behind nginx (the system package,
//! configured by `deploy/nginx/iuf.conf`), driven through nginx while replicas fail. With the
//! default `--clients 4,16`, in the first load phase one replica is killed with SIGKILL and
//! started again (as a supervisor would); in the second, another has its model file replaced and
//! reloaded, and a third is stopped with SIGTERM (it drains) and started again. Every answer is
//! checked against `iuf predict` for the model it names; nothing may fail, not even during the
//! faults: nginx sends the requests of a dead or draining replica to the next one.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use super::{load_url, post, row, Args, Service, Truth};

/// The nginx configuration, with `@PREFIX@`, `@LISTEN@` and `@UPSTREAMS@` to fill in.
const NGINX_CONF: &str = include_str!("../../../deploy/nginx/iuf.conf");

/// `deploy/nginx/iuf.conf` for replicas at `hosts`, nginx listening on `listen`, writing under
/// `prefix` (an absolute path).
pub fn nginx_conf(prefix: &Path, listen: &str, hosts: &[String]) -> String {
    let upstreams: String = hosts
        .iter()
        .map(|h| format!("{:8}server {h} max_fails=1 fail_timeout=5s;\n", ""))
        .collect();
    NGINX_CONF
        .replace("@PREFIX@", &prefix.display().to_string())
        .replace("@LISTEN@", listen)
        .replace("@UPSTREAMS@\n", &upstreams)
}

struct Nginx {
    child: Child,
    url: String,
}

impl Nginx {
    fn start(work: &Path, hosts: &[String]) -> Result<Self> {
        let prefix = std::path::absolute(work.join("nginx"))?;
        std::fs::create_dir_all(&prefix)?;
        // A free port: bound, read and released just before nginx takes it.
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let listen = format!("127.0.0.1:{port}");
        let conf = prefix.join("nginx.conf");
        std::fs::write(&conf, nginx_conf(&prefix, &listen, hosts))?;
        let nginx = which_nginx()?;
        let child = Command::new(&nginx)
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", nginx.display()))?;
        let mut me = Self {
            child,
            url: format!("http://{listen}"),
        };
        let t = Instant::now();
        while TcpStream::connect(&listen).is_err() {
            if let Some(status) = me.child.try_wait()? {
                bail!(
                    "nginx exited with {status}; see {}",
                    prefix.join("error.log").display()
                );
            }
            ensure!(
                t.elapsed() < Duration::from_secs(10),
                "nginx did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Ready when a replica answers through it.
        me.wait_ready()?;
        Ok(me)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let t = Instant::now();
        loop {
            if matches!(ureq::get(&format!("{}/readyz", self.url)).call(), Ok(r) if r.status() == 200)
            {
                return Ok(());
            }
            ensure!(
                t.elapsed() < Duration::from_secs(30),
                "no replica ready behind nginx"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(mut self) -> Result<()> {
        // SIGQUIT: nginx's graceful stop.
        let _ = Command::new("kill")
            .args(["-QUIT", &self.child.id().to_string()])
            .status();
        self.child.wait()?;
        Ok(())
    }
}

fn which_nginx() -> Result<PathBuf> {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
    {
        let p = Path::new(dir).join("nginx");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "nginx is not installed (Debian/Ubuntu: apt-get install nginx-light); --replicas needs it"
    )
}

/// One replica: its service, its own model file (so that one replica's can be replaced alone),
/// and its address, which it keeps when it is started again.
struct Replica {
    svc: Option<Service>,
    model: PathBuf,
    host: String,
}

impl Replica {
    fn start(args: &Args, bin: &Path, host: &str, model: &Path) -> Result<Service> {
        let mb = *args.max_batch.last().context("--max-batch is empty")?;
        let wait = *args
            .batch_wait_ms
            .last()
            .context("--batch-wait-ms is empty")?;
        // The port was just given up by the replica before (TIME_WAIT is no obstacle: the
        // service's listener reuses the address), so retry briefly.
        let t = Instant::now();
        loop {
            match Service::start_at(args, bin, model, mb, wait, host) {
                Ok(s) => return Ok(s),
                Err(e) if t.elapsed() < Duration::from_secs(5) => {
                    eprintln!("replica at {host} did not start yet ({e:#}); retrying");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// What happened during a phase, for the report.
#[derive(Default)]
struct Events(Vec<String>);

impl Events {
    fn note(&mut self, t0: Instant, what: String) {
        let line = format!("{:.1} s: {what}", t0.elapsed().as_secs_f64());
        eprintln!("  {line}");
        self.0.push(line);
    }
}

/// Waits until `next` has counted `n` requests (or the load has ended).
fn wait_for(next: &AtomicUsize, n: usize, done: &AtomicUsize) {
    while next.load(Ordering::Relaxed) < n && done.load(Ordering::Relaxed) == 0 {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The faults of phase `phase` (0: SIGKILL and restart; 1: model replaced and reloaded, SIGTERM
/// and restart), run while the load counts `next` up to `total`.
#[allow(clippy::too_many_arguments)]
fn faults(
    phase: usize,
    args: &Args,
    bin: &Path,
    replicas: &mut [Replica],
    b: &Path,
    next: &AtomicUsize,
    done: &AtomicUsize,
    total: usize,
    events: &mut Events,
    t0: Instant,
) -> Result<()> {
    let n = replicas.len();
    match phase {
        0 => {
            wait_for(next, total / 3, done);
            let r = &mut replicas[0];
            let mut svc = r.svc.take().context("replica 0 is not running")?;
            svc.child.kill()?;
            svc.child.wait()?;
            events.note(t0, format!("replica 0 ({}) killed with SIGKILL", r.host));
            wait_for(next, 2 * total / 3, done);
            r.svc = Some(Replica::start(args, bin, &r.host, &r.model)?);
            events.note(t0, "replica 0 started again on its address".into());
        }
        _ => {
            wait_for(next, total / 3, done);
            let r = &mut replicas[1 % n];
            // As `iuf learn --out` writes it: a temporary name, then a rename over the served file.
            let tmp = r.model.with_extension("incoming");
            std::fs::copy(b, &tmp)?;
            std::fs::rename(&tmp, &r.model)?;
            let agent = ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(60))
                .build();
            let (status, v) = post(&agent, &format!("http://{}/v1/reload", r.host), b"", true)?;
            ensure!(status == 200, "reload of replica {}: {status} {v}", 1 % n);
            events.note(
                t0,
                format!(
                    "replica {} ({}): model replaced by B and reloaded (200)",
                    1 % n,
                    r.host
                ),
            );
            wait_for(next, 2 * total / 3, done);
            let r = &mut replicas[2 % n];
            let mut svc = r.svc.take().context("replica 2 is not running")?;
            Command::new("kill")
                .args(["-TERM", &svc.child.id().to_string()])
                .status()?;
            let t = Instant::now();
            let status = svc.child.wait()?;
            events.note(
                t0,
                format!(
                    "replica {} ({}) stopped with SIGTERM: drained and exited ({status}) in {:.1} s",
                    2 % n,
                    r.host,
                    t.elapsed().as_secs_f64()
                ),
            );
            ensure!(
                status.success(),
                "a replica stopped with SIGTERM exited with {status}"
            );
            r.svc = Some(Replica::start(args, bin, &r.host, &r.model)?);
            events.note(t0, format!("replica {} started again", 2 % n));
        }
    }
    Ok(())
}

/// The replica test: its report section and every failure it saw.
pub fn run(
    args: &Args,
    bin: &Path,
    a: &Path,
    b: &Path,
    truth: &Truth,
) -> Result<(String, Vec<String>)> {
    let n = args.replicas;
    ensure!(
        n >= 3,
        "--replicas must be at least 3 (one is killed, one reloaded, one drained)"
    );
    let mut failures = Vec::new();
    let mut report = String::new();

    // One replica alone, straight (no nginx), at the same thread count: the per-replica figure.
    std::fs::copy(a, args.work.join("served.safetensors"))?;
    let one = Service::start(
        args,
        bin,
        &args.work.join("served.safetensors"),
        *args.max_batch.last().context("--max-batch is empty")?,
        *args
            .batch_wait_ms
            .last()
            .context("--batch-wait-ms is empty")?,
    )?;
    failures.extend(
        load_url(&one.url(""), truth, 2, 4, &AtomicUsize::new(0))
            .0
            .failures,
    );
    report.push_str(&format!(
        "One replica alone (`--threads {}`, no balancer):\n\n\
         | clients | requests | images/s | p50 ms | p95 ms | p99 ms | failed |\n\
         |---:|---:|---:|---:|---:|---:|---:|\n",
        args.threads
    ));
    for &c in &args.clients {
        let (t, wall) = load_url(&one.url(""), truth, c, args.requests, &AtomicUsize::new(0));
        report.push_str(&row(c, args.requests, &t, wall, None));
        failures.extend(t.failures);
    }
    one.stop()?;

    let mut replicas = Vec::with_capacity(n);
    for i in 0..n {
        let model = args.work.join(format!("replica-{i}.safetensors"));
        std::fs::copy(a, &model)?;
        let svc = Replica::start(args, bin, "127.0.0.1:0", &model)?;
        let host = svc.host.clone();
        eprintln!("replica {i} on {host}");
        replicas.push(Replica {
            svc: Some(svc),
            model,
            host,
        });
    }
    let hosts: Vec<String> = replicas.iter().map(|r| r.host.clone()).collect();
    let nginx = Nginx::start(&args.work, &hosts)?;
    eprintln!("nginx on {}", nginx.url);
    failures.extend(
        load_url(&nginx.url, truth, 2, 4, &AtomicUsize::new(0))
            .0
            .failures,
    );

    report.push_str(&format!(
        "\n{n} replicas (`--threads {}` each, on the same cores) behind nginx, with faults in \
         the middle of each phase:\n\n\
         | clients | requests | images/s | p50 ms | p95 ms | p99 ms | failed | during the phase |\n\
         |---:|---:|---:|---:|---:|---:|---:|---|\n",
        args.threads
    ));
    for (phase, &c) in args.clients.iter().enumerate() {
        let next = AtomicUsize::new(0);
        let done = AtomicUsize::new(0);
        let total = c * args.requests;
        let mut events = Events::default();
        let t0 = Instant::now();
        let ((tally, wall), fault) = std::thread::scope(|s| {
            let load = s.spawn(|| {
                let r = load_url(&nginx.url, truth, c, args.requests, &next);
                done.store(1, Ordering::Relaxed);
                r
            });
            let fault = if phase < 2 {
                faults(
                    phase,
                    args,
                    bin,
                    &mut replicas,
                    b,
                    &next,
                    &done,
                    total,
                    &mut events,
                    t0,
                )
            } else {
                Ok(())
            };
            (load.join().expect("load thread"), fault)
        });
        fault?;
        let what = if events.0.is_empty() {
            "nothing".to_string()
        } else {
            events.0.join("; ")
        };
        let r = row(c, args.requests, &tally, wall, Some(&what));
        eprint!("{r}");
        report.push_str(&r);
        failures.extend(tally.failures);
    }
    // After the faults: every replica answers, replica 1 with model B.
    let sha_b = &truth.by_model[1].0;
    for (i, r) in replicas.iter().enumerate() {
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(60))
            .build();
        let (status, v) = post(
            &agent,
            &format!("http://{}/v1/inspect", r.host),
            &truth.images[0],
            false,
        )?;
        let sha = v["model_sha256"].as_str().unwrap_or("");
        let want_b = i == 1;
        if status != 200 || (sha == sha_b) != want_b {
            failures.push(format!(
                "replica {i} after the faults: status {status}, model {sha} (expected {})",
                if want_b { "B" } else { "A" }
            ));
        }
    }
    nginx.stop()?;
    for r in replicas {
        if let Some(svc) = r.svc {
            svc.stop()?;
        }
    }
    report.push_str(
        "\nAfter the faults every replica answered directly, replica 1 with model B and the \
         others with A (checked).\n",
    );
    Ok((report, failures))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nginx_configuration_names_every_replica_and_leaves_no_placeholder() {
        let hosts = vec!["127.0.0.1:1001".to_string(), "127.0.0.1:1002".to_string()];
        let conf = nginx_conf(Path::new("/x/nginx"), "127.0.0.1:9000", &hosts);
        for p in ["@PREFIX@", "@LISTEN@", "@UPSTREAMS@"] {
            assert!(NGINX_CONF.contains(p), "the template lacks {p}");
            assert!(!conf.contains(p), "{p} is left:\n{conf}");
        }
        assert!(conf.contains("server 127.0.0.1:1001 max_fails=1"));
        assert!(conf.contains("server 127.0.0.1:1002 max_fails=1"));
        assert!(conf.contains("listen 127.0.0.1:9000;"));
        assert!(conf.contains("pid /x/nginx/nginx.pid;"));
        assert!(conf.contains("non_idempotent"));
    }

    #[test]
    fn nginx_accepts_the_configuration_when_it_is_installed() {
        let Ok(nginx) = which_nginx() else {
            eprintln!("nginx is not installed: the configuration is not checked by nginx -t");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let prefix = std::path::absolute(dir.path()).unwrap();
        let conf = prefix.join("nginx.conf");
        std::fs::write(
            &conf,
            nginx_conf(&prefix, "127.0.0.1:18080", &["127.0.0.1:1".to_string()]),
        )
        .unwrap();
        let out = Command::new(nginx)
            .arg("-t")
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nginx -t refused the configuration:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
