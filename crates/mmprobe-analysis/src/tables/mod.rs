//! Result tables (the store format's "Results"): each table has one owner
//! here, a row type with its `write` and `read`, so the commands, the report
//! and the demo agree on every column. Parquet, plus CSV for the tables a
//! person reads in a spreadsheet; written atomically through the store crate.

pub mod directions;
pub mod erase;
pub mod geometry;
pub mod interventions;
pub mod probes;

use std::path::Path;

use mmprobe_store::Partition;
use mmprobe_store::store::read_parquet;
use polars::prelude::*;

use crate::error::{AnalysisError, Result};

pub use directions::{CosineKind, CosineRow, DirectionRow};
pub use erase::EraseRow;
pub use geometry::{CkaRow, GeometryReport, SeparabilityRow};
pub use interventions::InterventionRow;
pub use probes::{ProbeKind, ProbeMethod, ProbeRow};

fn write_err(path: &Path, e: impl std::fmt::Display) -> AnalysisError {
    AnalysisError::Write { path: path.display().to_string(), message: e.to_string() }
}

fn read_err(path: &Path, e: impl std::fmt::Display) -> AnalysisError {
    AnalysisError::Input(format!("{}: {e}", path.display()))
}

/// tower, site, layer, selector columns (with a prefix: `a_tower`...).
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

/// A table read back, with typed column access that names the file on error.
struct Read<'a> {
    path: &'a Path,
    df: DataFrame,
}

impl<'a> Read<'a> {
    fn open(path: &'a Path) -> Result<Read<'a>> {
        Ok(Read { path, df: read_parquet(path)? })
    }

    fn height(&self) -> usize {
        self.df.height()
    }

    fn strings(&self, name: &str) -> Result<Vec<String>> {
        let c = self.df.column(name).map_err(|e| read_err(self.path, e))?;
        let c = c.cast(&DataType::String).map_err(|e| read_err(self.path, e))?;
        let ca = c.str().map_err(|e| read_err(self.path, e))?;
        Ok(ca.iter().map(|v| v.unwrap_or("").to_string()).collect())
    }

    /// A float column; an absent column reads as all null (older tables).
    fn floats(&self, name: &str) -> Result<Vec<Option<f64>>> {
        let Ok(c) = self.df.column(name) else { return Ok(vec![None; self.height()]) };
        let c = c.cast(&DataType::Float64).map_err(|e| read_err(self.path, e))?;
        Ok(c.f64().map_err(|e| read_err(self.path, e))?.iter().collect())
    }

    fn float(&self, name: &str) -> Result<Vec<f64>> {
        Ok(self.floats(name)?.into_iter().map(|v| v.unwrap_or(f64::NAN)).collect())
    }

    fn counts(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self.floats(name)?.into_iter().map(|v| v.unwrap_or(0.0) as usize).collect())
    }

    fn partitions(&self, prefix: &str) -> Result<Vec<Partition>> {
        let (t, s, k) = (
            self.strings(&format!("{prefix}tower"))?,
            self.strings(&format!("{prefix}site"))?,
            self.strings(&format!("{prefix}selector"))?,
        );
        let l = self.counts(&format!("{prefix}layer"))?;
        (0..self.height())
            .map(|i| {
                let bad = |e: mmprobe_store::NameError| read_err(self.path, e);
                Ok(Partition {
                    tower: t[i].parse().map_err(bad)?,
                    site: s[i].parse().map_err(bad)?,
                    layer: l[i],
                    selector: k[i].parse().map_err(bad)?,
                })
            })
            .collect()
    }
}
