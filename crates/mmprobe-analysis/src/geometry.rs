//! Cross-modal and class geometry: the modality gap and cone effect (Liang et
//! al. 2022), retrieval recall@k, Fisher ratio and silhouette.

use ndarray::{Array2, ArrayView2, Axis};

use crate::error::{AnalysisError, Result};
use crate::linalg::{mean_rows, shrunk_within_covariance, solve_spd};

/// Rows scaled to unit L2 norm.
pub fn l2_normalise(x: ArrayView2<f64>) -> Array2<f64> {
    let mut out = x.to_owned();
    for mut r in out.rows_mut() {
        let n = r.dot(&r).sqrt();
        if n > 0.0 {
            r /= n;
        }
    }
    out
}

/// ‖mean(normalised images) − mean(normalised texts)‖.
pub fn modality_gap(images: ArrayView2<f64>, texts: ArrayView2<f64>) -> f64 {
    let d = mean_rows(l2_normalise(images).view()) - mean_rows(l2_normalise(texts).view());
    d.dot(&d).sqrt()
}

/// Mean cosine over all distinct pairs of rows.
pub fn cone(x: ArrayView2<f64>) -> f64 {
    let n = x.nrows();
    if n < 2 {
        return f64::NAN;
    }
    let u = l2_normalise(x);
    // Σ_{i≠j} cos = ‖Σ u_i‖² − n
    let s = u.sum_axis(Axis(0));
    (s.dot(&s) - n as f64) / (n * (n - 1)) as f64
}

/// Recall@k of retrieving row i of `to` for row i of `from`, by cosine.
pub fn recall_at(from: ArrayView2<f64>, to: ArrayView2<f64>, ks: &[usize]) -> Vec<f64> {
    let sim = l2_normalise(from).dot(&l2_normalise(to).t());
    let n = sim.nrows();
    let ranks: Vec<usize> = (0..n)
        .map(|i| {
            let own = sim[[i, i]];
            // Rank = how many candidates score strictly higher than the pair.
            sim.row(i).iter().filter(|&&v| v > own).count()
        })
        .collect();
    ks.iter().map(|&k| ranks.iter().filter(|&&r| r < k).count() as f64 / n as f64).collect()
}

/// tr(S_W⁻¹ S_B), S_W shrunk as for LDA, S_B the between-class scatter (both / n).
pub fn fisher_ratio(x: ArrayView2<f64>, y: &[usize], k: usize) -> Result<f64> {
    let n = y.len() as f64;
    let (sw, _) = shrunk_within_covariance(x, y, k);
    let mu = mean_rows(x);
    let mut total = 0.0;
    for c in 0..k {
        let idx: Vec<usize> = (0..y.len()).filter(|&i| y[i] == c).collect();
        if idx.is_empty() {
            continue;
        }
        let dm = mean_rows(x.select(Axis(0), &idx).view()) - &mu;
        // tr(S_W⁻¹ n_c/n · dm dmᵀ) = n_c/n · dmᵀ S_W⁻¹ dm
        total += idx.len() as f64 / n * dm.dot(&solve_spd(&sw, dm.view())?);
    }
    Ok(total)
}

/// Mean silhouette with Euclidean distances. O(n²·d): callers subsample large sets.
pub fn silhouette(x: ArrayView2<f64>, y: &[usize], k: usize) -> Result<f64> {
    let n = x.nrows();
    let sq: Vec<f64> = x.rows().into_iter().map(|r| r.dot(&r)).collect();
    let g = x.dot(&x.t());
    let counts: Vec<usize> = (0..k).map(|c| y.iter().filter(|&&v| v == c).count()).collect();
    if counts.iter().filter(|&&c| c > 0).count() < 2 {
        return Err(AnalysisError::Input("silhouette needs at least 2 classes".into()));
    }
    let mut total = 0.0;
    for i in 0..n {
        let mut sums = vec![0.0; k];
        for j in 0..n {
            if i != j {
                sums[y[j]] += (sq[i] + sq[j] - 2.0 * g[[i, j]]).max(0.0).sqrt();
            }
        }
        let own = counts[y[i]];
        if own <= 1 {
            continue; // scikit-learn scores singletons 0
        }
        let a = sums[y[i]] / (own - 1) as f64;
        let b = (0..k)
            .filter(|&c| c != y[i] && counts[c] > 0)
            .map(|c| sums[c] / counts[c] as f64)
            .fold(f64::INFINITY, f64::min);
        total += (b - a) / a.max(b);
    }
    Ok(total / n as f64)
}
