//! What the integration tests share.

/// Deterministic values in [-1, 1) with varied exponents (one in four scaled by 0.01).
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 40) as f32 / (1u64 << 24) as f32;
            (2.0 * u - 1.0) * if s & 3 == 0 { 0.01 } else { 1.0 }
        })
        .collect()
}
