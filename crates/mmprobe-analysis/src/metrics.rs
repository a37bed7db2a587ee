//! Classification metrics with scikit-learn's definitions.

use ndarray::ArrayView2;

pub fn argmax_rows(p: ArrayView2<f64>) -> Vec<usize> {
    p.rows()
        .into_iter()
        .map(|r| r.iter().enumerate().fold((0, f64::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0)
        .collect()
}

pub fn accuracy(y: &[usize], pred: &[usize]) -> f64 {
    if y.is_empty() {
        return f64::NAN;
    }
    y.iter().zip(pred).filter(|(a, b)| a == b).count() as f64 / y.len() as f64
}

/// (true positives, predicted count, actual count) per class.
fn counts(y: &[usize], pred: &[usize], k: usize) -> Vec<(usize, usize, usize)> {
    let mut c = vec![(0, 0, 0); k];
    for (&t, &p) in y.iter().zip(pred) {
        c[t].2 += 1;
        if p < k {
            c[p].1 += 1;
        }
        if t == p {
            c[t].0 += 1;
        }
    }
    c
}

/// Mean per-class recall over the classes present in `y`.
pub fn balanced_accuracy(y: &[usize], pred: &[usize], k: usize) -> f64 {
    let recalls: Vec<f64> =
        counts(y, pred, k).into_iter().filter(|c| c.2 > 0).map(|(tp, _, n)| tp as f64 / n as f64).collect();
    recalls.iter().sum::<f64>() / recalls.len().max(1) as f64
}

/// Unweighted mean F1 over the classes present in `y` or predicted (F1 = 0 when undefined).
pub fn macro_f1(y: &[usize], pred: &[usize], k: usize) -> f64 {
    let f1: Vec<f64> = counts(y, pred, k)
        .into_iter()
        .filter(|c| c.1 > 0 || c.2 > 0)
        .map(|(tp, np, na)| if tp == 0 { 0.0 } else { 2.0 * tp as f64 / (np + na) as f64 })
        .collect();
    f1.iter().sum::<f64>() / f1.len().max(1) as f64
}

/// Area under the ROC curve of scores for a binary truth, ties averaged
/// (the Mann-Whitney statistic). NaN when one side is empty.
pub fn auroc_binary(truth: &[bool], score: &[f64]) -> f64 {
    let n_pos = truth.iter().filter(|&&t| t).count();
    let n_neg = truth.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return f64::NAN;
    }
    let mut idx: Vec<usize> = (0..score.len()).collect();
    idx.sort_by(|&a, &b| score[a].total_cmp(&score[b]));
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && score[idx[j + 1]] == score[idx[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += (i..=j).filter(|&t| truth[idx[t]]).count() as f64 * avg_rank;
        i = j + 1;
    }
    (rank_sum - (n_pos * (n_pos + 1)) as f64 / 2.0) / (n_pos as f64 * n_neg as f64)
}

/// Binary: AUROC of P(class 1). K > 2: one-vs-rest, averaged over classes.
pub fn auroc(y: &[usize], proba: ArrayView2<f64>) -> f64 {
    let k = proba.ncols();
    if k == 2 {
        let truth: Vec<bool> = y.iter().map(|&c| c == 1).collect();
        return auroc_binary(&truth, &proba.column(1).to_vec());
    }
    let per: Vec<f64> = (0..k)
        .map(|c| auroc_binary(&y.iter().map(|&t| t == c).collect::<Vec<_>>(), &proba.column(c).to_vec()))
        .filter(|a| a.is_finite())
        .collect();
    per.iter().sum::<f64>() / per.len().max(1) as f64
}

/// R² of predictions (1 - SS_res / SS_tot).
pub fn r2(y: &[f64], pred: &[f64]) -> f64 {
    let mean = y.iter().sum::<f64>() / y.len() as f64;
    let ss_tot: f64 = y.iter().map(|v| (v - mean).powi(2)).sum();
    let ss_res: f64 = y.iter().zip(pred).map(|(a, b)| (a - b).powi(2)).sum();
    1.0 - ss_res / ss_tot
}

pub fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma).powi(2);
        sbb += (y - mb).powi(2);
    }
    sab / (saa * sbb).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        let y = [0, 0, 1, 1, 2, 2];
        let p = [0, 1, 1, 1, 2, 0];
        assert!((accuracy(&y, &p) - 4.0 / 6.0).abs() < 1e-12);
        assert!((balanced_accuracy(&y, &p, 3) - (0.5 + 1.0 + 0.5) / 3.0).abs() < 1e-12);
        // F1: class0 tp1 pred2 act2 -> .5; class1 tp2 pred3 act2 -> .8; class2 tp1 pred1 act2 -> 2/3
        assert!((macro_f1(&y, &p, 3) - (0.5 + 0.8 + 2.0 / 3.0) / 3.0).abs() < 1e-12);
        let truth = [false, false, true, true];
        assert_eq!(auroc_binary(&truth, &[0.1, 0.4, 0.35, 0.8]), 0.75);
        assert_eq!(auroc_binary(&truth, &[0.5, 0.5, 0.5, 0.5]), 0.5);
    }
}
