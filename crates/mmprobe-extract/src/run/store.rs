//! The store a run fills: its manifest and provenance, what an existing
//! store must share with the run, and what `--force` may remove.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mmprobe_store::Dataset;
use mmprobe_store::layout::{self, Partition};
use mmprobe_store::logit_lens::LENS_PARTS;
use mmprobe_store::manifest::{
    DatasetProvenance, ExtractionSpec, Manifest, ModelProvenance, sha256_bytes, sha256_file,
};
use mmprobe_store::progress::ShardProgress;
use tch::Device;

use super::ExtractOptions;
use crate::error::{ExtractError, Result};
use crate::family::ModelDir;
use crate::plan::ExtractionPlan;
use crate::runtime::device_name;
use crate::weights::Checkpoint;

/// sha256 of every weight file, by file name.
pub(super) fn hash_weights(dir: &Path) -> Result<BTreeMap<String, String>> {
    let weights = Checkpoint::open(dir)?;
    let mut hashes = BTreeMap::new();
    for f in weights.files() {
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        hashes.insert(name, sha256_file(f)?);
    }
    Ok(hashes)
}

pub(super) fn provenance(
    opts: &ExtractOptions,
    md: &ModelDir,
    family: &str,
    dataset: &Dataset,
    plan: &ExtractionPlan,
    device: Device,
    hashes: BTreeMap<String, String>,
) -> Result<Manifest> {
    let abs = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()).display().to_string();
    Ok(Manifest {
        format_version: mmprobe_store::manifest::FORMAT_VERSION,
        mmprobe_version: Some(env!("CARGO_PKG_VERSION").to_string()),
        created: Some(mmprobe_store::manifest::now_rfc3339()),
        model: Some(ModelProvenance {
            path: abs(&opts.model),
            family: family.to_string(),
            config_sha256: sha256_bytes(&md.config_bytes),
            weights: hashes,
            dtype: opts.run.dtype.to_string(),
            device: device_name(device),
            allow_tf32: opts.run.allow_tf32,
        }),
        dataset: Some(DatasetProvenance { path: abs(&opts.data), sha256: dataset.sha256.clone(), rows: dataset.len() }),
        extraction: Some(ExtractionSpec { logit_lens: opts.logit_lens, ..plan.spec(opts.chunk_size) }),
        shards: None,
    })
}

/// Makes `root` ready: new stores get a manifest; existing ones must come
/// from the same model, dataset and plan unless `force` empties them first.
/// `reads`: what the run reads, as (what it is, path), which `force` must leave alone.
pub(super) fn prepare_store(root: &Path, manifest: &Manifest, force: bool, reads: &[(&str, &Path)]) -> Result<()> {
    let existing = Manifest::read(root)?;
    let has_content = root.join(layout::ACTS).exists() || root.join(layout::SAMPLES).exists();
    if force {
        // Only what a store is made of goes, and never what this run reads.
        let names = [layout::ACTS, layout::PROGRESS, LENS_PARTS, layout::MANIFEST, layout::SAMPLES]
            .into_iter()
            .chain([layout::TOKENS, layout::ERRORS, layout::LOGIT_LENS]);
        let doomed: Vec<PathBuf> = names.map(|n| root.join(n)).filter(|p| p.exists()).collect();
        for p in &doomed {
            let p = canonical(p);
            for (what, read) in reads {
                if canonical(read).starts_with(&p) {
                    return Err(ExtractError::Input(format!(
                        "--force would remove {}, which holds {what} this run reads ({}); write the store elsewhere",
                        p.display(),
                        read.display()
                    )));
                }
            }
        }
        for p in doomed {
            let removed = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
            removed.map_err(|source| ExtractError::Io { path: p.clone(), source })?;
        }
    } else if let Some(old) = existing {
        old.same_origin(manifest).and_then(|()| same_precision(&old, manifest)).map_err(|why| {
            ExtractError::Input(format!(
                "{} already holds a store and {why}; use --force to replace it",
                root.display()
            ))
        })?;
        return Ok(());
    } else if has_content {
        return Err(ExtractError::Input(format!(
            "{} holds files but no manifest.json; use --force to replace them",
            root.display()
        )));
    }
    std::fs::create_dir_all(root).map_err(|source| ExtractError::Io { path: root.to_path_buf(), source })?;
    Ok(manifest.write(root)?)
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// A chunk's part files are named by the shard that wrote them, so a store
/// filled under two shard counts would hold some chunks twice: one count per store.
pub(super) fn check_shard_count(root: &Path, (shard, shards): (usize, usize)) -> Result<()> {
    let mut counts: Vec<usize> = ShardProgress::all(root)?.iter().map(|p| p.shards).collect();
    counts.extend(Manifest::read(root)?.and_then(|m| m.shards).map(|s| s.count));
    match counts.into_iter().find(|&n| n != shards) {
        None => Ok(()),
        Some(n) => Err(ExtractError::Input(format!(
            "{} is being filled under --shard I/{n}; this run asks for --shard {shard}/{shards} \
             (run the other shards as I/{n}, or use --force to start it again under {shards})",
            root.display()
        ))),
    }
}

/// TF32 changes the numbers as a dtype does: a store is added to only with the setting it was made with.
fn same_precision(old: &Manifest, new: &Manifest) -> std::result::Result<(), String> {
    let (Some(a), Some(b)) = (&old.model, &new.model) else { return Err("no model recorded".into()) };
    let name = |m: &ModelProvenance| match m.allow_tf32 {
        true => format!("{} with --allow-tf32", m.dtype),
        false => m.dtype.clone(),
    };
    match a.allow_tf32 == b.allow_tf32 {
        true => Ok(()),
        false => Err(format!("it was extracted in {}, not {}", name(a), name(b))),
    }
}

/// Part temporaries of this shard left by other processes: with the shard's
/// lock held, those processes are dead. Other shards' temporaries are theirs.
pub(super) fn remove_stale_temporaries(root: &Path, partitions: &[Partition], shard: usize) {
    let ours = format!(".part-{shard:03}-");
    let me = format!(".tmp-{}", std::process::id());
    for p in partitions {
        let Ok(entries) = std::fs::read_dir(p.dir(root)) else { continue };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&ours) && name.contains(".tmp-") && !name.ends_with(&me) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}
