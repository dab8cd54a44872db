//! Dynamic batching: one worker thread gathers the queued requests' images into batches (up to
//! `max_batch` images, or `wait` after the first one arrives, when the last batch showed that
//! clients overlap) and runs each batch on the compute pool, so the work in flight never exceeds
//! the cores `--threads` gives. Images judged as the same object (`?object=`, or the recognised
//! one) share a batch.

use std::io::Cursor;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use base64::Engine;
use image::RgbImage;
use iuf_inspect::{Inspector, Outcome, StageMs, Timings};
use rayon::prelude::*;
use tokio::sync::oneshot;

use super::metrics::Metrics;
use super::model::Served;
use crate::heatmap::{self, MapScale};

/// One uploaded image.
pub struct Upload {
    /// The client's file name, or `body` for a raw request body.
    pub name: String,
    pub bytes: axum::body::Bytes,
    /// Width and height from its header ([`header_size`]), when it has a readable one.
    pub size: Option<(u32, u32)>,
}

impl Upload {
    /// An upload, its size read from its header (nothing is decoded).
    pub fn new(name: String, bytes: axum::body::Bytes) -> Self {
        let size = header_size(&bytes);
        Self { name, bytes, size }
    }

    /// Pixels it decodes to, as far as its header tells (0 without one: it fails to decode
    /// before any pixel is allocated).
    fn pixels(&self) -> u64 {
        self.size.map_or(0, |(w, h)| w as u64 * h as u64)
    }
}

/// Width and height of an encoded image from its header, nothing decoded.
pub fn header_size(bytes: &[u8]) -> Option<(u32, u32)> {
    image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .ok()?
        .into_dimensions()
        .ok()
}

/// Why a whole request failed.
#[derive(Debug)]
pub enum JobError {
    /// The request asked for something the model cannot do (400).
    BadRequest(String),
    /// The model failed, or the worker panicked (500).
    Internal(String),
}

/// A request's images waiting for a batch.
pub struct Job {
    pub images: Vec<Upload>,
    /// Encode each image's heatmap as a PNG data URL.
    pub heatmap: bool,
    /// Judge every image as this object.
    pub object: Option<String>,
    pub enqueued: Instant,
    pub reply: oneshot::Sender<Result<Vec<Outcome>, JobError>>,
}

/// Batching limits.
#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    pub max_batch: usize,
    /// Pixels decoded at once: a batch takes images while they fit in it together (an image
    /// over it alone is refused before it is queued).
    pub pixel_budget: u64,
    pub wait: Duration,
    /// Images the queue may hold; more are refused with 503.
    pub queue: usize,
}

/// The handlers' side of the queue.
pub struct Queue {
    tx: Sender<Job>,
    queued: Arc<AtomicUsize>,
    capacity: usize,
    metrics: Arc<Metrics>,
}

impl Queue {
    /// Queues `job`, or gives it back when the queue has no room for its images.
    pub fn submit(&self, job: Job) -> Result<(), Job> {
        let n = job.images.len();
        let admitted = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q + n <= self.capacity).then_some(q + n)
            })
            .is_ok();
        if !admitted {
            return Err(job);
        }
        self.metrics.queue.inc_by(n as i64);
        self.tx.send(job).map_err(|e| {
            self.queued.fetch_sub(n, Ordering::AcqRel);
            self.metrics.queue.dec_by(n as i64);
            e.0
        })
    }

    /// Images the queue holds at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Whether the queue is full.
    pub fn full(&self) -> bool {
        self.queued.load(Ordering::Acquire) >= self.capacity
    }
}

/// Starts the worker thread; it stops when every [`Queue`] is dropped and the queue is drained.
pub fn start(
    cfg: BatchConfig,
    model: Arc<ArcSwap<Served>>,
    metrics: Arc<Metrics>,
) -> (Queue, std::thread::JoinHandle<()>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let worker = Worker {
        cfg,
        rx,
        queued: queued.clone(),
        model,
        metrics: metrics.clone(),
    };
    let handle = std::thread::Builder::new()
        .name("iuf-batcher".into())
        .spawn(move || worker.run())
        .expect("spawning the batch worker thread");
    (
        Queue {
            tx,
            queued,
            capacity: cfg.queue,
            metrics,
        },
        handle,
    )
}

struct Worker {
    cfg: BatchConfig,
    rx: Receiver<Job>,
    queued: Arc<AtomicUsize>,
    model: Arc<ArcSwap<Served>>,
    metrics: Arc<Metrics>,
}

impl Worker {
    fn run(self) {
        // Waiting for more images pays only when clients overlap: a lone client would wait for
        // nobody. So the worker waits only after a batch that held several images.
        let mut concurrent = false;
        while let Ok(first) = self.rx.recv() {
            let mut jobs = vec![first];
            self.gather(
                &mut jobs,
                if concurrent {
                    self.cfg.wait
                } else {
                    Duration::ZERO
                },
            );
            let n: usize = jobs.iter().map(|j| j.images.len()).sum();
            concurrent = jobs.len() > 1;
            self.queued.fetch_sub(n, Ordering::AcqRel);
            self.metrics.queue.dec_by(n as i64);
            // A client that gave up (timeout, disconnect) is not worked for.
            jobs.retain(|j| !j.reply.is_closed());
            if jobs.is_empty() {
                continue;
            }
            let model = self.model.load_full();
            self.run_batch(&model, jobs);
        }
    }

    /// Adds queued jobs until the batch holds `max_batch` images or `wait` has passed since the
    /// first one arrived: what is already queued is taken at once, then the worker waits for more.
    fn gather(&self, jobs: &mut Vec<Job>, wait: Duration) {
        let deadline = jobs[0].enqueued + wait;
        let mut n: usize = jobs.iter().map(|j| j.images.len()).sum();
        while n < self.cfg.max_batch {
            let next = match self.rx.try_recv() {
                Ok(j) => Some(j),
                Err(TryRecvError::Disconnected) => None,
                Err(TryRecvError::Empty) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        None
                    } else {
                        // A timeout or a closed queue both end the gathering.
                        self.rx.recv_timeout(left).ok()
                    }
                }
            };
            let Some(j) = next else { break };
            n += j.images.len();
            jobs.push(j);
        }
    }

    fn run_batch(&self, model: &Served, jobs: Vec<Job>) {
        let started = Instant::now();
        let replies =
            std::panic::catch_unwind(AssertUnwindSafe(|| self.score(model, &jobs, started)));
        let replies = replies.unwrap_or_else(|panic| {
            self.metrics.panics.inc();
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            tracing::error!("the model worker panicked on a batch: {what}");
            jobs.iter()
                .map(|_| {
                    Err(JobError::Internal(format!(
                        "the model failed on this batch ({what}); the service goes on"
                    )))
                })
                .collect()
        });
        for (job, reply) in jobs.into_iter().zip(replies) {
            // The client may have gone meanwhile; nothing to do then.
            let _ = job.reply.send(reply);
        }
    }

    /// Runs the model on every job's images in chunks of at most `max_batch` images within the
    /// pixel budget, each chunk decoded only when it runs, and builds each job's outcomes.
    fn score(
        &self,
        model: &Served,
        jobs: &[Job],
        started: Instant,
    ) -> Vec<Result<Vec<Outcome>, JobError>> {
        let inspector = match Inspector::new(&model.learner, &model.backbone.backbone) {
            Ok(i) => i,
            Err(e) => return jobs.iter().map(|_| Err(internal(&e))).collect(),
        };
        let flat: Vec<(usize, &Upload)> = jobs
            .iter()
            .enumerate()
            .flat_map(|(j, job)| job.images.iter().map(move |u| (j, u)))
            .collect();
        let mut results: Vec<Result<Vec<Outcome>, JobError>> = jobs
            .iter()
            .map(|j| Ok(Vec::with_capacity(j.images.len())))
            .collect();
        for (j, job) in jobs.iter().enumerate() {
            if let Some(o) = &job.object {
                if inspector.check_object(o).is_err() {
                    results[j] = Err(JobError::BadRequest(format!(
                        "object={o}: not an object the model knows ({}); leave `object` out to \
                         judge each image as the object it shows",
                        model.learner.learned_classes().join(", ")
                    )));
                }
            }
        }
        // Each image's outcome, by its index in `flat`, once known.
        let mut slots: Vec<Option<Outcome>> = (0..flat.len()).map(|_| None).collect();
        let mut todo: Vec<usize> = (0..flat.len())
            .filter(|&i| results[flat[i].0].is_ok())
            .collect();
        // Images of one object override run together. A chunk holds at most max_batch images
        // whose pixels (from their headers) fit in the budget together, and is decoded only when
        // it runs: no more than one chunk's images are ever decoded at once.
        todo.sort_by(|&x, &y| jobs[flat[x].0].object.cmp(&jobs[flat[y].0].object));
        let mut i0 = 0;
        while i0 < todo.len() {
            let key = &jobs[flat[todo[i0]].0].object;
            let mut i1 = i0;
            let mut pixels = 0u64;
            while i1 < todo.len()
                && i1 - i0 < self.cfg.max_batch
                && &jobs[flat[todo[i1]].0].object == key
            {
                let more = flat[todo[i1]].1.pixels();
                if i1 > i0 && pixels + more > self.cfg.pixel_budget {
                    break;
                }
                pixels += more;
                i1 += 1;
            }
            let chunk = &todo[i0..i1];
            i0 = i1;
            // Decode in parallel on the compute pool, each image within the room its header
            // reserved.
            let t = Instant::now();
            let decoded: Vec<Result<RgbImage, String>> =
                chunk.par_iter().map(|&i| decode(flat[i].1)).collect();
            let decode_each = t.elapsed().as_secs_f64() / chunk.len().max(1) as f64;
            let mut ran: Vec<(usize, RgbImage)> = Vec::with_capacity(chunk.len());
            for (&i, d) in chunk.iter().zip(decoded) {
                match d {
                    Ok(img) => ran.push((i, img)),
                    Err(e) => {
                        self.metrics.image("undecodable");
                        slots[i] = Some(Outcome::failed(Path::new(&flat[i].1.name), e));
                    }
                }
            }
            if ran.is_empty() {
                continue;
            }
            let object = jobs[flat[ran[0].0].0].object.as_deref();
            let images: Vec<&RgbImage> = ran.iter().map(|(_, img)| img).collect();
            let mut timings = Timings::default();
            match inspector.inspect(&images, object, model.quantile, &mut timings) {
                Ok(scored) => {
                    self.metrics.batch(ran.len());
                    let per = |d: Duration| d.as_secs_f64() / ran.len() as f64;
                    for ((i, img), s) in ran.iter().zip(scored) {
                        let (j, u) = flat[*i];
                        let job = &jobs[j];
                        let mut o = Outcome::scored(Path::new(&u.name), &s, model.quantile);
                        o.model_sha256 = Some(model.sha256.clone());
                        let t = Instant::now();
                        if job.heatmap {
                            o.heatmap = Some(heatmap_url(img, &s));
                        }
                        let stage = StageMs {
                            queue: 1e3 * started.duration_since(job.enqueued).as_secs_f64(),
                            decode: 1e3 * (decode_each + per(timings.decode)),
                            backbone: 1e3 * per(timings.backbone),
                            model: 1e3 * per(timings.model),
                            heatmap: 1e3 * t.elapsed().as_secs_f64(),
                            batch: ran.len(),
                        };
                        for (name, ms) in [
                            ("queue", stage.queue),
                            ("decode", stage.decode),
                            ("backbone", stage.backbone),
                            ("model", stage.model),
                            ("heatmap", stage.heatmap),
                        ] {
                            self.metrics.stage(name, ms / 1e3);
                        }
                        o.time_ms = Some(stage);
                        self.metrics.image("scored");
                        self.metrics.drift(
                            &model.learner,
                            &model.sha256,
                            &s.verdict.object,
                            s.verdict.score,
                            s.verdict.threshold,
                        );
                        slots[*i] = Some(o);
                    }
                }
                Err(e) => {
                    for (i, _) in &ran {
                        self.metrics.image("failed");
                        results[flat[*i].0] = Err(internal(&e));
                    }
                }
            }
        }
        for (i, slot) in slots.into_iter().enumerate() {
            if let (Some(o), Ok(list)) = (slot, &mut results[flat[i].0]) {
                list.push(o);
            }
        }
        results
    }
}

fn internal(e: &anyhow::Error) -> JobError {
    JobError::Internal(format!("{e:#}"))
}

/// Decodes an uploaded image, or says what was wrong with it.
pub(super) fn decode(u: &Upload) -> Result<RgbImage, String> {
    if u.bytes.is_empty() {
        return Err(format!(
            "{}: empty file; expected a PNG, JPEG, BMP or TIFF image",
            u.name
        ));
    }
    let reader = image::ImageReader::new(Cursor::new(&u.bytes[..]))
        .with_guessed_format()
        .map_err(|e| format!("{}: {e}", u.name))?;
    let Some(format) = reader.format() else {
        return Err(format!(
            "{}: not an image this service reads ({} bytes starting {}); expected PNG, JPEG, BMP or TIFF",
            u.name,
            u.bytes.len(),
            hex_prefix(&u.bytes)
        ));
    };
    if !matches!(
        format,
        image::ImageFormat::Png
            | image::ImageFormat::Jpeg
            | image::ImageFormat::Bmp
            | image::ImageFormat::Tiff
    ) {
        return Err(format!(
            "{}: {format:?} images are not read here; send PNG, JPEG, BMP or TIFF",
            u.name
        ));
    }
    // The same bytes as `header_size` read: the size the budget counted.
    reader
        .decode()
        .map(|img| img.into_rgb8())
        .map_err(|e| match e {
            image::ImageError::Limits(l)
                if l.kind() == image::error::LimitErrorKind::InsufficientMemory =>
            {
                use image::ImageDecoder as _;
                let size = image::ImageReader::with_format(Cursor::new(&u.bytes[..]), format)
                    .into_decoder()
                    .ok()
                    .map(|d| (d.dimensions(), d.total_bytes()));
                format!("{}: {}", u.name, iuf_data::image::too_large(size))
            }
            e => format!("{}: damaged or truncated {format:?} image: {e}", u.name),
        })
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The image's heatmap as a `data:image/png;base64,` URL (drawn as `iuf predict` draws it).
fn heatmap_url(img: &RgbImage, s: &iuf_inspect::Inspection) -> String {
    let (ow, oh) = heatmap::output_size(img.width(), img.height(), s.map_w.max(s.map_h));
    let shown = if (ow, oh) == img.dimensions() {
        img.clone()
    } else {
        iuf_data::image::resize_bilinear_rgb(img, ow, oh)
    };
    let scale = s
        .verdict
        .threshold
        .map_or(MapScale::ImageMax, MapScale::Threshold);
    let heat = heatmap::overlay(&shown, &s.map, s.map_w, s.map_h, scale, None);
    let mut png = Vec::new();
    heat.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
        .expect("encoding a PNG in memory");
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    )
}
