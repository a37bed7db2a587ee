//! Result tables (DESIGN.md "Results"): Parquet, plus CSV for the tables a
//! person reads in a spreadsheet. Written atomically through the store crate.

use std::path::Path;

use mmprobe_store::Partition;
use mmprobe_store::store::write_parquet;
use polars::prelude::*;

use crate::error::{AnalysisError, Result};
use crate::sweep::{CkaRow, CosineRow, DirectionRow, EraseRow, GeometryReport, ProbeRow, SeparabilityRow};

fn write_err(path: &Path, e: impl std::fmt::Display) -> AnalysisError {
    AnalysisError::Write { path: path.display().to_string(), message: e.to_string() }
}

fn partition_columns(prefix: &str, p: &[Partition]) -> Vec<Column> {
    let n = |s: &str| PlSmallStr::from(format!("{prefix}{s}"));
    vec![
        Column::new(n("tower"), p.iter().map(|p| p.tower.as_str()).collect::<Vec<_>>()),
        Column::new(n("site"), p.iter().map(|p| p.site.as_str()).collect::<Vec<_>>()),
        Column::new(n("layer"), p.iter().map(|p| p.layer as u32).collect::<Vec<_>>()),
        Column::new(n("selector"), p.iter().map(|p| p.selector.as_str()).collect::<Vec<_>>()),
    ]
}

fn frame(path: &Path, height: usize, columns: Vec<Column>) -> Result<DataFrame> {
    DataFrame::new(height, columns).map_err(|e| write_err(path, e))
}

fn write_csv(path: &Path, df: &mut DataFrame) -> Result<()> {
    let f = std::fs::File::create(path).map_err(|e| write_err(path, e))?;
    CsvWriter::new(f).finish(df).map_err(|e| write_err(path, e))
}

fn opt(v: impl Iterator<Item = Option<f64>>) -> Vec<Option<f64>> {
    v.collect()
}

pub fn probes_frame(rows: &[ProbeRow]) -> Result<DataFrame> {
    let parts: Vec<Partition> = rows.iter().map(|r| r.partition.expect("probe rows name a partition")).collect();
    let mut cols = vec![Column::new("concept".into(), rows.iter().map(|r| r.concept.as_str()).collect::<Vec<_>>())];
    cols.extend(partition_columns("", &parts));
    cols.extend([
        Column::new("probe".into(), rows.iter().map(|r| r.probe).collect::<Vec<_>>()),
        Column::new("n".into(), rows.iter().map(|r| r.n as u32).collect::<Vec<_>>()),
        Column::new("n_classes".into(), rows.iter().map(|r| r.n_classes as u32).collect::<Vec<_>>()),
        Column::new("dropped_null".into(), rows.iter().map(|r| r.dropped_null as u32).collect::<Vec<_>>()),
        Column::new("accuracy".into(), opt(rows.iter().map(|r| r.accuracy))),
        Column::new("accuracy_ci_low".into(), opt(rows.iter().map(|r| r.accuracy_ci_low))),
        Column::new("accuracy_ci_high".into(), opt(rows.iter().map(|r| r.accuracy_ci_high))),
        Column::new("balanced_accuracy".into(), opt(rows.iter().map(|r| r.balanced_accuracy))),
        Column::new("macro_f1".into(), opt(rows.iter().map(|r| r.macro_f1))),
        Column::new("auroc".into(), opt(rows.iter().map(|r| r.auroc))),
        Column::new("control_accuracy".into(), opt(rows.iter().map(|r| r.control_accuracy))),
        Column::new("selectivity".into(), opt(rows.iter().map(|r| r.selectivity))),
        Column::new("p_value".into(), opt(rows.iter().map(|r| r.p_value))),
        Column::new("r2".into(), opt(rows.iter().map(|r| r.r2))),
        Column::new("r2_ci_low".into(), opt(rows.iter().map(|r| r.r2_ci_low))),
        Column::new("r2_ci_high".into(), opt(rows.iter().map(|r| r.r2_ci_high))),
        Column::new("pearson_r".into(), opt(rows.iter().map(|r| r.pearson_r))),
        Column::new("regularisation".into(), rows.iter().map(|r| r.regularisation).collect::<Vec<_>>()),
        Column::new("control_by".into(), rows.iter().map(|r| r.control_by.as_str()).collect::<Vec<_>>()),
    ]);
    frame(Path::new("probes"), rows.len(), cols)
}

/// RESULTS/probes.parquet and probes.csv.
pub fn write_probes(dir: &Path, rows: &[ProbeRow]) -> Result<()> {
    let mut df = probes_frame(rows)?;
    write_parquet(&dir.join("probes.parquet"), &mut df)?;
    write_csv(&dir.join("probes.csv"), &mut df)
}

/// RESULTS/directions.parquet (direction as a list: widths differ across towers)
/// and direction_cosines.parquet.
pub fn write_directions(dir: &Path, rows: &[DirectionRow], cosines: &[CosineRow]) -> Result<()> {
    let path = dir.join("directions.parquet");
    let parts: Vec<Partition> = rows.iter().map(|r| r.partition).collect();
    let dirs: Vec<Series> = rows.iter().map(|r| Series::new("".into(), r.direction.as_slice())).collect();
    let mut cols = vec![
        Column::new("concept".into(), rows.iter().map(|r| r.concept.as_str()).collect::<Vec<_>>()),
        Column::new("class".into(), rows.iter().map(|r| r.class.as_str()).collect::<Vec<_>>()),
    ];
    cols.extend(partition_columns("", &parts));
    cols.extend([
        Column::new("method".into(), rows.iter().map(|r| r.method.as_str()).collect::<Vec<_>>()),
        Column::new("direction".into(), dirs),
        Column::new("dim".into(), rows.iter().map(|r| r.direction.len() as u32).collect::<Vec<_>>()),
        Column::new("norm".into(), rows.iter().map(|r| r.norm).collect::<Vec<_>>()),
    ]);
    let mut df = frame(&path, rows.len(), cols)?;
    write_parquet(&path, &mut df)?;
    let path = dir.join("direction_cosines.parquet");
    let mut df = frame(
        &path,
        cosines.len(),
        vec![
            Column::new("kind".into(), cosines.iter().map(|r| r.kind).collect::<Vec<_>>()),
            Column::new("method".into(), cosines.iter().map(|r| r.method.as_str()).collect::<Vec<_>>()),
            Column::new("a".into(), cosines.iter().map(|r| r.a.as_str()).collect::<Vec<_>>()),
            Column::new("b".into(), cosines.iter().map(|r| r.b.as_str()).collect::<Vec<_>>()),
            Column::new("cosine".into(), cosines.iter().map(|r| r.cosine).collect::<Vec<_>>()),
        ],
    )?;
    Ok(write_parquet(&path, &mut df)?)
}

/// RESULTS/geometry.json, cka.parquet and (with concepts) separability.parquet.
pub fn write_geometry(dir: &Path, report: &GeometryReport, cka: &[CkaRow], sep: &[SeparabilityRow]) -> Result<()> {
    let path = dir.join("geometry.json");
    let json = serde_json::to_vec_pretty(report).map_err(|e| write_err(&path, e))?;
    std::fs::write(&path, json).map_err(|e| write_err(&path, e))?;
    let path = dir.join("cka.parquet");
    let a: Vec<Partition> = cka.iter().map(|r| r.a).collect();
    let b: Vec<Partition> = cka.iter().map(|r| r.b).collect();
    let mut cols = partition_columns("a_", &a);
    cols.extend(partition_columns("b_", &b));
    cols.push(Column::new("cka".into(), cka.iter().map(|r| r.cka).collect::<Vec<_>>()));
    let mut df = frame(&path, cka.len(), cols)?;
    write_parquet(&path, &mut df)?;
    if !sep.is_empty() {
        let path = dir.join("separability.parquet");
        let parts: Vec<Partition> = sep.iter().map(|r| r.partition).collect();
        let mut cols = vec![Column::new("concept".into(), sep.iter().map(|r| r.concept.as_str()).collect::<Vec<_>>())];
        cols.extend(partition_columns("", &parts));
        cols.push(Column::new("fisher_ratio".into(), sep.iter().map(|r| r.fisher_ratio).collect::<Vec<_>>()));
        cols.push(Column::new("silhouette".into(), sep.iter().map(|r| r.silhouette).collect::<Vec<_>>()));
        let mut df = frame(&path, sep.len(), cols)?;
        write_parquet(&path, &mut df)?;
    }
    Ok(())
}

/// RESULTS/erase.parquet and erase.csv.
pub fn write_erase(dir: &Path, rows: &[EraseRow]) -> Result<()> {
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
    ]);
    let mut df = frame(&path, rows.len(), cols)?;
    write_parquet(&path, &mut df)?;
    write_csv(&dir.join("erase.csv"), &mut df)
}
