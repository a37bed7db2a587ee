//! The edit at one layer, fitted on the store's rows of the fit samples only:
//! a LEACE eraser, the projection onto the class-mean differences, or the
//! unit mean difference toward a target class.

use std::collections::HashSet;

use mmprobe_analysis::labels::Target;
use mmprobe_analysis::leace::{Leace, mean_difference};
use mmprobe_analysis::linalg::{eigh, mean_rows};
use mmprobe_extract::EditKind;
use mmprobe_store::{Partition, Store};
use ndarray::{Array2, ArrayView2, Axis};
use tch::Tensor;

use crate::error::{InterveneError, Result};
use crate::params::{DirectionMethod, Method};

/// A fitted edit, before any alpha.
pub enum Fitted {
    /// Erasure: the affine eraser and how many dimensions it removes.
    Erase { kind: EditKind, rank: usize },
    /// Steering: the unit direction toward the target and the distance between
    /// the target's mean and the others' (the scale of the default alphas).
    Steer { u: Tensor, gap: f64 },
}

/// What the fit saw.
pub struct FitReport {
    pub fitted: Fitted,
    pub rows: usize,
    pub classes: Vec<String>,
}

fn tensor(a: ArrayView2<f64>) -> Tensor {
    let (r, c) = a.dim();
    let v: Vec<f32> = a.iter().map(|&x| x as f32).collect();
    Tensor::from_slice(&v).view([r as i64, c as i64])
}

/// Orthonormal basis [d, r] of the span of class means minus the overall
/// mean (rank at most k − 1), from the small Gram matrix of those differences.
fn class_mean_basis(x: ArrayView2<f64>, y: &[usize], k: usize) -> Result<Array2<f64>> {
    let mu = mean_rows(x);
    let d = x.ncols();
    let present: Vec<usize> = (0..k).filter(|c| y.contains(c)).collect();
    let mut diffs = Array2::<f64>::zeros((present.len(), d));
    for (r, &c) in present.iter().enumerate() {
        let rows: Vec<usize> = (0..y.len()).filter(|&i| y[i] == c).collect();
        diffs.row_mut(r).assign(&(mean_rows(x.select(Axis(0), &rows).view()) - &mu));
    }
    let gram = diffs.dot(&diffs.t());
    let (vals, vecs) = eigh(&gram)?;
    let top = vals.iter().cloned().fold(0.0f64, f64::max);
    let keep: Vec<usize> = (0..vals.len()).filter(|&i| vals[i] > top * 1e-10 && vals[i] > 0.0).collect();
    let mut basis = Array2::<f64>::zeros((d, keep.len()));
    for (j, &i) in keep.iter().enumerate() {
        // Dᵀv / sqrt(λ) is a unit vector in the span of the differences.
        let col = diffs.t().dot(&vecs.column(i)) / vals[i].sqrt();
        basis.column_mut(j).assign(&col);
    }
    Ok(basis)
}

/// Fits the edit for `concept` on partition `p`, on the rows whose sample is in `fit`.
pub fn fit(
    store: &Store,
    concept: &str,
    p: Partition,
    fit: &HashSet<u32>,
    method: Method,
    direction: DirectionMethod,
    target: Option<&str>,
) -> Result<FitReport> {
    let loaded = mmprobe_analysis::sweep::load(store, p, &[concept])?;
    let c = loaded.concept(concept)?;
    let Target::Classes { y, names } = &c.target else {
        return Err(InterveneError::Input(format!(
            "concept '{concept}' is numeric: erasing or steering needs classes"
        )));
    };
    let (rows, y): (Vec<usize>, Vec<usize>) =
        c.rows.iter().zip(y).filter(|(r, _)| fit.contains(&loaded.sample[**r])).map(|(r, y)| (*r, *y)).unzip();
    if rows.len() < 4 {
        return Err(InterveneError::Input(format!(
            "partition {p}: only {} rows of the fit samples carry '{concept}'",
            rows.len()
        )));
    }
    let x = loaded.x.select(Axis(0), &rows);
    let k = names.len();
    let fitted = match (method, direction) {
        (Method::Erase, DirectionMethod::Leace) => {
            let e = Leace::fit(x.view(), &y, k)?;
            let (down, up) = e.factors();
            let mu = e.mean().view().insert_axis(Axis(1));
            let kind = EditKind::Affine { mu: tensor(mu.view()).view([-1]), down: tensor(down), up: tensor(up) };
            Fitted::Erase { kind, rank: e.rank() }
        }
        (Method::Erase, DirectionMethod::DiffMeans) => {
            let q = class_mean_basis(x.view(), &y, k)?;
            let rank = q.ncols();
            let zeros = Tensor::zeros([x.ncols() as i64], (tch::Kind::Float, tch::Device::Cpu));
            let q = tensor(q.view());
            Fitted::Erase { kind: EditKind::Affine { mu: zeros, down: q.shallow_clone(), up: q }, rank }
        }
        (Method::Steer, _) => {
            let t = target.expect("checked: steering has a target");
            let Some(ti) = names.iter().position(|n| n == t) else {
                return Err(InterveneError::Input(format!(
                    "--target '{t}' is not a class of '{concept}' (classes: {})",
                    names.join(", ")
                )));
            };
            let d = mean_difference(x.view(), &y, k, ti)?;
            let u = tensor(d.unit.view().insert_axis(Axis(1))).view([-1]);
            Fitted::Steer { u, gap: d.norm }
        }
    };
    Ok(FitReport { fitted, rows: rows.len(), classes: names.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn class_mean_basis_spans_the_mean_differences_and_is_orthonormal() {
        // Three classes differing along axes 0 and 1; axis 2 is noise.
        let x = array![
            [1.0, 0.0, 0.3],
            [1.2, 0.1, -0.3],
            [0.0, 1.0, 0.2],
            [0.1, 1.1, -0.1],
            [0.0, 0.0, 0.5],
            [-0.1, 0.1, -0.4]
        ];
        let y = [0, 0, 1, 1, 2, 2];
        let q = class_mean_basis(x.view(), &y, 3).unwrap();
        assert_eq!(q.ncols(), 2, "k − 1 directions");
        let qtq = q.t().dot(&q);
        assert!((&qtq - &Array2::<f64>::eye(2)).iter().all(|v| v.abs() < 1e-10), "{qtq}");
        // After projecting out the basis every class has the same mean.
        let erased = &x - &x.dot(&q).dot(&q.t());
        let m = |r: [usize; 2]| (&erased.row(r[0]) + &erased.row(r[1])) / 2.0;
        for other in [m([2, 3]), m([4, 5])] {
            assert!((&m([0, 1]) - &other).iter().all(|v| v.abs() < 1e-10));
        }
    }
}
