//! `iuf serve`: a long-running inspection service over HTTP (axum on tokio). The model is loaded
//! once, swapped atomically on reload (in-flight batches finish on the old one), and requests are
//! gathered into batches run by one worker on the compute pool.
//!
//! Routes: `POST /v1/inspect`, `GET /v1/model`, `POST /v1/reload`, `POST /v1/objects/{name}/good`
//! and `PUT /v1/objects/{name}/threshold` ([`update`]), `GET /healthz`, `GET /readyz`,
//! `GET /metrics`, and a page for a person at `/`.
//!
//! Connections are served by [`conn`]'s accept loop: a header-read timeout, a connection limit
//! that closes idle connections to make room, and a shutdown with a deadline.

mod batch;
mod conn;
mod metrics;
pub(crate) mod model;
mod update;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use arc_swap::ArcSwap;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Multipart, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use candle_core::Device;
use clap::Args;
use serde_json::json;
use tokio::sync::{oneshot, Mutex};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;

use self::batch::{BatchConfig, Job, JobError, Queue, Upload};
use self::metrics::Metrics;
use self::model::Served;
use crate::budget::{DecodeBudget, DecodeBudgetArg};
use crate::{setup, Global};

/// The page at `/`: one static file, plain JavaScript, nothing fetched from elsewhere.
const PAGE: &str = include_str!("page.html");

/// Arguments of `iuf serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The model file to serve; `POST /v1/reload` (or --watch) loads it again after `iuf learn`
    /// has replaced it.
    #[arg(long, value_name = "FILE")]
    pub model: PathBuf,
    /// Address to listen on. Loopback by default: give an interface's address (or 0.0.0.0) to
    /// accept other machines, ideally with --token. Port 0 picks a free port (printed).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    /// Most images run through the model as one batch.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub max_batch: usize,
    /// Milliseconds the worker waits for more images after the first one of a batch.
    #[arg(long, value_name = "MS", default_value_t = 2)]
    pub batch_wait_ms: u64,
    /// Images the queue holds; requests beyond it get 503 with Retry-After.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub queue: usize,
    /// Largest request body, in MiB (413 beyond it).
    #[arg(long, value_name = "MIB", default_value_t = 32)]
    pub max_body_mib: usize,
    /// Seconds a request may take in all, upload included (408 beyond it).
    #[arg(long, value_name = "S", default_value_t = 30)]
    pub timeout_s: u64,
    /// Require `Authorization: Bearer TOKEN` on POST /v1/reload and on the changes to the model
    /// (POST /v1/objects/NAME/good, PUT /v1/objects/NAME/threshold) (also read from $IUF_TOKEN).
    #[arg(long, value_name = "TOKEN", env = "IUF_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Reload the model when its file changes (checked every second).
    #[arg(long)]
    pub watch: bool,
    /// Seconds a connection may take to send a complete request header, counted from its opening
    /// or from its last answer: connections that send half a header, or sit idle between
    /// requests, are closed after it.
    #[arg(long, value_name = "S", default_value_t = 10)]
    pub header_timeout_s: u64,
    /// Connections open at once. A new one beyond it closes the connection idle for longest (one
    /// with no request in progress: between requests, or still sending its header); when every
    /// one is busy, new connections wait until one ends.
    #[arg(long, value_name = "N", default_value_t = 512)]
    pub max_connections: usize,
    /// On SIGTERM or Ctrl-C the service stops taking work: /readyz and new images get 503 (on
    /// connections opened meanwhile, each answered once and closed), idle connections are closed
    /// and the requests in progress get S seconds to finish; the process exits at most S + 5
    /// seconds after the signal (a second signal: at once).
    #[arg(long, value_name = "S", default_value_t = 10)]
    pub drain_s: u64,
    #[command(flatten)]
    pub precision: setup::PrecisionArg,
    /// Also checked on every reload.
    #[command(flatten)]
    pub signed: crate::cmd::sign::RequireSigned,
    #[command(flatten)]
    pub decode_budget: DecodeBudgetArg,
    #[command(flatten)]
    pub sinks: crate::sink::SinkArgs,
}

/// What every handler shares.
struct AppState {
    model: Arc<ArcSwap<Served>>,
    queue: Queue,
    metrics: Arc<Metrics>,
    token: Option<String>,
    global: Global,
    device: Device,
    precision: setup::PrecisionArg,
    /// The key every model must be signed with (`--require-signed`).
    signed_by: Option<ed25519_dalek::VerifyingKey>,
    path: PathBuf,
    /// One reload at a time.
    reloading: Mutex<()>,
    /// Largest request body in bytes.
    max_body: usize,
    /// How long a request may take in all.
    timeout: Duration,
    /// Pixels decoded at once; an uploaded image larger alone is refused (413).
    budget: DecodeBudget,
    started: SystemTime,
    /// Set once a stop signal came: readiness answers 503.
    stopping: AtomicBool,
    /// Where every image's result is sent besides the answer (--mqtt, --webhook).
    sinks: Arc<crate::sink::Sinks>,
}

type Shared = Arc<AppState>;

/// An error answer: a status and a JSON `{"error": ...}` body.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.0, Json(json!({ "error": self.1 }))).into_response();
        if self.0 == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

pub fn run(g: &Global, a: ServeArgs) -> Result<ExitCode> {
    if a.max_batch == 0 || a.queue == 0 {
        bail!("--max-batch and --queue must be at least 1");
    }
    if a.max_connections == 0 || a.header_timeout_s == 0 {
        bail!("--max-connections and --header-timeout-s must be at least 1");
    }
    if a.queue < a.max_batch {
        bail!(
            "--queue {} is smaller than --max-batch {}: a full batch could never be queued",
            a.queue,
            a.max_batch
        );
    }
    let signed_by = a.signed.key()?;
    let budget = a.decode_budget.resolve()?;
    let device = setup::device(g)?;
    let t = Instant::now();
    let served = model::load(g, &a.model, &device, &a.precision, signed_by.as_ref(), None)?;
    let metrics = Arc::new(Metrics::new());
    metrics.serving(&model::file_name(&a.model), &served.sha256);
    let sinks = Arc::new(a.sinks.start("serve", |name| metrics.sink_stats(name))?);
    // Drift warnings and recoveries go to the sinks too, as events of kind `drift` / `recovered`
    // (MQTT topic `<prefix>/<object>/drift`).
    let drift_sinks = sinks.clone();
    metrics.on_drift(Box::new(move |ev| drift_sinks.send(drift_event(ev))));
    eprintln!(
        "model {} (sha256 {}, {} object(s)) loaded in {:.2} s; decode budget {}",
        a.model.display(),
        &served.sha256[..16],
        served.learner.learned_classes().len(),
        t.elapsed().as_secs_f64(),
        budget.describe()
    );
    let model = Arc::new(ArcSwap::from_pointee(served));
    let (queue, worker) = batch::start(
        BatchConfig {
            max_batch: a.max_batch,
            pixel_budget: budget.pixels,
            wait: Duration::from_millis(a.batch_wait_ms),
            queue: a.queue,
        },
        model.clone(),
        metrics.clone(),
    );
    let state = Arc::new(AppState {
        model,
        queue,
        metrics,
        token: a.token.clone().filter(|t| !t.is_empty()),
        global: g.clone(),
        device,
        precision: a.precision,
        signed_by,
        path: a.model.clone(),
        reloading: Mutex::new(()),
        max_body: a.max_body_mib.max(1) << 20,
        timeout: Duration::from_secs(a.timeout_s.max(1)),
        budget,
        started: SystemTime::now(),
        stopping: AtomicBool::new(false),
        sinks,
    });
    if !a.bind.ip().is_loopback() && state.token.is_none() {
        tracing::warn!(
            "listening on {} without --token: anyone who can reach it can reload the model",
            a.bind
        );
    }
    // The network side needs little: the model's work runs on the batch worker and rayon's pool.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name("iuf-http")
        .build()
        .context("starting the tokio runtime")?;
    let served = runtime.block_on(serve(state.clone(), &a));
    // Every task still holding the state (the --watch poller, a reload, connections past the
    // deadline) ends with the runtime.
    runtime.shutdown_timeout(Duration::from_secs(1));
    // The results answered are sent within --sink-drain-s; what is left is counted and logged.
    state.sinks.finish();
    served?;
    // Dropping the last state drops the queue's sender: the worker skips the jobs whose clients
    // are gone, finishes its batch and stops. Its batch gets a bounded wait, then the process
    // ends anyway.
    drop(state);
    let deadline = Instant::now() + conn::WORKER_GRACE;
    while !worker.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if worker.is_finished() {
        let _ = worker.join();
    } else {
        tracing::warn!("the model worker is still running a batch; exiting without it");
    }
    eprintln!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// A drift watch's change as a sink event: its kind (`drift`, `recovered`), the object, the
/// statistics and the log's message.
fn drift_event(ev: &iuf_inspect::drift::DriftEvent) -> crate::sink::Event {
    let mut fields = serde_json::to_value(ev).unwrap_or_else(|_| serde_json::json!({}));
    if let Some(m) = fields.as_object_mut() {
        m.insert("object".into(), ev.stats.object.clone().into());
        m.insert("message".into(), ev.message().into());
    }
    crate::sink::Event::new(ev.kind, fields)
}

fn router(state: Shared, a: &ServeArgs) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/v1/inspect", post(inspect))
        .route("/v1/model", get(model_info))
        .route("/v1/reload", post(reload))
        .route("/v1/objects/{name}/good", post(update::add_good))
        .route("/v1/objects/{name}/threshold", put(update::set_threshold))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .fallback(no_route)
        .layer(DefaultBodyLimit::max(a.max_body_mib.max(1) << 20))
        .layer(CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                ApiError(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error while handling the request; the service goes on".into(),
                )
                .into_response()
            },
        ))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(a.timeout_s.max(1)),
        ))
        .layer(middleware::from_fn_with_state(state.clone(), json_errors))
        .layer(middleware::from_fn_with_state(state.clone(), record))
        .with_state(state)
}

async fn serve(state: Shared, a: &ServeArgs) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(a.bind)
        .await
        .with_context(|| format!("cannot listen on {}", a.bind))?;
    let addr = listener.local_addr()?;
    // Tests and scripts read this line for the port.
    eprintln!("listening on http://{addr} (page at /, API at /v1/inspect; Ctrl-C stops)");
    if a.watch {
        tokio::spawn(watch(state.clone()));
    }
    let limits = conn::Limits {
        header_timeout: Duration::from_secs(a.header_timeout_s),
        max_connections: a.max_connections,
        drain: Duration::from_secs(a.drain_s),
    };
    let app = router(state.clone(), a);
    conn::serve(listener, app, limits, || {
        state.stopping.store(true, Ordering::Release);
        eprintln!(
            "stopping: no new work, finishing the requests in flight (at most {} s; a second signal stops at once)",
            a.drain_s
        );
    })
    .await;
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Counts every answer by route and status, with its latency.
async fn record(State(s): State<Shared>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("other", |m| m.as_str())
        .to_string();
    let t = Instant::now();
    let response = next.run(req).await;
    s.metrics.request(
        &route,
        response.status().as_u16(),
        t.elapsed().as_secs_f64(),
    );
    response
}

/// Every route and the method it takes, for the answers to requests outside them.
const ROUTES: [(&str, &str); 9] = [
    ("POST", "/v1/inspect"),
    ("GET", "/v1/model"),
    ("POST", "/v1/reload"),
    ("POST", "/v1/objects/{name}/good"),
    ("PUT", "/v1/objects/{name}/threshold"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/"),
];

fn routes() -> String {
    let all: Vec<String> = ROUTES.iter().map(|(m, p)| format!("{m} {p}")).collect();
    all.join(", ")
}

async fn no_route(req: Request) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        format!(
            "{} {}: no such route; this service answers {}",
            req.method(),
            req.uri().path(),
            routes()
        ),
    )
}

/// Every error answer is JSON `{"error": ...}` in the API's terms, also those that axum and
/// tower give on their own (a method a route does not take, the time limit, the body limit),
/// which come with an empty or plain-text body.
async fn json_errors(State(s): State<Shared>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let request = format!("{} {path}", req.method());
    let response = next.run(req).await;
    let status = response.status();
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 << 10)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let allow = ROUTES.iter().find(|(_, p)| *p == path).map(|(m, _)| *m);
    let msg = match (status, allow) {
        (StatusCode::METHOD_NOT_ALLOWED, Some(allow)) => {
            format!("{request}: method not allowed; {path} takes {allow}")
        }
        (StatusCode::REQUEST_TIMEOUT, _) => format!(
            "{request}: not complete within {} s, this service's limit for a request (upload \
             included)",
            s.timeout.as_secs()
        ),
        (StatusCode::PAYLOAD_TOO_LARGE, _) => format!(
            "{request}: the body is larger than this service takes ({} MiB)",
            s.max_body >> 20
        ),
        _ if !text.is_empty() => format!("{request}: {text}"),
        _ => format!(
            "{request}: {}",
            status.canonical_reason().unwrap_or("failed")
        ),
    };
    let mut answer = ApiError(status, msg).into_response();
    if let Some(allow) = parts.headers.get(header::ALLOW) {
        answer.headers_mut().insert(header::ALLOW, allow.clone());
    }
    answer
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

/// The answer to new work once a stop signal came (503 with Retry-After).
fn stopping() -> ApiError {
    ApiError(
        StatusCode::SERVICE_UNAVAILABLE,
        "the service is stopping and takes no new work; send it to another instance".into(),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<Shared>) -> Response {
    let m = s.model.load();
    if s.stopping.load(Ordering::Acquire) {
        return ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the service is stopping".into(),
        )
        .into_response();
    }
    if s.queue.full() {
        return ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the queue is full; retry shortly".into(),
        )
        .into_response();
    }
    Json(json!({ "ready": true, "model_sha256": m.sha256 })).into_response()
}

async fn metrics_text(State(s): State<Shared>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

async fn model_info(State(s): State<Shared>) -> Json<serde_json::Value> {
    let m = s.model.load();
    let mut info = m.info.clone();
    info["served_since"] = json!(s
        .started
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0));
    Json(info)
}

#[derive(Debug, Default)]
struct InspectQuery {
    /// `png`: include each image's heatmap as a PNG data URL.
    heatmap: Option<String>,
    /// Judge the images as this object instead of the recognised one.
    object: Option<String>,
}

/// The query of `POST /v1/inspect`: each parameter at most once, no other parameter.
fn inspect_query(uri: &Uri) -> Result<InspectQuery, ApiError> {
    let bad = |msg: String| ApiError(StatusCode::BAD_REQUEST, msg);
    let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(uri).map_err(|e| {
        bad(format!(
            "the query `{}` cannot be read: {}",
            uri.query().unwrap_or_default(),
            e.body_text()
        ))
    })?;
    let mut q = InspectQuery::default();
    for (key, value) in pairs {
        let slot = match key.as_str() {
            "heatmap" => &mut q.heatmap,
            "object" => &mut q.object,
            other => {
                return Err(bad(format!(
                    "unknown query parameter `{other}`; /v1/inspect takes `heatmap` (png or \
                     none) and `object` (an object the model knows)"
                )))
            }
        };
        if slot.is_some() {
            return Err(bad(format!(
                "the query parameter `{key}` is given more than once; give it once"
            )));
        }
        *slot = Some(value);
    }
    Ok(q)
}

async fn inspect(State(s): State<Shared>, req: Request) -> Result<Response, ApiError> {
    // A bad query is answered only after the body is read: answering first and closing a
    // connection whose body is still arriving makes the client see a broken pipe, not the 400.
    let q = inspect_query(req.uri());
    // New work is refused once a stop signal came (after the body, as above); a request that
    // came before it is in flight and finishes.
    let stopping_at_start = s.stopping.load(Ordering::Acquire);
    // Refuse a body announced too large before reading any of it.
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = announced.filter(|&l| l > s.max_body as u64) {
        return Err(ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the body is {len} bytes; this service takes at most {} MiB",
                s.max_body >> 20
            ),
        ));
    }
    let (multipart, images) = read_uploads(req, &s).await?;
    if stopping_at_start {
        return Err(stopping());
    }
    let q = q?;
    let heatmap = match q.heatmap.as_deref() {
        None | Some("none") => false,
        Some("png") => true,
        Some(other) => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("heatmap={other}: expected `png` or `none`"),
            ))
        }
    };
    if images.iter().all(|u| u.bytes.is_empty()) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "no image: send one as the request body, or several as multipart/form-data".into(),
        ));
    }
    // Each image's size was read from its header, nothing decoded: one that alone exceeds the
    // decode budget could never be decoded (413); the worker decodes the others a batch at a
    // time, within the budget.
    for u in &images {
        if let Some(why) = u.size.and_then(|(w, h)| s.budget.refuse_upload(w, h)) {
            return Err(ApiError(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("{}: {why}", u.name),
            ));
        }
    }
    let (tx, rx) = oneshot::channel();
    let job = Job {
        images,
        heatmap,
        object: q.object,
        enqueued: Instant::now(),
        reply: tx,
    };
    let n = job.images.len();
    if n > s.queue.capacity() {
        // Retrying could never help: say so instead of 503.
        return Err(ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{n} images in one request; this service queues at most {}: send fewer at a time",
                s.queue.capacity()
            ),
        ));
    }
    if s.queue.submit(job).is_err() {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the queue is full ({n} image(s) refused); retry shortly"),
        ));
    }
    let outcomes = match rx.await {
        Ok(Ok(o)) => o,
        Ok(Err(JobError::BadRequest(e))) => return Err(ApiError(StatusCode::BAD_REQUEST, e)),
        Ok(Err(JobError::Internal(e))) => {
            return Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, e))
        }
        Err(_) => {
            return Err(ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "the service is stopping".into(),
            ))
        }
    };
    for o in &outcomes {
        s.sinks.verdict("serve", None, o);
    }
    let failed = outcomes.iter().filter(|o| o.score.is_none()).count();
    let status = if failed == outcomes.len() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    Ok(if multipart {
        (status, Json(json!(outcomes))).into_response()
    } else {
        (status, Json(json!(outcomes[0]))).into_response()
    })
}

/// The images of a request: its multipart/form-data file parts (`true`), or else the body as one
/// image named `body` (`false`).
async fn read_uploads(req: Request, s: &Shared) -> Result<(bool, Vec<Upload>), ApiError> {
    let multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    if multipart {
        return Ok((true, read_multipart(req, s).await?));
    }
    let body = Bytes::from_request(req, s)
        .await
        .map_err(|e| ApiError(e.status(), format!("reading the body: {}", e.body_text())))?;
    Ok((false, vec![Upload::new("body".into(), body)]))
}

/// Every file part of a multipart body (parts without content are skipped).
async fn read_multipart(req: Request, s: &Shared) -> Result<Vec<Upload>, ApiError> {
    let mut mp = Multipart::from_request(req, s)
        .await
        .map_err(|e| ApiError(e.status(), e.body_text()))?;
    let mut images = Vec::new();
    while let Some(field) = mp.next_field().await.map_err(|e| {
        ApiError(
            e.status(),
            format!("reading the multipart body: {}", e.body_text()),
        )
    })? {
        let name = field
            .file_name()
            .or(field.name())
            .map_or_else(|| format!("part{}", images.len()), str::to_string);
        let bytes = field.bytes().await.map_err(|e| {
            ApiError(
                e.status(),
                format!("reading part `{name}`: {}", e.body_text()),
            )
        })?;
        images.push(Upload::new(name, bytes));
    }
    if images.is_empty() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "the multipart body holds no file".into(),
        ));
    }
    Ok(images)
}

fn authorised(s: &AppState, headers: &HeaderMap) -> bool {
    let Some(token) = &s.token else {
        return true;
    };
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| constant_time_eq(given.as_bytes(), token.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn reload(State(s): State<Shared>, headers: HeaderMap) -> Result<Response, ApiError> {
    if s.stopping.load(Ordering::Acquire) {
        return Err(stopping());
    }
    if !authorised(&s, &headers) {
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "reload needs the header `Authorization: Bearer <token>` with this service's token"
                .into(),
        ));
    }
    let (status, body) = reload_now(&s).await;
    Ok((status, Json(body)).into_response())
}

/// Loads the model file again and swaps it in if it loads and passes every check; otherwise the
/// old model keeps serving.
async fn reload_now(s: &Shared) -> (StatusCode, serde_json::Value) {
    let _one = s.reloading.lock().await;
    reload_locked(s).await
}

/// [`reload_now`] for a caller that holds `s.reloading`.
async fn reload_locked(s: &Shared) -> (StatusCode, serde_json::Value) {
    let current = s.model.load_full();
    let state = s.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        model::load(
            &state.global,
            &state.path,
            &state.device,
            &state.precision,
            state.signed_by.as_ref(),
            Some(&current),
        )
    })
    .await;
    let previous = s.model.load().sha256.clone();
    match loaded {
        Ok(Ok(new)) if new.sha256 == previous => {
            s.metrics.reload("unchanged");
            (
                StatusCode::OK,
                json!({ "reloaded": false, "sha256": previous, "message": "the file is unchanged" }),
            )
        }
        Ok(Ok(new)) => {
            let sha = new.sha256.clone();
            s.metrics.serving(&model::file_name(&s.path), &sha);
            // In-flight batches hold their own Arc of the old model and finish on it.
            s.model.store(Arc::new(new));
            s.metrics.reload("swapped");
            tracing::warn!(
                "reloaded {}: sha256 {} -> {}",
                s.path.display(),
                &previous[..16],
                &sha[..16]
            );
            (
                StatusCode::OK,
                json!({ "reloaded": true, "sha256": sha, "previous_sha256": previous }),
            )
        }
        Ok(Err(refused)) => {
            s.metrics.reload("refused");
            // The log gets the whole story, with the flags that fix it; the client the API's.
            tracing::warn!(
                "reload of {} refused: {:#}; the model with sha256 {} keeps serving",
                s.path.display(),
                refused.cause,
                &previous[..16]
            );
            let msg = format!(
                "reload refused: {}; the model with sha256 {} keeps serving",
                refused.api,
                &previous[..16]
            );
            (StatusCode::UNPROCESSABLE_ENTITY, json!({ "error": msg }))
        }
        Err(e) => {
            s.metrics.reload("refused");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({ "error": format!("the reload task failed: {e}; the old model keeps serving") }),
            )
        }
    }
}

/// The model file's identity as far as a change goes.
fn stamp(path: &std::path::Path) -> Option<(u64, SystemTime, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?, m.ino()))
}

/// Reloads when the model file changes (polled every second).
async fn watch(s: Shared) {
    let mut last = stamp(&s.path);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = stamp(&s.path);
        if now.is_some() && now != last {
            last = now;
            let (status, body) = reload_now(&s).await;
            eprintln!("model file changed: reload {status}: {body}");
        }
    }
}
