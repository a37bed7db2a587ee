//! `mmprobe report`: every figure of a store's results, and one self-contained
//! report.html (figures referenced from the folder beside it, no network).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use mmprobe_analysis::labels::Target;
use mmprobe_analysis::sweep::load;
use mmprobe_store::store::read_parquet;
use mmprobe_store::{Partition, Selector, Site, Store, Tower};
use ndarray::{Array2, Axis};
use polars::prelude::*;
use rayon::prelude::*;

use crate::canvas::save;
use crate::error::{PlotError, Result};
use crate::figures::{Curve, CurvePoint, Heatmap, Histograms, LayerCurves, ModalityGap, Panel, Scatter, slug};
use crate::project::{lda2, pca2};

/// Rows drawn in a scatter panel (a seeded subsample beyond this).
const SCATTER_ROWS: usize = 1000;

/// One probes.parquet row, as the report needs it.
#[derive(Debug, Clone)]
pub struct ProbeResult {
    pub concept: String,
    pub partition: Partition,
    pub probe: String,
    pub n_classes: usize,
    pub score: Option<f64>,
    pub ci: (Option<f64>, Option<f64>),
    pub control: Option<f64>,
    pub selectivity: Option<f64>,
    pub p_value: Option<f64>,
}

fn col_f64(df: &DataFrame, name: &str) -> Vec<Option<f64>> {
    df.column(name)
        .ok()
        .and_then(|c| c.cast(&DataType::Float64).ok())
        .map(|c| c.f64().map(|ca| ca.iter().collect()).unwrap_or_default())
        .unwrap_or_else(|| vec![None; df.height()])
}

fn col_str(df: &DataFrame, name: &str) -> Result<Vec<String>> {
    let c = df.column(name).map_err(|e| PlotError::Input(format!("probes.parquet: {e}")))?;
    let c = c.cast(&DataType::String).map_err(|e| PlotError::Input(e.to_string()))?;
    Ok(c.str().map_err(|e| PlotError::Input(e.to_string()))?.iter().map(|v| v.unwrap_or("").to_string()).collect())
}

pub fn read_probes(path: &Path) -> Result<Vec<ProbeResult>> {
    let df = read_parquet(path)?;
    let (concept, tower, site, selector, probe) = (
        col_str(&df, "concept")?,
        col_str(&df, "tower")?,
        col_str(&df, "site")?,
        col_str(&df, "selector")?,
        col_str(&df, "probe")?,
    );
    let layer = col_f64(&df, "layer");
    let k = col_f64(&df, "n_classes");
    let (acc, lo, hi, r2) = (
        col_f64(&df, "accuracy"),
        col_f64(&df, "accuracy_ci_low"),
        col_f64(&df, "accuracy_ci_high"),
        col_f64(&df, "r2"),
    );
    let (r2_lo, r2_hi) = (col_f64(&df, "r2_ci_low"), col_f64(&df, "r2_ci_high"));
    let (control, sel, p) = (col_f64(&df, "control_accuracy"), col_f64(&df, "selectivity"), col_f64(&df, "p_value"));
    (0..df.height())
        .map(|i| {
            let partition = Partition {
                tower: tower[i].parse().map_err(|e: mmprobe_store::NameError| PlotError::Input(e.to_string()))?,
                site: site[i].parse().map_err(|e: mmprobe_store::NameError| PlotError::Input(e.to_string()))?,
                layer: layer[i].unwrap_or(0.0) as usize,
                selector: selector[i].parse().map_err(|e: mmprobe_store::NameError| PlotError::Input(e.to_string()))?,
            };
            let logistic = probe[i] == "logistic";
            Ok(ProbeResult {
                concept: concept[i].clone(),
                partition,
                probe: probe[i].clone(),
                n_classes: k[i].unwrap_or(0.0) as usize,
                score: if logistic { acc[i] } else { r2[i] },
                ci: if logistic { (lo[i], hi[i]) } else { (r2_lo[i], r2_hi[i]) },
                control: control[i],
                selectivity: sel[i],
                p_value: p[i],
            })
        })
        .collect()
}

/// What `mmprobe report` wrote.
pub struct ReportSummary {
    pub html: PathBuf,
    pub figures: Vec<PathBuf>,
    pub seconds: f64,
}

fn subsample(n: usize, cap: usize) -> Vec<usize> {
    if n <= cap {
        return (0..n).collect();
    }
    let step = n as f64 / cap as f64;
    (0..cap).map(|i| (i as f64 * step) as usize).collect()
}

/// The class view of a concept on a loaded partition, subsampled for drawing.
/// A class concept's rows on one partition, subsampled for drawing.
struct ClassView {
    x: Array2<f64>,
    y: Vec<usize>,
    names: Vec<String>,
}

fn classes(l: &mmprobe_analysis::sweep::Loaded, concept: &str) -> Result<Option<ClassView>> {
    let c = l.concept(concept)?;
    let Target::Classes { y, names } = c.target else { return Ok(None) };
    let keep = subsample(y.len(), SCATTER_ROWS);
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
fn figure_jobs(store: &Store, results: &Path, probes: &[ProbeResult]) -> Result<(Vec<Job>, Vec<String>)> {
    let mut jobs = Vec::new();
    let mut notes = Vec::new();
    let mut concepts: Vec<String> = probes.iter().map(|p| p.concept.clone()).collect();
    concepts.sort();
    concepts.dedup();
    for c in &concepts {
        let rows: Vec<&ProbeResult> = probes.iter().filter(|p| &p.concept == c && p.probe == "logistic").collect();
        if rows.is_empty() {
            continue;
        }
        let mut by: BTreeMap<String, Vec<&ProbeResult>> = BTreeMap::new();
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
                            score: r.score.unwrap_or(f64::NAN),
                            ci_low: r.ci.0,
                            ci_high: r.ci.1,
                            control: r.control,
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
        let best = rows
            .iter()
            .filter(|r| r.partition.selector != Selector::All)
            .max_by(|a, b| a.score.unwrap_or(-1.0).total_cmp(&b.score.unwrap_or(-1.0)))
            .map(|r| r.partition);
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
            .max_by(|a, b| a.score.unwrap_or(-1.0).total_cmp(&b.score.unwrap_or(-1.0)))
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
        let panels: Vec<Panel> = layers
            .par_iter()
            .map(|&p| {
                let l = load(store, p, &[c.as_str()])?;
                let ClassView { x, y, .. } = classes(&l, c)?.expect("the same concept has classes on every partition");
                Ok(Panel {
                    title: format!("layer {}", p.layer),
                    xy: xy(&pca2(x.view())),
                    class: y,
                    x_label: "PC 1".into(),
                    y_label: "PC 2".into(),
                })
            })
            .collect::<Result<_>>()?;
        jobs.push(Job::Scatter(Scatter {
            name: format!("layers_pca_{}", slug(c)),
            title: format!("{c}: PCA by layer ({} {} {})", series.tower, series.site, series.selector),
            panels,
            class_names: names,
        }));
    }

    let cka_path = results.join("cka.parquet");
    if cka_path.exists() {
        let df = read_parquet(&cka_path)?;
        let key = |p: &str| -> Result<Vec<String>> {
            let (t, s, l, k) = (
                col_str(&df, &format!("{p}tower"))?,
                col_str(&df, &format!("{p}site"))?,
                col_str(&df, &format!("{p}layer"))?,
                col_str(&df, &format!("{p}selector"))?,
            );
            Ok((0..df.height()).map(|i| format!("{} {} {} {}", t[i], s[i], l[i], k[i])).collect())
        };
        let (a, b, v) = (key("a_")?, key("b_")?, col_f64(&df, "cka"));
        let mut labels: Vec<String> = a.iter().chain(&b).cloned().collect();
        labels.sort_by_key(|x| natural(x));
        labels.dedup();
        let idx: BTreeMap<&String, usize> = labels.iter().enumerate().map(|(i, l)| (l, i)).collect();
        let mut m = vec![vec![f64::NAN; labels.len()]; labels.len()];
        for i in 0..a.len() {
            let (x, y) = (idx[&a[i]], idx[&b[i]]);
            m[x][y] = v[i].unwrap_or(f64::NAN);
            m[y][x] = m[x][y];
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

    let dir_path = results.join("directions.parquet");
    if dir_path.exists() {
        let df = read_parquet(&dir_path)?;
        let (concept, class, method) = (col_str(&df, "concept")?, col_str(&df, "class")?, col_str(&df, "method")?);
        let (tower, site, layer, selector) =
            (col_str(&df, "tower")?, col_str(&df, "site")?, col_str(&df, "layer")?, col_str(&df, "selector")?);
        let dirs = df.column("direction").map_err(|e| PlotError::Input(e.to_string()))?;
        let dirs = dirs.list().map_err(|e| PlotError::Input(e.to_string()))?;
        // The partition with the most diff-means directions: compare concepts there.
        let mut count: BTreeMap<String, usize> = BTreeMap::new();
        for i in 0..df.height() {
            if method[i] == "diff-means" {
                *count.entry(format!("{} {} {} {}", tower[i], site[i], layer[i], selector[i])).or_default() += 1;
            }
        }
        if let Some((part, _)) = count.iter().max_by_key(|(k, v)| (**v, natural(k))) {
            let rows: Vec<usize> = (0..df.height())
                .filter(|&i| {
                    method[i] == "diff-means"
                        && &format!("{} {} {} {}", tower[i], site[i], layer[i], selector[i]) == part
                })
                .collect();
            let vecs: Vec<Vec<f64>> = rows
                .iter()
                .map(|&i| {
                    dirs.get_as_series(i)
                        .and_then(|s| s.cast(&DataType::Float64).ok())
                        .map(|s| s.f64().map(|ca| ca.iter().map(|v| v.unwrap_or(0.0)).collect()).unwrap_or_default())
                        .unwrap_or_default()
                })
                .collect();
            let cos = |a: &[f64], b: &[f64]| {
                let d = (a.iter().map(|v| v * v).sum::<f64>() * b.iter().map(|v| v * v).sum::<f64>()).sqrt();
                a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>() / d
            };
            let m: Vec<Vec<f64>> = vecs.iter().map(|a| vecs.iter().map(|b| cos(a, b)).collect()).collect();
            jobs.push(Job::Heat(Heatmap {
                name: "direction_cosines".into(),
                title: format!("Cosine between concept directions (diff-means, {part})"),
                labels: rows.iter().map(|&i| format!("{}={}", concept[i], class[i])).collect(),
                values: m,
                lo: -1.0,
                hi: 1.0,
            }));
        }
    } else {
        notes.push("no directions.parquet: run `mmprobe directions` for the direction-cosine heatmap".to_string());
    }

    let parts = store.partitions()?;
    let emb = |t| Partition { tower: t, site: Site::Embeds, layer: 0, selector: Selector::Pooled };
    if parts.contains(&emb(Tower::Vision)) && parts.contains(&emb(Tower::Text)) {
        let (img, txt) = (load(store, emb(Tower::Vision), &[])?, load(store, emb(Tower::Text), &[])?);
        let pos: BTreeMap<u32, usize> = txt.sample.iter().enumerate().map(|(i, &s)| (s, i)).collect();
        let (ia, ta): (Vec<usize>, Vec<usize>) =
            img.sample.iter().enumerate().filter_map(|(i, s)| pos.get(s).map(|&j| (i, j))).unzip();
        let keep = subsample(ia.len(), SCATTER_ROWS);
        let ia: Vec<usize> = keep.iter().map(|&i| ia[i]).collect();
        let ta: Vec<usize> = keep.iter().map(|&i| ta[i]).collect();
        let (xi, xt) = (
            mmprobe_analysis::geometry::l2_normalise(img.x.select(Axis(0), &ia).view()),
            mmprobe_analysis::geometry::l2_normalise(txt.x.select(Axis(0), &ta).view()),
        );
        let gap = mmprobe_analysis::geometry::modality_gap(xi.view(), xt.view());
        let joint =
            ndarray::concatenate(Axis(0), &[xi.view(), xt.view()]).map_err(|e| PlotError::Input(e.to_string()))?;
        let p = pca2(joint.view());
        let n = ia.len();
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
    let probes_path = results.join("probes.parquet");
    let probes = if probes_path.exists() { read_probes(&probes_path)? } else { Vec::new() };
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
        h.push_str("<h2>Best layer per concept and tower</h2><table><tr><th>concept</th><th>tower</th><th>site / selector</th><th>layer</th><th>score [95% CI]</th><th>control</th><th>selectivity</th><th>p</th></tr>");
        let mut best: BTreeMap<(String, String), &ProbeResult> = BTreeMap::new();
        for p in &probes {
            let key = (p.concept.clone(), p.partition.tower.to_string());
            let better = best.get(&key).is_none_or(|b| p.score.unwrap_or(-1.0) > b.score.unwrap_or(-1.0));
            if better {
                best.insert(key, p);
            }
        }
        for ((c, t), p) in &best {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{t}</td><td>{} / {}</td><td>{}</td><td>{} {} [{}, {}]</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(c),
                p.partition.site,
                p.partition.selector,
                p.partition.layer,
                if p.probe == "logistic" { "accuracy" } else { "R²" },
                fmt(p.score),
                fmt(p.ci.0),
                fmt(p.ci.1),
                fmt(p.control),
                fmt(p.selectivity),
                fmt(p.p_value)
            );
        }
        h.push_str("</table>");
    }

    let geo = results.join("geometry.json");
    if geo.exists() {
        let v: serde_json::Value = std::fs::read(&geo)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| PlotError::Input(format!("{} is not readable JSON", geo.display())))?;
        h.push_str("<h2>Geometry</h2><table>");
        for k in [
            "modality_gap",
            "cone_image",
            "cone_text",
            "retrieval_i2t_r1",
            "retrieval_i2t_r5",
            "retrieval_t2i_r1",
            "retrieval_t2i_r5",
            "pairs",
            "cka_rows",
        ] {
            let _ = write!(h, "<tr><th>{k}</th><td>{}</td></tr>", fmt(v.get(k).and_then(|x| x.as_f64())));
        }
        if let Some(t) = v.get("transfer").and_then(|t| t.as_object()) {
            for (c, m) in t {
                let _ = write!(
                    h,
                    "<tr><th>transfer {}</th><td>text→image {}, image→text {}</td></tr>",
                    esc(c),
                    fmt(m.get("text_to_image").and_then(|x| x.as_f64())),
                    fmt(m.get("image_to_text").and_then(|x| x.as_f64()))
                );
            }
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
