//! Figures (PNG and SVG, bundled font, colour-blind-safe palette) and the
//! self-contained HTML report of an mmprobe analysis. Never links LibTorch.

pub mod canvas;
pub mod error;
pub mod figures;
mod interventions;
pub mod project;
pub mod report;
pub mod style;

pub use error::{PlotError, Result};
pub use report::{ReportSummary, write_report};
