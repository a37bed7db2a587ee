//! The edit at one layer, fitted on the store's rows of the fit samples only:
//! a LEACE eraser; the projection out of the span of the concept's class
//! directions (class-mean differences, LDA or probe normals); or the unit
//! direction toward a target class.

use std::collections::HashSet;

use mmprobe_analysis::directions::{self, Direction};
use mmprobe_analysis::folds::Groups;
use mmprobe_analysis::labels::Target;
use mmprobe_analysis::leace::{Leace, mean_difference};
use mmprobe_analysis::linalg::{eigh, mean_rows};
use mmprobe_analysis::logistic::LogisticParams;
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
}

/// Labels renumbered 0..k' over the classes they hold, and those classes
/// (sorted): fits and probes then see no empty class.
pub fn present_classes(y: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let mut present = y.to_vec();
    present.sort_unstable();
    present.dedup();
    let renumbered = y.iter().map(|c| present.binary_search(c).expect("every label is present")).collect();
    (renumbered, present)
}

fn tensor(a: ArrayView2<f64>) -> Tensor {
    let (r, c) = a.dim();
    let v: Vec<f32> = a.iter().map(|&x| x as f32).collect();
    Tensor::from_slice(&v).view([r as i64, c as i64])
}

/// Orthonormal basis [d, r] of the span of `rows` [m, d] (rank at most m),
/// from their small Gram matrix: directions it cannot tell from zero are dropped.
fn span_basis(rows: &Array2<f64>) -> Result<Array2<f64>> {
    let gram = rows.dot(&rows.t());
    let (vals, vecs) = eigh(&gram)?;
    let top = vals.iter().cloned().fold(0.0f64, f64::max);
    let keep: Vec<usize> = (0..vals.len()).filter(|&i| vals[i] > top * 1e-10 && vals[i] > 0.0).collect();
    let mut basis = Array2::<f64>::zeros((rows.ncols(), keep.len()));
    for (j, &i) in keep.iter().enumerate() {
        // Rᵀv / sqrt(λ) is a unit vector in the span of the rows.
        basis.column_mut(j).assign(&(rows.t().dot(&vecs.column(i)) / vals[i].sqrt()));
    }
    Ok(basis)
}

/// The class means minus the overall mean, one row per class present [k', d]:
/// their span (rank at most k − 1) is what difference-of-means erasure removes.
fn class_mean_offsets(x: ArrayView2<f64>, y: &[usize], k: usize) -> Array2<f64> {
    let mu = mean_rows(x);
    let present: Vec<usize> = (0..k).filter(|c| y.contains(c)).collect();
    let mut diffs = Array2::<f64>::zeros((present.len(), x.ncols()));
    for (r, &c) in present.iter().enumerate() {
        let rows: Vec<usize> = (0..y.len()).filter(|&i| y[i] == c).collect();
        diffs.row_mut(r).assign(&(mean_rows(x.select(Axis(0), &rows).view()) - &mu));
    }
    diffs
}

/// Per-class unit directions of `method` (one for two classes), as rows.
fn class_directions(x: ArrayView2<f64>, y: &[usize], k: usize, method: DirectionMethod) -> Result<Vec<Direction>> {
    Ok(match method {
        DirectionMethod::Lda => directions::lda(x, y, k)?,
        DirectionMethod::Probe => {
            let logistic = LogisticParams::default().check()?;
            directions::probe(x, y, k, &Groups::singletons(y.len()), &logistic)?
        }
        DirectionMethod::DiffMeans | DirectionMethod::Leace => directions::diff_means(x, y, k),
    })
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
    // Classes absent from the fit rows are dropped: a direction of an empty class means nothing.
    let (y, present) = present_classes(&y);
    if present.len() < 2 {
        return Err(InterveneError::Input(format!(
            "partition {p}: the fit samples hold one class of '{concept}' only"
        )));
    }
    let names: Vec<String> = present.iter().map(|&c| names[c].clone()).collect();
    let k = names.len();
    let fitted = match (method, direction) {
        (Method::Erase, DirectionMethod::Leace) => {
            let e = Leace::fit(x.view(), &y, k)?;
            let (down, up) = e.factors();
            let mu = e.mean().view().insert_axis(Axis(1));
            let kind = EditKind::Affine { mu: tensor(mu.view()).view([-1]), down: tensor(down), up: tensor(up) };
            Fitted::Erase { kind, rank: e.rank() }
        }
        (Method::Erase, direction) => {
            let rows = match direction {
                DirectionMethod::DiffMeans => class_mean_offsets(x.view(), &y, k),
                _ => {
                    let dirs = class_directions(x.view(), &y, k, direction)?;
                    let mut rows = Array2::<f64>::zeros((dirs.len(), x.ncols()));
                    for (r, d) in dirs.iter().enumerate() {
                        rows.row_mut(r).assign(&d.unit);
                    }
                    rows
                }
            };
            let q = span_basis(&rows)?;
            let rank = q.ncols();
            let zeros = Tensor::zeros([x.ncols() as i64], (tch::Kind::Float, tch::Device::Cpu));
            let q = tensor(q.view());
            Fitted::Erase { kind: EditKind::Affine { mu: zeros, down: q.shallow_clone(), up: q }, rank }
        }
        (Method::Steer, _) => {
            let t = target.expect("checked: steering has a target");
            let Some(ti) = names.iter().position(|n| n == t) else {
                return Err(InterveneError::Input(format!(
                    "--target '{t}' is not among the classes of '{concept}' in the fit samples ({})",
                    names.join(", ")
                )));
            };
            let mean_diff = mean_difference(x.view(), &y, k, ti)?;
            let unit = match direction {
                DirectionMethod::DiffMeans | DirectionMethod::Leace => mean_diff.unit.clone(),
                _ => {
                    // Two classes give one direction, class 1's: class 0's is its opposite.
                    let dirs = class_directions(x.view(), &y, k, direction)?;
                    match dirs.iter().find(|d| d.class == ti) {
                        Some(d) => d.unit.clone(),
                        None => -&dirs[0].unit,
                    }
                }
            };
            // The target's mean, from the others', along the direction: the scale of the default alphas.
            let gap = (&mean_diff.unit * mean_diff.norm).dot(&unit);
            let u = tensor(unit.view().insert_axis(Axis(1))).view([-1]);
            Fitted::Steer { u, gap }
        }
    };
    Ok(FitReport { fitted, rows: rows.len() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn the_class_mean_span_is_orthonormal_and_erasing_it_equalises_the_means() {
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
        let q = span_basis(&class_mean_offsets(x.view(), &y, 3)).unwrap();
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
