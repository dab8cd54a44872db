//! Plain-text tables for the terminal: a header, a rule, left-aligned text and right-aligned numbers.

/// Renders `rows` under `header`; columns whose cells all parse as numbers (or are `-` or `n/a`)
/// are right-aligned.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let cols = header.len();
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(cols) {
            width[i] = width[i].max(cell.chars().count());
        }
    }
    let numeric: Vec<bool> = (0..cols)
        .map(|i| {
            rows.iter().all(|r| {
                r.get(i).is_none_or(|c| {
                    let c = c.trim_end_matches('%');
                    c == "-" || c == "n/a" || c.is_empty() || c.parse::<f64>().is_ok()
                })
            })
        })
        .collect();
    let line = |cells: Vec<&str>| -> String {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if numeric[i] {
                    format!("{c:>w$}", w = width[i])
                } else {
                    format!("{c:<w$}", w = width[i])
                }
            })
            .collect();
        parts.join("  ").trim_end().to_string()
    };
    let mut out = line(header.to_vec());
    out.push('\n');
    let rule: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
    out.push_str(&rule.join("  "));
    out.push('\n');
    for row in rows {
        let cells: Vec<&str> = (0..cols)
            .map(|i| row.get(i).map_or("", String::as_str))
            .collect();
        out.push_str(&line(cells));
        out.push('\n');
    }
    out
}

/// A metric in [0, 1] as a percentage with one decimal.
pub fn pct(v: f64) -> String {
    if v.is_finite() {
        format!("{:.1}", 100.0 * v)
    } else {
        "-".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_align_right_text_left() {
        let t = render(
            &["class", "AUROC"],
            &[
                vec!["bottle".into(), "99.5".into()],
                vec!["pill".into(), "7.0".into()],
            ],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "class   AUROC");
        assert_eq!(lines[2], "bottle   99.5");
        assert_eq!(lines[3], "pill      7.0");
        assert_eq!(pct(0.9876), "98.8");
        assert_eq!(pct(f64::NAN), "-");
    }
}
