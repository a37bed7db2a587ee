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

/// The colour a colour word names ("red" is red), for labels that are colours.
pub fn named_colour(name: &str) -> Option<RGBColor> {
    let c = match name.trim().to_ascii_lowercase().as_str() {
        "red" => (220, 30, 30),
        "green" => (30, 150, 50),
        "blue" => (30, 70, 220),
        "yellow" => (235, 200, 0),
        "orange" => (245, 130, 0),
        "purple" | "violet" => (130, 40, 170),
        "pink" => (245, 120, 190),
        "cyan" | "turquoise" => (0, 190, 210),
        "magenta" => (220, 0, 200),
        "brown" => (140, 80, 30),
        "black" => (0, 0, 0),
        "white" => (255, 255, 255),
        "grey" | "gray" => (128, 128, 128),
        _ => return None,
    };
    Some(RGBColor(c.0, c.1, c.2))
}

/// One colour per class: the named colours when every class is a colour word,
/// else the palette in class order.
pub fn class_colours(names: &[String]) -> Vec<RGBColor> {
    let named: Option<Vec<RGBColor>> = names.iter().map(|n| named_colour(n)).collect();
    match named {
        Some(v) if !v.is_empty() => v,
        _ => (0..names.len()).map(color).collect(),
    }
}

/// Light enough to vanish on white: such markers get a dark outline.
pub fn is_light(c: RGBColor) -> bool {
    0.299 * c.0 as f64 + 0.587 * c.1 as f64 + 0.114 * c.2 as f64 > 215.0
}

/// A diverging map, blue (t = 0) through white (t = 0.5) to red (t = 1):
/// for signed values centred on 0 (cosines).
pub fn diverging(t: f64) -> RGBColor {
    const STOPS: [(f64, f64, f64); 5] = [
        (33.0, 102.0, 172.0),
        (146.0, 197.0, 222.0),
        (247.0, 247.0, 247.0),
        (244.0, 165.0, 130.0),
        (178.0, 24.0, 43.0),
    ];
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.5 } * (STOPS.len() - 1) as f64;
    let i = (t.floor() as usize).min(STOPS.len() - 2);
    let f = t - i as f64;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    let mix = |x: f64, y: f64| (x + (y - x) * f).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Splits `text` into lines of at most `width` characters at spaces (a word
/// longer than `width` gets a line of its own): titles wrap, never get cut.
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_words_get_their_colour_and_other_labels_the_palette() {
        let names: Vec<String> = ["red", "Blue", "yellow"].iter().map(|s| s.to_string()).collect();
        let c = class_colours(&names);
        assert!(c[0].0 > 200 && c[0].1 < 60 && c[0].2 < 60, "{:?}", c[0]);
        assert!(c[1].2 > 200 && c[1].0 < 60, "{:?}", c[1]);
        let mixed: Vec<String> = ["red", "circle"].iter().map(|s| s.to_string()).collect();
        assert_eq!(class_colours(&mixed), vec![color(0), color(1)]);
    }

    #[test]
    fn diverging_is_white_at_the_centre_and_opposite_at_the_ends() {
        assert_eq!(diverging(0.5), RGBColor(247, 247, 247));
        let (lo, hi) = (diverging(0.0), diverging(1.0));
        assert!(lo.2 > lo.0 && hi.0 > hi.2);
    }

    #[test]
    fn wrap_keeps_every_word_and_respects_the_width() {
        let t = "colour: PCA of tower=vision/site=resid/layer=4/selector=cls on 1000 samples";
        let lines = wrap(t, 30);
        assert!(lines.len() > 1);
        assert_eq!(lines.join(" "), t);
        assert!(lines.iter().all(|l| l.chars().count() <= 30 || !l.contains(' ')));
    }
}
