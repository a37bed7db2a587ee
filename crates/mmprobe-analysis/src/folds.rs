//! Cross-validation folds: stratified for classes (every fold keeps the class
//! proportions), shuffled with a fixed seed.

use ndarray::{Array2, ArrayView2, Axis};
use rayon::prelude::*;

use crate::error::{AnalysisError, Result};
use crate::rng::Rng;
use crate::scale::Standardizer;

/// Fold index (0..k) of every sample, stratified by class.
pub fn stratified(y: &[usize], n_classes: usize, k: usize, seed: u64) -> Result<Vec<usize>> {
    if k < 2 {
        return Err(AnalysisError::Params(format!("folds must be at least 2, got {k}")));
    }
    let mut rng = Rng::new(seed);
    let mut fold = vec![0usize; y.len()];
    // Offsetting each class's round-robin keeps fold sizes balanced overall.
    let mut offset = 0;
    for c in 0..n_classes {
        let mut idx: Vec<usize> = (0..y.len()).filter(|&i| y[i] == c).collect();
        rng.shuffle(&mut idx);
        for (j, &i) in idx.iter().enumerate() {
            fold[i] = (j + offset) % k;
        }
        offset += idx.len();
    }
    Ok(fold)
}

/// Fold index of every sample, unstratified (numeric targets).
pub fn shuffled(n: usize, k: usize, seed: u64) -> Result<Vec<usize>> {
    if k < 2 || k > n {
        return Err(AnalysisError::Params(format!("need 2 <= folds <= rows, got {k} folds for {n} rows")));
    }
    let mut idx: Vec<usize> = (0..n).collect();
    Rng::new(seed).shuffle(&mut idx);
    let mut fold = vec![0; n];
    for (j, &i) in idx.iter().enumerate() {
        fold[i] = j % k;
    }
    Ok(fold)
}

/// (train, test) row indices of fold `f`.
pub fn split(fold: &[usize], f: usize) -> (Vec<usize>, Vec<usize>) {
    (0..fold.len()).partition(|&i| fold[i] != f)
}

/// One fold's rows: raw, and standardised with a scaler fit on its training rows only.
pub struct FoldData<'a, T> {
    pub fold: usize,
    pub raw_train: ArrayView2<'a, f64>,
    pub raw_test: ArrayView2<'a, f64>,
    pub train: ArrayView2<'a, f64>,
    pub test: ArrayView2<'a, f64>,
    pub y_train: &'a [T],
    pub test_rows: &'a [usize],
}

/// Runs `work` on every fold, in parallel; returns (test rows, result) per fold, in fold order.
pub fn each_fold<T: Copy + Sync, R: Send>(
    x: ArrayView2<f64>,
    y: &[T],
    fold: &[usize],
    n_folds: usize,
    work: impl Fn(FoldData<'_, T>) -> Result<R> + Sync,
) -> Result<Vec<(Vec<usize>, R)>> {
    (0..n_folds)
        .into_par_iter()
        .map(|f| {
            let (train, test) = split(fold, f);
            let (xt, xv): (Array2<f64>, Array2<f64>) = (x.select(Axis(0), &train), x.select(Axis(0), &test));
            let s = Standardizer::fit(xt.view());
            let (st, sv) = (s.transform(xt.view()), s.transform(xv.view()));
            let y_train: Vec<T> = train.iter().map(|&i| y[i]).collect();
            let r = work(FoldData {
                fold: f,
                raw_train: xt.view(),
                raw_test: xv.view(),
                train: st.view(),
                test: sv.view(),
                y_train: &y_train,
                test_rows: &test,
            })?;
            Ok((test, r))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stratified_keeps_every_class_in_every_fold() {
        let y: Vec<usize> = (0..50).map(|i| if i < 10 { 0 } else { 1 }).collect();
        let f = stratified(&y, 2, 5, 3).unwrap();
        for k in 0..5 {
            let zeros = (0..50).filter(|&i| f[i] == k && y[i] == 0).count();
            assert_eq!(zeros, 2);
            assert_eq!((0..50).filter(|&i| f[i] == k).count(), 10);
        }
        assert_eq!(f, stratified(&y, 2, 5, 3).unwrap(), "seeded");
    }
}
