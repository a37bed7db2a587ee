//! `RESULTS/erase.parquet` (and `.csv`): a probe before and after LEACE.

use std::path::Path;

use mmprobe_store::Partition;
use mmprobe_store::store::write_parquet;
use polars::prelude::*;

use super::{Read, frame, partition_columns, write_csv};
use crate::error::Result;

/// One row of erase.parquet.
#[derive(Debug, Clone, PartialEq)]
pub struct EraseRow {
    pub concept: String,
    pub partition: Partition,
    pub n: usize,
    pub rank: usize,
    pub accuracy_before: f64,
    pub accuracy_after: f64,
    /// The majority-class rate: what a constant predictor scores.
    pub chance: f64,
    pub group_by: String,
}

/// RESULTS/erase.parquet and erase.csv.
pub fn write(dir: &Path, rows: &[EraseRow]) -> Result<()> {
    let path = dir.join("erase.parquet");
    let parts: Vec<Partition> = rows.iter().map(|r| r.partition).collect();
    let mut cols = vec![Column::new("concept".into(), rows.iter().map(|r| r.concept.as_str()).collect::<Vec<_>>())];
    cols.extend(partition_columns("", &parts));
    cols.extend([
        Column::new("n".into(), rows.iter().map(|r| r.n as u32).collect::<Vec<_>>()),
        Column::new("rank".into(), rows.iter().map(|r| r.rank as u32).collect::<Vec<_>>()),
        Column::new("accuracy_before".into(), rows.iter().map(|r| r.accuracy_before).collect::<Vec<_>>()),
        Column::new("accuracy_after".into(), rows.iter().map(|r| r.accuracy_after).collect::<Vec<_>>()),
        Column::new("chance".into(), rows.iter().map(|r| r.chance).collect::<Vec<_>>()),
        Column::new("group_by".into(), rows.iter().map(|r| r.group_by.as_str()).collect::<Vec<_>>()),
    ]);
    let mut df = frame(&path, rows.len(), cols)?;
    write_parquet(&path, &mut df)?;
    write_csv(&dir.join("erase.csv"), &mut df)
}

/// Reads RESULTS/erase.parquet back.
pub fn read(dir: &Path) -> Result<Vec<EraseRow>> {
    let path = dir.join("erase.parquet");
    let t = Read::open(&path)?;
    let parts = t.partitions("")?;
    let (concept, n, rank) = (t.strings("concept")?, t.counts("n")?, t.counts("rank")?);
    let (before, after, chance) = (t.float("accuracy_before")?, t.float("accuracy_after")?, t.float("chance")?);
    let group_by =
        if t.df.column("group_by").is_ok() { t.strings("group_by")? } else { vec![String::new(); t.height()] };
    Ok((0..t.height())
        .map(|i| EraseRow {
            concept: concept[i].clone(),
            partition: parts[i],
            n: n[i],
            rank: rank[i],
            accuracy_before: before[i],
            accuracy_after: after[i],
            chance: chance[i],
            group_by: group_by[i].clone(),
        })
        .collect())
}
