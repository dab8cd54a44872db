//! A per-object memory of normal patch features (ALGORITHM.md section 10, PatchCore-style): a
//! greedy k-center coreset of the object's patch features, and the anomaly score of a test patch as
//! the Euclidean distance to its nearest memory patch.
//!
//! Nothing here is trained: an object's memory is built from its own good images only and never
//! touched again, so learning another object cannot change it.
//!
//! Both heavy parts are designed for a 2-core CPU:
//! - selection runs on a random subset of at most `candidates` patches, projected to a few dozen
//!   dimensions; each greedy round is one pass over that projection, split over the rayon pool;
//! - scoring is blocked matrix products `|q|^2 + |m|^2 - 2 q.m`: each rayon task multiplies a block
//!   of query patches with the whole memory (single-threaded gemm into its own buffer) and keeps
//!   the row minima, so the full distance matrix never exists.

use candle_core::{DType, Device, Tensor, D};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::ops::fused::{matmul, rows_lhs, with_f32, Split};

/// How a memory is selected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryConfig {
    /// Most patches kept per object (the coreset size; fewer when the object has fewer patches).
    pub patches: usize,
    /// Patches the greedy selection considers, drawn at random from all of the object's patches
    /// (0: all of them).
    pub candidates: usize,
    /// Width of the random Gaussian projection the selection measures distances in (a multiple
    /// of 16; 0: the features themselves).
    pub projection: usize,
    /// Seed of the candidate draw, the projection and the first centre.
    pub seed: u64,
    /// Store the memory in the model file as f16 (half the bytes; scoring stays f32).
    #[serde(default)]
    pub f16: bool,
    /// Standard deviation, in pixels of the image-size map, of the Gaussian blur applied to the
    /// memory's map (PatchCore uses 4; 0: none).
    #[serde(default)]
    pub blur_sigma: f64,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            patches: 4096,
            candidates: 65536,
            projection: 32,
            seed: 0,
            f16: true,
            blur_sigma: 4.0,
        }
    }
}

impl MemoryConfig {
    /// The dtype the model file stores per-object statistics in (f16 with `f16`, else f32).
    pub fn stored_dtype(&self) -> candle_core::DType {
        if self.f16 {
            candle_core::DType::F16
        } else {
            candle_core::DType::F32
        }
    }

    /// Rejects settings that cannot work.
    pub fn check(&self) -> Result<()> {
        let bad = |msg: String| Err(ModelError::Config(format!("memory: {msg}")));
        if self.patches == 0 {
            return bad("patches must be at least 1".into());
        }
        if self.candidates != 0 && self.candidates < self.patches {
            return bad(format!(
                "candidates ({}) must be 0 (all) or at least patches ({})",
                self.candidates, self.patches
            ));
        }
        if !(self.blur_sigma >= 0.0 && self.blur_sigma <= 64.0) {
            return bad(format!(
                "blur_sigma must lie in [0, 64], found {}",
                self.blur_sigma
            ));
        }
        if !self.projection.is_multiple_of(16) {
            return bad(format!(
                "projection must be a multiple of 16 (or 0), found {}",
                self.projection
            ));
        }
        Ok(())
    }
}

/// Patches `[N, C, h, w]` as rows `[N * h * w, C]` (image-major, then row, then column).
pub fn patches_of(features: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = features.dims4()?;
    Ok(features
        .permute((0, 2, 3, 1))?
        .reshape((n * h * w, c))?
        .to_dtype(DType::F32)?
        .contiguous()?)
}

/// One object's memory: `[M, C]` patch features.
#[derive(Debug, Clone)]
pub struct PatchMemory {
    /// f32, or f16 as a model file stores it (half the resident bytes; widened to f32, exactly,
    /// for each scoring call: 0.6 M values, well under a millisecond).
    bank: Tensor,
    /// `|m|^2` of every row, `[M]`.
    norms: Tensor,
    /// `bank^T` in bf16 for inference scopes (`iuf_bf16::scoped`), packed on first use (the bank
    /// never changes).
    packed: std::sync::Arc<std::sync::OnceLock<iuf_bf16::PackedB>>,
}

impl PatchMemory {
    /// A memory holding exactly `bank` `[M, C]` (e.g. read back from a model file): kept as f16
    /// when it is f16, else as f32.
    pub fn from_bank(bank: Tensor) -> Result<Self> {
        let (m, _) = bank.dims2()?;
        if m == 0 {
            return Err(ModelError::Input {
                name: "memory bank".into(),
                expected: "at least one patch".into(),
                found: format!("{:?}", bank.dims()),
            });
        }
        let bank = match bank.dtype() {
            DType::F16 => bank.contiguous()?,
            _ => bank.to_dtype(DType::F32)?.contiguous()?,
        };
        let norms = bank.to_dtype(DType::F32)?.sqr()?.sum(1)?;
        Ok(Self {
            bank,
            norms,
            packed: Default::default(),
        })
    }

    /// Selects the memory of one object from its good images' features `[N, C, h, w]`.
    pub fn build(features: &Tensor, cfg: &MemoryConfig) -> Result<Self> {
        cfg.check()?;
        let patches = patches_of(features)?;
        let total = patches.dim(0)?;
        if total == 0 {
            return Err(ModelError::Input {
                name: "memory features".into(),
                expected: "at least one image".into(),
                found: format!("{:?}", features.dims()),
            });
        }
        let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0x4D45_4D4F_5259);
        let pool = draw_candidates(&patches, cfg.candidates, &mut rng)?;
        Self::select(&pool, cfg, &mut rng)
    }

    /// The memory of the patches this memory holds and those of more good images' features
    /// `[N, C, h, w]`: a greedy k-center coreset of both, with the same cap (`cfg.patches`).
    /// Every patch held now is a candidate; the new images' patches are drawn at random when
    /// all together would exceed `cfg.candidates`. The selection is seeded by `cfg.seed`.
    pub fn extend(&self, features: &Tensor, cfg: &MemoryConfig) -> Result<Self> {
        cfg.check()?;
        let (_, c, _, _) = features.dims4()?;
        if c != self.channels() {
            return Err(ModelError::Input {
                name: "memory features to add".into(),
                expected: format!("{} channels", self.channels()),
                found: format!("{:?}", features.dims()),
            });
        }
        let patches = patches_of(features)?.to_device(self.bank.device())?;
        if patches.dim(0)? == 0 {
            return Err(ModelError::Input {
                name: "memory features to add".into(),
                expected: "at least one image".into(),
                found: format!("{:?}", features.dims()),
            });
        }
        let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0x4D4F_5245);
        let room = match cfg.candidates {
            0 => 0,
            n => n.saturating_sub(self.len()).max(1),
        };
        let new = draw_candidates(&patches, room, &mut rng)?;
        let pool = Tensor::cat(&[&self.f32_bank()?, &new], 0)?;
        Self::select(&pool, cfg, &mut rng)
    }

    /// The greedy k-center coreset of `pool` `[P, C]` (at most `cfg.patches` rows), distances
    /// measured on `cfg`'s random projection.
    fn select(pool: &Tensor, cfg: &MemoryConfig, rng: &mut StdRng) -> Result<Self> {
        let (p, c) = pool.dims2()?;
        let k = cfg.patches.min(p);
        // Distances are measured on a random projection (scaled 1/sqrt(d)), or on the features
        // themselves, zero-padded to a multiple of 16 lanes.
        let (proj, d) = if cfg.projection > 0 {
            let d = cfg.projection;
            let scale = 1.0 / (d as f32).sqrt();
            let r: Vec<f32> = (0..c * d)
                .map(|_| {
                    let v: f32 = StandardNormal.sample(rng);
                    v * scale
                })
                .collect();
            let r = Tensor::from_vec(r, (c, d), pool.device())?;
            (pool.matmul(&r)?, d)
        } else {
            let d = c.div_ceil(16) * 16;
            (pool.pad_with_zeros(1, 0, d - c)?, d)
        };
        let proj: Vec<f32> = proj.to_device(&Device::Cpu)?.flatten_all()?.to_vec1()?;
        let first = rng.gen_range(0..p);
        let chosen = greedy_k_center(&proj, d, k, first);
        let chosen_t = Tensor::from_vec(
            chosen.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            k,
            pool.device(),
        )?;
        Self::from_bank(pool.index_select(&chosen_t, 0)?)
    }

    /// The memory patches `[M, C]`, as held (f16 when read from an f16 model file).
    pub fn bank(&self) -> &Tensor {
        &self.bank
    }

    /// The memory patches `[M, C]` in f32 (a copy when held as f16).
    fn f32_bank(&self) -> Result<Tensor> {
        Ok(self.bank.to_dtype(DType::F32)?)
    }

    /// Patches held.
    pub fn len(&self) -> usize {
        self.bank.dim(0).unwrap_or(0)
    }

    /// Never true for a built memory; for completeness.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Channels of every patch.
    pub fn channels(&self) -> usize {
        self.bank.dim(1).unwrap_or(0)
    }

    /// The distance of every patch of `features` `[B, C, h, w]` to its nearest memory patch,
    /// `[B, 1, h, w]` (f32, same device).
    pub fn score(&self, features: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = features.dims4()?;
        if c != self.channels() {
            return Err(ModelError::Input {
                name: "memory query features".into(),
                expected: format!("{} channels", self.channels()),
                found: format!("{:?}", features.dims()),
            });
        }
        let q = patches_of(features)?;
        let bank = self.f32_bank()?;
        let d2 = if q.device().is_cpu() && bank.device().is_cpu() {
            let rows = b * h * w;
            let products = match iuf_bf16::active() {
                Some(cpu) => BlockProducts::Bf16(cpu, self.packed_bank()?),
                None => BlockProducts::F32,
            };
            let v = nearest_sq(products, &q, &bank, &self.norms, rows, c)?;
            Tensor::from_vec(v, rows, &Device::Cpu)?
        } else {
            // Any other device: the same products as candle ops, in query blocks.
            let mut parts = Vec::new();
            let bank_t = bank.t()?;
            for start in (0..q.dim(0)?).step_by(QUERY_BLOCK) {
                let len = QUERY_BLOCK.min(q.dim(0)? - start);
                let qb = q.narrow(0, start, len)?;
                let qm = qb.matmul(&bank_t)?;
                let part = (qm * -2.0)?
                    .broadcast_add(&self.norms.unsqueeze(0)?)?
                    .min(D::Minus1)?
                    .broadcast_add(&qb.sqr()?.sum(1)?)?;
                parts.push(part);
            }
            Tensor::cat(&parts, 0)?
        };
        Ok(d2
            .clamp(0f32, f32::INFINITY)?
            .sqrt()?
            .reshape((b, 1, h, w))?)
    }

    /// `bank^T` packed for the bf16 products, packed on first use.
    fn packed_bank(&self) -> Result<&iuf_bf16::PackedB> {
        if let Some(p) = self.packed.get() {
            return Ok(p);
        }
        let p = with_f32(&self.f32_bank()?, "memory bank", |bd| {
            Ok(iuf_bf16::PackedB::pack(
                self.channels(),
                self.len(),
                bd,
                (1, self.channels()),
            ))
        })?;
        Ok(self.packed.get_or_init(|| p))
    }
}

/// Query rows per block of the scoring products.
const QUERY_BLOCK: usize = 128;

/// How the scoring multiplies a block of query rows with the whole memory, and what its products
/// are trusted for.
#[derive(Clone, Copy)]
enum BlockProducts<'a> {
    /// f32 products (single-threaded gemm); a row's squared distance is
    /// `min_j (|m_j|^2 - 2 q.m_j) + |q|^2`.
    F32,
    /// bf16 products (f32 accumulation) with the packed `bank^T`, used only to find each query's
    /// nearest memory patch, whose squared distance is then computed exactly in f32 from the f32
    /// features: a bf16 rounding can at worst pick a patch almost as near as the nearest, never
    /// report a distance to no patch.
    Bf16(iuf_bf16::Bf16Cpu, &'a iuf_bf16::PackedB),
}

impl BlockProducts<'_> {
    /// `dots[i * m + j] = q_i . m_j` for the `len` rows of `qb` (`len x c`) and the `m` rows of
    /// `bank` (`m x c`); `dots` holds at least `len x m` floats.
    fn multiply(
        self,
        qb: &[f32],
        bank: &[f32],
        (len, m, c): (usize, usize, usize),
        dots: &mut [f32],
    ) {
        match self {
            BlockProducts::F32 => {
                assert!(qb.len() >= len * c && bank.len() >= m * c && dots.len() >= len * m);
                // SAFETY: qb is len x c row-major, bank is m x c row-major (read as its transpose
                // c x m through strides), dots holds len x m floats owned by the caller (checked
                // above).
                unsafe {
                    matmul(
                        (len, m, c),
                        dots.as_mut_ptr(),
                        (m, 1),
                        qb.as_ptr(),
                        (c, 1),
                        bank.as_ptr(),
                        (1, c),
                        1.0,
                        Split::No,
                    );
                }
            }
            BlockProducts::Bf16(cpu, packed) => {
                let out = iuf_bf16::Out { data: dots, rs: m };
                cpu.matmul(len, rows_lhs(qb, c), packed, out);
            }
        }
    }

    /// `min_j |q - m_j|^2` (unclamped) of one query row `q` from its products `dots` with every
    /// memory row (`bank` `[m, c]`, `norms` its `|m_j|^2`).
    fn nearest_sq(self, q: &[f32], dots: &[f32], bank: &[f32], norms: &[f32]) -> f32 {
        match self {
            BlockProducts::F32 => {
                min_norm_minus_twice(dots, norms) + q.iter().map(|x| x * x).sum::<f32>()
            }
            BlockProducts::Bf16(..) => {
                let c = q.len();
                let j = argmin_norm_minus_twice(dots, norms);
                let mj = &bank[j * c..(j + 1) * c];
                q.iter().zip(mj).map(|(x, y)| (x - y) * (x - y)).sum()
            }
        }
    }
}

/// Per query row, `min_j |q_i - m_j|^2` (unclamped): each rayon task multiplies a block of query
/// rows with the whole memory into its own buffer and keeps each row's nearest.
fn nearest_sq(
    products: BlockProducts<'_>,
    q: &Tensor,
    bank: &Tensor,
    norms: &Tensor,
    rows: usize,
    c: usize,
) -> Result<Vec<f32>> {
    let m = bank.dim(0)?;
    let mut out = vec![0f32; rows];
    with_f32(q, "memory query", |qd| {
        with_f32(bank, "memory bank", |bd| {
            with_f32(norms, "memory norms", |nd| {
                out.par_chunks_mut(QUERY_BLOCK).enumerate().for_each_init(
                    || vec![0f32; QUERY_BLOCK * m],
                    |buf, (bi, dst)| {
                        let r0 = bi * QUERY_BLOCK;
                        let len = dst.len();
                        let qb = &qd[r0 * c..(r0 + len) * c];
                        products.multiply(qb, bd, (len, m, c), buf);
                        for (i, o) in dst.iter_mut().enumerate() {
                            let qi = &qb[i * c..(i + 1) * c];
                            *o = products.nearest_sq(qi, &buf[i * m..(i + 1) * m], bd, nd);
                        }
                    },
                );
                Ok(())
            })
        })
    })?;
    Ok(out)
}

/// `argmin_j (norms[j] - 2 dots[j])` (the first on ties), in 16 lanes so it vectorises.
fn argmin_norm_minus_twice(dots: &[f32], norms: &[f32]) -> usize {
    let mut best = [f32::INFINITY; 16];
    let mut at = [0u32; 16];
    let mut dc = dots.chunks_exact(16);
    let mut nc = norms.chunks_exact(16);
    for (chunk, (d, n)) in (&mut dc).zip(&mut nc).enumerate() {
        for l in 0..16 {
            let v = n[l] - 2.0 * d[l];
            if v < best[l] {
                best[l] = v;
                at[l] = (chunk * 16 + l) as u32;
            }
        }
    }
    let (mut b, mut j) = (f32::INFINITY, 0usize);
    for l in 0..16 {
        if best[l] < b || (best[l] == b && (at[l] as usize) < j) {
            (b, j) = (best[l], at[l] as usize);
        }
    }
    let tail = dots.len() - dc.remainder().len();
    for (t, (d, n)) in dc.remainder().iter().zip(nc.remainder()).enumerate() {
        let v = n - 2.0 * d;
        if v < b {
            (b, j) = (v, tail + t);
        }
    }
    j
}

/// `min_j (norms[j] - 2 dots[j])`, in 16 independent lanes so it vectorises.
fn min_norm_minus_twice(dots: &[f32], norms: &[f32]) -> f32 {
    let mut lanes = [f32::INFINITY; 16];
    let mut dc = dots.chunks_exact(16);
    let mut nc = norms.chunks_exact(16);
    for (d, n) in (&mut dc).zip(&mut nc) {
        for l in 0..16 {
            lanes[l] = lanes[l].min(n[l] - 2.0 * d[l]);
        }
    }
    let mut best = lanes.iter().copied().fold(f32::INFINITY, f32::min);
    for (d, n) in dc.remainder().iter().zip(nc.remainder()) {
        best = best.min(n - 2.0 * d);
    }
    best
}

/// A uniform random subset of `n` rows of `patches` `[total, C]`, in increasing order (so the
/// selection depends on which rows were drawn, not how); all of them when `n` is 0 or covers them.
fn draw_candidates(patches: &Tensor, n: usize, rng: &mut StdRng) -> Result<Tensor> {
    let total = patches.dim(0)?;
    if n == 0 || n >= total {
        return Ok(patches.clone());
    }
    let mut idx = rand::seq::index::sample(rng, total, n).into_vec();
    idx.sort_unstable();
    let idx_t = Tensor::from_vec(
        idx.iter().map(|&i| i as u32).collect::<Vec<_>>(),
        idx.len(),
        patches.device(),
    )?;
    Ok(patches.index_select(&idx_t, 0)?)
}

/// Greedy k-center selection: starting from row `first`, repeatedly adds the row farthest from the
/// chosen set. `x` is `[n, d]` row-major with `d` a multiple of 16. Returns `k` distinct rows in
/// selection order (fewer only when `n < k`).
pub fn greedy_k_center(x: &[f32], d: usize, k: usize, first: usize) -> Vec<usize> {
    assert!(d > 0 && d.is_multiple_of(16) && x.len().is_multiple_of(d));
    let n = x.len() / d;
    let k = k.min(n);
    let mut chosen = Vec::with_capacity(k);
    if k == 0 {
        return chosen;
    }
    let mut min_d = vec![f32::INFINITY; n];
    let chunk = n
        .div_ceil(8 * rayon::current_num_threads().max(1))
        .max(1024);
    let mut next = first;
    while chosen.len() < k {
        chosen.push(next);
        min_d[next] = f32::NEG_INFINITY; // never picked again
        let centre = &x[next * d..(next + 1) * d];
        // Update every row's distance to the set and find the farthest, per chunk.
        let (best_i, best_v) = min_d
            .par_chunks_mut(chunk)
            .enumerate()
            .map(|(ci, md)| {
                let base = ci * chunk;
                let mut best = (usize::MAX, f32::NEG_INFINITY);
                for (j, m) in md.iter_mut().enumerate() {
                    let i = base + j;
                    if *m == f32::NEG_INFINITY {
                        continue;
                    }
                    let dist = sq_dist16(&x[i * d..(i + 1) * d], centre);
                    if dist < *m {
                        *m = dist;
                    }
                    if *m > best.1 {
                        best = (i, *m);
                    }
                }
                best
            })
            .reduce(
                || (usize::MAX, f32::NEG_INFINITY),
                |a, b| {
                    // Ties go to the lower index, so the result does not depend on the split.
                    if b.1 > a.1 || (b.1 == a.1 && b.0 < a.0) {
                        b
                    } else {
                        a
                    }
                },
            );
        if best_i == usize::MAX || best_v == f32::NEG_INFINITY {
            break;
        }
        next = best_i;
    }
    chosen
}

/// Squared Euclidean distance of two rows whose length is a multiple of 16.
fn sq_dist16(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    for (x, y) in a.chunks_exact(16).zip(b.chunks_exact(16)) {
        for l in 0..16 {
            let t = x[l] - y[l];
            acc[l] += t * t;
        }
    }
    acc.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute_nearest(q: &[f32], bank: &[f32], c: usize) -> Vec<f32> {
        q.chunks_exact(c)
            .map(|qi| {
                bank.chunks_exact(c)
                    .map(|m| {
                        qi.iter()
                            .zip(m)
                            .map(|(a, b)| (a - b) * (a - b))
                            .sum::<f32>()
                    })
                    .fold(f32::INFINITY, f32::min)
                    .sqrt()
            })
            .collect()
    }

    #[test]
    fn scores_equal_brute_force_nearest_neighbour_distances() {
        let dev = Device::Cpu;
        // 300 query rows: several blocks of 128 and a remainder; 37 memory rows (not a multiple
        // of 16) of 20 channels.
        let bank = Tensor::randn(0f32, 1f32, (37, 20), &dev).unwrap();
        let feats = Tensor::randn(0f32, 1f32, (3, 20, 10, 10), &dev).unwrap();
        let mem = PatchMemory::from_bank(bank.clone()).unwrap();
        let got: Vec<f32> = mem
            .score(&feats)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let q: Vec<f32> = patches_of(&feats)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let b: Vec<f32> = bank.flatten_all().unwrap().to_vec1().unwrap();
        let want = brute_nearest(&q, &b, 20);
        assert_eq!(got.len(), 300);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() < 1e-3 * (1.0 + w), "row {i}: {g} vs {w}");
        }
        // A query equal to a memory row scores (almost) zero.
        let row = bank
            .narrow(0, 5, 1)
            .unwrap()
            .reshape((1, 20, 1, 1))
            .unwrap();
        let s: Vec<f32> = mem
            .score(&row)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(s[0] < 1e-2, "{s:?}");
    }

    #[test]
    fn greedy_k_center_picks_the_farthest_point_each_round() {
        // 1-D points (padded to 16 lanes): 0, 1, 2, 10, 11, 20.
        let pts = [0f32, 1.0, 2.0, 10.0, 11.0, 20.0];
        let mut x = vec![0f32; pts.len() * 16];
        for (i, p) in pts.iter().enumerate() {
            x[i * 16] = *p;
        }
        // From 0: farthest is 20; then 10 (distance 10 to both 0 and 20); then 2 or 11... the
        // distances are then 2 (point 2), 1 (point 11): 2 comes next.
        assert_eq!(greedy_k_center(&x, 16, 4, 0), vec![0, 5, 3, 2]);
        // Asking for more than there are returns each once.
        let all = greedy_k_center(&x, 16, 10, 0);
        let mut sorted = all.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, vec![0, 1, 2, 3, 4, 5]);
    }

    /// Guarantee: extending a memory with images of another look (a new lighting) makes it
    /// cover them, within the same cap, while it keeps covering what it covered.
    #[test]
    fn extend_covers_the_new_images_within_the_cap() {
        let dev = Device::Cpu;
        let old = Tensor::randn(0f32, 1f32, (6, 8, 6, 6), &dev).unwrap();
        let new = (Tensor::randn(0f32, 1f32, (2, 8, 6, 6), &dev).unwrap() + 20.0).unwrap();
        let cfg = MemoryConfig {
            patches: 64,
            candidates: 150,
            projection: 16,
            seed: 3,
            f16: false,
            blur_sigma: 0.0,
        };
        let max = |m: &PatchMemory, x: &Tensor| -> f32 {
            let s: Vec<f32> = m
                .score(x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            s.into_iter().fold(0.0, f32::max)
        };
        let first = PatchMemory::build(&old, &cfg).unwrap();
        let far = max(&first, &new);
        let grown = first.extend(&new, &cfg).unwrap();
        assert_eq!(grown.len(), 64);
        let near = max(&grown, &new);
        assert!(near < far / 3.0, "new images: {near} after vs {far} before");
        // The old images stay about as well covered (the cap is shared, so not exactly).
        let (before, after) = (max(&first, &old), max(&grown, &old));
        assert!(
            after < before * 1.5,
            "old images: {after} after vs {before} before"
        );
        // Deterministic, and the channels must match.
        let again = first.extend(&new, &cfg).unwrap();
        assert_eq!(
            grown
                .bank()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            again
                .bank()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        );
        let wrong = Tensor::zeros((1, 4, 6, 6), DType::F32, &dev).unwrap();
        assert!(first.extend(&wrong, &cfg).is_err());
    }

    #[test]
    fn build_covers_the_patches_and_is_deterministic() {
        let dev = Device::Cpu;
        let feats = Tensor::randn(0f32, 1f32, (4, 8, 6, 6), &dev).unwrap();
        let cfg = MemoryConfig {
            patches: 30,
            candidates: 100,
            projection: 16,
            seed: 3,
            f16: false,
            blur_sigma: 0.0,
        };
        let a = PatchMemory::build(&feats, &cfg).unwrap();
        let b = PatchMemory::build(&feats, &cfg).unwrap();
        assert_eq!(a.len(), 30);
        assert_eq!(
            a.bank().flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.bank().flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        // Every memory row is one of the training patches (distance 0 to itself).
        let rows = a.bank().reshape((30, 8, 1, 1)).unwrap();
        let s: Vec<f32> = a
            .score(&rows)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(s.iter().all(|&v| v < 1e-2), "{s:?}");
        // A memory bigger than the patches keeps them all.
        let all = PatchMemory::build(
            &feats,
            &MemoryConfig {
                patches: 1000,
                candidates: 0,
                projection: 0,
                seed: 0,
                f16: false,
                blur_sigma: 0.0,
            },
        )
        .unwrap();
        assert_eq!(all.len(), 4 * 36);
        assert!(PatchMemory::build(
            &feats,
            &MemoryConfig {
                patches: 10,
                candidates: 5,
                ..cfg
            }
        )
        .is_err());
    }
}
