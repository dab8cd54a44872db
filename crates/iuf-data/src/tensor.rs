//! candle tensors from the pipeline's plain buffers (feature `candle`).
use candle_core::{Device, Result, Tensor};

use crate::image::ImageTensor;

/// Stacks images of one size into a `[B, 3, H, W]` f32 tensor.
pub fn images_to_tensor(images: &[ImageTensor], device: &Device) -> Result<Tensor> {
    let Some(first) = images.first() else {
        candle_core::bail!("images_to_tensor: expected at least one image; found none")
    };
    let (h, w) = (first.height, first.width);
    let mut data = Vec::with_capacity(images.len() * 3 * h * w);
    for (i, img) in images.iter().enumerate() {
        if img.height != h || img.width != w || img.data.len() != 3 * h * w {
            candle_core::bail!(
                "images_to_tensor: expected image {i} to be 3x{h}x{w} like image 0; found {}x{} with {} values",
                img.height,
                img.width,
                img.data.len()
            );
        }
        data.extend_from_slice(&img.data);
    }
    Tensor::from_vec(data, (images.len(), 3, h, w), device)
}

/// Stacks `size * size` row-major masks into a `[B, 1, size, size]` f32 tensor of 0/1.
pub fn masks_to_tensor(masks: &[Vec<bool>], size: usize, device: &Device) -> Result<Tensor> {
    let mut data = Vec::with_capacity(masks.len() * size * size);
    for (i, m) in masks.iter().enumerate() {
        if m.len() != size * size {
            candle_core::bail!(
                "masks_to_tensor: expected mask {i} to hold {size}x{size} values; found {}",
                m.len()
            );
        }
        data.extend(m.iter().map(|&b| if b { 1f32 } else { 0f32 }));
    }
    Tensor::from_vec(data, (masks.len(), 1, size, size), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacks_in_nchw_order() -> Result<()> {
        let a = ImageTensor {
            data: (0..12).map(|v| v as f32).collect(),
            height: 2,
            width: 2,
        };
        let b = ImageTensor {
            data: vec![-1.0; 12],
            height: 2,
            width: 2,
        };
        let t = images_to_tensor(&[a, b], &Device::Cpu)?;
        assert_eq!(t.dims(), [2, 3, 2, 2]);
        assert_eq!(
            t.get(0)?.get(1)?.flatten_all()?.to_vec1::<f32>()?,
            [4.0, 5.0, 6.0, 7.0]
        );
        let bad = ImageTensor {
            data: vec![0.0; 3],
            height: 1,
            width: 1,
        };
        assert!(images_to_tensor(&[t_img(), bad], &Device::Cpu).is_err());
        let m = masks_to_tensor(&[vec![true, false, false, true]], 2, &Device::Cpu)?;
        assert_eq!(m.flatten_all()?.to_vec1::<f32>()?, [1.0, 0.0, 0.0, 1.0]);
        assert!(masks_to_tensor(&[vec![true]], 2, &Device::Cpu).is_err());
        Ok(())
    }

    fn t_img() -> ImageTensor {
        ImageTensor {
            data: vec![0.0; 12],
            height: 2,
            width: 2,
        }
    }
}
