//! `iuf predict`: per image the anomaly score, the object the model recognises (nearest object
//! prototype in the frozen backbone's feature space, which no later step can make it forget; models
//! without prototypes use the discriminator), a defect/ok decision against that object's calibrated
//! threshold, and a heatmap PNG (with the ground-truth outline when a mask is known). A JSON line
//! per image; unreadable files are reported and skipped.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use image::RgbImage;
use iuf_backbone::Backbone;
use iuf_incremental::{Learner, Progress};
pub use iuf_inspect::Outcome;
use iuf_inspect::{Inspector, Timings};
use rayon::prelude::*;

use crate::budget::{DecodeBudget, DecodeBudgetArg};
use crate::heatmap::{self, MapScale};
use crate::progress::{self, Bars};
use crate::setup;
use crate::Global;

/// Images decoded and sent through the backbone at once, at most (fewer when their pixels would
/// exceed the decode budget together).
const CHUNK: usize = 8;
/// Side of one tile of a panel.
const PANEL_TILE: u32 = 192;

/// Arguments of `iuf predict`.
#[derive(Debug, Args)]
pub struct PredictArgs {
    /// The model file.
    #[arg(long, value_name = "FILE")]
    pub model: PathBuf,
    /// Images and folders; folders are walked recursively (hidden entries and `ground_truth`
    /// folders skipped; png, jpg, jpeg, bmp, tif, tiff files taken).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Folder for the heatmaps and `predictions.jsonl` (created).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Quantile of the held-out good scores used as the defect threshold (default: the model's
    /// calibration quantile, 0.99 in every preset). Higher: fewer false alarms, more missed defects.
    #[arg(long, value_name = "Q")]
    pub quantile: Option<f64>,
    /// Folder of ground-truth masks (`<stem>_mask.png` or `<stem>.png`, also under the image's
    /// sub-folder) whose outline is drawn on the heatmap. Images inside an MVTec-layout tree find
    /// their `ground_truth` mask without this.
    #[arg(long, value_name = "DIR")]
    pub masks: Option<PathBuf>,
    /// Judge every image as this object instead of the one the model recognises.
    #[arg(long, value_name = "NAME")]
    pub object: Option<String>,
    /// Also write a panel (.png or .jpg): images on top, their heatmaps below, picked evenly over
    /// all the images.
    #[arg(long, value_name = "FILE")]
    pub panel: Option<PathBuf>,
    /// Images in the panel.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub panel_max: usize,
    /// Replace files that already exist where this run writes (heatmaps, predictions.jsonl, the
    /// panel). Without it, predict writes no file over one it did not write in this run: it stops
    /// before any work, naming the file.
    #[arg(long)]
    pub overwrite: bool,
    #[command(flatten)]
    pub precision: setup::PrecisionArg,
    #[command(flatten)]
    pub signed: super::sign::RequireSigned,
    #[command(flatten)]
    pub decode_budget: DecodeBudgetArg,
}

/// One image to score.
#[derive(Debug, Clone)]
pub struct Item {
    pub path: PathBuf,
    /// Where its heatmap goes, relative to the output folder.
    pub heatmap: PathBuf,
    /// Its ground-truth mask, if known.
    pub mask: Option<PathBuf>,
}

fn is_image(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
        iuf_data::IMAGE_EXTENSIONS
            .iter()
            .any(|x| e.eq_ignore_ascii_case(x))
    })
}

/// What a walk has visited, by (device, inode): a symlink loop, or a second link to a folder or
/// an image, is followed once. (An output folder inside an input is refused before the walk.)
#[derive(Default)]
struct Walk {
    folders: HashSet<(u64, u64)>,
    files: HashSet<(u64, u64)>,
    /// Images met, links to one already taken included.
    met: usize,
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>, w: &mut Walk) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta =
        std::fs::metadata(dir).with_context(|| format!("reading folder {}", dir.display()))?;
    if !w.folders.insert((meta.dev(), meta.ino())) {
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading folder {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with('.') {
            continue;
        }
        if p.is_dir() {
            if name != "ground_truth" {
                walk(&p, out, w)?;
            }
        } else if is_image(&p) {
            w.met += 1;
            // Each real file once, however many links lead to it.
            let id = std::fs::metadata(&p)
                .map(|m| {
                    use std::os::unix::fs::MetadataExt;
                    (m.dev(), m.ino())
                })
                .ok();
            if id.is_none_or(|id| w.files.insert(id)) {
                out.push(p);
            }
        }
    }
    Ok(())
}

/// The MVTec-layout mask of `<class>/test/<type>/<stem>.<ext>`, if it exists.
fn mvtec_mask(image: &Path) -> Option<PathBuf> {
    let stem = image.file_stem()?.to_string_lossy().into_owned();
    let type_dir = image.parent()?;
    let defect = type_dir.file_name()?.to_string_lossy().into_owned();
    let test_dir = type_dir.parent()?;
    if test_dir.file_name()? != "test" || defect == iuf_data::GOOD {
        return None;
    }
    let gt = test_dir.parent()?.join("ground_truth").join(&defect);
    [format!("{stem}_mask.png"), format!("{stem}.png")]
        .into_iter()
        .map(|n| gt.join(n))
        .find(|p| p.is_file())
}

/// A mask for `image` (relative path `rel` under a walked folder) in `--masks DIR`.
fn masks_dir_mask(dir: &Path, rel: &Path) -> Option<PathBuf> {
    let stem = rel.file_stem()?.to_string_lossy().into_owned();
    let sub = rel.parent().unwrap_or(Path::new(""));
    [sub, Path::new("")]
        .into_iter()
        .flat_map(|s| {
            [
                dir.join(s).join(format!("{stem}_mask.png")),
                dir.join(s).join(format!("{stem}.png")),
            ]
        })
        .find(|p| p.is_file())
}

/// The deepest folder holding every path (all absolute), or `None` when they share nothing.
fn common_ancestor(paths: &[PathBuf]) -> Option<PathBuf> {
    let mut it = paths.iter();
    let mut base = it.next()?.clone();
    for p in it {
        while !p.starts_with(&base) {
            if !base.pop() {
                return None;
            }
        }
    }
    Some(base)
}

/// `p` made absolute with `.` and `..` folded away by spelling (heatmap names derived from it never
/// climb out of `--out`).
fn lexical_absolute(p: &Path) -> Result<PathBuf> {
    use std::path::Component;
    let abs = std::path::absolute(p).with_context(|| format!("resolving {}", p.display()))?;
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    Ok(out)
}

/// Expands the command line's paths into items. Heatmaps mirror the inputs' folders below their
/// deepest common folder (`bottle/test/crack/000.png` stays apart from `pill/test/crack/000.png`);
/// a name still taken (same stem, other extension) gets a `-1`, `-2`, ... suffix.
pub fn collect_items(paths: &[PathBuf], masks: Option<&Path>) -> Result<Vec<Item>> {
    // (image, path relative to its walked folder or its own name, absolute path for naming)
    let mut files: Vec<(PathBuf, PathBuf, PathBuf)> = Vec::new();
    let mut anchors: Vec<PathBuf> = Vec::new();
    let mut visited = Walk::default();
    for p in paths {
        let abs = lexical_absolute(p)?;
        if p.is_dir() {
            let mut found = Vec::new();
            let met = visited.met;
            // A folder already walked as part of an earlier argument adds nothing, silently.
            let walked_before = {
                use std::os::unix::fs::MetadataExt;
                std::fs::metadata(p)
                    .map(|m| visited.folders.contains(&(m.dev(), m.ino())))
                    .unwrap_or(false)
            };
            walk(p, &mut found, &mut visited)?;
            if found.is_empty() && visited.met == met && !walked_before {
                bail!(
                    "no images under {} (expected files ending in {})",
                    p.display(),
                    iuf_data::IMAGE_EXTENSIONS.join(", ")
                );
            }
            for f in found {
                let rel = f.strip_prefix(p).unwrap_or(&f).to_path_buf();
                files.push((f, rel.clone(), abs.join(&rel)));
            }
            anchors.push(abs);
        } else {
            // Files named explicitly are always tried (an unreadable one is reported, not skipped).
            let rel = PathBuf::from(p.file_name().unwrap_or(p.as_os_str()));
            anchors.push(abs.parent().map_or_else(PathBuf::new, Path::to_path_buf));
            files.push((p.clone(), rel, abs));
        }
    }
    let base = common_ancestor(&anchors).unwrap_or_default();
    let mut items = Vec::with_capacity(files.len());
    let mut used: HashSet<PathBuf> = HashSet::new();
    for (path, rel, abs) in files {
        let name = abs
            .strip_prefix(&base)
            .unwrap_or(&rel)
            .with_extension("png");
        let mut heat = name.clone();
        let mut k = 1;
        while !used.insert(heat.clone()) {
            heat = name.with_file_name(format!(
                "{}-{k}.png",
                name.file_stem().unwrap_or_default().to_string_lossy()
            ));
            k += 1;
        }
        let mask = masks
            .and_then(|d| masks_dir_mask(d, &rel))
            .or_else(|| mvtec_mask(&path));
        items.push(Item {
            path,
            heatmap: heat,
            mask,
        });
    }
    Ok(items)
}

/// A binary mask at `w x h` (positive where > 0, resized nearest).
fn load_outline_mask(path: &Path, w: u32, h: u32) -> Result<Vec<bool>> {
    let (mw, mh, bits) = iuf_data::image::load_mask_pixels(path)
        .with_context(|| format!("cannot read mask {}", path.display()))?;
    Ok(heatmap::resize_mask(&bits, mw, mh, w as usize, h as usize))
}

/// Which images get a heatmap file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Heatmaps {
    /// Every scored image.
    Every,
    /// Only the images judged defective.
    Defects,
    /// None.
    None,
}

/// Scores images with a model and writes their heatmaps.
pub struct Predictor<'a> {
    pub learner: &'a Learner,
    pub backbone: &'a Backbone,
    pub quantile: f64,
    /// Judge every image as this object.
    pub object: Option<String>,
    pub out_dir: PathBuf,
    /// Keep (original, heatmap) pairs of this many images, spread evenly over the items, for a panel.
    pub panel_max: usize,
    /// Pixels decoded at once: a batch takes images while they fit in it together.
    pub budget: DecodeBudget,
    /// Which images get a heatmap file.
    pub heatmaps: Heatmaps,
}

/// What [`Predictor::run`] produced.
pub struct PredictRun {
    pub outcomes: Vec<Outcome>,
    pub panel: Vec<(RgbImage, RgbImage)>,
    pub timings: Timings,
    /// Images in the largest batch run.
    pub largest_batch: usize,
}

/// One line such as `per image: 31.0 ms = decode 3.1 + backbone 12.0 + model 6.2 + heatmap 9.7
/// (batches of up to 8 images; decode budget 100 MP (--decode-budget-mp))`.
pub fn timing_summary(t: &Timings, largest_batch: usize, budget: &DecodeBudget) -> Option<String> {
    if t.images == 0 {
        return None;
    }
    let ms = |d: Duration| 1e3 * d.as_secs_f64() / t.images as f64;
    let total = t.decode + t.backbone + t.model + t.heatmaps;
    Some(format!(
            "per image: {:.1} ms = decode {:.1} + backbone {:.1} + model {:.1} + heatmap {:.1} (batches of up to {largest_batch} image(s); decode budget {})",
        ms(total),
        ms(t.decode),
        ms(t.backbone),
        ms(t.model),
        ms(t.heatmaps),
        budget.describe()
    ))
}

impl Predictor<'_> {
    /// Scores every item; `each` sees every outcome as soon as it is known (for streaming output).
    pub fn run(
        &self,
        items: &[Item],
        progress: &dyn Progress,
        mut each: impl FnMut(&Outcome) -> Result<()>,
    ) -> Result<PredictRun> {
        let inspector = Inspector::new(self.learner, self.backbone)?;
        if let Some(o) = &self.object {
            inspector.check_object(o)?;
        }
        let mut run = PredictRun {
            outcomes: Vec::with_capacity(items.len()),
            panel: Vec::new(),
            timings: Timings::default(),
            largest_batch: 0,
        };
        // Evenly spread over the items, so a panel of a whole test set shows every defect type.
        let n = items.len();
        let picks: HashSet<usize> = (0..self.panel_max.min(n))
            .map(|i| i * n / self.panel_max.min(n))
            .collect();
        // The temporaries a killed run left, removed once from every folder this run writes.
        let mut cleaned: HashSet<PathBuf> = HashSet::new();
        progress.start("predict", n as u64);
        // The next item whose size is still to be read.
        let mut next = 0;
        // An item whose size is known but that did not fit in the batch before, with its pixels.
        let mut pending: Option<(usize, u64)> = None;
        while next < n || pending.is_some() {
            let t = Instant::now();
            // The next batch: at most CHUNK images whose pixels, read from their headers, fit in
            // the budget together. An image over the budget alone, or with no readable header, is
            // reported and skipped.
            let mut batch: Vec<(usize, u64)> = Vec::new();
            let mut used = 0u64;
            while batch.len() < CHUNK {
                let item = match pending.take() {
                    Some(p) => p,
                    None if next < n => {
                        let i = next;
                        next += 1;
                        let path = &items[i].path;
                        let why = match iuf_data::image::dimensions(path) {
                            Ok((w, h)) => match self.budget.refuse(w, h) {
                                None => Ok((i, w as u64 * h as u64)),
                                Some(why) => {
                                    Err(format!("{}: {why}; the file is skipped", path.display()))
                                }
                            },
                            Err(e) => Err(format!("{e}; the file is skipped (is it an image?)")),
                        };
                        match why {
                            Ok(item) => item,
                            Err(why) => {
                                let o = Outcome::failed(path, why);
                                each(&o)?;
                                run.outcomes.push(o);
                                progress.inc(1);
                                continue;
                            }
                        }
                    }
                    None => break,
                };
                if !batch.is_empty() && used + item.1 > self.budget.pixels {
                    pending = Some(item);
                    break;
                }
                used += item.1;
                batch.push(item);
            }
            // Each image decoded within the room its header reserved (a file changed since is
            // refused, not decoded larger).
            let decoded: Vec<_> = batch
                .par_iter()
                .map(|&(i, pixels)| iuf_data::image::load_rgb_within(&items[i].path, pixels))
                .collect();
            let mut good: Vec<(usize, &Item, RgbImage)> = Vec::new();
            for (&(i, _), d) in batch.iter().zip(decoded) {
                let it = &items[i];
                match d {
                    Ok(img) => good.push((i, it, img)),
                    Err(e) => {
                        let o = Outcome::failed(
                            &it.path,
                            format!("{e}; the file is skipped (is it an image?)"),
                        );
                        each(&o)?;
                        run.outcomes.push(o);
                        progress.inc(1);
                    }
                }
            }
            if good.is_empty() {
                continue;
            }
            run.largest_batch = run.largest_batch.max(good.len());
            run.timings.decode += t.elapsed();
            let images: Vec<&RgbImage> = good.iter().map(|(_, _, img)| img).collect();
            let scored = inspector.inspect(
                &images,
                self.object.as_deref(),
                self.quantile,
                &mut run.timings,
            )?;
            let t = Instant::now();
            // Folders first (one thread: the stale-temporary clean-up is once per folder), then
            // every image's heatmap drawn and written in parallel, then the outcomes in order.
            for (_, it, _) in &good {
                let heat_path = self.out_dir.join(&it.heatmap);
                if let Some(parent) = heat_path.parent() {
                    if cleaned.insert(parent.to_path_buf()) {
                        std::fs::create_dir_all(parent)
                            .with_context(|| format!("creating {}", parent.display()))?;
                        iuf_model::remove_stale_temps(parent);
                    }
                }
            }
            let drawn: Vec<Result<Drawn>> = good
                .into_par_iter()
                .zip(scored)
                .map(|((index, it, img), s)| self.draw(index, it, img, s))
                .collect();
            for d in drawn {
                let d = d?;
                if picks.contains(&d.index) {
                    run.panel.push((d.shown, d.heat));
                }
                each(&d.outcome)?;
                run.outcomes.push(d.outcome);
                progress.inc(1);
            }
            run.timings.heatmaps += t.elapsed();
        }
        progress.finish();
        Ok(run)
    }
}

/// One image's heatmap, drawn and written, with its outcome.
struct Drawn {
    index: usize,
    outcome: Outcome,
    /// The image as shown on the heatmap, and the heatmap (for a panel).
    shown: RgbImage,
    heat: RgbImage,
}

impl Predictor<'_> {
    /// Draws the heatmap of item `index` (its folder exists) and writes it atomically.
    fn draw(
        &self,
        index: usize,
        it: &Item,
        img: RgbImage,
        s: iuf_inspect::Inspection,
    ) -> Result<Drawn> {
        let wanted = match self.heatmaps {
            Heatmaps::Every => true,
            Heatmaps::Defects => s.verdict.decision == Some(iuf_incremental::Decision::Defect),
            Heatmaps::None => false,
        };
        if !wanted {
            let outcome = Outcome::scored(&it.path, &s, self.quantile);
            let heat = RgbImage::new(0, 0);
            return Ok(Drawn {
                index,
                outcome,
                shown: img,
                heat,
            });
        }
        let (ow, oh) = heatmap::output_size(img.width(), img.height(), s.map_w.max(s.map_h));
        let shown = if (ow, oh) == img.dimensions() {
            img
        } else {
            iuf_data::image::resize_bilinear_rgb(&img, ow, oh)
        };
        let mut error = None;
        let mask = match &it.mask {
            Some(m) => match load_outline_mask(m, ow, oh) {
                Ok(bits) => Some(bits),
                Err(e) => {
                    // The image itself is fine: score it, draw no outline, say why.
                    error = Some(format!("{e:#}; heatmap drawn without the outline"));
                    None
                }
            },
            None => None,
        };
        let scale = s
            .verdict
            .threshold
            .map_or(MapScale::ImageMax, MapScale::Threshold);
        let heat = heatmap::overlay(&shown, &s.map, s.map_w, s.map_h, scale, mask.as_deref());
        let heat_path = self.out_dir.join(&it.heatmap);
        save_atomically(&heat, &heat_path, image::ImageFormat::Png)
            .with_context(|| format!("writing heatmap {}", heat_path.display()))?;
        let mut outcome = Outcome::scored(&it.path, &s, self.quantile);
        outcome.error = error;
        outcome.heatmap = Some(heat_path.to_string_lossy().into_owned());
        outcome.mask = it.mask.clone().filter(|_| mask.is_some());
        Ok(Drawn {
            index,
            outcome,
            shown,
            heat,
        })
    }
}

/// Writes a panel; the format follows the file name (`.png`, or `.jpg` for a much smaller file).
/// The image format of a panel file name (.png, .jpg, .jpeg), or an error naming the flag.
pub fn panel_format(path: &Path) -> Result<image::ImageFormat> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    Ok(match ext.as_deref() {
        Some("png") => image::ImageFormat::Png,
        Some("jpg" | "jpeg") => image::ImageFormat::Jpeg,
        _ => bail!(
            "--panel {}: expected a file name ending in .png or .jpg",
            path.display()
        ),
    })
}

pub fn write_panel(pairs: &[(RgbImage, RgbImage)], path: &Path) -> Result<()> {
    let format = panel_format(path)?;
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    iuf_model::remove_stale_temps(parent);
    save_atomically(&heatmap::panel(pairs, PANEL_TILE), path, format)
        .with_context(|| format!("writing panel {}", path.display()))
}

/// Writes an image to a temporary name in its folder, then renames it (never a half-written file).
fn save_atomically(img: &RgbImage, path: &Path, format: image::ImageFormat) -> Result<()> {
    let tmp = iuf_model::temp_path(path);
    let saved = img
        .save_with_format(&tmp, format)
        .map_err(anyhow::Error::from)
        .and_then(|()| std::fs::rename(&tmp, path).map_err(anyhow::Error::from));
    if saved.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    saved
}

pub fn run(g: &Global, a: PredictArgs) -> Result<ExitCode> {
    let mut inputs: Vec<(&str, &Path)> = vec![("--model", &a.model)];
    inputs.extend(a.paths.iter().map(|p| ("PATH", p.as_path())));
    if let Some(m) = &a.masks {
        inputs.push(("--masks", m));
    }
    if let Some(w) = &g.weights {
        inputs.push(("--weights", w));
    }
    if a.panel_max == 0 {
        bail!(
            "--panel-max must be at least 1; found 0 (a panel of no images would be blank; leave out --panel for no panel)"
        );
    }
    let budget = a.decode_budget.resolve()?;
    setup::check_output("--out", &a.out, true, &inputs)?;
    setup::check_writable("--out", &a.out, true)?;
    if let Some(panel) = &a.panel {
        setup::check_output("--panel", panel, false, &inputs)?;
        panel_format(panel)?;
        setup::check_writable("--panel", panel, false)?;
    }
    let key = a.signed.key()?;
    let device = setup::device(g)?;
    let mut learner = super::sign::load_model(&a.model, &device, key.as_ref())?;
    a.precision.apply(&mut learner)?;
    let quantile = a.quantile.unwrap_or(learner.config().calibration.quantile);
    if !(0.0..=1.0).contains(&quantile) {
        bail!("--quantile must lie in [0, 1]; found {quantile}");
    }
    if let Some(m) = &a.masks {
        if !m.is_dir() {
            bail!("--masks {}: no such folder", m.display());
        }
    }
    for p in &a.paths {
        if !p.exists() {
            bail!(
                "{}: no such file or folder; pass images or folders of images",
                p.display()
            );
        }
    }
    let items = collect_items(&a.paths, a.masks.as_deref())?;
    // Every image and mask read is an input too, wherever a link or a layout found it: no output
    // may be one, nor (for --out) hold one; --overwrite replaces earlier outputs, never inputs.
    for it in &items {
        inputs.push(("image", &it.path));
        if let Some(m) = &it.mask {
            inputs.push(("mask", m));
        }
    }
    setup::check_output("--out", &a.out, true, &inputs)?;
    if let Some(panel) = &a.panel {
        setup::check_output("--panel", panel, false, &inputs)?;
    }
    check_outputs(&a, &items)?;
    check_no_link_out(&a.out, &items)?;
    let variant = setup::model_backbone(&learner, &a.model)?;
    let loaded = setup::backbone(g, variant, &device)?;
    setup::check_backbone_weights(&learner, &a.model, &loaded)?;
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("creating --out {}", a.out.display()))?;
    iuf_model::remove_stale_temps(&a.out);
    // Written to a temporary file renamed at the end, like every output: a predictions.jsonl that
    // is a link (to the model, to an image) is replaced, never written through.
    let jsonl_path = a.out.join("predictions.jsonl");
    let jsonl_tmp = iuf_model::temp_path(&jsonl_path);
    let _ = std::fs::remove_file(&jsonl_tmp);
    let mut jsonl = std::io::BufWriter::new(
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&jsonl_tmp)
            .with_context(|| format!("creating {}", jsonl_tmp.display()))?,
    );
    let predictor = Predictor {
        learner: &learner,
        backbone: &loaded.backbone,
        quantile,
        object: a.object.clone(),
        out_dir: a.out.clone(),
        panel_max: if a.panel.is_some() { a.panel_max } else { 0 },
        budget,
        heatmaps: Heatmaps::Every,
    };
    let bars = Bars::new(g.json);
    let json_out = g.json;
    let result = predictor
        .run(&items, &bars, |o| {
            let line = serde_json::to_string(o)?;
            writeln!(jsonl, "{line}")
                .with_context(|| format!("writing {}", jsonl_tmp.display()))?;
            progress::suspend(|| {
                if json_out {
                    println!("{line}");
                } else {
                    print_human(o);
                }
            });
            Ok(())
        })
        .and_then(|run| {
            jsonl
                .into_inner()
                .map_err(|e| e.into_error())
                .and_then(|f| f.sync_all())
                .and_then(|()| std::fs::rename(&jsonl_tmp, &jsonl_path))
                .with_context(|| format!("writing {}", jsonl_path.display()))?;
            Ok(run)
        });
    let result = result.inspect_err(|_| {
        let _ = std::fs::remove_file(&jsonl_tmp);
    })?;
    if let Some(panel) = &a.panel {
        write_panel(&result.panel, panel)?;
    }
    let failed = result.outcomes.iter().filter(|o| o.score.is_none()).count();
    let defects = result
        .outcomes
        .iter()
        .filter(|o| o.decision == Some("defect"))
        .count();
    let ok = result
        .outcomes
        .iter()
        .filter(|o| o.decision == Some("ok"))
        .count();
    let summary = format!(
        "{} image(s): {defects} defect, {ok} ok, {failed} unreadable; heatmaps and predictions.jsonl in {}",
        result.outcomes.len(),
        a.out.display()
    );
    let timing = timing_summary(&result.timings, result.largest_batch, &budget);
    if g.json {
        eprintln!("{summary}");
    } else {
        println!("{summary}");
    }
    if let Some(t) = timing {
        eprintln!("{t}");
    }
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Before any work: the panel is none of the files under `--out`, and (unless `--overwrite`) no
/// file this run writes exists already, so no file is replaced that this run did not write.
fn check_outputs(a: &PredictArgs, items: &[Item]) -> Result<()> {
    let mut planned: Vec<(PathBuf, String)> = vec![(
        a.out.join("predictions.jsonl"),
        "the predictions".to_string(),
    )];
    planned.extend(items.iter().map(|it| {
        (
            a.out.join(&it.heatmap),
            format!("the heatmap of {}", it.path.display()),
        )
    }));
    if let Some(panel) = &a.panel {
        let p = setup::resolved(panel);
        if let Some((_, what)) = planned.iter().find(|(f, _)| setup::resolved(f) == p) {
            bail!(
                "--panel {} is also where {what} goes; choose another panel file name",
                panel.display()
            );
        }
        planned.push((panel.clone(), "the panel".to_string()));
    }
    if a.overwrite {
        return Ok(());
    }
    let existing: Vec<&(PathBuf, String)> = planned
        .iter()
        .filter(|(f, _)| f.symlink_metadata().is_ok())
        .collect();
    if let Some((first, what)) = existing.first() {
        let more = match existing.len() - 1 {
            0 => String::new(),
            n => format!(" (and {n} more of the files this run writes)"),
        };
        bail!(
            "{} already exists{more} and would be replaced by {what}; predict replaces no file it \
             did not write in this run: choose an empty --out, move the file away, or pass \
             --overwrite",
            first.display()
        );
    }
    Ok(())
}

/// Before any work: no folder this run writes in leads, through a link, outside `--out` (a
/// sub-folder that is a symlink to the dataset would put heatmaps over its images).
fn check_no_link_out(out: &Path, items: &[Item]) -> Result<()> {
    let Some(root) = setup::resolved(out) else {
        return Ok(());
    };
    let outside = |p: &Path| p.canonicalize().is_ok_and(|c| !c.starts_with(&root));
    let mut checked: HashSet<&Path> = HashSet::new();
    for it in items {
        let Some(rel) = it.heatmap.parent().filter(|r| !r.as_os_str().is_empty()) else {
            continue;
        };
        if !checked.insert(rel) {
            continue;
        }
        // The shallowest folder between --out and the heatmap that resolves outside --out.
        let Some(bad) = rel
            .ancestors()
            .filter(|r| !r.as_os_str().is_empty())
            .map(|r| out.join(r))
            .filter(|d| outside(d))
            .last()
        else {
            continue;
        };
        let target = bad.canonicalize().unwrap_or_else(|_| bad.clone());
        bail!(
            "{} leads through a link to {}, outside --out {}, where the heatmap of {} would go; \
             predict writes only inside --out: remove the link or choose another --out",
            bad.display(),
            target.display(),
            out.display(),
            it.path.display()
        );
    }
    Ok(())
}

pub fn print_human(o: &Outcome) {
    match (&o.error, o.score) {
        (Some(e), None) => eprintln!("FAILED  {}: {e}", o.path.display()),
        (_, Some(score)) => {
            let decision = o.decision.map_or("-".to_string(), |d| d.to_uppercase());
            let thr = o
                .threshold
                .map_or("none".to_string(), |t| format!("{t:.4}"));
            println!(
                "{decision:<7} score {score:.4} (threshold {thr})  {} ({:.0}%)  {}",
                o.object.as_deref().unwrap_or("?"),
                100.0 * o.object_probability.unwrap_or(0.0),
                o.path.display()
            );
            if let Some(e) = &o.error {
                eprintln!("  warning: {e}");
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"").unwrap();
    }

    /// Guarantee: a symlink loop, or a second link to a folder or image, yields each real image
    /// once (it gave 41 predictions of one image before).
    #[test]
    fn symlink_loops_and_links_are_walked_once() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path().join("images");
        touch(&r.join("a.png"));
        touch(&r.join("sub/b.png"));
        std::os::unix::fs::symlink(&r, r.join("sub/loop")).unwrap(); // sub/loop -> images
        std::os::unix::fs::symlink(r.join("a.png"), r.join("alias.png")).unwrap();
        std::fs::hard_link(r.join("sub/b.png"), r.join("b-again.png")).unwrap();
        let items = collect_items(std::slice::from_ref(&r), None).unwrap();
        let names: Vec<String> = items
            .iter()
            .map(|i| i.heatmap.to_string_lossy().into_owned())
            .collect();
        // In name order, the first path to each real file wins: b-again.png before sub/b.png.
        assert_eq!(names, ["a.png", "b-again.png"], "{names:?}");
        // The same folder given twice is walked once too.
        let twice = collect_items(&[r.clone(), r.join("sub")], None).unwrap();
        assert_eq!(twice.len(), 2);
    }

    #[test]
    fn heatmap_names_mirror_the_inputs_below_their_common_folder() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        for f in [
            "bottle/test/crack/000.png",
            "bottle/test/good/000.png",
            "bottle/ground_truth/crack/000_mask.png",
            "pill/test/crack/000.png",
            "pill/test/crack/000.jpg",
            "pill/test/.hidden.png",
            "pill/test/notes.txt",
        ] {
            touch(&r.join(f));
        }
        let items = collect_items(&[r.join("bottle/test"), r.join("pill/test")], None).unwrap();
        let names: Vec<String> = items
            .iter()
            .map(|i| i.heatmap.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "bottle/test/crack/000.png",
                "bottle/test/good/000.png",
                "pill/test/crack/000.png",
                "pill/test/crack/000-1.png"
            ]
        );
        // The MVTec-layout mask is found for the defective image only.
        assert_eq!(
            items[0].mask,
            Some(r.join("bottle/ground_truth/crack/000_mask.png"))
        );
        assert_eq!(items[1].mask, None);

        // One folder: names relative to it; one file: its own name.
        let items = collect_items(&[r.join("bottle")], None).unwrap();
        assert_eq!(items.len(), 2, "ground_truth is not walked");
        assert_eq!(items[0].heatmap, PathBuf::from("test/crack/000.png"));
        let items = collect_items(
            &[r.join("pill/test/crack/000.jpg")],
            Some(&r.join("bottle/ground_truth/crack")),
        )
        .unwrap();
        assert_eq!(items[0].heatmap, PathBuf::from("000.png"));
        assert_eq!(
            items[0].mask,
            Some(r.join("bottle/ground_truth/crack/000_mask.png"))
        );
        std::fs::create_dir_all(r.join("empty/sub")).unwrap();
        let err = collect_items(&[r.join("empty")], None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no images under"), "{err}");
    }
}
