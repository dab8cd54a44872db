//! `cargo xtask small-defects`: writes the procedural small-defect benchmark
//! (`iuf_data::demo::small_defects`) in MVTec AD layout, with progress and a summary.
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use iuf_data::demo::small_defects::{
    defect_type, generate_with_progress, DefectKind, Product, SmallDefectsConfig,
};

/// What the set is for, printed under the options by `--help` (the subcommand's one-line summary
/// lives in main.rs).
const ABOUT: &str = "\
A procedural benchmark for small defects on high-resolution images, in MVTec AD layout for
`iuf bench` and the loaders: line-camera-like products (brushed_metal, a brushed steel strip
filling the frame; pcb, a circuit board on a conveyor with small placement changes) with spots,
scratches, cracks and missing pieces of controlled sizes, exact masks, and one test folder per
kind and size (test/crack-16px, ground_truth/crack-16px/000_mask.png).

It measures how detection and localisation fall off with defect size, and what tiling or
resizing to 224x224 does to a defect of a few pixels. It cannot stand in for real products,
real defect appearance, optics, or a backbone's behaviour on real textures.

Every image is a pure function of (seed, product, split, index); a rerun may replace a folder
this command wrote (it holds .iuf-small-defects.json), never one of another origin.";

#[derive(clap::Args)]
#[command(after_help = ABOUT)]
pub struct Args {
    /// Output folder (created if needed).
    #[arg(long)]
    pub out: PathBuf,
    /// Side of the square images in pixels (1024 or 2048 for the benchmark; 256..=8192).
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Good training images per product.
    #[arg(long, default_value_t = 200)]
    pub train: usize,
    /// Good test images per product.
    #[arg(long, default_value_t = 40)]
    pub test_good: usize,
    /// Defective test images per product, defect kind and size.
    #[arg(long, default_value_t = 8)]
    pub per_size: usize,
    /// Defect sizes in pixels, comma-separated (each at most size / 8).
    #[arg(long, value_delimiter = ',', default_value = "4,8,16,32,64")]
    pub sizes: Vec<usize>,
    /// Defect kinds, comma-separated: spot, scratch, crack, missing_piece.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "spot,scratch,crack,missing_piece"
    )]
    pub kinds: Vec<String>,
    /// Products, comma-separated: brushed_metal, pcb.
    #[arg(long, value_delimiter = ',', default_value = "brushed_metal,pcb")]
    pub products: Vec<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(args: Args) -> Result<()> {
    let cfg = SmallDefectsConfig {
        seed: args.seed,
        size: args.size,
        train: args.train,
        test_good: args.test_good,
        per_size: args.per_size,
        sizes: args.sizes,
        kinds: args
            .kinds
            .iter()
            .map(|k| DefectKind::parse(k.trim()))
            .collect::<Result<_, _>>()?,
        products: args
            .products
            .iter()
            .map(|p| Product::parse(p.trim()))
            .collect::<Result<_, _>>()?,
    };
    cfg.check()?;
    let total = cfg.num_images();
    eprintln!(
        "writing {total} images of {size}x{size} pixels ({} products) to {}",
        cfg.products.len(),
        args.out.display(),
        size = cfg.size
    );
    let start = Instant::now();
    let reported = AtomicUsize::new(0);
    let progress = |done: usize, total: usize| {
        // Every tenth of the way, once.
        let tenth = done * 10 / total;
        if reported.fetch_max(tenth, Ordering::Relaxed) < tenth {
            eprintln!(
                "  {done}/{total} images ({}%, {:.0} s)",
                tenth * 10,
                start.elapsed().as_secs_f64()
            );
        }
    };
    let summary = generate_with_progress(&args.out, &cfg, &progress).with_context(|| {
        format!(
            "generating the small-defect benchmark in {}",
            args.out.display()
        )
    })?;
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "wrote {} images and {} masks in {seconds:.1} s ({:.1} images/s) to {}",
        summary.images,
        summary.masks,
        summary.images as f64 / seconds.max(1e-9),
        args.out.display()
    );
    println!("products: {}", summary.products.join(", "));
    let types: Vec<String> = cfg
        .kinds
        .iter()
        .flat_map(|&k| cfg.sizes.iter().map(move |&s| defect_type(k, s)))
        .collect();
    println!(
        "per product: {} train/good, {} test/good, {} defective in {}",
        cfg.train,
        cfg.test_good,
        cfg.per_size * types.len(),
        types.join(" ")
    );
    Ok(())
}
