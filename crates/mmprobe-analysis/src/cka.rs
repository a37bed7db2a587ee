//! Linear CKA (Kornblith et al. 2019): with X, Y centred,
//! ‖YᵀX‖²_F / (‖XᵀX‖_F · ‖YᵀY‖_F). Same rows, any widths.

use ndarray::{Array2, ArrayView2};

use crate::linalg::centered;

/// Precomputed per matrix so a full layer-by-layer table costs one Gram each.
pub struct CkaInput {
    xc: Array2<f64>,
    self_norm: f64,
}

impl CkaInput {
    pub fn new(x: ArrayView2<f64>) -> Self {
        let xc = centered(x);
        let g = xc.t().dot(&xc);
        let self_norm = g.iter().map(|v| v * v).sum::<f64>().sqrt();
        CkaInput { xc, self_norm }
    }
}

pub fn linear_cka(a: &CkaInput, b: &CkaInput) -> f64 {
    let cross = b.xc.t().dot(&a.xc);
    cross.iter().map(|v| v * v).sum::<f64>() / (a.self_norm * b.self_norm)
}

pub fn cka(x: ArrayView2<f64>, y: ArrayView2<f64>) -> f64 {
    linear_cka(&CkaInput::new(x), &CkaInput::new(y))
}
