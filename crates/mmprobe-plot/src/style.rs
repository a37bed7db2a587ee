//! Fonts (bundled DejaVu Sans: no system font needed) and the Okabe-Ito
//! colour-blind-safe palette.

use std::sync::Once;

use plotters::style::{FontStyle, RGBColor};

static FONT: &[u8] = include_bytes!("../fonts/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

/// The font family every figure uses.
pub const FAMILY: &str = "sans-serif";

pub fn register_fonts() {
    REGISTER.call_once(|| {
        for style in [FontStyle::Normal, FontStyle::Bold, FontStyle::Italic, FontStyle::Oblique] {
            // The font is compiled in; a failure here is a build defect, caught by the tests.
            if plotters::style::register_font(FAMILY, style, FONT).is_err() {
                panic!("the bundled DejaVu Sans does not parse");
            }
        }
    });
}

/// Okabe & Ito (2008), in their order, black last.
pub const PALETTE: [RGBColor; 8] = [
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 158, 115),
    RGBColor(213, 94, 0),
    RGBColor(0, 114, 178),
    RGBColor(204, 121, 167),
    RGBColor(240, 228, 66),
    RGBColor(0, 0, 0),
];

pub fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// Viridis (perceptually uniform, colour-blind-safe), t in [0, 1].
pub fn viridis(t: f64) -> RGBColor {
    const STOPS: [(f64, f64, f64); 5] =
        [(68.0, 1.0, 84.0), (59.0, 82.0, 139.0), (33.0, 145.0, 140.0), (94.0, 201.0, 98.0), (253.0, 231.0, 37.0)];
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 } * (STOPS.len() - 1) as f64;
    let i = (t.floor() as usize).min(STOPS.len() - 2);
    let f = t - i as f64;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    let mix = |x: f64, y: f64| (x + (y - x) * f).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}
