//! Ordinary least squares (linfa-linear) for numeric concepts.

use linfa::prelude::*;
use linfa_linear::LinearRegression;
use ndarray::Array1;

use super::{Regressor, linfa_err};
use crate::error::Result;
use crate::folds::FoldData;
use crate::tables::ProbeKind;

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Ols;

impl Regressor for Ols {
    fn kind(&self) -> ProbeKind {
        ProbeKind::Linear
    }

    fn fit_predict(&self, d: &FoldData<'_, f64>, _fixed: Option<f64>) -> Result<(Vec<f64>, f64)> {
        let data = DatasetBase::new(d.train.to_owned(), Array1::from(d.y_train.to_vec()));
        let model = LinearRegression::new().fit(&data).map_err(|e| linfa_err("linear regression")(e.to_string()))?;
        let pred: Array1<f64> = model.predict(&d.test.to_owned());
        Ok((pred.to_vec(), 0.0))
    }
}
