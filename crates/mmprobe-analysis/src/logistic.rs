//! Logistic-regression probes on standardised features: scikit-learn's
//! LogisticRegression objective (Σ loss + ‖w‖²/(2C), intercept unpenalised),
//! binary for two classes, multinomial for more, solved by [`crate::lbfgs`]
//! (linfa-logistic was too slow on activation shapes; see there).

use ndarray::{Array1, Array2, ArrayView2};

use crate::error::{AnalysisError, Result};
use crate::folds;
use crate::lbfgs;
use crate::metrics::{accuracy, argmax_rows};

/// Hyperparameters as given; [`LogisticParams::check`] validates them.
#[derive(Debug, Clone)]
pub struct LogisticParams {
    /// Inverse regularisation strength; `None` picks one from `c_grid` by inner CV.
    pub c: Option<f64>,
    pub c_grid: Vec<f64>,
    pub inner_folds: usize,
    pub max_iterations: u64,
    pub tolerance: f64,
    pub seed: u64,
}

impl Default for LogisticParams {
    fn default() -> Self {
        LogisticParams {
            c: None,
            c_grid: vec![0.001, 0.01, 0.1, 1.0],
            inner_folds: 3,
            max_iterations: 100,
            tolerance: 1e-4,
            seed: 0,
        }
    }
}

/// Validated hyperparameters.
#[derive(Debug, Clone)]
pub struct CheckedLogistic(LogisticParams);

impl LogisticParams {
    pub fn check(self) -> Result<CheckedLogistic> {
        let bad = |m: String| Err(AnalysisError::Params(m));
        if let Some(c) = self.c
            && !(c.is_finite() && c > 0.0)
        {
            return bad(format!("C must be a positive number, got {c}"));
        }
        if self.c.is_none() && (self.c_grid.is_empty() || self.c_grid.iter().any(|c| !(c.is_finite() && *c > 0.0))) {
            return bad("the C grid needs positive numbers".into());
        }
        if self.c.is_none() && self.inner_folds < 2 {
            return bad(format!("inner folds must be at least 2, got {}", self.inner_folds));
        }
        if self.max_iterations == 0 || !(self.tolerance.is_finite() && self.tolerance > 0.0) {
            return bad("max iterations and tolerance must be positive".into());
        }
        Ok(CheckedLogistic(self))
    }
}

impl CheckedLogistic {
    pub fn params(&self) -> &LogisticParams {
        &self.0
    }
}

/// A fitted probe: per-class scores are `x · coef[c] + intercept[c]`.
#[derive(Debug, Clone)]
pub struct LogisticModel {
    /// [K, d]; for two classes row 1 is the binary weight vector and row 0 its negation's
    /// stand-in (zero), so softmax over rows gives the binary probabilities.
    pub coef: Array2<f64>,
    pub intercept: Array1<f64>,
    pub binary: bool,
}

impl LogisticModel {
    pub fn predict_proba(&self, x: ArrayView2<f64>) -> Array2<f64> {
        let mut s = x.dot(&self.coef.t());
        for mut row in s.rows_mut() {
            row += &self.intercept;
            let m = row.fold(f64::NEG_INFINITY, |a, &b| a.max(b));
            row.mapv_inplace(|v| (v - m).exp());
            let z = row.sum();
            row /= z;
        }
        s
    }

    /// The unit normal separating each class from the rest (the CAV), [K, d].
    /// ln p(class | x) for every row and class, computed as a log-softmax so a
    /// confident wrong prediction costs a large finite number, never infinity.
    pub fn log_proba(&self, x: ArrayView2<f64>) -> Array2<f64> {
        let mut s = x.dot(&self.coef.t());
        for mut row in s.rows_mut() {
            row += &self.intercept;
            let m = row.fold(f64::NEG_INFINITY, |a, &b| a.max(b));
            let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
            row.mapv_inplace(|v| v - lse);
        }
        s
    }

    pub fn class_directions(&self) -> Array2<f64> {
        let mut d = self.coef.clone();
        if self.binary {
            let w = d.row(1).to_owned();
            d.row_mut(0).assign(&(-&w));
        }
        for mut r in d.rows_mut() {
            let n = r.dot(&r).sqrt();
            if n > 0.0 {
                r /= n;
            }
        }
        d
    }
}

/// Fits on (already standardised) `x` with labels in 0..k, every class present.
pub fn fit(x: ArrayView2<f64>, y: &[usize], k: usize, c: f64, p: &CheckedLogistic) -> Result<LogisticModel> {
    let p = &p.0;
    let d = x.ncols();
    let xf = x.mapv(|v| v as f32);
    let f = lbfgs::fit(xf.view(), y, k, c, p.max_iterations as usize, p.tolerance);
    if !f.w.iter().chain(f.b.iter()).all(|v| v.is_finite()) {
        return Err(AnalysisError::Fit { what: "logistic regression", message: "weights are not finite".into() });
    }
    if k == 2 {
        let mut coef = Array2::zeros((2, d));
        coef.row_mut(1).assign(&f.w.column(0));
        Ok(LogisticModel { coef, intercept: Array1::from(vec![0.0, f.b[0]]), binary: true })
    } else {
        Ok(LogisticModel { coef: f.w.t().to_owned(), intercept: f.b, binary: false })
    }
}

/// C from the grid with the best inner-CV accuracy (standardising inside each inner fold).
pub fn choose_c(x: ArrayView2<f64>, y: &[usize], groups: &folds::Groups, k: usize, p: &CheckedLogistic) -> Result<f64> {
    if let Some(c) = p.0.c {
        return Ok(c);
    }
    let inner = folds::stratified(y, groups, k, p.0.inner_folds, p.0.seed ^ 0x1A2B)?;
    let mut best = (f64::NEG_INFINITY, p.0.c_grid[0]);
    for &c in &p.0.c_grid {
        let per_fold = folds::each_fold(x, y, groups, &inner, p.0.inner_folds, |d| {
            let pred = argmax_rows(fit(d.train, d.y_train, k, c, p)?.predict_proba(d.test).view());
            let ytest: Vec<usize> = d.test_rows.iter().map(|&i| y[i]).collect();
            Ok(accuracy(&ytest, &pred) * d.test_rows.len() as f64)
        })?;
        let acc = per_fold.iter().map(|(_, correct)| correct).sum::<f64>() / y.len() as f64;
        if acc > best.0 {
            best = (acc, c);
        }
    }
    Ok(best.1)
}
