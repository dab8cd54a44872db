//! The semantic compression loss (section 4.4), with a real gradient.
//!
//! Candle has no SVD. We decompose the detached matrix with faer and then express each singular
//! value as `sigma_i = u_i^T A v_i` with `u_i`, `v_i` held constant: its value is the true singular
//! value and its gradient `u_i v_i^T` is the true derivative of `sigma_i` with respect to `A`
//! (for distinct singular values), so the loss trains the current batch's rows.

use std::collections::VecDeque;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Which singular values count as "non-primary semantic space" (the tail that is compressed).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SclTail {
    /// Normalised singular values below `tau` (the reference uses `0.1 / D`).
    Threshold {
        /// The threshold on `sigma_i / sum(sigma)`.
        tau: f64,
    },
    /// Every index `i >= keep` (the paper's formulation, `keep = t`).
    Keep {
        /// How many leading singular values are left alone.
        keep: usize,
    },
}

/// Configuration of the semantic compression loss.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SclConfig {
    /// Which singular values are compressed.
    pub tail: SclTail,
    /// Rows of earlier batches kept (detached) under the current batch, at most this many.
    pub buffer_rows: usize,
}

impl SclConfig {
    /// The reference's choice for hidden width `d`: threshold `0.1 / d`, a 768-row buffer.
    pub fn reference(d: usize) -> Self {
        Self {
            tail: SclTail::Threshold {
                tau: 0.1 / d as f64,
            },
            buffer_rows: 768,
        }
    }
}

/// A FIFO of detached token-mean rows from recent batches, one per intermediate decoder feature.
#[derive(Debug, Default)]
pub struct SclBuffer {
    rows: Vec<VecDeque<Vec<f32>>>,
}

/// Singular value decomposition of a row-major `rows x cols` matrix, in f64.
pub struct Svd {
    /// Left singular vectors, `rows x r`, row-major.
    pub u: Vec<f64>,
    /// Singular values, descending, `r` of them.
    pub s: Vec<f64>,
    /// Right singular vectors, `cols x r`, row-major.
    pub v: Vec<f64>,
    /// `min(rows, cols)`.
    pub rank: usize,
}

/// Thin SVD with faer; singular values sorted in descending order.
pub fn thin_svd(a: &[f32], rows: usize, cols: usize) -> Result<Svd> {
    let m = faer::Mat::<f64>::from_fn(rows, cols, |i, j| a[i * cols + j] as f64);
    let svd = m
        .thin_svd()
        .map_err(|e| Error::Linalg(format!("SVD of a {rows}x{cols} matrix: {e:?}")))?;
    let r = rows.min(cols);
    let (u, s, v) = (svd.U(), svd.S().column_vector(), svd.V());
    let mut order: Vec<usize> = (0..r).collect();
    order.sort_by(|&x, &y| s[y].total_cmp(&s[x]));
    let mut out = Svd {
        u: vec![0.0; rows * r],
        s: vec![0.0; r],
        v: vec![0.0; cols * r],
        rank: r,
    };
    for (k, &j) in order.iter().enumerate() {
        out.s[k] = s[j];
        for i in 0..rows {
            out.u[i * r + k] = u[(i, j)];
        }
        for i in 0..cols {
            out.v[i * r + k] = v[(i, j)];
        }
    }
    Ok(out)
}

/// Differentiable singular values of `a` ([n, d], f32): `sigma_i = u_i^T a v_i` with `u`, `v` from
/// faer's SVD of the detached matrix. Returns `[r]`, descending.
pub fn singular_values(a: &Tensor) -> Result<Tensor> {
    let (n, d) = a.dims2()?;
    let host: Vec<f32> = a.detach().to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let svd = thin_svd(&host, n, d)?;
    let r = svd.rank;
    let dev = a.device();
    let u = Tensor::from_vec(
        svd.u.iter().map(|&x| x as f32).collect::<Vec<_>>(),
        (n, r),
        dev,
    )?;
    let v = Tensor::from_vec(
        svd.v.iter().map(|&x| x as f32).collect::<Vec<_>>(),
        (d, r),
        dev,
    )?;
    // diag(U^T A V) = sum over rows of U * (A V)
    let av = a.to_dtype(DType::F32)?.matmul(&v)?;
    Ok((u * av)?.sum(0)?)
}

impl SclBuffer {
    /// The compression loss over the intermediate decoder features `features` (each `[B, N, D]`),
    /// stacking each under its buffer of earlier rows; then pushes the current rows (detached).
    pub fn loss(&mut self, features: &[Tensor], cfg: &SclConfig) -> Result<Tensor> {
        if features.is_empty() {
            return Err(Error::Config("the semantic compression loss needs at least one intermediate decoder feature (num_decoder_layers >= 2)".into()));
        }
        if self.rows.len() != features.len() {
            self.rows = vec![VecDeque::new(); features.len()];
        }
        let mut total: Option<Tensor> = None;
        for (k, f) in features.iter().enumerate() {
            let current = f.mean(1)?; // [B, D]: token mean
            let (b, d) = current.dims2()?;
            let buf = &mut self.rows[k];
            let a = if buf.is_empty() {
                current.clone()
            } else {
                let flat: Vec<f32> = buf.iter().flatten().copied().collect();
                let old = Tensor::from_vec(flat, (buf.len(), d), current.device())?;
                Tensor::cat(&[&old, &current], 0)?
            };
            let sigma = singular_values(&a)?;
            let sum = sigma.sum_all()?;
            let s = sigma.broadcast_div(&sum)?;
            let s_host: Vec<f32> = s.to_vec1()?;
            let mask: Vec<f32> = s_host
                .iter()
                .enumerate()
                .map(|(i, &x)| match cfg.tail {
                    SclTail::Threshold { tau } => ((x as f64) < tau) as u8 as f32,
                    SclTail::Keep { keep } => (i >= keep) as u8 as f32,
                })
                .collect();
            let mask = Tensor::from_vec(mask, s_host.len(), s.device())?;
            let term = (s * mask)?.sum_all()?;
            total = Some(match total {
                None => term,
                Some(t) => (t + term)?,
            });
            // FIFO of detached rows, newest last.
            let host: Vec<f32> = current.detach().flatten_all()?.to_vec1()?;
            for row in host.chunks(d).take(b) {
                buf.push_back(row.to_vec());
            }
            while buf.len() + b > cfg.buffer_rows.max(b) {
                buf.pop_front();
            }
        }
        let total = total.expect("features is not empty");
        Ok((total / features.len() as f64)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn det_matrix(n: usize, d: usize, seed: u64) -> Vec<f32> {
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n * d)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ((x >> 11) as f64 / (1u64 << 53) as f64 - 0.5) as f32
            })
            .collect()
    }

    #[test]
    fn singular_values_match_faer_and_reconstruct_frobenius_norm() {
        let (n, d) = (6, 4);
        let a = det_matrix(n, d, 3);
        let t = Tensor::from_vec(a.clone(), (n, d), &Device::Cpu).unwrap();
        let sv: Vec<f32> = singular_values(&t).unwrap().to_vec1().unwrap();
        // sum of squared singular values equals the squared Frobenius norm.
        let fro: f32 = a.iter().map(|x| x * x).sum();
        let ss: f32 = sv.iter().map(|x| x * x).sum();
        assert!((fro - ss).abs() < 1e-4, "{fro} vs {ss}");
        assert!(sv.windows(2).all(|w| w[0] >= w[1]));
    }

    #[test]
    fn singular_value_gradient_matches_finite_differences() {
        // d sigma_i / d A must equal u_i v_i^T; check every entry against central differences in f64.
        let (n, d) = (5, 4);
        let a = det_matrix(n, d, 11);
        let var = Var::from_vec(a.clone(), (n, d), &Device::Cpu).unwrap();
        let sv = singular_values(var.as_tensor()).unwrap();
        // weighted sum so that every singular value contributes differently
        let w = Tensor::new(&[1.0f32, -0.7, 0.4, 2.0], &Device::Cpu).unwrap();
        let obj = (sv * &w).unwrap().sum_all().unwrap();
        let grads = obj.backward().unwrap();
        let g: Vec<f32> = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let f = |m: &[f64]| -> f64 {
            let mm = faer::Mat::<f64>::from_fn(n, d, |i, j| m[i * d + j]);
            let mut s = mm.singular_values().unwrap();
            s.sort_by(|x, y| y.total_cmp(x));
            s.iter()
                .zip([1.0, -0.7, 0.4, 2.0])
                .map(|(s, w)| s * w)
                .sum()
        };
        let base: Vec<f64> = a.iter().map(|&x| x as f64).collect();
        let h = 1e-6;
        for idx in 0..n * d {
            let mut p = base.clone();
            p[idx] += h;
            let mut m = base.clone();
            m[idx] -= h;
            let fd = (f(&p) - f(&m)) / (2.0 * h);
            assert!(
                (fd - g[idx] as f64).abs() < 1e-4,
                "entry {idx}: finite difference {fd}, autograd {}",
                g[idx]
            );
        }
    }

    #[test]
    fn scl_loss_has_gradient_and_buffer_is_bounded() {
        let dev = Device::Cpu;
        let cfg = SclConfig {
            tail: SclTail::Keep { keep: 1 },
            buffer_rows: 10,
        };
        let mut buf = SclBuffer::default();
        for step in 0..4 {
            let x = Var::from_vec(det_matrix(4 * 3 * 8, 1, step), (4, 3, 8), &dev).unwrap();
            let loss = buf.loss(&[x.as_tensor().clone()], &cfg).unwrap();
            let l = loss.to_scalar::<f32>().unwrap();
            assert!(l > 0.0 && l < 1.0, "loss {l}");
            let g = loss.backward().unwrap();
            let gn = g
                .get(x.as_tensor())
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(gn > 0.0);
            assert!(buf.rows[0].len() <= 10);
        }
    }
}
