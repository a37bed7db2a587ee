//! Paths inside a store. The hive layout is the format other tools read:
//! `acts/tower=<t>/site=<s>/layer=<l>/selector=<k>/part-<shard>-<n>.parquet`.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{Result, StoreError, io};
use crate::names::{Selector, Site, Tower};

pub const MANIFEST: &str = "manifest.json";
pub const SAMPLES: &str = "samples.parquet";
pub const TOKENS: &str = "tokens.parquet";
pub const ERRORS: &str = "errors.parquet";
pub const ACTS: &str = "acts";
pub const PROGRESS: &str = "progress";
pub const LOGIT_LENS: &str = "logit_lens.parquet";

/// One (tower, site, layer, selector): a folder of part files of one width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Partition {
    pub tower: Tower,
    pub site: Site,
    pub layer: usize,
    pub selector: Selector,
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tower={}/site={}/layer={}/selector={}", self.tower, self.site, self.layer, self.selector)
    }
}

impl Partition {
    pub fn dir(&self, root: &Path) -> PathBuf {
        root.join(ACTS).join(self.to_string())
    }

    /// The part file of one shard's chunk.
    pub fn part(&self, root: &Path, shard: usize, chunk: usize) -> PathBuf {
        self.dir(root).join(format!("part-{shard:03}-{chunk:06}.parquet"))
    }
}

fn key_value<'a>(name: &'a str, key: &str) -> Option<&'a str> {
    name.strip_prefix(key)?.strip_prefix('=')
}

/// Every partition folder under `root/acts` that holds at least one part file.
pub fn list_partitions(root: &Path) -> Result<Vec<Partition>> {
    let acts = root.join(ACTS);
    let mut out = Vec::new();
    if !acts.is_dir() {
        return Ok(out);
    }
    let sub = |p: &Path| -> Result<Vec<(String, PathBuf)>> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(p).map_err(io(p))? {
            let e = e.map_err(io(p))?;
            if e.path().is_dir() {
                v.push((e.file_name().to_string_lossy().into_owned(), e.path()));
            }
        }
        Ok(v)
    };
    for (t, tp) in sub(&acts)? {
        let Some(tower) = key_value(&t, "tower") else { continue };
        for (s, sp) in sub(&tp)? {
            let Some(site) = key_value(&s, "site") else { continue };
            for (l, lp) in sub(&sp)? {
                let Some(layer) = key_value(&l, "layer") else { continue };
                for (k, kp) in sub(&lp)? {
                    let Some(selector) = key_value(&k, "selector") else { continue };
                    let layer = layer.parse().map_err(|_| StoreError::BadPartition {
                        partition: kp.display().to_string(),
                        message: format!("layer '{layer}' is not a number"),
                    })?;
                    let p =
                        Partition { tower: tower.parse()?, site: site.parse()?, layer, selector: selector.parse()? };
                    if !part_files(&kp)?.is_empty() {
                        out.push(p);
                    }
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The finished part files of a partition folder, sorted (temporaries excluded).
pub fn part_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v = Vec::new();
    if !dir.is_dir() {
        return Ok(v);
    }
    for e in std::fs::read_dir(dir).map_err(io(dir))? {
        let p = e.map_err(io(dir))?.path();
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.starts_with("part-") && name.ends_with(".parquet") {
            v.push(p);
        }
    }
    v.sort();
    Ok(v)
}

/// Writes through a temporary beside the target, then renames: readers see
/// the whole file or none of it.
pub fn write_atomic(path: &Path, write: impl FnOnce(&mut std::fs::File) -> Result<()>) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    let tmp = tmp_path(path);
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    write(&mut f)?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// `.name.tmp-<pid>` beside `path`: hidden from part listings and unique per process.
pub fn tmp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// A JSON file as `T`; `Ok(None)` when it does not exist.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    if !path.exists() {
        return Ok(None);
    }
    let bytes = std::fs::read(path).map_err(io(path))?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| StoreError::BadManifest { path: path.to_path_buf(), message: e.to_string() })
}
