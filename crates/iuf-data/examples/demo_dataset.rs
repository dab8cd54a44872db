//! Writes the procedural demo dataset to a folder and indexes it:
//! `cargo run -p iuf-data --release --example demo_dataset -- OUT_DIR [SEED]`.
use std::path::PathBuf;
use std::time::Instant;

use iuf_data::demo::{generate, DemoConfig};
use iuf_data::DatasetRoot;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().ok_or("usage: demo_dataset OUT_DIR [SEED]")?);
    let seed = args.next().map(|s| s.parse()).transpose()?.unwrap_or(0);
    let cfg = DemoConfig {
        seed,
        ..DemoConfig::default()
    };
    let start = Instant::now();
    let classes = generate(&dir, &cfg)?;
    let took = start.elapsed();
    let root = DatasetRoot::open(&dir)?;
    for index in root.index(&classes)? {
        println!(
            "{}: {} train, {} test normal, {} test defective ({})",
            index.name,
            index.train.len(),
            index.num_test_normal(),
            index.num_test_anomalous(),
            index.defect_types().join(", ")
        );
    }
    println!("generated in {:.3} s", took.as_secs_f64());
    Ok(())
}
