//! ACC and FM (section 6 of ALGORITHM.md) on a small hand-made results matrix, and its Markdown.

use iuf_metrics::ResultsMatrix;

/// Three steps, four classes; step 0 learns a, b; step 1 learns c; step 2 learns d.
///
/// ```text
/// step   a     b     c     d
/// 0      0.90  0.80  -     -
/// 1      0.85  0.82  0.70  -
/// 2      0.80  0.75  0.60  0.95
/// ```
fn matrix() -> ResultsMatrix {
    let mut r = ResultsMatrix::new(["a", "b", "c", "d"], 3).unwrap();
    let rows: [&[Option<f64>]; 3] = [
        &[Some(0.90), Some(0.80), None, None],
        &[Some(0.85), Some(0.82), Some(0.70), None],
        &[Some(0.80), Some(0.75), Some(0.60), Some(0.95)],
    ];
    for (step, row) in rows.iter().enumerate() {
        for (class, value) in row.iter().enumerate() {
            if let Some(v) = value {
                r.set(step, class, *v).unwrap();
            }
        }
    }
    r
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[test]
fn acc_is_the_mean_of_the_last_row() {
    let r = matrix();
    // (0.80 + 0.75 + 0.60 + 0.95) / 4 = 0.775
    assert!(close(r.acc().unwrap(), 0.775));
    // After step 1: (0.85 + 0.82 + 0.70) / 3 = 0.79; after step 0: 0.85.
    assert!(close(r.acc_at(1).unwrap(), 0.79));
    assert!(close(r.acc_at(0).unwrap(), 0.85));
}

#[test]
fn fm_is_the_mean_drop_from_the_best_earlier_value() {
    let r = matrix();
    // Classes learned before the last step (2): a, b, c (d is new at step 2, excluded).
    // a: max(0.90, 0.85) - 0.80 = 0.10; b: max(0.80, 0.82) - 0.75 = 0.07; c: 0.70 - 0.60 = 0.10.
    // FM = 0.27 / 3 = 0.09.
    assert!(close(r.fm().unwrap(), 0.09));
    // After step 1: a: 0.90 - 0.85 = 0.05, b: 0.80 - 0.82 = -0.02 (backward transfer counts
    // negative); c is new. FM = 0.03 / 2 = 0.015.
    assert!(close(r.fm_at(1).unwrap(), 0.015));
    assert_eq!(r.fm_at(0), None);
    assert_eq!(r.learned_at(2), Some(1));
    assert_eq!(r.learned_at(3), Some(2));
}

#[test]
fn one_step_has_acc_but_no_fm() {
    let mut r = ResultsMatrix::new(["only"], 1).unwrap();
    r.set(0, 0, 0.5).unwrap();
    assert!(close(r.acc().unwrap(), 0.5));
    assert_eq!(r.fm(), None);
}

#[test]
fn markdown_table_has_every_cell() {
    let markdown = matrix().to_markdown();
    let expected = "\
| step | a | b | c | d | ACC | FM |
|---:|---:|---:|---:|---:|---:|---:|
| 0 | 0.9000 | 0.8000 | - | - | 0.8500 | - |
| 1 | 0.8500 | 0.8200 | 0.7000 | - | 0.7900 | 0.0150 |
| 2 | 0.8000 | 0.7500 | 0.6000 | 0.9500 | 0.7750 | 0.0900 |
";
    assert_eq!(markdown, expected);
}

#[test]
fn accessors_expose_everything_for_serialisation() {
    let r = matrix();
    assert_eq!(r.classes(), ["a", "b", "c", "d"]);
    assert_eq!(r.steps(), 3);
    assert_eq!(r.get(1, 2), Some(0.70));
    assert_eq!(r.get(0, 2), None);
}

/// Guarantee: a class whose metric is undefined (e.g. pixel AUROC of an object whose defect masks
/// are all empty) is learned at the step that marks it, shows "n/a", and changes neither ACC, FM
/// nor the learned step of the other classes: they equal those of the matrix without that class.
#[test]
fn an_undefined_metric_leaves_acc_fm_and_learned_steps_of_the_others_alone() {
    let full = matrix();
    let mut r = ResultsMatrix::new(["a", "b", "c", "d"], 3).unwrap();
    let mut without_b = ResultsMatrix::new(["a", "c", "d"], 3).unwrap();
    for step in 0..3 {
        for class in 0..4 {
            let Some(v) = full.get(step, class) else {
                continue;
            };
            if class == 1 {
                r.set_undefined(step, class).unwrap();
            } else {
                r.set(step, class, v).unwrap();
                without_b
                    .set(step, class - usize::from(class > 1), v)
                    .unwrap();
            }
        }
    }
    for step in 0..3 {
        assert_eq!(
            r.acc_at(step),
            without_b.acc_at(step),
            "ACC after step {step}"
        );
        assert_eq!(r.fm_at(step), without_b.fm_at(step), "FM after step {step}");
        assert_eq!(r.get(step, 1), None);
        assert!(r.is_undefined(step, 1));
    }
    // a: 0.80, c: 0.60, d: 0.95; FM: a 0.90 - 0.80, c 0.70 - 0.60.
    assert!(close(r.acc().unwrap(), 2.35 / 3.0));
    assert!(close(r.fm().unwrap(), 0.10));
    assert_eq!(
        (0..4).map(|c| r.learned_at(c)).collect::<Vec<_>>(),
        [Some(0), Some(0), Some(1), Some(2)]
    );
    assert!(!r.is_undefined(0, 2), "not learned yet is not undefined");
    let markdown = r.to_markdown();
    assert!(
        markdown.contains("| 0 | 0.9000 | n/a | - | - | 0.9000 | - |"),
        "{markdown}"
    );

    // Undefined when learned, defined later: learned at the first step all the same, and with no
    // earlier value it has no forgetting yet.
    let mut r = ResultsMatrix::new(["a", "c"], 3).unwrap();
    r.set(0, 0, 0.9).unwrap();
    r.set_undefined(1, 1).unwrap();
    r.set(1, 0, 0.8).unwrap();
    r.set(2, 0, 0.7).unwrap();
    r.set(2, 1, 0.5).unwrap();
    assert_eq!(r.learned_at(1), Some(1));
    assert!(close(r.fm().unwrap(), 0.2));
    assert!(close(r.acc().unwrap(), 0.6));
    assert!(r.set_undefined(3, 0).is_err() && r.set_undefined(0, 2).is_err());
}
