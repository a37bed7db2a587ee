//! Linear concept erasure, and the simple projections an intervention uses.
//!
//! LEACE (Belrose et al. 2023, "LEACE: Perfect linear concept erasure in
//! closed form"): for rows X with mean μ and covariance Σ_XX, and a concept Z
//! (one-hot class labels, or any numeric columns) with cross-covariance Σ_XZ,
//!
//! ```text
//! r(x) = x − W⁺ P W (x − μ),   W = (Σ_XX^{1/2})⁺,   P = orthogonal projection onto col(W Σ_XZ).
//! ```
//!
//! Afterwards Cov(r(X), Z) = 0: for classes, every class has the same mean, so
//! no linear classifier beats the constant one; among the affine erasers that
//! achieve this, r moves the rows least. The eraser is an (oblique)
//! projection of rank at most k − 1: it moves rows only along the columns of
//! Σ_XZ and leaves every x − μ with Σ_ZX Σ_XX⁺ (x − μ) = 0 where it is.
//!
//! Numerics: the covariance is never inverted. Its eigendecomposition (or
//! that of the n x n Gram matrix when there are fewer rows than features)
//! gives the whitening on the covariance's range; eigenvalues under a
//! tolerance count as zero, so a rank-deficient covariance (d > n, collinear
//! features, constant layers) gets the pseudo-inverse square root.
//! The eraser is stored as two thin d x rank factors, not a d x d matrix.

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};

use crate::directions::Direction;
use crate::error::{AnalysisError, Result};
use crate::linalg::{eigh, mean_rows};

/// Numerical cut-offs of the fit; [`LeaceParams::check`] validates them.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaceParams {
    /// Eigenvalues of Σ_XX below `tolerance` x the largest count as zero
    /// (`None`: max(n, d) x machine epsilon, numpy's `matrix_rank` rule).
    pub tolerance: Option<f64>,
    /// Directions of W Σ_XZ whose squared singular value is below
    /// `concept_tolerance` x the largest variance of Z count as zero: a
    /// concept uncorrelated with X then erases nothing instead of a
    /// direction made of rounding error. (Squared singular values of W Σ_XZ
    /// never exceed that variance.)
    pub concept_tolerance: f64,
}

impl Default for LeaceParams {
    fn default() -> Self {
        LeaceParams { tolerance: None, concept_tolerance: 1e-10 }
    }
}

/// Validated cut-offs (the default ones are valid).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CheckedLeace(LeaceParams);

impl LeaceParams {
    pub fn check(self) -> Result<CheckedLeace> {
        let ok = |t: f64| t.is_finite() && (0.0..1.0).contains(&t);
        if let Some(t) = self.tolerance
            && !ok(t)
        {
            return Err(AnalysisError::Params(format!("the LEACE covariance tolerance must be in [0, 1), got {t}")));
        }
        if !ok(self.concept_tolerance) {
            return Err(AnalysisError::Params(format!(
                "the LEACE concept tolerance must be in [0, 1), got {}",
                self.concept_tolerance
            )));
        }
        Ok(CheckedLeace(self))
    }
}

impl CheckedLeace {
    pub fn params(&self) -> &LeaceParams {
        &self.0
    }
}

/// The whitening of centred rows on their covariance's range:
/// Σ_XX = V diag(s²) Vᵀ over the kept eigenvalues s², W = V diag(1/s) Vᵀ and
/// W⁺ = Σ_XX^{1/2} = V diag(s) Vᵀ.
#[derive(Debug, Clone)]
pub struct Whitening {
    /// V, [d, rank]: orthonormal eigenvectors of the kept eigenvalues.
    pub basis: Array2<f64>,
    /// s, [rank]: square roots of the kept eigenvalues.
    pub scale: Array1<f64>,
}

impl Whitening {
    /// From already-centred rows [n, d]; `tolerance` is relative to the
    /// largest eigenvalue (`None`: max(n, d) x machine epsilon).
    pub fn fit(xc: ArrayView2<f64>, tolerance: Option<f64>) -> Result<Whitening> {
        let (n, d) = xc.dim();
        let nf = n.max(1) as f64;
        let rtol = tolerance.unwrap_or(n.max(d) as f64 * f64::EPSILON);
        let cut = |vals: &Array1<f64>| {
            let top = vals.iter().fold(0.0f64, |a, &b| a.max(b));
            let keep: Vec<usize> = (0..vals.len()).rev().filter(|&i| top > 0.0 && vals[i] > rtol * top).collect();
            keep
        };
        if d <= n {
            let (vals, vecs) = eigh(&(xc.t().dot(&xc) / nf))?;
            let keep = cut(&vals);
            Ok(Whitening { basis: vecs.select(Axis(1), &keep), scale: keep.iter().map(|&i| vals[i].sqrt()).collect() })
        } else {
            // Fewer rows than features: Σ_XX's nonzero eigenvalues are the Gram
            // matrix's, with eigenvectors xcᵀ u / sqrt(n λ).
            let (vals, vecs) = eigh(&(xc.dot(&xc.t()) / nf))?;
            let keep = cut(&vals);
            let scale: Array1<f64> = keep.iter().map(|&i| vals[i].sqrt()).collect();
            let mut basis = xc.t().dot(&vecs.select(Axis(1), &keep));
            for (mut col, &s) in basis.columns_mut().into_iter().zip(&scale) {
                col /= s * nf.sqrt();
            }
            Ok(Whitening { basis, scale })
        }
    }

    pub fn rank(&self) -> usize {
        self.scale.len()
    }

    /// W = (Σ_XX^{1/2})⁺, [d, d].
    pub fn matrix(&self) -> Array2<f64> {
        (&self.basis / &self.scale).dot(&self.basis.t())
    }

    /// W⁺ = Σ_XX^{1/2}, [d, d].
    pub fn pinv_matrix(&self) -> Array2<f64> {
        (&self.basis * &self.scale).dot(&self.basis.t())
    }
}

/// A fitted LEACE eraser: r(x) = x − ((x − μ)·down)·upᵀ, i.e. the matrix
/// W⁺ P W = up·downᵀ.
#[derive(Debug, Clone)]
pub struct Leace {
    mean: Array1<f64>,
    /// W·U, [d, rank].
    down: Array2<f64>,
    /// W⁺·U, [d, rank].
    up: Array2<f64>,
    /// U, [d, rank]: orthonormal basis of col(W Σ_XZ), so P = U Uᵀ.
    concept_basis: Array2<f64>,
    x_rank: usize,
}

impl Leace {
    /// Fits on rows `x` [n, d] and classes `y` (0..k, one-hot Z) with the
    /// default cut-offs.
    pub fn fit(x: ArrayView2<f64>, y: &[usize], k: usize) -> Result<Leace> {
        Leace::fit_classes(x, y, k, &CheckedLeace::default())
    }

    /// Fits on rows `x` [n, d] and classes `y` (0..k): Z is their one-hot
    /// encoding. At least two classes must be present.
    pub fn fit_classes(x: ArrayView2<f64>, y: &[usize], k: usize, p: &CheckedLeace) -> Result<Leace> {
        let n = x.nrows();
        if y.len() != n {
            return Err(AnalysisError::Input(format!("LEACE: {} labels for {n} rows", y.len())));
        }
        if k < 2 {
            return Err(AnalysisError::Params(format!("LEACE needs at least 2 classes, got k = {k}")));
        }
        if let Some((i, &c)) = y.iter().enumerate().find(|(_, c)| **c >= k) {
            return Err(AnalysisError::Input(format!("LEACE: label {c} of row {i} is not below k = {k}")));
        }
        let mut z = Array2::<f64>::zeros((n, k));
        let mut present = vec![false; k];
        for (i, &c) in y.iter().enumerate() {
            z[[i, c]] = 1.0;
            present[c] = true;
        }
        let classes = present.iter().filter(|&&b| b).count();
        if classes < 2 {
            return Err(AnalysisError::TooSmall(format!("LEACE needs rows of at least 2 classes, got {classes}")));
        }
        Leace::fit_concept(x, z.view(), p)
    }

    /// Fits on rows `x` [n, d] and any concept `z` [n, m] (one-hot classes,
    /// or numeric columns).
    pub fn fit_concept(x: ArrayView2<f64>, z: ArrayView2<f64>, p: &CheckedLeace) -> Result<Leace> {
        let (n, d) = x.dim();
        if n < 2 {
            return Err(AnalysisError::TooSmall(format!("LEACE needs at least 2 rows, got {n}")));
        }
        if d == 0 || z.ncols() == 0 {
            return Err(AnalysisError::Input("LEACE: the rows and the concept need at least one column each".into()));
        }
        if z.nrows() != n {
            return Err(AnalysisError::Input(format!(
                "LEACE: the concept has {} rows, the activations {n}",
                z.nrows()
            )));
        }
        check_finite(x, "LEACE: activation")?;
        check_finite(z, "LEACE: concept")?;

        let mean = mean_rows(x);
        let xc = &x - &mean;
        let zc = &z - &mean_rows(z);
        let nf = n as f64;
        let (z_vals, _) = eigh(&(zc.t().dot(&zc) / nf))?;
        let z_var = z_vals.iter().fold(0.0f64, |a, &b| a.max(b));
        if z_var <= 0.0 {
            return Err(AnalysisError::TooSmall("LEACE: the concept is constant over the rows".into()));
        }
        let w = Whitening::fit(xc.view(), p.0.tolerance)?;

        // W Σ_XZ = V B with B = diag(1/s) Vᵀ Σ_XZ [rank, m]; an orthonormal
        // basis of col(B) from the eigenvectors of BᵀB (m x m), mapped by V.
        let sxz = xc.t().dot(&zc) / nf;
        let b = w.basis.t().dot(&sxz) / w.scale.view().insert_axis(Axis(1));
        let (vals, vecs) = eigh(&b.t().dot(&b))?;
        let keep: Vec<usize> = (0..vals.len()).rev().filter(|&i| vals[i] > p.0.concept_tolerance * z_var).collect();
        let mut ub = b.dot(&vecs.select(Axis(1), &keep));
        for (mut col, &i) in ub.columns_mut().into_iter().zip(&keep) {
            col /= vals[i].sqrt();
        }
        orthonormalise(&mut ub);
        // Q = W⁺ P W = V diag(s) Ub Ubᵀ diag(1/s) Vᵀ.
        let s = w.scale.view().insert_axis(Axis(1));
        let up = w.basis.dot(&(&ub * &s));
        let down = w.basis.dot(&(&ub / &s));
        let concept_basis = w.basis.dot(&ub);
        Ok(Leace { mean, down, up, concept_basis, x_rank: w.rank() })
    }

    /// The erased rows r(x) of `x` [n, d].
    pub fn apply(&self, x: ArrayView2<f64>) -> Result<Array2<f64>> {
        self.check_width(x.ncols())?;
        let xc = &x - &self.mean;
        Ok(&x - &xc.dot(&self.down).dot(&self.up.t()))
    }

    /// One erased row.
    pub fn apply_row(&self, x: ArrayView1<f64>) -> Result<Array1<f64>> {
        self.check_width(x.len())?;
        let xc = &x - &self.mean;
        Ok(&x - &self.up.dot(&xc.dot(&self.down)))
    }

    fn check_width(&self, d: usize) -> Result<()> {
        if d != self.width() {
            return Err(AnalysisError::Input(format!(
                "LEACE: the eraser was fit on width {}, rows have {d}",
                self.width()
            )));
        }
        Ok(())
    }

    /// How many dimensions it erases (at most k − 1 for k classes).
    pub fn rank(&self) -> usize {
        self.up.ncols()
    }

    /// The rank of Σ_XX it whitened with.
    pub fn x_rank(&self) -> usize {
        self.x_rank
    }

    pub fn width(&self) -> usize {
        self.mean.len()
    }

    /// μ, the mean of the rows it was fit on.
    pub fn mean(&self) -> &Array1<f64> {
        &self.mean
    }

    /// (down, up), each [d, rank]: r(x) = x − ((x − μ)·down)·upᵀ, the form to
    /// apply in a forward pass without a d x d matrix.
    pub fn factors(&self) -> (ArrayView2<'_, f64>, ArrayView2<'_, f64>) {
        (self.down.view(), self.up.view())
    }

    /// W⁺ P W, [d, d]: r(x) = x − (W⁺ P W)(x − μ).
    pub fn matrix(&self) -> Array2<f64> {
        self.up.dot(&self.down.t())
    }

    /// P, [d, d]: the orthogonal projection onto col(W Σ_XZ).
    pub fn projection(&self) -> Array2<f64> {
        self.concept_basis.dot(&self.concept_basis.t())
    }
}

fn check_finite(a: ArrayView2<f64>, what: &str) -> Result<()> {
    match a.indexed_iter().find(|(_, v)| !v.is_finite()) {
        Some(((i, j), v)) => Err(AnalysisError::Input(format!("{what} row {i}, column {j} is {v}"))),
        None => Ok(()),
    }
}

/// Modified Gram-Schmidt, twice ("twice is enough"), on the columns of `a`:
/// they come out of BᵀB's eigenvectors orthonormal only up to rounding scaled
/// by the condition number.
fn orthonormalise(a: &mut Array2<f64>) {
    for _ in 0..2 {
        for j in 0..a.ncols() {
            for i in 0..j {
                let proj = a.column(i).dot(&a.column(j));
                let ci = a.column(i).to_owned();
                a.column_mut(j).scaled_add(-proj, &ci);
            }
            let norm = a.column(j).dot(&a.column(j)).sqrt();
            if norm > 0.0 {
                a.column_mut(j).mapv_inplace(|v| v / norm);
            }
        }
    }
}

/// `x` [n, d] with the direction of `u` projected out of every row:
/// x − (x·û)û, û = u / ‖u‖. A zero `u` leaves the rows as they are (erasing
/// a zero direction is the plain forward pass).
pub fn project_out(x: ArrayView2<f64>, u: ArrayView1<f64>) -> Result<Array2<f64>> {
    let Some(u) = unit_direction(u, x.ncols())? else {
        return Ok(x.to_owned());
    };
    let along = x.dot(&u);
    let mut out = x.to_owned();
    for (mut row, a) in out.rows_mut().into_iter().zip(along) {
        row.scaled_add(-a, &u);
    }
    Ok(out)
}

/// û = u / ‖u‖ after checking the width and the values; `None` for a zero u.
fn unit_direction(u: ArrayView1<f64>, d: usize) -> Result<Option<Array1<f64>>> {
    if u.len() != d {
        return Err(AnalysisError::Input(format!("direction of width {} for rows of width {d}", u.len())));
    }
    if let Some((i, v)) = u.indexed_iter().find(|(_, v)| !v.is_finite()) {
        return Err(AnalysisError::Input(format!("direction component {i} is {v}")));
    }
    let norm = u.dot(&u).sqrt();
    Ok((norm > 0.0).then(|| &u / norm))
}

/// The mean-difference direction of class `target` (0..k): the mean of its
/// rows minus the mean of every other row, unit-norm, with the raw norm: the
/// direction a steering intervention adds (h + α·û) or an amnesic one
/// projects out.
pub fn mean_difference(x: ArrayView2<f64>, y: &[usize], k: usize, target: usize) -> Result<Direction> {
    let n = x.nrows();
    if y.len() != n {
        return Err(AnalysisError::Input(format!("mean difference: {} labels for {n} rows", y.len())));
    }
    if target >= k {
        return Err(AnalysisError::Params(format!("target class {target} is not below k = {k}")));
    }
    if let Some((i, &c)) = y.iter().enumerate().find(|(_, c)| **c >= k) {
        return Err(AnalysisError::Input(format!("mean difference: label {c} of row {i} is not below k = {k}")));
    }
    check_finite(x, "mean difference: activation")?;
    let (inside, outside): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| y[i] == target);
    if inside.is_empty() || outside.is_empty() {
        let which = if inside.is_empty() { "of class" } else { "outside class" };
        return Err(AnalysisError::TooSmall(format!("mean difference: no rows {which} {target}")));
    }
    let v = mean_rows(x.select(Axis(0), &inside).view()) - mean_rows(x.select(Axis(0), &outside).view());
    let norm = v.dot(&v).sqrt();
    let unit = if norm > 0.0 { v / norm } else { v };
    Ok(Direction { class: target, unit, norm })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn two_points_per_class_in_the_plane() {
        // Classes differ along the first axis only: the eraser collapses it to
        // the mean and keeps the second axis.
        let x = array![[0.0, 1.0], [0.0, -1.0], [2.0, 1.0], [2.0, -1.0]];
        let e = Leace::fit(x.view(), &[0, 0, 1, 1], 2).unwrap();
        assert_eq!((e.rank(), e.x_rank()), (1, 2));
        let r = e.apply(x.view()).unwrap();
        let want = array![[1.0, 1.0], [1.0, -1.0], [1.0, 1.0], [1.0, -1.0]];
        assert!((&r - &want).iter().all(|v| v.abs() < 1e-12), "{r}");
        let row = e.apply_row(x.row(2)).unwrap();
        assert!((&row - &want.row(2)).iter().all(|v| v.abs() < 1e-12));
    }
}
