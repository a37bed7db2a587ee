//! `logit_lens.parquet`: the top-K next tokens that each extracted decoder
//! layer's residual stream reads as (final norm, then the LM head).
//! Written per chunk under `.logit_lens/` while extracting (so a resumed run
//! keeps them) and merged into one file once the store is complete.

use std::path::{Path, PathBuf};

use polars::prelude::*;

use crate::error::{Result, StoreError, pq};
use crate::layout::LOGIT_LENS;
use crate::store::{read_parquet, write_parquet};

pub const LENS_PARTS: &str = ".logit_lens";

#[derive(Debug, Clone, PartialEq)]
pub struct LensRow {
    pub sample: u32,
    pub layer: u32,
    pub selector: String,
    /// 1 = the most likely token.
    pub rank: u32,
    pub token_id: i64,
    pub token: String,
    pub logit: f32,
}

fn frame(path: &Path, rows: &[LensRow]) -> Result<DataFrame> {
    DataFrame::new(
        rows.len(),
        vec![
            Column::new("sample".into(), rows.iter().map(|r| r.sample).collect::<Vec<_>>()),
            Column::new("layer".into(), rows.iter().map(|r| r.layer).collect::<Vec<_>>()),
            Column::new("selector".into(), rows.iter().map(|r| r.selector.as_str()).collect::<Vec<_>>()),
            Column::new("rank".into(), rows.iter().map(|r| r.rank).collect::<Vec<_>>()),
            Column::new("token_id".into(), rows.iter().map(|r| r.token_id).collect::<Vec<_>>()),
            Column::new("token".into(), rows.iter().map(|r| r.token.as_str()).collect::<Vec<_>>()),
            Column::new("logit".into(), rows.iter().map(|r| r.logit).collect::<Vec<_>>()),
        ],
    )
    .map_err(pq(path))
}

/// One chunk's rows, written atomically.
pub fn write_lens_part(root: &Path, shard: usize, chunk: usize, rows: &[LensRow]) -> Result<PathBuf> {
    let dir = root.join(LENS_PARTS);
    std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io { path: dir.clone(), source })?;
    let path = dir.join(format!("part-{shard:03}-{chunk:06}.parquet"));
    write_parquet(&path, &mut frame(&path, rows)?)?;
    Ok(path)
}

/// Every chunk's rows in one `logit_lens.parquet`, ordered by sample, layer, selector, rank.
pub fn merge_lens_parts(root: &Path) -> Result<Option<PathBuf>> {
    let dir = root.join(LENS_PARTS);
    let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(None) };
    let mut parts: Vec<PathBuf> =
        entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "parquet")).collect();
    parts.sort();
    let out = root.join(LOGIT_LENS);
    let mut all: Option<DataFrame> = None;
    for p in &parts {
        let df = read_parquet(p)?;
        all = Some(match all {
            None => df,
            Some(mut a) => {
                a.vstack_mut(&df).map_err(pq(p))?;
                a
            }
        });
    }
    let Some(df) = all else { return Ok(None) };
    let mut df = df.sort(["sample", "layer", "selector", "rank"], SortMultipleOptions::default()).map_err(pq(&out))?;
    write_parquet(&out, &mut df)?;
    Ok(Some(out))
}
