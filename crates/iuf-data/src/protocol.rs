//! Incremental task protocols (ALGORITHM.md section 7): the paper's named protocols, embedded from
//! `datasets/protocols.json`, a joint single step, and custom orders such as
//! `bottle,pill | tire | magnetic_tile`.
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::classes::{is_full_list, MVTEC_AD, VISA};
use crate::error::{Error, Result};

/// The protocol definitions shared with the rest of the project (one source of truth).
pub const PROTOCOLS_JSON: &str = include_str!("../../../datasets/protocols.json");

/// A public benchmark with a fixed class list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KnownDataset {
    MvtecAd,
    Visa,
}

impl KnownDataset {
    pub fn classes(self) -> &'static [&'static str] {
        match self {
            KnownDataset::MvtecAd => &MVTEC_AD,
            KnownDataset::Visa => &VISA,
        }
    }

    pub fn display_name(self) -> &'static str {
        match self {
            KnownDataset::MvtecAd => "MVTec AD",
            KnownDataset::Visa => "VisA",
        }
    }
}

/// One of the paper's protocols as written in `datasets/protocols.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaperProtocol {
    pub name: String,
    pub dataset: KnownDataset,
    pub description: String,
    pub steps: Vec<Vec<String>>,
}

#[derive(Deserialize)]
struct ProtocolFile {
    protocols: Vec<PaperProtocol>,
}

/// The paper's protocols (14-1, 10-5, 3x5, 10-1x5 on MVTec AD; 11-1, 8-4, 8-1x4 on VisA).
pub fn paper_protocols() -> Result<&'static [PaperProtocol]> {
    static PARSED: OnceLock<std::result::Result<Vec<PaperProtocol>, String>> = OnceLock::new();
    PARSED
        .get_or_init(|| {
            serde_json::from_str::<ProtocolFile>(PROTOCOLS_JSON)
                .map(|f| f.protocols)
                .map_err(|e| e.to_string())
        })
        .as_deref()
        .map_err(|e| Error::Protocol {
            spec: "datasets/protocols.json".into(),
            reason: format!("expected valid embedded protocol definitions; found {e}"),
        })
}

/// Spec words that mean "every class in one step" (the joint-training upper bound of section 8).
pub const JOINT_SPECS: [&str; 2] = ["all", "joint"];

/// A sequence of steps; each step lists the classes that are new in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Protocol {
    pub name: String,
    pub steps: Vec<Vec<String>>,
}

/// Spaces and case do not matter in protocol names: `3 x 5` is `3x5`, `10-1×5` is `10-1x5`.
fn normalise_name(spec: &str) -> String {
    spec.split_whitespace()
        .collect::<String>()
        .to_lowercase()
        .replace('×', "x")
}

/// True for specs shaped like a protocol name (`12-3`, `4x2`, `9-1x3`), for a better error.
fn looks_like_protocol_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars().any(|c| c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_digit() || c == '-' || c == 'x')
}

impl Protocol {
    /// Parses a spec against the dataset's fixed class list (the class ids of the whole run):
    /// - `all` or `joint`: one step with every class;
    /// - a paper name (`14-1`, `10-5`, `3x5`, `10-1x5`, `11-1`, `8-4`, `8-1x4`): needs `classes` to be
    ///   the full MVTec AD or VisA list;
    /// - a custom order: steps separated by `|`, classes within a step by `,`.
    ///
    /// Unknown classes, a class listed twice and empty steps are errors.
    pub fn parse(spec: &str, classes: &[String]) -> Result<Self> {
        let err = |reason: String| Error::Protocol {
            spec: spec.to_string(),
            reason,
        };
        let name = normalise_name(spec);
        if name.is_empty() {
            return Err(err(
                "expected a protocol name or steps such as `bottle,pill | tire`; found an empty spec".into(),
            ));
        }
        if JOINT_SPECS.contains(&name.as_str()) {
            if classes.is_empty() {
                return Err(err(
                    "expected a dataset with at least one class; found none".into(),
                ));
            }
            return Ok(Protocol {
                name: "joint".into(),
                steps: vec![classes.to_vec()],
            });
        }
        if let Some(paper) = paper_protocols()?.iter().find(|p| p.name == name) {
            let list = paper.dataset.classes();
            if !is_full_list(classes, list) {
                let missing: Vec<&str> = list
                    .iter()
                    .filter(|c| !classes.iter().any(|n| n == *c))
                    .copied()
                    .collect();
                return Err(err(format!(
                    "expected the full {} class list ({} classes) for this paper protocol; found {} \
                     class(es) ({}), missing: {}. Write the steps instead, e.g. `a,b | c`",
                    paper.dataset.display_name(),
                    list.len(),
                    classes.len(),
                    classes.join(", "),
                    if missing.is_empty() { "none (extra classes present)".to_string() } else { missing.join(", ") }
                )));
            }
            return Ok(Protocol {
                name: paper.name.clone(),
                steps: paper.steps.clone(),
            });
        }
        Self::parse_custom(spec, classes)
    }

    fn parse_custom(spec: &str, classes: &[String]) -> Result<Self> {
        let err = |reason: String| Error::Protocol {
            spec: spec.to_string(),
            reason,
        };
        let mut steps: Vec<Vec<String>> = Vec::new();
        for (s, step_text) in spec.split('|').enumerate() {
            if step_text.trim().is_empty() {
                return Err(err(format!(
                    "expected at least one class in step {}; found an empty step",
                    s + 1
                )));
            }
            let mut step = Vec::new();
            for raw in step_text.split(',') {
                let class = raw.trim();
                if class.is_empty() {
                    return Err(err(format!(
                        "expected a class name between commas in step {}; found an empty name",
                        s + 1
                    )));
                }
                if !classes.iter().any(|c| c == class) {
                    let hint = if looks_like_protocol_name(&normalise_name(class)) {
                        let names: Vec<String> = paper_protocols()?
                            .iter()
                            .map(|p| format!("{} ({})", p.name, p.dataset.display_name()))
                            .collect();
                        format!(" (paper protocols: {})", names.join(", "))
                    } else {
                        String::new()
                    };
                    return Err(err(format!(
                        "expected class names of the dataset ({}){hint}; found unknown class `{class}` in step {}",
                        classes.join(", "),
                        s + 1
                    )));
                }
                if let Some(prev) = steps.iter().position(|st| st.iter().any(|c| c == class)) {
                    return Err(err(format!(
                        "expected each class once; found `{class}` in step {} and again in step {}",
                        prev + 1,
                        s + 1
                    )));
                }
                if step.iter().any(|c: &String| c == class) {
                    return Err(err(format!(
                        "expected each class once; found `{class}` twice in step {}",
                        s + 1
                    )));
                }
                step.push(class.to_string());
            }
            steps.push(step);
        }
        let name = steps
            .iter()
            .map(|s| s.join(","))
            .collect::<Vec<_>>()
            .join(" | ");
        Ok(Protocol { name, steps })
    }

    pub fn num_steps(&self) -> usize {
        self.steps.len()
    }

    /// Classes first trained in `step` (empty past the last step).
    pub fn new_classes(&self, step: usize) -> &[String] {
        self.steps.get(step).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Every class trained in steps `0..=step`, in protocol order: the classes to evaluate after `step`.
    pub fn seen_after(&self, step: usize) -> Vec<String> {
        self.steps
            .iter()
            .take(step.saturating_add(1))
            .flatten()
            .cloned()
            .collect()
    }

    /// Every class of the protocol, in the order they are learned.
    pub fn all_classes(&self) -> Vec<String> {
        self.steps.concat()
    }

    /// The step in which `class` is learned.
    pub fn step_of(&self, class: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.iter().any(|c| c == class))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn embedded_protocols_partition_their_dataset_in_order() {
        let protocols = paper_protocols().unwrap();
        let names: Vec<&str> = protocols.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            ["14-1", "10-5", "3x5", "10-1x5", "11-1", "8-4", "8-1x4"]
        );
        for p in protocols {
            assert_eq!(p.steps.concat(), p.dataset.classes(), "{}", p.name);
            assert!(p.steps.iter().all(|s| !s.is_empty()), "{}", p.name);
        }
    }

    #[test]
    fn paper_protocols_match_section_7() {
        let mvtec = list(&MVTEC_AD);
        let visa = list(&VISA);
        let p = Protocol::parse("14-1", &mvtec).unwrap();
        assert_eq!(
            (p.num_steps(), p.new_classes(1)),
            (2, &list(&["zipper"])[..])
        );
        let p = Protocol::parse("10-5", &mvtec).unwrap();
        assert_eq!(
            p.new_classes(1),
            list(&["tile", "toothbrush", "transistor", "wood", "zipper"])
        );
        let p = Protocol::parse("3 x 5", &mvtec).unwrap();
        assert_eq!(p.num_steps(), 5);
        assert_eq!(p.new_classes(0), list(&["bottle", "cable", "capsule"]));
        assert_eq!(p.seen_after(1).len(), 6);
        let p = Protocol::parse("10-1x5", &mvtec).unwrap();
        assert_eq!(p.num_steps(), 6);
        assert_eq!(p.new_classes(5), list(&["zipper"]));
        assert_eq!(
            p.seen_after(2).last().map(String::as_str),
            Some("toothbrush")
        );
        let p = Protocol::parse("11-1", &visa).unwrap();
        assert_eq!(p.new_classes(1), list(&["pipe_fryum"]));
        let p = Protocol::parse("8-4", &visa).unwrap();
        assert_eq!(
            p.new_classes(1),
            list(&["pcb2", "pcb3", "pcb4", "pipe_fryum"])
        );
        let p = Protocol::parse("8-1 x 4", &visa).unwrap();
        assert_eq!(p.num_steps(), 5);
        assert_eq!(p.new_classes(4), list(&["pipe_fryum"]));
        assert_eq!(p.seen_after(99).len(), 12);
        assert!(p.new_classes(5).is_empty());
    }

    #[test]
    fn paper_names_need_the_full_class_list() {
        let mini = list(&["bottle", "magnetic_tile", "pill", "tire"]);
        let e = Protocol::parse("14-1", &mini).unwrap_err().to_string();
        assert!(
            e.contains("full MVTec AD class list") && e.contains("missing: cable"),
            "{e}"
        );
        // A VisA name on MVTec AD is refused too.
        assert!(Protocol::parse("8-4", &list(&MVTEC_AD)).is_err());
    }

    #[test]
    fn custom_and_joint_specs() {
        let mini = list(&["bottle", "magnetic_tile", "pill", "tire"]);
        let p = Protocol::parse(" bottle, pill |tire| magnetic_tile ", &mini).unwrap();
        assert_eq!(
            p.steps,
            vec![
                list(&["bottle", "pill"]),
                list(&["tire"]),
                list(&["magnetic_tile"])
            ]
        );
        assert_eq!(p.name, "bottle,pill | tire | magnetic_tile");
        assert_eq!(p.seen_after(1), list(&["bottle", "pill", "tire"]));
        assert_eq!(p.step_of("magnetic_tile"), Some(2));
        let j = Protocol::parse("ALL", &mini).unwrap();
        assert_eq!(
            (j.name.as_str(), j.steps.clone()),
            ("joint", vec![mini.clone()])
        );
    }

    #[test]
    fn custom_spec_errors_are_clear() {
        let mini = list(&["bottle", "magnetic_tile", "pill", "tire"]);
        let msg = |s: &str| Protocol::parse(s, &mini).unwrap_err().to_string();
        assert!(msg("bottle | screw").contains("unknown class `screw` in step 2"));
        assert!(msg("bottle | pill,bottle").contains("`bottle` in step 1 and again in step 2"));
        assert!(msg("bottle,bottle").contains("twice in step 1"));
        assert!(msg("bottle || pill").contains("step 2; found an empty step"));
        assert!(msg("bottle | pill |").contains("step 3; found an empty step"));
        assert!(msg("bottle,,pill").contains("empty name"));
        assert!(msg("   ").contains("empty spec"));
        assert!(msg("2-1").contains("paper protocols: 14-1 (MVTec AD)"));
    }
}
