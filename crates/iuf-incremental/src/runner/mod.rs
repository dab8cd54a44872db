//! The protocol runner: teaches a method step by step, evaluates every object seen so far after each
//! step, fills the continual results matrices (ACC / FM, section 6) and writes `results.json` and
//! `report.md`. A run directory can be resumed: each finished step leaves its model file and its
//! evaluation (`step-<s>.safetensors`, `step-<s>.json`), written atomically, and a restarted run
//! continues after the last step that has both.
//!
//! Every method, the `class-mean` reference included, is a [`Learner`] and goes through the same
//! step loop ([`run_protocol`]); the folder and its resume checks are [`run_dir`], the measured
//! results [`results`], the Markdown [`report`], the images of a step [`data`].
//!
//! An object whose defect masks are all empty has no pixel metrics (see [`crate::eval`]): its
//! cells of the pixel matrices are `null` from the step that learned it (the protocol's step, not
//! the first value), and the pixel ACC and FM average over the other objects; the report marks
//! the cells "n/a" and says so.

use std::path::PathBuf;
use std::time::Instant;

use iuf_data::protocol::Protocol;
use iuf_data::DatasetRoot;

use crate::config::{Strategy, TrainConfig};
use crate::error::{io_err, Result};
use crate::eval::{evaluate, ClassMetrics};
use crate::feature_store::FeatureStore;
use crate::learner::{Learner, StepRecord};
use crate::progress::Progress;
use crate::step::ImageFeatures;

pub mod data;
pub mod report;
pub mod results;
pub mod run_dir;

pub use data::{eval_set, split_holdout, train_data, Labelled};
pub use report::{by_size_markdown, comparison_markdown, report_markdown};
pub use results::{peak_rss_bytes, run_name, ImagePixel, ProtocolInfo, RunResults, StepResult};
pub use run_dir::{step_model_path, write_atomic};

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

/// Adds the good training images of `object` in `dataset` (`<object>/train/good`, or its
/// MVTec AD 2 validation images as the hold-out) to the learned object `object` of `learner`
/// ([`Learner::add_good`]): the same seeded hold-out split as learning, the features from the
/// store. Used by `iuf learn --more`.
pub fn learn_more(
    learner: &mut Learner,
    dataset: &DatasetRoot,
    store: &FeatureStore,
    object: &str,
    progress: &dyn Progress,
) -> Result<crate::learner::GoodAdded> {
    learner.check_add_good(object)?;
    let (train, holdout) = train_data(learner, dataset, store, &[object.to_string()], progress)?;
    learner.add_good(
        object,
        &train.features.view(),
        Some(&holdout.features.view()),
    )
}

/// Adds good images of `object`, given by their features in every view the model reads, to the
/// learned object `object` ([`Learner::add_good`]), holding out the same seeded share as
/// learning does to recalibrate its threshold. Used by `iuf serve`'s
/// `POST /v1/objects/{name}/good`.
pub fn add_good_images(
    learner: &mut Learner,
    object: &str,
    x: &ImageFeatures,
) -> Result<crate::learner::GoodAdded> {
    learner.check_add_good(object)?;
    let n = x.align.dim(0)?;
    let hold = data::holdout_mask(n, learner.config());
    let rows = |want: bool| -> Result<candle_core::Tensor> {
        let idx: Vec<u32> = (0..n as u32)
            .filter(|&i| hold[i as usize] == want)
            .collect();
        let len = idx.len();
        Ok(candle_core::Tensor::from_vec(idx, len, x.align.device())?)
    };
    let view = x.view();
    let train = view.select(&rows(false)?)?;
    let held = view.select(&rows(true)?)?;
    learner.add_good(object, &train.view(), Some(&held.view()))
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
    let steps: Vec<Vec<String>> = if spec.method == Strategy::Joint {
        vec![spec.protocol.all_classes()]
    } else {
        spec.protocol.steps.clone()
    };
    let class_list = spec.protocol.all_classes();
    let config = spec.config.for_strategy(spec.method);
    config.check()?;
    run_dir::claim_run_dir(dir, spec.method, &steps, &config, dataset, &class_list)?;

    // Resume after the last step whose model and results are both complete.
    let mut done = run_dir::finished_steps(dir, steps.len());
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
    let assemble = |done: &[StepResult]| {
        results::assemble(
            spec.method,
            &spec.protocol,
            &config,
            &steps,
            &class_list,
            done,
        )
    };
    let mut results = assemble(&done)?;
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
        let metrics = evaluate_seen(&learner, dataset, store, &seen, new, progress)?;
        let result = StepResult {
            record,
            metrics,
            eval_seconds: t1.elapsed().as_secs_f64(),
            feature_seconds,
            model_bytes,
            peak_rss_bytes: peak_rss_bytes(),
        };
        write_atomic(
            &run_dir::step_result_path(dir, s),
            &run_dir::to_json(&result)?,
        )?;
        done.push(result);
        results = assemble(&done)?;
        write_outputs(spec, &results)?;
    }
    // A fully resumed run still (re)writes its outputs.
    write_outputs(spec, &results)?;
    Ok(results)
}

/// Evaluates every object of `seen` (each on its own test set), logging the warning of an
/// object's metrics at the step that learns it (`new`), not again at every step.
fn evaluate_seen(
    learner: &Learner,
    dataset: &DatasetRoot,
    store: &FeatureStore,
    seen: &[String],
    new: &[String],
    progress: &dyn Progress,
) -> Result<Vec<ClassMetrics>> {
    let mut metrics = Vec::new();
    for c in seen {
        let set = eval_set(dataset, c, learner)?;
        let (m, _) = evaluate(learner, &set, store, progress)?;
        tracing::info!(class = %c, image_auroc = m.image_auroc, pixel_auroc = ?m.pixel_auroc, "evaluated");
        if let Some(w) = &m.warning {
            if new.contains(&m.class) {
                tracing::warn!("{w}; the pixel ACC and FM leave `{}` out", m.class);
            }
        }
        metrics.push(m);
    }
    Ok(metrics)
}

/// `results.json` and `report.md` of the run so far.
fn write_outputs(spec: &RunSpec, results: &RunResults) -> Result<()> {
    write_atomic(&spec.dir.join("results.json"), &run_dir::to_json(results)?)?;
    write_atomic(
        &spec.dir.join("report.md"),
        report_markdown(results).as_bytes(),
    )
}
