//! The decode budget: how many image pixels `predict` and `serve` hold decoded at once. An image's
//! size is read from its header before it is decoded; a batch takes images only while they fit
//! in the budget together, and an image that alone exceeds it is refused, naming its size and the
//! limit. A folder of many large images is still processed, in smaller batches.

use anyhow::{bail, Result};

/// Bytes one decoded pixel may take at the peak of decoding: the decoder's own buffer (1 to 8
/// bytes for gray to 16-bit RGBA) and the 8-bit RGB image made from it (3 bytes).
pub const BYTES_PER_PIXEL: u64 = 8;
/// The default budget is what this share of the available memory holds.
const MEMORY_SHARE: u64 = 4;
/// The default budget is never smaller (512 MiB at 8 bytes a pixel: an 8000 x 8000 image).
const MIN_DEFAULT_PIXELS: u64 = 64_000_000;
/// Assumed available memory where the system does not say (not Linux).
const FALLBACK_MEMORY: u64 = 2 << 30;

/// `--decode-budget-mp`, on `predict` and `serve`.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct DecodeBudgetArg {
    /// Most image pixels decoded at once, in megapixels (a 12000 x 12000 image is 144 MP and
    /// takes about 0.6 GB decoded). An image's size is read from its header first; a batch
    /// (predict), or the images of a request and of a batch (serve), is made smaller to fit, and
    /// an image larger than the budget alone is refused (serve: 413), naming its size. Default:
    /// what a quarter of the memory available at start holds at 8 bytes a pixel, at least 64 MP.
    #[arg(
        long,
        value_name = "MP",
        env = "IUF_DECODE_BUDGET_MP",
        value_parser = clap::value_parser!(u64).range(1..=1_000_000)
    )]
    pub decode_budget_mp: Option<u64>,
}

/// Pixels that may be decoded at once, and where the number came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeBudget {
    pub pixels: u64,
    /// The available memory the default was sized from, in bytes (None: set by the flag).
    pub sized_from: Option<u64>,
}

impl DecodeBudgetArg {
    /// The budget the flag gives, or the default sized for this machine.
    pub fn resolve(&self) -> Result<DecodeBudget> {
        Ok(match self.decode_budget_mp {
            Some(0) => bail!("--decode-budget-mp must be at least 1"),
            Some(mp) => DecodeBudget {
                pixels: mp * 1_000_000,
                sized_from: None,
            },
            None => {
                let memory = available_memory().unwrap_or(FALLBACK_MEMORY);
                DecodeBudget {
                    pixels: default_pixels(memory),
                    sized_from: Some(memory),
                }
            }
        })
    }
}

/// The default budget for `memory` bytes available: a quarter of it at 8 bytes a pixel, rounded
/// down to whole megapixels, at least 64 MP.
fn default_pixels(memory: u64) -> u64 {
    let pixels = memory / MEMORY_SHARE / BYTES_PER_PIXEL;
    (pixels / 1_000_000 * 1_000_000).max(MIN_DEFAULT_PIXELS)
}

/// Memory available to this process, in bytes: Linux's `MemAvailable`, lowered to what the
/// process's cgroup (a container's memory limit) leaves, when it has one.
fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let mut available = kib * 1024;
    let read = |f: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{f}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    if let (Some(max), Some(current)) = (read("memory.max"), read("memory.current")) {
        available = available.min(max.saturating_sub(current));
    }
    Some(available)
}

impl DecodeBudget {
    /// `700 MP (a quarter of the 22.3 GiB available, at 8 bytes a pixel)`, or `100 MP
    /// (--decode-budget-mp)`.
    pub fn describe(&self) -> String {
        let mp = iuf_data::image::megapixels(self.pixels);
        match self.sized_from {
            Some(m) => format!(
                "{mp} (a quarter of the {:.1} GiB available, at {BYTES_PER_PIXEL} bytes a pixel; \
                 --decode-budget-mp sets it)",
                m as f64 / (1u64 << 30) as f64
            ),
            None => format!("{mp} (--decode-budget-mp)"),
        }
    }

    /// Why an image of `width x height` cannot be decoded within the budget, if it cannot, with
    /// the fix for a user of the command line.
    pub fn refuse(&self, width: u32, height: u32) -> Option<String> {
        self.over(width, height).map(|size| {
            format!(
                "{size}, over the decode budget of {}; downscale the image or raise the budget",
                self.describe()
            )
        })
    }

    /// [`DecodeBudget::refuse`] in the terms of the HTTP API (a client cannot change the flag).
    pub fn refuse_upload(&self, width: u32, height: u32) -> Option<String> {
        self.over(width, height).map(|size| {
            format!(
                "{size}, over the {} this service decodes at once; send a smaller image",
                iuf_data::image::megapixels(self.pixels)
            )
        })
    }

    /// `the image is W x H pixels (N MP)` when it exceeds the budget.
    fn over(&self, width: u32, height: u32) -> Option<String> {
        let pixels = width as u64 * height as u64;
        (pixels > self.pixels).then(|| {
            format!(
                "the image is {width}x{height} pixels ({})",
                iuf_data::image::megapixels(pixels)
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_a_quarter_of_the_memory_at_8_bytes_a_pixel() {
        assert_eq!(default_pixels(32_000_000_000), 1_000_000_000);
        assert_eq!(default_pixels(1 << 30), MIN_DEFAULT_PIXELS);
        let b = DecodeBudget {
            pixels: 100_000_000,
            sized_from: None,
        };
        assert_eq!(b.refuse(10_000, 10_000), None);
        let why = b.refuse(12_000, 12_000).unwrap();
        assert!(
            why.starts_with(
                "the image is 12000x12000 pixels (144 MP), over the decode budget of 100 MP \
                 (--decode-budget-mp)"
            ),
            "{why}"
        );
        let why = b.refuse_upload(12_000, 12_000).unwrap();
        assert_eq!(
            why,
            "the image is 12000x12000 pixels (144 MP), over the 100 MP this service decodes at \
             once; send a smaller image"
        );
        assert!(available_memory().is_some_and(|m| m > 0));
    }
}
