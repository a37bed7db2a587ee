//! What a probe is: any model that fits standardised training rows of one
//! fold and scores the held-out rows. The linear probes are our own
//! (logistic: 2.6x scikit-learn and 2.5x linfa-logistic on the probe-sweep
//! benchmark in bench/README.md; ridge: one Cholesky solve, which linfa-linear
//! does not offer and linfa-elasticnet would iterate towards); the non-linear
//! baselines, which tell "not linearly readable" from "not there", come from
//! the linfa family (an RBF SVM from linfa-svm, k nearest neighbours over
//! linfa-nn, a decision tree from linfa-trees) and ordinary least squares
//! from linfa-linear. Every one runs through the same grouped folds, repeats,
//! control task and permutations.

mod knn;
mod ols;
mod svm;
mod tree;

use ndarray::Array2;

use crate::error::{AnalysisError, Result};
use crate::folds::FoldData;
use crate::logistic::{self, CheckedLogistic};
use crate::ridge::{self, CheckedRidge};
use crate::tables::ProbeKind;

pub use knn::Knn;
pub use ols::Ols;
pub use svm::RbfSvm;
pub use tree::Tree;

/// A probe for classes.
pub trait Classifier: Sync {
    fn kind(&self) -> ProbeKind;
    /// Fits on the fold's training rows and scores its test rows, [n_test, k]
    /// (argmax is the prediction). `fixed` is a hyperparameter chosen for this
    /// fold before (control and permutation runs reuse it); returns the one used.
    fn fit_score(&self, d: &FoldData<'_, usize>, k: usize, fixed: Option<f64>) -> Result<(Array2<f64>, f64)>;
    /// The scores are class probabilities (AUROC is reported only then).
    fn probabilities(&self) -> bool {
        false
    }
}

/// A probe for a number.
pub trait Regressor: Sync {
    fn kind(&self) -> ProbeKind;
    /// Fits on the fold's training rows and predicts its test rows.
    fn fit_predict(&self, d: &FoldData<'_, f64>, fixed: Option<f64>) -> Result<(Vec<f64>, f64)>;
}

impl Classifier for CheckedLogistic {
    fn kind(&self) -> ProbeKind {
        ProbeKind::Logistic
    }

    fn fit_score(&self, d: &FoldData<'_, usize>, k: usize, fixed: Option<f64>) -> Result<(Array2<f64>, f64)> {
        let c = match fixed {
            Some(c) => c,
            None => logistic::choose_c(d.raw_train, d.y_train, d.groups_train, k, self)?,
        };
        Ok((logistic::fit(d.train, d.y_train, k, c, self)?.predict_proba(d.test), c))
    }

    fn probabilities(&self) -> bool {
        true
    }
}

impl Regressor for CheckedRidge {
    fn kind(&self) -> ProbeKind {
        ProbeKind::Ridge
    }

    fn fit_predict(&self, d: &FoldData<'_, f64>, fixed: Option<f64>) -> Result<(Vec<f64>, f64)> {
        let alpha = match fixed {
            Some(a) => a,
            None => ridge::choose_alpha(d.raw_train, d.y_train, d.groups_train, self)?,
        };
        Ok((ridge::fit(d.train, d.y_train, alpha)?.predict(d.test).to_vec(), alpha))
    }
}

/// The probe model a sweep asks for (`probe --model`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum ModelChoice {
    /// Logistic for classes, ridge for numbers.
    #[default]
    Linear,
    /// Logistic for classes, ordinary least squares for numbers.
    Ols,
    Svm(RbfSvm),
    Knn(Knn),
    Tree(Tree),
}

impl std::str::FromStr for ModelChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "logistic" | "ridge" | "linear-probe" => Ok(ModelChoice::Linear),
            "linear" | "ols" => Ok(ModelChoice::Ols),
            "svm" => Ok(ModelChoice::Svm(RbfSvm::default())),
            "knn" => Ok(ModelChoice::Knn(Knn::default())),
            "tree" => Ok(ModelChoice::Tree(Tree::default())),
            other => Err(format!("unknown probe model '{other}' (logistic, ridge, linear, svm, knn, tree)")),
        }
    }
}

impl ModelChoice {
    /// The classifier for class concepts.
    pub fn classifier<'a>(&'a self, logistic: &'a CheckedLogistic) -> &'a dyn Classifier {
        match self {
            ModelChoice::Linear | ModelChoice::Ols => logistic,
            ModelChoice::Svm(m) => m,
            ModelChoice::Knn(m) => m,
            ModelChoice::Tree(m) => m,
        }
    }

    /// The regressor for numeric concepts, or why there is none.
    pub fn regressor<'a>(&'a self, ridge: &'a CheckedRidge) -> Result<&'a dyn Regressor> {
        match self {
            ModelChoice::Linear => Ok(ridge),
            ModelChoice::Ols => Ok(&Ols),
            other => Err(AnalysisError::TooSmall(format!(
                "the {} probe is for classes; numbers take ridge or linear",
                other.classifier_name()
            ))),
        }
    }

    fn classifier_name(&self) -> &'static str {
        match self {
            ModelChoice::Svm(_) => "svm",
            ModelChoice::Knn(_) => "knn",
            ModelChoice::Tree(_) => "tree",
            _ => "logistic",
        }
    }

    /// Checks the hyperparameters before any fitting.
    pub fn check(&self) -> Result<()> {
        match self {
            ModelChoice::Svm(m) => m.check(),
            ModelChoice::Knn(m) => m.check(),
            ModelChoice::Tree(m) => m.check(),
            _ => Ok(()),
        }
    }
}

/// One-hot rows of predicted classes (models that give no scores).
fn one_hot(pred: &[usize], k: usize) -> Array2<f64> {
    let mut s = Array2::zeros((pred.len(), k));
    for (r, &c) in pred.iter().enumerate() {
        s[[r, c.min(k - 1)]] = 1.0;
    }
    s
}

fn linfa_err(what: &'static str) -> impl Fn(String) -> AnalysisError {
    move |message| AnalysisError::Fit { what, message }
}
