//! Models learned apart, merged into one (`iuf merge`): one `iuf train` per product, on any
//! machine, then one model file that knows every product.
//!
//! Only methods without a network merge: every tensor they keep is one object's (its memory,
//! Gaussian, tiles or class mean, under `state.<scorer>.<object>`), computed from that object's
//! images alone, so the union of the sources' tensors is the model that would have learned them
//! together, and each object scores bit for bit as in its source. The object prototypes are rows
//! per object slot and are gathered into the merged model's slots; the calibration (map
//! normalisation, score quantiles, threshold) is per object and carried over as it is.
//!
//! The sources must agree on what makes their maps comparable: the backbone and the digest of
//! its weights, the method, and the configuration (all of it but the number of object slots,
//! which grows to hold every object). A difference is refused with the file and the field.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use candle_nn::VarMap;
use iuf_model::{LearnedClass, LoadedModel, ModelMeta};

use crate::error::{Error, Result};
use crate::learner::LearnerState;
use crate::prototypes::Prototypes;
use crate::scorer::{is_update_statistic, PER_OBJECT_PREFIXES};

const PROTOTYPE_PREFIX: &str = "state.prototype.";

/// One model file to merge.
pub struct Source<'a> {
    /// The file, for messages.
    pub path: &'a Path,
    /// Its content, as [`iuf_model::load_model`] read it (tensors in their stored dtype).
    pub model: &'a LoadedModel,
    /// New names of some of its objects (old name to new); the others keep theirs. A product
    /// repeated under other names, as the synthetic many-object model of `cargo xtask` does.
    pub rename: BTreeMap<String, String>,
}

impl<'a> Source<'a> {
    /// A source whose objects keep their names.
    pub fn new(path: &'a Path, model: &'a LoadedModel) -> Self {
        Self {
            path,
            model,
            rename: BTreeMap::new(),
        }
    }

    fn name_of<'b>(&'b self, object: &'b str) -> &'b str {
        self.rename.get(object).map_or(object, String::as_str)
    }
}

/// The merged model: metadata and state tensors, ready to be written.
pub struct Merged {
    pub meta: ModelMeta,
    pub state: Vec<(String, Tensor)>,
    /// Every object, with the file it came from.
    pub objects: Vec<(String, PathBuf)>,
}

impl Merged {
    /// Writes the model file (atomically, as every model file is).
    pub fn save(&self, path: &Path) -> Result<()> {
        iuf_model::save_model(path, &VarMap::new(), &self.meta, &self.state)?;
        Ok(())
    }

    /// The merged model without the statistics exact updates need (the Gaussians' image counts
    /// and scatter matrices, most of a default object's bytes): the file a service loads, which
    /// scores every object exactly as with them. Its configuration says
    /// `gaussian.keep_statistics: false`, so `iuf learn --more` refuses its objects (with that
    /// reason): images are added to the sources, merged again afterwards.
    pub fn without_statistics(mut self) -> Result<Self> {
        self.state.retain(|(name, _)| !is_update_statistic(name));
        let mut st: LearnerState = serde_json::from_value(self.meta.extra.clone())
            .map_err(|e| Error::Msg(format!("reading the merged learner state: {e}")))?;
        st.train_config.gaussian.keep_statistics = false;
        self.meta.extra = serde_json::to_value(&st)
            .map_err(|e| Error::Msg(format!("serialising the merged learner state: {e}")))?;
        Ok(self)
    }
}

/// The learner state of a model file, or a message naming it.
fn learner_state(path: &Path, model: &LoadedModel) -> Result<LearnerState> {
    serde_json::from_value(model.meta.extra.clone()).map_err(|e| Error::RunDir {
        path: path.to_path_buf(),
        msg: format!(
            "not a model written by the iuf learner (metadata `extra` does not parse: {e})"
        ),
    })
}

/// Paths (`a.b.c`) where two JSON values differ, with both values, at most `limit` of them.
fn differences(a: &serde_json::Value, b: &serde_json::Value, limit: usize) -> Vec<String> {
    fn walk(a: &serde_json::Value, b: &serde_json::Value, at: &str, out: &mut Vec<String>) {
        use serde_json::Value::Object;
        match (a, b) {
            (Object(x), Object(y)) => {
                let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let here = if at.is_empty() {
                        k.clone()
                    } else {
                        format!("{at}.{k}")
                    };
                    let null = serde_json::Value::Null;
                    walk(
                        x.get(k).unwrap_or(&null),
                        y.get(k).unwrap_or(&null),
                        &here,
                        out,
                    );
                }
            }
            _ if a != b => out.push(format!("`{at}` is {a} there and {b} here")),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(a, b, "", &mut out);
    out.truncate(limit);
    out
}

/// The object a per-object state tensor belongs to among `objects`, with the scorer's prefix and
/// what follows the object's name (`state.gaussian.pill.mean` is `pill` with `.mean`). The longest
/// name wins, so `a.b` is not taken for `a` with a suffix `.b`.
fn owner<'o>(name: &str, objects: &'o [String]) -> Option<(&'static str, &'o str, String)> {
    let prefix = PER_OBJECT_PREFIXES
        .iter()
        .find(|p| name.starts_with(**p))
        .copied()?;
    let rest = &name[prefix.len()..];
    objects
        .iter()
        .filter(|o| {
            rest.strip_prefix(o.as_str())
                .is_some_and(|s| s.is_empty() || s.starts_with('.') || s.starts_with('/'))
        })
        .max_by_key(|o| o.len())
        .map(|o| (prefix, o.as_str(), rest[o.len()..].to_string()))
}

/// Merges `sources` (at least one) into one model: every object of every source, each scored as
/// its source scores it. Refuses, naming the file and the difference, sources whose backbone,
/// backbone weights, method or configuration differ from the first's, objects present twice,
/// and methods with a reconstruction network.
pub fn merge(sources: &[Source<'_>]) -> Result<Merged> {
    let first = sources
        .first()
        .ok_or_else(|| Error::Msg("nothing to merge: no model file given".into()))?;
    let refuse = |s: &Source<'_>, msg: String| Error::RunDir {
        path: s.path.to_path_buf(),
        msg,
    };
    let base = learner_state(first.path, first.model)?;
    let mut states = Vec::with_capacity(sources.len());
    for s in sources {
        let st = learner_state(s.path, s.model)?;
        if st.strategy.trains_network() || s.model.meta.network {
            return Err(refuse(
                s,
                format!(
                    "method `{}` keeps a reconstruction network, and networks trained apart cannot \
                     be merged into one (only methods without a network merge: memory, \
                     class-mean); learn the objects into one model with `iuf learn` instead",
                    st.strategy
                ),
            ));
        }
        let Some(weights) = &st.backbone_weights else {
            return Err(refuse(
                s,
                "records no digest of its backbone weights (written by an older iuf), so it \
                 cannot be shown to share the other models' features; train it again"
                    .into(),
            ));
        };
        if s.model.meta.backbone != first.model.meta.backbone {
            return Err(refuse(
                s,
                format!(
                    "backbone `{}` differs from `{}` of {}",
                    s.model.meta.backbone,
                    first.model.meta.backbone,
                    first.path.display()
                ),
            ));
        }
        if Some(weights) != base.backbone_weights.as_ref() {
            return Err(refuse(
                s,
                format!(
                    "backbone weights {weights} differ from {} of {} (the same backbone with \
                     other weights gives other features; train both with the same --weights)",
                    base.backbone_weights.as_deref().unwrap_or("none"),
                    first.path.display()
                ),
            ));
        }
        if st.strategy != base.strategy {
            return Err(refuse(
                s,
                format!(
                    "method `{}` differs from `{}` of {}",
                    st.strategy,
                    base.strategy,
                    first.path.display()
                ),
            ));
        }
        // Everything of the configuration must agree but the number of object slots and the
        // cross-fitting folds (they set each object's threshold when it was learned, which the
        // merge carries; scores do not depend on them).
        let mut cfg = st.train_config.clone();
        cfg.model.num_classes = base.train_config.model.num_classes;
        cfg.calibration.folds = base.train_config.calibration.folds;
        let mut meta_cfg = s.model.meta.config.clone();
        meta_cfg.num_classes = first.model.meta.config.num_classes;
        if cfg != base.train_config || meta_cfg != first.model.meta.config {
            let mut diff = differences(&json(&base.train_config), &json(&cfg), 5);
            if diff.is_empty() {
                diff = differences(&json(&first.model.meta.config), &json(&meta_cfg), 5);
            }
            return Err(refuse(
                s,
                format!(
                    "its configuration differs from that of {} ({}): models merge only when \
                     they were learned with the same settings",
                    first.path.display(),
                    diff.join("; ")
                ),
            ));
        }
        if !st.gram_counts.is_empty() {
            return Err(refuse(
                s,
                "holds Gram matrices of a network; only models without a network merge".into(),
            ));
        }
        states.push(st);
    }

    // Object names: unique over all sources.
    let mut objects: Vec<(String, PathBuf)> = Vec::new();
    for s in sources {
        for l in &s.model.meta.learned {
            let name = s.name_of(&l.class);
            if let Some((_, other)) = objects.iter().find(|(o, _)| o == name) {
                return Err(refuse(
                    s,
                    format!(
                        "object `{name}` is also in {}; every object must come from one model \
                         only (leave one of the files out)",
                        other.display()
                    ),
                ));
            }
            objects.push((name.to_string(), s.path.to_path_buf()));
        }
    }
    let k = sources
        .iter()
        .map(|s| s.model.meta.config.num_classes)
        .max()
        .unwrap_or(0)
        .max(objects.len());
    let class_names: Vec<String> = objects.iter().map(|(o, _)| o.clone()).collect();
    let slot = |name: &str| class_names.iter().position(|c| c == name).expect("listed");

    let mut state_tensors: Vec<(String, Tensor)> = Vec::new();
    let mut prototype_rows = Vec::new();
    let mut prototypes = Vec::with_capacity(sources.len());
    for s in sources {
        prototypes.push(Prototypes::from_state(&s.model.state).ok_or_else(|| {
            refuse(
                s,
                "holds no object prototypes (written before iuf recognised objects by them); \
                 train it again"
                    .into(),
            )
        })?);
    }
    let mut learned = Vec::new();
    let mut steps = Vec::new();
    let mut merged = LearnerState {
        strategy: base.strategy,
        train_config: base.train_config.clone(),
        steps: Vec::new(),
        calibration: BTreeMap::new(),
        gram_counts: Vec::new(),
        backbone_weights: base.backbone_weights.clone(),
        norms: BTreeMap::new(),
        images: BTreeMap::new(),
        threshold_settings: BTreeMap::new(),
        good_added: Vec::new(),
    };
    merged.train_config.model.num_classes = k;
    let mut thresholds = BTreeMap::new();
    for ((s, st), protos) in sources.iter().zip(&states).zip(&prototypes) {
        let own: Vec<String> = s
            .model
            .meta
            .learned
            .iter()
            .map(|l| l.class.clone())
            .collect();
        for (name, t) in &s.model.state {
            if name.starts_with(PROTOTYPE_PREFIX) {
                continue;
            }
            let (prefix, object, rest) = owner(name, &own).ok_or_else(|| {
                refuse(
                    s,
                    format!(
                        "state tensor `{name}` belongs to none of its objects {own:?}, so it \
                         cannot be merged"
                    ),
                )
            })?;
            state_tensors.push((format!("{prefix}{}{rest}", s.name_of(object)), t.clone()));
        }
        // Good images added to the source's objects, in the source's order.
        for g in &st.good_added {
            let mut g = g.clone();
            g.object = s.name_of(&g.object).to_string();
            merged.good_added.push(g);
        }
        // Step records keep their order, numbered after the previous sources' steps.
        let offset = steps.len();
        for r in &st.steps {
            let mut r = r.clone();
            r.step += offset;
            r.classes = r.classes.iter().map(|c| s.name_of(c).to_string()).collect();
            steps.push(r);
        }
        for l in &s.model.meta.learned {
            let name = s.name_of(&l.class).to_string();
            let from = s
                .model
                .meta
                .class_names
                .iter()
                .position(|c| *c == l.class)
                .ok_or_else(|| refuse(s, format!("object `{}` has no class slot", l.class)))?;
            prototype_rows.push((protos, from, slot(&name)));
            learned.push(LearnedClass {
                class: name.clone(),
                step: l.step + offset,
            });
            if let Some(q) = st.calibration.get(&l.class) {
                merged.calibration.insert(name.clone(), q.clone());
            }
            if let Some(n) = st.norms.get(&l.class) {
                merged.norms.insert(name.clone(), n.clone());
            }
            // What `learn --more` and `iuf threshold` need and record, per object.
            if let Some(n) = st.images.get(&l.class) {
                merged.images.insert(name.clone(), *n);
            }
            if let Some(t) = st.threshold_settings.get(&l.class) {
                merged.threshold_settings.insert(name.clone(), t.clone());
            }
            if let Some(t) = s.model.meta.thresholds.get(&l.class) {
                thresholds.insert(name.clone(), *t);
            }
        }
    }
    merged.steps = steps;
    let mut seen = BTreeSet::new();
    for (name, _) in &state_tensors {
        if !seen.insert(name.as_str()) {
            return Err(Error::Msg(format!(
                "two sources hold state tensor `{name}` (object names that differ only where a \
                 tensor name can tell them apart); rename one of the objects"
            )));
        }
    }
    state_tensors.extend(Prototypes::gather(k, &prototype_rows)?.to_state());
    state_tensors.sort_by(|a, b| a.0.cmp(&b.0));

    let mut meta = first.model.meta.clone();
    meta.config.num_classes = k;
    meta.class_names = class_names;
    meta.learned = learned;
    meta.thresholds = thresholds;
    meta.network = false;
    meta.extra = serde_json::to_value(&merged)
        .map_err(|e| Error::Msg(format!("serialising the merged learner state: {e}")))?;
    Ok(Merged {
        meta,
        state: state_tensors,
        objects,
    })
}

/// `v` as JSON, for [`differences`] (configurations always serialise).
fn json<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// Guarantee: a state tensor goes to the object whose name it carries, the longest name
    /// winning (`a.b` is not `a` with a suffix), and tensors of no object are not claimed.
    #[test]
    fn state_tensors_belong_to_the_object_they_name() {
        let objects = names(&["a", "a.b", "pill"]);
        assert_eq!(
            owner("state.memory.a.b", &objects),
            Some(("state.memory.", "a.b", String::new()))
        );
        assert_eq!(
            owner("state.gaussian.a.b.mean", &objects),
            Some(("state.gaussian.", "a.b", ".mean".to_string()))
        );
        assert_eq!(
            owner("state.gaussian.a.precision", &objects),
            Some(("state.gaussian.", "a", ".precision".to_string()))
        );
        assert_eq!(
            owner("state.tiles.pill/3", &objects),
            Some(("state.tiles.", "pill", "/3".to_string()))
        );
        assert_eq!(owner("state.memory.pills", &objects), None);
        assert_eq!(owner("state.gram.layer", &objects), None);
    }

    /// Guarantee: a configuration difference is named by its path and both values.
    #[test]
    fn differences_name_the_field_and_both_values() {
        let a = serde_json::json!({"seed": 0, "memory": {"patches": 4096, "f16": true}});
        let b = serde_json::json!({"seed": 0, "memory": {"patches": 2048, "f16": true}});
        assert_eq!(
            differences(&a, &b, 5),
            vec!["`memory.patches` is 4096 there and 2048 here".to_string()]
        );
        assert!(differences(&a, &a, 5).is_empty());
    }
}
