//! Every figure is drawn twice, to PNG and to SVG, from one description.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{PlotError, Result};
use crate::style::register_fonts;

/// What a drawing step returns; backend errors are turned into text.
pub type Drawn = std::result::Result<(), String>;

pub fn e<E: std::fmt::Debug>(err: E) -> String {
    format!("{err:?}")
}

/// A figure that can draw itself on any plotters backend.
pub trait Figure: Sync {
    /// File stem, e.g. `layers_colour`.
    fn name(&self) -> String;
    fn size(&self) -> (u32, u32) {
        (900, 560)
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Drawn;
}

/// Writes `dir/<name>.png` and `dir/<name>.svg`; returns both paths.
pub fn save<F: Figure>(fig: &F, dir: &Path) -> Result<(PathBuf, PathBuf)> {
    register_fonts();
    std::fs::create_dir_all(dir)
        .map_err(|err| PlotError::Io { path: dir.display().to_string(), message: err.to_string() })?;
    let name = fig.name();
    let fail = |message: String| PlotError::Draw { figure: name.clone(), message };
    let png = dir.join(format!("{name}.png"));
    let svg = dir.join(format!("{name}.svg"));
    {
        let root = BitMapBackend::new(&png, fig.size()).into_drawing_area();
        root.fill(&WHITE).map_err(|x| fail(e(x)))?;
        fig.draw(&root).map_err(fail)?;
        root.present().map_err(|x| fail(e(x)))?;
    }
    {
        let root = SVGBackend::new(&svg, fig.size()).into_drawing_area();
        root.fill(&WHITE).map_err(|x| fail(e(x)))?;
        fig.draw(&root).map_err(fail)?;
        root.present().map_err(|x| fail(e(x)))?;
    }
    Ok((png, svg))
}

/// (min, max) of finite values, widened when flat.
pub fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) =
        values.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        return (lo - 0.5, hi + 0.5);
    }
    let pad = (hi - lo) * 0.05;
    (lo - pad, hi + pad)
}
