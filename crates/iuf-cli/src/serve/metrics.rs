//! The service's Prometheus metrics (`GET /metrics`, text format).

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

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
        Self {
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

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
