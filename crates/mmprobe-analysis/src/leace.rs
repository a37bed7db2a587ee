//! LEACE concept erasure (Belrose et al. 2023), closed form: with W the
//! whitening (Σ_XX^{1/2})⁺ and P the orthogonal projection onto the column
//! space of W·Σ_XZ, r(x) = x − W⁺·P·W·(x − μ). Afterwards no linear
//! classifier beats a constant predictor.

use ndarray::{Array1, Array2, ArrayView2, Axis};

use crate::error::Result;
use crate::linalg::{eigh, mean_rows};

pub struct Leace {
    pub mean: Array1<f64>,
    /// W⁺·P·W, [d, d]: r(x) = x − (x − μ)·projᵀ.
    pub proj: Array2<f64>,
    pub rank: usize,
}

impl Leace {
    /// Fits on activations x [n, d] and classes y (0..k).
    pub fn fit(x: ArrayView2<f64>, y: &[usize], k: usize) -> Result<Leace> {
        let (n, d) = x.dim();
        let mean = mean_rows(x);
        let xc = &x - &mean;
        let sxx = xc.t().dot(&xc) / n as f64;
        let mut z = Array2::<f64>::zeros((n, k));
        for (i, &c) in y.iter().enumerate() {
            z[[i, c]] = 1.0;
        }
        let zc = &z - &mean_rows(z.view());
        let sxz = xc.t().dot(&zc) / n as f64;

        let (vals, vecs) = eigh(&sxx)?;
        let tol = vals.iter().fold(0.0f64, |a, &b| a.max(b.abs())) * d as f64 * f64::EPSILON;
        let inv_sqrt = vals.mapv(|l| if l > tol { 1.0 / l.sqrt() } else { 0.0 });
        let sqrt = vals.mapv(|l| if l > tol { l.sqrt() } else { 0.0 });
        let w = (&vecs * &inv_sqrt).dot(&vecs.t());
        let w_pinv = (&vecs * &sqrt).dot(&vecs.t());

        // Orthonormal basis of col(W Σ_XZ) from the eigenvectors of MᵀM.
        let m = w.dot(&sxz);
        let (mv, mvec) = eigh(&m.t().dot(&m))?;
        let mtol = mv.iter().fold(0.0f64, |a, &b| a.max(b.abs())) * k.max(d) as f64 * f64::EPSILON * 1e3;
        let keep: Vec<usize> = (0..mv.len()).filter(|&i| mv[i] > mtol).collect();
        let mut u = m.dot(&mvec.select(Axis(1), &keep));
        for (j, &i) in keep.iter().enumerate() {
            let mut col = u.column_mut(j);
            col /= mv[i].sqrt();
        }
        let p = u.dot(&u.t());
        let proj = w_pinv.dot(&p).dot(&w);
        Ok(Leace { mean, proj, rank: keep.len() })
    }

    pub fn apply(&self, x: ArrayView2<f64>) -> Array2<f64> {
        let xc = &x - &self.mean;
        &x - &xc.dot(&self.proj.t())
    }
}
