//! Linear CKA (Kornblith et al. 2019): with X, Y centred,
//! ‖YᵀX‖²_F / (‖XᵀX‖_F · ‖YᵀY‖_F). Same rows, any widths.
//!
//! Computed in its sample-space form ⟨XXᵀ, YYᵀ⟩_F / (‖XXᵀ‖_F · ‖YYᵀ‖_F)
//! (the same number, since ‖YᵀX‖²_F = tr(XXᵀYYᵀ)): each partition then
//! leaves only an n x n Gram matrix behind, whatever its width, so a
//! layer-by-layer table need not hold every layer's activations.

use ndarray::{Array2, ArrayView2};

use crate::linalg::centered;

/// One matrix's centred Gram matrix and its Frobenius norm.
pub struct CkaInput {
    gram: Array2<f64>,
    norm: f64,
}

impl CkaInput {
    pub fn new(x: ArrayView2<f64>) -> Self {
        let xc = centered(x);
        let gram = xc.dot(&xc.t());
        let norm = gram.iter().map(|v| v * v).sum::<f64>().sqrt();
        CkaInput { gram, norm }
    }
}

pub fn linear_cka(a: &CkaInput, b: &CkaInput) -> f64 {
    assert_eq!(a.gram.dim(), b.gram.dim(), "CKA needs the same rows on both sides");
    let inner: f64 = a.gram.iter().zip(&b.gram).map(|(x, y)| x * y).sum();
    inner / (a.norm * b.norm)
}

pub fn cka(x: ArrayView2<f64>, y: ArrayView2<f64>) -> f64 {
    linear_cka(&CkaInput::new(x), &CkaInput::new(y))
}
