//! k nearest neighbours (Euclidean, on standardised features) over linfa-nn's
//! exact linear search: class scores are the neighbours' vote shares.

use linfa_nn::distance::L2Dist;
use linfa_nn::{LinearSearch, NearestNeighbour};
use ndarray::Array2;

use super::{Classifier, linfa_err};
use crate::error::{AnalysisError, Result};
use crate::folds::FoldData;
use crate::tables::ProbeKind;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Knn {
    pub k: usize,
}

impl Default for Knn {
    fn default() -> Self {
        Knn { k: 5 }
    }
}

impl Knn {
    pub fn check(&self) -> Result<()> {
        if self.k == 0 {
            return Err(AnalysisError::Params("knn: k must be at least 1".into()));
        }
        Ok(())
    }
}

impl Classifier for Knn {
    fn kind(&self) -> ProbeKind {
        ProbeKind::Knn
    }

    fn fit_score(&self, d: &FoldData<'_, usize>, k: usize, _fixed: Option<f64>) -> Result<(Array2<f64>, f64)> {
        let index = LinearSearch::new().from_batch(&d.train, L2Dist).map_err(|e| linfa_err("knn")(e.to_string()))?;
        let mut scores = Array2::zeros((d.test.nrows(), k));
        for (r, row) in d.test.rows().into_iter().enumerate() {
            let near = index.k_nearest(row, self.k).map_err(|e| linfa_err("knn")(e.to_string()))?;
            for (_, i) in &near {
                scores[[r, d.y_train[*i]]] += 1.0 / near.len() as f64;
            }
        }
        Ok((scores, self.k as f64))
    }
}
