//! Cross-validated probes with honest statistics: pooled out-of-fold
//! predictions, a bootstrap interval, a permutation test (Ojala & Garriga
//! 2010) and a control task (Hewitt & Liang 2019), all on the same folds.

use ndarray::{Array2, ArrayView2, Axis};
use rayon::prelude::*;

use crate::error::Result;
use crate::folds;
use crate::logistic::{self, CheckedLogistic, LogisticParams};
use crate::metrics::{accuracy, argmax_rows, auroc, balanced_accuracy, macro_f1, pearson, r2};
use crate::ridge::{self, CheckedRidge, RidgeParams};
use crate::rng::Rng;
use crate::scale::Standardizer;

#[derive(Debug, Clone)]
pub struct ProbeParams {
    pub folds: usize,
    pub seed: u64,
    /// Bootstrap resamples for the 95% interval (0: none).
    pub bootstrap: usize,
    /// Label permutations for the p-value (0: none).
    pub permutations: usize,
    pub logistic: LogisticParams,
    pub ridge: RidgeParams,
}

impl Default for ProbeParams {
    fn default() -> Self {
        ProbeParams {
            folds: 5,
            seed: 0,
            bootstrap: 1000,
            permutations: 0,
            logistic: LogisticParams::default(),
            ridge: RidgeParams::default(),
        }
    }
}

/// Validated probe parameters.
#[derive(Debug, Clone)]
pub struct CheckedProbe {
    pub folds: usize,
    pub seed: u64,
    pub bootstrap: usize,
    pub permutations: usize,
    pub logistic: CheckedLogistic,
    pub ridge: CheckedRidge,
}

impl ProbeParams {
    pub fn check(self) -> Result<CheckedProbe> {
        if self.folds < 2 {
            return Err(crate::AnalysisError::Params(format!("--folds must be at least 2, got {}", self.folds)));
        }
        let mut logistic = self.logistic;
        logistic.seed = self.seed;
        let mut ridge = self.ridge;
        ridge.seed = self.seed;
        Ok(CheckedProbe {
            folds: self.folds,
            seed: self.seed,
            bootstrap: self.bootstrap,
            permutations: self.permutations,
            logistic: logistic.check()?,
            ridge: ridge.check()?,
        })
    }
}

/// What a classification probe scored.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassProbe {
    pub n: usize,
    pub n_classes: usize,
    pub accuracy: f64,
    pub ci: Option<(f64, f64)>,
    pub balanced_accuracy: f64,
    pub macro_f1: f64,
    pub auroc: f64,
    pub control_accuracy: Option<f64>,
    pub p_value: Option<f64>,
    /// The C each outer fold used.
    pub c: Vec<f64>,
}

impl ClassProbe {
    pub fn selectivity(&self) -> Option<f64> {
        self.control_accuracy.map(|c| self.accuracy - c)
    }
}

/// What a ridge probe scored (numeric concepts).
#[derive(Debug, Clone, PartialEq)]
pub struct RegressionProbe {
    pub n: usize,
    pub r2: f64,
    pub r2_ci: Option<(f64, f64)>,
    pub pearson: f64,
    pub p_value: Option<f64>,
    pub alpha: Vec<f64>,
}

/// numpy's default percentile (linear interpolation between order statistics).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q / 100.0 * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

fn bootstrap_ci(n: usize, b: usize, seed: u64, stat: impl Fn(&[usize]) -> f64 + Sync) -> Option<(f64, f64)> {
    if b == 0 {
        return None;
    }
    let root = Rng::new(seed ^ 0xB007);
    let mut stats: Vec<f64> = (0..b)
        .into_par_iter()
        .map(|i| {
            let mut rng = root.fork(i as u64);
            let idx: Vec<usize> = (0..n).map(|_| rng.below(n)).collect();
            stat(&idx)
        })
        .filter(|v| v.is_finite())
        .collect();
    stats.sort_by(f64::total_cmp);
    Some((percentile(&stats, 2.5), percentile(&stats, 97.5)))
}

/// One fit per fold, in parallel: `choose` picks the fold's regularisation
/// from its (raw) training rows unless `fixed` gives it, then `fit_predict`
/// fits on the standardised training rows and predicts the standardised test
/// rows. Returns (test rows, prediction, regularisation) per fold.
fn per_fold<T: Copy + Sync, P: Send>(
    x: ArrayView2<f64>,
    y: &[T],
    fold: &[usize],
    n_folds: usize,
    fixed: Option<&[f64]>,
    choose: impl Fn(ArrayView2<f64>, &[T]) -> Result<f64> + Sync,
    fit_predict: impl Fn(ArrayView2<f64>, &[T], ArrayView2<f64>, f64) -> Result<P> + Sync,
) -> Result<Vec<(Vec<usize>, P, f64)>> {
    let runs = folds::each_fold(x, y, fold, n_folds, |d| {
        let reg = match fixed {
            Some(r) => r[d.fold],
            None => choose(d.raw_train, d.y_train)?,
        };
        Ok((fit_predict(d.train, d.y_train, d.test, reg)?, reg))
    })?;
    Ok(runs.into_iter().map(|(test, (pred, reg))| (test, pred, reg)).collect())
}

/// Ojala & Garriga's p-value: refit on `n` seeded permutations of `y`;
/// p = (1 + #{permuted score >= observed}) / (1 + n).
fn permutation_p<T: Clone>(
    y: &[T],
    n: usize,
    seed: u64,
    observed: f64,
    score: impl Fn(&[T]) -> Result<f64>,
) -> Result<Option<f64>> {
    if n == 0 {
        return Ok(None);
    }
    let root = Rng::new(seed ^ 0x9E27);
    let mut beats = 0;
    for i in 0..n {
        let mut yp = y.to_vec();
        root.fork(i as u64).shuffle(&mut yp);
        beats += usize::from(score(&yp)? >= observed);
    }
    Ok(Some((1 + beats) as f64 / (1 + n) as f64))
}

/// Out-of-fold class probabilities [n, k], and the C of each fold. With
/// `fixed_c`, each fold reuses the given C (control and permutation runs).
pub fn cross_val_proba(
    x: ArrayView2<f64>,
    y: &[usize],
    k: usize,
    fold: &[usize],
    n_folds: usize,
    p: &CheckedLogistic,
    fixed_c: Option<&[f64]>,
) -> Result<(Array2<f64>, Vec<f64>)> {
    let per_fold = per_fold(
        x,
        y,
        fold,
        n_folds,
        fixed_c,
        |xt, yt| logistic::choose_c(xt, yt, k, p),
        |xs, yt, xv, c| Ok(logistic::fit(xs, yt, k, c, p)?.predict_proba(xv)),
    )?;
    let mut oof = Array2::zeros((y.len(), k));
    let mut cs = Vec::with_capacity(n_folds);
    for (test, proba, c) in per_fold {
        for (r, &i) in test.iter().enumerate() {
            oof.row_mut(i).assign(&proba.row(r));
        }
        cs.push(c);
    }
    Ok((oof, cs))
}

/// Control labels: every distinct type gets one label drawn from the
/// empirical distribution of the real labels.
pub fn control_labels(y: &[usize], types: &[String], seed: u64) -> Vec<usize> {
    let mut rng = Rng::new(seed ^ 0xC0DE);
    let mut distinct: Vec<&String> = types.iter().collect();
    distinct.sort();
    distinct.dedup();
    let label: std::collections::HashMap<&String, usize> =
        distinct.into_iter().map(|t| (t, y[rng.below(y.len())])).collect();
    types.iter().map(|t| label[t]).collect()
}

/// A logistic probe of classes `y` (0..k) on rows `x`, with `types` for the control task.
pub fn probe_classes(
    x: ArrayView2<f64>,
    y: &[usize],
    k: usize,
    types: Option<&[String]>,
    p: &CheckedProbe,
) -> Result<ClassProbe> {
    let fold = folds::stratified(y, k, p.folds, p.seed)?;
    probe_classes_on_folds(x, y, k, types, &fold, p)
}

/// As [`probe_classes`], on given folds (0..p.folds per row), e.g. a split a paper fixed.
pub fn probe_classes_on_folds(
    x: ArrayView2<f64>,
    y: &[usize],
    k: usize,
    types: Option<&[String]>,
    fold: &[usize],
    p: &CheckedProbe,
) -> Result<ClassProbe> {
    let fold = fold.to_vec();
    let (oof, cs) = cross_val_proba(x, y, k, &fold, p.folds, &p.logistic, None)?;
    let pred = argmax_rows(oof.view());
    let acc = accuracy(y, &pred);
    let ci = bootstrap_ci(y.len(), p.bootstrap, p.seed, |idx| {
        idx.iter().filter(|&&i| y[i] == pred[i]).count() as f64 / idx.len() as f64
    });
    let control_accuracy = match types {
        Some(t) => {
            let yc = control_labels(y, t, p.seed);
            let (o, _) = cross_val_proba(x, &yc, k, &fold, p.folds, &p.logistic, Some(&cs))?;
            Some(accuracy(&yc, &argmax_rows(o.view())))
        }
        None => None,
    };
    let p_value = permutation_p(y, p.permutations, p.seed, acc, |yp| {
        let (o, _) = cross_val_proba(x, yp, k, &fold, p.folds, &p.logistic, Some(&cs))?;
        Ok(accuracy(yp, &argmax_rows(o.view())))
    })?;
    Ok(ClassProbe {
        n: y.len(),
        n_classes: k,
        accuracy: acc,
        ci,
        balanced_accuracy: balanced_accuracy(y, &pred, k),
        macro_f1: macro_f1(y, &pred, k),
        auroc: auroc(y, oof.view()),
        control_accuracy,
        p_value,
        c: cs,
    })
}

/// Cross-validated accuracy of a fresh probe after LEACE, with the eraser fit
/// on each training fold only (fitting it on all rows lets the probe exploit
/// the fold-to-fold leftovers and score *below* chance).
pub fn erased_accuracy(x: ArrayView2<f64>, y: &[usize], k: usize, p: &CheckedProbe) -> Result<f64> {
    let fold = folds::stratified(y, k, p.folds, p.seed)?;
    let correct: Vec<usize> = (0..p.folds)
        .into_par_iter()
        .map(|f| {
            let (train, test) = folds::split(&fold, f);
            let xt = x.select(Axis(0), &train);
            let yt: Vec<usize> = train.iter().map(|&i| y[i]).collect();
            let eraser = crate::leace::Leace::fit(xt.view(), &yt, k)?;
            let (et, ev) = (eraser.apply(xt.view()), eraser.apply(x.select(Axis(0), &test).view()));
            let s = Standardizer::fit(et.view());
            let c = logistic::choose_c(et.view(), &yt, k, &p.logistic)?;
            let m = logistic::fit(s.transform(et.view()).view(), &yt, k, c, &p.logistic)?;
            let pred = argmax_rows(m.predict_proba(s.transform(ev.view()).view()).view());
            Ok(test.iter().zip(pred).filter(|(i, pr)| y[**i] == *pr).count())
        })
        .collect::<Result<_>>()?;
    Ok(correct.iter().sum::<usize>() as f64 / y.len() as f64)
}

fn cross_val_ridge(
    x: ArrayView2<f64>,
    y: &[f64],
    fold: &[usize],
    n_folds: usize,
    p: &CheckedRidge,
    fixed: Option<&[f64]>,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let per_fold = per_fold(
        x,
        y,
        fold,
        n_folds,
        fixed,
        |xt, yt| ridge::choose_alpha(xt, yt, p),
        |xs, yt, xv, alpha| Ok(ridge::fit(xs, yt, alpha)?.predict(xv).to_vec()),
    )?;
    let mut oof = vec![0.0; y.len()];
    let mut alphas = Vec::new();
    for (test, pred, a) in per_fold {
        for (i, v) in test.into_iter().zip(pred) {
            oof[i] = v;
        }
        alphas.push(a);
    }
    Ok((oof, alphas))
}

/// A ridge probe of a numeric concept.
pub fn probe_numeric(x: ArrayView2<f64>, y: &[f64], p: &CheckedProbe) -> Result<RegressionProbe> {
    let fold = folds::shuffled(y.len(), p.folds, p.seed)?;
    let (oof, alphas) = cross_val_ridge(x, y, &fold, p.folds, &p.ridge, None)?;
    let score = r2(y, &oof);
    let r2_ci = bootstrap_ci(y.len(), p.bootstrap, p.seed, |idx| {
        let a: Vec<f64> = idx.iter().map(|&i| y[i]).collect();
        let b: Vec<f64> = idx.iter().map(|&i| oof[i]).collect();
        r2(&a, &b)
    });
    let p_value = permutation_p(y, p.permutations, p.seed, score, |yp| {
        let (o, _) = cross_val_ridge(x, yp, &fold, p.folds, &p.ridge, Some(&alphas))?;
        Ok(r2(yp, &o))
    })?;
    Ok(RegressionProbe { n: y.len(), r2: score, r2_ci, pearson: pearson(y, &oof), p_value, alpha: alphas })
}
