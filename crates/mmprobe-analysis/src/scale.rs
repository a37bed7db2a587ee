//! Standardisation as scikit-learn's StandardScaler: population standard
//! deviation, constant features left unscaled. Fitted on training rows only.

use ndarray::{Array1, Array2, ArrayView2, Axis};

#[derive(Debug, Clone)]
pub struct Standardizer {
    pub mean: Array1<f64>,
    pub scale: Array1<f64>,
}

impl Standardizer {
    pub fn fit(x: ArrayView2<f64>) -> Self {
        let n = x.nrows().max(1) as f64;
        let mean = x.mean_axis(Axis(0)).unwrap_or_else(|| Array1::zeros(x.ncols()));
        let mut var = Array1::<f64>::zeros(x.ncols());
        for row in x.rows() {
            for ((v, &m), &xi) in var.iter_mut().zip(&mean).zip(row) {
                let d = xi - m;
                *v += d * d;
            }
        }
        let scale = var.mapv(|v| {
            let s = (v / n).sqrt();
            if s < 10.0 * f64::EPSILON { 1.0 } else { s }
        });
        Standardizer { mean, scale }
    }

    pub fn transform(&self, x: ArrayView2<f64>) -> Array2<f64> {
        let mut out = x.to_owned();
        for mut row in out.rows_mut() {
            for ((v, &m), &s) in row.iter_mut().zip(&self.mean).zip(&self.scale) {
                *v = (*v - m) / s;
            }
        }
        out
    }
}
