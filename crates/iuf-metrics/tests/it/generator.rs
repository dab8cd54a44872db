//! The seeded generator shared with tests/reference/make_reference.py (`splitmix64` and
//! `generated_case` there), so million-sized cases are regenerated rather than committed.

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// Output i (0-based) of splitmix64 started at `seed`.
fn splitmix64(seed: u64, i: u64) -> u64 {
    let mut z = seed.wrapping_add((i + 1).wrapping_mul(GOLDEN));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Parameters of a generated case, as stored in the reference JSON.
pub struct Params {
    pub n: u64,
    pub seed_score: u64,
    pub seed_label: u64,
    pub score_bits: u32,
    pub label_modulus: u64,
    pub label_base: u64,
    pub label_slope: u64,
}

/// Scores q / 2^bits (exact in f32) and labels whose positive rate grows with the score level.
pub fn generate(p: &Params) -> (Vec<f32>, Vec<bool>) {
    let scale = (1u64 << p.score_bits) as f32;
    (0..p.n)
        .map(|i| {
            let q = splitmix64(p.seed_score, i) >> (64 - p.score_bits);
            let v = splitmix64(p.seed_label, i);
            let level = q >> (p.score_bits - 4);
            let label = v % p.label_modulus < p.label_base + p.label_slope * level;
            (q as f32 / scale, label)
        })
        .unzip()
}
