//! `iuf info`: what a model file holds: method and configuration, backbone, the objects it knows and
//! the step that learned each, decision thresholds, training history and size.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use candle_core::Device;
use clap::Args;
use iuf_incremental::Learner;

use crate::setup;
use crate::table;
use crate::Global;

/// Arguments of `iuf info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// The model file.
    #[arg(long, value_name = "FILE")]
    pub model: PathBuf,
}

/// The network's parameter count and the file's size in bytes.
fn size(path: &Path, learner: &Learner) -> Result<(usize, u64)> {
    let bytes = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    Ok((learner.parameters(), bytes))
}

/// What `iuf info --json` prints (also `iuf serve`'s `GET /v1/model`): shared with the bindings.
pub use iuf_inspect::info::model_json;

pub fn run(g: &Global, a: InfoArgs) -> Result<ExitCode> {
    // Inspecting never needs a GPU.
    let learner = setup::load_model(&a.model, &Device::Cpu)?;
    if g.json {
        super::print_json(&model_json(&a.model, &learner)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let (parameters, bytes) = size(&a.model, &learner)?;
    let meta = learner.meta();
    let cfg = learner.config();
    let q = cfg.calibration.quantile;
    let t = &meta.config.transformer;
    println!(
        "model      {} ({}, {parameters} parameters)",
        a.model.display(),
        setup::mib(bytes)
    );
    println!(
        "method     {} (preset `{}`)",
        learner.strategy(),
        cfg.preset
    );
    println!(
        "backbone   {} ({} channels, {}x{} tokens)",
        meta.backbone, t.in_channels, t.feature_size[0], t.feature_size[1]
    );
    if let Some(d) = learner.backbone_weights() {
        let published = iuf_backbone::fetch::PUBLISHED
            .iter()
            .find(|p| p.variant.model_name() == meta.backbone);
        let note = match published {
            Some(p) if p.tensors_sha256 == d => format!(" (the published {})", p.file),
            Some(p) => format!(" (not the published {}: fine-tuned or damaged)", p.file),
            None => String::new(),
        };
        println!("weights    sha256 {d}{note}");
    }
    if learner.has_network() {
        println!(
            "network    D {}, {} heads, {}+{} layers, FFN {}, OASA {:?}, discriminator {} blocks",
            t.hidden_dim,
            t.nheads,
            t.num_encoder_layers,
            t.num_decoder_layers,
            t.dim_feedforward,
            meta.config.oasa,
            meta.config.discriminator.depth
        );
    } else {
        let names: Vec<&str> = learner.scorers().iter().map(|s| s.name()).collect();
        println!(
            "network    none (per-object statistics only: {})",
            names.join(", ")
        );
    }
    let sizes = learner.memory_sizes();
    if !sizes.is_empty() {
        let m = &cfg.memory;
        let list: Vec<String> = sizes.iter().map(|(c, n)| format!("{c} {n}")).collect();
        println!(
            "memory     patches per object (at most {}, stored as {}): {}",
            m.patches,
            if m.f16 { "f16" } else { "f32" },
            list.join(", ")
        );
        if learner.has_network() {
            println!(
                "fusion     memory x {} + reconstruction x {} (each normalised per object)",
                cfg.fusion.memory, cfg.fusion.reconstruction
            );
        }
    }
    if let Some(t) = &cfg.tiles {
        let tl = &t.tiling;
        println!(
            "views      whole image at {0} px; {1} x {1} tiles of {2} px (overlap >= {3}) from the \
             image resized to {4} px, {5} memory of at most {6} patches; maps at {7} px",
            learner.image_size(),
            tl.per_side(),
            tl.tile,
            tl.overlap,
            tl.input,
            if t.per_position { "per-position" } else { "one shared" },
            t.patches,
            learner.map_size()
        );
    }
    println!(
        "objects    {} of {} slots used: {}",
        meta.learned.len(),
        meta.config.num_classes,
        if meta.learned.is_empty() {
            "none".into()
        } else {
            learner.learned_classes().join(", ")
        }
    );
    println!();
    let rows: Vec<Vec<String>> = meta
        .learned
        .iter()
        .map(|l| {
            vec![
                l.class.clone(),
                learner
                    .class_id(&l.class)
                    .map_or("-".into(), |i| i.to_string()),
                l.step.to_string(),
                meta.thresholds
                    .get(&l.class)
                    .map_or("-".into(), |t| format!("{t:.4}")),
                learner
                    .calibrator()
                    .setting(&l.class)
                    .map_or("calibrated".into(), |s| {
                        format!("{} by {} at {}", s.rule, s.set_by, s.set_at)
                    }),
                learner
                    .object_images()
                    .get(&l.class)
                    .map_or("-".into(), |n| format!("{} + {}", n.train, n.holdout)),
            ]
        })
        .collect();
    let threshold_header = format!("threshold (q {q})");
    print!(
        "{}",
        table::render(
            &[
                "object",
                "class id",
                "learned in step",
                &threshold_header,
                "threshold set",
                "good images (train + held out)"
            ],
            &rows
        )
    );
    println!();
    let rows: Vec<Vec<String>> = learner
        .steps()
        .iter()
        .map(|s| {
            vec![
                s.step.to_string(),
                s.classes.join(","),
                s.images.to_string(),
                s.epochs.to_string(),
                s.optimizer.clone(),
                format!("{:.4}", s.final_loss.total),
                format!("{:.1}", s.train_seconds),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(
            &[
                "step",
                "objects",
                "images",
                "epochs",
                "optimizer",
                "final loss",
                "train (s)"
            ],
            &rows
        )
    );
    if !learner.good_added().is_empty() {
        println!();
        let rows: Vec<Vec<String>> = learner
            .good_added()
            .iter()
            .map(|r| {
                let t = |v: Option<f32>| v.map_or("-".into(), |v| format!("{v:.4}"));
                vec![
                    r.at.clone(),
                    r.object.clone(),
                    r.train.to_string(),
                    r.holdout.to_string(),
                    format!("{} -> {}", t(r.threshold_before), t(r.threshold_after)),
                    format!("{:.1}", r.seconds),
                ]
            })
            .collect();
        print!(
            "{}",
            table::render(
                &[
                    "good images added at",
                    "object",
                    "train",
                    "held out",
                    "threshold",
                    "time (s)"
                ],
                &rows
            )
        );
    }
    println!(
        "\nfull configuration: iuf info --json --model {}",
        a.model.display()
    );
    Ok(ExitCode::SUCCESS)
}
