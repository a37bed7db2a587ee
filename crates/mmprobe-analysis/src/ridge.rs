//! Ridge-regression probes for numeric concepts: closed form on standardised
//! features with a centred target, α chosen by inner CV unless given.

use ndarray::{Array1, Array2, ArrayView2, Axis};

use crate::error::{AnalysisError, Result};
use crate::folds;
use crate::linalg::solve_spd;

#[derive(Debug, Clone)]
pub struct RidgeParams {
    pub alpha: Option<f64>,
    pub alpha_grid: Vec<f64>,
    pub inner_folds: usize,
    pub seed: u64,
}

impl Default for RidgeParams {
    fn default() -> Self {
        RidgeParams { alpha: None, alpha_grid: vec![0.1, 1.0, 10.0, 100.0, 1000.0], inner_folds: 3, seed: 0 }
    }
}

#[derive(Debug, Clone)]
pub struct CheckedRidge(RidgeParams);

impl RidgeParams {
    pub fn check(self) -> Result<CheckedRidge> {
        let ok = |a: f64| a.is_finite() && a >= 0.0;
        if self.alpha.is_some_and(|a| !ok(a))
            || (self.alpha.is_none() && (self.alpha_grid.is_empty() || !self.alpha_grid.iter().all(|&a| ok(a))))
        {
            return Err(AnalysisError::Params("ridge alpha must be a non-negative number".into()));
        }
        if self.alpha.is_none() && self.inner_folds < 2 {
            return Err(AnalysisError::Params("inner folds must be at least 2".into()));
        }
        Ok(CheckedRidge(self))
    }
}

/// A fitted ridge: prediction = x · w + b on the standardised x.
pub struct RidgeModel {
    pub w: Array1<f64>,
    pub b: f64,
}

impl RidgeModel {
    pub fn predict(&self, x: ArrayView2<f64>) -> Array1<f64> {
        x.dot(&self.w) + self.b
    }
}

pub fn fit(x: ArrayView2<f64>, y: &[f64], alpha: f64) -> Result<RidgeModel> {
    if x.nrows() != y.len() {
        return Err(AnalysisError::Input(format!("a ridge fit on {} rows and {} targets", x.nrows(), y.len())));
    }
    if x.nrows() == 0 {
        return Err(AnalysisError::TooSmall("a ridge fit on no rows".into()));
    }
    let n = y.len() as f64;
    let ym = y.iter().sum::<f64>() / n;
    let yc = Array1::from_iter(y.iter().map(|v| v - ym));
    let xm = x.mean_axis(Axis(0)).expect("rows");
    let xc = &x - &xm;
    let mut a: Array2<f64> = xc.t().dot(&xc);
    for i in 0..a.nrows() {
        a[[i, i]] += alpha.max(1e-10);
    }
    let w = solve_spd(&a, xc.t().dot(&yc).view())?;
    let b = ym - xm.dot(&w);
    Ok(RidgeModel { w, b })
}

pub fn choose_alpha(x: ArrayView2<f64>, y: &[f64], groups: &folds::Groups, p: &CheckedRidge) -> Result<f64> {
    if let Some(a) = p.0.alpha {
        return Ok(a);
    }
    let inner = folds::shuffled(groups, p.0.inner_folds, p.0.seed ^ 0x5EED)?;
    let mut best = (f64::INFINITY, p.0.alpha_grid[0]);
    for &alpha in &p.0.alpha_grid {
        let per_fold = folds::each_fold(x, y, groups, &inner, p.0.inner_folds, |d| {
            let pred = fit(d.train, d.y_train, alpha)?.predict(d.test);
            Ok(d.test_rows.iter().zip(pred.iter()).map(|(&i, p)| (y[i] - p).powi(2)).sum::<f64>())
        })?;
        let sse: f64 = per_fold.iter().map(|(_, e)| e).sum();
        if sse < best.0 {
            best = (sse, alpha);
        }
    }
    Ok(best.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fit_on_no_rows_is_too_small_not_a_panic() {
        let e = fit(Array2::<f64>::zeros((0, 3)).view(), &[], 1.0).err().unwrap();
        assert!(matches!(e, AnalysisError::TooSmall(_)), "{e}");
        let e = fit(Array2::<f64>::zeros((2, 3)).view(), &[1.0], 1.0).err().unwrap();
        assert!(matches!(e, AnalysisError::Input(_)), "{e}");
        let m = fit(ndarray::array![[0.0], [1.0], [2.0]].view(), &[1.0, 3.0, 5.0], 0.0).unwrap();
        assert!((m.w[0] - 2.0).abs() < 1e-6 && (m.b - 1.0).abs() < 1e-6);
    }
}
