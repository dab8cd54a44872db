//! The benchmark plot, hand-written SVG: per method a row of two panels (image AUROC and pixel
//! AUROC) with one line per object over the protocol's steps and the mean over the objects seen so
//! far dashed, plus a legend.

use std::fmt::Write as _;

use iuf_incremental::RunResults;

const PANEL_W: f64 = 330.0;
const PANEL_H: f64 = 210.0;
const MARGIN_L: f64 = 52.0;
const MARGIN_T: f64 = 34.0;
const GAP_X: f64 = 40.0;
const GAP_Y: f64 = 58.0;
const LEGEND_W: f64 = 170.0;

/// Tableau-20: distinguishable colours for up to 20 objects (then repeated).
const PALETTE: [&str; 20] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
    "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5",
];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The y range: from a round value at or below the lowest value (at most 0.5) up to 1.
fn y_floor(runs: &[RunResults]) -> f64 {
    let lowest = runs
        .iter()
        .flat_map(|r| ["image_auroc", "pixel_auroc"].map(|m| r.metrics.get(m)))
        .flatten()
        .flatten()
        .flatten()
        .flatten()
        .copied()
        .fold(1.0f64, f64::min);
    ((lowest.min(0.5) * 10.0).floor() / 10.0).max(0.0)
}

/// The SVG document for `runs` (several methods on one protocol).
pub fn auroc_svg(runs: &[RunResults]) -> String {
    let classes: Vec<String> = runs.first().map(|r| r.classes.clone()).unwrap_or_default();
    let steps = runs
        .iter()
        .map(|r| r.train_seconds.len())
        .max()
        .unwrap_or(0)
        .max(1);
    let y0 = y_floor(runs);
    let rows = runs.len().max(1) as f64;
    let width = MARGIN_L + 2.0 * PANEL_W + GAP_X + 30.0 + LEGEND_W;
    let height = MARGIN_T + rows * (PANEL_H + GAP_Y);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (ri, run) in runs.iter().enumerate() {
        for (pi, (metric, label)) in [
            ("image_auroc", "image AUROC"),
            ("pixel_auroc", "pixel AUROC"),
        ]
        .into_iter()
        .enumerate()
        {
            let ox = MARGIN_L + pi as f64 * (PANEL_W + GAP_X);
            let oy = MARGIN_T + ri as f64 * (PANEL_H + GAP_Y);
            let x_of = |step: usize| {
                if steps == 1 {
                    ox + PANEL_W / 2.0
                } else {
                    ox + 10.0 + (PANEL_W - 20.0) * step as f64 / (steps - 1) as f64
                }
            };
            let y_of = |v: f64| oy + PANEL_H * (1.0 - (v - y0) / (1.0 - y0).max(1e-9));
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" font-weight="bold">{}: {label}</text>"#,
                ox,
                oy - 10.0,
                escape(&run.name())
            );
            let _ = writeln!(
                s,
                r##"<rect x="{ox}" y="{oy}" width="{PANEL_W}" height="{PANEL_H}" fill="none" stroke="#444"/>"##
            );
            // Horizontal grid every 0.1.
            let mut v = y0;
            while v <= 1.0 + 1e-9 {
                let y = y_of(v);
                let _ = writeln!(
                    s,
                    r##"<line x1="{ox}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{v:.1}</text>"##,
                    ox + PANEL_W,
                    ox - 6.0,
                    y + 4.0
                );
                v += 0.1;
            }
            for step in 0..steps {
                let _ = writeln!(
                    s,
                    r#"<text x="{:.1}" y="{}" text-anchor="middle">{step}</text>"#,
                    x_of(step),
                    oy + PANEL_H + 16.0
                );
            }
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" text-anchor="middle">step</text>"#,
                ox + PANEL_W / 2.0,
                oy + PANEL_H + 32.0
            );
            let Some(matrix) = run.metrics.get(metric) else {
                continue;
            };
            for (ci, _) in classes.iter().enumerate() {
                let colour = PALETTE[ci % PALETTE.len()];
                let pts: Vec<(f64, f64)> = matrix
                    .iter()
                    .enumerate()
                    .filter_map(|(st, row)| {
                        row.get(ci).copied().flatten().map(|v| (x_of(st), y_of(v)))
                    })
                    .collect();
                polyline(&mut s, &pts, colour, "");
            }
            // Mean over the objects learned so far, dashed.
            let means: Vec<(f64, f64)> = matrix
                .iter()
                .enumerate()
                .filter_map(|(st, row)| {
                    let vals: Vec<f64> = row.iter().flatten().copied().collect();
                    (!vals.is_empty())
                        .then(|| (x_of(st), y_of(vals.iter().sum::<f64>() / vals.len() as f64)))
                })
                .collect();
            polyline(&mut s, &means, "#000", r#" stroke-dasharray="5,4""#);
        }
    }
    // Legend.
    let lx = MARGIN_L + 2.0 * PANEL_W + GAP_X + 30.0;
    for (ci, c) in classes
        .iter()
        .chain(std::iter::once(&"mean (seen)".to_string()))
        .enumerate()
    {
        let y = MARGIN_T + 10.0 + ci as f64 * 18.0;
        let (colour, dash) = if ci < classes.len() {
            (PALETTE[ci % PALETTE.len()], "")
        } else {
            ("#000", r#" stroke-dasharray="5,4""#)
        };
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{y}" x2="{}" y2="{y}" stroke="{colour}" stroke-width="2"{dash}/><text x="{}" y="{}">{}</text>"#,
            lx + 22.0,
            lx + 28.0,
            y + 4.0,
            escape(c)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn polyline(s: &mut String, pts: &[(f64, f64)], colour: &str, extra: &str) {
    if pts.is_empty() {
        return;
    }
    let coords: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
    let _ = writeln!(
        s,
        r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"{extra}/>"#,
        coords.join(" ")
    );
    for (x, y) in pts {
        let _ = writeln!(
            s,
            r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{colour}"/>"#
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(method: &str, rows: Vec<Vec<Option<f64>>>) -> RunResults {
        let json = serde_json::json!({
            "method": method,
            "protocol": {"name": "a | b", "steps": [["a"], ["b"]]},
            "config": serde_json::to_value(iuf_incremental::TrainConfig::tiny(8, 2)).unwrap(),
            "steps": [["a"], ["b"]],
            "classes": ["a", "b"],
            "metrics": {"image_auroc": rows.clone(), "pixel_auroc": rows},
            "acc": {"image": null, "pixel": null},
            "fm": {"image": null, "pixel": null},
            "train_seconds": [1.0, 1.0],
            "eval_seconds": [1.0, 1.0],
            "infer_ms_per_image": [1.0, 1.0],
            "model_bytes": [1, 1],
            "peak_rss_bytes": null,
            "complete": true
        });
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn svg_has_a_line_per_class_and_panel() {
        let rows = vec![vec![Some(0.9), None], vec![Some(0.7), Some(0.95)]];
        let svg = auroc_svg(&[run("iuf", rows.clone()), run("fine<tune>", rows)]);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        // 2 methods x 2 panels x (2 classes + mean).
        assert_eq!(svg.matches("<polyline").count(), 12);
        assert!(svg.contains("fine&lt;tune&gt;: image AUROC"));
        assert!(!svg.contains("fine<tune>"));
        // y axis from 0.5 (lowest value 0.7, floor at most 0.5) to 1.0.
        assert!(svg.contains(">0.5</text>") && svg.contains(">1.0</text>"));
    }
}
