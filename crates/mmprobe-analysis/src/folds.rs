//! Cross-validation folds over *groups*: every row of a group (the tokens of
//! one sample, or the rows sharing a `--group-column` value) sits in one fold,
//! so no sample is ever on both sides of a split. Stratified for classes
//! (every fold keeps the class proportions of the groups), shuffled with a
//! fixed seed.

use ndarray::{Array2, ArrayView2, Axis};
use rayon::prelude::*;

use crate::error::{AnalysisError, Result};
use crate::rng::Rng;
use crate::scale::Standardizer;

/// Which rows belong together: a dense group id (0..count) per row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Groups {
    pub id: Vec<usize>,
    pub count: usize,
}

impl Groups {
    /// One group per distinct key, numbered in the keys' sorted order.
    pub fn from_keys<K: Ord>(keys: &[K]) -> Groups {
        let mut distinct: Vec<&K> = keys.iter().collect();
        distinct.sort();
        distinct.dedup();
        let id = keys.iter().map(|k| distinct.binary_search(&k).expect("a known key")).collect();
        Groups { id, count: distinct.len() }
    }

    /// Every row its own group (one row per sample).
    pub fn singletons(n: usize) -> Groups {
        Groups { id: (0..n).collect(), count: n }
    }

    /// The groups of a subset of rows, renumbered densely.
    pub fn subset(&self, rows: &[usize]) -> Groups {
        Groups::from_keys(&rows.iter().map(|&r| self.id[r]).collect::<Vec<_>>())
    }

    pub fn len(&self) -> usize {
        self.id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.id.is_empty()
    }

    /// The rows of every group, in row order.
    pub fn members(&self) -> Vec<Vec<usize>> {
        let mut m = vec![Vec::new(); self.count];
        for (r, &g) in self.id.iter().enumerate() {
            m[g].push(r);
        }
        m
    }

    /// One value per group when every row of a group has the same one.
    pub fn constant<T: PartialEq + Copy>(&self, v: &[T]) -> Option<Vec<T>> {
        let mut out: Vec<Option<T>> = vec![None; self.count];
        for (r, &g) in self.id.iter().enumerate() {
            match out[g] {
                None => out[g] = Some(v[r]),
                Some(x) if x == v[r] => {}
                Some(_) => return None,
            }
        }
        out.into_iter().collect()
    }
}

/// Too few groups of a class (or in all) for the folds asked for.
fn too_small(message: String) -> AnalysisError {
    AnalysisError::TooSmall(message)
}

/// The class of a group for stratification: its most common class (ties: the lowest).
fn group_classes(y: &[usize], groups: &Groups, n_classes: usize) -> Vec<usize> {
    let mut counts = vec![vec![0usize; n_classes]; groups.count];
    for (r, &g) in groups.id.iter().enumerate() {
        counts[g][y[r]] += 1;
    }
    counts.iter().map(|c| (0..n_classes).max_by_key(|&k| (c[k], std::cmp::Reverse(k))).unwrap_or(0)).collect()
}

/// Fold index (0..k) of every row, stratified by class over groups.
/// With singleton groups this is a plain stratified k-fold.
pub fn stratified(y: &[usize], groups: &Groups, n_classes: usize, k: usize, seed: u64) -> Result<Vec<usize>> {
    if k < 2 {
        return Err(AnalysisError::Params(format!("folds must be at least 2, got {k}")));
    }
    let gy = group_classes(y, groups, n_classes);
    let mut rng = Rng::new(seed);
    let mut group_fold = vec![0usize; groups.count];
    // Offsetting each class's round-robin keeps fold sizes balanced overall.
    let mut offset = 0;
    for c in 0..n_classes {
        let mut idx: Vec<usize> = (0..groups.count).filter(|&g| gy[g] == c).collect();
        if !idx.is_empty() && idx.len() < k {
            return Err(too_small(format!("class {c} has {} groups, fewer than the {k} folds", idx.len())));
        }
        rng.shuffle(&mut idx);
        for (j, &g) in idx.iter().enumerate() {
            group_fold[g] = (j + offset) % k;
        }
        offset += idx.len();
    }
    Ok(groups.id.iter().map(|&g| group_fold[g]).collect())
}

/// Fold index of every row, unstratified (numeric targets), over groups.
pub fn shuffled(groups: &Groups, k: usize, seed: u64) -> Result<Vec<usize>> {
    if k < 2 {
        return Err(AnalysisError::Params(format!("folds must be at least 2, got {k}")));
    }
    if k > groups.count {
        return Err(too_small(format!("{} groups, fewer than the {k} folds", groups.count)));
    }
    let mut idx: Vec<usize> = (0..groups.count).collect();
    Rng::new(seed).shuffle(&mut idx);
    let mut group_fold = vec![0; groups.count];
    for (j, &g) in idx.iter().enumerate() {
        group_fold[g] = j % k;
    }
    Ok(groups.id.iter().map(|&g| group_fold[g]).collect())
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
    /// The groups of the training rows (for inner cross-validation).
    pub groups_train: &'a Groups,
    pub test_rows: &'a [usize],
}

/// Runs `work` on every fold, in parallel; returns (test rows, result) per fold, in fold order.
pub fn each_fold<T: Copy + Sync, R: Send>(
    x: ArrayView2<f64>,
    y: &[T],
    groups: &Groups,
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
            let groups_train = groups.subset(&train);
            let r = work(FoldData {
                fold: f,
                raw_train: xt.view(),
                raw_test: xv.view(),
                train: st.view(),
                test: sv.view(),
                y_train: &y_train,
                groups_train: &groups_train,
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
        let g = Groups::singletons(50);
        let f = stratified(&y, &g, 2, 5, 3).unwrap();
        for k in 0..5 {
            let zeros = (0..50).filter(|&i| f[i] == k && y[i] == 0).count();
            assert_eq!(zeros, 2);
            assert_eq!((0..50).filter(|&i| f[i] == k).count(), 10);
        }
        assert_eq!(f, stratified(&y, &g, 2, 5, 3).unwrap(), "seeded");
    }

    #[test]
    fn a_group_never_spans_two_folds() {
        // 30 samples of 4 tokens each, labels per sample.
        let keys: Vec<usize> = (0..120).map(|r| (r * 7) % 30).collect();
        let g = Groups::from_keys(&keys);
        assert_eq!(g.count, 30);
        let y: Vec<usize> = keys.iter().map(|s| s % 3).collect();
        for f in [stratified(&y, &g, 3, 5, 1).unwrap(), shuffled(&g, 5, 1).unwrap()] {
            for s in 0..30 {
                let folds: Vec<usize> = (0..120).filter(|&r| keys[r] == s).map(|r| f[r]).collect();
                assert!(folds.windows(2).all(|w| w[0] == w[1]), "sample {s} in folds {folds:?}");
            }
            for k in 0..5 {
                assert_eq!((0..120).filter(|&r| f[r] == k).count(), 24, "6 samples of 4 rows per fold");
            }
        }
    }

    #[test]
    fn too_few_groups_is_named() {
        let g = Groups::from_keys(&[0, 0, 1, 1, 2, 2]);
        let e = stratified(&[0, 0, 0, 0, 1, 1], &g, 2, 2, 0).unwrap_err();
        assert!(e.to_string().contains("1 groups, fewer than the 2 folds"), "{e}");
        assert!(shuffled(&g, 4, 0).is_err());
    }

    #[test]
    fn constant_per_group() {
        let g = Groups::from_keys(&["a", "a", "b"]);
        assert_eq!(g.constant(&[1, 1, 2]), Some(vec![1, 2]));
        assert_eq!(g.constant(&[1, 3, 2]), None);
    }
}
