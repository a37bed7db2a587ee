//! `probe` over a store: every concept on every matching partition, folds
//! over groups, partitions too small for the folds recorded and skipped,
//! p-values adjusted across the partitions of each concept.

use std::collections::BTreeMap;

use mmprobe_store::Store;
use ndarray::{Array2, Axis};
use polars::prelude::*;

use super::{GroupBy, Loaded, check_concepts, in_partition, load, per_partition};
use crate::error::{AnalysisError, Result};
use crate::folds::Groups;
use crate::labels::{Concept, Target};
use crate::mdl;
use crate::probe::{self, CheckedProbe, FoldPlan};
use crate::select::Filters;
use crate::sparse::{self, Filter};
use crate::stats::{benjamini_hochberg, holm};
use crate::tables::{ProbeKind, ProbeMethod, ProbeRow};

/// What the control task's types are (Hewitt & Liang).
#[derive(Debug, Clone, Default)]
pub enum ControlBy {
    /// `text` when texts repeat across samples, else each sample (shuffled labels).
    Default,
    Column(String),
    #[default]
    Off,
}

/// Everything a probe sweep needs.
#[derive(Debug, Clone)]
pub struct ProbeSweep {
    pub concepts: Vec<String>,
    pub filters: Filters,
    pub params: CheckedProbe,
    pub control_by: ControlBy,
    /// Take the folds from this samples column instead of seeded stratified ones.
    pub fold_column: Option<String>,
    pub group_by: GroupBy,
    pub probing: Probing,
}

/// Which probing a sweep does.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Probing {
    /// Cross-validated probes on every feature.
    #[default]
    Cv,
    /// Online codelength (Voita & Titov 2020), of the concept and its control task.
    Mdl,
    /// Probes on the top k features of each training fold, for every k.
    Sparse { ks: Vec<usize>, filter: Filter },
}

impl Probing {
    pub fn method(&self) -> ProbeMethod {
        match self {
            Probing::Cv => ProbeMethod::Cv,
            Probing::Mdl => ProbeMethod::Mdl,
            Probing::Sparse { .. } => ProbeMethod::Sparse,
        }
    }
}

fn median(v: &[f64]) -> Option<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied()
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

/// Folds given by `--fold-column`: the fold of each row of a partition, and the
/// column's value that names each fold.
struct GivenFolds<'a> {
    column: &'a str,
    fold: Vec<usize>,
    names: Vec<String>,
}

/// Fold ids per row from a samples column: its distinct values, sorted, are folds 0..k.
fn fold_ids<'a>(store: &Store, l: &Loaded, column: &'a str, folds: usize) -> Result<GivenFolds<'a>> {
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
    let fold = values.iter().map(|v| distinct.binary_search(v).expect("a known value")).collect();
    Ok(GivenFolds { column, fold, names: distinct })
}

/// The rows of one concept on one loaded partition, and what they are grouped by.
struct Case<'a> {
    concept: &'a Concept,
    x: Array2<f64>,
    groups: Groups,
    /// Control types per concept row.
    types: Option<Vec<String>>,
    /// Fold ids per concept row from `--fold-column`, and the folds they index.
    given: Option<(Vec<usize>, &'a GivenFolds<'a>)>,
}

impl Case<'_> {
    /// The given folds, or `make`'s.
    fn plan(&self, p: &CheckedProbe, make: impl FnOnce() -> Result<FoldPlan>) -> Result<FoldPlan> {
        match &self.given {
            Some((fold, by)) => {
                // Said here, where the fold's value is known; FoldPlan::given refuses it too.
                if let Some(empty) = FoldPlan::first_empty(fold, by.names.len()) {
                    return Err(AnalysisError::TooSmall(format!(
                        "--fold-column {}: no row where '{}' is set has {} = '{}', so that fold would test nothing",
                        by.column, self.concept.name, by.column, by.names[empty]
                    )));
                }
                FoldPlan::given(fold.clone(), p.folds, &self.groups)
            }
            None => make(),
        }
    }
}

fn classes_only<'a>(c: &'a Concept, what: &str) -> Result<(&'a [usize], usize)> {
    match &c.target {
        Target::Classes { y, names } => Ok((y, names.len())),
        Target::Numeric(_) => {
            Err(AnalysisError::TooSmall(format!("{what} probes classes, and '{}' is a number", c.name)))
        }
    }
}

/// The cross-validated probe on every feature.
fn cv(s: &ProbeSweep, c: &Case, mut row: ProbeRow) -> Result<Vec<ProbeRow>> {
    let p = &s.params;
    match &c.concept.target {
        Target::Classes { y, names } => {
            let plan = c.plan(p, || FoldPlan::classes(y, &c.groups, names.len(), p))?;
            let r = probe::probe_classes_on_folds(c.x.view(), y, names.len(), &c.groups, c.types.as_deref(), &plan, p)?;
            row.repeats = plan.repeats.len();
            row.accuracy = Some(r.accuracy);
            (row.accuracy_ci_low, row.accuracy_ci_high) = (r.ci.map(|c| c.0), r.ci.map(|c| c.1));
            row.balanced_accuracy = Some(r.balanced_accuracy);
            row.macro_f1 = Some(r.macro_f1);
            row.auroc = Some(r.auroc).filter(|v| v.is_finite());
            row.control_accuracy = r.control_accuracy;
            row.selectivity = r.selectivity();
            row.p_value = r.p_value;
            row.regularisation = median(&r.c);
        }
        Target::Numeric(y) => {
            let plan = c.plan(p, || FoldPlan::numeric(&c.groups, p))?;
            let r = probe::probe_numeric_on_folds(c.x.view(), y, &c.groups, &plan, p)?;
            row.repeats = plan.repeats.len();
            row.r2 = Some(r.r2);
            (row.r2_ci_low, row.r2_ci_high) = (r.r2_ci.map(|c| c.0), r.r2_ci.map(|c| c.1));
            row.pearson_r = Some(r.pearson);
            row.p_value = r.p_value;
            row.regularisation = median(&r.alpha);
        }
    }
    let has_interval = row.accuracy_ci_low.is_some() || row.r2_ci_low.is_some();
    row.interval = if has_interval { p.interval.as_str().to_string() } else { String::new() };
    Ok(vec![row])
}

/// The online codelength of the concept and of its control task, on one
/// seeded order of the groups.
fn mdl(s: &ProbeSweep, c: &Case, mut row: ProbeRow) -> Result<Vec<ProbeRow>> {
    let p = &s.params;
    let (y, k) = classes_only(c.concept, "MDL")?;
    let (order, ends) = mdl::group_order(&c.groups, p.seed);
    let strength = p.logistic.params().c.unwrap_or(mdl::DEFAULT_C);
    let m = mdl::online_codelength(c.x.view(), y, k, &order, &ends, strength, &p.logistic)?;
    row.method = ProbeMethod::Mdl;
    row.codelength = Some(m.codelength);
    row.uniform_codelength = Some(m.uniform_codelength);
    row.compression = Some(m.compression);
    row.regularisation = Some(strength);
    if let Some(t) = &c.types {
        let yc = probe::control_labels(y, t, p.seed);
        let mc = mdl::online_codelength(c.x.view(), &yc, k, &order, &ends, strength, &p.logistic)?;
        row.control_codelength = Some(mc.codelength);
        row.control_compression = Some(mc.compression);
    }
    Ok(vec![row])
}

/// One row per k: accuracy on the top k features of each training fold.
fn sparse(s: &ProbeSweep, c: &Case, row: ProbeRow, ks: &[usize], filter: Filter) -> Result<Vec<ProbeRow>> {
    let p = &s.params;
    let (y, k) = classes_only(c.concept, "a sparse probe")?;
    let plan = c.plan(p, || FoldPlan::classes(y, &c.groups, k, p))?;
    let found = sparse::probe_sparse(c.x.view(), y, k, &c.groups, &plan, ks, filter, p)?;
    Ok(found
        .into_iter()
        .map(|f| {
            let mut r = row.clone();
            r.method = ProbeMethod::Sparse;
            r.repeats = plan.repeats.len();
            r.k = Some(f.k);
            r.accuracy = Some(f.accuracy);
            (r.accuracy_ci_low, r.accuracy_ci_high) = (f.ci.map(|c| c.0), f.ci.map(|c| c.1));
            r.interval = if f.ci.is_some() { p.interval.as_str().to_string() } else { String::new() };
            r.features = f.features.iter().map(|&(id, _)| id as u32).collect();
            r.feature_counts = f.features.iter().map(|&(_, n)| n as u32).collect();
            r.control_by = format!("{} filter", filter.as_str());
            r
        })
        .collect())
}

/// One concept on one loaded partition: its rows (one, or one per k).
fn probe_concept(
    s: &ProbeSweep,
    concept: &Concept,
    l: &Loaded,
    groups: &Groups,
    types: Option<&(Vec<String>, String)>,
    given: Option<&GivenFolds>,
) -> Result<Vec<ProbeRow>> {
    let kind = match concept.target {
        Target::Classes { .. } => s.params.classifier().kind(),
        Target::Numeric(_) => s.params.regressor().map_or(ProbeKind::Ridge, |r| r.kind()),
    };
    let mut row = ProbeRow::empty(&concept.name, l.partition, kind);
    row.n = concept.rows.len();
    row.n_classes = concept.n_classes();
    if let Target::Classes { y, names } = &concept.target {
        let mut counts = vec![0usize; names.len()];
        for &c in y {
            counts[c] += 1;
        }
        row.majority = counts.iter().max().map(|&m| m as f64 / y.len().max(1) as f64);
    }
    row.dropped_null = concept.dropped_null;
    row.group_by = s.group_by.name().to_string();
    row.folds = s.params.folds;
    row.control_by = types.map(|t| t.1.clone()).unwrap_or_default();
    let case = Case {
        concept,
        x: l.x.select(Axis(0), &concept.rows),
        groups: groups.subset(&concept.rows),
        types: types.map(|(t, _)| concept.rows.iter().map(|&i| t[i].clone()).collect()),
        given: given.map(|g| (concept.rows.iter().map(|&i| g.fold[i]).collect(), g)),
    };
    row.n_groups = case.groups.count;
    let outcome = match &s.probing {
        Probing::Cv => cv(s, &case, row.clone()),
        Probing::Mdl => mdl(s, &case, row.clone()),
        Probing::Sparse { ks, filter } => sparse(s, &case, row.clone(), ks, *filter),
    };
    match outcome {
        // Too few rows or groups here: recorded and skipped, the sweep goes on.
        Err(AnalysisError::TooSmall(m)) => {
            row.method = s.probing.method();
            row.skipped = Some(m);
            Ok(vec![row])
        }
        other => other,
    }
}

/// Benjamini-Hochberg and Holm across the partitions of each concept (and probe kind).
fn adjust_p_values(rows: &mut [ProbeRow]) {
    let mut by: BTreeMap<(String, ProbeKind), Vec<usize>> = BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        if r.p_value.is_some() {
            by.entry((r.concept.clone(), r.probe)).or_default().push(i);
        }
    }
    for idx in by.values() {
        let p: Vec<f64> = idx.iter().map(|&i| rows[i].p_value.unwrap_or(1.0)).collect();
        for ((&i, bh), ho) in idx.iter().zip(benjamini_hochberg(&p)).zip(holm(&p)) {
            rows[i].p_value_bh = Some(bh);
            rows[i].p_value_holm = Some(ho);
        }
    }
}

/// Probes every concept on every matching partition.
pub fn probe_store(store: &Store, s: &ProbeSweep, progress: &(dyn Fn() + Sync)) -> Result<Vec<ProbeRow>> {
    check_concepts(store, &s.concepts)?;
    s.group_by.check(store)?;
    for (flag, col) in [("--control-by", s.control_by_column()), ("--fold-column", s.fold_column.as_deref())] {
        if let Some(c) = col
            && store.samples.column(c).is_err()
        {
            return Err(AnalysisError::Input(format!("{flag}: no column '{c}' in samples.parquet")));
        }
    }
    let partitions = s.filters.matching(store)?;
    // Validate concepts once, on the samples table, before fitting anything.
    for c in &s.concepts {
        let col = store.samples.column(c).map_err(|e| AnalysisError::Input(e.to_string()))?;
        Concept::from_column(c, col)?.check_folds(s.params.folds)?;
    }
    let cols: Vec<&str> = s.concepts.iter().map(String::as_str).collect();
    let rows: Vec<Vec<ProbeRow>> = per_partition(&partitions, |p| {
        let run = || -> Result<_> {
            let l = load(store, p, &cols)?;
            let groups = s.group_by.groups(store, &l)?;
            let types = control_types(store, &l, &s.control_by)?;
            let given = s.fold_column.as_deref().map(|c| fold_ids(store, &l, c, s.params.folds)).transpose()?;
            let mut out = Vec::new();
            for c in &s.concepts {
                match l.concept(c) {
                    Ok(concept) => out.extend(probe_concept(s, &concept, &l, &groups, types.as_ref(), given.as_ref())?),
                    // Valid on the whole table but not here (one class on this
                    // partition, say): recorded and skipped.
                    Err(AnalysisError::Concept { message, .. }) => {
                        let numeric = l.labels.column(c).is_ok_and(|v| v.dtype().is_float());
                        let kind = if numeric {
                            s.params.regressor().map_or(ProbeKind::Ridge, |r| r.kind())
                        } else {
                            s.params.classifier().kind()
                        };
                        let mut row = ProbeRow::empty(c, p, kind);
                        row.group_by = s.group_by.name().to_string();
                        row.folds = s.params.folds;
                        row.skipped = Some(message);
                        out.push(row);
                    }
                    Err(e) => return Err(e),
                }
            }
            progress();
            Ok(out)
        };
        run().map_err(in_partition(p))
    })?;
    let mut rows: Vec<ProbeRow> = rows.into_iter().flatten().collect();
    rows.sort_by(|a, b| (&a.concept, a.partition).cmp(&(&b.concept, b.partition)));
    adjust_p_values(&mut rows);
    Ok(rows)
}

impl ProbeSweep {
    fn control_by_column(&self) -> Option<&str> {
        match &self.control_by {
            ControlBy::Column(c) => Some(c),
            _ => None,
        }
    }
}
