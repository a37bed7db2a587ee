//! `RESULTS/probes.parquet` (and `.csv`): one row per concept x partition x probe.

use std::path::Path;

use mmprobe_store::Partition;
use mmprobe_store::store::write_parquet;
use polars::prelude::*;

use super::{Read, frame, partition_columns, read_err, write_csv};
use crate::error::Result;

/// Which probe a row's numbers come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProbeKind {
    /// Multinomial logistic regression on classes: accuracy.
    Logistic,
    /// Ridge regression on a numeric concept: R².
    Ridge,
    /// Ordinary least squares on a numeric concept: R².
    Linear,
    /// An RBF support vector machine on classes.
    Svm,
    /// k nearest neighbours on classes.
    Knn,
    /// A decision tree on classes.
    Tree,
}

impl ProbeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Logistic => "logistic",
            ProbeKind::Ridge => "ridge",
            ProbeKind::Linear => "linear",
            ProbeKind::Svm => "svm",
            ProbeKind::Knn => "knn",
            ProbeKind::Tree => "tree",
        }
    }

    /// Classes (scored by accuracy) rather than a number (R²).
    pub fn classes(self) -> bool {
        !matches!(self, ProbeKind::Ridge | ProbeKind::Linear)
    }

    /// A linear probe (logistic, ridge, least squares).
    pub fn linear(self) -> bool {
        matches!(self, ProbeKind::Logistic | ProbeKind::Ridge | ProbeKind::Linear)
    }

    /// The score column's name in words.
    pub fn metric(self) -> &'static str {
        if self.classes() { "accuracy" } else { "R²" }
    }
}

impl std::str::FromStr for ProbeKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        [ProbeKind::Logistic, ProbeKind::Ridge, ProbeKind::Linear, ProbeKind::Svm, ProbeKind::Knn, ProbeKind::Tree]
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown probe '{s}'"))
    }
}

/// What kind of probing a row reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProbeMethod {
    /// A cross-validated probe on every feature.
    Cv,
    /// The online codelength (MDL).
    Mdl,
    /// A cross-validated probe on the top k features of each training fold.
    Sparse,
}

impl ProbeMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeMethod::Cv => "cv",
            ProbeMethod::Mdl => "mdl",
            ProbeMethod::Sparse => "sparse",
        }
    }
}

impl std::str::FromStr for ProbeMethod {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cv" | "" => Ok(ProbeMethod::Cv),
            "mdl" => Ok(ProbeMethod::Mdl),
            "sparse" => Ok(ProbeMethod::Sparse),
            other => Err(format!("unknown probe method '{other}' (cv, mdl, sparse)")),
        }
    }
}

/// One row of probes.parquet.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeRow {
    pub concept: String,
    pub partition: Partition,
    pub probe: ProbeKind,
    pub n: usize,
    /// Distinct groups (samples, or `--group-column` values) the folds split.
    pub n_groups: usize,
    pub n_classes: usize,
    /// Classes: the share of the most common class, what a constant guess
    /// scores (a probe on states that carry nothing scores it, not 1/K).
    pub majority: Option<f64>,
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
    /// p-values adjusted across the partitions of one concept.
    pub p_value_bh: Option<f64>,
    pub p_value_holm: Option<f64>,
    pub r2: Option<f64>,
    pub r2_ci_low: Option<f64>,
    pub r2_ci_high: Option<f64>,
    pub pearson_r: Option<f64>,
    /// The median regularisation over folds (C for logistic, alpha for ridge).
    pub regularisation: Option<f64>,
    pub control_by: String,
    /// What the folds kept together: `sample` or a samples column.
    pub group_by: String,
    pub folds: usize,
    pub repeats: usize,
    /// How the interval was made (`corrected-repeated-cv`, `oof-bootstrap`).
    pub interval: String,
    /// Why the partition was not probed (too few rows or groups), if it was not.
    pub skipped: Option<String>,
    pub method: ProbeMethod,
    /// MDL: online and uniform codelength in bits, and their ratio.
    pub codelength: Option<f64>,
    pub uniform_codelength: Option<f64>,
    pub compression: Option<f64>,
    /// MDL of the control task, on the same order and blocks.
    pub control_codelength: Option<f64>,
    pub control_compression: Option<f64>,
    /// Sparse probes: how many features, which ones (most often chosen first)
    /// and in how many of the folds x repeats each was chosen.
    pub k: Option<usize>,
    pub features: Vec<u32>,
    pub feature_counts: Vec<u32>,
}

impl ProbeRow {
    /// A row with no numbers yet.
    pub fn empty(concept: &str, partition: Partition, probe: ProbeKind) -> ProbeRow {
        ProbeRow {
            concept: concept.to_string(),
            partition,
            probe,
            n: 0,
            n_groups: 0,
            n_classes: 0,
            majority: None,
            dropped_null: 0,
            accuracy: None,
            accuracy_ci_low: None,
            accuracy_ci_high: None,
            balanced_accuracy: None,
            macro_f1: None,
            auroc: None,
            control_accuracy: None,
            selectivity: None,
            p_value: None,
            p_value_bh: None,
            p_value_holm: None,
            r2: None,
            r2_ci_low: None,
            r2_ci_high: None,
            pearson_r: None,
            regularisation: None,
            control_by: String::new(),
            group_by: String::new(),
            folds: 0,
            repeats: 0,
            interval: String::new(),
            skipped: None,
            method: ProbeMethod::Cv,
            codelength: None,
            uniform_codelength: None,
            compression: None,
            control_codelength: None,
            control_compression: None,
            k: None,
            features: Vec::new(),
            feature_counts: Vec::new(),
        }
    }

    /// Accuracy for classes, R² for numbers.
    pub fn score(&self) -> Option<f64> {
        if self.probe.classes() { self.accuracy } else { self.r2 }
    }

    pub fn ci(&self) -> (Option<f64>, Option<f64>) {
        if self.probe.classes() {
            (self.accuracy_ci_low, self.accuracy_ci_high)
        } else {
            (self.r2_ci_low, self.r2_ci_high)
        }
    }

    /// The score a constant guess makes: the majority class's share (1/K when
    /// the table does not say), 0 for R².
    pub fn chance(&self) -> f64 {
        if self.probe.classes() { self.majority.unwrap_or(1.0 / self.n_classes.max(1) as f64) } else { 0.0 }
    }

    /// Not distinguishable from chance: the interval covers chance, or the
    /// Holm-adjusted p-value (else BH, else raw) is above 0.05.
    pub fn covers_chance(&self) -> bool {
        let ci = matches!(self.ci(), (Some(lo), _) if lo <= self.chance());
        let p = self.p_value_holm.or(self.p_value_bh).or(self.p_value).is_some_and(|p| p > 0.05);
        ci || p
    }
}

fn opt(v: impl Iterator<Item = Option<f64>>) -> Vec<Option<f64>> {
    v.collect()
}

/// The table as a frame; `lists_as_text` writes the feature lists as
/// comma-separated text (CSV has no list type).
pub fn frame_of(rows: &[ProbeRow], lists_as_text: bool) -> Result<DataFrame> {
    let parts: Vec<Partition> = rows.iter().map(|r| r.partition).collect();
    let mut cols = vec![Column::new("concept".into(), rows.iter().map(|r| r.concept.as_str()).collect::<Vec<_>>())];
    cols.extend(partition_columns("", &parts));
    let u = |f: fn(&ProbeRow) -> usize| rows.iter().map(|r| f(r) as u32).collect::<Vec<_>>();
    cols.extend([
        Column::new("probe".into(), rows.iter().map(|r| r.probe.as_str()).collect::<Vec<_>>()),
        Column::new("n".into(), u(|r| r.n)),
        Column::new("n_groups".into(), u(|r| r.n_groups)),
        Column::new("n_classes".into(), u(|r| r.n_classes)),
        Column::new("majority".into(), opt(rows.iter().map(|r| r.majority))),
        Column::new("dropped_null".into(), u(|r| r.dropped_null)),
        Column::new("accuracy".into(), opt(rows.iter().map(|r| r.accuracy))),
        Column::new("accuracy_ci_low".into(), opt(rows.iter().map(|r| r.accuracy_ci_low))),
        Column::new("accuracy_ci_high".into(), opt(rows.iter().map(|r| r.accuracy_ci_high))),
        Column::new("balanced_accuracy".into(), opt(rows.iter().map(|r| r.balanced_accuracy))),
        Column::new("macro_f1".into(), opt(rows.iter().map(|r| r.macro_f1))),
        Column::new("auroc".into(), opt(rows.iter().map(|r| r.auroc))),
        Column::new("control_accuracy".into(), opt(rows.iter().map(|r| r.control_accuracy))),
        Column::new("selectivity".into(), opt(rows.iter().map(|r| r.selectivity))),
        Column::new("p_value".into(), opt(rows.iter().map(|r| r.p_value))),
        Column::new("p_value_bh".into(), opt(rows.iter().map(|r| r.p_value_bh))),
        Column::new("p_value_holm".into(), opt(rows.iter().map(|r| r.p_value_holm))),
        Column::new("r2".into(), opt(rows.iter().map(|r| r.r2))),
        Column::new("r2_ci_low".into(), opt(rows.iter().map(|r| r.r2_ci_low))),
        Column::new("r2_ci_high".into(), opt(rows.iter().map(|r| r.r2_ci_high))),
        Column::new("pearson_r".into(), opt(rows.iter().map(|r| r.pearson_r))),
        Column::new("regularisation".into(), opt(rows.iter().map(|r| r.regularisation))),
        Column::new("control_by".into(), rows.iter().map(|r| r.control_by.as_str()).collect::<Vec<_>>()),
        Column::new("group_by".into(), rows.iter().map(|r| r.group_by.as_str()).collect::<Vec<_>>()),
        Column::new("folds".into(), u(|r| r.folds)),
        Column::new("repeats".into(), u(|r| r.repeats)),
        Column::new("interval".into(), rows.iter().map(|r| r.interval.as_str()).collect::<Vec<_>>()),
        Column::new("skipped".into(), rows.iter().map(|r| r.skipped.as_deref()).collect::<Vec<_>>()),
        Column::new("method".into(), rows.iter().map(|r| r.method.as_str()).collect::<Vec<_>>()),
        Column::new("codelength".into(), opt(rows.iter().map(|r| r.codelength))),
        Column::new("uniform_codelength".into(), opt(rows.iter().map(|r| r.uniform_codelength))),
        Column::new("compression".into(), opt(rows.iter().map(|r| r.compression))),
        Column::new("control_codelength".into(), opt(rows.iter().map(|r| r.control_codelength))),
        Column::new("control_compression".into(), opt(rows.iter().map(|r| r.control_compression))),
        Column::new("k".into(), rows.iter().map(|r| r.k.map(|k| k as u32)).collect::<Vec<_>>()),
    ]);
    for name in ["features", "feature_counts"] {
        let list = |r: &ProbeRow| if name == "features" { r.features.clone() } else { r.feature_counts.clone() };
        cols.push(if lists_as_text {
            let text: Vec<String> =
                rows.iter().map(|r| list(r).iter().map(u32::to_string).collect::<Vec<_>>().join(",")).collect();
            Column::new(name.into(), text)
        } else {
            let lists: Vec<Series> = rows.iter().map(|r| Series::new("".into(), list(r).as_slice())).collect();
            Column::new(name.into(), lists)
        });
    }
    frame(Path::new("probes"), rows.len(), cols)
}

/// RESULTS/probes.parquet and probes.csv.
pub fn write(dir: &Path, rows: &[ProbeRow]) -> Result<()> {
    write_parquet(&dir.join("probes.parquet"), &mut frame_of(rows, false)?)?;
    write_csv(&dir.join("probes.csv"), &mut frame_of(rows, true)?)
}

/// A list column of u32 per row; absent (older tables) reads as empty lists.
fn u32_lists(t: &Read, name: &str) -> Result<Vec<Vec<u32>>> {
    let Ok(c) = t.df.column(name) else { return Ok(vec![Vec::new(); t.height()]) };
    let list = c.list().map_err(|e| read_err(t.path, e))?;
    (0..t.height())
        .map(|i| {
            let Some(s) = list.get_as_series(i) else { return Ok(Vec::new()) };
            let s = s.cast(&DataType::UInt32).map_err(|e| read_err(t.path, e))?;
            Ok(s.u32().map_err(|e| read_err(t.path, e))?.into_no_null_iter().collect())
        })
        .collect()
}

/// The rows of an earlier probes.parquet that a new run does not replace
/// (other probes, methods or k), followed by the new rows: a results folder
/// can hold the linear probe, a non-linear one, MDL and sparse probes side
/// by side. A row is replaced when concept, partition, probe, method and k
/// all match.
pub fn merge(earlier: Vec<ProbeRow>, new: Vec<ProbeRow>) -> (Vec<ProbeRow>, usize) {
    let key = |r: &ProbeRow| (r.concept.clone(), r.partition, r.probe, r.method, r.k);
    let replaced: std::collections::BTreeSet<_> = new.iter().map(key).collect();
    let kept: Vec<ProbeRow> = earlier.into_iter().filter(|r| !replaced.contains(&key(r))).collect();
    let n = kept.len();
    let mut rows = kept;
    rows.extend(new);
    rows.sort_by(|a, b| {
        (&a.concept, a.partition, a.probe, a.method, a.k).cmp(&(&b.concept, b.partition, b.probe, b.method, b.k))
    });
    (rows, n)
}

/// Reads RESULTS/probes.parquet back (columns a table lacks read as empty).
pub fn read(dir: &Path) -> Result<Vec<ProbeRow>> {
    let path = dir.join("probes.parquet");
    let t = Read::open(&path)?;
    let parts = t.partitions("")?;
    let probe: Vec<ProbeKind> =
        t.strings("probe")?.iter().map(|s| s.parse().map_err(|e| read_err(&path, e))).collect::<Result<_>>()?;
    let s = |name: &str| -> Result<Vec<String>> {
        if t.df.column(name).is_ok() { t.strings(name) } else { Ok(vec![String::new(); t.height()]) }
    };
    let (concept, control_by, group_by, interval, skipped, method) =
        (t.strings("concept")?, s("control_by")?, s("group_by")?, s("interval")?, s("skipped")?, s("method")?);
    let (cl, ucl, comp, ccl, ccomp, kk) = (
        t.floats("codelength")?,
        t.floats("uniform_codelength")?,
        t.floats("compression")?,
        t.floats("control_codelength")?,
        t.floats("control_compression")?,
        t.floats("k")?,
    );
    let (features, feature_counts) = (u32_lists(&t, "features")?, u32_lists(&t, "feature_counts")?);
    let f = |name: &str| t.floats(name);
    let majority = f("majority")?;
    let (acc, lo, hi, bal, f1, roc) = (
        f("accuracy")?,
        f("accuracy_ci_low")?,
        f("accuracy_ci_high")?,
        f("balanced_accuracy")?,
        f("macro_f1")?,
        f("auroc")?,
    );
    let (control, sel, p, bh, holm) =
        (f("control_accuracy")?, f("selectivity")?, f("p_value")?, f("p_value_bh")?, f("p_value_holm")?);
    let (r2, r2_lo, r2_hi, pr, reg) =
        (f("r2")?, f("r2_ci_low")?, f("r2_ci_high")?, f("pearson_r")?, f("regularisation")?);
    let (n, ng, k, dn, folds, repeats) = (
        t.counts("n")?,
        t.counts("n_groups")?,
        t.counts("n_classes")?,
        t.counts("dropped_null")?,
        t.counts("folds")?,
        t.counts("repeats")?,
    );
    (0..t.height())
        .map(|i| -> Result<ProbeRow> {
            Ok(ProbeRow {
                concept: concept[i].clone(),
                partition: parts[i],
                probe: probe[i],
                n: n[i],
                n_groups: ng[i],
                n_classes: k[i],
                majority: majority[i],
                dropped_null: dn[i],
                accuracy: acc[i],
                accuracy_ci_low: lo[i],
                accuracy_ci_high: hi[i],
                balanced_accuracy: bal[i],
                macro_f1: f1[i],
                auroc: roc[i],
                control_accuracy: control[i],
                selectivity: sel[i],
                p_value: p[i],
                p_value_bh: bh[i],
                p_value_holm: holm[i],
                r2: r2[i],
                r2_ci_low: r2_lo[i],
                r2_ci_high: r2_hi[i],
                pearson_r: pr[i],
                regularisation: reg[i],
                control_by: control_by[i].clone(),
                group_by: group_by[i].clone(),
                folds: folds[i],
                repeats: repeats[i],
                interval: interval[i].clone(),
                skipped: Some(skipped[i].clone()).filter(|s| !s.is_empty()),
                method: method[i].parse().map_err(|e: String| read_err(&path, e))?,
                codelength: cl[i],
                uniform_codelength: ucl[i],
                compression: comp[i],
                control_codelength: ccl[i],
                control_compression: ccomp[i],
                k: kk[i].map(|v| v as usize),
                features: features[i].clone(),
                feature_counts: feature_counts[i].clone(),
            })
        })
        .collect()
}

/// The best row per (concept, tower): highest score, ties broken by the
/// lowest partition (tower, site, layer, selector order), skipped rows never.
/// The demo's table and the report's use this one rule.
pub fn best_per_tower(rows: &[ProbeRow]) -> Vec<&ProbeRow> {
    let mut best: std::collections::BTreeMap<(&str, mmprobe_store::Tower), &ProbeRow> = Default::default();
    let scored =
        |r: &&ProbeRow| r.method == ProbeMethod::Cv && r.skipped.is_none() && r.score().is_some_and(f64::is_finite);
    for r in rows.iter().filter(scored) {
        let key = (r.concept.as_str(), r.partition.tower);
        let better = best.get(&key).is_none_or(|b| {
            let (s, t) = (r.score().unwrap_or(f64::NAN), b.score().unwrap_or(f64::NAN));
            s > t || (s == t && r.partition < b.partition)
        });
        if better {
            best.insert(key, r);
        }
    }
    best.into_values().collect()
}
