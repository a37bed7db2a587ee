//! Opening a store and reading it: partitions as sample ids plus an
//! `Array2<f32>`, joined to label columns. Stores written by other tools open
//! too: only `samples.parquet` (with a `sample` column) and `acts/` are needed.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use polars::prelude::*;

use crate::error::{Result, StoreError, io, pq};
use crate::layout::{ACTS, Partition, SAMPLES, list_partitions, write_atomic};
use crate::manifest::Manifest;
use crate::part::{Activations, read_partition};

pub struct Store {
    pub root: PathBuf,
    /// `None` when the store has no manifest.json (written by another tool).
    pub manifest: Option<Manifest>,
    pub samples: DataFrame,
}

impl Store {
    pub fn open(root: &Path) -> Result<Store> {
        let samples_path = root.join(SAMPLES);
        if !samples_path.is_file() || !root.join(ACTS).is_dir() {
            return Err(StoreError::NotAStore(root.to_path_buf()));
        }
        let samples = read_parquet(&samples_path)?;
        if samples.column("sample").is_err() {
            return Err(StoreError::Parquet { path: samples_path, message: "no 'sample' column".into() });
        }
        Ok(Store { root: root.to_path_buf(), manifest: Manifest::read(root)?, samples })
    }

    pub fn partitions(&self) -> Result<Vec<Partition>> {
        list_partitions(&self.root)
    }

    /// One partition, every row, sorted by (sample, pos). Reads only that folder.
    pub fn load(&self, partition: Partition) -> Result<Activations> {
        read_partition(&self.root, partition)
    }

    /// The columns of samples.parquet that are labels (not sample/id/inputs).
    pub fn label_columns(&self) -> Vec<String> {
        self.samples
            .get_column_names()
            .iter()
            .map(|c| c.to_string())
            .filter(|c| c != "sample" && !crate::dataset::INPUT_COLUMNS.contains(&c.as_str()))
            .collect()
    }

    /// `columns` of samples.parquet, one row per activation row (joined on `sample`).
    pub fn labels_for(&self, sample: &[u32], columns: &[&str]) -> Result<DataFrame> {
        for c in columns {
            if self.samples.column(c).is_err() {
                return Err(StoreError::NoColumn { column: c.to_string(), available: self.label_columns().join(", ") });
            }
        }
        let path = self.root.join(SAMPLES);
        let ids = self.samples.column("sample").map_err(pq(&path))?.cast(&DataType::UInt32).map_err(pq(&path))?;
        let index: HashMap<u32, IdxSize> =
            ids.u32().map_err(pq(&path))?.into_no_null_iter().enumerate().map(|(i, s)| (s, i as IdxSize)).collect();
        let rows: Vec<IdxSize> = sample
            .iter()
            .map(|s| {
                index.get(s).copied().ok_or_else(|| StoreError::Parquet {
                    path: path.clone(),
                    message: format!("activations name sample {s}, which samples.parquet lacks"),
                })
            })
            .collect::<Result<_>>()?;
        let names: Vec<PlSmallStr> = columns.iter().map(|c| PlSmallStr::from(*c)).collect();
        let selected = self.samples.select(names).map_err(pq(&path))?;
        selected.take(&IdxCa::from_vec("idx".into(), rows)).map_err(pq(&path))
    }

    /// A partition with label columns aligned to its rows.
    pub fn load_labeled(&self, partition: Partition, columns: &[&str]) -> Result<(Activations, DataFrame)> {
        let acts = self.load(partition)?;
        let labels = self.labels_for(&acts.sample, columns)?;
        Ok((acts, labels))
    }
}

pub fn read_parquet(path: &Path) -> Result<DataFrame> {
    let f = File::open(path).map_err(io(path))?;
    ParquetReader::new(f).finish().map_err(pq(path))
}

/// Writes a frame as Parquet, atomically.
pub fn write_parquet(path: &Path, df: &mut DataFrame) -> Result<()> {
    write_atomic(path, |f| {
        ParquetWriter::new(f).with_compression(ParquetCompression::Zstd(None)).finish(df).map(|_| ()).map_err(pq(path))
    })
}
