//! `mmprobe report`: every figure of a store's results, and one self-contained
//! report.html (figures referenced from the folder beside it, no network).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use mmprobe_analysis::directions::Method;
use mmprobe_analysis::labels::Target;
use mmprobe_analysis::sweep::geometry::{paired_embeds, subsample};
use mmprobe_analysis::sweep::load;
use mmprobe_analysis::tables::{self, CosineKind, ProbeKind, ProbeRow};
use mmprobe_store::{Partition, Selector, Site, Store};
use ndarray::{Array2, Axis};
use rayon::prelude::*;

use crate::canvas::save;
use crate::error::{PlotError, Result};
use crate::figures::{Curve, CurvePoint, Heatmap, Histograms, LayerCurves, ModalityGap, Panel, Scatter, slug};
use crate::project::{lda2, pca2};

/// Rows drawn in a scatter panel (a seeded subsample beyond this).
const SCATTER_ROWS: usize = 1000;

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

fn xy(m: &Array2<f64>) -> Vec<(f64, f64)> {
    m.rows().into_iter().map(|r| (r[0], r[1])).collect()
}

enum Job {
    Curves(LayerCurves),
    Scatter(Scatter),
    Hist(Histograms),
    Heat(Heatmap),
    Gap(ModalityGap),
}

impl Job {
    fn save(&self, dir: &Path) -> Result<(PathBuf, PathBuf)> {
        match self {
            Job::Curves(f) => save(f, dir),
            Job::Scatter(f) => save(f, dir),
            Job::Hist(f) => save(f, dir),
            Job::Heat(f) => save(f, dir),
            Job::Gap(f) => save(f, dir),
        }
    }
}

fn series_key(p: &Partition) -> String {
    format!("{} {} {}", p.tower, p.site, p.selector)
}

/// Every figure for the results; scatter and histogram data come from the store.
fn figure_jobs(store: &Store, results: &Path, probes: &[ProbeRow]) -> Result<(Vec<Job>, Vec<String>)> {
    let mut jobs = Vec::new();
    let mut notes = Vec::new();
    let mut concepts: Vec<String> = probes.iter().map(|p| p.concept.clone()).collect();
    concepts.sort();
    concepts.dedup();
    for c in &concepts {
        let rows: Vec<&ProbeRow> = probes
            .iter()
            .filter(|p| &p.concept == c && p.probe == ProbeKind::Logistic && p.skipped.is_none())
            .collect();
        if rows.is_empty() {
            continue;
        }
        let mut by: BTreeMap<String, Vec<&ProbeRow>> = BTreeMap::new();
        for r in rows.iter().filter(|r| r.partition.site != Site::Embeds) {
            by.entry(series_key(&r.partition)).or_default().push(r);
        }
        let curves = by
            .into_iter()
            .map(|(label, mut v)| {
                v.sort_by_key(|r| r.partition.layer);
                Curve {
                    label,
                    points: v
                        .iter()
                        .map(|r| CurvePoint {
                            layer: r.partition.layer as f64,
                            score: r.score().unwrap_or(f64::NAN),
                            ci_low: r.ci().0,
                            ci_high: r.ci().1,
                            control: r.control_accuracy,
                        })
                        .collect(),
                }
            })
            .collect();
        let k = rows[0].n_classes.max(2);
        jobs.push(Job::Curves(LayerCurves {
            concept: c.clone(),
            curves,
            chance: 1.0 / k as f64,
            metric: "accuracy".into(),
        }));

        // The best partition: PCA, LDA and the projection histogram there;
        // small multiples along its tower/site/selector.
        let by_score = |a: &&&ProbeRow, b: &&&ProbeRow| {
            a.score().unwrap_or(-1.0).total_cmp(&b.score().unwrap_or(-1.0)).then(b.partition.cmp(&a.partition))
        };
        let best = rows.iter().filter(|r| r.partition.selector != Selector::All).max_by(by_score).map(|r| r.partition);
        let Some(best) = best else { continue };
        let l = load(store, best, &[c.as_str()])?;
        let Some(ClassView { x, y, names }) = classes(&l, c)? else { continue };
        let pca = pca2(x.view());
        let lda = lda2(x.view(), &y, names.len())?;
        let panel = |title: String, m: &Array2<f64>, a: &str, b: &str| Panel {
            title,
            xy: xy(m),
            class: y.clone(),
            x_label: a.into(),
            y_label: b.into(),
        };
        jobs.push(Job::Scatter(Scatter {
            name: format!("pca_{}", slug(c)),
            title: String::new(),
            panels: vec![panel(format!("{c}: PCA of {best}"), &pca, "PC 1", "PC 2")],
            class_names: names.clone(),
        }));
        jobs.push(Job::Scatter(Scatter {
            name: format!("lda_{}", slug(c)),
            title: String::new(),
            panels: vec![panel(format!("{c}: LDA of {best}"), &lda, "LD 1", "LD 2")],
            class_names: names.clone(),
        }));
        let values: Vec<Vec<f64>> =
            (0..names.len()).map(|k| (0..y.len()).filter(|&i| y[i] == k).map(|i| lda[[i, 0]]).collect()).collect();
        jobs.push(Job::Hist(Histograms {
            name: format!("hist_{}", slug(c)),
            title: format!("{c}: projection on its first discriminant direction ({best})"),
            values,
            class_names: names.clone(),
            x_label: "projection on LD 1".into(),
        }));
        // Small multiples along the layer series (not embeds) that reads the concept best.
        let series = rows
            .iter()
            .filter(|r| r.partition.site != Site::Embeds && r.partition.selector != Selector::All)
            .max_by(by_score)
            .map(|r| r.partition)
            .unwrap_or(best);
        let mut layers: Vec<Partition> = probes
            .iter()
            .filter(|p| {
                &p.concept == c
                    && p.partition.tower == series.tower
                    && p.partition.site == series.site
                    && p.partition.selector == series.selector
            })
            .map(|p| p.partition)
            .collect();
        layers.sort();
        layers.dedup();
        // A partition where the concept is not classes (or has one class) draws no panel.
        let panels: Vec<Option<Panel>> = layers
            .par_iter()
            .map(|&p| {
                let l = load(store, p, &[c.as_str()])?;
                let Ok(Some(ClassView { x, y, .. })) = classes(&l, c) else { return Ok(None) };
                Ok(Some(Panel {
                    title: format!("layer {}", p.layer),
                    xy: xy(&pca2(x.view())),
                    class: y,
                    x_label: "PC 1".into(),
                    y_label: "PC 2".into(),
                }))
            })
            .collect::<Result<_>>()?;
        let panels: Vec<Panel> = panels.into_iter().flatten().collect();
        jobs.push(Job::Scatter(Scatter {
            name: format!("layers_pca_{}", slug(c)),
            title: format!("{c}: PCA by layer ({} {} {})", series.tower, series.site, series.selector),
            panels,
            class_names: names,
        }));
    }

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
        jobs.push(Job::Heat(Heatmap {
            name: "cka".into(),
            title: "Linear CKA between layers".into(),
            labels,
            values: m,
            lo: 0.0,
            hi: 1.0,
        }));
    } else {
        notes.push("no cka.parquet: run `mmprobe geometry` for the CKA heatmap".to_string());
    }

    if results.join("direction_cosines.parquet").exists() {
        // The partition with the most diff-means concept cosines: compare concepts there.
        let cosines: Vec<_> = tables::directions::read_cosines(results)?
            .into_iter()
            .filter(|r| r.kind == CosineKind::Concepts && r.method == Method::DiffMeans)
            .collect();
        let mut count: BTreeMap<Partition, usize> = BTreeMap::new();
        for r in &cosines {
            *count.entry(r.a.partition).or_default() += 1;
        }
        if let Some((&part, _)) = count.iter().max_by_key(|(p, v)| (**v, std::cmp::Reverse(**p))) {
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
            jobs.push(Job::Heat(Heatmap {
                name: "direction_cosines".into(),
                title: format!("Cosine between concept directions (diff-means, {part})"),
                labels: keys.iter().map(|k| k.label()).collect(),
                values: m,
                lo: -1.0,
                hi: 1.0,
            }));
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
        jobs.push(Job::Gap(ModalityGap {
            image: xy(&p.slice(ndarray::s![..n, ..]).to_owned()),
            text: xy(&p.slice(ndarray::s![n.., ..]).to_owned()),
            gap,
        }));
    }
    Ok((jobs, notes))
}

/// "vision resid 10 cls" sorts after "vision resid 9 cls".
fn natural(s: &str) -> Vec<(String, u64)> {
    s.split(' ').map(|w| w.parse::<u64>().map(|n| (String::new(), n)).unwrap_or((w.to_string(), 0))).collect()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn fmt(v: Option<f64>) -> String {
    v.filter(|x| x.is_finite()).map(|x| format!("{x:.3}")).unwrap_or_else(|| "–".into())
}

/// Writes DIR/figures/*.{png,svg} and DIR/report.html.
pub fn write_report(store_dir: &Path, results: &Path, out: &Path) -> Result<ReportSummary> {
    let t0 = Instant::now();
    let store = Store::open(store_dir)?;
    let probes = if results.join("probes.parquet").exists() { tables::probes::read(results)? } else { Vec::new() };
    let figures_dir = out.join("figures");
    let (jobs, mut notes) = figure_jobs(&store, results, &probes)?;
    if probes.is_empty() {
        notes.push(format!("no probes.parquet in {}: run `mmprobe probe` for layer curves", results.display()));
    }
    let saved: Vec<(PathBuf, PathBuf)> = jobs.par_iter().map(|j| j.save(&figures_dir)).collect::<Result<_>>()?;

    let mut h = String::new();
    let m = store.manifest.clone().unwrap_or_default();
    let unknown = || "unknown".to_string();
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>mmprobe report</title><style>\
         body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}\
         table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}\
         th{{background:#f3f3f3}}img{{max-width:100%;border:1px solid #eee;margin:0.5em 0}}figure{{margin:1.5em 0}}\
         figcaption{{color:#555;font-size:0.9em}}.note{{color:#a60}}</style></head><body>\
         <h1>mmprobe report</h1><p>Store <code>{}</code>, results <code>{}</code>.</p><h2>Provenance</h2><table>",
        esc(&store_dir.display().to_string()),
        esc(&results.display().to_string())
    );
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
        h.push_str("<h2>Best layer per concept and tower</h2><table><tr><th>concept</th><th>tower</th><th>site / selector</th><th>layer</th><th>score [95% CI]</th><th>control</th><th>selectivity</th><th>p (Holm-adjusted across the concept's partitions)</th></tr>");
        let best = tables::probes::best_per_tower(&probes);
        for p in &best {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{} / {}</td><td>{}</td><td>{} {} [{}, {}]</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&p.concept),
                p.partition.tower,
                p.partition.site,
                p.partition.selector,
                p.partition.layer,
                p.probe.metric(),
                fmt(p.score()),
                fmt(p.ci().0),
                fmt(p.ci().1),
                fmt(p.control_accuracy),
                fmt(p.selectivity),
                fmt(p.p_value_holm.or(p.p_value))
            );
        }
        h.push_str("</table>");
    }

    if results.join("geometry.json").exists() {
        let g = tables::geometry::read_report(results)?;
        h.push_str("<h2>Geometry</h2><table>");
        let numbers = [
            ("modality_gap", fmt(g.modality_gap)),
            ("cone_image", fmt(g.cone_image)),
            ("cone_text", fmt(g.cone_text)),
            ("retrieval_i2t_r1", fmt(g.retrieval_i2t_r1)),
            ("retrieval_i2t_r5", fmt(g.retrieval_i2t_r5)),
            ("retrieval_t2i_r1", fmt(g.retrieval_t2i_r1)),
            ("retrieval_t2i_r5", fmt(g.retrieval_t2i_r5)),
            ("pairs", g.pairs.to_string()),
            ("cka_rows", g.cka_rows.to_string()),
        ];
        for (k, v) in numbers {
            let _ = write!(h, "<tr><th>{k}</th><td>{v}</td></tr>");
        }
        for (c, m) in &g.transfer {
            let _ = write!(
                h,
                "<tr><th>transfer {}</th><td>text→image {}, image→text {}</td></tr>",
                esc(c),
                fmt(m.get("text_to_image").copied()),
                fmt(m.get("image_to_text").copied())
            );
        }
        h.push_str("</table>");
    }

    h.push_str("<h2>Figures</h2>");
    for (png, svg) in &saved {
        let name = |p: &PathBuf| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let _ = write!(
            h,
            "<figure><img src=\"figures/{}\" alt=\"{}\"><figcaption>{} (<a href=\"figures/{}\">SVG</a>)</figcaption></figure>",
            esc(&name(png)),
            esc(&name(png)),
            esc(&name(png)),
            esc(&name(svg))
        );
    }
    for n in &notes {
        let _ = write!(h, "<p class=\"note\">{}</p>", esc(n));
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
