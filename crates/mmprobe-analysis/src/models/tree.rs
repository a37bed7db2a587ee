//! A decision tree (linfa-trees, Gini impurity).

use linfa::prelude::*;
use linfa_trees::DecisionTree;
use ndarray::Array1;

use super::{Classifier, linfa_err, one_hot};
use crate::error::{AnalysisError, Result};
use crate::folds::FoldData;
use crate::tables::ProbeKind;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tree {
    pub max_depth: usize,
}

impl Default for Tree {
    fn default() -> Self {
        Tree { max_depth: 8 }
    }
}

impl Tree {
    pub fn check(&self) -> Result<()> {
        if self.max_depth == 0 {
            return Err(AnalysisError::Params("tree: the depth must be at least 1".into()));
        }
        Ok(())
    }
}

impl Classifier for Tree {
    fn kind(&self) -> ProbeKind {
        ProbeKind::Tree
    }

    fn fit_score(&self, d: &FoldData<'_, usize>, k: usize, _fixed: Option<f64>) -> Result<(ndarray::Array2<f64>, f64)> {
        let data = DatasetBase::new(d.train.to_owned(), Array1::from(d.y_train.to_vec()));
        let model = DecisionTree::params()
            .max_depth(Some(self.max_depth))
            .fit(&data)
            .map_err(|e| linfa_err("tree")(e.to_string()))?;
        let pred: Array1<usize> = model.predict(&d.test.to_owned());
        Ok((one_hot(pred.as_slice().unwrap_or(&[]), k), self.max_depth as f64))
    }
}
