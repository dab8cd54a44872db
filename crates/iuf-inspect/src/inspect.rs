//! What `iuf predict` and `iuf serve` share: scoring decoded images with a model (backbone, the
//! model's anomaly maps, the recognised object, the object's threshold and the verdict), and the
//! per-image result both print as JSON, so one parser reads either.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use image::RgbImage;
use iuf_backbone::Backbone;
use iuf_incremental::{Learner, Verdict};
use rayon::prelude::*;
use serde::Serialize;

/// The result for one image: a line of `iuf predict --json`, an element of `iuf serve`'s answer.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcome {
    /// The file (predict) or the uploaded file's name (serve).
    pub path: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object_probability: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantile: Option<f64>,
    /// `defect`, `ok`, or absent when the object has no calibrated threshold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<&'static str>,
    /// Where the heatmap is: a file (predict), or a `data:image/png;base64,` URL (serve, when
    /// asked for).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heatmap: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mask: Option<PathBuf>,
    /// sha256 of the model file that scored the image (serve).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_sha256: Option<String>,
    /// Milliseconds per stage for this image (serve): a batch's shared stages are divided by its
    /// images.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_ms: Option<StageMs>,
}

impl Outcome {
    pub fn failed(path: &Path, error: String) -> Self {
        Self {
            path: path.to_path_buf(),
            error: Some(error),
            ..Self::default()
        }
    }

    /// The outcome of a scored image (no heatmap, mask or timing yet).
    pub fn scored(path: &Path, s: &Inspection, quantile: f64) -> Self {
        Self {
            path: path.to_path_buf(),
            score: Some(s.verdict.score),
            object: Some(s.verdict.object.clone()),
            object_probability: Some(s.verdict.probability),
            threshold: s.verdict.threshold,
            quantile: s.verdict.threshold.map(|_| quantile),
            decision: s.verdict.decision.map(|d| d.as_str()),
            ..Self::default()
        }
    }
}

/// Per-image time by stage, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct StageMs {
    /// Waiting in the queue for a batch (serve).
    pub queue: f64,
    pub decode: f64,
    pub backbone: f64,
    pub model: f64,
    pub heatmap: f64,
    /// Images in the batch this image ran in.
    pub batch: usize,
}

/// Wall time spent in each stage, summed over every scored image.
#[derive(Debug, Default, Clone, Copy)]
pub struct Timings {
    /// Images scored (unreadable files excluded).
    pub images: usize,
    /// Reading and decoding the files, resizing, normalising.
    pub decode: Duration,
    /// The frozen backbone and neck.
    pub backbone: Duration,
    /// The model: anomaly maps, image scores, the recognised object.
    pub model: Duration,
    /// Drawing the heatmaps (and writing or encoding them).
    pub heatmaps: Duration,
}

/// One scored image: the calibrator's verdict and the fused map.
#[derive(Debug, Clone)]
pub struct Inspection {
    pub verdict: Verdict,
    /// The anomaly map, `map_h x map_w`, row-major.
    pub map: Vec<f32>,
    pub map_w: usize,
    pub map_h: usize,
}

/// Scores decoded images with a loaded model and its backbone.
pub struct Inspector<'a> {
    learner: &'a Learner,
    backbone: &'a Backbone,
    /// The objects the model has learned, with their class ids.
    learned: Vec<(String, u32)>,
}

impl<'a> Inspector<'a> {
    pub fn new(learner: &'a Learner, backbone: &'a Backbone) -> Result<Self> {
        let learned: Vec<(String, u32)> = learner
            .learned_classes()
            .into_iter()
            .filter_map(|c| learner.class_id(&c).map(|i| (c, i)))
            .collect();
        if learned.is_empty() {
            bail!("the model has learned no object yet; train it with `iuf train` first");
        }
        Ok(Self {
            learner,
            backbone,
            learned,
        })
    }

    /// Fails unless `object` is one the model knows.
    pub fn check_object(&self, object: &str) -> Result<()> {
        if self.learned.iter().any(|(c, _)| c == object) {
            return Ok(());
        }
        bail!(
            "--object `{object}` is not an object the model knows ({})",
            self.learned
                .iter()
                .map(|(c, _)| c.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    /// The backbone features of `images` in every view the model reads (what inspection scores,
    /// and what good images added to an object are learned from): preprocessing is added to
    /// `timings.decode`, the backbone to `timings.backbone`.
    pub fn features(
        &self,
        images: &[&RgbImage],
        timings: &mut Timings,
    ) -> Result<iuf_incremental::ImageFeatures> {
        let t = Instant::now();
        let size = self.learner.image_size();
        let tiling = self.learner.tiling();
        // Each image's whole view, and its tiles when the model has a tiled view.
        let prepared: Vec<_> = images
            .par_iter()
            .map(|img| {
                let tiles = tiling.map(|t| t.cut(img, size)).unwrap_or_default();
                (iuf_data::image::preprocess(img, size), tiles)
            })
            .collect();
        let (tensors, tiles): (Vec<_>, Vec<_>) = prepared.into_iter().unzip();
        let batch = iuf_data::images_to_tensor(&tensors, self.learner.device())?;
        let tiles: Vec<_> = tiles.into_iter().flatten().collect();
        let tile_batch = match tiles.is_empty() {
            true => None,
            false => Some(iuf_data::images_to_tensor(&tiles, self.learner.device())?),
        };
        timings.decode += t.elapsed();
        let t = Instant::now();
        let (features, memory) =
            iuf_incremental::feature_store::compute(self.backbone, &batch, self.learner.features())
                .context("backbone features")?;
        let tiles = match (tile_batch, tiling) {
            (Some(b), Some(tiling)) => {
                let (_, m) = self
                    .backbone
                    .extract(&b)
                    .context("backbone features of the tiles")?;
                let (_, c, h, w) = m.dims4()?;
                Some(m.reshape((images.len(), tiling.count(), c, h, w))?)
            }
            _ => None,
        };
        if !features.device().is_cpu() {
            // Wait for an asynchronous device, so its work is timed in this stage.
            features.device().synchronize()?;
        }
        timings.backbone += t.elapsed();
        Ok(iuf_incremental::ImageFeatures {
            align: features,
            memory,
            tiles,
        })
    }

    /// Scores `images` as one batch: preprocessing is added to `timings.decode`, the backbone and
    /// the model to theirs. `object` judges every image as that object (checked by the caller).
    pub fn inspect(
        &self,
        images: &[&RgbImage],
        object: Option<&str>,
        quantile: f64,
        timings: &mut Timings,
    ) -> Result<Vec<Inspection>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let x = self.features(images, timings)?;
        let t = Instant::now();
        let pred = self
            .learner
            .predict_features(&x, object, &iuf_incremental::NoProgress)
            .context("running the model")?;
        let (n, mh, mw) = pred.maps.dims3()?;
        let maps: Vec<f32> = pred.maps.flatten_all()?.to_vec1()?;
        let out: Vec<Inspection> = self
            .learner
            .verdicts(&pred, quantile)
            .into_iter()
            .enumerate()
            .map(|(i, verdict)| Inspection {
                verdict,
                map: maps[i * mh * mw..(i + 1) * mh * mw].to_vec(),
                map_w: mw,
                map_h: mh,
            })
            .collect();
        timings.model += t.elapsed();
        timings.images += n;
        Ok(out)
    }
}
