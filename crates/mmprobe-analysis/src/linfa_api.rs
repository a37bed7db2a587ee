//! Our probes speak linfa: the checked logistic and ridge parameters are
//! linfa estimators (`Fit` on a `Dataset`), their fitted models predict
//! through `Predict`, so a Rust user can swap a linfa model in for ours, or
//! use ours in linfa code. Fitting here does not standardise (scale the
//! records first, as the probes do per fold); without a fixed C or alpha
//! it is chosen by the inner cross-validation, every row its own group.

use linfa::dataset::{AsSingleTargets, DatasetBase, Records};
use linfa::traits::{Fit, PredictInplace};
use ndarray::{Array1, ArrayBase, Data, Ix2};

use crate::error::{AnalysisError, Result};
use crate::folds::Groups;
use crate::logistic::{self, CheckedLogistic, LogisticModel};
use crate::metrics::argmax_rows;
use crate::ridge::{self, CheckedRidge, RidgeModel};

impl<D, T> Fit<ArrayBase<D, Ix2>, T, AnalysisError> for CheckedLogistic
where
    D: Data<Elem = f64>,
    T: AsSingleTargets<Elem = usize>,
{
    type Object = LogisticModel;

    fn fit(&self, dataset: &DatasetBase<ArrayBase<D, Ix2>, T>) -> Result<LogisticModel> {
        let x = dataset.records().view();
        let y: Vec<usize> = dataset.as_single_targets().to_vec();
        let k = y.iter().max().map_or(0, |m| m + 1).max(2);
        let c = logistic::choose_c(x, &y, &Groups::singletons(y.len()), k, self)?;
        logistic::fit(x, &y, k, c, self)
    }
}

impl<D: Data<Elem = f64>> PredictInplace<ArrayBase<D, Ix2>, Array1<usize>> for LogisticModel {
    fn predict_inplace(&self, x: &ArrayBase<D, Ix2>, y: &mut Array1<usize>) {
        for (t, p) in y.iter_mut().zip(argmax_rows(self.predict_proba(x.view()).view())) {
            *t = p;
        }
    }

    fn default_target(&self, x: &ArrayBase<D, Ix2>) -> Array1<usize> {
        Array1::zeros(x.nsamples())
    }
}

impl<D, T> Fit<ArrayBase<D, Ix2>, T, AnalysisError> for CheckedRidge
where
    D: Data<Elem = f64>,
    T: AsSingleTargets<Elem = f64>,
{
    type Object = RidgeModel;

    fn fit(&self, dataset: &DatasetBase<ArrayBase<D, Ix2>, T>) -> Result<RidgeModel> {
        let x = dataset.records().view();
        let y: Vec<f64> = dataset.as_single_targets().to_vec();
        let alpha = ridge::choose_alpha(x, &y, &Groups::singletons(y.len()), self)?;
        ridge::fit(x, &y, alpha)
    }
}

impl<D: Data<Elem = f64>> PredictInplace<ArrayBase<D, Ix2>, Array1<f64>> for RidgeModel {
    fn predict_inplace(&self, x: &ArrayBase<D, Ix2>, y: &mut Array1<f64>) {
        y.assign(&self.predict(x.view()));
    }

    fn default_target(&self, x: &ArrayBase<D, Ix2>) -> Array1<f64> {
        Array1::zeros(x.nsamples())
    }
}
