//! Analyses over every matching partition of a store, in parallel.

use std::collections::BTreeMap;

use mmprobe_store::{Partition, Selector, Site, Store, Tower};
use ndarray::{Array2, Axis};
use polars::prelude::*;
use rayon::prelude::*;

use crate::cka::{CkaInput, linear_cka};
use crate::directions::{self, Method, cosine};
use crate::error::{AnalysisError, Result};
use crate::geometry;
use crate::labels::{Concept, Target};
use crate::leace::Leace;
use crate::logistic::{self, CheckedLogistic};
use crate::probe::{self, CheckedProbe};
use crate::rng::Rng;
use crate::scale::Standardizer;
use crate::select::Filters;

/// One partition's activations as f64 with the label columns aligned to its rows.
pub struct Loaded {
    pub partition: Partition,
    pub x: Array2<f64>,
    pub sample: Vec<u32>,
    pub labels: DataFrame,
}

impl Loaded {
    /// A loaded label column as a concept over this partition's rows.
    pub fn concept(&self, name: &str) -> Result<Concept> {
        let col = self.labels.column(name).map_err(|e| AnalysisError::Input(e.to_string()))?;
        Concept::from_column(name, col)
    }
}

pub fn load(store: &Store, p: Partition, columns: &[&str]) -> Result<Loaded> {
    let (acts, labels) = store.load_labeled(p, columns)?;
    Ok(Loaded { partition: p, x: acts.matrix.mapv(f64::from), sample: acts.sample, labels })
}

/// Names the partition in numerical failures, so a sweep's error says where.
fn in_partition(p: Partition) -> impl Fn(AnalysisError) -> AnalysisError {
    move |e| match e {
        AnalysisError::Fit { what, message } => {
            AnalysisError::Partition { partition: p.to_string(), message: format!("{what} failed: {message}") }
        }
        other => other,
    }
}

fn concept_err(concept: &str, message: impl Into<String>) -> AnalysisError {
    AnalysisError::Concept { concept: concept.to_string(), message: message.into() }
}

/// Checks the concepts exist in samples.parquet before any work starts.
pub fn check_concepts(store: &Store, concepts: &[String]) -> Result<()> {
    if concepts.is_empty() {
        return Err(AnalysisError::Input("give at least one --concept".into()));
    }
    for c in concepts {
        if store.samples.column(c).is_err() {
            return Err(concept_err(
                c,
                format!("no such column in samples.parquet (labels: {})", store.label_columns().join(", ")),
            ));
        }
    }
    Ok(())
}

/// What the control task's types are (Hewitt & Liang).
#[derive(Debug, Clone)]
pub enum ControlBy {
    /// `text` when texts repeat across samples, else each sample (shuffled labels).
    Default,
    Column(String),
    Off,
}

/// One row of probes.parquet.
#[derive(Debug, Clone, Default)]
pub struct ProbeRow {
    pub concept: String,
    pub partition: Option<Partition>,
    pub probe: &'static str,
    pub n: usize,
    pub n_classes: usize,
    pub dropped_null: usize,
    pub accuracy: Option<f64>,
    pub accuracy_ci_low: Option<f64>,
    pub accuracy_ci_high: Option<f64>,
    pub balanced_accuracy: Option<f64>,
    pub macro_f1: Option<f64>,
    pub auroc: Option<f64>,
    pub control_accuracy: Option<f64>,
    pub selectivity: Option<f64>,
    pub p_value: Option<f64>,
    pub r2: Option<f64>,
    pub r2_ci_low: Option<f64>,
    pub r2_ci_high: Option<f64>,
    pub pearson_r: Option<f64>,
    /// The median regularisation over folds (C for logistic, alpha for ridge).
    pub regularisation: f64,
    pub control_by: String,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() { f64::NAN } else { s[s.len() / 2] }
}

/// Per-row control types, and what they were taken from.
fn control_types(store: &Store, l: &Loaded, by: &ControlBy) -> Result<Option<(Vec<String>, String)>> {
    let column = match by {
        ControlBy::Off => return Ok(None),
        ControlBy::Column(c) => Some(c.clone()),
        ControlBy::Default => match store.samples.column("text") {
            Ok(t) if t.n_unique().unwrap_or(t.len()) < t.len() => Some("text".to_string()),
            _ => None,
        },
    };
    match column {
        Some(c) => {
            let df = store.labels_for(&l.sample, &[c.as_str()])?;
            let col = df.column(&c).map_err(|e| AnalysisError::Input(e.to_string()))?;
            let s = col.cast(&DataType::String).map_err(|e| AnalysisError::Input(e.to_string()))?;
            let ca = s.str().map_err(|e| AnalysisError::Input(e.to_string()))?;
            Ok(Some((ca.iter().map(|v| v.unwrap_or("<null>").to_string()).collect(), c)))
        }
        None => Ok(Some((l.sample.iter().map(|s| s.to_string()).collect(), "sample".into()))),
    }
}

/// Fold ids per row from a samples column: its distinct values, sorted, are folds 0..k.
fn fold_ids(store: &Store, l: &Loaded, column: &str, folds: usize) -> Result<Vec<usize>> {
    let df = store.labels_for(&l.sample, &[column])?;
    let s =
        df.column(column).and_then(|c| c.cast(&DataType::String)).map_err(|e| AnalysisError::Input(e.to_string()))?;
    let values: Vec<String> = s
        .str()
        .map_err(|e| AnalysisError::Input(e.to_string()))?
        .iter()
        .map(|v| v.map(str::to_string).ok_or_else(|| AnalysisError::Input(format!("--fold-column {column} has nulls"))))
        .collect::<Result<_>>()?;
    let mut distinct = values.clone();
    distinct.sort();
    distinct.dedup();
    if distinct.len() != folds {
        return Err(AnalysisError::Input(format!(
            "--fold-column {column} has {} distinct values, --folds is {folds}",
            distinct.len()
        )));
    }
    Ok(values.iter().map(|v| distinct.binary_search(v).expect("a known value")).collect())
}

/// Probes every concept on every matching partition. `fold_column` fixes the
/// folds from a samples column instead of seeded stratified ones.
pub fn probe_store(
    store: &Store,
    concepts: &[String],
    filters: &Filters,
    params: &CheckedProbe,
    control_by: &ControlBy,
    fold_column: Option<&str>,
    progress: &(dyn Fn() + Sync),
) -> Result<Vec<ProbeRow>> {
    check_concepts(store, concepts)?;
    if let ControlBy::Column(c) = control_by
        && store.samples.column(c).is_err()
    {
        return Err(AnalysisError::Input(format!("--control-by: no column '{c}' in samples.parquet")));
    }
    let partitions = filters.matching(store)?;
    // Validate concepts once, on the samples table, before fitting anything.
    for c in concepts {
        let col = store.samples.column(c).map_err(|e| AnalysisError::Input(e.to_string()))?;
        Concept::from_column(c, col)?.check_folds(params.folds)?;
    }
    let cols: Vec<&str> = concepts.iter().map(String::as_str).collect();
    let rows: Vec<Vec<ProbeRow>> = partitions
        .par_iter()
        .map(|&p| {
            let run = || -> Result<_> {
                let l = load(store, p, &cols)?;
                let types = control_types(store, &l, control_by)?;
                let given_folds = fold_column.map(|c| fold_ids(store, &l, c, params.folds)).transpose()?;
                let mut out = Vec::new();
                for c in concepts {
                    let concept = l.concept(c)?;
                    concept.check_folds(params.folds)?;
                    let x = l.x.select(Axis(0), &concept.rows);
                    let mut row = ProbeRow {
                        concept: c.clone(),
                        partition: Some(p),
                        n: concept.rows.len(),
                        n_classes: concept.n_classes(),
                        dropped_null: concept.dropped_null,
                        ..Default::default()
                    };
                    match &concept.target {
                        Target::Classes { y, names } => {
                            let t: Option<Vec<String>> =
                                types.as_ref().map(|(t, _)| concept.rows.iter().map(|&i| t[i].clone()).collect());
                            let r = match &given_folds {
                                Some(f) => {
                                    let f: Vec<usize> = concept.rows.iter().map(|&i| f[i]).collect();
                                    probe::probe_classes_on_folds(x.view(), y, names.len(), t.as_deref(), &f, params)?
                                }
                                None => probe::probe_classes(x.view(), y, names.len(), t.as_deref(), params)?,
                            };
                            row.probe = "logistic";
                            row.accuracy = Some(r.accuracy);
                            row.accuracy_ci_low = r.ci.map(|c| c.0);
                            row.accuracy_ci_high = r.ci.map(|c| c.1);
                            row.balanced_accuracy = Some(r.balanced_accuracy);
                            row.macro_f1 = Some(r.macro_f1);
                            row.auroc = Some(r.auroc).filter(|v| v.is_finite());
                            row.control_accuracy = r.control_accuracy;
                            row.selectivity = r.selectivity();
                            row.p_value = r.p_value;
                            row.regularisation = median(&r.c);
                            row.control_by = types.as_ref().map(|t| t.1.clone()).unwrap_or_default();
                        }
                        Target::Numeric(y) => {
                            let r = probe::probe_numeric(x.view(), y, params)?;
                            row.probe = "ridge";
                            row.r2 = Some(r.r2);
                            row.r2_ci_low = r.r2_ci.map(|c| c.0);
                            row.r2_ci_high = r.r2_ci.map(|c| c.1);
                            row.pearson_r = Some(r.pearson);
                            row.p_value = r.p_value;
                            row.regularisation = median(&r.alpha);
                        }
                    }
                    out.push(row);
                }
                progress();
                Ok(out)
            };
            run().map_err(in_partition(p))
        })
        .collect::<Result<_>>()?;
    let mut rows: Vec<ProbeRow> = rows.into_iter().flatten().collect();
    rows.sort_by(|a, b| (&a.concept, a.partition).cmp(&(&b.concept, b.partition)));
    Ok(rows)
}

/// One row of directions.parquet.
#[derive(Debug, Clone)]
pub struct DirectionRow {
    pub concept: String,
    pub class: String,
    pub partition: Partition,
    pub method: Method,
    pub direction: Vec<f32>,
    pub norm: f64,
}

/// A cosine between two directions (direction_cosines.parquet).
#[derive(Debug, Clone)]
pub struct CosineRow {
    pub kind: &'static str,
    pub method: Method,
    pub a: String,
    pub b: String,
    pub cosine: f64,
}

fn classes_of(concept: &Concept) -> Result<(&[usize], &[String])> {
    match &concept.target {
        Target::Classes { y, names } => Ok((y, names)),
        Target::Numeric(_) => Err(concept_err(&concept.name, "directions need classes, not a number")),
    }
}

pub fn directions_store(
    store: &Store,
    concepts: &[String],
    filters: &Filters,
    methods: &[Method],
    logistic: &CheckedLogistic,
    progress: &(dyn Fn() + Sync),
) -> Result<(Vec<DirectionRow>, Vec<CosineRow>)> {
    check_concepts(store, concepts)?;
    let partitions = filters.matching(store)?;
    let cols: Vec<&str> = concepts.iter().map(String::as_str).collect();
    let rows: Vec<Vec<DirectionRow>> = partitions
        .par_iter()
        .map(|&p| {
            let run = || -> Result<_> {
                let l = load(store, p, &cols)?;
                let mut out = Vec::new();
                for c in concepts {
                    let concept = l.concept(c)?;
                    let (y, names) = classes_of(&concept)?;
                    let x = l.x.select(Axis(0), &concept.rows);
                    for &m in methods {
                        let dirs = match m {
                            Method::DiffMeans => directions::diff_means(x.view(), y, names.len()),
                            Method::Lda => directions::lda(x.view(), y, names.len())?,
                            Method::Probe => directions::probe(x.view(), y, names.len(), logistic)?,
                        };
                        for d in dirs {
                            out.push(DirectionRow {
                                concept: c.clone(),
                                class: names[d.class].clone(),
                                partition: p,
                                method: m,
                                direction: d.unit.iter().map(|&v| v as f32).collect(),
                                norm: d.norm,
                            });
                        }
                    }
                }
                progress();
                Ok(out)
            };
            run().map_err(in_partition(p))
        })
        .collect::<Result<_>>()?;
    let rows: Vec<DirectionRow> = rows.into_iter().flatten().collect();
    Ok((rows.clone(), direction_cosines(&rows)))
}

/// Cosines between concepts (same partition), between layers (same concept,
/// class, tower, site, selector) and between the towers' embeds directions.
fn direction_cosines(rows: &[DirectionRow]) -> Vec<CosineRow> {
    let label = |r: &DirectionRow| format!("{}={} @ {}", r.concept, r.class, r.partition);
    let cos = |a: &DirectionRow, b: &DirectionRow| {
        let (x, y) = (
            ndarray::ArrayView1::from(&a.direction[..]).mapv(f64::from),
            ndarray::ArrayView1::from(&b.direction[..]).mapv(f64::from),
        );
        cosine(x.view(), y.view())
    };
    let mut out = Vec::new();
    for (i, a) in rows.iter().enumerate() {
        for b in &rows[i + 1..] {
            if a.method != b.method || a.direction.len() != b.direction.len() {
                continue;
            }
            let kind = if a.partition == b.partition && (a.concept != b.concept || a.class != b.class) {
                "concepts"
            } else if a.concept == b.concept
                && a.class == b.class
                && a.partition.tower == b.partition.tower
                && a.partition.site == b.partition.site
                && a.partition.selector == b.partition.selector
            {
                "layers"
            } else if a.concept == b.concept
                && a.class == b.class
                && a.partition.site == Site::Embeds
                && b.partition.site == Site::Embeds
                && a.partition.tower != b.partition.tower
            {
                "towers"
            } else {
                continue;
            };
            out.push(CosineRow { kind, method: a.method, a: label(a), b: label(b), cosine: cos(a, b) });
        }
    }
    out
}

/// geometry.json's numbers.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GeometryReport {
    pub pairs: usize,
    pub modality_gap: Option<f64>,
    pub cone_image: Option<f64>,
    pub cone_text: Option<f64>,
    pub retrieval_i2t_r1: Option<f64>,
    pub retrieval_i2t_r5: Option<f64>,
    pub retrieval_t2i_r1: Option<f64>,
    pub retrieval_t2i_r5: Option<f64>,
    pub cka_rows: usize,
    /// concept -> {text_to_image, image_to_text} accuracy of a probe trained on one modality's embeds.
    pub transfer: BTreeMap<String, BTreeMap<String, f64>>,
}

#[derive(Debug, Clone)]
pub struct CkaRow {
    pub a: Partition,
    pub b: Partition,
    pub cka: f64,
}

#[derive(Debug, Clone)]
pub struct SeparabilityRow {
    pub concept: String,
    pub partition: Partition,
    pub fisher_ratio: f64,
    pub silhouette: f64,
}

fn embeds(tower: Tower) -> Partition {
    Partition { tower, site: Site::Embeds, layer: 0, selector: Selector::Pooled }
}

/// Rows of `a` and `b` that belong to the same samples, in sample order.
fn paired(a: &Loaded, b: &Loaded) -> (Vec<usize>, Vec<usize>) {
    let index: BTreeMap<u32, usize> = b.sample.iter().enumerate().map(|(i, &s)| (s, i)).collect();
    a.sample.iter().enumerate().filter_map(|(i, s)| index.get(s).map(|&j| (i, j))).unzip()
}

/// Seeded subsample of at most `cap` row indices (all when fewer).
fn subsample(n: usize, cap: usize, seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    if n > cap {
        Rng::new(seed).shuffle(&mut idx);
        idx.truncate(cap);
        idx.sort_unstable();
    }
    idx
}

pub struct GeometryParams {
    pub cka_rows: usize,
    pub silhouette_rows: usize,
    pub seed: u64,
    pub concepts: Vec<String>,
}

pub fn geometry_store(
    store: &Store,
    filters: &Filters,
    params: &GeometryParams,
    logistic: &CheckedLogistic,
    progress: &(dyn Fn() + Sync),
) -> Result<(GeometryReport, Vec<CkaRow>, Vec<SeparabilityRow>)> {
    if !params.concepts.is_empty() {
        check_concepts(store, &params.concepts)?;
    }
    let all = store.partitions()?;
    let cols: Vec<&str> = params.concepts.iter().map(String::as_str).collect();
    let mut report = GeometryReport::default();
    if all.contains(&embeds(Tower::Vision)) && all.contains(&embeds(Tower::Text)) {
        let (img, txt) = (load(store, embeds(Tower::Vision), &cols)?, load(store, embeds(Tower::Text), &cols)?);
        let (ia, ta) = paired(&img, &txt);
        let (xi, xt) = (img.x.select(Axis(0), &ia), txt.x.select(Axis(0), &ta));
        report.pairs = ia.len();
        report.modality_gap = Some(geometry::modality_gap(xi.view(), xt.view()));
        report.cone_image = Some(geometry::cone(xi.view()));
        report.cone_text = Some(geometry::cone(xt.view()));
        let i2t = geometry::recall_at(xi.view(), xt.view(), &[1, 5]);
        let t2i = geometry::recall_at(xt.view(), xi.view(), &[1, 5]);
        (report.retrieval_i2t_r1, report.retrieval_i2t_r5) = (Some(i2t[0]), Some(i2t[1]));
        (report.retrieval_t2i_r1, report.retrieval_t2i_r5) = (Some(t2i[0]), Some(t2i[1]));
        for c in &params.concepts {
            let col = img.labels.column(c).map_err(|e| AnalysisError::Input(e.to_string()))?;
            let labels = col
                .take(&IdxCa::from_vec("i".into(), ia.iter().map(|&i| i as IdxSize).collect()))
                .map_err(|e| AnalysisError::Input(e.to_string()))?;
            let concept = Concept::from_column(c, &labels)?;
            let Ok((y, names)) = classes_of(&concept) else { continue };
            let (a, b) = (xi.select(Axis(0), &concept.rows), xt.select(Axis(0), &concept.rows));
            let mut t = BTreeMap::new();
            t.insert("text_to_image".to_string(), transfer(b.view(), a.view(), y, names.len(), logistic)?);
            t.insert("image_to_text".to_string(), transfer(a.view(), b.view(), y, names.len(), logistic)?);
            report.transfer.insert(c.clone(), t);
        }
    }

    // CKA between every pair of one-row-per-sample partitions, on shared samples.
    let parts: Vec<Partition> = filters.matching(store)?.into_iter().filter(|p| p.selector != Selector::All).collect();
    let loaded: Vec<Loaded> = parts.par_iter().map(|&p| load(store, p, &cols)).collect::<Result<_>>()?;
    let mut common: Option<std::collections::BTreeSet<u32>> = None;
    for l in &loaded {
        let s: std::collections::BTreeSet<u32> = l.sample.iter().copied().collect();
        common = Some(match common {
            None => s,
            Some(c) => c.intersection(&s).copied().collect(),
        });
    }
    let common: Vec<u32> = common.unwrap_or_default().into_iter().collect();
    let keep: Vec<u32> = subsample(common.len(), params.cka_rows, params.seed).into_iter().map(|i| common[i]).collect();
    report.cka_rows = keep.len();
    let inputs: Vec<CkaInput> = loaded
        .par_iter()
        .map(|l| {
            let pos: BTreeMap<u32, usize> = l.sample.iter().enumerate().map(|(i, &s)| (s, i)).collect();
            let rows: Vec<usize> = keep.iter().map(|s| pos[s]).collect();
            CkaInput::new(l.x.select(Axis(0), &rows).view())
        })
        .collect();
    let pairs: Vec<(usize, usize)> = (0..parts.len()).flat_map(|i| (i..parts.len()).map(move |j| (i, j))).collect();
    let cka: Vec<CkaRow> = pairs
        .par_iter()
        .map(|&(i, j)| CkaRow { a: parts[i], b: parts[j], cka: linear_cka(&inputs[i], &inputs[j]) })
        .collect();

    let mut sep = Vec::new();
    for c in &params.concepts {
        let rows: Vec<SeparabilityRow> = loaded
            .par_iter()
            .map(|l| {
                let concept = l.concept(c)?;
                let (y, names) = classes_of(&concept)?;
                let x = l.x.select(Axis(0), &concept.rows);
                let sub = subsample(y.len(), params.silhouette_rows, params.seed);
                let ys: Vec<usize> = sub.iter().map(|&i| y[i]).collect();
                let r = SeparabilityRow {
                    concept: c.clone(),
                    partition: l.partition,
                    fisher_ratio: geometry::fisher_ratio(x.view(), y, names.len())
                        .map_err(in_partition(l.partition))?,
                    silhouette: geometry::silhouette(x.select(Axis(0), &sub).view(), &ys, names.len())?,
                };
                progress();
                Ok(r)
            })
            .collect::<Result<_>>()?;
        sep.extend(rows);
    }
    Ok((report, cka, sep))
}

/// Accuracy on `test` of a probe fitted on `train` (same rows, same labels),
/// standardised with the training modality's scaler.
pub fn transfer(
    train: ndarray::ArrayView2<f64>,
    test: ndarray::ArrayView2<f64>,
    y: &[usize],
    k: usize,
    p: &CheckedLogistic,
) -> Result<f64> {
    let s = Standardizer::fit(train);
    let xs = s.transform(train);
    let c = logistic::choose_c(xs.view(), y, k, p)?;
    let m = logistic::fit(xs.view(), y, k, c, p)?;
    let pred = crate::metrics::argmax_rows(m.predict_proba(s.transform(test).view()).view());
    Ok(crate::metrics::accuracy(y, &pred))
}

/// One row of erase.parquet.
#[derive(Debug, Clone)]
pub struct EraseRow {
    pub concept: String,
    pub partition: Partition,
    pub n: usize,
    pub rank: usize,
    pub accuracy_before: f64,
    pub accuracy_after: f64,
    /// The majority-class rate: what a constant predictor scores.
    pub chance: f64,
}

pub fn erase_store(
    store: &Store,
    concept: &str,
    filters: &Filters,
    params: &CheckedProbe,
    progress: &(dyn Fn() + Sync),
) -> Result<Vec<EraseRow>> {
    check_concepts(store, &[concept.to_string()])?;
    let partitions = filters.matching(store)?;
    partitions
        .par_iter()
        .map(|&p| {
            let run = || -> Result<_> {
                let l = load(store, p, &[concept])?;
                let c = l.concept(concept)?;
                c.check_folds(params.folds)?;
                let (y, names) = classes_of(&c)?;
                let x = l.x.select(Axis(0), &c.rows);
                let k = names.len();
                let eraser = Leace::fit(x.view(), y, k)?;
                let quick = CheckedProbe { bootstrap: 0, permutations: 0, ..params.clone() };
                let before = probe::probe_classes(x.view(), y, k, None, &quick)?;
                let after = probe::erased_accuracy(x.view(), y, k, &quick)?;
                let mut counts = vec![0usize; k];
                for &v in y {
                    counts[v] += 1;
                }
                progress();
                Ok(EraseRow {
                    concept: concept.to_string(),
                    partition: p,
                    n: y.len(),
                    rank: eraser.rank,
                    accuracy_before: before.accuracy,
                    accuracy_after: after,
                    chance: *counts.iter().max().unwrap_or(&0) as f64 / y.len() as f64,
                })
            };
            run().map_err(in_partition(p))
        })
        .collect()
}
