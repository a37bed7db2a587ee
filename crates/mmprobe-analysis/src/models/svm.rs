//! An RBF support vector machine (linfa-svm's SMO solver), one against the
//! rest for more than two classes.

use linfa::prelude::*;
use linfa_svm::Svm;
use ndarray::{Array1, Array2};

use super::{Classifier, linfa_err};
use crate::error::{AnalysisError, Result};
use crate::folds::FoldData;
use crate::tables::ProbeKind;

/// k(x, x') = exp(−gamma · ‖x − x'‖²), with scikit-learn's C.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RbfSvm {
    pub c: f64,
    /// None: scikit-learn's "scale", 1 / (features x variance of the training rows).
    pub gamma: Option<f64>,
}

impl Default for RbfSvm {
    fn default() -> Self {
        RbfSvm { c: 1.0, gamma: None }
    }
}

impl RbfSvm {
    pub fn check(&self) -> Result<()> {
        let ok = |v: f64| v.is_finite() && v > 0.0;
        if !ok(self.c) || self.gamma.is_some_and(|g| !ok(g)) {
            return Err(AnalysisError::Params(format!("svm: C and gamma must be positive, got {self:?}")));
        }
        Ok(())
    }

    fn gamma_for(&self, train: ndarray::ArrayView2<f64>) -> f64 {
        self.gamma.unwrap_or_else(|| {
            let n = train.len() as f64;
            let mean = train.sum() / n;
            let var = train.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
            1.0 / (train.ncols() as f64 * if var > 0.0 { var } else { 1.0 })
        })
    }

    /// Decision values of one class against the rest.
    fn one_vs_rest(&self, d: &FoldData<'_, usize>, class: usize, gamma: f64) -> Result<Array1<f64>> {
        let targets: Array1<bool> = d.y_train.iter().map(|&c| c == class).collect();
        let data = DatasetBase::new(d.train.to_owned(), targets);
        let model: Svm<f64, bool> = Svm::<f64, bool>::params()
            .gaussian_kernel(1.0 / gamma)
            .pos_neg_weights(self.c, self.c)
            .fit(&data)
            .map_err(|e: linfa_svm::SvmError| linfa_err("svm")(e.to_string()))?;
        Ok(d.test.rows().into_iter().map(|r| model.weighted_sum(&r) - model.rho).collect())
    }
}

impl Classifier for RbfSvm {
    fn kind(&self) -> ProbeKind {
        ProbeKind::Svm
    }

    fn fit_score(&self, d: &FoldData<'_, usize>, k: usize, _fixed: Option<f64>) -> Result<(Array2<f64>, f64)> {
        let gamma = self.gamma_for(d.train);
        let mut scores = Array2::zeros((d.test.nrows(), k));
        if k == 2 {
            // One machine: class 1 is the positive side.
            let v = self.one_vs_rest(d, 1, gamma)?;
            scores.column_mut(1).assign(&v);
            scores.column_mut(0).assign(&v.mapv(|x| -x));
        } else {
            for c in 0..k {
                scores.column_mut(c).assign(&self.one_vs_rest(d, c, gamma)?);
            }
        }
        Ok((scores, self.c))
    }
}
