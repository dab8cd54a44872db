//! Tensor kernels of the backbone: the direct depthwise convolution (CPU custom op with a candle
//! fallback), the im2col stem convolution, the fused bias + activation epilogue, TF "SAME" padding,
//! and the bilinear align_corners=True resize of the neck.

mod depthwise;
mod epilogue;
mod im2col;
mod resize;

pub(crate) use depthwise::depthwise_conv2d_same_fused;
pub use depthwise::{depthwise_conv2d_same, depthwise_conv2d_same_reference};
pub use epilogue::{activate, Epilogue};
pub(crate) use epilogue::{bias_activation, ChannelBias};
pub(crate) use im2col::conv2d_same;
pub use resize::resize_bilinear_align_corners;

/// TF "SAME" padding along one axis: output size `ceil(input / stride)`, and the zero padding
/// before and after the input. The odd pixel of an odd total goes after (bottom/right), which is
/// why a stride-2 layer pads asymmetrically (section 2).
pub fn same_padding(input: usize, kernel: usize, stride: usize) -> (usize, usize, usize) {
    let output = input.div_ceil(stride.max(1));
    let total = ((output.max(1) - 1) * stride + kernel).saturating_sub(input);
    (output, total / 2, total - total / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_matches_tensorflow() {
        // 224 -> 112 with a 3x3 stride-2 kernel: one extra row/column at the end only.
        assert_eq!(same_padding(224, 3, 2), (112, 0, 1));
        // 112 -> 56 with 5x5 stride 2: total 3, 1 before and 2 after.
        assert_eq!(same_padding(112, 5, 2), (56, 1, 2));
        assert_eq!(same_padding(14, 5, 1), (14, 2, 2));
        assert_eq!(same_padding(15, 3, 2), (8, 1, 1));
        assert_eq!(same_padding(7, 1, 1), (7, 0, 0));
    }
}
