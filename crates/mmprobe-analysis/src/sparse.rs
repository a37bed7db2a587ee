//! k-sparse probes (Gurnee et al. 2023): inside each training fold only, rank
//! the features by a filter, keep the top k, fit the probe on them and test on
//! the held-out fold. The ranking never sees a test row, so a feature chosen
//! in every fold is a concept "neuron", not a leak.

use ndarray::{ArrayView2, Axis};

use crate::error::{AnalysisError, Result};
use crate::folds::{self, Groups};
use crate::logistic;
use crate::metrics::argmax_rows;
use crate::probe::{CheckedProbe, FoldPlan};
use crate::stats::corrected_interval;

/// How features are ranked on a training fold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Filter {
    /// The one-way ANOVA F statistic (between-class over within-class variance).
    #[default]
    Anova,
    /// The largest |mean of a class − mean of the rest| over the pooled
    /// within-class standard deviation.
    MeanDiff,
}

impl Filter {
    pub fn as_str(self) -> &'static str {
        match self {
            Filter::Anova => "anova",
            Filter::MeanDiff => "mean-diff",
        }
    }
}

impl std::str::FromStr for Filter {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "anova" | "f" => Ok(Filter::Anova),
            "mean-diff" | "diff-means" => Ok(Filter::MeanDiff),
            other => Err(format!("unknown sparse filter '{other}' (anova, mean-diff)")),
        }
    }
}

/// Every feature's filter score on rows `x` (higher is more informative;
/// constant features score 0).
pub fn feature_scores(x: ArrayView2<f64>, y: &[usize], k: usize, filter: Filter) -> Vec<f64> {
    let n = y.len();
    let mut count = vec![0usize; k];
    for &c in y {
        count[c] += 1;
    }
    (0..x.ncols())
        .map(|j| {
            let col = x.column(j);
            let mut sum = vec![0.0; k];
            for (&v, &c) in col.iter().zip(y) {
                sum[c] += v;
            }
            let mean: Vec<f64> = (0..k).map(|c| if count[c] > 0 { sum[c] / count[c] as f64 } else { 0.0 }).collect();
            let grand = col.sum() / n as f64;
            let within: f64 = col.iter().zip(y).map(|(&v, &c)| (v - mean[c]).powi(2)).sum();
            let present = count.iter().filter(|&&c| c > 0).count();
            let within_var = within / (n.saturating_sub(present)).max(1) as f64;
            if within_var <= f64::EPSILON * (1.0 + grand * grand) {
                return 0.0;
            }
            match filter {
                Filter::Anova => {
                    let between: f64 = (0..k).map(|c| count[c] as f64 * (mean[c] - grand).powi(2)).sum::<f64>();
                    between / (present.saturating_sub(1)).max(1) as f64 / within_var
                }
                Filter::MeanDiff => (0..k)
                    .filter(|&c| count[c] > 0 && count[c] < n)
                    .map(|c| {
                        let rest = (sum.iter().sum::<f64>() - sum[c]) / (n - count[c]) as f64;
                        (mean[c] - rest).abs() / within_var.sqrt()
                    })
                    .fold(0.0, f64::max),
            }
        })
        .collect()
}

/// Feature indices by descending score (ties: the lower index first).
pub fn ranking(scores: &[f64]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    idx
}

/// What a k-sparse probe scored.
#[derive(Debug, Clone, PartialEq)]
pub struct SparseProbe {
    pub k: usize,
    /// Mean accuracy over every fold of every repeat.
    pub accuracy: f64,
    pub ci: Option<(f64, f64)>,
    pub fold_scores: Vec<f64>,
    /// (feature, how many folds chose it), most chosen first.
    pub features: Vec<(usize, usize)>,
    /// Folds the counts are out of (folds x repeats).
    pub fits: usize,
}

/// k-sparse logistic probes for every k in `ks`, on the plan's folds.
#[allow(clippy::too_many_arguments)]
pub fn probe_sparse(
    x: ArrayView2<f64>,
    y: &[usize],
    k_classes: usize,
    groups: &Groups,
    plan: &FoldPlan,
    ks: &[usize],
    filter: Filter,
    p: &CheckedProbe,
) -> Result<Vec<SparseProbe>> {
    if let Some(&k) = ks.iter().find(|&&k| k == 0 || k > x.ncols()) {
        return Err(AnalysisError::Params(format!("--sparse {k}: k must be between 1 and the width {}", x.ncols())));
    }
    // Per fold: (accuracy, chosen features) for every k.
    let mut per_k: Vec<(Vec<f64>, Vec<usize>)> = vec![(Vec::new(), vec![0; x.ncols()]); ks.len()];
    for fold in &plan.repeats {
        let runs = folds::each_fold(x, y, groups, fold, plan.n_folds, |d| {
            let order = ranking(&feature_scores(d.raw_train, d.y_train, k_classes, filter));
            ks.iter()
                .map(|&k| {
                    let cols = &order[..k];
                    let (raw, train, test) = (
                        d.raw_train.select(Axis(1), cols),
                        d.train.select(Axis(1), cols),
                        d.test.select(Axis(1), cols),
                    );
                    let c = logistic::choose_c(raw.view(), d.y_train, d.groups_train, k_classes, &p.logistic)?;
                    let m = logistic::fit(train.view(), d.y_train, k_classes, c, &p.logistic)?;
                    let pred = argmax_rows(m.predict_proba(test.view()).view());
                    let correct = d.test_rows.iter().zip(&pred).filter(|(i, pr)| y[**i] == **pr).count();
                    Ok((correct as f64 / d.test_rows.len().max(1) as f64, cols.to_vec()))
                })
                .collect::<Result<Vec<_>>>()
        })?;
        for (_, per_fold) in runs {
            for (i, (acc, cols)) in per_fold.into_iter().enumerate() {
                per_k[i].0.push(acc);
                for c in cols {
                    per_k[i].1[c] += 1;
                }
            }
        }
    }
    let ratio = plan.test_over_train();
    Ok(ks
        .iter()
        .zip(per_k)
        .map(|(&k, (scores, chosen))| {
            let mut features: Vec<(usize, usize)> =
                chosen.iter().enumerate().filter(|(_, n)| **n > 0).map(|(f, &n)| (f, n)).collect();
            features.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            SparseProbe {
                k,
                accuracy: scores.iter().sum::<f64>() / scores.len().max(1) as f64,
                ci: corrected_interval(&scores, ratio),
                fits: scores.len(),
                fold_scores: scores,
                features,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn anova_f_matches_scipy() {
        // scipy.stats.f_oneway([1, 2, 3], [4, 5, 7]).statistic = 10.0
        let x = array![[1.0, 5.0], [2.0, 5.0], [3.0, 5.0], [4.0, 5.0], [5.0, 5.0], [7.0, 5.0]];
        let s = feature_scores(x.view(), &[0, 0, 0, 1, 1, 1], 2, Filter::Anova);
        assert!((s[0] - 10.0).abs() < 1e-12, "{s:?}");
        assert_eq!(s[1], 0.0, "a constant feature scores 0");
        assert_eq!(ranking(&s), vec![0, 1]);
    }
}
