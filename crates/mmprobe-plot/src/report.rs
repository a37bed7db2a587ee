//! `mmprobe report`: every figure of a store's results, and one self-contained
//! report.html (figures referenced from the folder beside it, no network):
//! a section per concept and tower, a caption under each figure saying what
//! to read from it, the best-layer table with chance, erasure, interventions
//! and geometry.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use mmprobe_analysis::directions::Method;
use mmprobe_analysis::labels::Target;
use mmprobe_analysis::sweep::geometry::{paired_embeds, subsample};
use mmprobe_analysis::sweep::load;
use mmprobe_analysis::tables::probes::ProbeMethod;
use mmprobe_analysis::tables::{self, CosineKind, InterventionRow, ProbeRow};
use mmprobe_store::{Partition, Selector, Site, Store, Tower};
use ndarray::{Array2, Axis};
use rayon::prelude::*;

use crate::canvas::save;
use crate::error::{PlotError, Result};
use crate::figures::{
    AlphaCurves, Curve, CurvePoint, EffectBars, EffectByLayer, Heatmap, Histograms, LayerCurves, ModalityGap, Panel,
    Scatter, TowerCurves, slug,
};
use crate::interventions;
use crate::project::{lda2, pca2};

/// Rows drawn in a scatter panel (a seeded subsample beyond this).
const SCATTER_ROWS: usize = 1000;

/// Image-text pairs joined by a line in the modality-gap figure.
const GAP_LINES: usize = 40;

/// What `mmprobe report` wrote.
pub struct ReportSummary {
    pub html: PathBuf,
    pub figures: Vec<PathBuf>,
    pub seconds: f64,
}

/// A class concept's rows on one partition, subsampled (seeded) for drawing.
struct ClassView {
    x: Array2<f64>,
    y: Vec<usize>,
    names: Vec<String>,
}

fn classes(l: &mmprobe_analysis::sweep::Loaded, concept: &str) -> Result<Option<ClassView>> {
    let c = l.concept(concept)?;
    let Target::Classes { y, names } = c.target else { return Ok(None) };
    let keep = subsample(y.len(), SCATTER_ROWS, 0);
    let rows: Vec<usize> = keep.iter().map(|&i| c.rows[i]).collect();
    Ok(Some(ClassView { x: l.x.select(Axis(0), &rows), y: keep.iter().map(|&i| y[i]).collect(), names }))
}

/// Every sample has the same state (to float rounding): nothing to project.
pub fn is_constant(x: &Array2<f64>) -> bool {
    x.columns().into_iter().all(|c| {
        let (lo, hi) = c.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
        hi - lo <= 1e-5 * (1.0 + lo.abs().max(hi.abs()))
    })
}

/// How many different rows `x` has, counting up to `cap`.
pub fn distinct_rows(x: &Array2<f64>, cap: usize) -> usize {
    let mut seen = std::collections::HashSet::new();
    for r in x.rows() {
        seen.insert(r.iter().map(|v| v.to_bits()).collect::<Vec<u64>>());
        if seen.len() >= cap {
            break;
        }
    }
    seen.len()
}

fn xy(m: &Array2<f64>) -> Vec<(f64, f64)> {
    m.rows().into_iter().map(|r| (r[0], r[1])).collect()
}

pub(crate) enum Job {
    Curves(LayerCurves),
    Scatter(Scatter),
    Hist(Histograms),
    Heat(Heatmap),
    Gap(ModalityGap),
    Effect(EffectByLayer),
    Bars(EffectBars),
    Alpha(AlphaCurves),
}

impl Job {
    fn save(&self, dir: &Path) -> Result<(PathBuf, PathBuf)> {
        match self {
            Job::Curves(f) => save(f, dir),
            Job::Scatter(f) => save(f, dir),
            Job::Hist(f) => save(f, dir),
            Job::Heat(f) => save(f, dir),
            Job::Gap(f) => save(f, dir),
            Job::Effect(f) => save(f, dir),
            Job::Bars(f) => save(f, dir),
            Job::Alpha(f) => save(f, dir),
        }
    }
}

/// A figure drawn, with its PNG and SVG paths.
pub(crate) type Placed<'f> = (&'f Fig, &'f (PathBuf, PathBuf));

/// A figure, the report section it belongs to, and what to read from it.
pub(crate) struct Fig {
    pub(crate) job: Job,
    pub(crate) section: String,
    pub(crate) caption: String,
}

/// A cross-validated score on every feature (what the curves draw; an MDL
/// or sparse row measures something else).
pub(crate) fn cross_validated(r: &ProbeRow) -> bool {
    r.method == ProbeMethod::Cv
}

fn concept_id(c: &str) -> String {
    format!("c-{}", slug(c))
}

fn tower_id(c: &str, t: Tower) -> String {
    format!("c-{}-{}", slug(c), t)
}

/// How chance is named: "chance: 1/8 classes = 0.125", "chance: R² = 0".
pub(crate) fn chance_label(r: &ProbeRow) -> String {
    if r.probe.classes() && r.majority.is_some() {
        format!("chance: majority {:.3}", r.chance())
    } else if r.probe.classes() {
        format!("chance: 1/{} classes = {:.3}", r.n_classes.max(1), r.chance())
    } else {
        format!("chance: {} = 0", r.probe.metric())
    }
}

pub(crate) fn point(r: &ProbeRow) -> CurvePoint {
    CurvePoint {
        layer: r.partition.layer as f64,
        score: r.score().unwrap_or(f64::NAN),
        ci_low: r.ci().0,
        ci_high: r.ci().1,
        control: r.control_accuracy,
    }
}

/// One panel per tower of `rows`: a curve per `label` along the layers, and
/// the first embeds row that `embeds` accepts as the point after the last layer.
pub(crate) fn tower_panels(
    rows: &[&ProbeRow],
    label: impl Fn(&ProbeRow) -> String,
    point: impl Fn(&ProbeRow) -> CurvePoint,
    embeds: impl Fn(&ProbeRow) -> bool,
) -> Vec<TowerCurves> {
    let mut towers: Vec<Tower> = rows.iter().map(|r| r.partition.tower).collect();
    towers.sort();
    towers.dedup();
    towers
        .iter()
        .map(|&t| {
            let mut by: BTreeMap<String, Vec<&ProbeRow>> = BTreeMap::new();
            for r in rows.iter().filter(|r| r.partition.tower == t && r.partition.site != Site::Embeds) {
                by.entry(label(r)).or_default().push(r);
            }
            let curves = by
                .into_iter()
                .map(|(label, mut v)| {
                    v.sort_by_key(|r| r.partition.layer);
                    Curve { label, points: v.iter().map(|r| point(r)).collect() }
                })
                .collect();
            let embeds = rows
                .iter()
                .filter(|r| r.partition.tower == t && r.partition.site == Site::Embeds && embeds(r))
                .min_by_key(|r| r.partition)
                .map(|r| point(r));
            TowerCurves { tower: t.to_string(), curves, embeds }
        })
        .collect()
}

/// One concept's layer curves: a panel per tower, a curve per site/selector,
/// the embeds as the last point.
fn layer_curves(c: &str, rows: &[&ProbeRow]) -> Option<Fig> {
    let first = rows.first()?;
    let panels = tower_panels(
        rows,
        // A linear probe's curve is named by its site and selector; other probes add their name.
        |r| {
            let kind = if r.probe.linear() { String::new() } else { format!(", {}", r.probe.as_str()) };
            format!("{} {}{kind}", r.partition.site, r.partition.selector)
        },
        point,
        |r| r.probe.linear(),
    );
    let metric = first.probe.metric();
    let embeds = if panels.iter().any(|p| p.embeds.is_some()) {
        "black square after the last layer: the embeds (pooled; Qwen2-VL: the mean of the merger's tokens) (bar: \
         its interval; hollow: its control); "
    } else {
        ""
    };
    Some(Fig {
        job: Job::Curves(LayerCurves {
            name: format!("layers_{}", slug(c)),
            title: format!("{c}: held-out probe {metric} by layer"),
            panels,
            chance: first.chance(),
            chance_label: chance_label(first),
            metric: metric.to_string(),
            x_label: "layer".to_string(),
        }),
        section: concept_id(c),
        caption: format!(
            "How well a linear probe reads <b>{c}</b> from each layer, one panel per tower. Solid lines: the \
             cross-validated {metric} of each site/selector, shaded: its 95% interval; dashed, same colour: the \
             control task (the same probe on labels assigned at random per type), so the distance between a solid \
             line and its dashed twin is the selectivity; {embeds}dotted: chance. A layer carries the concept when its band clears both chance and its control.",
            c = esc(c)
        ),
    })
}

/// MDL: compression by layer, one panel per tower, the control task's dashed.
fn compression_curves(c: &str, rows: &[&ProbeRow]) -> Option<Fig> {
    rows.first()?;
    let point = |r: &ProbeRow| CurvePoint {
        layer: r.partition.layer as f64,
        score: r.compression.unwrap_or(f64::NAN),
        ci_low: None,
        ci_high: None,
        control: r.control_compression,
    };
    let panels = tower_panels(rows, |r| format!("{} {}", r.partition.site, r.partition.selector), point, |_| true);
    Some(Fig {
        job: Job::Curves(LayerCurves {
            name: format!("compression_{}", slug(c)),
            title: format!("{c}: MDL compression by layer (online code)"),
            panels,
            chance: 1.0,
            chance_label: "uniform code (1)".into(),
            metric: "compression (uniform bits / online bits)".into(),
            x_label: "layer".into(),
        }),
        section: concept_id(c),
        caption: format!(
            "How easily <b>{c}</b> is extracted from each layer: the uniform codelength of its labels divided by the \
             online codelength (Voita &amp; Titov), one panel per tower. Higher means fewer bits once a probe has \
             seen earlier data; dashed, same colour: the control task on the same blocks. Read it next to the \
             accuracy curves: two layers with the same accuracy can differ in how much data the probe needed.",
            c = esc(c)
        ),
    })
}

/// Sparse probes: accuracy against k for the partitions that read the
/// concept best, one panel per tower.
fn sparse_curves(c: &str, rows: &[&ProbeRow]) -> Option<Fig> {
    let first = rows.first()?;
    let mut towers: Vec<Tower> = rows.iter().map(|r| r.partition.tower).collect();
    towers.sort();
    towers.dedup();
    let panels = towers
        .iter()
        .map(|&t| {
            let mut by: BTreeMap<Partition, Vec<&ProbeRow>> = BTreeMap::new();
            for r in rows.iter().filter(|r| r.partition.tower == t) {
                by.entry(r.partition).or_default().push(r);
            }
            // The four partitions with the best accuracy at their largest k.
            let mut series: Vec<(Partition, Vec<&ProbeRow>)> = by.into_iter().collect();
            let top = |v: &[&ProbeRow]| v.iter().max_by_key(|r| r.k).and_then(|r| r.accuracy).unwrap_or(0.0);
            series.sort_by(|a, b| top(&b.1).total_cmp(&top(&a.1)).then(a.0.cmp(&b.0)));
            let curves = series
                .into_iter()
                .take(4)
                .map(|(p, mut v)| {
                    v.sort_by_key(|r| r.k);
                    Curve {
                        label: format!("{} {} {}", p.site, p.layer, p.selector),
                        points: v
                            .iter()
                            .map(|r| CurvePoint {
                                layer: r.k.unwrap_or(0) as f64,
                                score: r.accuracy.unwrap_or(f64::NAN),
                                ci_low: r.accuracy_ci_low,
                                ci_high: r.accuracy_ci_high,
                                control: None,
                            })
                            .collect(),
                    }
                })
                .collect();
            TowerCurves { tower: t.to_string(), curves, embeds: None }
        })
        .collect();
    Some(Fig {
        job: Job::Curves(LayerCurves {
            name: format!("sparse_{}", slug(c)),
            title: format!("{c}: accuracy of k-sparse probes against k"),
            panels,
            chance: first.chance(),
            chance_label: chance_label(first),
            metric: "accuracy".into(),
            x_label: "k (features kept, ranked on each training fold)".into(),
        }),
        section: concept_id(c),
        caption: format!(
            "How few features carry <b>{c}</b>: a probe on the k best features of each training fold (ranked on \
             that fold only), by k, for the partitions that read it best; shaded: the 95% interval. A curve that \
             reaches its plateau at small k points at a few concept neurons; the table below names them.",
            c = esc(c)
        ),
    })
}

/// The features sparse probes chose most often, per partition: an HTML table.
fn neuron_table(c: &str, probes: &[ProbeRow]) -> String {
    let mut rows: Vec<&ProbeRow> =
        probes.iter().filter(|p| p.concept == c && p.method == ProbeMethod::Sparse && p.skipped.is_none()).collect();
    if rows.is_empty() {
        return String::new();
    }
    // Per partition, its row with the largest k: which features it kept, and how often.
    rows.sort_by_key(|r| (r.partition, std::cmp::Reverse(r.k)));
    rows.dedup_by_key(|r| r.partition);
    rows.sort_by(|a, b| {
        b.accuracy.unwrap_or(0.0).total_cmp(&a.accuracy.unwrap_or(0.0)).then(a.partition.cmp(&b.partition))
    });
    let mut h = format!(
        "<h4>Top features of the sparse probes ({})</h4><table><tr><th>partition</th><th>k</th><th>accuracy</th>\
         <th>features chosen (times chosen / folds x repeats)</th></tr>",
        esc(c)
    );
    for r in rows.iter().take(8) {
        let fits = r.folds * r.repeats.max(1);
        let features: Vec<String> =
            r.features.iter().zip(&r.feature_counts).take(10).map(|(f, n)| format!("{f} ({n}/{fits})")).collect();
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            r.partition,
            r.k.unwrap_or(0),
            fmt(r.accuracy),
            features.join(", ")
        );
    }
    h.push_str("</table>");
    h
}

/// PCA, LDA, the projection histogram at the tower's best partition, and PCA
/// small multiples along the tower's best layer series.
fn tower_figures(store: &Store, c: &str, probes: &[ProbeRow], rows: &[&ProbeRow]) -> Result<Vec<Fig>> {
    let mut figs = Vec::new();
    let drawable: Vec<ProbeRow> =
        rows.iter().filter(|r| r.partition.selector != Selector::All).map(|r| (*r).clone()).collect();
    let layered: Vec<ProbeRow> = drawable.iter().filter(|r| r.partition.site != Site::Embeds).cloned().collect();
    let series_of = tables::probes::best_per_tower(&layered);
    for best in tables::probes::best_per_tower(&drawable) {
        let part = best.partition;
        let t = part.tower;
        let section = tower_id(c, t);
        let where_ = format!("{} {} layer {} {}", t, part.site, part.layer, part.selector);
        let l = load(store, part, &[c])?;
        let Some(ClassView { x, y, names }) = classes(&l, c)? else { continue };
        let n = y.len();
        let score = format!("{} {}", best.probe.metric(), fmt(best.score()));
        // Even the tower's best partition does not beat chance: say so before any picture of it.
        let warn = if best.covers_chance() {
            format!(
                "<span class=\"flag\">Not above chance:</span> even the {t} tower's best partition for {} does not \
                 beat chance (held-out {score}, chance {}), so any separation this figure shows is noise or fit in-sample. ",
                esc(c),
                fmt(Some(best.chance()))
            )
        } else {
            String::new()
        };
        if !is_constant(&x) {
            let pca = pca2(x.view());
            let lda = lda2(x.view(), &y, names.len())?;
            let panel = |title: String, m: &Array2<f64>, a: &str, b: &str| Panel {
                title,
                xy: xy(m),
                class: y.clone(),
                x_label: a.into(),
                y_label: b.into(),
                constant: false,
            };
            figs.push(Fig {
                job: Job::Scatter(Scatter {
                    name: format!("pca_{}_{t}", slug(c)),
                    title: String::new(),
                    panels: vec![panel(format!("{c}: PCA of {where_} ({n} samples)"), &pca, "PC 1", "PC 2")],
                    class_names: names.clone(),
                }),
                section: section.clone(),
                caption: format!(
                    "{warn}The top two principal components of the {t} tower's best partition for {c} ({where_}, \
                     held-out {score}), coloured by {c}. PCA never sees the labels: classes that separate here \
                     dominate the variance of this state; classes that overlap may still be linearly separable \
                     in other directions (see the LDA below).",
                    c = esc(c)
                ),
            });
            let two = names.len() == 2;
            let (ax, ay) = if two { ("LD 1", "PC 1 orthogonal to LD 1") } else { ("LD 1", "LD 2") };
            figs.push(Fig {
                job: Job::Scatter(Scatter {
                    name: format!("lda_{}_{t}", slug(c)),
                    title: String::new(),
                    panels: vec![panel(
                        format!("{c}: LDA of {where_}, fit on these {n} samples (in-sample)"),
                        &lda,
                        ax,
                        ay,
                    )],
                    class_names: names.clone(),
                }),
                section: section.clone(),
                caption: format!(
                    "{warn}Fisher discriminant axes of {c} at {where_}, fit (shrunk within-class covariance) on the same \
                     {n} samples it shows: in-sample, so the separation looks better than it generalises; the \
                     held-out {score} is the honest number.{}",
                    if two {
                        " With two classes there is one discriminant: the vertical axis is the leading principal \
                         component orthogonal to it, not a second discriminant."
                    } else {
                        ""
                    },
                    c = esc(c)
                ),
            });
            let values: Vec<Vec<f64>> =
                (0..names.len()).map(|k| (0..n).filter(|&i| y[i] == k).map(|i| lda[[i, 0]]).collect()).collect();
            figs.push(Fig {
                job: Job::Hist(Histograms {
                    name: format!("hist_{}_{t}", slug(c)),
                    title: format!("{c}: projection on the first discriminant (LD 1) of {where_}"),
                    values,
                    class_names: names.clone(),
                    x_label: "projection on LD 1 (fit in-sample)".into(),
                }),
                section: section.clone(),
                caption: format!(
                    "{warn}Each sample's projection on the first Fisher discriminant of {c} at {where_}, one histogram per \
                     class (each normalised to its class's size). Classes whose histograms overlap are the ones a \
                     readout along this single direction confuses.",
                    c = esc(c)
                ),
            });
        }
        // Small multiples along the tower's best layer series.
        let Some(series) = series_of.iter().find(|r| r.partition.tower == t).map(|r| r.partition) else { continue };
        let mut layers: Vec<Partition> = probes
            .iter()
            .filter(|p| {
                p.concept == c
                    && p.partition.tower == t
                    && p.partition.site == series.site
                    && p.partition.selector == series.selector
            })
            .map(|p| p.partition)
            .collect();
        layers.sort();
        layers.dedup();
        let score_at: BTreeMap<Partition, Option<f64>> =
            rows.iter().filter(|r| r.probe == best.probe).map(|r| (r.partition, r.score())).collect();
        // A partition where the concept is not classes (or has one class) draws no panel.
        let panels: Vec<Option<Panel>> = layers
            .par_iter()
            .map(|&p| {
                let l = load(store, p, &[c])?;
                let Ok(Some(ClassView { x, y, .. })) = classes(&l, c) else { return Ok(None) };
                let score = score_at.get(&p).copied().flatten();
                let title = match score {
                    Some(s) => format!("layer {}: {} {s:.2}", p.layer, best.probe.metric()),
                    None => format!("layer {}", p.layer),
                };
                let constant = is_constant(&x);
                // A few distinct states drawn as many stacked points: say how few.
                let distinct = distinct_rows(&x, 21);
                let title = if !constant && distinct <= 20 && distinct < x.nrows() {
                    format!("{title} ({distinct} distinct states)")
                } else {
                    title
                };
                Ok(Some(Panel {
                    title,
                    xy: if constant { Vec::new() } else { xy(&pca2(x.view())) },
                    class: y,
                    x_label: "PC 1".into(),
                    y_label: "PC 2".into(),
                    constant,
                }))
            })
            .collect::<Result<_>>()?;
        let panels: Vec<Panel> = panels.into_iter().flatten().collect();
        if panels.is_empty() {
            continue;
        }
        let what = format!("{t} {} {}", series.site, series.selector);
        figs.push(Fig {
            job: Job::Scatter(Scatter {
                name: format!("layers_pca_{}_{t}", slug(c)),
                title: format!("{c}: PCA of {what} at each layer"),
                panels,
                class_names: names,
            }),
            section,
            caption: format!(
                "{warn}The {what} state at every layer (the {t} tower's best series for {c}), each panel its own PCA, \
                 so axes are not comparable between panels; the panel title gives the held-out probe score. Read \
                 where the classes start to pull apart. A panel marked constant holds the same vector for every \
                 sample (a position that sees no input yet), so it can only score chance.",
                c = esc(c)
            ),
        });
    }
    Ok(figs)
}

/// Every figure for the results; scatter and histogram data come from the store.
fn figure_jobs(
    store: &Store,
    results: &Path,
    probes: &[ProbeRow],
    cka_rows: Option<usize>,
    interventions: &[InterventionRow],
) -> Result<(Vec<Fig>, Vec<String>)> {
    let mut figs = Vec::new();
    let mut notes = Vec::new();
    for c in concepts(probes) {
        // Cross-validated scores only (an MDL or sparse row measures something else).
        let rows: Vec<&ProbeRow> = probes
            .iter()
            .filter(|p| p.concept == c && cross_validated(p) && p.skipped.is_none() && p.score().is_some())
            .collect();
        figs.extend(layer_curves(&c, &rows));
        let of = |m: ProbeMethod| -> Vec<&ProbeRow> {
            probes.iter().filter(|p| p.concept == c && p.method == m && p.skipped.is_none()).collect()
        };
        figs.extend(compression_curves(&c, &of(ProbeMethod::Mdl)));
        figs.extend(sparse_curves(&c, &of(ProbeMethod::Sparse)));
        let classes: Vec<&ProbeRow> = rows.iter().filter(|r| r.probe.classes()).copied().collect();
        figs.extend(tower_figures(store, &c, probes, &classes)?);
    }

    figs.extend(interventions::figures(interventions, probes));

    if results.join("cka.parquet").exists() {
        let rows = tables::geometry::read_cka(results)?;
        let label = |p: &Partition| format!("{} {} {} {}", p.tower, p.site, p.layer, p.selector);
        let mut labels: Vec<String> = rows.iter().flat_map(|r| [label(&r.a), label(&r.b)]).collect();
        labels.sort_by_key(|x| natural(x));
        labels.dedup();
        let idx: BTreeMap<&String, usize> = labels.iter().enumerate().map(|(i, l)| (l, i)).collect();
        let mut m = vec![vec![f64::NAN; labels.len()]; labels.len()];
        for r in &rows {
            let (x, y) = (idx[&label(&r.a)], idx[&label(&r.b)]);
            m[x][y] = r.cka;
            m[y][x] = r.cka;
        }
        // A partition with no defined CKA holds constant states: say so on its name.
        let labels: Vec<String> = labels
            .iter()
            .zip(&m)
            .map(|(l, row)| if row.iter().any(|v| v.is_finite()) { l.clone() } else { format!("{l} (constant)") })
            .collect();
        if !labels.is_empty() {
            figs.push(Fig {
                job: Job::Heat(Heatmap {
                    name: "cka".into(),
                    title: "Linear CKA between layers (tower site layer selector)".into(),
                    labels,
                    values: m,
                    lo: 0.0,
                    hi: 1.0,
                    diverging: false,
                    scale_label: "linear CKA".into(),
                }),
                section: "geometry".into(),
                caption: format!(
                    "Linear CKA between every pair of extracted partitions{} (1: the same geometry up to rotation \
                     and scale; 0: unrelated), each row and column named tower, site, layer, selector. Bright \
                     blocks along the diagonal are runs of layers that represent the inputs alike; bright cells \
                     between towers are shared structure. Grey: undefined (a partition whose states are constant, \
                     marked as such).",
                    cka_rows.filter(|n| *n > 0).map(|n| format!(", on {n} samples")).unwrap_or_default()
                ),
            });
        }
    } else {
        notes.push("no cka.parquet: run `mmprobe geometry` for the CKA heatmap".to_string());
    }

    if results.join("direction_cosines.parquet").exists() {
        // The partition with the most diff-means concept cosines: compare concepts there.
        let cosines: Vec<_> = tables::directions::read_cosines(results)?
            .into_iter()
            .filter(|r| r.kind == CosineKind::Concepts && r.method == Method::DiffMeans)
            .collect();
        // The partition with the most defined cosines (a constant partition has
        // none), the latest of those: a summary of what the model ends with.
        let mut count: BTreeMap<Partition, usize> = BTreeMap::new();
        for r in &cosines {
            *count.entry(r.a.partition).or_default() += usize::from(r.cosine.is_finite());
        }
        if let Some((&part, _)) = count.iter().filter(|(_, v)| **v > 0).max_by_key(|(p, v)| (**v, **p)) {
            let here: Vec<_> = cosines.iter().filter(|r| r.a.partition == part).collect();
            let mut keys: Vec<_> = here.iter().flat_map(|r| [r.a.clone(), r.b.clone()]).collect();
            keys.sort();
            keys.dedup();
            let mut m = vec![vec![f64::NAN; keys.len()]; keys.len()];
            for (i, row) in m.iter_mut().enumerate() {
                row[i] = 1.0;
            }
            for r in &here {
                let (i, j) = (keys.binary_search(&r.a).unwrap_or(0), keys.binary_search(&r.b).unwrap_or(0));
                m[i][j] = r.cosine;
                m[j][i] = r.cosine;
            }
            let where_ = format!("{} {} layer {} {}", part.tower, part.site, part.layer, part.selector);
            figs.push(Fig {
                job: Job::Heat(Heatmap {
                    name: "direction_cosines".into(),
                    title: format!("Cosine between concept directions (diff-means) at {where_}"),
                    labels: keys.iter().map(|k| format!("{} {}", k.concept, k.class)).collect(),
                    values: m,
                    lo: -1.0,
                    hi: 1.0,
                    diverging: true,
                    scale_label: "cosine".into(),
                }),
                section: "geometry".into(),
                caption: format!(
                    "Cosine between the difference-of-means direction of every class (concept, class) at \
                     {where_}: red aligned, white orthogonal, blue opposed (the map is centred on 0). Large |cosine| \
                     between classes of different concepts means the two are read along shared directions."
                ),
            });
        }
    } else {
        notes.push(
            "no direction_cosines.parquet: run `mmprobe directions` for the direction-cosine heatmap".to_string(),
        );
    }

    if let Some(pe) = paired_embeds(store, &[])? {
        let keep = subsample(pe.sample.len(), SCATTER_ROWS, 0);
        let (xi, xt) = (
            mmprobe_analysis::geometry::l2_normalise(pe.image.select(Axis(0), &keep).view()),
            mmprobe_analysis::geometry::l2_normalise(pe.text.select(Axis(0), &keep).view()),
        );
        let gap = mmprobe_analysis::geometry::modality_gap(xi.view(), xt.view());
        let joint =
            ndarray::concatenate(Axis(0), &[xi.view(), xt.view()]).map_err(|e| PlotError::Input(e.to_string()))?;
        let p = pca2(joint.view());
        let n = keep.len();
        // The joined pairs: spread over the subsample, not its first rows.
        let mut order: Vec<usize> = (0..n).collect();
        mmprobe_analysis::rng::Rng::new(1).shuffle(&mut order);
        let pick = |m: ndarray::ArrayView2<f64>| -> Vec<(f64, f64)> {
            order.iter().map(|&i| (m[[i, 0]], m[[i, 1]])).collect()
        };
        figs.push(Fig {
            job: Job::Gap(ModalityGap {
                image: pick(p.slice(ndarray::s![..n, ..])),
                text: pick(p.slice(ndarray::s![n.., ..])),
                gap,
                joined: GAP_LINES,
            }),
            section: "geometry".into(),
            caption: format!(
                "Image (circles) and text (triangles) embeds of {n} pairs, L2-normalised, in one PCA. Two separate \
                 clouds are the modality gap (Liang et al. 2022): the distance between the two centroids is {gap:.3}. \
                 Grey lines join {} matching image-text pairs: their direction is the gap, their spread how far \
                 pairs are from aligned.",
                GAP_LINES.min(n)
            ),
        });
    }
    Ok((figs, notes))
}

fn concepts(probes: &[ProbeRow]) -> Vec<String> {
    let mut concepts: Vec<String> = probes.iter().map(|p| p.concept.clone()).collect();
    concepts.sort();
    concepts.dedup();
    concepts
}

/// "vision resid 10 cls" sorts after "vision resid 9 cls".
fn natural(s: &str) -> Vec<(String, u64)> {
    s.split(' ').map(|w| w.parse::<u64>().map(|n| (String::new(), n)).unwrap_or((w.to_string(), 0))).collect()
}

pub(crate) fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

pub(crate) fn fmt(v: Option<f64>) -> String {
    v.filter(|x| x.is_finite()).map(|x| format!("{x:.3}")).unwrap_or_else(|| "–".into())
}

/// Why a best row is flagged: the interval covers chance, the adjusted p > 0.05.
fn chance_flag(p: &ProbeRow) -> String {
    if !p.covers_chance() {
        return String::new();
    }
    let mut why = Vec::new();
    if matches!(p.ci(), (Some(lo), _) if lo <= p.chance()) {
        why.push("interval covers chance");
    }
    if p.p_value_holm.or(p.p_value_bh).or(p.p_value).is_some_and(|v| v > 0.05) {
        why.push("p > 0.05");
    }
    format!("<span class=\"flag\">not above chance: {}</span>", why.join(", "))
}

pub(crate) fn figure_html(h: &mut String, png: &Path, svg: &Path, caption: &str) {
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let _ = write!(
        h,
        "<figure><img src=\"figures/{png}\" alt=\"{png}\"><figcaption>{caption} \
         <span class=\"files\">(<a href=\"figures/{png}\">PNG</a>, <a href=\"figures/{svg}\">SVG</a>)</span>\
         </figcaption></figure>",
        png = esc(&name(png)),
        svg = esc(&name(svg)),
    );
}

/// Writes DIR/figures/*.{png,svg} and DIR/report.html.
pub fn write_report(store_dir: &Path, results: &Path, out: &Path) -> Result<ReportSummary> {
    let t0 = Instant::now();
    let store = Store::open(store_dir)?;
    let probes = if results.join("probes.parquet").exists() { tables::probes::read(results)? } else { Vec::new() };
    let erase = if results.join("erase.parquet").exists() { tables::erase::read(results)? } else { Vec::new() };
    let geometry =
        if results.join("geometry.json").exists() { Some(tables::geometry::read_report(results)?) } else { None };
    let edits =
        if results.join("interventions.parquet").exists() { tables::interventions::read(results)? } else { Vec::new() };
    let figures_dir = out.join("figures");
    let (figs, mut notes) = figure_jobs(&store, results, &probes, geometry.as_ref().map(|g| g.cka_rows), &edits)?;
    if probes.is_empty() {
        notes.push(format!("no probes.parquet in {}: run `mmprobe probe` for layer curves", results.display()));
    }
    let saved: Vec<(PathBuf, PathBuf)> = figs.par_iter().map(|f| f.job.save(&figures_dir)).collect::<Result<_>>()?;
    let placed: Vec<Placed> = figs.iter().zip(&saved).collect();
    let in_section = |id: &str| -> Vec<Placed> { placed.iter().filter(|(f, _)| f.section == id).copied().collect() };

    let mut h = String::new();
    let m = store.manifest.clone().unwrap_or_default();
    let unknown = || "unknown".to_string();
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>mmprobe report</title><style>\
         body{{font-family:sans-serif;max-width:1150px;margin:2em auto;color:#222;line-height:1.4}}\
         table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}\
         td.num{{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}}\
         th{{background:#f3f3f3}}img{{max-width:100%;border:1px solid #eee;margin:0.5em 0}}figure{{margin:1.5em 0}}\
         figcaption{{color:#444;font-size:0.92em;max-width:900px}}.files{{color:#888}}.note{{color:#a60}}\
         .flag{{color:#b00;font-weight:bold}}table.compact{{font-size:0.85em}}table.compact td{{padding:2px 6px}}nav ul{{margin:0.2em 0}}h3{{margin-top:1.8em}}</style></head><body>\
         <h1>mmprobe report</h1><p>Store <code>{}</code>, results <code>{}</code>.</p>",
        esc(&store_dir.display().to_string()),
        esc(&results.display().to_string())
    );

    // Table of contents.
    let concept_list = concepts(&probes);
    h.push_str("<nav><h2>Contents</h2><ul><li><a href=\"#provenance\">Provenance</a></li>");
    if !probes.is_empty() {
        h.push_str("<li><a href=\"#best\">Best layer per concept and tower</a></li>");
    }
    for c in &concept_list {
        let _ = write!(h, "<li><a href=\"#{}\">{}</a><ul>", concept_id(c), esc(c));
        for t in Tower::ALL {
            if !in_section(&tower_id(c, *t)).is_empty() {
                let _ = write!(h, "<li><a href=\"#{}\">{t} tower</a></li>", tower_id(c, *t));
            }
        }
        h.push_str("</ul></li>");
    }
    if !erase.is_empty() {
        h.push_str("<li><a href=\"#erase\">Erasure (LEACE)</a></li>");
    }
    if !edits.is_empty() {
        h.push_str(&interventions::nav(&edits));
    }
    if geometry.is_some() || !in_section("geometry").is_empty() {
        h.push_str("<li><a href=\"#geometry\">Geometry</a></li>");
    }
    if !notes.is_empty() {
        h.push_str("<li><a href=\"#notes\">Notes</a></li>");
    }
    h.push_str("</ul></nav>");

    h.push_str("<h2 id=\"provenance\">Provenance</h2><table>");
    let model = m.model.clone().unwrap_or_default();
    let dataset = m.dataset.clone().unwrap_or_default();
    let or = |s: &str| if s.is_empty() { unknown() } else { s.to_string() };
    let rows = [
        ("model", or(&model.path)),
        ("family", or(&model.family)),
        ("config sha256", or(&model.config_sha256)),
        (
            "weights",
            if model.weights.is_empty() {
                unknown()
            } else {
                model
                    .weights
                    .iter()
                    .map(|(f, s)| format!("{f} {}", &s[..12.min(s.len())]))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        ),
        ("dtype / device", format!("{} / {}", or(&model.dtype), or(&model.device))),
        ("dataset", or(&dataset.path)),
        ("dataset sha256", or(&dataset.sha256)),
        ("rows", if dataset.rows > 0 { dataset.rows.to_string() } else { unknown() }),
        ("created", m.created.clone().unwrap_or_else(unknown)),
        ("mmprobe", m.mmprobe_version.clone().unwrap_or_else(unknown)),
    ];
    for (k, v) in rows {
        let _ = write!(h, "<tr><th>{k}</th><td>{}</td></tr>", esc(&v));
    }
    h.push_str("</table>");

    if !probes.is_empty() {
        h.push_str(
            "<h2 id=\"best\">Best layer per concept and tower</h2><p>The partition with the highest held-out score \
             per concept and tower (ties: the first in tower, site, layer, selector order). A row is flagged when \
             its 95% interval reaches down to chance or its permutation p-value, Holm-adjusted across the \
             concept's partitions, is above 0.05.</p><table><tr><th>concept</th><th>tower</th><th>site / \
             selector</th><th>layer</th><th>probe</th><th>score [95% interval]</th><th>chance</th>\
             <th>control</th><th>selectivity</th><th>p (Holm)</th><th></th></tr>",
        );
        for p in tables::probes::best_per_tower(&probes) {
            let _ = write!(
                h,
                "<tr><td><a href=\"#{}\">{}</a></td><td>{}</td><td>{} / {}</td><td class=\"num\">{}</td><td>{} ({})</td>\
                 <td class=\"num\">{} [{}, {}]</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
                 <td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
                concept_id(&p.concept),
                esc(&p.concept),
                p.partition.tower,
                p.partition.site,
                p.partition.selector,
                p.partition.layer,
                p.probe.as_str(),
                p.probe.metric(),
                fmt(p.score()),
                fmt(p.ci().0),
                fmt(p.ci().1),
                fmt(Some(p.chance())),
                fmt(p.control_accuracy),
                fmt(p.selectivity),
                fmt(p.p_value_holm.or(p.p_value)),
                chance_flag(p)
            );
        }
        h.push_str("</table>");
    }

    for c in &concept_list {
        let _ = write!(h, "<h2 id=\"{}\">{}</h2>", concept_id(c), esc(c));
        for (f, (png, svg)) in in_section(&concept_id(c)) {
            figure_html(&mut h, png, svg, &f.caption);
        }
        h.push_str(&neuron_table(c, &probes));
        for t in Tower::ALL {
            let id = tower_id(c, *t);
            if in_section(&id).is_empty() {
                continue;
            }
            let _ = write!(h, "<h3 id=\"{id}\">{}: {t} tower</h3>", esc(c));
            for (f, (png, svg)) in in_section(&id) {
                figure_html(&mut h, png, svg, &f.caption);
            }
        }
    }

    if !erase.is_empty() {
        h.push_str(
            "<h2 id=\"erase\">Erasure (LEACE)</h2><p>A fresh probe's held-out accuracy before and after LEACE \
             removed the concept's linear information (the eraser fit on each training fold only). After erasure \
             a linear probe should fall to the majority-class rate.</p><table><tr><th>concept</th><th>tower</th>\
             <th>site</th><th>layer</th><th>selector</th><th>n</th><th>rank erased</th><th>accuracy before</th>\
             <th>accuracy after</th><th>majority-class rate</th></tr>",
        );
        for r in &erase {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td><td class=\"num\">{}</td>\
                 <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                esc(&r.concept),
                r.partition.tower,
                r.partition.site,
                r.partition.layer,
                r.partition.selector,
                r.n,
                r.rank,
                fmt(Some(r.accuracy_before)),
                fmt(Some(r.accuracy_after)),
                fmt(Some(r.chance))
            );
        }
        h.push_str("</table>");
    }

    if !edits.is_empty() {
        h.push_str(&interventions::section(&edits, &in_section));
    }

    let geometry_figs = in_section("geometry");
    if geometry.is_some() || !geometry_figs.is_empty() {
        h.push_str("<h2 id=\"geometry\">Geometry</h2>");
        let mut numbers: Vec<(String, String)> = Vec::new();
        if let Some(g) = &geometry {
            if g.pairs > 0 {
                numbers.push(("image-text pairs".into(), g.pairs.to_string()));
            }
            for (k, v) in [
                ("modality gap (distance between the centroids)", g.modality_gap),
                ("cone: mean cosine between image embeds", g.cone_image),
                ("cone: mean cosine between text embeds", g.cone_text),
                ("image→text recall@1", g.retrieval_i2t_r1),
                ("image→text recall@5", g.retrieval_i2t_r5),
                ("text→image recall@1", g.retrieval_t2i_r1),
                ("text→image recall@5", g.retrieval_t2i_r5),
            ] {
                if let Some(v) = v.filter(|v| v.is_finite()) {
                    numbers.push((k.into(), format!("{v:.3}")));
                }
            }
            for (c, m) in &g.transfer {
                numbers.push((
                    format!("cross-modal transfer of {c}"),
                    format!(
                        "text→image {}, image→text {}",
                        fmt(m.get("text_to_image").copied()),
                        fmt(m.get("image_to_text").copied())
                    ),
                ));
            }
        }
        if geometry.as_ref().is_some_and(|g| g.pairs == 0) {
            h.push_str(
                "<p>No paired image and text embeds in this store, so no modality gap, cone or retrieval \
                 numbers.</p>",
            );
        }
        if !numbers.is_empty() {
            h.push_str("<table>");
            for (k, v) in &numbers {
                let _ = write!(h, "<tr><th>{}</th><td class=\"num\">{}</td></tr>", esc(k), esc(v));
            }
            h.push_str("</table>");
        }
        for (f, (png, svg)) in geometry_figs {
            figure_html(&mut h, png, svg, &f.caption);
        }
    }
    if !notes.is_empty() {
        h.push_str("<h2 id=\"notes\">Notes</h2>");
        for n in &notes {
            let _ = write!(h, "<p class=\"note\">{}</p>", esc(n));
        }
    }
    h.push_str("</body></html>\n");
    let html = out.join("report.html");
    std::fs::write(&html, h).map_err(|e| PlotError::Io { path: html.display().to_string(), message: e.to_string() })?;
    Ok(ReportSummary {
        html,
        figures: saved.into_iter().flat_map(|(a, b)| [a, b]).collect(),
        seconds: t0.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_and_few_distinct_states_are_told_apart() {
        let same = Array2::from_shape_fn((50, 4), |(_, j)| j as f64);
        assert!(is_constant(&same));
        assert_eq!(distinct_rows(&same, 21), 1);
        let seven = Array2::from_shape_fn((50, 4), |(i, j)| ((i % 7) * 10 + j) as f64);
        assert!(!is_constant(&seven));
        assert_eq!(distinct_rows(&seven, 21), 7);
        let many = Array2::from_shape_fn((50, 4), |(i, j)| (i * 10 + j) as f64);
        assert_eq!(distinct_rows(&many, 21), 21, "counting stops at the cap");
    }
}
