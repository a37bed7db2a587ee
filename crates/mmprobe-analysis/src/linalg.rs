//! Small dense linear algebra on ndarray (linfa-linalg underneath): means,
//! covariances, symmetric solves and eigendecompositions.

use linfa_linalg::cholesky::CholeskyInplace;
use linfa_linalg::eigh::EighInto;
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};

use crate::error::{AnalysisError, Result};

pub fn mean_rows(x: ArrayView2<f64>) -> Array1<f64> {
    x.mean_axis(Axis(0)).unwrap_or_else(|| Array1::zeros(x.ncols()))
}

pub fn centered(x: ArrayView2<f64>) -> Array2<f64> {
    let m = mean_rows(x);
    &x - &m
}

/// Solves A x = b for symmetric positive (semi-)definite A. A singular A
/// (collinear features: a layer-0 text state takes only as many values as
/// there are token positions; layer-0 CLS is the same for every image) gets
/// the smallest diagonal jitter, relative to its mean diagonal, that factorises.
pub fn solve_spd(a: &Array2<f64>, b: ArrayView1<f64>) -> Result<Array1<f64>> {
    let n = a.nrows();
    let mean_diag = (a.diag().sum() / n.max(1) as f64).abs();
    let scale = if mean_diag > 0.0 { mean_diag } else { 1.0 };
    let mut jitter = 0.0;
    let l = loop {
        let mut m = a.clone();
        for i in 0..n {
            m[[i, i]] += jitter;
        }
        match m.cholesky_into() {
            Ok(l) => break l,
            Err(_) if jitter < scale * 1e-2 => jitter = if jitter == 0.0 { scale * 1e-12 } else { jitter * 10.0 },
            Err(e) => return Err(AnalysisError::Fit { what: "Cholesky", message: e.to_string() }),
        }
    };
    // L y = b, then Lᵀ x = y.
    let n = b.len();
    let mut y = b.to_owned();
    for i in 0..n {
        let s: f64 = (0..i).map(|j| l[[i, j]] * y[j]).sum();
        y[i] = (y[i] - s) / l[[i, i]];
    }
    let mut x = y;
    for i in (0..n).rev() {
        let s: f64 = (i + 1..n).map(|j| l[[j, i]] * x[j]).sum();
        x[i] = (x[i] - s) / l[[i, i]];
    }
    Ok(x)
}

/// Eigenvalues (ascending) and eigenvectors (columns) of a symmetric matrix.
pub fn eigh(a: &Array2<f64>) -> Result<(Array1<f64>, Array2<f64>)> {
    let (vals, vecs) =
        a.clone().eigh_into().map_err(|e| AnalysisError::Fit { what: "eigendecomposition", message: e.to_string() })?;
    // Sort ascending, as numpy does.
    let mut order: Vec<usize> = (0..vals.len()).collect();
    order.sort_by(|&i, &j| vals[i].total_cmp(&vals[j]));
    Ok((order.iter().map(|&i| vals[i]).collect(), vecs.select(Axis(1), &order)))
}

/// Ledoit-Wolf shrinkage intensity of already-centred data (scikit-learn's
/// `ledoit_wolf_shrinkage(X, assume_centered=True)`).
pub fn ledoit_wolf_shrinkage(x: ArrayView2<f64>) -> f64 {
    let (n, d) = x.dim();
    if n < 2 || d == 0 {
        return 0.0;
    }
    let (nf, df) = (n as f64, d as f64);
    let x2 = x.mapv(|v| v * v);
    let emp_cov_trace = x2.sum_axis(Axis(0)) / nf;
    let mu = emp_cov_trace.sum() / df;
    let beta_ = x2.t().dot(&x2).sum();
    let xtx = x.t().dot(&x);
    let delta_ = xtx.mapv(|v| v * v).sum() / (nf * nf);
    let beta = (beta_ / nf - delta_) / (df * nf);
    let delta = (delta_ - 2.0 * mu * emp_cov_trace.sum() + df * mu * mu) / df;
    let beta = beta.min(delta);
    // scikit-learn divides unguarded; constant data (delta = 0) would give NaN here.
    if beta <= 0.0 || delta <= 0.0 || !(beta / delta).is_finite() { 0.0 } else { (beta / delta).min(1.0) }
}

/// Pooled within-class scatter Σ_W (divided by n) of x under class labels,
/// shrunk as (1 - a)·Σ_W + a·(tr Σ_W / d)·I with the Ledoit-Wolf a.
pub fn shrunk_within_covariance(x: ArrayView2<f64>, y: &[usize], k: usize) -> (Array2<f64>, f64) {
    let (n, d) = x.dim();
    let mut xw = x.to_owned();
    for c in 0..k {
        let idx: Vec<usize> = (0..n).filter(|&i| y[i] == c).collect();
        if idx.is_empty() {
            continue;
        }
        let m = mean_rows(x.select(Axis(0), &idx).view());
        for &i in &idx {
            let mut r = xw.row_mut(i);
            r -= &m;
        }
    }
    let cov = xw.t().dot(&xw) / n as f64;
    let a = ledoit_wolf_shrinkage(xw.view());
    let mu = cov.diag().sum() / d as f64;
    let mut shrunk = cov * (1.0 - a);
    for i in 0..d {
        shrunk[[i, i]] += a * mu;
    }
    (shrunk, a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn constant_and_collinear_data_still_solve() {
        // Every row the same (layer-0 CLS): zero within-class scatter.
        let x = Array2::from_elem((6, 3), 0.5);
        let y = [0, 1, 0, 1, 0, 1];
        assert_eq!(ledoit_wolf_shrinkage(centered(x.view()).view()), 0.0);
        let (sw, _) = shrunk_within_covariance(x.view(), &y, 2);
        let v = solve_spd(&sw, array![1.0, 0.0, 0.0].view()).unwrap();
        assert!(v.iter().all(|v| v.is_finite()));
        // Rank one: a tiny jitter makes it solvable, and a definite matrix is solved exactly.
        let a = array![[1.0, 1.0], [1.0, 1.0]];
        assert!(solve_spd(&a, array![1.0, 1.0].view()).unwrap().iter().all(|v| v.is_finite()));
        let a = array![[4.0, 1.0], [1.0, 3.0]];
        let v = solve_spd(&a, array![1.0, 2.0].view()).unwrap();
        assert!((v[0] - 1.0 / 11.0).abs() < 1e-12 && (v[1] - 7.0 / 11.0).abs() < 1e-12);
    }
}
