//! The figures a paper would show: accuracy by layer, 2-D projections,
//! projection histograms, heatmaps, and the modality gap.

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::canvas::{Drawn, Figure, e, range};
use crate::style::{FAMILY, color, viridis};

fn caption_font() -> (&'static str, u32) {
    (FAMILY, 22)
}

/// The series legend every figure draws: a light box at `position`.
fn draw_legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
    font_size: u32,
) -> Drawn {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font((FAMILY, font_size))
        .draw()
        .map_err(e)
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

/// One line of a layer curve.
#[derive(Debug, Clone)]
pub struct Curve {
    pub label: String,
    pub points: Vec<CurvePoint>,
}

/// Probe accuracy by layer for one concept: a line per tower/site/selector,
/// the 95% interval as a band, control accuracy dashed, chance dotted.
pub struct LayerCurves {
    pub concept: String,
    pub curves: Vec<Curve>,
    pub chance: f64,
    pub metric: String,
}

impl Figure for LayerCurves {
    fn name(&self) -> String {
        format!("layers_{}", slug(&self.concept))
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Drawn {
        let max_layer = self.curves.iter().flat_map(|c| c.points.iter().map(|p| p.layer)).fold(1.0, f64::max);
        let mut chart = ChartBuilder::on(root)
            .caption(format!("{}: probe {} by layer", self.concept, self.metric), caption_font())
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(-0.2..max_layer + 0.2, 0.0..1.02)
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("layer")
            .x_labels((max_layer as usize + 1).min(25))
            .x_label_formatter(&|v| if (v - v.round()).abs() < 1e-9 { format!("{v:.0}") } else { String::new() })
            .y_desc(&self.metric)
            .label_style((FAMILY, 15))
            .axis_desc_style((FAMILY, 17))
            .draw()
            .map_err(e)?;
        for (i, c) in self.curves.iter().enumerate() {
            let col = color(i);
            let band: Vec<(f64, f64)> = c
                .points
                .iter()
                .filter_map(|p| p.ci_high.map(|hi| (p.layer, hi)))
                .chain(c.points.iter().rev().filter_map(|p| p.ci_low.map(|lo| (p.layer, lo))))
                .collect();
            if band.len() >= 3 {
                chart.draw_series(std::iter::once(Polygon::new(band, col.mix(0.2).filled()))).map_err(e)?;
            }
            chart
                .draw_series(LineSeries::new(c.points.iter().map(|p| (p.layer, p.score)), col.stroke_width(3)))
                .map_err(e)?
                .label(c.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], col.stroke_width(3)));
            chart.draw_series(c.points.iter().map(|p| Circle::new((p.layer, p.score), 4, col.filled()))).map_err(e)?;
            let control: Vec<(f64, f64)> = c.points.iter().filter_map(|p| p.control.map(|v| (p.layer, v))).collect();
            if !control.is_empty() {
                chart
                    .draw_series(DashedLineSeries::new(control, 8, 5, col.stroke_width(2)))
                    .map_err(e)?
                    .label(format!("{} (control task)", c.label))
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 8, y), (x + 13, y), (x + 22, y)], col.stroke_width(2))
                    });
            }
        }
        let chance = self.chance;
        chart
            .draw_series(DashedLineSeries::new(
                vec![(-0.2, chance), (max_layer + 0.2, chance)],
                2,
                4,
                BLACK.stroke_width(1),
            ))
            .map_err(e)?
            .label(format!("chance ({chance:.2})"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], BLACK.stroke_width(1)));
        draw_legend(&mut chart, SeriesLabelPosition::LowerRight, 14)
    }
}

/// Points in 2-D coloured by class.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub xy: Vec<(f64, f64)>,
    pub class: Vec<usize>,
    pub x_label: String,
    pub y_label: String,
}

/// One or more scatter panels (small multiples) sharing a class legend.
pub struct Scatter {
    pub name: String,
    pub title: String,
    pub panels: Vec<Panel>,
    pub class_names: Vec<String>,
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    p: &Panel,
    names: &[String],
    legend: bool,
    small: bool,
) -> Drawn {
    let (x0, x1) = range(p.xy.iter().map(|v| v.0));
    let (y0, y1) = range(p.xy.iter().map(|v| v.1));
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, (FAMILY, if small { 15 } else { 20 }))
        .margin(6)
        .x_label_area_size(if small { 22 } else { 40 })
        .y_label_area_size(if small { 34 } else { 55 })
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(e)?;
    let mut mesh = chart.configure_mesh();
    mesh.label_style((FAMILY, if small { 10 } else { 14 })).x_labels(4).y_labels(4);
    if !small {
        mesh.x_desc(&p.x_label).y_desc(&p.y_label).axis_desc_style((FAMILY, 16));
    }
    mesh.draw().map_err(e)?;
    for (k, name) in names.iter().enumerate() {
        let col = color(k);
        let pts: Vec<(f64, f64)> = p.xy.iter().zip(&p.class).filter(|(_, c)| **c == k).map(|(v, _)| *v).collect();
        let s = chart
            .draw_series(pts.into_iter().map(|v| Circle::new(v, if small { 2 } else { 3 }, col.mix(0.75).filled())))
            .map_err(e)?;
        if legend {
            s.label(name.clone()).legend(move |(x, y)| Circle::new((x + 8, y), 4, col.filled()));
        }
    }
    if legend {
        draw_legend(&mut chart, SeriesLabelPosition::MiddleRight, 13)?;
    }
    Ok(())
}

impl Figure for Scatter {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn size(&self) -> (u32, u32) {
        match self.panels.len() {
            1 => (760, 620),
            n => (1200, (80 + 300 * n.div_ceil(4) as u32).max(420)),
        }
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Drawn {
        if self.panels.len() == 1 {
            return draw_panel(root, &self.panels[0], &self.class_names, true, false);
        }
        let titled = root.titled(&self.title, caption_font()).map_err(e)?;
        let (body, legend) = titled.split_vertically(titled.dim_in_pixel().1 as i32 - 30);
        let rows = self.panels.len().div_ceil(4);
        for (area, p) in body.split_evenly((rows, 4)).iter().zip(&self.panels) {
            draw_panel(area, p, &self.class_names, false, true)?;
        }
        // A shared legend along the bottom.
        let mut x = 20;
        for (k, n) in self.class_names.iter().enumerate() {
            legend.draw(&Circle::new((x, 12), 5, color(k).filled())).map_err(e)?;
            legend.draw(&Text::new(n.clone(), (x + 10, 4), (FAMILY, 14))).map_err(e)?;
            x += 22 + 9 * n.chars().count() as i32;
        }
        Ok(())
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

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Drawn {
        let (lo, hi) = range(self.values.iter().flatten().copied());
        let bins = 30;
        let width = (hi - lo) / bins as f64;
        let counts: Vec<Vec<f64>> = self
            .values
            .iter()
            .map(|v| {
                let mut c = vec![0.0; bins];
                for &x in v {
                    c[(((x - lo) / width) as usize).min(bins - 1)] += 1.0 / v.len().max(1) as f64;
                }
                c
            })
            .collect();
        let top = counts.iter().flatten().fold(0.0f64, |a, &b| a.max(b)) * 1.1;
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, caption_font())
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(lo..hi, 0.0..top.max(1e-9))
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc(&self.x_label)
            .y_desc("fraction of class")
            .label_style((FAMILY, 14))
            .axis_desc_style((FAMILY, 16))
            .draw()
            .map_err(e)?;
        for (k, c) in counts.iter().enumerate() {
            let col = color(k);
            chart
                .draw_series(c.iter().enumerate().map(|(b, &h)| {
                    let x0 = lo + b as f64 * width;
                    Rectangle::new([(x0, 0.0), (x0 + width, h)], col.mix(0.45).filled())
                }))
                .map_err(e)?
                .label(self.class_names[k].clone())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], col.mix(0.6).filled()));
        }
        draw_legend(&mut chart, SeriesLabelPosition::MiddleRight, 13)
    }
}

/// A labelled square matrix (CKA, cosines) with a viridis scale.
pub struct Heatmap {
    pub name: String,
    pub title: String,
    pub labels: Vec<String>,
    pub values: Vec<Vec<f64>>,
    pub lo: f64,
    pub hi: f64,
}

impl Figure for Heatmap {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn size(&self) -> (u32, u32) {
        let n = self.labels.len() as u32;
        let longest = self.labels.iter().map(|l| l.chars().count()).max().unwrap_or(4) as u32;
        let side = (160 + 24 * n).clamp(480, 1400);
        (side + 120 + (longest * 7).min(320), side)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Drawn {
        let n = self.labels.len();
        let (w, _) = root.dim_in_pixel();
        let (main, scale) = root.split_horizontally(w as i32 - 110);
        // Rows carry "name (i)", columns just i: long names never collide.
        let label_space = self.labels.iter().map(|l| l.chars().count()).max().unwrap_or(4) as u32 * 7 + 40;
        let mut chart = ChartBuilder::on(&main)
            .caption(&self.title, caption_font())
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(label_space.min(320))
            // A segmented 0..n-1 has n cells, labels at their centres.
            .build_cartesian_2d((0..n.saturating_sub(1)).into_segmented(), (0..n.saturating_sub(1)).into_segmented())
            .map_err(e)?;
        let labels = self.labels.clone();
        let name = move |v: &SegmentValue<usize>| match v {
            SegmentValue::CenterOf(i) if *i < labels.len() => format!("{} ({i})", labels[*i]),
            _ => String::new(),
        };
        let index = |v: &SegmentValue<usize>| match v {
            SegmentValue::CenterOf(i) => i.to_string(),
            _ => String::new(),
        };
        let font = (FAMILY, if n > 30 { 9 } else { 12 });
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(n)
            .y_labels(n)
            .x_label_formatter(&index)
            .y_label_formatter(&name)
            .label_style(font)
            .draw()
            .map_err(e)?;
        let span = (self.hi - self.lo).max(1e-12);
        chart
            .draw_series((0..n).flat_map(|i| (0..n).map(move |j| (i, j))).map(|(i, j)| {
                let v = self.values[i][j];
                let c = if v.is_finite() { viridis((v - self.lo) / span) } else { RGBColor(200, 200, 200) };
                Rectangle::new(
                    [
                        (SegmentValue::Exact(j), SegmentValue::Exact(i)),
                        (SegmentValue::Exact(j + 1), SegmentValue::Exact(i + 1)),
                    ],
                    c.filled(),
                )
            }))
            .map_err(e)?;
        // Colour scale.
        let (_, h) = scale.dim_in_pixel();
        let (top, bottom) = (50i32, h as i32 - 60);
        for y in top..bottom {
            let t = 1.0 - (y - top) as f64 / (bottom - top) as f64;
            scale.draw(&Rectangle::new([(20, y), (45, y + 1)], viridis(t).filled())).map_err(e)?;
        }
        for (t, v) in [(0.0, self.lo), (0.5, (self.lo + self.hi) / 2.0), (1.0, self.hi)] {
            let y = bottom - ((bottom - top) as f64 * t) as i32;
            scale.draw(&Text::new(format!("{v:.2}"), (50, y - 7), (FAMILY, 13))).map_err(e)?;
        }
        Ok(())
    }
}

/// Image and text embeds in one 2-D PCA, pairs joined by faint lines.
pub struct ModalityGap {
    pub image: Vec<(f64, f64)>,
    pub text: Vec<(f64, f64)>,
    pub gap: f64,
}

impl Figure for ModalityGap {
    fn name(&self) -> String {
        "modality_gap".into()
    }

    fn size(&self) -> (u32, u32) {
        (760, 620)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Drawn {
        let (x0, x1) = range(self.image.iter().chain(&self.text).map(|v| v.0));
        let (y0, y1) = range(self.image.iter().chain(&self.text).map(|v| v.1));
        let mut chart = ChartBuilder::on(root)
            .caption(format!("Modality gap {:.3} (embeds, joint PCA)", self.gap), caption_font())
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("PC 1")
            .y_desc("PC 2")
            .label_style((FAMILY, 14))
            .axis_desc_style((FAMILY, 16))
            .draw()
            .map_err(e)?;
        chart
            .draw_series(
                self.image.iter().zip(&self.text).map(|(a, b)| PathElement::new(vec![*a, *b], BLACK.mix(0.08))),
            )
            .map_err(e)?;
        let (ci, ct) = (color(4), color(3));
        chart
            .draw_series(self.image.iter().map(|v| Circle::new(*v, 3, ci.mix(0.8).filled())))
            .map_err(e)?
            .label("image")
            .legend(move |(x, y)| Circle::new((x + 8, y), 4, ci.filled()));
        chart
            .draw_series(self.text.iter().map(|v| TriangleMarker::new(*v, 4, ct.mix(0.8).filled())))
            .map_err(e)?
            .label("text")
            .legend(move |(x, y)| TriangleMarker::new((x + 8, y), 5, ct.filled()));
        draw_legend(&mut chart, SeriesLabelPosition::MiddleRight, 14)
    }
}

/// A file-name-safe version of a label.
pub fn slug(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect()
}
