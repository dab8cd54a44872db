//! A second per-object statistic beside the nearest-neighbour memory: a Gaussian of the frozen
//! `feature_align` at every grid position (PaDiM-style, ALGORITHM.md section 10), optionally in the
//! object's own principal subspace to keep it small. The score of a token is its Mahalanobis
//! distance to its position's Gaussian. Like the memory, it is fitted once from the object's own good
//! images and never changed, so it cannot forget.
//!
//! Beside the precision matrices it keeps the sufficient statistics of the fit (the image count
//! and, per block of positions, the scatter matrix of the tokens about their position means), so
//! that good images added later ([`PositionGaussian::update`]) give exactly the Gaussian a fit on
//! all images together would give (Chan et al.'s pairwise update of means and scatter matrices).
//!
//! The covariance needs strong shrinkage (`+ shrinkage * I`, 1.0 by default): with PaDiM's 0.01,
//! tire's pixel AUROC falls to .47-.79 on mvtec-mini (section 10).

use candle_core::{DType, Device, Tensor, D};
use faer::linalg::solvers::DenseSolveCore;
use serde::{Deserialize, Serialize};

use crate::error::{ModelError as Error, Result};

/// How the per-position Gaussian is fitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GaussianConfig {
    /// Dimensions kept: the object's top principal directions of its training tokens (0: every
    /// channel, no projection).
    pub dims: usize,
    /// Added to the diagonal of every covariance.
    pub shrinkage: f64,
    /// Side of the square blocks of grid positions that share one covariance (1: one per
    /// position; means are always per position). Must divide the grid.
    #[serde(default = "one")]
    pub share: usize,
    /// Keep the fit's statistics (image count and scatter matrices) in the model file, so that
    /// good images can be added exactly later (`iuf learn --more`). They are about 14 MB per
    /// object with Lite0 (the file's largest part); without them an object is about 5 MB and
    /// `--more` refuses it.
    #[serde(default = "yes")]
    pub keep_statistics: bool,
    /// Store the precision matrices as 8-bit integers with one scale per row (of each packed
    /// upper triangle), half the bytes of f16: 3.5 instead of 6.9 MiB per object with Lite0.
    /// Distances change by about 0.5 % (median, measured on mvtec-mini's matrices). Files
    /// written before this setting existed hold f16 or f32 matrices (serde default false).
    #[serde(default)]
    pub int8: bool,
}

fn one() -> usize {
    1
}

fn yes() -> bool {
    true
}

/// The default, measured on mvtec-mini (docs/results/mvtec-mini/memory.md): every channel, one
/// covariance per position, +1.0 I, precision matrices in 8 bits (`int8`: the same ACC as f16,
/// 90.96 / 92.57 against 90.92 / 92.57, docs/results/scale/README.md). `share: 2` (one covariance
/// per 2x2 positions) is 2.6x smaller per object and 1.8 / 0.2 points lower in image / pixel ACC.
impl Default for GaussianConfig {
    fn default() -> Self {
        Self {
            dims: 0,
            shrinkage: 1.0,
            share: 1,
            keep_statistics: true,
            int8: true,
        }
    }
}

/// One object's Gaussians: a mean and a precision matrix per grid position.
#[derive(Debug, Clone)]
pub struct PositionGaussian {
    /// `[C, k]` projection onto the principal directions (None: every channel).
    proj: Option<Tensor>,
    /// `[P, k]` per-position means (P = h * w).
    mean: Tensor,
    /// The inverse covariances, one per block of `share` x `share` positions (Q = P / share^2),
    /// blocks in row-major order.
    precision: Precision,
    /// Side of the blocks sharing a covariance.
    share: usize,
    /// Whether the model file holds the precision as 8-bit codes (`GaussianConfig::int8`).
    int8: bool,
    /// The sufficient statistics of the fit (None: read from a file written before they were
    /// stored; such a Gaussian cannot be updated).
    stats: Option<Stats>,
}

/// What an exact update needs besides the means: the images fitted and, per block, the scatter
/// matrix `sum (y - mean_p)(y - mean_p)^T` over the block's tokens, each about its own
/// position's mean (`[Q, k, k]`, f64 in memory, f32 in the file).
#[derive(Debug, Clone)]
struct Stats {
    count: u64,
    /// `[Q, k, k]` f64 as fitted, or, read back from a file, packed as stored (`[Q, k (k + 1) /
    /// 2]` f32: a quarter of the full f64 matrices' memory, unpacked only for an update).
    scatter: Tensor,
}

impl Stats {
    /// The scatter matrices `[Q, k, k]` in f64.
    fn full(&self, q: usize, k: usize) -> Result<Tensor> {
        match self.scatter.rank() {
            2 => Ok(unpack_upper(&self.scatter, q, k)?.to_dtype(DType::F64)?),
            _ => Ok(self.scatter.to_dtype(DType::F64)?),
        }
    }

    /// The scatter matrices packed as a file stores them (f32).
    fn packed(&self) -> Result<Tensor> {
        match self.scatter.rank() {
            2 => Ok(self.scatter.to_dtype(DType::F32)?),
            _ => pack_upper(&self.scatter.to_dtype(DType::F32)?),
        }
    }
}

/// The precision matrices of a [`PositionGaussian`].
#[derive(Debug, Clone)]
enum Precision {
    /// `[Q, k, k]` f32, as fitted (until rounded to the stored form, or saved and loaded).
    Full(Tensor),
    /// `[Q, k (k + 1) / 2]`: the upper triangles packed row by row, in the dtype of the model file
    /// (f16 by default), the loaded file's tensor itself (not copied). Expanded to `[Q, k, k]` f32
    /// for one scoring call at a time: resident, an object's matrices are 7 MB (192 channels on a
    /// 14 x 14 grid) instead of 29 MB, and the scores are bit for bit those of the full matrices.
    Packed(Tensor),
    /// The packed upper triangles as 8-bit codes (`[Q, k (k + 1) / 2]` u8, the value `(code -
    /// 128) * scale`) with one f32 scale per row of each matrix (`[Q, k]`): see [`quantize`].
    /// Expanded like [`Precision::Packed`].
    Int8 { codes: Tensor, scales: Tensor },
}

/// The offset of the 8-bit codes: a stored byte `b` is the integer `b - 128` (in -127..=127).
const CODE_ZERO: f32 = 128.0;

/// Packed upper triangles `[Q, k (k + 1) / 2]` (any float dtype) as 8-bit codes and a scale per
/// row (row `i` of a matrix is its entries `(i, i..k)` in the packing): `scale = max |v| / 127`,
/// `code = round(v / scale)`, so every entry is within `scale / 2` of its value and the largest
/// of a row is exact.
fn quantize(packed: &Tensor, k: usize) -> Result<(Tensor, Tensor)> {
    let (q, len) = packed.dims2()?;
    let v: Vec<f32> = packed.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let mut codes = Vec::with_capacity(q * len);
    let mut scales = Vec::with_capacity(q * k);
    for m in v.chunks_exact(len) {
        let mut at = 0;
        for i in 0..k {
            let row = &m[at..at + (k - i)];
            at += k - i;
            let max = row.iter().fold(0f32, |a, x| a.max(x.abs()));
            let scale = max / 127.0;
            scales.push(scale);
            codes.extend(row.iter().map(|x| {
                let c = if scale > 0.0 {
                    (x / scale).round()
                } else {
                    0.0
                };
                (c.clamp(-127.0, 127.0) + CODE_ZERO) as u8
            }));
        }
    }
    Ok((
        Tensor::from_vec(codes, (q, len), &Device::Cpu)?,
        Tensor::from_vec(scales, (q, k), &Device::Cpu)?,
    ))
}

/// `[Q, k, k]` f32 symmetric matrices from [`quantize`]'s codes and scales.
fn dequantize(codes: &Tensor, scales: &Tensor, k: usize) -> Result<Tensor> {
    use rayon::prelude::*;
    let (q, len) = codes.dims2()?;
    let codes: Vec<u8> = codes.flatten_all()?.to_vec1()?;
    let scales: Vec<f32> = scales.flatten_all()?.to_vec1()?;
    let mut full = vec![0f32; q * k * k];
    full.par_chunks_mut(k * k)
        .zip(codes.par_chunks(len).zip(scales.par_chunks(k)))
        .for_each_init(
            || vec![0f32; len],
            |values, (m, (src, scale))| {
                let mut at = 0;
                for (i, s) in scale.iter().enumerate() {
                    for code in &src[at..at + (k - i)] {
                        values[at] = (*code as f32 - CODE_ZERO) * s;
                        at += 1;
                    }
                }
                fill_symmetric(m, values, k);
            },
        );
    Ok(Tensor::from_vec(full, (q, k, k), &Device::Cpu)?)
}

/// One `k` x `k` symmetric matrix `m` (row-major) from its upper triangle `packed` row by row.
fn fill_symmetric(m: &mut [f32], packed: &[f32], k: usize) {
    let mut at = 0;
    for i in 0..k {
        for j in i..k {
            m[i * k + j] = packed[at];
            m[j * k + i] = packed[at];
            at += 1;
        }
    }
}

/// `[Q, k, k]` f32 symmetric matrices from `[Q, k (k + 1) / 2]` packed upper triangles (f16 or f32).
fn unpack(packed: &Tensor, k: usize) -> Result<Tensor> {
    use rayon::prelude::*;
    let (q, len) = packed.dims2()?;
    let packed = packed.contiguous()?;
    let (storage, layout) = packed.storage_and_layout();
    let start = layout.start_offset();
    let cpu = match &*storage {
        candle_core::Storage::Cpu(cpu) => cpu,
        _ => {
            return Err(Error::Fit(
                "gaussian: precision matrices not on the CPU".into(),
            ))
        }
    };
    let mut full = vec![0f32; q * k * k];
    match packed.dtype() {
        DType::F16 => {
            use half::slice::HalfFloatSliceExt;
            let v = &cpu.as_slice::<half::f16>()?[start..start + q * len];
            full.par_chunks_mut(k * k)
                .zip(v.par_chunks(len))
                .for_each_init(
                    || vec![0f32; len],
                    |scratch, (m, src)| {
                        src.convert_to_f32_slice(scratch);
                        fill_symmetric(m, scratch, k);
                    },
                );
        }
        _ => {
            let v = &cpu.as_slice::<f32>()?[start..start + q * len];
            full.par_chunks_mut(k * k)
                .zip(v.par_chunks(len))
                .for_each(|(m, src)| fill_symmetric(m, src, k));
        }
    }
    Ok(Tensor::from_vec(full, (q, k, k), &Device::Cpu)?)
}

/// `[N, k, h, w]` as `[Q, s * s, N, k]`: the tokens of each `s` x `s` block of positions together.
fn blocked(y: &Tensor, s: usize) -> Result<Tensor> {
    let (n, k, h, w) = y.dims4()?;
    Ok(y.reshape((n, k, h / s, s, w / s, s))?
        .permute((2, 4, 3, 5, 0, 1))?
        .reshape((h / s * (w / s), s * s, n, k))?
        .contiguous()?)
}

/// Per-position means `[Q, s*s, k]` and per-block scatter matrices `[Q, k, k]` of `y`
/// `[N, k, h, w]` (f64), each token centred on its own position's mean.
fn moments(y: &Tensor, s: usize) -> Result<(Tensor, Tensor)> {
    let (n, k, _, _) = y.dims4()?;
    let tokens = blocked(y, s)?; // [Q, s*s, N, k]
    let q = tokens.dim(0)?;
    let mean = tokens.mean_keepdim(2)?; // [Q, s*s, 1, k]
    let centred = tokens.broadcast_sub(&mean)?.reshape((q, s * s * n, k))?;
    let scatter = centred.transpose(1, 2)?.contiguous()?.matmul(&centred)?; // [Q, k, k]
    Ok((mean.squeeze(2)?, scatter))
}

impl PositionGaussian {
    /// Fits the Gaussians of one object from its training images' `feature_align` `[N, C, h, w]`.
    pub fn fit(features: &Tensor, cfg: &GaussianConfig) -> Result<Self> {
        let (n, c, h, w) = features.dims4()?;
        if n == 0 {
            return Err(Error::Fit("gaussian: no training images".into()));
        }
        let s = cfg.share.max(1);
        if !h.is_multiple_of(s) || !w.is_multiple_of(s) {
            return Err(Error::Config(format!(
                "gaussian.share {s} does not divide the {h}x{w} grid"
            )));
        }
        let x = features.to_dtype(DType::F64)?.to_device(&Device::Cpu)?;
        let proj = if cfg.dims > 0 && cfg.dims < c {
            Some(principal_directions(&x, cfg.dims)?)
        } else {
            None
        };
        let y = match &proj {
            Some(p) => project(&x, p)?,
            None => x,
        }; // [N, k, h, w]
        let (mean, scatter) = moments(&y, s)?;
        Self::from_moments(proj, mean, scatter, n as u64, s, cfg)
    }

    /// The Gaussian of means `[Q, s*s, k]` and scatter matrices `[Q, k, k]` (f64) of `count`
    /// images: covariance `scatter / (s*s*count) + shrinkage * I`, inverted per block.
    fn from_moments(
        proj: Option<Tensor>,
        mean: Tensor,
        scatter: Tensor,
        count: u64,
        s: usize,
        cfg: &GaussianConfig,
    ) -> Result<Self> {
        let (q, _, k) = mean.dims3()?;
        let cov = (&scatter / (s * s * count as usize) as f64)?;
        let cov: Vec<f64> = cov.flatten_all()?.to_vec1()?;
        let mut precision = Vec::with_capacity(q * k * k);
        for (pos, block) in cov.chunks_exact(k * k).enumerate() {
            let m = faer::Mat::<f64>::from_fn(k, k, |i, j| {
                block[i * k + j] + if i == j { cfg.shrinkage } else { 0.0 }
            });
            let llt = m.llt(faer::Side::Lower).map_err(|_| {
                let at = if s == 1 {
                    format!("grid position {pos}")
                } else {
                    format!("block {pos} of {s}x{s} grid positions")
                };
                Error::Fit(format!(
                    "gaussian: the covariance at {at} is not positive definite even with shrinkage {}: \
                     the object's training images vary too little there, or their features are damaged \
                     (wrong backbone weights?); check the images and --weights, or raise \
                     `gaussian.shrinkage` in a --config JSON file",
                    cfg.shrinkage
                ))
            })?;
            let inv = llt.inverse();
            for i in 0..k {
                for j in 0..k {
                    precision.push(inv[(i, j)] as f32);
                }
            }
        }
        Ok(Self {
            proj: proj.map(|t| t.to_dtype(DType::F32)).transpose()?,
            mean: mean.to_dtype(DType::F32)?, // [Q, s*s, k]
            precision: Precision::Full(Tensor::from_vec(precision, (q, k, k), &Device::Cpu)?),
            share: s,
            int8: cfg.int8,
            stats: Some(Stats { count, scatter }),
        })
    }

    /// Whether the Gaussian keeps the statistics [`PositionGaussian::update`] needs.
    pub fn updatable(&self) -> bool {
        self.stats.is_some()
    }

    /// Images the Gaussian was fitted on (None when its statistics were not stored).
    pub fn count(&self) -> Option<u64> {
        self.stats.as_ref().map(|s| s.count)
    }

    /// The Gaussian of the images it was fitted on and the images of `features` `[N, C, h, w]`
    /// together, from the stored statistics: the same means and covariances a fit on all of them
    /// would give (up to rounding), in the principal subspace chosen at the first fit.
    /// `cfg.shrinkage` is applied as in [`PositionGaussian::fit`]; the block size is the stored one.
    pub fn update(&self, features: &Tensor, cfg: &GaussianConfig) -> Result<Self> {
        let stats = self.stats.as_ref().ok_or_else(|| {
            Error::Fit(
                "gaussian: no stored statistics (count and scatter matrices) to update from; \
                 the model was written before they were kept, or with \
                 `gaussian.keep_statistics: false`"
                    .into(),
            )
        })?;
        let (nb, _, h, w) = features.dims4()?;
        let s = self.share;
        let (q, ss, k) = self.mean.dims3()?;
        if nb == 0 {
            return Err(Error::Fit("gaussian: no images to add".into()));
        }
        if q * ss != h * w {
            return Err(Error::Fit(format!(
                "gaussian: fitted on {} positions, given a {h}x{w} grid",
                q * ss
            )));
        }
        let x = features.to_dtype(DType::F64)?.to_device(&Device::Cpu)?;
        let y = match &self.proj {
            Some(p) => project(&x, p)?,
            None => x,
        };
        let (mean_b, scatter_b) = moments(&y, s)?;
        let na = stats.count as f64;
        let nb_f = nb as f64;
        let n = na + nb_f;
        let mean_a = self.mean.to_dtype(DType::F64)?;
        let delta = (&mean_b - &mean_a)?; // [Q, s*s, k]
        let mean = (&mean_a + (&delta * (nb_f / n))?)?;
        // Chan et al.: M2 = M2_a + M2_b + (n_a n_b / n) sum_p delta_p delta_p^T.
        let cross = (delta.transpose(1, 2)?.contiguous()?.matmul(&delta)? * (na * nb_f / n))?;
        let scatter = ((stats.full(q, k)? + &scatter_b)? + cross)?;
        Self::from_moments(
            self.proj.clone(),
            mean,
            scatter,
            stats.count + nb as u64,
            s,
            cfg,
        )
    }

    /// The Mahalanobis distance of every token of `features` `[B, C, h, w]`: `[B, 1, h, w]`.
    pub fn score(&self, features: &Tensor) -> Result<Tensor> {
        let (b, _, h, w) = features.dims4()?;
        let s = self.share;
        let (q, ss, k) = self.mean.dims3()?;
        if q * ss != h * w || !h.is_multiple_of(s) || !w.is_multiple_of(s) {
            return Err(Error::Fit(format!(
                "gaussian: fitted on {} positions, given a {h}x{w} grid",
                q * ss
            )));
        }
        let x = features.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
        let y = match &self.proj {
            Some(pr) => project(&x, pr)?,
            None => x,
        };
        let d = blocked(&y, s)?
            .broadcast_sub(&self.mean.unsqueeze(2)?)?
            .reshape((q, ss * b, k))?; // [Q, s*s*B, k]
        let precision = match &self.precision {
            Precision::Full(t) => t.clone(),
            Precision::Packed(t) => unpack(t, k)?,
            Precision::Int8 { codes, scales } => dequantize(codes, scales, k)?,
        };
        let m = d.matmul(&precision)?.mul(&d)?.sum(D::Minus1)?; // [Q, s*s*B]
                                                                // Back from [hb, wb, s, s, B] to [B, h, w].
        let m = m
            .reshape((h / s, w / s, s, s, b))?
            .permute((4, 0, 2, 1, 3))?
            .reshape((b, 1, h, w))?;
        Ok(m.clamp(0f32, f32::INFINITY)?
            .sqrt()?
            .to_device(features.device())?)
    }

    /// The fitted tensors, named `<prefix>proj` (if any), `<prefix>mean` `[Q, s*s, k]`, and
    /// `<prefix>precision`: the upper triangles of the symmetric precision matrices, packed row by
    /// row (`[Q, k (k + 1) / 2]`, half the bytes of the full matrices), in `dtype`, or with
    /// `int8` as u8 codes beside `<prefix>precision_scale` (`[Q, k]` f32). With the statistics of
    /// the fit, also `<prefix>count` (`[1]`, f64) and `<prefix>scatter` (packed like the
    /// precision, always f32: an update needs them at full precision whatever `dtype` is).
    pub fn to_state(&self, prefix: &str, dtype: DType) -> Result<Vec<(String, Tensor)>> {
        let k = self.mean.dim(2)?;
        let mut out = vec![(format!("{prefix}mean"), self.mean.clone())];
        let packed = match &self.precision {
            Precision::Int8 { codes, scales } => {
                out.push((format!("{prefix}precision"), codes.clone()));
                out.push((format!("{prefix}precision_scale"), scales.clone()));
                None
            }
            Precision::Packed(t) => Some(t.clone()),
            Precision::Full(full) => Some(pack_upper(full)?),
        };
        match packed {
            Some(packed) if self.int8 => {
                let (codes, scales) = quantize(&packed, k)?;
                out.push((format!("{prefix}precision"), codes));
                out.push((format!("{prefix}precision_scale"), scales));
            }
            Some(packed) => out.push((format!("{prefix}precision"), packed.to_dtype(dtype)?)),
            None => {}
        }
        if let Some(p) = &self.proj {
            out.push((format!("{prefix}proj"), p.clone()));
        }
        if let Some(st) = &self.stats {
            out.push((
                format!("{prefix}count"),
                Tensor::new(&[st.count as f64], &Device::Cpu)?,
            ));
            out.push((format!("{prefix}scatter"), st.packed()?));
        }
        Ok(out)
    }

    /// The dtype the precision matrices are held in (as the model file stores them).
    pub fn precision_dtype(&self) -> DType {
        match &self.precision {
            Precision::Full(_) => DType::F32,
            Precision::Packed(t) => t.dtype(),
            Precision::Int8 { codes, .. } => codes.dtype(),
        }
    }

    /// This Gaussian without the statistics of its fit: a smaller file, and no `update`.
    pub fn without_statistics(&self) -> Self {
        Self {
            stats: None,
            ..self.clone()
        }
    }

    /// Reads back what [`PositionGaussian::to_state`] wrote; None when `prefix` has no tensors.
    pub fn from_state(state: &[(String, Tensor)], prefix: &str) -> Result<Option<Self>> {
        let find = |name: &str| {
            state
                .iter()
                .find(|(n, _)| *n == format!("{prefix}{name}"))
                .map(|(_, t)| t.to_device(&Device::Cpu))
                .transpose()
        };
        let (Some(mean), Some(packed)) = (find("mean")?, find("precision")?) else {
            return Ok(None);
        };
        let mean = mean.to_dtype(DType::F32)?;
        let bad = |what: String| Error::Fit(format!("gaussian `{prefix}`: {what}"));
        let (q, ss, k) = mean.dims3()?;
        let (pq, len) = packed.dims2()?;
        let share = (ss as f64).sqrt().round() as usize;
        if pq != q || len != k * (k + 1) / 2 || share * share != ss {
            return Err(bad(format!(
                "mean {:?} and packed precision {:?} do not fit",
                mean.dims(),
                packed.dims()
            )));
        }
        let stats = match (find("count")?, find("scatter")?) {
            (Some(count), Some(scatter)) => {
                // f64 as written; a file may hold it in another float type.
                let count: Vec<f64> = count.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
                let (sq, slen) = scatter.dims2()?;
                if count.len() != 1 || count[0] < 1.0 || count[0].is_nan() || sq != q || slen != len
                {
                    return Err(bad(format!(
                        "count {count:?} and packed scatter {:?} do not fit mean {:?}",
                        scatter.dims(),
                        mean.dims()
                    )));
                }
                Some(Stats {
                    count: count[0] as u64,
                    // Kept packed (f32); unpacked for an update only.
                    scatter: scatter.to_dtype(DType::F32)?.contiguous()?,
                })
            }
            (None, None) => None,
            _ => return Err(bad("one of `count` and `scatter` is missing".into())),
        };
        let scales = find("precision_scale")?;
        let precision = match (packed.dtype(), scales) {
            (DType::U8, Some(scales)) => {
                if scales.dims() != [q, k] {
                    return Err(bad(format!(
                        "precision scales {:?} do not fit mean {:?}",
                        scales.dims(),
                        mean.dims()
                    )));
                }
                Precision::Int8 {
                    codes: packed.contiguous()?,
                    scales: scales.to_dtype(DType::F32)?.contiguous()?,
                }
            }
            (DType::U8, None) => {
                return Err(bad("8-bit precision codes without their scales".into()))
            }
            (_, Some(_)) => {
                return Err(bad(format!(
                    "precision scales beside a {:?} precision (scales go with 8-bit codes)",
                    packed.dtype()
                )))
            }
            // Kept in the stored dtype: f16 stays f16 (half the bytes), anything else f32.
            (DType::F16, None) => Precision::Packed(packed.contiguous()?),
            (_, None) => Precision::Packed(packed.to_dtype(DType::F32)?.contiguous()?),
        };
        let int8 = matches!(precision, Precision::Int8 { .. });
        Ok(Some(Self {
            proj: find("proj")?.map(|p| p.to_dtype(DType::F32)).transpose()?,
            mean,
            precision,
            share,
            int8,
            stats,
        }))
    }
}

/// Symmetric matrices `[Q, k, k]` (f32) as their upper triangles packed row by row,
/// `[Q, k (k + 1) / 2]`.
fn pack_upper(full: &Tensor) -> Result<Tensor> {
    let (q, k, _) = full.dims3()?;
    let full: Vec<f32> = full.flatten_all()?.to_vec1()?;
    let mut packed = Vec::with_capacity(q * k * (k + 1) / 2);
    for m in full.chunks_exact(k * k) {
        for i in 0..k {
            packed.extend_from_slice(&m[i * k + i..(i + 1) * k]);
        }
    }
    Ok(Tensor::from_vec(
        packed,
        (q, k * (k + 1) / 2),
        &Device::Cpu,
    )?)
}

/// What [`pack_upper`] packed (f32), back as `[q, k, k]`.
fn unpack_upper(packed: &Tensor, q: usize, k: usize) -> Result<Tensor> {
    let len = k * (k + 1) / 2;
    let packed: Vec<f32> = packed.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let mut full = vec![0f32; q * k * k];
    for (m, src) in full.chunks_exact_mut(k * k).zip(packed.chunks_exact(len)) {
        fill_symmetric(m, src, k);
    }
    Ok(Tensor::from_vec(full, (q, k, k), &Device::Cpu)?)
}

/// `x` `[N, C, h, w]` projected on `proj` `[C, k]`: `[N, k, h, w]`.
fn project(x: &Tensor, proj: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let k = proj.dim(1)?;
    let tokens = x.permute((0, 2, 3, 1))?.reshape((n * h * w, c))?;
    Ok(tokens
        .matmul(&proj.to_dtype(x.dtype())?)?
        .reshape((n, h, w, k))?
        .permute((0, 3, 1, 2))?
        .contiguous()?)
}

/// The top `k` principal directions `[C, k]` (f64) of all tokens of `x` `[N, C, h, w]`.
fn principal_directions(x: &Tensor, k: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let tokens = x.permute((0, 2, 3, 1))?.reshape((n * h * w, c))?;
    let centred = tokens.broadcast_sub(&tokens.mean_keepdim(0)?)?;
    let cov = (centred.t()?.matmul(&centred)? / (n * h * w) as f64)?;
    let cov: Vec<f64> = cov.flatten_all()?.to_vec1()?;
    let m = faer::Mat::<f64>::from_fn(c, c, |i, j| cov[i * c + j]);
    let evd = m
        .self_adjoint_eigen(faer::Side::Lower)
        .map_err(|e| Error::Fit(format!("gaussian: eigendecomposition failed: {e:?}")))?;
    // Eigenvalues come in increasing order: the last k columns are the top directions.
    let u = evd.U();
    let mut data = Vec::with_capacity(c * k);
    for i in 0..c {
        for j in 0..k {
            data.push(u[(i, c - 1 - j)]);
        }
    }
    Ok(Tensor::from_vec(data, (c, k), &Device::Cpu)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default with the precision matrices in floats (f32 in memory, the file's dtype).
    fn float() -> GaussianConfig {
        GaussianConfig {
            int8: false,
            ..GaussianConfig::default()
        }
    }

    /// Every token's score of `x`, flattened.
    fn scores(g: &PositionGaussian, x: &Tensor) -> Vec<f32> {
        g.score(x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// Guarantee: without its statistics a Gaussian writes no count or scatter, scores the same
    /// after a reload, and refuses an update.
    #[test]
    fn a_gaussian_without_statistics_scores_alike_and_refuses_updates() {
        let dev = Device::Cpu;
        let train = Tensor::randn(0f32, 1f32, (12, 4, 2, 2), &dev).unwrap();
        let test = Tensor::randn(0f32, 1f32, (2, 4, 2, 2), &dev).unwrap();
        let g = PositionGaussian::fit(&train, &float()).unwrap();
        let full = g.to_state("g.", DType::F32).unwrap();
        let lean = g.without_statistics().to_state("g.", DType::F32).unwrap();
        let names = |st: &[(String, Tensor)]| -> Vec<String> {
            st.iter().map(|(n, _)| n.clone()).collect()
        };
        assert!(names(&full).contains(&"g.scatter".to_string()));
        assert_eq!(names(&lean), ["g.mean", "g.precision"]);
        let back = PositionGaussian::from_state(&lean, "g.").unwrap().unwrap();
        assert_eq!(scores(&back, &test), scores(&g, &test));
        assert!(!back.updatable());
        let err = back
            .update(&train, &GaussianConfig::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("keep_statistics"), "{err}");
    }

    #[test]
    fn mahalanobis_matches_a_direct_computation_and_reloads() {
        let dev = Device::Cpu;
        let train = Tensor::randn(0f32, 1f32, (40, 6, 2, 3), &dev).unwrap();
        let cfg = GaussianConfig {
            dims: 0,
            shrinkage: 0.5,
            share: 1,
            keep_statistics: true,
            int8: false,
        };
        let g = PositionGaussian::fit(&train, &cfg).unwrap();
        let test = Tensor::randn(0f32, 1f32, (2, 6, 2, 3), &dev).unwrap();
        let got = scores(&g, &test);
        // Direct: position (1, 2) of image 1.
        let token = |t: &Tensor, i: usize| -> Vec<f64> {
            let v: Vec<Vec<Vec<f32>>> = t.get(i).unwrap().to_vec3().unwrap();
            v.iter().map(|plane| plane[1][2] as f64).collect()
        };
        let tr: Vec<Vec<f64>> = (0..40).map(|i| token(&train, i)).collect();
        let mean: Vec<f64> = (0..6)
            .map(|ch| tr.iter().map(|r| r[ch]).sum::<f64>() / 40.0)
            .collect();
        let cov = faer::Mat::<f64>::from_fn(6, 6, |i, j| {
            tr.iter()
                .map(|r| (r[i] - mean[i]) * (r[j] - mean[j]))
                .sum::<f64>()
                / 40.0
                + if i == j { 0.5 } else { 0.0 }
        });
        let q: Vec<f64> = token(&test, 1)
            .iter()
            .zip(&mean)
            .map(|(x, m)| x - m)
            .collect();
        let qm = faer::Mat::<f64>::from_fn(6, 1, |i, _| q[i]);
        use faer::linalg::solvers::Solve;
        let sol = cov.llt(faer::Side::Lower).unwrap().solve(&qm);
        let want = (0..6).map(|i| q[i] * sol[(i, 0)]).sum::<f64>().sqrt();
        let idx = 6 + 5; // image 1, position 1 * 3 + 2
        assert!(
            (got[idx] as f64 - want).abs() < 1e-4 * want.max(1.0),
            "{} vs {want}",
            got[idx]
        );
        // Written and read back, it scores the same.
        let state = g.to_state("g.", DType::F32).unwrap();
        let back = PositionGaussian::from_state(&state, "g.").unwrap().unwrap();
        let again = scores(&back, &test);
        assert_eq!(got, again);
        assert!(PositionGaussian::from_state(&state, "other.")
            .unwrap()
            .is_none());
    }

    /// Guarantee: stored as f16, the precision matrices are held and scored as f16 (not expanded
    /// to f32 matrices), the same before and after a round trip through the state tensors, and
    /// within f16 rounding of the f32 scores.
    #[test]
    fn f16_precision_is_kept_as_stored_and_scores_alike_after_a_round_trip() {
        let dev = Device::Cpu;
        let train = Tensor::randn(0f32, 1f32, (30, 20, 2, 2), &dev).unwrap();
        let g = PositionGaussian::fit(&train, &float()).unwrap();
        assert_eq!(g.precision_dtype(), DType::F32);
        let half = PositionGaussian::from_state(&g.to_state("", DType::F16).unwrap(), "")
            .unwrap()
            .unwrap();
        assert_eq!(half.precision_dtype(), DType::F16);
        let state = half.to_state("p.", DType::F16).unwrap();
        let back = PositionGaussian::from_state(&state, "p.").unwrap().unwrap();
        let test = Tensor::randn(0f32, 1f32, (3, 20, 2, 2), &dev).unwrap();
        assert_eq!(scores(&half, &test), scores(&back, &test));
        for (a, b) in scores(&g, &test).iter().zip(scores(&half, &test)) {
            assert!((a - b).abs() < 2e-3 * a.max(1.0), "{a} vs {b}");
        }
    }

    /// Guarantee: a covariance that cannot be inverted is reported with its likely causes and the
    /// setting that fixes it (`gaussian.shrinkage`), not with the solver's debug output.
    #[test]
    fn a_singular_covariance_names_the_causes_and_the_shrinkage_setting() {
        // Identical training images: every covariance is 0; without shrinkage it is singular.
        let train = Tensor::ones((5, 4, 2, 2), DType::F32, &Device::Cpu).unwrap();
        let cfg = GaussianConfig {
            dims: 0,
            shrinkage: 0.0,
            share: 1,
            keep_statistics: true,
            int8: false,
        };
        let err = PositionGaussian::fit(&train, &cfg).unwrap_err().to_string();
        for wanted in [
            "covariance at grid position 0 is not positive definite even with shrinkage 0",
            "vary too little",
            "wrong backbone weights",
            "`gaussian.shrinkage` in a --config JSON file",
        ] {
            assert!(err.contains(wanted), "no {wanted:?} in: {err}");
        }
        assert!(!err.contains("Pivot"), "{err}");
    }

    /// Guarantee: an update from the stored statistics gives the Gaussian of all images fitted
    /// at once (means and covariances, so every score), also after a round trip through the
    /// model file's tensors, for shared blocks and for a projection.
    #[test]
    fn an_update_equals_a_fit_on_all_images() {
        let dev = Device::Cpu;
        let a = Tensor::randn(0f32, 1f32, (25, 8, 4, 4), &dev).unwrap();
        let b = (Tensor::randn(0f32, 1f32, (7, 8, 4, 4), &dev).unwrap() + 2.0).unwrap();
        let all = Tensor::cat(&[&a, &b], 0).unwrap();
        let test = Tensor::randn(0f32, 2f32, (3, 8, 4, 4), &dev).unwrap();
        for (share, dims) in [(1, 0), (2, 0), (1, 3)] {
            let cfg = GaussianConfig {
                dims,
                shrinkage: 0.5,
                share,
                keep_statistics: true,
                int8: false,
            };
            let first = PositionGaussian::fit(&a, &cfg).unwrap();
            assert_eq!(first.count(), Some(25));
            let state = first.to_state("g.", DType::F16).unwrap();
            let back = PositionGaussian::from_state(&state, "g.").unwrap().unwrap();
            let updated = back.update(&b, &cfg).unwrap();
            assert_eq!(updated.count(), Some(32));
            let got = scores(&updated, &test);
            // A projection is chosen once, at the first fit; the reference keeps it too.
            let want = match &first.proj {
                None => scores(&PositionGaussian::fit(&all, &cfg).unwrap(), &test),
                Some(p) => {
                    let x = all.to_dtype(DType::F64).unwrap();
                    let y = project(&x, &p.to_dtype(DType::F64).unwrap()).unwrap();
                    let (mean, scatter) = moments(&y, share).unwrap();
                    let g = PositionGaussian::from_moments(
                        Some(p.clone()),
                        mean,
                        scatter,
                        32,
                        share,
                        &cfg,
                    )
                    .unwrap();
                    scores(&g, &test)
                }
            };
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 1e-4 * w.abs().max(1.0),
                    "{share} {dims}: {g} vs {w}"
                );
            }
            // Without the statistics (a file written before they were kept) it refuses.
            let old: Vec<_> = state
                .into_iter()
                .filter(|(n, _)| !n.ends_with("count") && !n.ends_with("scatter"))
                .collect();
            let old = PositionGaussian::from_state(&old, "g.").unwrap().unwrap();
            assert!(!old.updatable());
            let err = old.update(&b, &cfg).unwrap_err().to_string();
            assert!(err.contains("no stored statistics"), "{err}");
        }
    }

    /// Guarantee: with `int8` the precision is written as u8 codes and a scale per row (a
    /// quarter of f32's bytes, half of f16's), held as such after a round trip, scores alike
    /// before and after it and within 1 % of the f32 matrices; the largest entry of every row is
    /// exact. Codes without their scales (or scales beside float matrices) are refused.
    #[test]
    fn int8_precision_is_a_quarter_of_the_bytes_and_scores_within_a_percent() {
        let dev = Device::Cpu;
        let train = Tensor::randn(0f32, 1f32, (60, 16, 2, 2), &dev).unwrap();
        let f32_cfg = float();
        let cfg = GaussianConfig {
            int8: true,
            ..f32_cfg.clone()
        };
        let exact = PositionGaussian::fit(&train, &f32_cfg).unwrap();
        let g = PositionGaussian::fit(&train, &cfg).unwrap();
        let state = g.to_state("g.", DType::F16).unwrap();
        let find = |n: &str| state.iter().find(|(m, _)| m == n).map(|(_, t)| t.clone());
        let codes = find("g.precision").unwrap();
        assert_eq!((codes.dtype(), codes.dims()), (DType::U8, &[4, 136][..]));
        assert_eq!(find("g.precision_scale").unwrap().dims(), [4, 16]);
        let back = PositionGaussian::from_state(&state, "g.").unwrap().unwrap();
        assert_eq!(back.precision_dtype(), DType::U8);
        let again = back.to_state("g.", DType::F16).unwrap();
        let bytes = |st: &[(String, Tensor)]| -> Vec<Vec<u8>> {
            st.iter()
                .filter(|(n, _)| n.starts_with("g.precision"))
                .map(|(_, t)| {
                    t.to_dtype(DType::F32)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()
                        .iter()
                        .flat_map(|v| v.to_le_bytes())
                        .collect()
                })
                .collect()
        };
        assert_eq!(bytes(&again), bytes(&state), "written again unchanged");
        let test = Tensor::randn(0f32, 1f32, (3, 16, 2, 2), &dev).unwrap();
        assert_eq!(
            scores(&back, &test),
            scores(
                &PositionGaussian::from_state(&again, "g.").unwrap().unwrap(),
                &test
            )
        );
        for (a, b) in scores(&exact, &test).iter().zip(scores(&back, &test)) {
            assert!((a - b).abs() < 1e-2 * a.max(1.0), "{a} vs {b}");
        }
        // The largest entry of each row round-trips exactly: the diagonal of these matrices.
        let full = |g: &PositionGaussian| -> Vec<f32> {
            let t = match &g.precision {
                Precision::Full(t) => t.clone(),
                Precision::Int8 { codes, scales } => dequantize(codes, scales, 16).unwrap(),
                Precision::Packed(t) => unpack(t, 16).unwrap(),
            };
            t.flatten_all().unwrap().to_vec1().unwrap()
        };
        let (a, b) = (full(&exact), full(&back));
        for m in 0..4 {
            for i in 0..16 {
                let at = m * 256 + i * 16;
                let row = &a[at + i..at + 16];
                let j = (0..row.len())
                    .max_by(|&x, &y| row[x].abs().total_cmp(&row[y].abs()))
                    .unwrap();
                let (want, got) = (row[j], b[at + i + j]);
                assert!((want - got).abs() <= 1e-6 * want.abs(), "{want} vs {got}");
            }
        }
        let no_scales: Vec<_> = state
            .iter()
            .filter(|(n, _)| n != "g.precision_scale")
            .cloned()
            .collect();
        let err = PositionGaussian::from_state(&no_scales, "g.")
            .unwrap_err()
            .to_string();
        assert!(err.contains("without their scales"), "{err}");
        let mut mixed = exact.to_state("g.", DType::F16).unwrap();
        mixed.push(
            find("g.precision_scale")
                .map(|t| ("g.precision_scale".into(), t))
                .unwrap(),
        );
        let err = PositionGaussian::from_state(&mixed, "g.")
            .unwrap_err()
            .to_string();
        assert!(err.contains("scales beside"), "{err}");
    }

    #[test]
    fn a_projected_gaussian_scores_an_outlier_above_the_training_tokens() {
        let dev = Device::Cpu;
        let train = Tensor::randn(0f32, 1f32, (30, 8, 2, 2), &dev).unwrap();
        let g = PositionGaussian::fit(
            &train,
            &GaussianConfig {
                dims: 3,
                shrinkage: 1.0,
                share: 2,
                keep_statistics: true,
                int8: false,
            },
        )
        .unwrap();
        let max = |x: &Tensor| scores(&g, x).into_iter().fold(f32::MIN, f32::max);
        let normal = max(&train);
        let far = (train.narrow(0, 0, 1).unwrap() * 50.0).unwrap();
        let s = max(&far);
        assert!(s > normal, "{s} vs {normal}");
    }
}
