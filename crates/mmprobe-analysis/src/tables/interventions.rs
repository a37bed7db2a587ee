//! `RESULTS/interventions.parquet` (and `.csv`): what a model does before and
//! after an intervention on one layer, per measured concept and metric.

use std::path::Path;

use mmprobe_store::Partition;
use mmprobe_store::store::write_parquet;
use polars::prelude::*;

use super::{Read, frame, partition_columns, write_csv};
use crate::error::Result;

/// One row of interventions.parquet: one metric of one measured concept
/// under one intervention (a layer, a method, an alpha).
#[derive(Debug, Clone, PartialEq)]
pub struct InterventionRow {
    /// The concept whose direction was erased or steered along.
    pub concept: String,
    /// Where the intervention acted; `selector` names the store rows its
    /// direction or eraser was fitted on.
    pub partition: Partition,
    /// `all`, `image`, `text`, `last` or `cls`.
    pub positions: String,
    /// `erase` or `steer`.
    pub method: String,
    /// `leace`, `diff-means`, `lda` or `probe`.
    pub direction: String,
    /// The steering target class (empty for erasure).
    pub target: String,
    /// Steering strength in residual units (0 for erasure).
    pub alpha: f64,
    /// `zero_shot_accuracy`, `caption_similarity`, `target_rate`, `vqa_accuracy`,
    /// `answer_log_prob` or `probe_accuracy`.
    pub metric: String,
    pub measured_concept: String,
    /// Samples measured (held out from the fit).
    pub n: usize,
    pub before: f64,
    pub after: f64,
    /// 95% paired bootstrap interval of `after - before`.
    pub ci_low: f64,
    pub ci_high: f64,
}

impl InterventionRow {
    pub fn effect(&self) -> f64 {
        self.after - self.before
    }
}

/// RESULTS/interventions.parquet and interventions.csv.
pub fn write(dir: &Path, rows: &[InterventionRow]) -> Result<()> {
    let path = dir.join("interventions.parquet");
    let parts: Vec<Partition> = rows.iter().map(|r| r.partition).collect();
    let s = |f: fn(&InterventionRow) -> &str| rows.iter().map(f).collect::<Vec<_>>();
    let x = |f: fn(&InterventionRow) -> f64| rows.iter().map(f).collect::<Vec<_>>();
    let mut cols = vec![Column::new("concept".into(), s(|r| &r.concept))];
    cols.extend(partition_columns("", &parts));
    cols.extend([
        Column::new("positions".into(), s(|r| &r.positions)),
        Column::new("method".into(), s(|r| &r.method)),
        Column::new("direction".into(), s(|r| &r.direction)),
        Column::new("target".into(), s(|r| &r.target)),
        Column::new("alpha".into(), x(|r| r.alpha)),
        Column::new("metric".into(), s(|r| &r.metric)),
        Column::new("measured_concept".into(), s(|r| &r.measured_concept)),
        Column::new("n".into(), rows.iter().map(|r| r.n as u32).collect::<Vec<_>>()),
        Column::new("before".into(), x(|r| r.before)),
        Column::new("after".into(), x(|r| r.after)),
        Column::new("ci_low".into(), x(|r| r.ci_low)),
        Column::new("ci_high".into(), x(|r| r.ci_high)),
    ]);
    let mut df = frame(&path, rows.len(), cols)?;
    write_parquet(&path, &mut df)?;
    write_csv(&dir.join("interventions.csv"), &mut df)
}

/// Reads RESULTS/interventions.parquet back.
pub fn read(dir: &Path) -> Result<Vec<InterventionRow>> {
    let path = dir.join("interventions.parquet");
    let t = Read::open(&path)?;
    let parts = t.partitions("")?;
    let (concept, positions, method) = (t.strings("concept")?, t.strings("positions")?, t.strings("method")?);
    let (direction, target, metric) = (t.strings("direction")?, t.strings("target")?, t.strings("metric")?);
    let (measured, n, alpha) = (t.strings("measured_concept")?, t.counts("n")?, t.float("alpha")?);
    let (before, after, lo, hi) = (t.float("before")?, t.float("after")?, t.float("ci_low")?, t.float("ci_high")?);
    Ok((0..t.height())
        .map(|i| InterventionRow {
            concept: concept[i].clone(),
            partition: parts[i],
            positions: positions[i].clone(),
            method: method[i].clone(),
            direction: direction[i].clone(),
            target: target[i].clone(),
            alpha: alpha[i],
            metric: metric[i].clone(),
            measured_concept: measured[i].clone(),
            n: n[i],
            before: before[i],
            after: after[i],
            ci_low: lo[i],
            ci_high: hi[i],
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mmprobe_store::{Selector, Site, Tower};

    #[test]
    fn rows_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let row = InterventionRow {
            concept: "colour".into(),
            partition: Partition { tower: Tower::Vision, site: Site::Resid, layer: 3, selector: Selector::Mean },
            positions: "all".into(),
            method: "steer".into(),
            direction: "diff-means".into(),
            target: "red".into(),
            alpha: 2.5,
            metric: "target_rate".into(),
            measured_concept: "colour".into(),
            n: 150,
            before: 0.1,
            after: 0.7,
            ci_low: 0.5,
            ci_high: 0.68,
        };
        let erase = InterventionRow { method: "erase".into(), target: String::new(), alpha: 0.0, ..row.clone() };
        write(dir.path(), &[row.clone(), erase.clone()]).unwrap();
        assert_eq!(read(dir.path()).unwrap(), vec![row, erase]);
        assert!(dir.path().join("interventions.csv").exists());
    }
}
