//! `RESULTS/geometry.json` (modality gap, cone, retrieval, transfer),
//! `cka.parquet` and `separability.parquet`.

use std::collections::BTreeMap;
use std::path::Path;

use mmprobe_store::Partition;
use mmprobe_store::store::write_parquet;
use polars::prelude::*;

use super::{Read, frame, partition_columns, read_err, write_err};
use crate::error::Result;

/// geometry.json's numbers.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct GeometryReport {
    /// Image-text pairs (samples with both embeds).
    pub pairs: usize,
    pub modality_gap: Option<f64>,
    pub cone_image: Option<f64>,
    pub cone_text: Option<f64>,
    pub retrieval_i2t_r1: Option<f64>,
    pub retrieval_i2t_r5: Option<f64>,
    pub retrieval_t2i_r1: Option<f64>,
    pub retrieval_t2i_r5: Option<f64>,
    /// Samples the CKA table was computed on.
    pub cka_rows: usize,
    /// concept -> {text_to_image, image_to_text}: cross-validated accuracy of a
    /// probe trained on one modality's embeds and tested on the other's, on
    /// held-out samples.
    pub transfer: BTreeMap<String, BTreeMap<String, f64>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CkaRow {
    pub a: Partition,
    pub b: Partition,
    pub cka: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SeparabilityRow {
    pub concept: String,
    pub partition: Partition,
    pub fisher_ratio: f64,
    pub silhouette: f64,
}

/// RESULTS/geometry.json, cka.parquet and (with concepts) separability.parquet.
pub fn write(dir: &Path, report: &GeometryReport, cka: &[CkaRow], sep: &[SeparabilityRow]) -> Result<()> {
    let path = dir.join("geometry.json");
    let json = serde_json::to_vec_pretty(report).map_err(|e| write_err(&path, e))?;
    mmprobe_store::layout::write_atomic(&path, |f| {
        std::io::Write::write_all(f, &json)
            .map_err(|source| mmprobe_store::StoreError::Io { path: path.clone(), source })
    })?;
    let path = dir.join("cka.parquet");
    let a: Vec<Partition> = cka.iter().map(|r| r.a).collect();
    let b: Vec<Partition> = cka.iter().map(|r| r.b).collect();
    let mut cols = partition_columns("a_", &a);
    cols.extend(partition_columns("b_", &b));
    cols.push(Column::new("cka".into(), cka.iter().map(|r| r.cka).collect::<Vec<_>>()));
    let mut df = frame(&path, cka.len(), cols)?;
    write_parquet(&path, &mut df)?;
    let path = dir.join("separability.parquet");
    if sep.is_empty() {
        // A stale table from an earlier run must not outlive this one.
        let _ = std::fs::remove_file(&path);
        return Ok(());
    }
    let parts: Vec<Partition> = sep.iter().map(|r| r.partition).collect();
    let mut cols = vec![Column::new("concept".into(), sep.iter().map(|r| r.concept.as_str()).collect::<Vec<_>>())];
    cols.extend(partition_columns("", &parts));
    cols.push(Column::new("fisher_ratio".into(), sep.iter().map(|r| r.fisher_ratio).collect::<Vec<_>>()));
    cols.push(Column::new("silhouette".into(), sep.iter().map(|r| r.silhouette).collect::<Vec<_>>()));
    let mut df = frame(&path, sep.len(), cols)?;
    Ok(write_parquet(&path, &mut df)?)
}

/// Reads RESULTS/geometry.json back.
pub fn read_report(dir: &Path) -> Result<GeometryReport> {
    let path = dir.join("geometry.json");
    let bytes = std::fs::read(&path).map_err(|e| read_err(&path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| read_err(&path, e))
}

/// Reads RESULTS/cka.parquet back.
pub fn read_cka(dir: &Path) -> Result<Vec<CkaRow>> {
    let path = dir.join("cka.parquet");
    let t = Read::open(&path)?;
    let (a, b, v) = (t.partitions("a_")?, t.partitions("b_")?, t.float("cka")?);
    Ok((0..t.height()).map(|i| CkaRow { a: a[i], b: b[i], cka: v[i] }).collect())
}
