//! Figures (PNG and SVG) and the self-contained HTML report.
