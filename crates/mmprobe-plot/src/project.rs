//! 2-D views of activations: PCA (subspace iteration, no d x d matrix) and
//! LDA (Fisher discriminants with the shrunk within-class covariance).

use mmprobe_analysis::linalg::{eigh, mean_rows, shrunk_within_covariance, solve_spd};
use mmprobe_analysis::rng::Rng;
use ndarray::{Array1, Array2, ArrayView2, Axis, s};

use crate::error::Result;

fn orthonormalise(v: &mut Array2<f64>) {
    for j in 0..v.ncols() {
        for i in 0..j {
            let p = v.column(i).dot(&v.column(j));
            let ci = v.column(i).to_owned();
            let mut cj = v.column_mut(j);
            cj.scaled_add(-p, &ci);
        }
        let n = v.column(j).dot(&v.column(j)).sqrt().max(1e-300);
        v.column_mut(j).mapv_inplace(|x| x / n);
    }
}

/// Top-`k` principal axes [d, k] of centred rows, by subspace iteration.
pub fn pca_axes(xc: ArrayView2<f64>, k: usize, seed: u64) -> Array2<f64> {
    let d = xc.ncols();
    let mut rng = Rng::new(seed);
    let mut v = Array2::from_shape_fn((d, k), |_| rng.below(2001) as f64 / 1000.0 - 1.0);
    orthonormalise(&mut v);
    for _ in 0..30 {
        v = xc.t().dot(&xc.dot(&v));
        orthonormalise(&mut v);
    }
    v
}

/// Rows projected on the top two principal components.
pub fn pca2(x: ArrayView2<f64>) -> Array2<f64> {
    let xc = &x - &mean_rows(x);
    let axes = pca_axes(xc.view(), 2, 7);
    xc.dot(&axes)
}

/// Rows projected on the top two Fisher discriminants (K = 2 has one: its
/// second axis is the first principal component orthogonal to it).
pub fn lda2(x: ArrayView2<f64>, y: &[usize], k: usize) -> Result<Array2<f64>> {
    let (n, d) = x.dim();
    let (sw, _) = shrunk_within_covariance(x, y, k);
    let mu = mean_rows(x);
    // Columns sqrt(n_c / n) (mu_c - mu), and S_W^-1 times them.
    let mut m = Array2::<f64>::zeros((d, k));
    for c in 0..k {
        let idx: Vec<usize> = (0..n).filter(|&i| y[i] == c).collect();
        if idx.is_empty() {
            continue;
        }
        let w = (idx.len() as f64 / n as f64).sqrt();
        m.column_mut(c).assign(&((mean_rows(x.select(Axis(0), &idx).view()) - &mu) * w));
    }
    let mut a = Array2::<f64>::zeros((d, k));
    for c in 0..k {
        a.column_mut(c).assign(&solve_spd(&sw, m.column(c))?);
    }
    let (vals, vecs) = eigh(&m.t().dot(&a))?;
    let top: Vec<usize> = (0..k).rev().take(2).collect();
    let mut axes = a.dot(&vecs.select(Axis(1), &top));
    if k == 2 || vals[top[1]] <= vals[top[0]] * 1e-9 {
        // One discriminant: pair it with the leading PC orthogonal to it.
        let first: Array1<f64> = axes.column(0).to_owned();
        let xc = &x - &mu;
        let pc = pca_axes(xc.view(), 2, 7);
        let mut v = Array2::zeros((d, 2));
        v.column_mut(0).assign(&first);
        v.column_mut(1).assign(&pc.column(0));
        orthonormalise(&mut v);
        if v.column(1).iter().all(|x| x.is_finite()) {
            axes = v;
        }
    } else {
        orthonormalise(&mut axes);
    }
    Ok((&x - &mu).dot(&axes.slice(s![.., ..2])))
}
