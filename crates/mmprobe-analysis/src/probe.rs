//! Cross-validated probes with honest statistics (METHODS in docs/): repeated
//! stratified k-fold over *groups* (the rows of one sample never sit on both
//! sides of a split), the corrected repeated-CV interval (Nadeau & Bengio
//! 2003) or, for comparison, a group bootstrap of the out-of-fold
//! predictions, a permutation test of group labels (Ojala & Garriga 2010) and
//! a control task (Hewitt & Liang 2019), all on the same folds.

use ndarray::{Array2, ArrayView2, Axis};
use rayon::prelude::*;

use crate::error::{AnalysisError, Result};
use crate::folds::{self, Groups};
use crate::logistic::{self, LogisticParams};
use crate::metrics::{argmax_rows, auroc, balanced_accuracy, macro_f1, pearson, r2};
use crate::models::{Classifier, ModelChoice, Regressor};
use crate::ridge::RidgeParams;
use crate::rng::Rng;
use crate::scale::Standardizer;
use crate::stats::{corrected_interval, percentile};

/// How the 95% interval of a probe's score is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Interval {
    /// Corrected repeated cross-validation (Nadeau & Bengio 2003): the default.
    #[default]
    Corrected,
    /// Groups resampled from the first repeat's out-of-fold predictions:
    /// ignores training variance, too narrow under the null (kept for comparison).
    Bootstrap,
}

impl Interval {
    pub fn as_str(self) -> &'static str {
        match self {
            Interval::Corrected => "corrected-repeated-cv",
            Interval::Bootstrap => "oof-bootstrap",
        }
    }
}

impl std::str::FromStr for Interval {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "corrected" | "corrected-repeated-cv" => Ok(Interval::Corrected),
            "bootstrap" | "oof-bootstrap" => Ok(Interval::Bootstrap),
            other => Err(format!("unknown interval '{other}' (corrected, bootstrap)")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ProbeParams {
    pub folds: usize,
    /// Repeats of the k-fold split, each with its own seeded shuffle.
    pub repeats: usize,
    pub seed: u64,
    pub interval: Interval,
    /// Bootstrap resamples for `Interval::Bootstrap`.
    pub bootstrap: usize,
    /// Label permutations for the p-value (0: none).
    pub permutations: usize,
    /// Which probe: the linear ones (default) or a non-linear baseline.
    pub model: ModelChoice,
    pub logistic: LogisticParams,
    pub ridge: RidgeParams,
}

impl Default for ProbeParams {
    fn default() -> Self {
        ProbeParams {
            folds: 5,
            repeats: 5,
            seed: 0,
            interval: Interval::Corrected,
            bootstrap: 1000,
            permutations: 0,
            model: ModelChoice::default(),
            logistic: LogisticParams::default(),
            ridge: RidgeParams::default(),
        }
    }
}

/// Validated probe parameters.
#[derive(Debug, Clone)]
pub struct CheckedProbe {
    pub folds: usize,
    pub repeats: usize,
    pub seed: u64,
    pub interval: Interval,
    pub bootstrap: usize,
    pub permutations: usize,
    pub model: ModelChoice,
    pub logistic: crate::logistic::CheckedLogistic,
    pub ridge: crate::ridge::CheckedRidge,
}

impl ProbeParams {
    pub fn check(self) -> Result<CheckedProbe> {
        let bad = |m: String| Err(AnalysisError::Params(m));
        if self.folds < 2 {
            return bad(format!("--folds must be at least 2, got {}", self.folds));
        }
        if self.repeats == 0 {
            return bad("--repeats must be at least 1".into());
        }
        if self.interval == Interval::Corrected && self.folds * self.repeats < 3 {
            return bad("the corrected interval needs at least 3 fold scores (--folds x --repeats)".into());
        }
        if self.interval == Interval::Bootstrap && self.bootstrap == 1 {
            return bad("--bootstrap 1 gives no interval: use 0 (none) or many resamples".into());
        }
        self.model.check()?;
        let mut logistic = self.logistic;
        logistic.seed = self.seed;
        let mut ridge = self.ridge;
        ridge.seed = self.seed;
        Ok(CheckedProbe {
            folds: self.folds,
            repeats: self.repeats,
            seed: self.seed,
            interval: self.interval,
            bootstrap: self.bootstrap,
            permutations: self.permutations,
            model: self.model,
            logistic: logistic.check()?,
            ridge: ridge.check()?,
        })
    }
}

impl CheckedProbe {
    /// The probe for class concepts.
    pub fn classifier(&self) -> &dyn Classifier {
        self.model.classifier(&self.logistic)
    }

    /// The probe for numeric concepts (an error for the class-only models).
    pub fn regressor(&self) -> Result<&dyn Regressor> {
        self.model.regressor(&self.ridge)
    }

    /// The seed of repeat `r`: repeat 0 uses the probe's seed itself.
    fn repeat_seed(&self, r: usize) -> u64 {
        if r == 0 { self.seed } else { Rng::new(self.seed).fork(0x5E9 + r as u64).next_u64() }
    }

    /// The same probe with no interval, permutations or repeats (quick refits).
    pub fn quick(&self) -> CheckedProbe {
        CheckedProbe { repeats: 1, bootstrap: 0, permutations: 0, ..self.clone() }
    }
}

/// The folds of every repeat (row -> fold, 0..n_folds).
#[derive(Debug, Clone)]
pub struct FoldPlan {
    pub n_folds: usize,
    pub repeats: Vec<Vec<usize>>,
}

impl FoldPlan {
    /// Stratified group folds for classes, `p.repeats` times.
    pub fn classes(y: &[usize], groups: &Groups, k: usize, p: &CheckedProbe) -> Result<FoldPlan> {
        let repeats = (0..p.repeats)
            .map(|r| folds::stratified(y, groups, k, p.folds, p.repeat_seed(r)))
            .collect::<Result<_>>()?;
        Ok(FoldPlan { n_folds: p.folds, repeats })
    }

    /// Shuffled group folds for a numeric target, `p.repeats` times.
    pub fn numeric(groups: &Groups, p: &CheckedProbe) -> Result<FoldPlan> {
        let repeats =
            (0..p.repeats).map(|r| folds::shuffled(groups, p.folds, p.repeat_seed(r))).collect::<Result<_>>()?;
        Ok(FoldPlan { n_folds: p.folds, repeats })
    }

    /// One given split (e.g. a published one), checked to keep groups whole.
    pub fn given(fold: Vec<usize>, n_folds: usize, groups: &Groups) -> Result<FoldPlan> {
        if groups.constant(&fold).is_none() {
            return Err(AnalysisError::Input(
                "the given folds put rows of one group in different folds: a group must share a fold".into(),
            ));
        }
        if let Some(empty) = Self::first_empty(&fold, n_folds) {
            return Err(AnalysisError::TooSmall(format!(
                "given fold {} of {n_folds} holds none of these {} rows: a fold would test or train on nothing",
                empty + 1,
                fold.len()
            )));
        }
        Ok(FoldPlan { n_folds, repeats: vec![fold] })
    }

    /// The first of folds 0..n_folds that no row is in: such a fold would score
    /// nothing, and with two folds the other would train on nothing.
    pub fn first_empty(fold: &[usize], n_folds: usize) -> Option<usize> {
        let mut seen = vec![false; n_folds];
        for &f in fold {
            if let Some(s) = seen.get_mut(f) {
                *s = true;
            }
        }
        seen.iter().position(|s| !s)
    }

    /// n_test / n_train of one fold, averaged over every fold of every repeat.
    pub fn test_over_train(&self) -> f64 {
        let mut ratios = Vec::new();
        for fold in &self.repeats {
            for f in 0..self.n_folds {
                let test = fold.iter().filter(|&&v| v == f).count() as f64;
                ratios.push(test / (fold.len() as f64 - test).max(1.0));
            }
        }
        ratios.iter().sum::<f64>() / ratios.len().max(1) as f64
    }
}

/// What a classification probe scored.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassProbe {
    pub n: usize,
    pub n_groups: usize,
    pub n_classes: usize,
    /// Mean accuracy over every fold of every repeat.
    pub accuracy: f64,
    pub ci: Option<(f64, f64)>,
    pub balanced_accuracy: f64,
    pub macro_f1: f64,
    pub auroc: f64,
    pub control_accuracy: Option<f64>,
    pub p_value: Option<f64>,
    /// The C each outer fold used (every repeat).
    pub c: Vec<f64>,
    /// Accuracy of every fold of every repeat.
    pub fold_scores: Vec<f64>,
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
    pub n_groups: usize,
    /// Mean R² over every fold of every repeat.
    pub r2: f64,
    pub r2_ci: Option<(f64, f64)>,
    pub pearson: f64,
    pub p_value: Option<f64>,
    pub alpha: Vec<f64>,
    pub fold_scores: Vec<f64>,
}

/// A percentile interval of `stat` over `b` resamples of whole groups.
fn group_bootstrap(groups: &Groups, b: usize, seed: u64, stat: impl Fn(&[usize]) -> f64 + Sync) -> Option<(f64, f64)> {
    if b == 0 {
        return None;
    }
    let members = groups.members();
    let root = Rng::new(seed ^ 0xB007);
    let mut stats: Vec<f64> = (0..b)
        .into_par_iter()
        .map(|i| {
            let mut rng = root.fork(i as u64);
            let mut idx = Vec::with_capacity(groups.len());
            for _ in 0..groups.count {
                idx.extend_from_slice(&members[rng.below(groups.count)]);
            }
            stat(&idx)
        })
        .filter(|v| v.is_finite())
        .collect();
    stats.sort_by(f64::total_cmp);
    Some((percentile(&stats, 2.5), percentile(&stats, 97.5)))
}

/// Ojala & Garriga's p-value: refit on `n` seeded permutations of the group
/// labels (every row of a group keeps its group's label);
/// p = (1 + #{permuted score >= observed}) / (1 + n).
fn permutation_p<T: Copy + PartialEq>(
    y: &[T],
    groups: &Groups,
    n: usize,
    seed: u64,
    observed: f64,
    score: impl Fn(&[T]) -> Result<f64>,
) -> Result<Option<f64>> {
    if n == 0 {
        return Ok(None);
    }
    let per_group = groups.constant(y).ok_or_else(|| {
        AnalysisError::Input(
            "the permutation test permutes group labels, but a group's rows carry different labels".into(),
        )
    })?;
    let root = Rng::new(seed ^ 0x9E27);
    let mut beats = 0;
    for i in 0..n {
        let mut gp = per_group.clone();
        root.fork(i as u64).shuffle(&mut gp);
        let yp: Vec<T> = groups.id.iter().map(|&g| gp[g]).collect();
        beats += usize::from(score(&yp)? >= observed);
    }
    Ok(Some((1 + beats) as f64 / (1 + n) as f64))
}

/// Out-of-fold class scores [n, k] of one split (probabilities for the
/// logistic probe), and the hyperparameter of each fold. With `fixed`, each
/// fold reuses the given one (control and permutation runs).
#[allow(clippy::too_many_arguments)]
pub fn cross_val_proba(
    x: ArrayView2<f64>,
    y: &[usize],
    groups: &Groups,
    k: usize,
    fold: &[usize],
    n_folds: usize,
    model: &dyn Classifier,
    fixed: Option<&[f64]>,
) -> Result<(Array2<f64>, Vec<f64>)> {
    let per_fold = folds::each_fold(x, y, groups, fold, n_folds, |d| model.fit_score(&d, k, fixed.map(|f| f[d.fold])))?;
    let mut oof = Array2::zeros((y.len(), k));
    let mut regs = Vec::with_capacity(n_folds);
    for (test, (scores, reg)) in per_fold {
        for (r, &i) in test.iter().enumerate() {
            oof.row_mut(i).assign(&scores.row(r));
        }
        regs.push(reg);
    }
    Ok((oof, regs))
}

/// Accuracy of each fold of one split, from its out-of-fold predictions.
fn fold_accuracies(y: &[usize], pred: &[usize], fold: &[usize], n_folds: usize) -> Vec<f64> {
    (0..n_folds)
        .map(|f| {
            let rows: Vec<usize> = (0..y.len()).filter(|&i| fold[i] == f).collect();
            rows.iter().filter(|&&i| y[i] == pred[i]).count() as f64 / rows.len().max(1) as f64
        })
        .collect()
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

/// A logistic probe of classes `y` (0..k) on rows `x` grouped by `groups`,
/// with `types` for the control task.
pub fn probe_classes(
    x: ArrayView2<f64>,
    y: &[usize],
    k: usize,
    groups: &Groups,
    types: Option<&[String]>,
    p: &CheckedProbe,
) -> Result<ClassProbe> {
    let plan = FoldPlan::classes(y, groups, k, p)?;
    probe_classes_on_folds(x, y, k, groups, types, &plan, p)
}

/// As [`probe_classes`], on given folds (e.g. a split a paper fixed).
pub fn probe_classes_on_folds(
    x: ArrayView2<f64>,
    y: &[usize],
    k: usize,
    groups: &Groups,
    types: Option<&[String]>,
    plan: &FoldPlan,
    p: &CheckedProbe,
) -> Result<ClassProbe> {
    let nf = plan.n_folds;
    let model = p.classifier();
    let mut fold_scores = Vec::new();
    let mut cs = Vec::new();
    let (mut bal, mut f1, mut roc) = (0.0, 0.0, 0.0);
    let mut first: Option<(Vec<usize>, Vec<f64>)> = None;
    for fold in &plan.repeats {
        let (oof, c) = cross_val_proba(x, y, groups, k, fold, nf, model, None)?;
        let pred = argmax_rows(oof.view());
        fold_scores.extend(fold_accuracies(y, &pred, fold, nf));
        bal += balanced_accuracy(y, &pred, k);
        f1 += macro_f1(y, &pred, k);
        roc += if model.probabilities() { auroc(y, oof.view()) } else { f64::NAN };
        cs.extend_from_slice(&c);
        first.get_or_insert((pred, c));
    }
    let r = plan.repeats.len() as f64;
    let (pred0, c0) = first.expect("at least one repeat");
    let acc = fold_scores.iter().sum::<f64>() / fold_scores.len() as f64;
    let ci = match p.interval {
        Interval::Corrected => corrected_interval(&fold_scores, plan.test_over_train()),
        Interval::Bootstrap => group_bootstrap(groups, p.bootstrap, p.seed, |idx| {
            idx.iter().filter(|&&i| y[i] == pred0[i]).count() as f64 / idx.len() as f64
        }),
    };
    // The control task runs on the same folds and C as the real one, every repeat.
    let control_accuracy = match types {
        Some(t) => {
            let yc = control_labels(y, t, p.seed);
            let mut scores = Vec::new();
            for (i, fold) in plan.repeats.iter().enumerate() {
                let c = &cs[i * nf..(i + 1) * nf];
                let (o, _) = cross_val_proba(x, &yc, groups, k, fold, nf, model, Some(c))?;
                scores.extend(fold_accuracies(&yc, &argmax_rows(o.view()), fold, nf));
            }
            Some(scores.iter().sum::<f64>() / scores.len() as f64)
        }
        None => None,
    };
    // The permutation test uses the first repeat's folds and C: a fixed statistic.
    let fold0 = &plan.repeats[0];
    let observed = fold_accuracies(y, &pred0, fold0, nf).iter().sum::<f64>() / nf as f64;
    let p_value = permutation_p(y, groups, p.permutations, p.seed, observed, |yp| {
        let (o, _) = cross_val_proba(x, yp, groups, k, fold0, nf, model, Some(&c0))?;
        Ok(fold_accuracies(yp, &argmax_rows(o.view()), fold0, nf).iter().sum::<f64>() / nf as f64)
    })?;
    Ok(ClassProbe {
        n: y.len(),
        n_groups: groups.count,
        n_classes: k,
        accuracy: acc,
        ci,
        balanced_accuracy: bal / r,
        macro_f1: f1 / r,
        auroc: roc / r,
        control_accuracy,
        p_value,
        c: cs,
        fold_scores,
    })
}

/// Cross-validated accuracy of a fresh probe after LEACE, with the eraser fit
/// on each training fold only (fitting it on all rows lets the probe exploit
/// the fold-to-fold leftovers and score *below* chance). Folds keep groups whole.
pub fn erased_accuracy(x: ArrayView2<f64>, y: &[usize], k: usize, groups: &Groups, p: &CheckedProbe) -> Result<f64> {
    let fold = folds::stratified(y, groups, k, p.folds, p.seed)?;
    let correct: Vec<usize> = (0..p.folds)
        .into_par_iter()
        .map(|f| {
            let (train, test) = folds::split(&fold, f);
            let xt = x.select(Axis(0), &train);
            let yt: Vec<usize> = train.iter().map(|&i| y[i]).collect();
            let gt = groups.subset(&train);
            let eraser = crate::leace::Leace::fit(xt.view(), &yt, k)?;
            let (et, ev) = (eraser.apply(xt.view())?, eraser.apply(x.select(Axis(0), &test).view())?);
            let s = Standardizer::fit(et.view());
            let c = logistic::choose_c(et.view(), &yt, &gt, k, &p.logistic)?;
            let m = logistic::fit(s.transform(et.view()).view(), &yt, k, c, &p.logistic)?;
            let pred = argmax_rows(m.predict_proba(s.transform(ev.view()).view()).view());
            Ok(test.iter().zip(pred).filter(|(i, pr)| y[**i] == *pr).count())
        })
        .collect::<Result<_>>()?;
    Ok(correct.iter().sum::<usize>() as f64 / y.len() as f64)
}

/// Out-of-fold predictions of one split, and the hyperparameter of each fold.
fn cross_val_predict(
    x: ArrayView2<f64>,
    y: &[f64],
    groups: &Groups,
    fold: &[usize],
    n_folds: usize,
    model: &dyn Regressor,
    fixed: Option<&[f64]>,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let per_fold = folds::each_fold(x, y, groups, fold, n_folds, |d| model.fit_predict(&d, fixed.map(|f| f[d.fold])))?;
    let mut oof = vec![0.0; y.len()];
    let mut regs = Vec::new();
    for (test, (pred, reg)) in per_fold {
        for (i, v) in test.into_iter().zip(pred) {
            oof[i] = v;
        }
        regs.push(reg);
    }
    Ok((oof, regs))
}

/// R² of each fold of one split.
fn fold_r2(y: &[f64], pred: &[f64], fold: &[usize], n_folds: usize) -> Vec<f64> {
    (0..n_folds)
        .map(|f| {
            let rows: Vec<usize> = (0..y.len()).filter(|&i| fold[i] == f).collect();
            let a: Vec<f64> = rows.iter().map(|&i| y[i]).collect();
            let b: Vec<f64> = rows.iter().map(|&i| pred[i]).collect();
            r2(&a, &b)
        })
        .collect()
}

/// A ridge probe of a numeric concept, rows grouped by `groups`.
pub fn probe_numeric(x: ArrayView2<f64>, y: &[f64], groups: &Groups, p: &CheckedProbe) -> Result<RegressionProbe> {
    probe_numeric_on_folds(x, y, groups, &FoldPlan::numeric(groups, p)?, p)
}

/// As [`probe_numeric`], on given folds.
pub fn probe_numeric_on_folds(
    x: ArrayView2<f64>,
    y: &[f64],
    groups: &Groups,
    plan: &FoldPlan,
    p: &CheckedProbe,
) -> Result<RegressionProbe> {
    let nf = plan.n_folds;
    let model = p.regressor()?;
    let mut fold_scores = Vec::new();
    let mut alphas = Vec::new();
    let mut pr = 0.0;
    let mut first: Option<(Vec<f64>, Vec<f64>)> = None;
    for fold in &plan.repeats {
        let (oof, a) = cross_val_predict(x, y, groups, fold, nf, model, None)?;
        fold_scores.extend(fold_r2(y, &oof, fold, nf));
        pr += pearson(y, &oof);
        alphas.extend_from_slice(&a);
        first.get_or_insert((oof, a));
    }
    let (oof0, a0) = first.expect("at least one repeat");
    let score = fold_scores.iter().sum::<f64>() / fold_scores.len() as f64;
    let r2_ci = match p.interval {
        Interval::Corrected => corrected_interval(&fold_scores, plan.test_over_train()),
        Interval::Bootstrap => group_bootstrap(groups, p.bootstrap, p.seed, |idx| {
            let a: Vec<f64> = idx.iter().map(|&i| y[i]).collect();
            let b: Vec<f64> = idx.iter().map(|&i| oof0[i]).collect();
            r2(&a, &b)
        }),
    };
    let fold0 = &plan.repeats[0];
    let observed = fold_r2(y, &oof0, fold0, nf).iter().sum::<f64>() / nf as f64;
    let p_value = permutation_p(y, groups, p.permutations, p.seed, observed, |yp| {
        let (o, _) = cross_val_predict(x, yp, groups, fold0, nf, model, Some(&a0))?;
        Ok(fold_r2(yp, &o, fold0, nf).iter().sum::<f64>() / nf as f64)
    })?;
    Ok(RegressionProbe {
        n: y.len(),
        n_groups: groups.count,
        r2: score,
        r2_ci,
        pearson: pr / plan.repeats.len() as f64,
        p_value,
        alpha: alphas,
        fold_scores,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_split_with_an_empty_fold_is_too_small() {
        assert_eq!(FoldPlan::first_empty(&[0, 1, 1, 0], 2), None);
        assert_eq!(FoldPlan::first_empty(&[0, 0, 2], 3), Some(1));
        assert_eq!(FoldPlan::first_empty(&[], 2), Some(0));
        let e = FoldPlan::given(vec![0, 0, 0], 2, &Groups::singletons(3)).err().unwrap();
        assert!(matches!(&e, AnalysisError::TooSmall(m) if m.starts_with("given fold 2 of 2")), "{e}");
        assert!(FoldPlan::given(vec![0, 1, 0], 2, &Groups::singletons(3)).is_ok());
    }
}
