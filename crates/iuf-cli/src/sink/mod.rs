//! Sinks: where `watch` and `serve` send each result besides their own output, for a line's
//! controller: an MQTT broker ([`mqtt`]) and an HTTP webhook ([`webhook`]). Each sink has its own
//! thread and a bounded [`queue::Queue`]: events wait there, in order, while the destination is
//! away, and are delivered when it returns; when the queue is full the oldest are dropped,
//! counted ([`queue::Stats`], serve's `/metrics`) and logged.
//!
//! An event is any JSON object with a `"kind"` (`"verdict"` for an image's result; other
//! producers, such as a drift warning, add their own kinds) and, when it concerns one object,
//! `"object"`. The message schema is in README.md ("Send results to the line").

pub mod mqtt;
pub mod queue;
pub mod webhook;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;
use clap::Args;
use iuf_inspect::Outcome;
use serde_json::{json, Value};

use self::queue::{Queue, Stats};

/// The sink flags of `watch` and `serve`.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Sinks (results sent to the line)")]
pub struct SinkArgs {
    /// Publish every result to this MQTT broker, `mqtt://[USER[:PASSWORD]@]HOST[:PORT]` (port
    /// 1883 by default; no TLS), with QoS 1 (at least once: a message is sent again until the
    /// broker acknowledges it). Topic: `<--mqtt-topic>/<object>/verdict`.
    #[arg(long, value_name = "URL")]
    pub mqtt: Option<String>,
    /// Topic prefix: verdicts go to `PREFIX/<object>/verdict` (`PREFIX/verdict` for an image that
    /// could not be inspected), other events to `PREFIX/<object>/<kind>` or `PREFIX/<kind>`.
    #[arg(long, value_name = "PREFIX", default_value = "iuf")]
    pub mqtt_topic: String,
    /// Publish verdicts as retained messages: a client that subscribes later gets each object's
    /// last verdict at once.
    #[arg(long)]
    pub mqtt_retain: bool,
    /// MQTT client id (default: iuf-<command>-<process id>).
    #[arg(long, value_name = "ID")]
    pub mqtt_client_id: Option<String>,
    /// POST every result as JSON to this URL (http or https). A failed delivery (no connection,
    /// a timeout, a 5xx, 408, 429 or any status but 400, 413, 415 and 422) is retried with
    /// exponential backoff (0.25 s doubling to 10 s) until it succeeds; results keep their order.
    #[arg(long, value_name = "URL")]
    pub webhook: Option<String>,
    /// Sent as `Authorization: Bearer TOKEN` with every webhook request (also read from
    /// $IUF_WEBHOOK_TOKEN).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "IUF_WEBHOOK_TOKEN",
        hide_env_values = true
    )]
    pub webhook_token: Option<String>,
    /// Events each sink holds while its destination is away; beyond it the oldest are dropped
    /// (counted in serve's /metrics as iuf_sink_dropped_total, and logged).
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub sink_queue: usize,
    /// Seconds given at exit to deliver what the sinks still hold (serve: after its own drain,
    /// --drain-s); what is left then is counted as dropped and logged.
    #[arg(long, value_name = "S", default_value_t = 5)]
    pub sink_drain_s: u64,
}

/// One event: its kind, the object it concerns, and its JSON (serialised once for every sink).
#[derive(Debug)]
pub struct Event {
    pub kind: String,
    pub object: Option<String>,
    pub text: String,
    /// The result's number in `watch`'s journal: told to the [`queue::OnDelivered`] hook once
    /// delivered.
    pub number: Option<u64>,
}

impl Event {
    /// An event of `kind` made of `fields` (a JSON object), with `"kind"` added first.
    pub fn new(kind: &str, fields: Value) -> Self {
        let mut body = serde_json::Map::new();
        body.insert("kind".into(), Value::String(kind.into()));
        if let Value::Object(m) = fields {
            for (k, v) in m {
                if k != "kind" {
                    body.insert(k, v);
                }
            }
        }
        let body = Value::Object(body);
        let object = body["object"].as_str().map(str::to_string);
        let text = body.to_string();
        Self {
            kind: kind.into(),
            object,
            text,
            number: None,
        }
    }

    /// An image's result: `predict --json`'s fields (an inline heatmap left out: a sink carries
    /// the verdict, not the picture), plus `id`, `source` and `unix_ms`.
    pub fn verdict(source: &str, id: &str, outcome: &Outcome) -> Self {
        let fields = serde_json::to_value(outcome).unwrap_or_else(|_| json!({}));
        Self::verdict_fields(source, id, fields)
    }

    /// An image's result from its JSON fields (a line of `results.jsonl`), as [`Event::verdict`].
    pub fn verdict_fields(source: &str, id: &str, mut fields: Value) -> Self {
        if let Some(h) = fields.get("heatmap").and_then(Value::as_str) {
            if h.starts_with("data:") {
                fields.as_object_mut().map(|m| m.remove("heatmap"));
            }
        }
        let mut head = json!({ "id": id, "source": source, "unix_ms": unix_ms() });
        if let (Value::Object(h), Value::Object(f)) = (&mut head, fields) {
            h.extend(f);
        }
        Self::new("verdict", head)
    }
}

/// Milliseconds since 1970.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A destination's delivery loop, run on its own thread: it delivers the queue's front, in
/// order, until the queue is [finished](Queue::finished).
pub trait Deliver: Send + 'static {
    fn run(self: Box<Self>, queue: Arc<Queue>);
}

/// The sinks of one program: every event goes to each.
pub struct Sinks {
    queues: Vec<Arc<Queue>>,
    /// The sinks' threads, taken by [`Sinks::finish`].
    threads: std::sync::Mutex<Vec<JoinHandle<()>>>,
    drain: Duration,
    /// Numbers events that have no id of their own.
    counter: AtomicU64,
}

impl SinkArgs {
    /// Checks the flags and starts the sinks asked for (none: nothing is started). `command`
    /// names the default MQTT client id; `stats` gives each sink's counters (serve's metrics).
    pub fn start(&self, command: &str, stats: impl Fn(&'static str) -> Stats) -> Result<Sinks> {
        if self.sink_queue == 0 {
            anyhow::bail!("--sink-queue must be at least 1; found 0");
        }
        let mut sinks: Vec<(&'static str, Box<dyn Deliver>)> = Vec::new();
        if let Some(url) = &self.mqtt {
            let client_id = self
                .mqtt_client_id
                .clone()
                .unwrap_or_else(|| format!("iuf-{command}-{}", std::process::id()));
            let m = mqtt::Mqtt::new(url, &self.mqtt_topic, self.mqtt_retain, &client_id)?;
            sinks.push(("mqtt", Box::new(m)));
        }
        if let Some(url) = &self.webhook {
            let w = webhook::Webhook::new(url, self.webhook_token.as_deref())?;
            sinks.push(("webhook", Box::new(w)));
        }
        let (mut queues, mut threads) = (Vec::new(), Vec::new());
        for (name, sink) in sinks {
            let queue = Arc::new(Queue::new(name, self.sink_queue, stats(name)));
            let q = queue.clone();
            let handle = std::thread::Builder::new()
                .name(format!("iuf-sink-{name}"))
                .spawn(move || sink.run(q))
                .map_err(|e| anyhow::anyhow!("starting the {name} sink's thread: {e}"))?;
            queues.push(queue);
            threads.push(handle);
        }
        Ok(Sinks {
            queues,
            threads: std::sync::Mutex::new(threads),
            drain: Duration::from_secs(self.sink_drain_s),
            counter: AtomicU64::new(0),
        })
    }
}

impl Sinks {
    /// The sinks' names (`mqtt`, `webhook`), in the order they run.
    pub fn names(&self) -> Vec<&'static str> {
        self.queues.iter().map(|q| q.name()).collect()
    }

    /// Sets, for each sink, what is told of each numbered event it delivered.
    pub fn on_delivered(&self, hook: impl Fn(&'static str) -> queue::OnDelivered) {
        for q in &self.queues {
            q.on_delivered(hook(q.name()));
        }
    }

    /// Queues `event` for the sink named `name` only.
    pub fn send_to(&self, name: &str, event: Event) {
        let event = Arc::new(event);
        for q in self.queues.iter().filter(|q| q.name() == name) {
            q.push(event.clone());
        }
    }

    /// Queues `event` for every sink.
    pub fn send(&self, event: Event) {
        if self.queues.is_empty() {
            return;
        }
        let event = Arc::new(event);
        for q in &self.queues {
            q.push(event.clone());
        }
    }

    /// Queues an image's result; `id` names it (a process-wide counter when `None`).
    pub fn verdict(&self, source: &str, id: Option<String>, outcome: &Outcome) {
        if self.queues.is_empty() {
            return;
        }
        let id = id.unwrap_or_else(|| {
            format!(
                "{source}:{}:{}",
                std::process::id(),
                self.counter.fetch_add(1, Ordering::Relaxed)
            )
        });
        self.send(Event::verdict(source, &id, outcome));
    }

    /// Delivers what is queued within the drain time, then stops every sink; what could not be
    /// delivered is counted as dropped and logged.
    pub fn finish(&self) {
        let deadline = Instant::now() + self.drain;
        for q in &self.queues {
            q.close(deadline);
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for (q, handle) in self.queues.iter().zip(threads) {
            // A sink in the middle of an attempt (a webhook request has 10 s) is not waited for
            // past the deadline: the process ends and what it held is counted below.
            while !handle.is_finished() && Instant::now() < deadline + Duration::from_secs(1) {
                std::thread::sleep(Duration::from_millis(20));
            }
            if handle.is_finished() {
                let _ = handle.join();
            }
            let left = q.abandon();
            if left > 0 {
                tracing::error!(
                    "{} sink: {left} event(s) not delivered within --sink-drain-s {} s; dropped \
                     ({} dropped in all)",
                    q.name(),
                    self.drain.as_secs(),
                    q.stats.dropped.get()
                );
                eprintln!(
                    "warning: {} sink: {left} event(s) not delivered before exit",
                    q.name()
                );
            }
        }
    }
}

/// Doubles `d` up to `max`.
pub fn backoff(d: Duration, max: Duration) -> Duration {
    (d * 2).min(max)
}
