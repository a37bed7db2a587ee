//! The store a run fills: its manifest and provenance, what an existing
//! store must share with the run, and what `--force` may remove.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mmprobe_store::layout::{self, Partition};
use mmprobe_store::logit_lens::LENS_PARTS;
use mmprobe_store::manifest::{
    DatasetProvenance, ExtractionSpec, Manifest, ModelProvenance, sha256_bytes, sha256_file,
};
use mmprobe_store::progress::{Addition, ShardProgress, all_errors};
use mmprobe_store::{Dataset, Selector};
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
        extraction: Some(ExtractionSpec {
            logit_lens: opts.logit_lens,
            store_dtype: opts.format.dtype,
            compression: opts.format.compression,
            ..plan.spec(opts.chunk_size)
        }),
        shards: None,
    })
}

/// What a run fills: the store's plan once it is done, the partitions this
/// run writes, and a line saying what it adds, when it adds.
pub(super) struct Fill {
    pub plan: ExtractionPlan,
    pub partitions: Vec<Partition>,
    /// An addition's partitions include `all` rows, so tokens.parquet is rewritten.
    pub rewrite_tokens: bool,
    pub note: Option<String>,
}

impl Fill {
    fn whole(plan: &ExtractionPlan) -> Fill {
        Fill { plan: plan.clone(), partitions: plan.partitions(), rewrite_tokens: false, note: None }
    }
}

/// Makes `root` ready: new stores get a manifest; existing ones must come
/// from the same model, dataset and settings unless `force` empties them
/// first. An existing store is resumed with its own plan, and a complete one
/// takes an addition: the partitions of its plan joined with `plan` that it
/// lacks (see [`Fill`]). `reads`: what the run reads, as (what it is, path),
/// which `force` must leave alone.
pub(super) fn prepare_store(
    root: &Path,
    manifest: &Manifest,
    plan: &ExtractionPlan,
    force: bool,
    reads: &[(&str, &Path)],
) -> Result<Fill> {
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
        return existing_store(root, &old, manifest, plan);
    } else if has_content {
        return Err(ExtractError::Input(format!(
            "{} holds files but no manifest.json; use --force to replace them",
            root.display()
        )));
    }
    std::fs::create_dir_all(root).map_err(|source| ExtractError::Io { path: root.to_path_buf(), source })?;
    manifest.write(root)?;
    Ok(Fill::whole(plan))
}

/// A run on a store that exists: resumed, added to, or refused in one line.
fn existing_store(root: &Path, old: &Manifest, new: &Manifest, plan: &ExtractionPlan) -> Result<Fill> {
    let refuse = |why: String| {
        ExtractError::Input(format!("{} already holds a store and {why}; use --force to replace it", root.display()))
    };
    // Everything but the plan must agree.
    let mut same_plan = new.clone();
    if let (Some(n), Some(o)) = (same_plan.extraction.as_mut(), old.extraction.as_ref()) {
        n.sites = o.sites.clone();
        n.selectors = o.selectors.clone();
        n.per_token_embeds = o.per_token_embeds.clone();
    }
    old.same_origin(&same_plan).and_then(|()| same_precision(old, new)).map_err(refuse)?;
    let Some(old_plan) = old.extraction.as_ref().and_then(ExtractionPlan::from_spec) else {
        return old.same_origin(new).map(|()| Fill::whole(plan)).map_err(refuse);
    };
    let addition = Addition::load(root)?;
    let filling: Vec<Partition> = match &addition {
        Some(a) => old_plan.partitions().into_iter().filter(|p| a.partitions.contains(&p.to_string())).collect(),
        None => old_plan.partitions(),
    };
    let resume = |note: Option<String>| Fill {
        plan: old_plan.clone(),
        partitions: filling.clone(),
        rewrite_tokens: false,
        note,
    };
    if old_plan == *plan {
        return Ok(resume(None));
    }
    let complete = old.shards.as_ref().is_some_and(|s| s.count > 0 && s.completed.len() == s.count);
    let union = old_plan.union(plan);
    let asked = plan.partitions();
    if union == old_plan {
        if complete {
            return Ok(Fill {
                note: Some("the store already holds every partition asked for: nothing to extract".into()),
                partitions: Vec::new(),
                ..resume(None)
            });
        }
        if addition.is_some() && asked.iter().any(|p| filling.contains(p)) {
            return Ok(resume(Some(format!("resuming the addition of {} partitions", filling.len()))));
        }
        return Err(refuse(format!(
            "{}, and is still being filled (rerun with its flags to finish it)",
            old.same_origin(new).err().unwrap_or_default()
        )));
    }
    if !complete {
        return Err(refuse(format!(
            "{}, and is still being filled: finish that run (same flags) before adding to it",
            old.same_origin(new).err().unwrap_or_default()
        )));
    }
    if new.extraction.as_ref().is_some_and(|e| e.logit_lens.is_some()) {
        return Err(refuse(
            "was made with --logit-lens, and adding to such a store is not supported yet (extract the new \
             partitions into another store)"
                .into(),
        ));
    }
    let had = old_plan.partitions();
    let adding: Vec<Partition> = union.partitions().into_iter().filter(|p| !had.contains(p)).collect();
    // The addition's record first: a run killed after it redoes the same addition.
    let shards = ShardProgress::all(root)?;
    let earlier_errors = all_errors(root, &shards)?;
    Addition { partitions: adding.iter().map(|p| p.to_string()).collect(), earlier_errors }.save(root)?;
    for p in shards {
        let path = ShardProgress::path(root, p.shard, p.shards);
        std::fs::remove_file(&path).map_err(|source| ExtractError::Io { path, source })?;
    }
    let mut manifest = old.clone();
    if let (Some(e), Some(n)) = (manifest.extraction.as_mut(), new.extraction.as_ref()) {
        *e = ExtractionSpec {
            chunk_size: e.chunk_size,
            logit_lens: e.logit_lens,
            store_dtype: e.store_dtype,
            compression: e.compression,
            ..union.spec(n.chunk_size)
        };
    }
    manifest.shards = None;
    manifest.write(root)?;
    let extra = adding.len() - adding.iter().filter(|p| asked.contains(p)).count();
    let mut note = format!("adding {} partitions to the {} the store holds", adding.len(), had.len());
    if extra > 0 {
        note += &format!(
            " ({extra} of them not asked for: a store's partitions are every tower, site, layer and selector \
             of its plan combined)"
        );
    }
    Ok(Fill {
        rewrite_tokens: adding.iter().any(|p| p.selector == Selector::All),
        plan: union,
        partitions: adding,
        note: Some(note),
    })
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
