//! The protocol runner: trains a method step by step, evaluates every object seen so far after each
//! step, fills the continual results matrices (ACC / FM, section 6) and writes `results.json` and
//! `report.md`. A run directory can be resumed: each finished step leaves its model file and its
//! evaluation (`step-<s>.safetensors`, `step-<s>.json`), written atomically, and a restarted run
//! continues after the last step that has both.
//!
//! An object whose defect masks are all empty has no pixel metrics (see [`crate::eval`]): its
//! cells of the pixel matrices are `null` from the step that learned it (the protocol's step, not
//! the first value), and the pixel ACC and FM average over the other objects; the report marks
//! the cells "n/a" and says so.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Tensor;
use iuf_data::protocol::Protocol;
use iuf_data::{DatasetRoot, Sample};
use iuf_metrics::ResultsMatrix;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::baseline::ClassMean;
use crate::config::{Strategy, TrainConfig};
use crate::error::{io_err, Error, Result};
use crate::eval::{evaluate, evaluate_with, ClassMetrics, EvalSet};
use crate::feature_store::FeatureStore;
use crate::learner::{Learner, StepData, StepRecord};
use crate::progress::Progress;

/// What to run.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// The method.
    pub method: Strategy,
    /// The protocol (steps of new objects).
    pub protocol: Protocol,
    /// The training configuration (before the method's adjustments).
    pub config: TrainConfig,
    /// The run directory (created; resumed if it holds a finished step of the same run).
    pub dir: PathBuf,
}

/// Everything measured about one finished step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepResult {
    /// What training did.
    pub record: StepRecord,
    /// Metrics of every object seen so far.
    pub metrics: Vec<ClassMetrics>,
    /// Seconds spent evaluating.
    pub eval_seconds: f64,
    /// Seconds spent computing or reading features for this step's training and hold-out images.
    pub feature_seconds: f64,
    /// Size of the model file after this step, bytes.
    pub model_bytes: u64,
    /// Peak resident memory of the process so far, bytes (Linux; absent elsewhere).
    pub peak_rss_bytes: Option<u64>,
}

/// `{"image": .., "pixel": ..}` (image and pixel AUROC).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ImagePixel {
    /// Image-level AUROC based value.
    pub image: Option<f64>,
    /// Pixel-level AUROC based value.
    pub pixel: Option<f64>,
}

/// The protocol as it ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProtocolInfo {
    /// Protocol name or spec.
    pub name: String,
    /// New classes of each step.
    pub steps: Vec<Vec<String>>,
}

/// Contents of `results.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResults {
    /// Method name.
    pub method: String,
    /// The protocol.
    pub protocol: ProtocolInfo,
    /// The configuration the method trained with.
    pub config: TrainConfig,
    /// The classes of each step as trained (one step for `joint`).
    pub steps: Vec<Vec<String>>,
    /// Class order of every matrix's columns.
    pub classes: Vec<String>,
    /// `metrics[name][step][class]`, null where a class was not yet learned, and for the pixel
    /// metrics also where the class's masks hold no defect pixel (see `warnings`). Names:
    /// image_auroc, pixel_auroc, pixel_ap, pro, image_ap, image_f1_max.
    pub metrics: BTreeMap<String, Vec<Vec<Option<f64>>>>,
    /// ACC after the last step: the mean over the objects with the metric (objects without pixel
    /// metrics are left out of the pixel ACC).
    pub acc: ImagePixel,
    /// FM after the last step, over the same objects as `acc`.
    pub fm: ImagePixel,
    /// Why metrics are absent: one line per object whose test set leaves some undefined (absent in
    /// files written before it was recorded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Per step: training wall time, seconds.
    pub train_seconds: Vec<f64>,
    /// Per step: evaluation wall time, seconds.
    pub eval_seconds: Vec<f64>,
    /// Per step: model inference time per test image (transformer, map, score), milliseconds.
    pub infer_ms_per_image: Vec<f64>,
    /// Per step: model file size, bytes.
    pub model_bytes: Vec<u64>,
    /// Peak resident memory of the run, bytes.
    pub peak_rss_bytes: Option<u64>,
    /// True when every step of the protocol has finished.
    pub complete: bool,
}

const METRICS: [&str; 6] = [
    "image_auroc",
    "pixel_auroc",
    "pixel_ap",
    "pro",
    "image_ap",
    "image_f1_max",
];

fn metric_value(m: &ClassMetrics, name: &str) -> Option<f64> {
    match name {
        "image_auroc" => Some(m.image_auroc),
        "pixel_auroc" => m.pixel_auroc,
        "pixel_ap" => m.pixel_ap,
        "pro" => m.pro,
        "image_ap" => Some(m.image_ap),
        _ => Some(m.image_f1_max),
    }
}

impl RunResults {
    /// The objects that have learned cells without a pixel AUROC (their masks hold no defect
    /// pixel): left out of the pixel ACC and FM. A cell counts as learned from the step whose
    /// classes (`steps`) include the object.
    pub fn without_pixel_metrics(&self) -> Vec<String> {
        let Some(rows) = self.metrics.get("pixel_auroc") else {
            return Vec::new();
        };
        self.classes
            .iter()
            .enumerate()
            .filter(|(ci, c)| {
                rows.iter().enumerate().any(|(s, row)| {
                    self.learned_by(c, s) && row.get(*ci).is_some_and(Option::is_none)
                })
            })
            .map(|(_, c)| c.clone())
            .collect()
    }

    /// Whether `class` is learned after step `step` (it is among the classes of a step up to it).
    fn learned_by(&self, class: &str, step: usize) -> bool {
        self.steps
            .iter()
            .take(step + 1)
            .any(|st| st.iter().any(|c| c == class))
    }
}

/// Peak resident set size of this process (Linux `VmHWM`).
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Writes `bytes` to `path` through a temporary file in the same folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        iuf_model::remove_stale_temps(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        });
    }
    let tmp = iuf_model::temp_path(path);
    std::fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// Splits a class's training images into (train, held-out) deterministically.
pub fn split_holdout(samples: &[Sample], cfg: &TrainConfig) -> (Vec<Sample>, Vec<Sample>) {
    let n = samples.len();
    let c = &cfg.calibration;
    let want = ((n as f64 * c.holdout_fraction).round() as usize).max(c.holdout_min);
    // Never hold out more than a fifth of a small class, nor leave fewer than 2 to train on.
    let k = if c.holdout_fraction == 0.0 {
        0
    } else {
        want.min(n / 5).min(n.saturating_sub(2))
    };
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut rand::rngs::StdRng::seed_from_u64(
        cfg.seed ^ 0x5EED_CA11,
    ));
    let hold: std::collections::HashSet<usize> = idx[..k].iter().copied().collect();
    let (mut tr, mut ho) = (Vec::new(), Vec::new());
    for (i, s) in samples.iter().enumerate() {
        if hold.contains(&i) {
            ho.push(s.clone());
        } else {
            tr.push(s.clone());
        }
    }
    (tr, ho)
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct RunIdentity {
    method: String,
    steps: Vec<Vec<String>>,
    config: serde_json::Value,
    /// The data the run learns from (absent in run folders written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data: Option<DataIdentity>,
}

/// Which images a run uses: the dataset folder and a digest of its file list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct DataIdentity {
    /// The dataset root as given (for the message; the digest decides).
    root: String,
    /// sha256 over every image and mask of the protocol's objects: path relative to the root, and
    /// size in bytes, in index order.
    files_sha256: String,
}

fn data_identity(dataset: &DatasetRoot, classes: &[String]) -> Result<DataIdentity> {
    use sha2::{Digest, Sha256};
    let root = dataset.root();
    let mut h = Sha256::new();
    for c in classes {
        let index = dataset.index_class(c)?;
        for s in index.train.iter().chain(&index.test) {
            for p in std::iter::once(&s.path).chain(s.mask.as_ref()) {
                let rel = p.strip_prefix(root).unwrap_or(p);
                let size = std::fs::metadata(p).map_err(io_err(p))?.len();
                h.update(rel.to_string_lossy().as_bytes());
                h.update([0]);
                h.update(size.to_le_bytes());
            }
        }
    }
    Ok(DataIdentity {
        root: root.display().to_string(),
        files_sha256: format!("{:x}", h.finalize()),
    })
}

/// Writes `run.json`, or checks that the folder's `run.json` describes this very run (method,
/// steps, config and data), so that a different run never overwrites its files and a resume never
/// mixes the steps of two datasets.
fn claim_run_dir(
    dir: &Path,
    method: Strategy,
    steps: &[Vec<String>],
    config: &TrainConfig,
    dataset: &DatasetRoot,
    classes: &[String],
) -> Result<()> {
    let mut identity = RunIdentity {
        method: method.name().to_string(),
        steps: steps.to_vec(),
        config: serde_json::to_value(config).map_err(|e| Error::Msg(e.to_string()))?,
        data: Some(data_identity(dataset, classes)?),
    };
    let id_path = dir.join("run.json");
    if id_path.exists() {
        let found: RunIdentity = read_json(&id_path)?;
        if let (Some(old), Some(new)) = (&found.data, &identity.data) {
            if old != new {
                return Err(Error::RunDir {
                    path: id_path,
                    msg: format!(
                        "holds a run on other data ({} then, {} now: the images or their sizes differ); resume it with its own --data, or choose another output folder",
                        old.root, new.root
                    ),
                });
            }
        }
        if found.data.is_none() {
            tracing::warn!(
                "{} predates recorded data; resuming without checking that --data is the same",
                id_path.display()
            );
            identity.data = None;
        }
        if found != identity {
            return Err(Error::RunDir {
                path: id_path,
                msg: "holds a different run (method, steps or config differ); choose another output folder or delete it".into(),
            });
        }
        Ok(())
    } else {
        write_atomic(&id_path, &to_json(&identity)?)
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    serde_json::from_slice(&bytes).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(v).map_err(|e| Error::Msg(format!("serialising JSON: {e}")))
}

/// File names inside a run directory.
pub fn step_model_path(dir: &Path, step: usize) -> PathBuf {
    dir.join(format!("step-{step}.safetensors"))
}

fn step_result_path(dir: &Path, step: usize) -> PathBuf {
    dir.join(format!("step-{step}.json"))
}

/// Loads features (with the memory features when `with_memory`), labels and masks of an object's
/// test set.
pub fn eval_set(
    dataset: &DatasetRoot,
    store: &FeatureStore,
    class: &str,
    with_memory: bool,
    progress: &dyn Progress,
) -> Result<EvalSet> {
    let index = dataset.index_class(class)?;
    let paths: Vec<PathBuf> = index.test.iter().map(|s| s.path.clone()).collect();
    let (features, memory) = load_features(store, &paths, with_memory, progress)?;
    let masks: Vec<Option<PathBuf>> = index.test.iter().map(|s| s.mask.clone()).collect();
    let masks = iuf_data::batch::load_masks(&masks, store.image_size())?;
    Ok(EvalSet {
        class: class.to_string(),
        features,
        memory,
        labels: index.test.iter().map(|s| s.is_anomalous).collect(),
        masks,
    })
}

/// `feature_align` of `paths`, and their memory features when `with_memory`.
pub fn load_features(
    store: &FeatureStore,
    paths: &[PathBuf],
    with_memory: bool,
    progress: &dyn Progress,
) -> Result<(Tensor, Option<Tensor>)> {
    if with_memory {
        let (f, m, _) = store.features_with_memory(paths, progress)?;
        Ok((f, Some(m)))
    } else {
        Ok((store.features(paths, progress)?.0, None))
    }
}

/// Feature maps `[N, C, g, g]`, memory features (methods with a memory), and the class id of
/// every image.
pub struct Labelled {
    /// `feature_align`.
    pub features: Tensor,
    /// Memory features, when the method keeps a memory.
    pub memory: Option<Tensor>,
    /// Class id of every image.
    pub class_ids: Vec<u32>,
}

impl Labelled {
    /// As the learner takes it.
    pub fn step_data(&self) -> StepData<'_> {
        StepData {
            features: &self.features,
            memory: self.memory.as_ref(),
            class_ids: &self.class_ids,
        }
    }
}

/// Features and class ids of the training (and held-out) images of `classes`.
pub fn train_data(
    learner: &Learner,
    dataset: &DatasetRoot,
    store: &FeatureStore,
    classes: &[String],
    progress: &dyn Progress,
) -> Result<(Labelled, Labelled)> {
    let (mut tp, mut tid, mut hp, mut hid) = (vec![], vec![], vec![], vec![]);
    for c in classes {
        // Objects new to the model get the next free class ids, in order.
        let id = learner.class_id(c).unwrap_or_else(|| {
            let known = learner.meta().class_names.len();
            let earlier_new = classes
                .iter()
                .take_while(|x| *x != c)
                .filter(|x| learner.class_id(x).is_none())
                .count();
            (known + earlier_new) as u32
        });
        let index = dataset.index_class(c)?;
        let (tr, ho) = split_holdout(&index.train, learner.config());
        tid.extend(std::iter::repeat_n(id, tr.len()));
        hid.extend(std::iter::repeat_n(id, ho.len()));
        tp.extend(tr.into_iter().map(|s| s.path));
        hp.extend(ho.into_iter().map(|s| s.path));
    }
    let with_memory = learner.uses_memory();
    let (tf, tm) = load_features(store, &tp, with_memory, progress)?;
    let (hf, hm) = load_features(store, &hp, with_memory, progress)?;
    Ok((
        Labelled {
            features: tf,
            memory: tm,
            class_ids: tid,
        },
        Labelled {
            features: hf,
            memory: hm,
            class_ids: hid,
        },
    ))
}

/// Trains `learner` on the objects `classes` of `dataset` as its next step (hold-out split,
/// features, training, calibration). Used by `iuf train` / `iuf learn`.
pub fn learn_classes(
    learner: &mut Learner,
    dataset: &DatasetRoot,
    store: &FeatureStore,
    classes: &[String],
    progress: &dyn Progress,
) -> Result<StepRecord> {
    let step = learner.steps().len();
    let (train, holdout) = train_data(learner, dataset, store, classes, progress)?;
    learner.learn_step(
        step,
        classes,
        &train.step_data(),
        Some(&holdout.step_data()),
        progress,
    )
}

/// Runs (or resumes) a protocol for one method. Returns the results written to `results.json`.
pub fn run_protocol(
    spec: &RunSpec,
    dataset: &DatasetRoot,
    store: &FeatureStore,
    progress: &dyn Progress,
) -> Result<RunResults> {
    let dir = &spec.dir;
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    if !spec.method.is_trained() {
        return run_class_mean(spec, dataset, store, progress);
    }
    let steps: Vec<Vec<String>> = if spec.method == Strategy::Joint {
        vec![spec.protocol.all_classes()]
    } else {
        spec.protocol.steps.clone()
    };
    let class_list = spec.protocol.all_classes();
    let config = spec.config.for_strategy(spec.method);
    config.check()?;
    claim_run_dir(dir, spec.method, &steps, &config, dataset, &class_list)?;

    // Resume after the last step whose model and results are both complete.
    let mut done: Vec<StepResult> = Vec::new();
    for s in 0..steps.len() {
        let (mp, rp) = (step_model_path(dir, s), step_result_path(dir, s));
        if !(mp.exists() && rp.exists()) {
            break;
        }
        match read_json::<StepResult>(&rp) {
            Ok(r) => done.push(r),
            Err(e) => {
                tracing::warn!("{e}; redoing step {s}");
                break;
            }
        }
    }
    let mut learner = match done.len() {
        0 => Learner::new(
            &config,
            spec.method,
            store.backbone_id(),
            class_list.clone(),
            store.device(),
        )?,
        k => {
            tracing::info!(
                "resuming {} after step {} of {}",
                spec.method,
                k - 1,
                dir.display()
            );
            let mut l = Learner::load(&step_model_path(dir, k - 1), store.device())?;
            // The schedule of the remaining steps is this run's (run.json matched it).
            l.set_config(&config)?;
            l
        }
    };
    let mut results = assemble(spec, &config, &steps, &class_list, &done)?;
    for (s, new) in steps.iter().enumerate().skip(done.len()) {
        let t0 = Instant::now();
        let (train, holdout) = train_data(&learner, dataset, store, new, progress)?;
        let feature_seconds = t0.elapsed().as_secs_f64();
        let record = learner.learn_step(
            s,
            new,
            &train.step_data(),
            Some(&holdout.step_data()),
            progress,
        )?;
        let model_path = step_model_path(dir, s);
        learner.save(&model_path)?;
        let model_bytes = std::fs::metadata(&model_path)
            .map_err(io_err(&model_path))?
            .len();
        let t1 = Instant::now();
        let seen: Vec<String> = steps[..=s].iter().flatten().cloned().collect();
        let mut metrics = Vec::new();
        for c in &seen {
            let set = eval_set(dataset, store, c, learner.uses_memory(), progress)?;
            let (m, _) = evaluate(&learner, &set, progress)?;
            tracing::info!(step = s, class = %c, image_auroc = m.image_auroc, pixel_auroc = ?m.pixel_auroc, "evaluated");
            warn_once(&m, new);
            metrics.push(m);
        }
        let result = StepResult {
            record,
            metrics,
            eval_seconds: t1.elapsed().as_secs_f64(),
            feature_seconds,
            model_bytes,
            peak_rss_bytes: peak_rss_bytes(),
        };
        write_atomic(&step_result_path(dir, s), &to_json(&result)?)?;
        done.push(result);
        results = assemble(spec, &config, &steps, &class_list, &done)?;
        write_atomic(&dir.join("results.json"), &to_json(&results)?)?;
        write_atomic(&dir.join("report.md"), report_markdown(&results).as_bytes())?;
    }
    // A fully resumed run still (re)writes its outputs.
    write_atomic(&dir.join("results.json"), &to_json(&results)?)?;
    write_atomic(&dir.join("report.md"), report_markdown(&results).as_bytes())?;
    Ok(results)
}

/// The `class-mean` reference: fits each object's mean feature in its step and evaluates like the
/// trained methods. Seconds of work, so it simply reruns instead of resuming.
fn run_class_mean(
    spec: &RunSpec,
    dataset: &DatasetRoot,
    store: &FeatureStore,
    progress: &dyn Progress,
) -> Result<RunResults> {
    let dir = &spec.dir;
    let steps = spec.protocol.steps.clone();
    let class_list = spec.protocol.all_classes();
    let config = spec.config.clone();
    claim_run_dir(dir, spec.method, &steps, &config, dataset, &class_list)?;
    let mut baseline = ClassMean::new();
    let mut done: Vec<StepResult> = Vec::new();
    for (s, new) in steps.iter().enumerate() {
        let t0 = Instant::now();
        let mut images = 0;
        for c in new {
            let index = dataset.index_class(c)?;
            // The same images the trained methods train on (their hold-out is left out too).
            let (train, _) = split_holdout(&index.train, &config);
            let paths: Vec<PathBuf> = train.into_iter().map(|x| x.path).collect();
            images += paths.len();
            let (f, _) = store.features(&paths, progress)?;
            baseline.fit(c, &f)?;
        }
        let train_seconds = t0.elapsed().as_secs_f64();
        let model_path = step_model_path(dir, s);
        let tmp = iuf_model::temp_path(&model_path);
        let tensors: std::collections::HashMap<String, Tensor> =
            baseline.tensors().into_iter().collect();
        candle_core::safetensors::save(&tensors, &tmp)?;
        std::fs::rename(&tmp, &model_path).map_err(io_err(&model_path))?;
        let model_bytes = std::fs::metadata(&model_path)
            .map_err(io_err(&model_path))?
            .len();
        let t1 = Instant::now();
        let mut metrics = Vec::new();
        for c in steps[..=s].iter().flatten() {
            let set = eval_set(dataset, store, c, false, progress)?;
            let (m, _) = evaluate_with(&set, progress, |f, _| baseline.predict(c, f))?;
            warn_once(&m, new);
            metrics.push(m);
        }
        let result = StepResult {
            record: StepRecord {
                step: s,
                classes: new.clone(),
                images,
                epochs: 0,
                optimizer: "none".into(),
                final_loss: Default::default(),
                train_seconds,
            },
            metrics,
            eval_seconds: t1.elapsed().as_secs_f64(),
            feature_seconds: train_seconds,
            model_bytes,
            peak_rss_bytes: peak_rss_bytes(),
        };
        write_atomic(&step_result_path(dir, s), &to_json(&result)?)?;
        done.push(result);
    }
    let results = assemble(spec, &config, &steps, &class_list, &done)?;
    write_atomic(&dir.join("results.json"), &to_json(&results)?)?;
    write_atomic(&dir.join("report.md"), report_markdown(&results).as_bytes())?;
    Ok(results)
}

/// Logs the warning of an object's metrics at the step that learns it (not again at every step).
fn warn_once(m: &ClassMetrics, new: &[String]) {
    if let Some(w) = &m.warning {
        if new.contains(&m.class) {
            tracing::warn!("{w}; the pixel ACC and FM leave `{}` out", m.class);
        }
    }
}

/// `R[step][class]` of metric `name` over the finished steps. An object evaluated without a value
/// (its pixel metrics are undefined) is marked undefined: it counts as learned at that step, and
/// ACC / FM average over the objects with a value.
fn matrix(
    classes: &[String],
    steps: usize,
    done: &[StepResult],
    name: &str,
) -> Result<ResultsMatrix> {
    let mut m = ResultsMatrix::new(classes.iter().cloned(), steps.max(1)).map_err(|source| {
        Error::Metrics {
            class: "*".into(),
            source,
        }
    })?;
    for (s, r) in done.iter().enumerate() {
        for cm in &r.metrics {
            if let Some(ci) = m.class_index(&cm.class) {
                match metric_value(cm, name) {
                    Some(v) => m.set(s, ci, v),
                    None => m.set_undefined(s, ci),
                }
                .map_err(|source| Error::Metrics {
                    class: cm.class.clone(),
                    source,
                })?;
            }
        }
    }
    Ok(m)
}

fn assemble(
    spec: &RunSpec,
    config: &TrainConfig,
    steps: &[Vec<String>],
    classes: &[String],
    done: &[StepResult],
) -> Result<RunResults> {
    let mut metrics = BTreeMap::new();
    let (mut acc, mut fm) = (
        ImagePixel {
            image: None,
            pixel: None,
        },
        ImagePixel {
            image: None,
            pixel: None,
        },
    );
    for name in METRICS {
        // Matrices over the finished steps only, so ACC/FM describe the last finished step.
        let m = matrix(classes, done.len(), done, name)?;
        let rows: Vec<Vec<Option<f64>>> = (0..done.len())
            .map(|s| (0..classes.len()).map(|c| m.get(s, c)).collect())
            .collect();
        if !done.is_empty() {
            if name == "image_auroc" {
                acc.image = m.acc();
                fm.image = m.fm();
            } else if name == "pixel_auroc" {
                acc.pixel = m.acc();
                fm.pixel = m.fm();
            }
        }
        metrics.insert(name.to_string(), rows);
    }
    let mut warnings: Vec<String> = Vec::new();
    for w in done
        .iter()
        .flat_map(|r| &r.metrics)
        .filter_map(|m| m.warning.as_ref())
    {
        if !warnings.contains(w) {
            warnings.push(w.clone());
        }
    }
    Ok(RunResults {
        method: spec.method.name().to_string(),
        protocol: ProtocolInfo {
            name: spec.protocol.name.clone(),
            steps: spec.protocol.steps.clone(),
        },
        config: config.clone(),
        steps: steps.to_vec(),
        classes: classes.to_vec(),
        metrics,
        acc,
        fm,
        warnings,
        train_seconds: done.iter().map(|r| r.record.train_seconds).collect(),
        eval_seconds: done.iter().map(|r| r.eval_seconds).collect(),
        infer_ms_per_image: done
            .iter()
            .map(|r| {
                let n: usize = r.metrics.iter().map(|m| m.images).sum();
                let t: f64 = r
                    .metrics
                    .iter()
                    .map(|m| m.seconds_per_image * m.images as f64)
                    .sum();
                1000.0 * t / n.max(1) as f64
            })
            .collect(),
        model_bytes: done.iter().map(|r| r.model_bytes).collect(),
        peak_rss_bytes: done.iter().filter_map(|r| r.peak_rss_bytes).max(),
        complete: done.len() == steps.len(),
    })
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.1}", 100.0 * v))
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

/// `report.md` of one run: summary, efficiency, and a per-class table for every metric.
pub fn report_markdown(r: &RunResults) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# {} on `{}`\n", r.method, r.protocol.name);
    let steps: Vec<String> = r.steps.iter().map(|c| c.join(", ")).collect();
    let _ = writeln!(s, "Steps: {}\n", steps.join(" | "));
    if !r.complete {
        let _ = writeln!(
            s,
            "**Incomplete run**: {} of {} steps finished.\n",
            r.train_seconds.len(),
            r.steps.len()
        );
    }
    let _ = writeln!(s, "| | image AUROC | pixel AUROC |\n|---|---:|---:|");
    let _ = writeln!(
        s,
        "| ACC (%) | {} | {} |",
        pct(r.acc.image),
        pct(r.acc.pixel)
    );
    let _ = writeln!(
        s,
        "| FM (%) | {} | {} |\n",
        pct(r.fm.image),
        pct(r.fm.pixel)
    );
    s.push_str(&absent_pixel_note(r));
    s.push_str(&efficiency_markdown(r));
    for name in METRICS {
        let Some(rows) = r.metrics.get(name) else {
            continue;
        };
        let _ = writeln!(s, "\n## {name}\n");
        let mut header = String::from("| step |");
        let mut rule = String::from("|---:|");
        for c in &r.classes {
            let _ = write!(header, " {c} |");
            rule.push_str("---:|");
        }
        let _ = writeln!(s, "{header} mean |\n{rule}---:|");
        for (i, row) in rows.iter().enumerate() {
            let vals: Vec<f64> = row.iter().flatten().copied().collect();
            let mean = (!vals.is_empty()).then(|| vals.iter().sum::<f64>() / vals.len() as f64);
            let cells: Vec<String> = row
                .iter()
                .zip(&r.classes)
                .map(|(v, c)| match v {
                    Some(v) => format!("{v:.3}"),
                    None if r.learned_by(c, i) => "n/a".into(),
                    None => "-".into(),
                })
                .collect();
            let _ = writeln!(
                s,
                "| {i} | {} | {} |",
                cells.join(" | "),
                mean.map_or("-".into(), |m| format!("{m:.3}"))
            );
        }
    }
    s
}

/// The objects without pixel metrics and why, or nothing.
fn absent_pixel_note(r: &RunResults) -> String {
    let absent = r.without_pixel_metrics();
    if absent.is_empty() {
        return String::new();
    }
    let names: Vec<String> = absent.iter().map(|c| format!("`{c}`")).collect();
    let mut s = format!(
        "No pixel metrics for {} (n/a below): the pixel ACC and FM average over the other objects; \
         the image-level metrics include every object.\n\n",
        names.join(", ")
    );
    for w in &r.warnings {
        let _ = writeln!(s, "- {w}");
    }
    if !r.warnings.is_empty() {
        s.push('\n');
    }
    s
}

fn efficiency_markdown(r: &RunResults) -> String {
    let mut s = String::from("| step | train (s) | eval (s) | inference (ms/image) | model size |\n|---:|---:|---:|---:|---:|\n");
    for i in 0..r.train_seconds.len() {
        let _ = writeln!(
            s,
            "| {i} | {:.1} | {:.1} | {:.2} | {} |",
            r.train_seconds[i],
            r.eval_seconds[i],
            r.infer_ms_per_image[i],
            mib(r.model_bytes[i])
        );
    }
    if let Some(p) = r.peak_rss_bytes {
        let _ = writeln!(s, "\nPeak memory (resident): {}", mib(p));
    }
    s
}

/// A side-by-side table of several methods on the same protocol (ACC, FM, time, size).
pub fn comparison_markdown(runs: &[RunResults]) -> String {
    let mut s = String::from(
        "| method | image ACC | pixel ACC | image FM | pixel FM | train (s, total) | inference (ms/image) | peak memory | model size |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in runs {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {:.0} | {:.2} | {} | {} |",
            r.method,
            pct(r.acc.image),
            pct(r.acc.pixel),
            pct(r.fm.image),
            pct(r.fm.pixel),
            r.train_seconds.iter().sum::<f64>(),
            r.infer_ms_per_image.last().copied().unwrap_or(0.0),
            r.peak_rss_bytes.map_or("-".into(), mib),
            r.model_bytes.last().map_or("-".into(), |b| mib(*b)),
        );
    }
    for r in runs {
        let absent = r.without_pixel_metrics();
        if !absent.is_empty() {
            let _ = writeln!(
                s,
                "\n{}: no pixel metrics for {} (masks without defect pixels); its pixel ACC and FM \
                 average over the other objects.",
                r.method,
                absent.join(", ")
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(class: &str, image: f64, pixel: Option<f64>) -> ClassMetrics {
        ClassMetrics {
            class: class.into(),
            images: 10,
            anomalous: 5,
            image_auroc: image,
            image_ap: image,
            image_f1_max: image,
            pixel_auroc: pixel,
            pixel_ap: pixel,
            pro: pixel,
            seconds_per_image: 0.01,
            warning: pixel
                .is_none()
                .then(|| format!("class `{class}`: masks all empty")),
        }
    }

    fn step(s: usize, classes: &[&str], metrics: Vec<ClassMetrics>) -> StepResult {
        StepResult {
            record: StepRecord {
                step: s,
                classes: classes.iter().map(|c| c.to_string()).collect(),
                images: 10,
                epochs: 1,
                optimizer: "adamw".into(),
                final_loss: Default::default(),
                train_seconds: 1.0,
            },
            metrics,
            eval_seconds: 1.0,
            feature_seconds: 1.0,
            model_bytes: 1,
            peak_rss_bytes: None,
        }
    }

    fn results(steps: &[&[&str]], done: &[StepResult]) -> RunResults {
        let steps: Vec<Vec<String>> = steps
            .iter()
            .map(|st| st.iter().map(|c| c.to_string()).collect())
            .collect();
        let spec = RunSpec {
            method: Strategy::Iuf,
            protocol: Protocol {
                name: "test".into(),
                steps: steps.clone(),
            },
            config: TrainConfig::tiny(8, 3),
            dir: PathBuf::new(),
        };
        let classes: Vec<String> = steps.iter().flatten().cloned().collect();
        assemble(&spec, &spec.config, &steps, &classes, done).unwrap()
    }

    #[test]
    fn results_files_give_back_every_metric_bit_for_bit() {
        // A resumed run reads earlier steps' metrics back from JSON and must get the same bits:
        // serde_json's default float parsing is off by one ulp for some values (this one is a
        // pixel ACC that a resumed bench once reported as ...698 instead of ...699), so the
        // workspace enables its `float_roundtrip` feature.
        let mut values = vec![0.6899509093229699f64, 0.1 + 0.2, 1.0 / 3.0, 5e-324, 1e308];
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            values.push((x >> 11) as f64 / (1u64 << 53) as f64);
        }
        let text = serde_json::to_string(&values).unwrap();
        let back: Vec<f64> = serde_json::from_str(&text).unwrap();
        for (a, b) in values.iter().zip(&back) {
            assert_eq!(a.to_bits(), b.to_bits(), "{a:e} came back as {b:e}");
        }
    }

    /// Guarantee (issue 14): an object without pixel metrics (all-empty masks) keeps its image
    /// metrics in the image ACC / FM, is `null` in the pixel matrices from the step the protocol
    /// learns it, and leaves the pixel ACC / FM and the learned steps of the other objects exactly
    /// as without it; the reports mark it "n/a" (learned) apart from "-" (not learned yet) and say
    /// why; the warning is kept once, and results.json reads back.
    #[test]
    fn an_object_without_pixel_metrics_leaves_the_others_pixel_acc_and_fm_alone() {
        let done = [
            step(
                0,
                &["a", "b"],
                vec![metrics("a", 0.9, Some(0.95)), metrics("b", 0.8, None)],
            ),
            step(
                1,
                &["c"],
                vec![
                    metrics("a", 0.7, Some(0.85)),
                    metrics("b", 0.6, None),
                    metrics("c", 0.9, Some(0.75)),
                ],
            ),
        ];
        let r = results(&[&["a", "b"], &["c"]], &done);
        // Pixel: a 0.85 and c 0.75 after step 1; forgetting only a: 0.95 - 0.85.
        assert!((r.acc.pixel.unwrap() - 0.80).abs() < 1e-12, "{:?}", r.acc);
        assert!((r.fm.pixel.unwrap() - 0.10).abs() < 1e-12, "{:?}", r.fm);
        // Image: every object, b included: (0.7 + 0.6 + 0.9) / 3; FM (0.2 + 0.2) / 2.
        assert!((r.acc.image.unwrap() - 2.2 / 3.0).abs() < 1e-12);
        assert!((r.fm.image.unwrap() - 0.2).abs() < 1e-12);
        // The same pixel ACC / FM as a run without b at all.
        let without_b: Vec<StepResult> = done
            .iter()
            .map(|st| {
                let mut st = st.clone();
                st.metrics.retain(|m| m.class != "b");
                st
            })
            .collect();
        let reference = results(&[&["a"], &["c"]], &without_b);
        assert_eq!(
            (r.acc.pixel, r.fm.pixel),
            (reference.acc.pixel, reference.fm.pixel)
        );
        let m = matrix(&r.classes, 2, &done, "pixel_auroc").unwrap();
        assert_eq!(
            (0..3).map(|c| m.learned_at(c)).collect::<Vec<_>>(),
            [Some(0), Some(0), Some(1)]
        );
        for name in ["pixel_auroc", "pixel_ap", "pro"] {
            assert_eq!(
                r.metrics[name],
                [
                    vec![Some(0.95), None, None],
                    vec![Some(0.85), None, Some(0.75)]
                ],
                "{name}"
            );
        }
        assert_eq!(
            r.metrics["image_auroc"][1],
            [Some(0.7), Some(0.6), Some(0.9)]
        );
        assert_eq!(r.without_pixel_metrics(), ["b"]);
        assert_eq!(r.warnings, ["class `b`: masks all empty"]);
        assert!(reference.without_pixel_metrics().is_empty() && reference.warnings.is_empty());

        let report = report_markdown(&r);
        assert!(report.contains("No pixel metrics for `b`"), "{report}");
        assert!(report.contains("- class `b`: masks all empty"), "{report}");
        // Step 0 of pixel_auroc: b learned without a value, c not learned yet.
        assert!(
            report.contains("| 0 | 0.950 | n/a | - | 0.950 |"),
            "{report}"
        );
        assert!(!report_markdown(&reference).contains("n/a"));
        let cmp = comparison_markdown(&[r.clone(), reference]);
        assert_eq!(cmp.matches("no pixel metrics for b").count(), 1, "{cmp}");

        // results.json round trip: nulls stay absent, the warnings come back; a file written
        // before warnings were recorded still reads.
        let json = serde_json::to_value(&r).unwrap();
        assert!(json["metrics"]["pixel_auroc"][1][1].is_null());
        let back: RunResults = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(
            (back.metrics, back.warnings),
            (r.metrics, r.warnings.clone())
        );
        let mut old = json;
        old.as_object_mut().unwrap().remove("warnings");
        let old: RunResults = serde_json::from_value(old).unwrap();
        assert!(old.warnings.is_empty());
        assert_eq!(old.without_pixel_metrics(), ["b"]);
    }
}
