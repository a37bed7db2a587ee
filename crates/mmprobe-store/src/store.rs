//! Opening a store and reading it: partitions as sample ids plus an
//! `Array2<f32>`, joined to label columns. Stores written by other tools open
//! too: only `samples.parquet` (with a `sample` column) and `acts/` are needed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use polars::prelude::*;

use crate::error::{Result, StoreError, io, pq};
use crate::layout::{ACTS, Partition, SAMPLES, list_partitions, write_atomic};
use crate::manifest::Manifest;
use crate::part::{Activations, partition_samples, read_partition};
use crate::progress::ShardProgress;

pub struct Store {
    pub root: PathBuf,
    /// `None` when the store has no manifest.json (written by another tool).
    pub manifest: Option<Manifest>,
    pub samples: DataFrame,
}

impl Store {
    pub fn open(root: &Path) -> Result<Store> {
        let samples_path = root.join(SAMPLES);
        if samples_path.is_file() && !root.join(ACTS).is_dir() {
            return Err(StoreError::NoActivations(root.to_path_buf()));
        }
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

    /// What is missing from a store before an analysis reads `partitions`: an
    /// extraction that did not finish (its progress files), and partitions
    /// that hold fewer samples than others of the same tower and selector (a
    /// part file lost). One line each; empty when nothing is missing.
    pub fn gaps(&self, partitions: &[Partition]) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for sp in ShardProgress::all(&self.root)? {
            if !sp.complete() {
                out.push(format!(
                    "the store is incomplete: shard {}/{} finished {} of {} chunks (run the same extract again to finish it)",
                    sp.shard,
                    sp.shards,
                    sp.chunks_done.len(),
                    sp.chunks_total
                ));
            }
        }
        let mut groups: std::collections::BTreeMap<_, Vec<(Partition, Vec<u32>)>> = Default::default();
        for &p in partitions {
            groups.entry((p.tower, p.selector)).or_default().push((p, partition_samples(&self.root, p)?));
        }
        for members in groups.values() {
            let mut all: Vec<u32> = members.iter().flat_map(|(_, s)| s.iter().copied()).collect();
            all.sort_unstable();
            all.dedup();
            for (p, s) in members {
                if s.len() < all.len() {
                    let first = all.iter().find(|v| s.binary_search(v).is_err()).copied().unwrap_or_default();
                    out.push(format!(
                        "partition {p} holds {} of the {} samples its tower and selector have elsewhere (missing {}, e.g. sample {first}): a part file is missing",
                        s.len(),
                        all.len(),
                        all.len() - s.len()
                    ));
                }
            }
        }
        Ok(out)
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
    ParquetReader::new(open_parquet(path)?).finish().map_err(pq(path))
}

/// A Parquet file's bytes, read into memory. polars memory-maps a `File` and
/// its mappings outlive the frame, so a sweep over many partitions held every
/// file it had read in its resident memory; owned bytes are freed with the frame.
pub fn open_parquet(path: &Path) -> Result<std::io::Cursor<Vec<u8>>> {
    std::fs::read(path).map(std::io::Cursor::new).map_err(io(path))
}

/// Writes a frame as Parquet, atomically.
pub fn write_parquet(path: &Path, df: &mut DataFrame) -> Result<()> {
    write_atomic(path, |f| {
        ParquetWriter::new(f).with_compression(ParquetCompression::Zstd(None)).finish(df).map(|_| ()).map_err(pq(path))
    })
}
