//! `RESULTS/directions.parquet` (one unit direction per concept, class,
//! partition and method; a float list, since widths differ across towers) and
//! `RESULTS/direction_cosines.parquet` (cosines between them).

use std::path::Path;

use mmprobe_store::Partition;
use mmprobe_store::store::write_parquet;
use polars::prelude::*;

use super::{Read, frame, partition_columns, read_err};
use crate::directions::Method;
use crate::error::Result;

/// One row of directions.parquet.
#[derive(Debug, Clone, PartialEq)]
pub struct DirectionRow {
    pub concept: String,
    pub class: String,
    pub partition: Partition,
    pub method: Method,
    pub direction: Vec<f32>,
    pub norm: f64,
}

/// What two directions of a cosine have in common.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CosineKind {
    /// Two concepts (or classes) on one partition.
    Concepts,
    /// One concept and class on two layers of one tower, site and selector.
    Layers,
    /// One concept and class on the two towers' embeds (the shared space).
    Towers,
}

impl CosineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CosineKind::Concepts => "concepts",
            CosineKind::Layers => "layers",
            CosineKind::Towers => "towers",
        }
    }
}

impl std::str::FromStr for CosineKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "concepts" => Ok(CosineKind::Concepts),
            "layers" => Ok(CosineKind::Layers),
            "towers" => Ok(CosineKind::Towers),
            other => Err(format!("unknown cosine kind '{other}'")),
        }
    }
}

/// One end of a cosine: a concept's class direction on a partition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DirectionKey {
    pub concept: String,
    pub class: String,
    pub partition: Partition,
}

impl DirectionKey {
    pub fn of(r: &DirectionRow) -> DirectionKey {
        DirectionKey { concept: r.concept.clone(), class: r.class.clone(), partition: r.partition }
    }

    /// `concept=class`.
    pub fn label(&self) -> String {
        format!("{}={}", self.concept, self.class)
    }
}

/// One row of direction_cosines.parquet.
#[derive(Debug, Clone, PartialEq)]
pub struct CosineRow {
    pub kind: CosineKind,
    pub method: Method,
    pub a: DirectionKey,
    pub b: DirectionKey,
    pub cosine: f64,
}

/// RESULTS/directions.parquet and direction_cosines.parquet.
pub fn write(dir: &Path, rows: &[DirectionRow], cosines: &[CosineRow]) -> Result<()> {
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
    let mut cols = vec![
        Column::new("kind".into(), cosines.iter().map(|r| r.kind.as_str()).collect::<Vec<_>>()),
        Column::new("method".into(), cosines.iter().map(|r| r.method.as_str()).collect::<Vec<_>>()),
    ];
    for prefix in ["a_", "b_"] {
        let keys: Vec<&DirectionKey> = cosines.iter().map(|r| if prefix == "a_" { &r.a } else { &r.b }).collect();
        cols.push(Column::new(
            format!("{prefix}concept").into(),
            keys.iter().map(|k| k.concept.as_str()).collect::<Vec<_>>(),
        ));
        cols.push(Column::new(
            format!("{prefix}class").into(),
            keys.iter().map(|k| k.class.as_str()).collect::<Vec<_>>(),
        ));
        cols.extend(partition_columns(prefix, &keys.iter().map(|k| k.partition).collect::<Vec<_>>()));
    }
    cols.push(Column::new("cosine".into(), cosines.iter().map(|r| r.cosine).collect::<Vec<_>>()));
    let mut df = frame(&path, cosines.len(), cols)?;
    Ok(write_parquet(&path, &mut df)?)
}

/// Reads RESULTS/directions.parquet back.
pub fn read(dir: &Path) -> Result<Vec<DirectionRow>> {
    let path = dir.join("directions.parquet");
    let t = Read::open(&path)?;
    let parts = t.partitions("")?;
    let (concept, class, method) = (t.strings("concept")?, t.strings("class")?, t.strings("method")?);
    let norm = t.float("norm")?;
    let list = t.df.column("direction").map_err(|e| read_err(&path, e))?;
    let list = list.list().map_err(|e| read_err(&path, e))?;
    (0..t.height())
        .map(|i| {
            let s = list.get_as_series(i).ok_or_else(|| read_err(&path, format!("row {i} has no direction")))?;
            let s = s.cast(&DataType::Float32).map_err(|e| read_err(&path, e))?;
            let direction: Vec<f32> =
                s.f32().map_err(|e| read_err(&path, e))?.iter().map(|v| v.unwrap_or(f32::NAN)).collect();
            Ok(DirectionRow {
                concept: concept[i].clone(),
                class: class[i].clone(),
                partition: parts[i],
                method: method[i].parse().map_err(|e: String| read_err(&path, e))?,
                direction,
                norm: norm[i],
            })
        })
        .collect()
}

/// Reads RESULTS/direction_cosines.parquet back.
pub fn read_cosines(dir: &Path) -> Result<Vec<CosineRow>> {
    let path = dir.join("direction_cosines.parquet");
    let t = Read::open(&path)?;
    let (kind, method, cosine) = (t.strings("kind")?, t.strings("method")?, t.float("cosine")?);
    let key = |prefix: &str| -> Result<Vec<DirectionKey>> {
        let (c, k, p) =
            (t.strings(&format!("{prefix}concept"))?, t.strings(&format!("{prefix}class"))?, t.partitions(prefix)?);
        Ok((0..t.height())
            .map(|i| DirectionKey { concept: c[i].clone(), class: k[i].clone(), partition: p[i] })
            .collect())
    };
    let (a, b) = (key("a_")?, key("b_")?);
    (0..t.height())
        .map(|i| {
            Ok(CosineRow {
                kind: kind[i].parse().map_err(|e: String| read_err(&path, e))?,
                method: method[i].parse().map_err(|e: String| read_err(&path, e))?,
                a: a[i].clone(),
                b: b[i].clone(),
                cosine: cosine[i],
            })
        })
        .collect()
}
