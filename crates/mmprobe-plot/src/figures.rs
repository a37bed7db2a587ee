//! The figures a paper would show: accuracy by layer, 2-D projections,
//! projection histograms, heatmaps, the modality gap, and what an
//! intervention changes (by layer, per measured concept, against its
//! strength). Titles wrap, and every legend sits beside the data, never on it.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::canvas::{Drawn, Figure, e, range};
use crate::style::{FAMILY, class_colours, color, diverging, is_light, viridis, wrap};

/// Width of the legend column beside the data.
const LEGEND_WIDTH: u32 = 230;

/// Draws `text` as a centred title, wrapped to the area's width; returns the
/// area below it.
fn titled<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    text: &str,
    size: u32,
) -> Result<DrawingArea<DB, Shift>, String> {
    if text.trim().is_empty() {
        return Ok(root.clone());
    }
    let (w, _) = root.dim_in_pixel();
    let per_line = ((w as f64 - 20.0) / (size as f64 * 0.56)).max(10.0) as usize;
    let lines = wrap(text, per_line);
    let line_h = size as i32 + 6;
    let height = 10 + line_h * lines.len() as i32;
    let (top, rest) = root.split_vertically(height);
    let style = TextStyle::from((FAMILY, size).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
    for (i, line) in lines.iter().enumerate() {
        top.draw(&Text::new(line.clone(), (w as i32 / 2, 6 + line_h * i as i32), style.clone())).map_err(e)?;
    }
    Ok(rest)
}

/// How a legend entry is drawn.
#[derive(Debug, Clone, Copy)]
pub enum Mark {
    Line,
    Dashed,
    Dotted,
    Dot,
    Square,
    HollowSquare,
    Triangle,
    Band,
    Swatch,
    /// A vertical interval with caps.
    Whisker,
}

/// One legend entry.
#[derive(Debug, Clone)]
pub struct Key {
    pub mark: Mark,
    pub colour: RGBColor,
    pub text: String,
}

impl Key {
    pub fn new(mark: Mark, colour: RGBColor, text: impl Into<String>) -> Key {
        Key { mark, colour, text: text.into() }
    }
}

/// A legend as a column of entries in its own area (beside the data).
fn draw_keys<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, keys: &[Key], top: i32) -> Drawn {
    let (w, _) = area.dim_in_pixel();
    let per_line = ((w as i32 - 44) / 8).max(8) as usize;
    let mut y = top;
    for k in keys {
        let c = k.colour;
        let (x0, x1, cy) = (8, 32, y + 8);
        match k.mark {
            Mark::Line => area.draw(&PathElement::new(vec![(x0, cy), (x1, cy)], c.stroke_width(3))).map_err(e)?,
            Mark::Dashed => {
                for s in [x0, x0 + 9, x0 + 18] {
                    area.draw(&PathElement::new(vec![(s, cy), (s + 6, cy)], c.stroke_width(2))).map_err(e)?
                }
            }
            Mark::Dotted => {
                for s in (x0..x1).step_by(5) {
                    area.draw(&PathElement::new(vec![(s, cy), (s + 2, cy)], c.stroke_width(1))).map_err(e)?
                }
            }
            Mark::Dot => {
                area.draw(&Circle::new((x0 + 12, cy), 5, c.filled())).map_err(e)?;
                if is_light(c) {
                    area.draw(&Circle::new((x0 + 12, cy), 5, BLACK.mix(0.6))).map_err(e)?;
                }
            }
            Mark::Square => area.draw(&Rectangle::new([(x0 + 7, cy - 5), (x0 + 17, cy + 5)], c.filled())).map_err(e)?,
            Mark::HollowSquare => {
                area.draw(&Rectangle::new([(x0 + 7, cy - 5), (x0 + 17, cy + 5)], c.stroke_width(2))).map_err(e)?
            }
            Mark::Triangle => area.draw(&TriangleMarker::new((x0 + 12, cy), 6, c.filled())).map_err(e)?,
            Mark::Swatch => {
                area.draw(&Rectangle::new([(x0 + 4, cy - 6), (x1 - 4, cy + 6)], c.mix(0.6).filled())).map_err(e)?
            }
            Mark::Band => area.draw(&Rectangle::new([(x0, cy - 6), (x1, cy + 6)], c.mix(0.25).filled())).map_err(e)?,
            Mark::Whisker => {
                let mid = (x0 + x1) / 2;
                for (a, b) in [
                    ((mid, cy - 8), (mid, cy + 8)),
                    ((mid - 5, cy - 8), (mid + 5, cy - 8)),
                    ((mid - 5, cy + 8), (mid + 5, cy + 8)),
                ] {
                    area.draw(&PathElement::new(vec![a, b], c.stroke_width(2))).map_err(e)?;
                }
            }
        }
        for line in wrap(&k.text, per_line) {
            area.draw(&Text::new(line, (x1 + 8, y), (FAMILY, 14))).map_err(e)?;
            y += 18;
        }
        y += 4;
    }
    Ok(())
}

/// One layer's probe score with its interval and control-task score.
#[derive(Debug, Clone, Copy)]
pub struct CurvePoint {
    pub layer: f64,
    pub score: f64,
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
    pub control: Option<f64>,
}

/// One line of a layer curve: a site and selector of one tower.
#[derive(Debug, Clone)]
pub struct Curve {
    pub label: String,
    pub points: Vec<CurvePoint>,
}

/// One tower's curves, and its embeds as the last point.
#[derive(Debug, Clone)]
pub struct TowerCurves {
    pub tower: String,
    pub curves: Vec<Curve>,
    pub embeds: Option<CurvePoint>,
}

/// Probe score by layer for one concept, one panel per tower: a line per
/// site/selector (by colour), its 95% interval as a band, its control task
/// dashed, the embeds as a square after the last layer, chance dotted.
pub struct LayerCurves {
    pub name: String,
    pub title: String,
    pub panels: Vec<TowerCurves>,
    pub chance: f64,
    /// How chance is named in the legend, e.g. "chance (1/8 classes) 0.125".
    pub chance_label: String,
    pub metric: String,
    /// The x axis: "layer" for layer curves, "k (features kept)" for sparse probes.
    pub x_label: String,
}

impl LayerCurves {
    /// Every curve label across panels, sorted: one colour per label in every panel.
    fn labels(&self) -> Vec<String> {
        let mut v: Vec<String> = self.panels.iter().flat_map(|p| p.curves.iter().map(|c| c.label.clone())).collect();
        v.sort();
        v.dedup();
        v
    }

    /// The legend: a solid and a dashed entry per curve label, then the shared marks.
    fn keys(&self) -> Vec<Key> {
        let labels = self.labels();
        let mut keys: Vec<Key> = Vec::new();
        let has_control =
            self.panels.iter().flat_map(|p| &p.curves).any(|c| c.points.iter().any(|p| p.control.is_some()));
        for (i, l) in labels.iter().enumerate() {
            keys.push(Key::new(Mark::Line, color(i), l.clone()));
            if has_control {
                keys.push(Key::new(Mark::Dashed, color(i), format!("{l}: control task")));
            }
        }
        keys.push(Key::new(Mark::Band, BLACK, "shaded: 95% interval"));
        if self.panels.iter().any(|p| p.embeds.is_some()) {
            keys.push(Key::new(Mark::Square, BLACK, "embeds (pooled), bar: 95% interval"));
            if self.panels.iter().any(|p| p.embeds.is_some_and(|q| q.control.is_some())) {
                keys.push(Key::new(Mark::HollowSquare, BLACK, "embeds: control task"));
            }
        }
        keys.push(Key::new(Mark::Dotted, BLACK, self.chance_label.clone()));
        keys
    }

    fn y_range(&self) -> (f64, f64) {
        score_range(
            self.panels.iter().flat_map(|p| p.curves.iter().flat_map(|c| c.points.iter()).chain(&p.embeds)),
            self.chance,
        )
    }
}

/// Every finite score, interval end and control value of `points`.
fn values<'a>(points: impl Iterator<Item = &'a CurvePoint>) -> impl Iterator<Item = f64> {
    points.flat_map(|q| [Some(q.score), q.ci_low, q.ci_high, q.control].into_iter().flatten().filter(|v| v.is_finite()))
}

/// The y extent of probe scores: from 0 (lower when a value or chance is
/// negative) to just above 1 (further when a compression exceeds it).
pub fn score_range<'a>(points: impl Iterator<Item = &'a CurvePoint>, chance: f64) -> (f64, f64) {
    let (lo, hi) = values(points).fold((0.0f64, 0.0f64), |(a, b), v| (a.min(v), b.max(v)));
    let lo = lo.min(chance);
    let lo = if lo < 0.0 { lo - 0.05 } else { 0.0 };
    (lo, if hi > 1.0 { hi * 1.05 } else { 1.02 })
}

/// The y extent of signed values (effects), always showing 0.
pub fn effect_range<'a>(points: impl Iterator<Item = &'a CurvePoint>) -> (f64, f64) {
    range(values(points).chain([0.0]))
}

impl Figure for LayerCurves {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn size(&self) -> (u32, u32) {
        // Tall enough for the legend column (an entry is about 24 px).
        (LEGEND_WIDTH + 520 * self.panels.len().max(1) as u32, (100 + 26 * self.keys().len() as u32).max(560))
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Drawn {
        let body = titled(root, &self.title, 22)?;
        let (w, _) = body.dim_in_pixel();
        let (plots, legend) = body.split_horizontally(w as i32 - LEGEND_WIDTH as i32);
        let labels = self.labels();
        let colour_of = |label: &str| color(labels.iter().position(|l| l == label).unwrap_or(0));
        let y = self.y_range();
        let areas = plots.split_evenly((1, self.panels.len().max(1)));
        for (area, panel) in areas.iter().zip(&self.panels) {
            let last = panel.curves.iter().flat_map(|c| c.points.iter().map(|p| p.layer)).fold(0.0, f64::max);
            let embeds_x = panel.embeds.map(|_| last + 1.0);
            let frame = Frame {
                caption: format!("{} tower", panel.tower),
                x: (0.0, embeds_x.unwrap_or(last).max(1.0)),
                y,
                x_label: &self.x_label,
                y_label: &self.metric,
                ticks: Ticks::Layers { embeds: embeds_x },
                reference: Some((self.chance, "chance")),
                whiskers: false,
                emphasis: None,
            };
            draw_curves(area, &frame, &panel.curves, &colour_of, panel.embeds.zip(embeds_x))?;
        }
        draw_keys(&legend, &self.keys(), 50)
    }
}

/// A y tick as plotters writes it, but 0 never as "-0.0" (a tick computed
/// just below zero on a signed axis).
fn y_tick(v: &f64) -> String {
    let printer = plotters::data::float::FloatPrettyPrinter { allow_scientific: false, min_decimal: 1, max_decimal: 5 };
    printer.print(if v.abs() < 1e-12 { 0.0 } else { *v })
}

/// How the x axis of a curve panel is ticked.
#[derive(Debug, Clone, Copy)]
pub enum Ticks {
    /// Whole numbers only (layers, k), `embeds` written at that x.
    Layers { embeds: Option<f64> },
    /// Plain values (a steering strength).
    Values,
}

/// The frame of one panel of curves: axes, and the horizontal reference line
/// (chance, no effect) drawn dotted and named on the plot.
pub struct Frame<'a> {
    pub caption: String,
    /// The data's x extent (layers: the axis adds 0.3 either side).
    pub x: (f64, f64),
    pub y: (f64, f64),
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub ticks: Ticks,
    pub reference: Option<(f64, &'a str)>,
    /// Intervals as a whisker at each point instead of a shaded band (a band
    /// needs two points; an effect measured at one layer is still drawn).
    pub whiskers: bool,
    /// The curve with this label is drawn wider: the figure's headline.
    pub emphasis: Option<&'a str>,
}

/// One panel of curves: a line per curve (by colour), its interval shaded or
/// as whiskers, its `control` dashed in the same colour, the embeds point as
/// a black square after the last layer, the reference line dotted.
pub fn draw_curves<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    f: &Frame,
    curves: &[Curve],
    colour_of: &dyn Fn(&str) -> RGBColor,
    embeds: Option<(CurvePoint, f64)>,
) -> Drawn {
    let (x0, x1) = match f.ticks {
        Ticks::Layers { .. } => (f.x.0 - 0.3, f.x.1 + 0.3),
        Ticks::Values => f.x,
    };
    let mut chart = ChartBuilder::on(area)
        .caption(&f.caption, (FAMILY, 19))
        .margin(10)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, f.y.0..f.y.1)
        .map_err(e)?;
    let embeds_x = match f.ticks {
        Ticks::Layers { embeds } => embeds,
        Ticks::Values => None,
    };
    let layers = matches!(f.ticks, Ticks::Layers { .. });
    let fmt_x = move |v: &f64| {
        if !layers {
            // 0.5, 1, 2.5: no trailing zeros.
            format!("{v:.2}").trim_end_matches('0').trim_end_matches('.').to_string()
        } else if (v - v.round()).abs() > 1e-9 {
            String::new()
        } else if embeds_x.is_some_and(|x| (x - v).abs() < 1e-9) {
            "embeds".to_string()
        } else {
            format!("{v:.0}")
        }
    };
    let x_labels = if layers { (f.x.1 as usize + 1).min(25) } else { 8 };
    chart
        .configure_mesh()
        .x_desc(f.x_label)
        .x_labels(x_labels)
        .x_label_formatter(&fmt_x)
        .y_label_formatter(&y_tick)
        .y_desc(f.y_label)
        .label_style((FAMILY, 14))
        .axis_desc_style((FAMILY, 16))
        .light_line_style(WHITE)
        .draw()
        .map_err(e)?;
    if let Some((level, name)) = f.reference {
        chart
            .draw_series(DashedLineSeries::new(vec![(x0, level), (x1, level)], 2, 4, BLACK.stroke_width(1)))
            .map_err(e)?;
        chart
            .draw_series(std::iter::once(Text::new(
                name.to_string(),
                (x0 + 0.05 * (x1 - x0).min(1.0), level),
                TextStyle::from((FAMILY, 12)).pos(Pos::new(HPos::Left, VPos::Bottom)),
            )))
            .map_err(e)?;
    }
    for c in curves {
        let col = colour_of(&c.label);
        let width = if f.emphasis == Some(c.label.as_str()) { 5 } else { 3 };
        let intervals: Vec<(f64, f64, f64)> =
            c.points.iter().filter_map(|p| Some((p.layer, p.ci_low?, p.ci_high?))).collect();
        if f.whiskers {
            for &(x, lo, hi) in &intervals {
                chart
                    .draw_series(std::iter::once(PathElement::new(vec![(x, lo), (x, hi)], col.stroke_width(2))))
                    .map_err(e)?;
                for y in [lo, hi] {
                    chart
                        .draw_series(std::iter::once(
                            EmptyElement::at((x, y)) + PathElement::new(vec![(-6, 0), (6, 0)], col.stroke_width(2)),
                        ))
                        .map_err(e)?;
                }
            }
        } else {
            let band: Vec<(f64, f64)> = c
                .points
                .iter()
                .filter_map(|p| p.ci_high.map(|hi| (p.layer, hi)))
                .chain(c.points.iter().rev().filter_map(|p| p.ci_low.map(|lo| (p.layer, lo))))
                .collect();
            if band.len() >= 3 {
                chart.draw_series(std::iter::once(Polygon::new(band, col.mix(0.18).filled()))).map_err(e)?;
            }
        }
        let control: Vec<(f64, f64)> = c.points.iter().filter_map(|p| p.control.map(|v| (p.layer, v))).collect();
        if control.len() > 1 {
            chart.draw_series(DashedLineSeries::new(control, 8, 5, col.stroke_width(2))).map_err(e)?;
        } else if let Some(&(x, y)) = control.first() {
            chart.draw_series(std::iter::once(Circle::new((x, y), 4, col.stroke_width(2)))).map_err(e)?;
        }
        chart
            .draw_series(LineSeries::new(c.points.iter().map(|p| (p.layer, p.score)), col.stroke_width(width)))
            .map_err(e)?;
        chart
            .draw_series(c.points.iter().map(|p| Circle::new((p.layer, p.score), width + 1, col.filled())))
            .map_err(e)?;
    }
    if let Some((p, x)) = embeds {
        if let (Some(lo), Some(hi)) = (p.ci_low, p.ci_high) {
            chart
                .draw_series(std::iter::once(PathElement::new(vec![(x, lo), (x, hi)], BLACK.stroke_width(2))))
                .map_err(e)?;
        }
        chart
            .draw_series(std::iter::once(
                EmptyElement::at((x, p.score)) + Rectangle::new([(-6, -6), (6, 6)], BLACK.filled()),
            ))
            .map_err(e)?;
        if let Some(c) = p.control {
            chart
                .draw_series(std::iter::once(
                    EmptyElement::at((x, c)) + Rectangle::new([(-5, -5), (5, 5)], BLACK.stroke_width(2)),
                ))
                .map_err(e)?;
        }
    }
    Ok(())
}

/// Points in 2-D coloured by class; a panel whose states are all equal is
/// marked as constant instead of drawn as one dot.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub xy: Vec<(f64, f64)>,
    pub class: Vec<usize>,
    pub x_label: String,
    pub y_label: String,
    pub constant: bool,
}

/// One or more scatter panels (small multiples) sharing a class legend.
pub struct Scatter {
    pub name: String,
    pub title: String,
    pub panels: Vec<Panel>,
    pub class_names: Vec<String>,
}

fn draw_panel<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, p: &Panel, names: &[String], small: bool) -> Drawn {
    let font = if small { 14 } else { 18 };
    if p.constant {
        let inner = titled(area, &p.title, font)?;
        let (w, h) = inner.dim_in_pixel();
        inner.draw(&Rectangle::new([(6, 4), (w as i32 - 6, h as i32 - 6)], BLACK.mix(0.3))).map_err(e)?;
        let style = TextStyle::from((FAMILY, 13)).pos(Pos::new(HPos::Center, VPos::Center));
        for (i, line) in ["constant states:", "every sample has", "the same vector here"].iter().enumerate() {
            inner
                .draw(&Text::new(*line, (w as i32 / 2, h as i32 / 2 - 18 + 18 * i as i32), style.clone()))
                .map_err(e)?;
        }
        return Ok(());
    }
    let colours = class_colours(names);
    let (x0, x1) = range(p.xy.iter().map(|v| v.0));
    let (y0, y1) = range(p.xy.iter().map(|v| v.1));
    let inner = titled(area, &p.title, font)?;
    let mut chart = ChartBuilder::on(&inner)
        .margin(6)
        .x_label_area_size(if small { 22 } else { 40 })
        .y_label_area_size(if small { 38 } else { 60 })
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(e)?;
    let mut mesh = chart.configure_mesh();
    mesh.label_style((FAMILY, if small { 10 } else { 14 })).x_labels(4).y_labels(4).light_line_style(WHITE);
    if !small {
        mesh.x_desc(&p.x_label).y_desc(&p.y_label).axis_desc_style((FAMILY, 16));
    }
    mesh.draw().map_err(e)?;
    let r = if small { 2 } else { 3 };
    for (k, col) in colours.iter().enumerate() {
        let col = *col;
        let pts: Vec<(f64, f64)> = p.xy.iter().zip(&p.class).filter(|(_, c)| **c == k).map(|(v, _)| *v).collect();
        chart.draw_series(pts.iter().map(|v| Circle::new(*v, r, col.mix(0.75).filled()))).map_err(e)?;
        if is_light(col) {
            chart.draw_series(pts.iter().map(|v| Circle::new(*v, r, BLACK.mix(0.5)))).map_err(e)?;
        }
    }
    Ok(())
}

fn class_keys(names: &[String]) -> Vec<Key> {
    class_colours(names).into_iter().zip(names).map(|(c, n)| Key::new(Mark::Dot, c, n.clone())).collect()
}

impl Figure for Scatter {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn size(&self) -> (u32, u32) {
        // Tall enough for one legend entry per class (about 22 px each).
        let legend = 60 + 22 * self.class_names.len() as u32;
        match self.panels.len() {
            1 => (780 + LEGEND_WIDTH - 60, legend.max(680)),
            n => (1100 + LEGEND_WIDTH - 60, (100 + 280 * n.div_ceil(4) as u32).max(420).max(legend)),
        }
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Drawn {
        let body = titled(root, &self.title, 20)?;
        let (w, _) = body.dim_in_pixel();
        let (data, legend) = body.split_horizontally(w as i32 - (LEGEND_WIDTH as i32 - 60));
        if self.panels.len() == 1 {
            draw_panel(&data, &self.panels[0], &self.class_names, false)?;
        } else {
            let rows = self.panels.len().div_ceil(4);
            for (area, p) in data.split_evenly((rows, 4)).iter().zip(&self.panels) {
                draw_panel(area, p, &self.class_names, true)?;
            }
        }
        draw_keys(&legend, &class_keys(&self.class_names), 30)
    }
}

/// Histograms of projections on a concept direction, one per class, overlaid.
pub struct Histograms {
    pub name: String,
    pub title: String,
    pub values: Vec<Vec<f64>>,
    pub class_names: Vec<String>,
    pub x_label: String,
}

impl Figure for Histograms {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn size(&self) -> (u32, u32) {
        (900 + LEGEND_WIDTH - 60, (60 + 22 * self.class_names.len() as u32).max(560))
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Drawn {
        let body = titled(root, &self.title, 20)?;
        let (w, _) = body.dim_in_pixel();
        let (data, legend) = body.split_horizontally(w as i32 - (LEGEND_WIDTH as i32 - 60));
        let colours = class_colours(&self.class_names);
        let (lo, hi) = range(self.values.iter().flatten().copied());
        let bins = 30;
        let width = (hi - lo) / bins as f64;
        let counts: Vec<Vec<f64>> = self
            .values
            .iter()
            .map(|v| {
                let mut c = vec![0.0; bins];
                for &x in v.iter().filter(|x| x.is_finite()) {
                    c[(((x - lo) / width).max(0.0) as usize).min(bins - 1)] += 1.0 / v.len().max(1) as f64;
                }
                c
            })
            .collect();
        let top = counts.iter().flatten().fold(0.0f64, |a, &b| a.max(b)) * 1.1;
        let mut chart = ChartBuilder::on(&data)
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(lo..hi, 0.0..top.max(1e-9))
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc(&self.x_label)
            .y_desc("fraction of the class")
            .label_style((FAMILY, 14))
            .axis_desc_style((FAMILY, 16))
            .light_line_style(WHITE)
            .draw()
            .map_err(e)?;
        for (k, c) in counts.iter().enumerate() {
            let col = colours[k];
            chart
                .draw_series(c.iter().enumerate().filter(|(_, h)| **h > 0.0).map(|(b, &h)| {
                    let x0 = lo + b as f64 * width;
                    Rectangle::new([(x0, 0.0), (x0 + width, h)], col.mix(0.4).filled())
                }))
                .map_err(e)?;
            // The outline keeps overlapping classes apart.
            let outline: Vec<(f64, f64)> = c
                .iter()
                .enumerate()
                .flat_map(|(b, &h)| [(lo + b as f64 * width, h), (lo + (b + 1) as f64 * width, h)])
                .collect();
            chart.draw_series(LineSeries::new(outline, col.stroke_width(2))).map_err(e)?;
        }
        let keys: Vec<Key> =
            colours.iter().zip(&self.class_names).map(|(c, n)| Key::new(Mark::Swatch, *c, n.clone())).collect();
        draw_keys(&legend, &keys, 30)
    }
}

/// A labelled square matrix (CKA, cosines), names on both axes; `diverging`
/// draws a blue-white-red map centred on 0 (for signed values).
pub struct Heatmap {
    pub name: String,
    pub title: String,
    pub labels: Vec<String>,
    pub values: Vec<Vec<f64>>,
    pub lo: f64,
    pub hi: f64,
    pub diverging: bool,
    /// What the colour scale measures, e.g. "linear CKA".
    pub scale_label: String,
}

impl Heatmap {
    fn cell(&self) -> u32 {
        (720 / self.labels.len().max(1) as u32).clamp(16, 70)
    }

    fn label_space(&self) -> u32 {
        let longest = self.labels.iter().map(|l| l.chars().count()).max().unwrap_or(4) as u32;
        (longest * 7 + 16).min(360)
    }

    fn colour(&self, v: f64) -> RGBColor {
        let t = (v - self.lo) / (self.hi - self.lo).max(1e-12);
        if !v.is_finite() {
            RGBColor(200, 200, 200)
        } else if self.diverging {
            diverging(t)
        } else {
            viridis(t)
        }
    }
}

impl Figure for Heatmap {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn size(&self) -> (u32, u32) {
        let side = self.cell() * self.labels.len() as u32;
        let title_lines = wrap(&self.title, 70).len() as u32;
        (self.label_space() + side + 150, self.label_space() + side + 40 + 28 * title_lines)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Drawn {
        let n = self.labels.len();
        let body = titled(root, &self.title, 20)?;
        let (w, _) = body.dim_in_pixel();
        let (main, scale) = body.split_horizontally(w as i32 - 130);
        let space = self.label_space();
        let mut chart = ChartBuilder::on(&main)
            .margin(8)
            .x_label_area_size(space)
            .y_label_area_size(space)
            // A segmented 0..n-1 has n cells, labels at their centres.
            .build_cartesian_2d((0..n.saturating_sub(1)).into_segmented(), (0..n.saturating_sub(1)).into_segmented())
            .map_err(e)?;
        // Row 0 at the top, as a matrix is read.
        let labels = self.labels.clone();
        let row_name = |v: &SegmentValue<usize>| match v {
            SegmentValue::CenterOf(i) if *i < labels.len() => labels[labels.len() - 1 - *i].clone(),
            _ => String::new(),
        };
        let size = if n > 30 { 10 } else { 12 };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(n)
            .y_labels(n)
            .x_label_formatter(&|_| String::new())
            .y_label_formatter(&row_name)
            .y_label_style((FAMILY, size))
            .draw()
            .map_err(e)?;
        // Column names, turned a quarter clockwise and hung below each column.
        let turned = TextStyle::from((FAMILY, size).into_font()).transform(FontTransform::Rotate90);
        // Backend pixels, made relative to `main` (which starts below the title).
        let (bx, by) = main.get_base_pixel();
        let bottom = chart.plotting_area().get_pixel_range().1.end - by;
        for (j, l) in self.labels.iter().enumerate() {
            let (px, _) = chart.backend_coord(&(SegmentValue::CenterOf(j), SegmentValue::CenterOf(0)));
            main.draw(&Text::new(l.clone(), (px - bx + size / 2, bottom + 6), turned.clone())).map_err(e)?;
        }
        chart
            .draw_series((0..n).flat_map(|i| (0..n).map(move |j| (i, j))).map(|(i, j)| {
                let y = n - 1 - i;
                Rectangle::new(
                    [
                        (SegmentValue::Exact(j), SegmentValue::Exact(y)),
                        (SegmentValue::Exact(j + 1), SegmentValue::Exact(y + 1)),
                    ],
                    self.colour(self.values[i][j]).filled(),
                )
            }))
            .map_err(e)?;
        if self.cell() >= 34 {
            let style = TextStyle::from((FAMILY, 12)).pos(Pos::new(HPos::Center, VPos::Center));
            chart
                .draw_series((0..n).flat_map(|i| (0..n).map(move |j| (i, j))).filter_map(|(i, j)| {
                    let v = self.values[i][j];
                    let c = self.colour(v);
                    let dark = 0.299 * c.0 as f64 + 0.587 * c.1 as f64 + 0.114 * c.2 as f64 <= 128.0;
                    let s = style.color(if dark { &WHITE } else { &BLACK });
                    v.is_finite().then(|| {
                        Text::new(format!("{v:.2}"), (SegmentValue::CenterOf(j), SegmentValue::CenterOf(n - 1 - i)), s)
                    })
                }))
                .map_err(e)?;
        }
        // Colour scale.
        let (_, h) = scale.dim_in_pixel();
        let (top, bottom) = (40i32, (h as i32 - space as i32).max(160));
        for y in top..bottom {
            let t = 1.0 - (y - top) as f64 / (bottom - top) as f64;
            let c = self.colour(self.lo + t * (self.hi - self.lo));
            scale.draw(&Rectangle::new([(20, y), (45, y + 1)], c.filled())).map_err(e)?;
        }
        scale.draw(&Rectangle::new([(20, top), (45, bottom)], BLACK.mix(0.4))).map_err(e)?;
        for (t, v) in [(0.0, self.lo), (0.5, (self.lo + self.hi) / 2.0), (1.0, self.hi)] {
            let y = bottom - ((bottom - top) as f64 * t) as i32;
            scale.draw(&Text::new(format!("{v:.2}"), (50, y - 7), (FAMILY, 13))).map_err(e)?;
        }
        scale.draw(&Text::new(self.scale_label.clone(), (12, top - 26), (FAMILY, 13))).map_err(e)?;
        Ok(())
    }
}

/// Image and text embeds in one 2-D PCA; a few pairs joined by thin lines
/// drawn under the points.
pub struct ModalityGap {
    pub image: Vec<(f64, f64)>,
    pub text: Vec<(f64, f64)>,
    pub gap: f64,
    /// How many pairs (the first ones of a seeded subsample) are joined.
    pub joined: usize,
}

impl Figure for ModalityGap {
    fn name(&self) -> String {
        "modality_gap".into()
    }

    fn size(&self) -> (u32, u32) {
        (760 + LEGEND_WIDTH - 60, 680)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Drawn {
        let joined = self.joined.min(self.image.len());
        let body = titled(
            root,
            &format!(
                "Modality gap {:.3}: {} image and text embeds (L2-normalised) in one PCA",
                self.gap,
                self.image.len()
            ),
            20,
        )?;
        let (w, _) = body.dim_in_pixel();
        let (data, legend) = body.split_horizontally(w as i32 - (LEGEND_WIDTH as i32 - 60));
        let (x0, x1) = range(self.image.iter().chain(&self.text).map(|v| v.0));
        let (y0, y1) = range(self.image.iter().chain(&self.text).map(|v| v.1));
        let mut chart = ChartBuilder::on(&data)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("PC 1")
            .y_desc("PC 2")
            .label_style((FAMILY, 14))
            .axis_desc_style((FAMILY, 16))
            .light_line_style(WHITE)
            .draw()
            .map_err(e)?;
        let grey = RGBColor(120, 120, 120);
        chart
            .draw_series(
                self.image
                    .iter()
                    .zip(&self.text)
                    .take(joined)
                    .map(|(a, b)| PathElement::new(vec![*a, *b], grey.mix(0.35).stroke_width(1))),
            )
            .map_err(e)?;
        let (ci, ct) = (color(4), color(3));
        chart.draw_series(self.image.iter().map(|v| Circle::new(*v, 3, ci.mix(0.7).filled()))).map_err(e)?;
        chart.draw_series(self.text.iter().map(|v| TriangleMarker::new(*v, 4, ct.mix(0.7).filled()))).map_err(e)?;
        let keys = vec![
            Key::new(Mark::Dot, ci, "image embeds"),
            Key::new(Mark::Triangle, ct, "text embeds"),
            Key::new(Mark::Line, grey, format!("{joined} of the pairs, joined")),
        ];
        draw_keys(&legend, &keys, 30)
    }
}

/// The colour of the concept an intervention acted on, in every intervention
/// figure; the other measured concepts take the rest of the palette.
pub const INTERVENED: RGBColor = crate::style::PALETTE[3];

/// The i-th colour other than [`INTERVENED`].
fn other_colour(i: usize) -> RGBColor {
    const OTHERS: [usize; 7] = [0, 1, 2, 4, 5, 6, 7];
    color(OTHERS[i % OTHERS.len()])
}

/// An intervention's effect by layer (after − before, a whisker per layer)
/// above the probe score of the same concept along the same tower's layers,
/// on one x axis: is the effect largest where the concept is most readable?
pub struct EffectByLayer {
    pub name: String,
    pub title: String,
    /// A curve per kind of edit; `score` is after − before.
    pub effect: Vec<Curve>,
    pub effect_caption: String,
    pub effect_label: String,
    /// The probe's curves along the tower's layers; empty: no panel.
    pub probe: Vec<Curve>,
    pub probe_caption: String,
    pub probe_metric: String,
    pub chance: f64,
    pub chance_label: String,
}

impl EffectByLayer {
    /// Vermillion, then colours the probe curves do not take.
    fn effect_colour(&self, label: &str) -> RGBColor {
        const EFFECT: [usize; 4] = [3, 5, 0, 7];
        color(EFFECT[self.effect.iter().position(|c| c.label == label).unwrap_or(0) % EFFECT.len()])
    }

    /// Blue, sky blue, green: never the effect's vermillion.
    fn probe_colour(&self, label: &str) -> RGBColor {
        const PROBE: [usize; 3] = [4, 1, 2];
        color(PROBE[self.probe.iter().position(|c| c.label == label).unwrap_or(0) % PROBE.len()])
    }

    fn effect_keys(&self) -> Vec<Key> {
        let mut keys: Vec<Key> =
            self.effect.iter().map(|c| Key::new(Mark::Line, self.effect_colour(&c.label), c.label.clone())).collect();
        keys.push(Key::new(Mark::Whisker, BLACK, "bar: 95% paired bootstrap interval"));
        keys.push(Key::new(Mark::Dotted, BLACK, "no effect (0)"));
        keys
    }

    fn probe_keys(&self) -> Vec<Key> {
        if self.probe.is_empty() {
            return Vec::new();
        }
        let mut keys: Vec<Key> = self
            .probe
            .iter()
            .map(|c| Key::new(Mark::Line, self.probe_colour(&c.label), format!("probe: {}", c.label)))
            .collect();
        if self.probe.iter().any(|c| c.points.iter().any(|p| p.control.is_some())) {
            keys.push(Key::new(Mark::Dashed, BLACK, "dashed, same colour: control task"));
        }
        keys.push(Key::new(Mark::Band, BLACK, "shaded: 95% interval"));
        keys.push(Key::new(Mark::Dotted, BLACK, self.chance_label.clone()));
        keys
    }
}

impl Figure for EffectByLayer {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn size(&self) -> (u32, u32) {
        let panels = if self.probe.is_empty() { 1 } else { 2 };
        (LEGEND_WIDTH + 700, 120 + 380 * panels)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Drawn {
        let body = titled(root, &self.title, 20)?;
        let (w, h) = body.dim_in_pixel();
        let (plots, legend) = body.split_horizontally(w as i32 - LEGEND_WIDTH as i32);
        // One x axis for both panels, so a layer sits at the same place in each.
        let last = self.effect.iter().chain(&self.probe).flat_map(|c| &c.points).map(|p| p.layer).fold(0.0, f64::max);
        let x = (0.0, last.max(1.0));
        let effect = Frame {
            caption: self.effect_caption.clone(),
            x,
            y: effect_range(self.effect.iter().flat_map(|c| &c.points)),
            x_label: "layer",
            y_label: &self.effect_label,
            ticks: Ticks::Layers { embeds: None },
            reference: Some((0.0, "no effect")),
            whiskers: true,
            emphasis: None,
        };
        if self.probe.is_empty() {
            draw_curves(&plots, &effect, &self.effect, &|l| self.effect_colour(l), None)?;
            return draw_keys(&legend, &self.effect_keys(), 50);
        }
        let (top, bottom) = plots.split_vertically(h / 2);
        draw_curves(&top, &effect, &self.effect, &|l| self.effect_colour(l), None)?;
        let probe = Frame {
            caption: self.probe_caption.clone(),
            x,
            y: score_range(self.probe.iter().flat_map(|c| &c.points), self.chance),
            x_label: "layer",
            y_label: &self.probe_metric,
            ticks: Ticks::Layers { embeds: None },
            reference: Some((self.chance, "chance")),
            whiskers: false,
            emphasis: None,
        };
        draw_curves(&bottom, &probe, &self.probe, &|l| self.probe_colour(l), None)?;
        let (top_keys, bottom_keys) = legend.split_vertically(h / 2);
        draw_keys(&top_keys, &self.effect_keys(), 50)?;
        draw_keys(&bottom_keys, &self.probe_keys(), 50)
    }
}

/// One measured concept's change with its interval.
#[derive(Debug, Clone)]
pub struct Bar {
    pub label: String,
    pub value: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    /// The concept the intervention acted on.
    pub highlight: bool,
}

/// One metric's bars.
#[derive(Debug, Clone)]
pub struct BarPanel {
    pub title: String,
    pub bars: Vec<Bar>,
}

/// The change of every measured concept under one intervention, a panel per
/// metric, the intervened concept's bar in [`INTERVENED`] and the rest grey:
/// selective when only that bar moves.
pub struct EffectBars {
    pub name: String,
    pub title: String,
    pub panels: Vec<BarPanel>,
    pub y_label: String,
    pub highlight_label: String,
}

const GREY: RGBColor = RGBColor(165, 165, 165);

/// Columns of a grid of `n` panels.
fn grid(n: usize) -> (usize, usize) {
    let cols = n.clamp(1, 3);
    (n.div_ceil(cols).max(1), cols)
}

fn draw_bars<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, p: &BarPanel, y_label: &str) -> Drawn {
    let n = p.bars.len();
    let (y0, y1) = range(p.bars.iter().flat_map(|b| [b.value, b.ci_low, b.ci_high]).chain([0.0]));
    let (w, _) = area.dim_in_pixel();
    // Names go under their bar, wrapped to its slot.
    let per_line = ((w as usize).saturating_sub(80) / n.max(1) / 8).max(6);
    let lines = p.bars.iter().map(|b| wrap(&b.label, per_line).len()).max().unwrap_or(1);
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, (FAMILY, 17))
        .margin(10)
        .x_label_area_size(14 + 17 * lines as u32)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.6..n as f64 - 0.4, y0..y1)
        .map_err(e)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_label_formatter(&|_| String::new())
        .y_label_formatter(&y_tick)
        .y_desc(y_label)
        .label_style((FAMILY, 14))
        .axis_desc_style((FAMILY, 16))
        .light_line_style(WHITE)
        .draw()
        .map_err(e)?;
    chart
        .draw_series(std::iter::once(PathElement::new(vec![(-0.6, 0.0), (n as f64 - 0.4, 0.0)], BLACK.stroke_width(1))))
        .map_err(e)?;
    for (i, b) in p.bars.iter().enumerate() {
        let (x, col) = (i as f64, if b.highlight { INTERVENED } else { GREY });
        if b.value.is_finite() {
            chart
                .draw_series([
                    Rectangle::new([(x - 0.32, 0.0), (x + 0.32, b.value)], col.mix(0.6).filled()),
                    Rectangle::new([(x - 0.32, 0.0), (x + 0.32, b.value)], col.stroke_width(2)),
                ])
                .map_err(e)?;
        }
        if b.ci_low.is_finite() && b.ci_high.is_finite() {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(x, b.ci_low), (x, b.ci_high)],
                    BLACK.stroke_width(2),
                )))
                .map_err(e)?;
            for y in [b.ci_low, b.ci_high] {
                chart
                    .draw_series(std::iter::once(
                        EmptyElement::at((x, y)) + PathElement::new(vec![(-7, 0), (7, 0)], BLACK.stroke_width(2)),
                    ))
                    .map_err(e)?;
            }
        }
    }
    // Backend pixels made relative to `area`, as the heatmap's column names are.
    let (bx, by) = area.get_base_pixel();
    let style = TextStyle::from((FAMILY, 14)).pos(Pos::new(HPos::Center, VPos::Top));
    for (i, b) in p.bars.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(i as f64, y0));
        for (k, line) in wrap(&b.label, per_line).into_iter().enumerate() {
            let s = if b.highlight { style.color(&INTERVENED) } else { style.clone() };
            area.draw(&Text::new(line, (px - bx, py - by + 6 + 17 * k as i32), s)).map_err(e)?;
        }
    }
    Ok(())
}

impl Figure for EffectBars {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn size(&self) -> (u32, u32) {
        let (rows, cols) = grid(self.panels.len());
        let bars = self.panels.iter().map(|p| p.bars.len()).max().unwrap_or(1) as u32;
        (LEGEND_WIDTH + cols as u32 * (120 + 90 * bars).max(380), 80 + 400 * rows as u32)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Drawn {
        let body = titled(root, &self.title, 20)?;
        let (w, _) = body.dim_in_pixel();
        let (plots, legend) = body.split_horizontally(w as i32 - LEGEND_WIDTH as i32);
        for (area, p) in plots.split_evenly(grid(self.panels.len())).iter().zip(&self.panels) {
            draw_bars(area, p, &self.y_label)?;
        }
        let keys = [
            Key::new(Mark::Swatch, INTERVENED, self.highlight_label.clone()),
            Key::new(Mark::Swatch, GREY, "other measured concepts"),
            Key::new(Mark::Whisker, BLACK, "95% paired bootstrap interval"),
        ];
        draw_keys(&legend, &keys, 50)
    }
}

/// One panel of curves against a plain x (not layers).
#[derive(Debug, Clone)]
pub struct CurvePanel {
    pub title: String,
    pub y_label: String,
    /// The y extent; none: the data's.
    pub y: Option<(f64, f64)>,
    pub curves: Vec<Curve>,
}

/// A measurement against the steering strength, a panel per metric, a line
/// per measured concept, its unsteered value (`control`) dashed in the same
/// colour; the `emphasis` curve (the steered concept) wide and in [`INTERVENED`].
pub struct AlphaCurves {
    pub name: String,
    pub title: String,
    pub panels: Vec<CurvePanel>,
    pub x_label: String,
    pub emphasis: Option<String>,
}

impl AlphaCurves {
    /// Every curve label, the emphasised one first.
    fn labels(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for c in self.panels.iter().flat_map(|p| &p.curves) {
            if !v.contains(&c.label) {
                v.push(c.label.clone());
            }
        }
        v.sort_by_key(|l| Some(l) != self.emphasis.as_ref());
        v
    }

    fn colour(&self, labels: &[String], label: &str) -> RGBColor {
        if self.emphasis.as_deref() == Some(label) {
            return INTERVENED;
        }
        let others = labels.iter().filter(|l| Some(*l) != self.emphasis.as_ref());
        other_colour(others.take_while(|l| *l != label).count())
    }
}

impl Figure for AlphaCurves {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn size(&self) -> (u32, u32) {
        let (rows, cols) = grid(self.panels.len());
        let legend = 100 + 26 * (self.labels().len() as u32 + 2);
        (LEGEND_WIDTH + 520 * cols as u32, (80 + 420 * rows as u32).max(legend))
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Drawn {
        let body = titled(root, &self.title, 20)?;
        let (w, _) = body.dim_in_pixel();
        let (plots, legend) = body.split_horizontally(w as i32 - LEGEND_WIDTH as i32);
        let labels = self.labels();
        let colour_of = |l: &str| self.colour(&labels, l);
        let x = range(self.panels.iter().flat_map(|p| &p.curves).flat_map(|c| &c.points).map(|p| p.layer));
        for (area, p) in plots.split_evenly(grid(self.panels.len())).iter().zip(&self.panels) {
            let frame = Frame {
                caption: p.title.clone(),
                x,
                y: p.y.unwrap_or_else(|| range(values(p.curves.iter().flat_map(|c| &c.points)))),
                x_label: &self.x_label,
                y_label: &p.y_label,
                ticks: Ticks::Values,
                reference: None,
                whiskers: false,
                emphasis: self.emphasis.as_deref(),
            };
            draw_curves(area, &frame, &p.curves, &colour_of, None)?;
        }
        let mut keys: Vec<Key> = labels.iter().map(|l| Key::new(Mark::Line, colour_of(l), l.clone())).collect();
        keys.push(Key::new(Mark::Dashed, BLACK, "dashed, same colour: before (no steering)"));
        keys.push(Key::new(Mark::Band, BLACK, "shaded: 95% interval"));
        draw_keys(&legend, &keys, 50)
    }
}

/// A file-name-safe version of a label.
pub fn slug(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect()
}
