//! `report.md` of a run and the comparison of several runs, in Markdown.

use std::fmt::Write as _;

use super::results::{RunResults, METRICS};

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
    s.push_str(&defects_markdown(r));
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

/// The table by defect type after the last step (defect sizes, for the small-defect benchmark),
/// or nothing when no object's test set names defect types.
pub fn defects_markdown(r: &RunResults) -> String {
    if r.by_defect.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        "\n## By defect type (after the last step)\n\nImage AUROC of each defect type's images \
         against every good image of the object, pixel AUROC over its images, and the share of \
         its images flagged at the calibrated threshold (recall); the last column of each \
         object's first row is the share of its good images flagged.\n\n\
         | object | defect | images | image AUROC | pixel AUROC | recall | good flagged |\n\
         |---|---|---:|---:|---:|---:|---:|\n",
    );
    for (object, rep) in &r.by_defect {
        for (i, d) in rep.defects.iter().enumerate() {
            let flagged = if i == 0 {
                pct(rep.good_flagged)
            } else {
                String::new()
            };
            let _ = writeln!(
                s,
                "| {object} | {} | {} | {:.3} | {} | {} | {flagged} |",
                d.defect,
                d.images,
                d.image_auroc,
                d.pixel_auroc.map_or("-".into(), |v| format!("{v:.3}")),
                pct(d.recall),
            );
        }
    }
    s
}

/// Results by defect size, averaged over objects and defect kinds, one row per method and size
/// (the small-defect benchmark's table); nothing when no defect type names its size.
pub fn by_size_markdown(runs: &[RunResults]) -> String {
    let mut s = String::new();
    for r in runs {
        let mut sizes: std::collections::BTreeMap<usize, Vec<&crate::eval::DefectMetrics>> =
            Default::default();
        for d in r.by_defect.values().flat_map(|rep| &rep.defects) {
            if let Some(px) = crate::eval::defect_size(&d.defect) {
                sizes.entry(px).or_default().push(d);
            }
        }
        if sizes.is_empty() {
            continue;
        }
        if s.is_empty() {
            s.push_str(
                "| method | defect size | types | image AUROC | pixel AUROC | recall at threshold |\n|---|---:|---:|---:|---:|---:|\n",
            );
        }
        let mean = |v: Vec<f64>| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
        for (px, ds) in sizes {
            let image = mean(ds.iter().map(|d| d.image_auroc).collect());
            let pixel = mean(ds.iter().filter_map(|d| d.pixel_auroc).collect());
            let recall = mean(ds.iter().filter_map(|d| d.recall).collect());
            let _ = writeln!(
                s,
                "| {} | {px} px | {} | {} | {} | {} |",
                r.name(),
                ds.len(),
                image.map_or("-".into(), |v| format!("{v:.3}")),
                pixel.map_or("-".into(), |v| format!("{v:.3}")),
                pct(recall),
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
            r.name(),
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
                r.name(),
                absent.join(", ")
            );
        }
    }
    s
}
