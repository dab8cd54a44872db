//! A procedural benchmark for small defects on high-resolution images, in MVTec AD layout: products
//! suited to line-camera inspection (`brushed_metal`, a rolled and brushed steel strip filling the
//! frame; `pcb`, a circuit board on a conveyor, placed with small position and rotation changes)
//! at 1024 or 2048 pixels square (any side in 256..=8192), with spots, scratches, cracks and
//! missing pieces of controlled sizes (4, 8, 16, 32, 64 px by default) and exact masks (255 where
//! the defect covers at least half a pixel). Each defect type folder names its kind and size
//! (`test/crack-16px`, [`defect_type`]), so results can be grouped by size ([`parse_defect_type`]).
//!
//! What it can show: how detection and localisation fall off with defect size, and what tiling
//! (or resizing to 224 x 224) does to a defect of a few pixels, on images where good ones differ
//! (placement jitter, illumination gradients, texture at a scale of one to a few pixels) so a
//! per-pixel difference does not solve it, and every defect is clearly visible at full
//! resolution (contrast well above the texture's).
//!
//! What it cannot show: the variation of real products, how real defects look (these are
//! uniform blends of simple shapes), optics and sensors (focus, motion blur, line-rate
//! artefacts, compression), or how a backbone pretrained on photographs behaves on real
//! textures. Scores on it are comparisons between methods and settings, not predictions for a line.
//!
//! Every image is a pure function of (seed, product, split, index) (a defect's also of its kind and
//! size), so a subset of products, kinds or sizes gives the same images as the full set.
mod defects;
mod products;

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use ::image::codecs::png::PngEncoder;
use ::image::{ExtendedColorType, ImageEncoder};
use rand::SeedableRng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::image_seed;
use crate::error::{Error, Result};
use defects::{Effect, Painted};
use products::{BrushedMetal, Pcb, PcbDesign, View};

/// Written into the output folder; its presence marks folders this generator may overwrite.
pub const MARKER_FILE: &str = ".iuf-small-defects.json";

/// Separates this generator's random streams from the demo's for the same seed.
const STREAM: u64 = 0x5EA1_1DEF_EC75_0001;

/// The products, one class folder each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Product {
    BrushedMetal,
    Pcb,
}

impl Product {
    pub const ALL: [Product; 2] = [Product::BrushedMetal, Product::Pcb];

    /// The class folder name.
    pub fn name(self) -> &'static str {
        match self {
            Product::BrushedMetal => "brushed_metal",
            Product::Pcb => "pcb",
        }
    }

    pub fn parse(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| Error::Config {
                what: "small-defect product",
                reason: format!(
                    "expected one of {}; found `{name}`",
                    Self::ALL.map(|p| p.name()).join(", ")
                ),
            })
    }

    /// A fixed number per product (not its place in a list), for the random streams.
    fn id(self) -> u64 {
        match self {
            Product::BrushedMetal => 0,
            Product::Pcb => 1,
        }
    }
}

/// The defect kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DefectKind {
    /// A dark or bright blob of diameter `size`.
    Spot,
    /// A thin smooth line, 3 to 5 times `size` long and `max(size / 4, 1)` wide.
    Scratch,
    /// A jagged dark line, 3 to 5 times `size` long and `max(size / 8, 1)` wide.
    Crack,
    /// A chunk of diameter `size` gone from the product, the background showing through.
    MissingPiece,
}

impl DefectKind {
    pub const ALL: [DefectKind; 4] = [
        DefectKind::Spot,
        DefectKind::Scratch,
        DefectKind::Crack,
        DefectKind::MissingPiece,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DefectKind::Spot => "spot",
            DefectKind::Scratch => "scratch",
            DefectKind::Crack => "crack",
            DefectKind::MissingPiece => "missing_piece",
        }
    }

    pub fn parse(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| Error::Config {
                what: "small-defect kind",
                reason: format!(
                    "expected one of {}; found `{name}`",
                    Self::ALL.map(|k| k.name()).join(", ")
                ),
            })
    }

    fn id(self) -> u64 {
        match self {
            DefectKind::Spot => 0,
            DefectKind::Scratch => 1,
            DefectKind::Crack => 2,
            DefectKind::MissingPiece => 3,
        }
    }
}

/// The test folder of a defect kind and size: `spot-4px`.
pub fn defect_type(kind: DefectKind, size: usize) -> String {
    format!("{}-{size}px", kind.name())
}

/// The kind and size of a defect type folder written by this generator (`crack-16px`).
pub fn parse_defect_type(name: &str) -> Option<(DefectKind, usize)> {
    let (kind, size) = name.rsplit_once('-')?;
    let size = size.strip_suffix("px")?.parse().ok()?;
    Some((DefectKind::parse(kind).ok()?, size))
}

/// What to generate. Every image is a pure function of (seed, product, split, index).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmallDefectsConfig {
    pub seed: u64,
    /// Side of the square images in pixels (1024 or 2048 for the benchmark).
    pub size: usize,
    /// Good training images per product.
    pub train: usize,
    /// Good test images per product.
    pub test_good: usize,
    /// Defective test images per product, kind and size.
    pub per_size: usize,
    /// Defect sizes in pixels (diameter of spots and missing pieces; scratches and cracks are a
    /// few times longer).
    pub sizes: Vec<usize>,
    pub kinds: Vec<DefectKind>,
    pub products: Vec<Product>,
}

impl Default for SmallDefectsConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            size: 1024,
            train: 200,
            test_good: 40,
            per_size: 8,
            sizes: vec![4, 8, 16, 32, 64],
            kinds: DefectKind::ALL.to_vec(),
            products: Product::ALL.to_vec(),
        }
    }
}

impl SmallDefectsConfig {
    /// A small configuration for tests and smoke runs (256 pixels, a few images).
    pub fn tiny() -> Self {
        Self {
            size: 256,
            train: 3,
            test_good: 2,
            per_size: 2,
            sizes: vec![4, 8, 16],
            ..Self::default()
        }
    }

    pub fn check(&self) -> Result<()> {
        let bad = |reason: String| {
            Err(Error::Config {
                what: "small-defect config",
                reason,
            })
        };
        if !(256..=8192).contains(&self.size) {
            return bad(format!(
                "expected size in 256..=8192 pixels; found {}",
                self.size
            ));
        }
        for (name, n) in [
            ("train", self.train),
            ("test_good", self.test_good),
            ("per_size", self.per_size),
        ] {
            if !(1..=100_000).contains(&n) {
                return bad(format!("expected {name} in 1..=100000; found {n}"));
            }
        }
        // A scratch is up to five times its size long and must fit on the product.
        let largest = self.size / 8;
        if self.sizes.is_empty() {
            return bad("expected at least one defect size; found none".into());
        }
        if let Some(s) = self.sizes.iter().find(|s| !(2..=largest).contains(*s)) {
            return bad(format!(
                "expected defect sizes in 2..={largest} pixels for {} pixel images; found {s}",
                self.size
            ));
        }
        if self.kinds.is_empty() || self.products.is_empty() {
            return bad("expected at least one defect kind and one product".into());
        }
        let repeated = |n: usize, distinct: usize| n != distinct;
        let mut sizes = self.sizes.clone();
        sizes.sort_unstable();
        sizes.dedup();
        if repeated(self.sizes.len(), sizes.len())
            || repeated(
                self.kinds.len(),
                DefectKind::ALL
                    .iter()
                    .filter(|k| self.kinds.contains(k))
                    .count(),
            )
            || repeated(
                self.products.len(),
                Product::ALL
                    .iter()
                    .filter(|p| self.products.contains(p))
                    .count(),
            )
        {
            return bad("expected each size, kind and product at most once".into());
        }
        Ok(())
    }

    /// Images (not masks) the config produces.
    pub fn num_images(&self) -> usize {
        self.products.len()
            * (self.train + self.test_good + self.per_size * self.sizes.len() * self.kinds.len())
    }
}

/// What [`generate`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Class folders, in the order `DatasetRoot` lists them.
    pub products: Vec<String>,
    pub images: usize,
    pub masks: usize,
}

struct Job {
    product: Product,
    defect: Option<(DefectKind, usize)>,
    image: PathBuf,
    mask: Option<PathBuf>,
    seed: u64,
}

/// Zero-padded file names that sort in index order: `007`, or `0007` past 999 images.
fn stem(i: usize, count: usize) -> String {
    let width = count.saturating_sub(1).to_string().len().max(3);
    format!("{i:0width$}")
}

fn jobs(dir: &Path, cfg: &SmallDefectsConfig) -> Vec<Job> {
    let seed = cfg.seed ^ STREAM;
    let mut jobs = Vec::new();
    for &product in &cfg.products {
        let class_dir = dir.join(product.name());
        let p = product.id();
        for (part, split, count) in [(0, "train", cfg.train), (1, "test", cfg.test_good)] {
            for i in 0..count {
                jobs.push(Job {
                    product,
                    defect: None,
                    image: class_dir.join(format!("{split}/good/{}.png", stem(i, count))),
                    mask: None,
                    seed: image_seed(seed, [p, part, i as u64]),
                });
            }
        }
        for &kind in &cfg.kinds {
            for &size in &cfg.sizes {
                let folder = defect_type(kind, size);
                for i in 0..cfg.per_size {
                    let name = stem(i, cfg.per_size);
                    jobs.push(Job {
                        product,
                        defect: Some((kind, size)),
                        image: class_dir.join(format!("test/{folder}/{name}.png")),
                        mask: Some(
                            class_dir.join(format!("ground_truth/{folder}/{name}_mask.png")),
                        ),
                        seed: image_seed(seed, [p, 2 + (kind.id() << 32) + size as u64, i as u64]),
                    });
                }
            }
        }
    }
    jobs
}

/// A rendered image: RGB bytes, and the mask bytes (0 or 255) of a defective one.
struct Rendered {
    rgb: Vec<u8>,
    mask: Option<Vec<u8>>,
}

fn render(view: &impl View, size: usize, defect: Option<&Painted>) -> Rendered {
    let mut rgb = Vec::with_capacity(size * size * 3);
    let mut mask = defect.map(|_| Vec::with_capacity(size * size));
    for py in 0..size {
        for px in 0..size {
            let layers = view.at(px, py);
            let d = defect.map_or(0.0, |p| p.at(px, py));
            let mut cover = layers.cover;
            if d > 0.0 {
                if let Some(Painted {
                    effect: Effect::Remove,
                    ..
                }) = defect
                {
                    cover *= 1.0 - d;
                }
            }
            let mut c: [f32; 3] = std::array::from_fn(|i| {
                layers.background[i] * (1.0 - cover) + layers.product[i] * cover
            });
            if let Some(p) = defect.filter(|_| d > 0.0) {
                c = p.effect.apply(c, d);
            }
            rgb.extend(c.map(|v| (v + 0.5).clamp(0.0, 255.0) as u8));
            if let Some(m) = &mut mask {
                m.push(if d >= 0.5 { 255 } else { 0 });
            }
        }
    }
    Rendered { rgb, mask }
}

/// The design of every product, drawn once from the seed (the same on every image).
struct Designs {
    pcb: PcbDesign,
}

impl Designs {
    fn new(seed: u64) -> Self {
        let mut rng = rand::rngs::StdRng::seed_from_u64(image_seed(
            seed ^ STREAM,
            [Product::Pcb.id(), u64::MAX, 0],
        ));
        Self {
            pcb: PcbDesign::draw(&mut rng),
        }
    }
}

fn render_job(job: &Job, size: usize, designs: &Designs) -> Rendered {
    let mut rng = rand::rngs::StdRng::seed_from_u64(job.seed);
    fn finish(
        rng: &mut rand::rngs::StdRng,
        view: &impl View,
        size: usize,
        defect: Option<(DefectKind, usize)>,
    ) -> Rendered {
        let painted = defect.map(|(kind, d)| defects::draw(rng, view, size, kind, d));
        render(view, size, painted.as_ref())
    }
    match job.product {
        Product::BrushedMetal => {
            let view = BrushedMetal::draw(&mut rng, size);
            finish(&mut rng, &view, size, job.defect)
        }
        Product::Pcb => {
            let view = Pcb::draw(&mut rng, size, designs.pcb);
            finish(&mut rng, &view, size, job.defect)
        }
    }
}

/// Writes a PNG through a hidden temporary name in the same folder and a rename, so a killed run
/// leaves no half-written image under the name the loader reads.
fn write_png(path: &Path, bytes: &[u8], size: usize, color: ExtendedColorType) -> Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{name}.tmp"));
    let written = (|| {
        let file = fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut out = BufWriter::new(file);
        PngEncoder::new(&mut out)
            .write_image(bytes, size as u32, size as u32, color)
            .map_err(|source| Error::Encode {
                path: path.to_path_buf(),
                source,
            })?;
        out.flush().map_err(|e| Error::io(&tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

fn run_job(job: &Job, size: usize, designs: &Designs) -> Result<()> {
    let rendered = render_job(job, size, designs);
    write_png(&job.image, &rendered.rgb, size, ExtendedColorType::Rgb8)?;
    if let (Some(path), Some(mask)) = (&job.mask, &rendered.mask) {
        write_png(path, mask, size, ExtendedColorType::L8)?;
    }
    Ok(())
}

/// Makes room in `dir`: product folders left by an earlier run of this generator (marked by
/// [`MARKER_FILE`]) are removed; product folders of any other origin are never touched.
fn prepare(dir: &Path) -> Result<()> {
    let ours = dir.join(MARKER_FILE).is_file();
    let existing: Vec<PathBuf> = Product::ALL
        .iter()
        .map(|p| dir.join(p.name()))
        .filter(|d| d.exists())
        .collect();
    if let Some(foreign) = existing.iter().find(|_| !ours) {
        return Err(Error::Config {
            what: "small-defect output folder",
            reason: format!(
                "expected {} not to exist or to come from an earlier small-defect run (with \
                 {MARKER_FILE}); found a folder of another origin, which is left untouched",
                foreign.display()
            ),
        });
    }
    for d in existing {
        fs::remove_dir_all(&d).map_err(|e| Error::io(&d, e))?;
    }
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))
}

/// Writes the benchmark under `dir` (created if needed) in MVTec AD layout, in parallel. The same
/// config always gives byte-identical files.
pub fn generate(dir: &Path, cfg: &SmallDefectsConfig) -> Result<Summary> {
    generate_with_progress(dir, cfg, &|_, _| {})
}

/// [`generate`], calling `progress(done, total)` after each image (from the worker threads).
pub fn generate_with_progress(
    dir: &Path,
    cfg: &SmallDefectsConfig,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Summary> {
    cfg.check()?;
    prepare(dir)?;
    let marker = dir.join(MARKER_FILE);
    let json = serde_json::to_string_pretty(cfg).map_err(|e| Error::Config {
        what: "small-defect config",
        reason: e.to_string(),
    })?;
    // The marker goes first so that an interrupted run can be cleaned up by the next one.
    fs::write(&marker, json).map_err(|e| Error::io(&marker, e))?;
    let jobs = jobs(dir, cfg);
    let designs = Designs::new(cfg.seed);
    let done = AtomicUsize::new(0);
    jobs.par_iter()
        .map(|job| {
            run_job(job, cfg.size, &designs)?;
            progress(done.fetch_add(1, Ordering::Relaxed) + 1, jobs.len());
            Ok(())
        })
        .collect::<Result<()>>()?;
    let mut products: Vec<String> = cfg.products.iter().map(|p| p.name().to_string()).collect();
    products.sort();
    Ok(Summary {
        products,
        images: jobs.len(),
        masks: jobs.iter().filter(|j| j.mask.is_some()).count(),
    })
}

/// The products (sorted) of an earlier [`generate`] in `dir` with exactly `cfg`, when every one of
/// its files is there, so that a caller can reuse them; `None` otherwise.
pub fn existing(dir: &Path, cfg: &SmallDefectsConfig) -> Option<Vec<String>> {
    let text = fs::read_to_string(dir.join(MARKER_FILE)).ok()?;
    let found: SmallDefectsConfig = serde_json::from_str(&text).ok()?;
    let complete = jobs(dir, cfg)
        .iter()
        .all(|j| j.image.is_file() && j.mask.as_ref().is_none_or(|m| m.is_file()));
    let mut products: Vec<String> = cfg.products.iter().map(|p| p.name().to_string()).collect();
    products.sort();
    (found == *cfg && complete).then_some(products)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_check_rejects_degenerate_values() {
        assert!(SmallDefectsConfig::default().check().is_ok());
        assert!(SmallDefectsConfig::tiny().check().is_ok());
        let base = SmallDefectsConfig::tiny();
        for bad in [
            SmallDefectsConfig {
                size: 128,
                ..base.clone()
            },
            SmallDefectsConfig {
                size: 9000,
                ..base.clone()
            },
            SmallDefectsConfig {
                train: 0,
                ..base.clone()
            },
            SmallDefectsConfig {
                per_size: 0,
                ..base.clone()
            },
            SmallDefectsConfig {
                sizes: vec![],
                ..base.clone()
            },
            SmallDefectsConfig {
                sizes: vec![4, 64],
                ..base.clone()
            },
            SmallDefectsConfig {
                sizes: vec![4, 4],
                ..base.clone()
            },
            SmallDefectsConfig {
                kinds: vec![],
                ..base.clone()
            },
            SmallDefectsConfig {
                products: vec![Product::Pcb, Product::Pcb],
                ..base.clone()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn defect_type_names_round_trip() {
        for kind in DefectKind::ALL {
            for size in [4, 64, 100] {
                assert_eq!(
                    parse_defect_type(&defect_type(kind, size)),
                    Some((kind, size))
                );
            }
        }
        assert_eq!(parse_defect_type("good"), None);
        assert_eq!(parse_defect_type("spot-4"), None);
        assert_eq!(stem(7, 10), "007");
        assert_eq!(stem(7, 1001), "0007");
    }

    #[test]
    fn defects_change_the_image_well_above_its_texture() {
        let designs = Designs::new(3);
        let cfg = SmallDefectsConfig {
            seed: 3,
            per_size: 3,
            ..SmallDefectsConfig::tiny()
        };
        for job in jobs(Path::new("x"), &cfg)
            .iter()
            .filter(|j| j.defect.is_some())
        {
            let defective = render_job(job, cfg.size, &designs);
            let same_image_without_defect = Job {
                product: job.product,
                defect: None,
                image: PathBuf::new(),
                mask: None,
                seed: job.seed,
            };
            let clean = render_job(&same_image_without_defect, cfg.size, &designs);
            let mask = defective.mask.as_ref().unwrap();
            let changed: Vec<f32> = (0..mask.len())
                .filter(|&i| mask[i] == 255)
                .map(|i| {
                    // The largest channel change: a green board losing its green is plain to see.
                    (0..3)
                        .map(|c| {
                            (defective.rgb[3 * i + c] as f32 - clean.rgb[3 * i + c] as f32).abs()
                        })
                        .fold(0.0, f32::max)
                })
                .collect();
            assert!(!changed.is_empty(), "{}", job.image.display());
            let mean = changed.iter().sum::<f32>() / changed.len() as f32;
            assert!(mean > 25.0, "{}: mean change {mean}", job.image.display());
        }
    }
}
