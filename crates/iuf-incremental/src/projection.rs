//! Decreasing rewriting of prior semantics (section 4.6): Gram matrices of the constrained layers'
//! outputs, accumulated over every step's training images, and the gradient projection they define.
//!
//! The reference stores the raw output rows; `G = sum f f^T` has the same eigenvectors (the right
//! singular vectors of the row matrix) in O(D^2) memory whatever the number of images.

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// The running Gram matrix `G = sum_images f f^T` of one constrained layer (`f` = token-mean output).
#[derive(Debug, Clone)]
pub struct Gram {
    /// Output width D.
    pub dim: usize,
    /// Row-major D x D, f64 so that thousands of images accumulate without loss.
    pub data: Vec<f64>,
    /// Images accumulated so far (over all steps).
    pub count: u64,
}

impl Gram {
    /// An empty Gram matrix of width `dim`.
    pub fn zeros(dim: usize) -> Self {
        Self {
            dim,
            data: vec![0.0; dim * dim],
            count: 0,
        }
    }

    /// Adds the rows of `f` (`[n, D]`, one row per image) to `G`.
    pub fn accumulate(&mut self, f: &Tensor) -> Result<()> {
        let (n, d) = f.dims2()?;
        if d != self.dim {
            return Err(Error::Msg(format!(
                "Gram matrix of width {} fed rows of width {d}",
                self.dim
            )));
        }
        let f64s = f.to_dtype(DType::F64)?;
        let g: Vec<f64> = f64s.t()?.matmul(&f64s)?.flatten_all()?.to_vec1()?;
        for (a, b) in self.data.iter_mut().zip(g) {
            *a += b;
        }
        self.count += n as u64;
        Ok(())
    }

    /// As a `[D, D]` f64 tensor (for the model file): exactly what is accumulated, so a run
    /// resumed from a step file projects exactly as the uninterrupted run (f32 here made a resumed
    /// IUF step differ). Files with f32 Gram matrices still load.
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_vec(
            self.data.clone(),
            (self.dim, self.dim),
            device,
        )?)
    }

    /// From a `[D, D]` tensor stored in a model file and the image count.
    pub fn from_tensor(t: &Tensor, count: u64) -> Result<Self> {
        let (d, d2) = t.dims2()?;
        if d != d2 {
            return Err(Error::Msg(format!(
                "a Gram matrix must be square, found {d}x{d2}"
            )));
        }
        let data: Vec<f64> = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
        Ok(Self {
            dim: d,
            data,
            count,
        })
    }

    /// The projector `P = V diag(w) V^T` with eigenvalues descending and `w_i = ln(i+1)/ln(D)`:
    /// the dominant old direction (i = 0) is frozen, the weakest is left free.
    pub fn projector(&self) -> Result<Vec<f64>> {
        let d = self.dim;
        let m = faer::Mat::<f64>::from_fn(d, d, |i, j| self.data[i * d + j]);
        let evd = m.self_adjoint_eigen(faer::Side::Lower).map_err(|e| {
            Error::Linalg(format!(
                "eigendecomposition of a {d}x{d} Gram matrix: {e:?}"
            ))
        })?;
        let (u, s) = (evd.U(), evd.S().column_vector());
        let mut order: Vec<usize> = (0..d).collect();
        order.sort_by(|&a, &b| s[b].total_cmp(&s[a]));
        let ln_d = (d as f64).ln();
        let mut p = vec![0.0f64; d * d];
        for (rank, &j) in order.iter().enumerate() {
            let w = ((rank + 1) as f64).ln() / ln_d;
            for r in 0..d {
                let ur = u[(r, j)] * w;
                for c in 0..d {
                    p[r * d + c] += ur * u[(c, j)];
                }
            }
        }
        Ok(p)
    }
}

/// Projects gradients of one constrained Linear on its output dimension: `g <- P g`.
#[derive(Debug, Clone)]
pub struct GradientProjector {
    p: Tensor,
}

impl GradientProjector {
    /// From a Gram matrix; `None` when the Gram matrix has seen no image yet (nothing to protect).
    pub fn from_gram(gram: &Gram, device: &Device) -> Result<Option<Self>> {
        if gram.count == 0 {
            return Ok(None);
        }
        let p: Vec<f32> = gram.projector()?.iter().map(|&x| x as f32).collect();
        Ok(Some(Self {
            p: Tensor::from_vec(p, (gram.dim, gram.dim), device)?,
        }))
    }

    /// Projects a weight gradient `[D, in]` or a bias gradient `[D]`.
    pub fn project(&self, grad: &Tensor) -> Result<Tensor> {
        match grad.rank() {
            2 => Ok(self.p.matmul(grad)?),
            1 => Ok(self.p.matmul(&grad.unsqueeze(1)?)?.squeeze(1)?),
            r => Err(Error::Msg(format!("cannot project a gradient of rank {r}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projector_freezes_the_dominant_direction_and_frees_the_weakest() {
        let dev = Device::Cpu;
        // Outputs that live mostly along e0, a bit along e1, never along e2.
        let rows = Tensor::new(
            &[[3.0f32, 0.5, 0.0], [2.5, -0.4, 0.0], [3.2, 0.3, 0.0]],
            &dev,
        )
        .unwrap();
        let mut g = Gram::zeros(3);
        g.accumulate(&rows).unwrap();
        let proj = GradientProjector::from_gram(&g, &dev).unwrap().unwrap();
        let grad = Tensor::new(&[1.0f32, 1.0, 1.0], &dev).unwrap();
        let out: Vec<f32> = proj.project(&grad).unwrap().to_vec1().unwrap();
        // dominant direction ~e0 gets weight ln(1)/ln(3) = 0, e2 (never used) weight ln(3)/ln(3) = 1.
        assert!(out[0].abs() < 0.05, "{out:?}");
        assert!((out[2] - 1.0).abs() < 1e-5, "{out:?}");
        assert!(out[1] > 0.4 && out[1] < 0.8, "{out:?}"); // ln(2)/ln(3) = 0.63
    }

    #[test]
    fn empty_gram_gives_no_projection_and_roundtrips() {
        let g = Gram::zeros(4);
        assert!(GradientProjector::from_gram(&g, &Device::Cpu)
            .unwrap()
            .is_none());
        let t = g.to_tensor(&Device::Cpu).unwrap();
        assert_eq!(Gram::from_tensor(&t, 0).unwrap().data, g.data);
    }
}
