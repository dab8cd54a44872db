//! A deterministic procedural demo dataset in MVTec AD layout, generated from a seed with no input
//! files: a woven fabric (textured surface), a metal washer on a background (object, with small
//! position and rotation changes) and a perforated plate (regular pattern); defects are cracks,
//! missing parts, scratches and stains with exact masks. It is what the CLI runs on when it is
//! given no dataset.
mod paint;
mod scenes;
pub mod small_defects;

use std::fs;
use std::path::{Path, PathBuf};

use ::image::{GrayImage, RgbImage};
use rand::SeedableRng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use scenes::{DefectKind, Scene};

/// The demo class names, in the order `DatasetRoot` lists them.
pub const CLASSES: [&str; 3] = ["fabric", "mesh", "washer"];
/// The defect types of every demo class (test folder names).
pub const DEFECT_TYPES: [&str; 4] = ["crack", "missing_part", "scratch", "stain"];
/// Written into the output folder; its presence marks folders this generator may overwrite.
pub const MARKER_FILE: &str = ".iuf-demo.json";

/// What to generate. Every image is a pure function of (seed, class, split, index).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DemoConfig {
    pub seed: u64,
    /// Normal training images per class.
    pub train_per_class: usize,
    /// Test images per class: a third normal (at least one), the rest spread over the defect types.
    pub test_per_class: usize,
    /// Side of the square images in pixels.
    pub size: usize,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            train_per_class: 60,
            test_per_class: 30,
            size: 256,
        }
    }
}

impl DemoConfig {
    /// A small configuration for tests and smoke runs.
    pub fn tiny() -> Self {
        Self {
            seed: 0,
            train_per_class: 8,
            test_per_class: 8,
            size: 64,
        }
    }

    pub fn check(&self) -> Result<()> {
        let bad = |reason: String| {
            Err(Error::Config {
                what: "demo config",
                reason,
            })
        };
        if !(32..=4096).contains(&self.size) {
            return bad(format!(
                "expected size in 32..=4096 pixels; found {}",
                self.size
            ));
        }
        if self.train_per_class == 0 {
            return bad("expected train_per_class >= 1; found 0".into());
        }
        if self.test_per_class < 2 {
            return bad(format!(
                "expected test_per_class >= 2 (normal and defective images); found {}",
                self.test_per_class
            ));
        }
        if self.train_per_class.max(self.test_per_class) > 100_000 {
            return bad("expected at most 100000 images per split and class".into());
        }
        Ok(())
    }

    /// Normal test images per class.
    pub fn test_normal_per_class(&self) -> usize {
        (self.test_per_class / 3).max(1)
    }
}

/// Mixes the seed with an image's identity (splitmix64 steps), so images are independent of the
/// order, or the thread, in which they are generated.
fn image_seed(seed: u64, parts: [u64; 3]) -> u64 {
    let mut z = seed;
    for p in parts {
        z = z.wrapping_add(p).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
    }
    z
}

struct Job {
    scene: Scene,
    defect: Option<DefectKind>,
    image: PathBuf,
    mask: Option<PathBuf>,
    seed: u64,
}

fn jobs(dir: &Path, cfg: &DemoConfig) -> Vec<Job> {
    let mut jobs = Vec::new();
    for (ci, &scene) in Scene::ALL.iter().enumerate() {
        let class_dir = dir.join(scene.name());
        let normal = cfg.test_normal_per_class();
        // Normal images: training (seed part 0), then test (seed part 1).
        for (part, split, count) in [(0, "train", cfg.train_per_class), (1, "test", normal)] {
            for i in 0..count {
                jobs.push(Job {
                    scene,
                    defect: None,
                    image: class_dir.join(format!("{split}/good/{i:03}.png")),
                    mask: None,
                    seed: image_seed(cfg.seed, [ci as u64, part, i as u64]),
                });
            }
        }
        // Defective images go round-robin over the kinds; only kinds that get an image get a folder.
        let mut per_kind = [0usize; 4];
        for j in 0..cfg.test_per_class - normal {
            let k = j % DefectKind::ALL.len();
            let kind = DefectKind::ALL[k];
            let i = per_kind[k];
            per_kind[k] += 1;
            jobs.push(Job {
                scene,
                defect: Some(kind),
                image: class_dir.join(format!("test/{}/{i:03}.png", kind.folder())),
                mask: Some(
                    class_dir.join(format!("ground_truth/{}/{i:03}_mask.png", kind.folder())),
                ),
                seed: image_seed(cfg.seed, [ci as u64, 2 + k as u64, i as u64]),
            });
        }
    }
    jobs
}

fn save(path: &Path, write: impl FnOnce(&Path) -> ::image::ImageResult<()>) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    write(path).map_err(|source| Error::Encode {
        path: path.to_path_buf(),
        source,
    })
}

fn run_job(job: &Job, size: usize) -> Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(job.seed);
    let rendered = scenes::render(job.scene, &mut rng, size, job.defect);
    let pixels: Vec<u8> = rendered
        .color
        .iter()
        .flat_map(|c| c.map(|v| (v + 0.5).clamp(0.0, 255.0) as u8))
        .collect();
    let img = RgbImage::from_raw(size as u32, size as u32, pixels).ok_or_else(|| Error::Shape {
        what: format!("demo image {}", job.image.display()),
        expected: format!("{size}x{size}x3 bytes"),
        found: "a different length".into(),
    })?;
    save(&job.image, |p| {
        img.save_with_format(p, ::image::ImageFormat::Png)
    })?;
    if let (Some(path), Some(mask)) = (&job.mask, rendered.mask) {
        let bytes: Vec<u8> = mask.iter().map(|&m| if m { 255 } else { 0 }).collect();
        let m =
            GrayImage::from_raw(size as u32, size as u32, bytes).ok_or_else(|| Error::Shape {
                what: format!("demo mask {}", path.display()),
                expected: format!("{size}x{size} bytes"),
                found: "a different length".into(),
            })?;
        save(path, |p| m.save_with_format(p, ::image::ImageFormat::Png))?;
    }
    Ok(())
}

/// Makes room in `dir`: class folders left by an earlier run of this generator (marked by
/// [`MARKER_FILE`]) are removed; class folders of any other origin are never touched.
fn prepare(dir: &Path) -> Result<()> {
    let marker = dir.join(MARKER_FILE);
    let ours = marker.is_file();
    for class in CLASSES {
        let class_dir = dir.join(class);
        if !class_dir.exists() {
            continue;
        }
        if !ours {
            return Err(Error::Config {
                what: "demo output folder",
                reason: format!(
                    "expected {} not to exist or to come from an earlier demo run (with {MARKER_FILE}); \
                     found a folder of another origin, which is left untouched",
                    class_dir.display()
                ),
            });
        }
        fs::remove_dir_all(&class_dir).map_err(|e| Error::io(&class_dir, e))?;
    }
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))
}

/// Writes the demo dataset under `dir` (created if needed) in MVTec AD layout, in parallel, and
/// returns the class names written. The same config always gives byte-identical files.
pub fn generate(dir: &Path, cfg: &DemoConfig) -> Result<Vec<String>> {
    cfg.check()?;
    prepare(dir)?;
    let marker = dir.join(MARKER_FILE);
    let json = serde_json::to_string_pretty(cfg).map_err(|e| Error::Config {
        what: "demo config",
        reason: e.to_string(),
    })?;
    // The marker goes first so that an interrupted run can be cleaned up by the next one.
    fs::write(&marker, json).map_err(|e| Error::io(&marker, e))?;
    jobs(dir, cfg)
        .par_iter()
        .map(|job| run_job(job, cfg.size))
        .collect::<Result<()>>()?;
    Ok(CLASSES.iter().map(|c| c.to_string()).collect())
}

/// The class names of a complete earlier run with the same config in `dir`, if there is one
/// (lets a caller reuse it instead of generating again).
pub fn existing(dir: &Path, cfg: &DemoConfig) -> Option<Vec<String>> {
    let text = fs::read_to_string(dir.join(MARKER_FILE)).ok()?;
    let found: DemoConfig = serde_json::from_str(&text).ok()?;
    let complete = jobs(dir, cfg)
        .iter()
        .all(|j| j.image.is_file() && j.mask.as_ref().is_none_or(|m| m.is_file()));
    (found == *cfg && complete).then(|| CLASSES.iter().map(|c| c.to_string()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_check_rejects_degenerate_values() {
        assert!(DemoConfig::default().check().is_ok());
        assert!(DemoConfig::tiny().check().is_ok());
        for bad in [
            DemoConfig {
                size: 8,
                ..DemoConfig::default()
            },
            DemoConfig {
                train_per_class: 0,
                ..DemoConfig::default()
            },
            DemoConfig {
                test_per_class: 1,
                ..DemoConfig::default()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn jobs_split_tests_into_normal_and_each_defect_kind() {
        let cfg = DemoConfig::default();
        let jobs = jobs(Path::new("x"), &cfg);
        assert_eq!(jobs.len(), 3 * 90);
        let fabric: Vec<&Job> = jobs.iter().filter(|j| j.scene == Scene::Fabric).collect();
        assert_eq!(
            fabric.iter().filter(|j| j.defect.is_none()).count(),
            60 + 10
        );
        for kind in DefectKind::ALL {
            assert_eq!(fabric.iter().filter(|j| j.defect == Some(kind)).count(), 5);
        }
        let mut seeds: Vec<u64> = jobs.iter().map(|j| j.seed).collect();
        seeds.sort_unstable();
        seeds.dedup();
        assert_eq!(seeds.len(), jobs.len(), "every image has its own seed");
    }

    #[test]
    fn every_defect_has_a_mask_that_changes_the_image() {
        for scene in Scene::ALL {
            for kind in DefectKind::ALL {
                for seed in 0..4 {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                    let clean = scenes::render(scene, &mut rng, 128, None).color;
                    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                    let defective = scenes::render(scene, &mut rng, 128, Some(kind));
                    let mask = defective.mask.expect("defective images have masks");
                    let inside: Vec<f32> = (0..mask.len())
                        .filter(|&i| mask[i])
                        .map(|i| {
                            (0..3)
                                .map(|c| (defective.color[i][c] - clean[i][c]).abs())
                                .sum::<f32>()
                                / 3.0
                        })
                        .collect();
                    assert!(
                        inside.len() >= 6,
                        "{scene:?} {kind:?} seed {seed}: {} mask pixels",
                        inside.len()
                    );
                    let mean = inside.iter().sum::<f32>() / inside.len() as f32;
                    assert!(
                        mean > 8.0,
                        "{scene:?} {kind:?} seed {seed}: mean change {mean}"
                    );
                    let outside = (0..mask.len())
                        .filter(|&i| !mask[i])
                        .map(|i| {
                            (0..3)
                                .map(|c| (defective.color[i][c] - clean[i][c]).abs())
                                .fold(0.0, f32::max)
                        })
                        .fold(0.0, f32::max);
                    assert!(
                        outside < 128.0,
                        "{scene:?} {kind:?}: change outside the mask {outside}"
                    );
                }
            }
        }
    }
}
