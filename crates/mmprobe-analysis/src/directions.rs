//! Concept directions per class, in the activation space: difference of
//! means (Marks & Tegmark 2023), the Fisher/LDA direction with a
//! Ledoit-Wolf-shrunk within-class covariance, and the probe's normal (CAV,
//! Kim et al. 2018). Each is reported unit-norm with its raw norm.

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};

use crate::error::Result;
use crate::linalg::{mean_rows, shrunk_within_covariance, solve_spd};
use crate::logistic::{self, CheckedLogistic};
use crate::scale::Standardizer;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Method {
    DiffMeans,
    Lda,
    Probe,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::DiffMeans => "diff-means",
            Method::Lda => "lda",
            Method::Probe => "probe",
        }
    }
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "diff-means" => Ok(Method::DiffMeans),
            "lda" => Ok(Method::Lda),
            "probe" | "cav" => Ok(Method::Probe),
            _ => Err(format!("unknown method '{s}' (diff-means, lda, probe)")),
        }
    }
}

/// One class's direction: unit vector and the raw norm before normalising.
#[derive(Debug, Clone)]
pub struct Direction {
    pub class: usize,
    pub unit: Array1<f64>,
    pub norm: f64,
}

fn unit(v: Array1<f64>) -> (Array1<f64>, f64) {
    let n = v.dot(&v).sqrt();
    if n > 0.0 { (v / n, n) } else { (v, 0.0) }
}

/// μ_class − μ_rest for every class (one direction for two classes: class 1's).
fn class_vs_rest_means(x: ArrayView2<f64>, y: &[usize], k: usize) -> Vec<Array1<f64>> {
    (0..k)
        .map(|c| {
            let (inside, outside): (Vec<usize>, Vec<usize>) = (0..y.len()).partition(|&i| y[i] == c);
            mean_rows(x.select(Axis(0), &inside).view()) - mean_rows(x.select(Axis(0), &outside).view())
        })
        .collect()
}

fn classes_reported(k: usize) -> Vec<usize> {
    if k == 2 { vec![1] } else { (0..k).collect() }
}

pub fn diff_means(x: ArrayView2<f64>, y: &[usize], k: usize) -> Vec<Direction> {
    let d = class_vs_rest_means(x, y, k);
    classes_reported(k)
        .into_iter()
        .map(|c| {
            let (u, n) = unit(d[c].clone());
            Direction { class: c, unit: u, norm: n }
        })
        .collect()
}

/// Σ_W⁻¹ (μ_class − μ_rest), Σ_W the shrunk pooled within-class covariance.
pub fn lda(x: ArrayView2<f64>, y: &[usize], k: usize) -> Result<Vec<Direction>> {
    let (sw, _) = shrunk_within_covariance(x, y, k);
    let d = class_vs_rest_means(x, y, k);
    classes_reported(k)
        .into_iter()
        .map(|c| {
            let (u, n) = unit(solve_spd(&sw, d[c].view())?);
            Ok(Direction { class: c, unit: u, norm: n })
        })
        .collect()
}

/// The logistic probe's normal for each class, mapped back from the
/// standardised space to the activation space (w / scale).
pub fn probe(
    x: ArrayView2<f64>,
    y: &[usize],
    k: usize,
    groups: &crate::folds::Groups,
    p: &CheckedLogistic,
) -> Result<Vec<Direction>> {
    let s = Standardizer::fit(x);
    let xs = s.transform(x);
    let c = logistic::choose_c(xs.view(), y, groups, k, p)?;
    let m = logistic::fit(xs.view(), y, k, c, p)?;
    let mut coef = m.coef.clone();
    if m.binary {
        let w = coef.row(1).to_owned();
        coef.row_mut(0).assign(&(-&w));
    }
    Ok(classes_reported(k)
        .into_iter()
        .map(|c| {
            let (u, n) = unit(&coef.row(c) / &s.scale);
            Direction { class: c, unit: u, norm: n }
        })
        .collect())
}

pub fn cosine(a: ArrayView1<f64>, b: ArrayView1<f64>) -> f64 {
    let d = (a.dot(&a) * b.dot(&b)).sqrt();
    if d > 0.0 { a.dot(&b) / d } else { f64::NAN }
}

/// Pairwise cosines of row vectors.
pub fn cosine_matrix(v: &Array2<f64>) -> Array2<f64> {
    let n = v.nrows();
    Array2::from_shape_fn((n, n), |(i, j)| cosine(v.row(i), v.row(j)))
}
