//! Per-shard progress: which chunks are complete, and the inputs that failed.
//! Written atomically after every chunk, so a killed run resumes from it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use polars::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Result, io, pq};
use crate::layout::{ERRORS, PROGRESS, read_json, write_atomic};
use crate::store::write_parquet;

/// An input that could not be used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedInput {
    pub sample: u32,
    pub id: String,
    pub stage: String,
    pub message: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShardProgress {
    pub shard: usize,
    pub shards: usize,
    pub chunks_done: BTreeSet<usize>,
    pub chunks_total: usize,
    pub errors: Vec<FailedInput>,
    pub device: String,
    /// chunk -> part files written for it, so a rerun notices a lost one.
    #[serde(default)]
    pub chunk_parts: std::collections::BTreeMap<usize, usize>,
}

impl ShardProgress {
    pub fn path(root: &Path, shard: usize, shards: usize) -> PathBuf {
        root.join(PROGRESS).join(format!("shard-{shard}-of-{shards}.json"))
    }

    pub fn load(root: &Path, shard: usize, shards: usize) -> Result<Option<ShardProgress>> {
        read_json(&Self::path(root, shard, shards))
    }

    pub fn save(&self, root: &Path) -> Result<()> {
        let path = Self::path(root, self.shard, self.shards);
        let json = serde_json::to_vec_pretty(self).expect("progress serialises");
        write_atomic(&path, |f| std::io::Write::write_all(f, &json).map_err(io(&path)))
    }

    /// Forgets the done chunks whose part files are not all there any more
    /// (`present(chunk)` counts them), so they are extracted again; returns them.
    pub fn forget_lost_chunks(&mut self, present: impl Fn(usize) -> usize) -> Vec<usize> {
        let lost: Vec<usize> = self
            .chunks_done
            .iter()
            .copied()
            .filter(|c| self.chunk_parts.get(c).is_some_and(|&want| present(*c) < want))
            .collect();
        for c in &lost {
            self.chunks_done.remove(c);
            self.chunk_parts.remove(c);
        }
        lost
    }

    pub fn complete(&self) -> bool {
        self.chunks_done.len() == self.chunks_total
    }

    /// Every shard's progress file in a store.
    pub fn all(root: &Path) -> Result<Vec<ShardProgress>> {
        let dir = root.join(PROGRESS);
        let mut out = Vec::new();
        if !dir.is_dir() {
            return Ok(out);
        }
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(io(&dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("shard-")))
            .collect();
        paths.sort();
        for p in paths {
            out.extend(read_json(&p)?);
        }
        Ok(out)
    }
}

/// An addition to a store in progress (or the last one made): the
/// partitions it fills, and the failures recorded before it began, since its
/// shard progress files replace those of the fill before.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Addition {
    pub partitions: Vec<String>,
    pub earlier_errors: Vec<FailedInput>,
}

impl Addition {
    pub fn path(root: &Path) -> PathBuf {
        root.join(PROGRESS).join("addition.json")
    }

    pub fn load(root: &Path) -> Result<Option<Addition>> {
        read_json(&Self::path(root))
    }

    pub fn save(&self, root: &Path) -> Result<()> {
        let path = Self::path(root);
        let dir = root.join(PROGRESS);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let json = serde_json::to_vec_pretty(self).expect("an addition serialises");
        write_atomic(&path, |f| std::io::Write::write_all(f, &json).map_err(io(&path)))
    }
}

/// Every failure a store recorded: its shards' (`shards`, as [`ShardProgress::all`]
/// read them) and those before its last addition, one per sample (the first recorded).
pub fn all_errors(root: &Path, shards: &[ShardProgress]) -> Result<Vec<FailedInput>> {
    let mut out: Vec<FailedInput> = Addition::load(root)?.map(|a| a.earlier_errors).unwrap_or_default();
    out.extend(shards.iter().flat_map(|p| p.errors.iter().cloned()));
    let mut seen = std::collections::HashSet::new();
    out.retain(|e| seen.insert(e.sample));
    Ok(out)
}

/// errors.parquet from every shard's failures, sorted by sample; removed when there are none.
pub fn write_errors(root: &Path, errors: &[FailedInput]) -> Result<()> {
    let path = root.join(ERRORS);
    if errors.is_empty() {
        if path.exists() {
            std::fs::remove_file(&path).map_err(io(&path))?;
        }
        return Ok(());
    }
    let mut e = errors.to_vec();
    e.sort_by_key(|x| x.sample);
    let mut df = DataFrame::new(
        e.len(),
        vec![
            Column::new("sample".into(), e.iter().map(|x| x.sample).collect::<Vec<_>>()),
            Column::new("id".into(), e.iter().map(|x| x.id.clone()).collect::<Vec<_>>()),
            Column::new("stage".into(), e.iter().map(|x| x.stage.clone()).collect::<Vec<_>>()),
            Column::new("message".into(), e.iter().map(|x| x.message.clone()).collect::<Vec<_>>()),
        ],
    )
    .map_err(pq(&path))?;
    write_parquet(&path, &mut df)
}
