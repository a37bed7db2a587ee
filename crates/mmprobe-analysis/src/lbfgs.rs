//! L2-regularised logistic regression (binary and multinomial) by L-BFGS,
//! written for probes: replaces linfa-logistic, which bench/probe_sweep.py
//! measured at 15.6 s (f64) and 27.7 s (f32) against scikit-learn's 17.8 s on
//! 13 layers x 768-d x 5,000 rows x 4 classes, 5-fold, 2 cores.
//!
//! The cost there is memory traffic: every product streams X (n x d). Here
//! each iteration streams it twice (X·D for the search direction, Xᵀ·G for
//! the gradient) in f32, and the line search reuses X·D (scores along the
//! line are Z + a·XD) instead of recomputing X·W at every trial step.
//!
//! Objective, as scikit-learn's with C:  Σ loss_i + ‖W‖² / (2C), intercept
//! unpenalised. Binary: one weight vector, loss log(1 + e^z) − y·z.
//! Multinomial: loss logsumexp(z) − z_y.

use std::collections::VecDeque;

use ndarray::{Array1, Array2, ArrayView2, Axis};

/// Result of a fit: weights [d, m] and intercepts [m] (m = 1 for binary).
pub struct Fitted {
    pub w: Array2<f64>,
    pub b: Array1<f64>,
    pub iterations: usize,
    pub converged: bool,
}

struct Problem<'a, 'b> {
    x: ArrayView2<'a, f32>,
    y: &'b [usize],
    /// Columns of the score matrix: 1 (binary) or K.
    m: usize,
    inv_c: f64,
}

impl Problem<'_, '_> {
    /// Loss and dLoss/dZ for scores Z [n, m].
    fn loss_and_dz(&self, z: &Array2<f64>) -> (f64, Array2<f64>) {
        let mut dz = Array2::zeros(z.raw_dim());
        let mut loss = 0.0;
        if self.m == 1 {
            for (i, &yi) in self.y.iter().enumerate() {
                let zi = z[[i, 0]];
                // log(1 + e^z), stably
                loss += if zi > 0.0 { zi + (-zi).exp().ln_1p() } else { zi.exp().ln_1p() } - yi as f64 * zi;
                dz[[i, 0]] = 1.0 / (1.0 + (-zi).exp()) - yi as f64;
            }
        } else {
            for (i, &yi) in self.y.iter().enumerate() {
                let row = z.row(i);
                let mx = row.fold(f64::NEG_INFINITY, |a, &b| a.max(b));
                let sum: f64 = row.iter().map(|v| (v - mx).exp()).sum();
                let lse = mx + sum.ln();
                loss += lse - row[yi];
                for k in 0..self.m {
                    dz[[i, k]] = (row[k] - lse).exp() - if k == yi { 1.0 } else { 0.0 };
                }
            }
        }
        (loss, dz)
    }

    /// X·A for A [d, m], in f32, returned as f64.
    fn xdot(&self, a: &Array2<f64>) -> Array2<f64> {
        self.x.dot(&a.mapv(|v| v as f32)).mapv(f64::from)
    }

    /// Gradient [d + 1, m] (last row: intercept) from dZ and W.
    fn gradient(&self, dz: &Array2<f64>, w: &Array2<f64>) -> Array2<f64> {
        let gw = self.x.t().dot(&dz.mapv(|v| v as f32)).mapv(f64::from) + w * self.inv_c;
        let gb = dz.sum_axis(Axis(0));
        let mut g = Array2::zeros((w.nrows() + 1, self.m));
        g.slice_mut(ndarray::s![..w.nrows(), ..]).assign(&gw);
        g.row_mut(w.nrows()).assign(&gb);
        g
    }
}

fn dot(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Fits on f32 features `x` [n, d] with labels in 0..k (k >= 2).
pub fn fit(x: ArrayView2<f32>, y: &[usize], k: usize, c: f64, max_iter: usize, tol: f64) -> Fitted {
    let (n, d) = x.dim();
    let m = if k == 2 { 1 } else { k };
    let p = Problem { x, y, m, inv_c: 1.0 / c };
    // theta = [W; b] as a [d + 1, m] matrix.
    let mut theta = Array2::<f64>::zeros((d + 1, m));
    let split = |t: &Array2<f64>| (t.slice(ndarray::s![..d, ..]).to_owned(), t.row(d).to_owned());
    let mut z = Array2::<f64>::zeros((n, m));
    let (mut f, mut dz) = p.loss_and_dz(&z);
    let mut g = p.gradient(&dz, &split(&theta).0);
    let mut history: VecDeque<(Array2<f64>, Array2<f64>, f64)> = VecDeque::new();
    const MEMORY: usize = 10;
    let mut iterations = 0;
    let mut converged = false;
    while iterations < max_iter {
        if g.iter().fold(0.0f64, |a, &v| a.max(v.abs())) <= tol {
            converged = true;
            break;
        }
        iterations += 1;
        // Two-loop recursion: direction = -H g.
        let mut q = g.clone();
        let mut alphas = Vec::with_capacity(history.len());
        for (s, yv, rho) in history.iter().rev() {
            let a = rho * dot(s, &q);
            q = q - yv * a;
            alphas.push(a);
        }
        let gamma = history
            .back()
            .map(|(s, yv, _)| dot(s, yv) / dot(yv, yv))
            .unwrap_or(1.0 / g.iter().map(|v| v * v).sum::<f64>().sqrt().max(1.0));
        q *= gamma;
        for ((s, yv, rho), a) in history.iter().zip(alphas.into_iter().rev()) {
            let b = rho * dot(yv, &q);
            q = q + s * (a - b);
        }
        let dir = -q;
        let mut slope = dot(&g, &dir);
        let dir = if slope >= 0.0 {
            // Not a descent direction (numerical trouble): restart from steepest descent.
            history.clear();
            slope = -dot(&g, &g);
            -&g
        } else {
            dir
        };
        let (dw, db) = split(&dir);
        let (w, _) = split(&theta);
        let xd = p.xdot(&dw) + &db;
        // Backtracking (Armijo) line search along Z + a·XD.
        let pen = |a: f64| {
            let ww = &w + &(&dw * a);
            0.5 * p.inv_c * dot(&ww, &ww)
        };
        let f0 = f;
        let mut step = 1.0;
        let (mut f_new, mut dz_new, mut z_new);
        loop {
            z_new = &z + &(&xd * step);
            let (l, dzn) = p.loss_and_dz(&z_new);
            f_new = l + pen(step);
            dz_new = dzn;
            if f_new <= f0 + 1e-4 * step * slope || step < 1e-10 {
                break;
            }
            step *= 0.5;
        }
        let s = &dir * step;
        let theta_new = &theta + &s;
        let g_new = p.gradient(&dz_new, &split(&theta_new).0);
        let yv = &g_new - &g;
        let sy = dot(&s, &yv);
        if sy > 1e-12 {
            history.push_back((s, yv, 1.0 / sy));
            if history.len() > MEMORY {
                history.pop_front();
            }
        }
        let rel = (f0 - f_new) / f0.abs().max(f_new.abs()).max(1.0);
        theta = theta_new;
        z = z_new;
        dz = dz_new;
        f = f_new;
        g = g_new;
        if rel.abs() <= 2.2e-9 && step > 1e-10 {
            converged = true;
            break;
        }
    }
    let _ = dz;
    let (w, b) = split(&theta);
    Fitted { w, b, iterations, converged }
}
