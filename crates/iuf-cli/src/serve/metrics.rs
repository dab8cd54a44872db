//! The service's Prometheus metrics (`GET /metrics`, text format).

use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::Mutex;

use iuf_incremental::Learner;
use iuf_inspect::drift::{DriftConfig, DriftEvent, DriftWatch};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// What every drift event is handed to (the sinks' hook).
pub type DriftHook = Box<dyn Fn(&DriftEvent) + Send + Sync>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Every metric the service keeps.
pub struct Metrics {
    registry: Registry,
    /// Requests by route and HTTP status.
    requests: Family<Labels, Counter>,
    /// Request latency by route, in seconds.
    latency: Family<Labels, Histogram>,
    /// Images by outcome: `scored`, `undecodable`, `failed`.
    images: Family<Labels, Counter>,
    /// Seconds per image by stage (queue, decode, backbone, model, heatmap).
    stages: Family<Labels, Histogram>,
    /// Images per batch the model ran.
    batch: Histogram,
    /// Images waiting for a batch.
    pub queue: Gauge<i64, AtomicI64>,
    /// The served model: 1, labelled with its file's name (never its folder) and sha256.
    model: Family<Labels, Gauge<i64, AtomicI64>>,
    /// Reloads by outcome (`swapped`, `unchanged`, `refused`).
    reloads: Family<Labels, Counter>,
    /// Panics caught in the model's worker (each answered with 500; the service goes on).
    pub panics: Counter,
    /// The sinks' counters, by sink (`mqtt`, `webhook`).
    sinks: [Family<Labels, Counter>; 3],
    sink_queue: Family<Labels, Gauge<i64, AtomicI64>>,
    /// The drift watch of the served model (by its sha256; a new model starts a new watch).
    drift: Mutex<Option<(String, DriftWatch)>>,
    /// Per object, quantiles 0.5/0.9/0.99 of the window's scores, its share above the
    /// threshold, and whether it has drifted (1) or not (0).
    drift_scores: Family<Labels, Gauge<f64, AtomicU64>>,
    drift_rate: Family<Labels, Gauge<f64, AtomicU64>>,
    drift_state: Family<Labels, Gauge<i64, AtomicI64>>,
    /// Drift events by object and kind (`drift`, `recovered`).
    drift_events: Family<Labels, Counter>,
    /// Called with every drift event (the sinks' hook).
    drift_hook: std::sync::OnceLock<DriftHook>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("iuf");
        let requests = Family::<Labels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        let latency = Family::<Labels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.001, 2.0, 14))) as fn() -> Histogram,
        );
        registry.register(
            "http_request_duration_seconds",
            "Request latency by route",
            latency.clone(),
        );
        let images = Family::<Labels, Counter>::default();
        registry.register("images", "Images received, by outcome", images.clone());
        let stages = Family::<Labels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.0005, 2.0, 14))) as fn() -> Histogram,
        );
        registry.register(
            "stage_duration_seconds",
            "Time per image by stage (a batch's shared stages divided by its images)",
            stages.clone(),
        );
        let batch = Histogram::new([1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0]);
        registry.register("batch_images", "Images per batch run", batch.clone());
        let queue = Gauge::<i64, AtomicI64>::default();
        registry.register("queue_images", "Images waiting for a batch", queue.clone());
        let model = Family::<Labels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "model_info",
            "The model being served (1), by file and sha256",
            model.clone(),
        );
        let reloads = Family::<Labels, Counter>::default();
        registry.register("reloads", "Model reloads by outcome", reloads.clone());
        let panics = Counter::default();
        registry.register(
            "worker_panics",
            "Panics caught while running the model",
            panics.clone(),
        );
        let sinks = [
            ("sink_delivered", "Events the sink's destination acknowledged, by sink"),
            (
                "sink_dropped",
                "Events a sink dropped (queue full: the oldest; refused for good; undelivered at exit), by sink",
            ),
            ("sink_retries", "Failed delivery attempts, retried, by sink"),
        ]
        .map(|(name, help)| {
            let f = Family::<Labels, Counter>::default();
            registry.register(name, help, f.clone());
            f
        });
        let sink_queue = Family::<Labels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "sink_queue_events",
            "Events waiting for a sink's destination, by sink",
            sink_queue.clone(),
        );
        let drift_scores = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "drift_score",
            "Per object, quantiles of the image scores in the drift watch's window",
            drift_scores.clone(),
        );
        let drift_rate = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "drift_rate_above_threshold",
            "Per object, the share of the window's images scored above the threshold",
            drift_rate.clone(),
        );
        let drift_state = Family::<Labels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "drift_state",
            "Per object, 1 while its scores have moved from its calibration (the README's rule)",
            drift_state.clone(),
        );
        let drift_events = Family::<Labels, Counter>::default();
        registry.register(
            "drift_events",
            "Drift warnings and recoveries, by object",
            drift_events.clone(),
        );
        Self {
            sinks,
            sink_queue,
            drift: Mutex::new(None),
            drift_scores,
            drift_rate,
            drift_state,
            drift_events,
            drift_hook: std::sync::OnceLock::new(),
            registry,
            requests,
            latency,
            images,
            stages,
            batch,
            queue,
            model,
            reloads,
            panics,
        }
    }

    pub fn request(&self, route: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&labels(&[
                ("route", route),
                ("status", &status.to_string()),
            ]))
            .inc();
        self.latency
            .get_or_create(&labels(&[("route", route)]))
            .observe(seconds);
    }

    pub fn image(&self, outcome: &str) {
        self.images
            .get_or_create(&labels(&[("outcome", outcome)]))
            .inc();
    }

    pub fn stage(&self, stage: &str, seconds: f64) {
        self.stages
            .get_or_create(&labels(&[("stage", stage)]))
            .observe(seconds);
    }

    pub fn batch(&self, images: usize) {
        self.batch.observe(images as f64);
    }

    pub fn reload(&self, outcome: &str) {
        self.reloads
            .get_or_create(&labels(&[("outcome", outcome)]))
            .inc();
    }

    /// Marks `sha256` (of the file named `file`) as the model served from now on.
    pub fn serving(&self, file: &str, sha256: &str) {
        self.model.clear();
        self.model
            .get_or_create(&labels(&[("path", file), ("sha256", sha256)]))
            .set(1);
    }

    /// The counters of sink `name`, shared with it.
    pub fn sink_stats(&self, name: &str) -> crate::sink::queue::Stats {
        let l = labels(&[("sink", name)]);
        let [delivered, dropped, retries] = &self.sinks;
        crate::sink::queue::Stats {
            delivered: delivered.get_or_create(&l).clone(),
            dropped: dropped.get_or_create(&l).clone(),
            retries: retries.get_or_create(&l).clone(),
            queued: self.sink_queue.get_or_create(&l).clone(),
        }
    }

    /// Feeds the drift watch one image of `object` scored `score` against `threshold` by the
    /// model `learner` (sha256 `sha`); logs a warning and calls the hook when the object's state
    /// changes.
    pub fn drift(
        &self,
        learner: &Learner,
        sha: &str,
        object: &str,
        score: f32,
        threshold: Option<f32>,
    ) {
        let mut guard = self.drift.lock().unwrap_or_else(|p| p.into_inner());
        if guard.as_ref().is_none_or(|(s, _)| s != sha) {
            // A new model: a new calibration, a new window.
            self.drift_scores.clear();
            self.drift_rate.clear();
            self.drift_state.clear();
            *guard = Some((
                sha.to_string(),
                DriftWatch::new(learner, DriftConfig::default()),
            ));
        }
        let (_, watch) = guard.as_mut().expect("set above");
        let event = watch.observe(object, score, threshold);
        if let Some(st) = watch.stats().into_iter().find(|s| s.object == object) {
            for (q, v) in [("0.5", st.p50), ("0.9", st.p90), ("0.99", st.p99)] {
                self.drift_scores
                    .get_or_create(&labels(&[("object", object), ("quantile", q)]))
                    .set(v as f64);
            }
            self.drift_rate
                .get_or_create(&labels(&[("object", object)]))
                .set(st.rate_above);
            self.drift_state
                .get_or_create(&labels(&[("object", object)]))
                .set(i64::from(st.drifted));
        }
        drop(guard);
        if let Some(e) = event {
            self.drift_events
                .get_or_create(&labels(&[("object", object), ("kind", e.kind)]))
                .inc();
            tracing::warn!("{}", e.message());
            if let Some(hook) = self.drift_hook.get() {
                hook(&e);
            }
        }
    }

    /// Sets the function every drift event is handed to (once; the sinks send it on).
    #[allow(dead_code)] // wired to the sinks at merge
    pub fn on_drift(&self, hook: DriftHook) -> bool {
        self.drift_hook.set(hook).is_ok()
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
