//! `mmprobe extract`: a dataset through a model into an activation store.
//!
//! Three stages run at once: a loader thread decodes and preprocesses inputs
//! (images in parallel), the calling thread runs the model, and a writer
//! thread streams rows into part files. Channels between them are bounded, so
//! memory does not grow with the dataset. Samples are grouped in fixed chunks;
//! a chunk's part files appear together (renamed into place) and are then
//! recorded in the shard's progress file, so a killed run resumes at the first
//! unfinished chunk and ends with the same store as an uninterrupted one.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use mmprobe_store::layout::{self, Partition, TOKENS};
use mmprobe_store::logit_lens::{LENS_PARTS, LensRow, merge_lens_parts, write_lens_part};
use mmprobe_store::manifest::{
    DatasetProvenance, ExtractionSpec, Manifest, ModelProvenance, ShardsDone, sha256_bytes, sha256_file,
};
use mmprobe_store::progress::{FailedInput, ShardProgress, write_errors};
use mmprobe_store::store::write_parquet;
use mmprobe_store::tokens::{TokenRow, write_tokens};
use mmprobe_store::{Dataset, PartRows, PartWriter, Selector, Site, Tower};
use rayon::prelude::*;
use tch::{Device, Tensor};

use crate::capture::{Captured, SiteRequest};
use crate::clip::LoadedClip;
use crate::describe::ModelInfo;
use crate::error::{ExtractError, Result};
use crate::family::{Family, ModelDir};
use crate::llava::prompt::{PromptToken, default_prompt};
use crate::llava::{LoadedLlava, PromptTokenizer};
use crate::plan::{ExtractionPlan, LayerSpec};
use crate::preprocess::ImageProcessor;
use crate::preprocess::decode::{decode_rgb_limited, open_rgb_limited};
use crate::runtime::{RunOptions, device_name};
use crate::select::{Rows, SequenceLayout, pick, pooled, select};
use crate::tokenize::TextTokenizer;
use crate::weights::Checkpoint;

/// Everything `mmprobe extract` takes.
#[derive(Debug, Clone)]
pub struct ExtractOptions {
    pub model: PathBuf,
    pub data: PathBuf,
    pub out: PathBuf,
    /// `None`: every tower of the model.
    pub towers: Option<Vec<Tower>>,
    pub sites: Vec<Site>,
    pub layers: LayerSpec,
    /// Empty: the family's defaults ([`crate::plan::default_selectors`]).
    pub selectors: Vec<Selector>,
    pub run: RunOptions,
    /// (I, N): this process extracts chunks c with c % N == I.
    pub shard: (usize, usize),
    pub skip_bad: bool,
    pub force: bool,
    /// Samples per chunk (the unit of resumption); fixed for the life of a store.
    pub chunk_size: usize,
    /// Decoder models: the top-K next tokens of every extracted `resid` layer
    /// and selector (logit lens), written to `logit_lens.parquet`.
    pub logit_lens: Option<usize>,
}

/// Told about progress as batches finish (the binary draws a bar).
pub trait ProgressSink: Sync {
    fn start(&self, total: usize, done_before: usize);
    fn advance(&self, samples: usize);
}

/// A sink that reports nothing.
pub struct Quiet;
impl ProgressSink for Quiet {
    fn start(&self, _: usize, _: usize) {}
    fn advance(&self, _: usize) {}
}

#[derive(Debug, Clone)]
pub struct ExtractSummary {
    pub store: PathBuf,
    pub device: String,
    pub samples_run: usize,
    pub samples_resumed: usize,
    pub failed: usize,
    pub partitions: usize,
    pub rows_written: usize,
    pub parts_written: usize,
    pub elapsed: Duration,
    /// Every shard of the store is complete.
    pub store_complete: bool,
    /// Chunks recorded as done whose part files were missing: extracted again.
    pub chunks_redone: Vec<usize>,
    /// Checkpoint tensors that nothing loaded.
    pub unused_tensors: Vec<String>,
    /// Texts extracted now that were cut to the text tower's context length.
    pub texts_truncated: usize,
    /// Image-folder files that are not samples, with why.
    pub files_skipped: Vec<String>,
    /// What the defaults left out (towers without inputs, selectors that fit nothing run), one line each.
    pub notes: Vec<String>,
}

/// One batch, ready for the model.
struct Prepared {
    chunk: usize,
    samples: Vec<u32>,
    pixels: Option<Tensor>,
    text: Option<(Tensor, Tensor)>,
    /// Decoder prompts: ids and mask [B, T], image tokens expanded.
    prompt: Option<(Tensor, Tensor)>,
    failures: Vec<FailedInput>,
    chunk_end: bool,
    seen: usize,
    /// Texts cut to the context length.
    truncated: usize,
}

enum ToWriter {
    Rows(usize, Partition, PartRows),
    Lens(usize, Vec<LensRow>),
    ChunkDone(usize, Vec<FailedInput>),
}

/// The loaded model, by family.
enum Model {
    Clip(LoadedClip),
    Llava(LoadedLlava),
}

pub fn extract(opts: &ExtractOptions, progress: &dyn ProgressSink) -> Result<ExtractSummary> {
    let t0 = Instant::now();
    let (shard, shards) = opts.shard;
    if shards == 0 || shard >= shards {
        return Err(ExtractError::Input(format!("--shard {shard}/{shards}: need 0 <= I < N")));
    }
    if opts.run.batch_size == 0 {
        return Err(ExtractError::Input("--batch-size: the batch size must be at least 1".into()));
    }
    if opts.chunk_size == 0 {
        return Err(ExtractError::Input("chunk size must be at least 1".into()));
    }
    let info = ModelInfo::from_dir(&opts.model)?;
    let dataset = Dataset::open(&opts.data)?;
    let (plan, notes) = plan_run(opts, &info, &dataset)?;
    check_inputs(&plan, &dataset)?;
    check_logit_lens(opts.logit_lens, &plan)?;
    let device = opts.run.apply()?;

    let md = ModelDir::open(&opts.model)?;
    // Hashing the weights (provenance) overlaps loading them.
    let (model, weights) = std::thread::scope(|s| {
        let hashes = s.spawn(|| hash_weights(&opts.model));
        let model = match md.family {
            Family::Clip => LoadedClip::load(&opts.model, device, opts.run.dtype).map(|mut m| {
                m.set_allow_tf32(opts.run.allow_tf32);
                Model::Clip(m)
            }),
            Family::Llava => LoadedLlava::load(&opts.model, device, opts.run.dtype).map(|mut m| {
                m.set_allow_tf32(opts.run.allow_tf32);
                Model::Llava(m)
            }),
        };
        (model, hashes.join().expect("hashing does not panic"))
    });
    let (model, weights) = (model?, weights?);
    let tokenizer = match plan.sites.contains_key(&Tower::Text) {
        true => Some(text_tokenizer(&opts.model, &md)?),
        false => None,
    };
    let prompts = match (&model, plan.sites.contains_key(&Tower::Decoder)) {
        (Model::Llava(l), true) => {
            let c = &l.model.config;
            let tok = PromptTokenizer::from_dir(
                &opts.model,
                c.image_token_index,
                c.image_seq_length,
                c.text_config.pad_token_id,
            )?;
            tok.check_vocab(c.text_config.vocab_size, &md.config_path)?;
            Some(tok)
        }
        _ => None,
    };
    // A decoder sees the image through the vision tower, so it needs pixels too.
    let needs_pixels = plan.sites.contains_key(&Tower::Vision) || (prompts.is_some() && dataset.images.is_some());
    let processor = match needs_pixels {
        true => Some(ImageProcessor::from_dir(&opts.model)?),
        false => None,
    };
    if let Some(p) = &processor {
        let side = match &model {
            Model::Clip(m) => m.model.config.vision_config.image_size,
            Model::Llava(m) => m.model.config.vision_config.image_size,
        } as usize;
        let (h, w) = p.output_size();
        if (h, w) != (side, side) {
            return Err(ExtractError::BadConfig {
                path: p.config_path().unwrap_or(&opts.model).to_path_buf(),
                message: format!(
                    "it makes {h}x{w} images, but {} gives the vision tower {side}x{side}",
                    md.config_path.display()
                ),
            });
        }
    }
    let manifest = provenance(opts, &md, &dataset, &plan, device, weights)?;
    let reads = [("the dataset", opts.data.as_path()), ("the model", opts.model.as_path())];
    prepare_store(&opts.out, &manifest, opts.force, &reads)?;
    check_shard_count(&opts.out, opts.shard)?;
    let _lock = crate::lock::ShardLock::acquire(&opts.out, shard, shards)?;

    let root = opts.out.as_path();
    if !root.join(layout::SAMPLES).exists() {
        write_parquet(&root.join(layout::SAMPLES), &mut dataset.frame.clone())?;
    }
    if plan.selectors.contains(&Selector::All) && !root.join(TOKENS).exists() {
        let rows = token_rows(&plan, &info, &dataset, tokenizer.as_ref(), prompts.as_ref())?;
        write_tokens(root, &rows)?;
    }

    let n_chunks = dataset.len().div_ceil(opts.chunk_size);
    let mut status = ShardProgress::load(root, shard, shards)?.unwrap_or_default();
    status.shard = shard;
    status.shards = shards;
    status.chunks_total = (0..n_chunks).filter(|c| c % shards == shard).count();
    status.device = device_name(device);
    let partitions = plan.partitions();
    let chunks_redone =
        status.forget_lost_chunks(|c| partitions.iter().filter(|p| p.part(root, shard, c).is_file()).count());
    let pending: Vec<usize> =
        (0..n_chunks).filter(|c| c % shards == shard && !status.chunks_done.contains(c)).collect();
    let chunk_len = |c: usize| (dataset.len() - c * opts.chunk_size).min(opts.chunk_size);
    let total: usize = (0..n_chunks).filter(|c| c % shards == shard).map(chunk_len).sum();
    let todo: usize = pending.iter().map(|&c| chunk_len(c)).sum();
    progress.start(total, total - todo);
    remove_stale_temporaries(root, &partitions, shard);

    let inputs = Inputs {
        dataset: &dataset,
        tokenizer: tokenizer.as_ref(),
        processor: processor.as_ref(),
        prompts: prompts.as_ref(),
        opts,
        plan: &plan,
    };
    let (batch_tx, batch_rx) = sync_channel::<Result<Prepared>>(2);
    // Permits pace the loader. On a GPU it runs ahead (decoding overlaps the
    // model); on the CPU both compete for the same cores, and oversubscribing
    // them slows libtorch's kernels more than overlap gains, so each batch is
    // prepared only once the previous one has been through the model.
    let ahead = 2;
    let (permit_tx, permit_rx) = sync_channel::<()>(ahead + 1);
    for _ in 0..=ahead {
        let _ = permit_tx.send(());
    }
    let (write_tx, write_rx) = sync_channel::<ToWriter>(256);
    let mut rows_written = 0usize;
    let mut failed = 0usize;
    let mut truncated = 0usize;
    let (model_result, writer_result) = std::thread::scope(|s| {
        s.spawn(|| inputs.produce(&pending, batch_tx, permit_rx));
        let writer = s.spawn(|| write_parts(root, status, write_rx));
        let r = run_batches(
            &model,
            &plan,
            Lens { k: opts.logit_lens, tokenizer: prompts.as_ref() },
            device,
            batch_rx,
            &write_tx,
            permit_tx,
            progress,
            &mut rows_written,
            &mut failed,
            &mut truncated,
        );
        drop(write_tx);
        (r, writer.join().expect("writer thread does not panic"))
    });
    let (status, parts_written) = writer_result?;
    model_result?;

    let all = ShardProgress::all(root)?;
    let errors: Vec<FailedInput> = all.iter().flat_map(|p| p.errors.iter().cloned()).collect();
    write_errors(root, &errors)?;
    let completed: Vec<usize> = all.iter().filter(|p| p.shards == shards && p.complete()).map(|p| p.shard).collect();
    let store_complete = completed.len() == shards;
    if store_complete && opts.logit_lens.is_some() {
        merge_lens_parts(root)?;
    }
    let mut manifest = Manifest::read(root)?.unwrap_or(manifest);
    manifest.shards = Some(ShardsDone { count: shards, completed });
    manifest.write(root)?;
    if store_complete && layout::list_partitions(root)?.is_empty() {
        return Err(ExtractError::Input(format!(
            "every row failed ({} of {}; see {}), so the store holds no activations",
            errors.len(),
            dataset.len(),
            root.join(layout::ERRORS).display()
        )));
    }

    Ok(ExtractSummary {
        store: opts.out.clone(),
        device: status.device.clone(),
        samples_run: todo,
        samples_resumed: total - todo,
        failed,
        partitions: plan.partitions().len(),
        rows_written,
        parts_written,
        elapsed: t0.elapsed(),
        store_complete,
        chunks_redone,
        unused_tensors: match &model {
            Model::Clip(m) => m.unused.clone(),
            Model::Llava(m) => m.unused.clone(),
        },
        texts_truncated: truncated,
        files_skipped: dataset.skipped.clone(),
        notes,
    })
}

/// The input column a tower needs and the dataset lacks, if any.
fn missing_input(tower: Tower, dataset: &Dataset) -> Option<&'static str> {
    let (ok, column) = match tower {
        Tower::Vision => (dataset.images.is_some(), "image"),
        Tower::Text => (dataset.texts.is_some(), "text"),
        // Without a prompt column a default prompt is built from the text or the image.
        Tower::Decoder => (dataset.prompts.is_some() || dataset.texts.is_some() || dataset.images.is_some(), "prompt"),
    };
    (!ok).then_some(column)
}

/// The plan of a run. Defaults fit what the model and dataset have: a tower
/// left to default without its input, a default selector that fits none of
/// the towers run, and a default tower that no selector fits are left out,
/// each said in one note. What was asked for by name and cannot be met is an
/// error. The plan (and so the manifest) holds exactly what is extracted.
fn plan_run(opts: &ExtractOptions, info: &ModelInfo, dataset: &Dataset) -> Result<(ExtractionPlan, Vec<String>)> {
    let mut notes = Vec::new();
    let towers: Vec<Tower> = match &opts.towers {
        Some(t) => t.clone(),
        None => {
            let all: Vec<Tower> = info.towers.iter().map(|t| t.tower).collect();
            let with: Vec<Tower> = all.iter().copied().filter(|t| missing_input(*t, dataset).is_none()).collect();
            if with.is_empty() {
                // No tower can run: the first one's error says why.
                check_inputs_of(&all, dataset)?;
            }
            for t in all.iter().filter(|t| !with.contains(t)) {
                notes.push(format!(
                    "the {t} tower is left out: {} has no '{}' column",
                    dataset.path.display(),
                    missing_input(*t, dataset).unwrap_or("")
                ));
            }
            with
        }
    };
    let fits = |sel: Selector, t: Tower| opts.sites.iter().any(|s| info.sites(t).contains(s) && sel.fits(t, *s));
    let selectors = match opts.selectors.is_empty() {
        false => opts.selectors.clone(),
        true => {
            let defaults = crate::plan::default_selectors(info.family);
            let (keep, skip): (Vec<Selector>, Vec<Selector>) =
                defaults.into_iter().partition(|&sel| towers.iter().any(|&t| fits(sel, t)));
            let run: Vec<&str> = towers.iter().map(|t| t.as_str()).collect();
            for sel in skip {
                notes.push(format!(
                    "the default selector '{sel}' is left out: it fits none of the towers and sites run ({})",
                    run.join(", ")
                ));
            }
            keep
        }
    };
    let mut plan = ExtractionPlan::new(info, Some(&towers), &opts.sites, &opts.layers, &selectors)?;
    let names: Vec<String> = selectors.iter().map(|s| s.to_string()).collect();
    for t in towers.iter().filter(|&&t| !selectors.iter().any(|&sel| fits(sel, t))) {
        let why = format!("no requested selector fits the {t} tower ({})", names.join(", "));
        match opts.towers {
            Some(_) => return Err(ExtractError::Input(format!("--towers {t}: {why}"))),
            None => {
                notes.push(format!("the {t} tower is left out: {why}"));
                plan.sites.remove(t);
            }
        }
    }
    if plan.sites.is_empty() {
        return Err(ExtractError::Input("no tower of the model has a requested selector".into()));
    }
    Ok((plan, notes))
}

/// Every requested tower needs its input column.
fn check_inputs(plan: &ExtractionPlan, dataset: &Dataset) -> Result<()> {
    check_inputs_of(&plan.towers().collect::<Vec<_>>(), dataset)
}

fn check_inputs_of(towers: &[Tower], dataset: &Dataset) -> Result<()> {
    for &tower in towers {
        if let Some(column) = missing_input(tower, dataset) {
            return Err(ExtractError::Input(format!(
                "the {tower} tower needs a '{column}' column, which {} lacks (use --towers to pick others)",
                dataset.path.display()
            )));
        }
    }
    Ok(())
}

/// `--logit-lens K` reads decoder residual streams: it needs them in the plan.
fn check_logit_lens(k: Option<usize>, plan: &ExtractionPlan) -> Result<()> {
    let Some(k) = k else { return Ok(()) };
    if k == 0 {
        return Err(ExtractError::Input("--logit-lens: K must be at least 1".into()));
    }
    let has_resid = plan.sites.get(&Tower::Decoder).is_some_and(|s| s.contains_key(&Site::Resid));
    if !has_resid {
        return Err(ExtractError::Input(
            "--logit-lens needs a decoder tower with the resid site (an MLLM such as LLaVA)".into(),
        ));
    }
    Ok(())
}

fn text_tokenizer(dir: &Path, md: &ModelDir) -> Result<TextTokenizer> {
    match md.family {
        Family::Clip => {
            let c: crate::clip::ClipConfig = md.config()?;
            let t = &c.text_config;
            let tok = TextTokenizer::from_dir(dir, t.max_position_embeddings as usize, t.pad_token_id as u32)?;
            tok.check_vocab(t.vocab_size, &md.config_path)?;
            Ok(tok)
        }
        Family::Llava => {
            Err(ExtractError::Input("a LLaVA model has no text tower (its text goes to the decoder)".into()))
        }
    }
}

/// sha256 of every weight file, by file name.
fn hash_weights(dir: &Path) -> Result<BTreeMap<String, String>> {
    let weights = Checkpoint::open(dir)?;
    let mut hashes = BTreeMap::new();
    for f in weights.files() {
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        hashes.insert(name, sha256_file(f)?);
    }
    Ok(hashes)
}

fn provenance(
    opts: &ExtractOptions,
    md: &ModelDir,
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
            family: md.family.name().to_string(),
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
fn prepare_store(root: &Path, manifest: &Manifest, force: bool, reads: &[(&str, &Path)]) -> Result<()> {
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
fn check_shard_count(root: &Path, (shard, shards): (usize, usize)) -> Result<()> {
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
fn remove_stale_temporaries(root: &Path, partitions: &[Partition], shard: usize) {
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

/// tokens.parquet rows for every tower that keeps `all` rows: vision
/// positions are `<cls>` and `<patch r,c>`, text positions the tokenizer's tokens.
fn token_rows(
    plan: &ExtractionPlan,
    info: &ModelInfo,
    dataset: &Dataset,
    tokenizer: Option<&TextTokenizer>,
    prompts: Option<&PromptTokenizer>,
) -> Result<Vec<TokenRow>> {
    let mut rows = Vec::new();
    if plan.wants(Tower::Decoder, Selector::All)
        && let Some(tok) = prompts
    {
        for i in 0..dataset.len() {
            // Rows whose prompt cannot be built fail in extraction, with the reason.
            let Ok(tokens) = tok.encode(&row_prompt(dataset, i)) else { continue };
            for (pos, t) in tokens.into_iter().enumerate() {
                rows.push(TokenRow {
                    sample: i as u32,
                    tower: Tower::Decoder,
                    pos: pos as i32,
                    token_id: Some(t.id as i64),
                    token: t.text,
                    modality: if t.image { "image" } else { "text" },
                });
            }
        }
    }
    if plan.wants(Tower::Vision, Selector::All)
        && let Some(t) = info.tower(Tower::Vision)
    {
        let grid = ((t.max_tokens - 1) as f64).sqrt() as i64;
        for sample in 0..dataset.len() as u32 {
            for pos in 0..t.max_tokens {
                let token = if pos == 0 {
                    "<cls>".to_string()
                } else {
                    format!("<patch {},{}>", (pos - 1) / grid, (pos - 1) % grid)
                };
                rows.push(TokenRow {
                    sample,
                    tower: Tower::Vision,
                    pos: pos as i32,
                    token_id: None,
                    token,
                    modality: "image",
                });
            }
        }
    }
    if plan.wants(Tower::Text, Selector::All)
        && let Some(tok) = tokenizer
    {
        let texts: Vec<(usize, &str)> = (0..dataset.len()).filter_map(|i| dataset.text(i).map(|t| (i, t))).collect();
        for batch in texts.chunks(256) {
            let enc = tok.encode_batch(&batch.iter().map(|(_, t)| *t).collect::<Vec<_>>())?;
            for ((i, _), toks) in batch.iter().zip(enc.tokens) {
                for (pos, (id, token)) in toks.into_iter().enumerate() {
                    rows.push(TokenRow {
                        sample: *i as u32,
                        tower: Tower::Text,
                        pos: pos as i32,
                        token_id: Some(id as i64),
                        token,
                        modality: "text",
                    });
                }
            }
        }
    }
    Ok(rows)
}

/// A row's decoder prompt: its `prompt`, else llava-1.5's template around its text.
fn row_prompt(dataset: &Dataset, i: usize) -> String {
    match dataset.prompt(i).filter(|p| !p.trim().is_empty()) {
        Some(p) => p.to_string(),
        None => default_prompt(dataset.text(i), dataset.images.is_some()),
    }
}

/// A prompt's tokens, checked against the row: one image token when the
/// dataset has images, none when it has not.
fn prompt_tokens(
    tok: &PromptTokenizer,
    prompt: &str,
    has_image: bool,
) -> std::result::Result<Vec<PromptToken>, String> {
    let tokens = tok.encode(prompt).map_err(|e| e.to_string())?;
    let images = tokens.iter().filter(|t| t.image).count() / tok.image_seq_length.max(1);
    match (has_image, images) {
        (true, 1) | (false, 0) => Ok(tokens),
        (true, n) => Err(format!("the prompt holds {n} <image> tokens; one image per row needs exactly one")),
        (false, _) => Err("the prompt holds <image> but the dataset has no image column".into()),
    }
}

struct Inputs<'a> {
    dataset: &'a Dataset,
    tokenizer: Option<&'a TextTokenizer>,
    processor: Option<&'a ImageProcessor>,
    prompts: Option<&'a PromptTokenizer>,
    opts: &'a ExtractOptions,
    plan: &'a ExtractionPlan,
}

impl Inputs<'_> {
    /// Loader thread: prepares every batch of the pending chunks, in order.
    fn produce(&self, pending: &[usize], tx: SyncSender<Result<Prepared>>, permits: Receiver<()>) {
        let batch = self.opts.run.batch_size;
        for &chunk in pending {
            let start = chunk * self.opts.chunk_size;
            let end = (start + self.opts.chunk_size).min(self.dataset.len());
            let mut failures = Vec::new();
            let mut b0 = start;
            while b0 < end {
                if permits.recv().is_err() {
                    return;
                }
                let b1 = (b0 + batch).min(end);
                let prepared = self.prepare(chunk, b0..b1, b1 == end, &mut failures);
                let stop = prepared.is_err();
                if tx.send(prepared).is_err() || stop {
                    return;
                }
                b0 = b1;
            }
        }
    }

    fn prepare(
        &self,
        chunk: usize,
        rows: std::ops::Range<usize>,
        chunk_end: bool,
        failures: &mut Vec<FailedInput>,
    ) -> Result<Prepared> {
        let seen = rows.len();
        let mut ok: Vec<usize> = Vec::with_capacity(rows.len());
        let mut fail = |i: usize, stage: &str, message: String| -> Result<()> {
            if self.opts.skip_bad {
                failures.push(FailedInput {
                    sample: i as u32,
                    id: self.dataset.ids[i].clone(),
                    stage: stage.into(),
                    message,
                });
                Ok(())
            } else {
                Err(ExtractError::Input(format!(
                    "row {i} (id '{}'): {message} (use --skip-bad to record it and go on)",
                    self.dataset.ids[i]
                )))
            }
        };
        let wants_text = self.plan.sites.contains_key(&Tower::Text);
        let mut prompt_rows: HashMap<usize, Vec<PromptToken>> = HashMap::new();
        let images: Vec<(usize, std::result::Result<Vec<f32>, String>)> = match self.processor {
            Some(proc) => rows
                .clone()
                .into_par_iter()
                .map(|i| {
                    let max = self.opts.run.max_image_pixels;
                    let img = match (self.dataset.image_bytes(i), self.dataset.image_path(i)) {
                        (Some(bytes), path) => {
                            let name = path.map_or(format!("of row {i}"), |p| p.display().to_string());
                            decode_rgb_limited(bytes, &name, max)
                        }
                        (None, Some(p)) => open_rgb_limited(&p, max),
                        (None, None) => Err(ExtractError::Input("no image".into())),
                    };
                    let r = img.map(|img| proc.process(&img)).map_err(|e| e.to_string());
                    (i, r)
                })
                .collect(),
            None => Vec::new(),
        };
        let mut pixels: HashMap<usize, Vec<f32>> = HashMap::new();
        for (i, r) in images {
            match r {
                Ok(px) => {
                    pixels.insert(i, px);
                }
                Err(m) => fail(i, "image", m)?,
            }
        }
        for i in rows {
            if self.processor.is_some() && !pixels.contains_key(&i) {
                continue;
            }
            if wants_text && self.dataset.text(i).is_none_or(|t| t.trim().is_empty()) {
                fail(i, "text", "empty text".into())?;
                continue;
            }
            if let Some(tok) = self.prompts {
                match prompt_tokens(tok, &row_prompt(self.dataset, i), self.dataset.images.is_some()) {
                    Ok(t) => {
                        prompt_rows.insert(i, t);
                    }
                    Err(m) => {
                        fail(i, "prompt", m)?;
                        continue;
                    }
                }
            }
            ok.push(i);
        }
        let pixels = match self.processor {
            Some(proc) if !ok.is_empty() => {
                let (h, w) = proc.output_size();
                let flat: Vec<f32> = ok.iter().flat_map(|i| pixels.remove(i).expect("decoded")).collect();
                Some(Tensor::from_slice(&flat).view([ok.len() as i64, 3, h as i64, w as i64]))
            }
            _ => None,
        };
        let mut truncated = 0;
        let text = match self.tokenizer {
            Some(tok) if !ok.is_empty() => {
                let texts: Vec<&str> = ok.iter().map(|&i| self.dataset.text(i).unwrap_or("")).collect();
                let b = tok.encode_batch(&texts)?;
                truncated = b.truncated;
                Some((b.input_ids, b.attention_mask))
            }
            _ => None,
        };
        let prompt = match self.prompts {
            Some(tok) if !ok.is_empty() => {
                let b = tok.pad(ok.iter().map(|i| prompt_rows.remove(i).expect("encoded")).collect());
                Some((b.input_ids, b.attention_mask))
            }
            _ => None,
        };
        let failures = if chunk_end { std::mem::take(failures) } else { Vec::new() };
        let samples = ok.iter().map(|&i| i as u32).collect();
        Ok(Prepared { chunk, samples, pixels, text, prompt, failures, chunk_end, seen, truncated })
    }
}

/// Model thread: forward passes, selectors, rows to the writer.
#[allow(clippy::too_many_arguments)]
fn run_batches(
    model: &Model,
    plan: &ExtractionPlan,
    lens: Lens,
    device: Device,
    rx: Receiver<Result<Prepared>>,
    tx: &SyncSender<ToWriter>,
    // Owned, so that however this loop ends the loader's wait for a permit ends too.
    permits: SyncSender<()>,
    progress: &dyn ProgressSink,
    rows_written: &mut usize,
    failed: &mut usize,
    truncated: &mut usize,
) -> Result<()> {
    let partitions = plan.partitions();
    for prepared in rx {
        let b = prepared?;
        *failed += if b.chunk_end { b.failures.len() } else { 0 };
        *truncated += b.truncated;
        if !b.samples.is_empty() {
            let (rows, mut lens_rows) =
                guarded(|| tch::no_grad(|| forward(model, plan, &partitions, &b, device, &lens))).map_err(
                    |message| ExtractError::Forward {
                        first: b.samples[0],
                        last: b.samples[b.samples.len() - 1],
                        message,
                    },
                )?;
            if !lens_rows.is_empty() {
                lens_rows.iter_mut().for_each(|r| r.sample = b.samples[r.sample as usize]);
                if tx.send(ToWriter::Lens(b.chunk, lens_rows)).is_err() {
                    return Ok(());
                }
            }
            for (partition, mut part) in rows {
                // Batch positions -> dataset rows.
                part.sample.iter_mut().for_each(|i| *i = b.samples[*i as usize]);
                *rows_written += part.len();
                if tx.send(ToWriter::Rows(b.chunk, partition, part)).is_err() {
                    return Ok(()); // the writer stopped; its error is reported
                }
            }
        }
        let _ = permits.try_send(());
        if b.chunk_end && tx.send(ToWriter::ChunkDone(b.chunk, b.failures)).is_err() {
            return Ok(());
        }
        progress.advance(b.seen);
    }
    Ok(())
}

thread_local! {
    static QUIET_PANICS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, turning a panic (tch panics on any libtorch error) into its
/// message's first line; the panic hook stays quiet meanwhile, so the user
/// sees one line and not libtorch's trace.
fn guarded<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET_PANICS.with(|q| q.get()) {
                previous(info);
            }
        }));
    });
    QUIET_PANICS.with(|q| q.set(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET_PANICS.with(|q| q.set(false));
    r.map_err(|payload| {
        let text = match (payload.downcast_ref::<String>(), payload.downcast_ref::<&str>()) {
            (Some(s), _) => s.clone(),
            (None, Some(s)) => s.to_string(),
            _ => "a panic without a message".into(),
        };
        text.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string()
    })
}

fn request(plan: &ExtractionPlan, tower: Tower) -> SiteRequest {
    let mut req = SiteRequest::default();
    if let Some(sites) = plan.sites.get(&tower) {
        for (site, layers) in sites {
            match site {
                Site::Resid => req.resid.extend(layers),
                Site::Attn => req.attn.extend(layers),
                Site::Mlp => req.mlp.extend(layers),
                Site::Embeds => req.embeds = true,
            }
        }
    }
    req
}

/// The logit lens settings of a run.
struct Lens<'a> {
    k: Option<usize>,
    tokenizer: Option<&'a PromptTokenizer>,
}

fn forward(
    model: &Model,
    plan: &ExtractionPlan,
    partitions: &[Partition],
    b: &Prepared,
    device: Device,
    lens: &Lens,
) -> (Vec<(Partition, Rows)>, Vec<LensRow>) {
    let mut towers: Vec<(Tower, Captured, SequenceLayout)> = Vec::new();
    let mut lens_rows = Vec::new();
    match model {
        Model::Clip(clip) => {
            let kind = clip.dtype.kind();
            if let Some(px) = &b.pixels {
                let px = px.to_device(device).to_kind(kind);
                let cap = clip.model.encode_image(&px, &request(plan, Tower::Vision));
                let (n, t) = (px.size()[0], clip.model.config.vision_config.num_patches() + 1);
                towers.push((Tower::Vision, cap, SequenceLayout::vision(n, t, device)));
            }
            if let Some((ids, mask)) = &b.text {
                let (ids, mask) = (ids.to_device(device), mask.to_device(device));
                let mut cap = clip.model.encode_text(&ids, &mask, &request(plan, Tower::Text));
                let eos = cap.pool_positions.take().expect("text towers pool");
                towers.push((Tower::Text, cap, SequenceLayout::text(&mask, eos)));
            }
        }
        Model::Llava(llava) => {
            let m = &llava.model;
            let mut features = None;
            if let Some(px) = &b.pixels {
                let px = px.to_device(device).to_kind(llava.dtype.kind());
                let (cap, feats) = m.encode_image(&px, &request(plan, Tower::Vision));
                let (n, t) = (px.size()[0], m.config.vision_config.num_patches() + 1);
                features = Some(feats);
                if plan.sites.contains_key(&Tower::Vision) {
                    towers.push((Tower::Vision, cap, SequenceLayout::vision(n, t, device)));
                }
            }
            if let Some((ids, mask)) = &b.prompt {
                let (ids, mask) = (ids.to_device(device), mask.to_device(device));
                let lens_layers: Vec<usize> = match lens.k {
                    Some(_) => plan.sites[&Tower::Decoder].get(&Site::Resid).cloned().unwrap_or_default(),
                    None => Vec::new(),
                };
                let out = m.decode(&ids, &mask, features.as_ref(), &request(plan, Tower::Decoder), &lens_layers);
                let layout = SequenceLayout::decoder(&mask, ids.eq(m.config.image_token_index));
                if let (Some(k), Some(tok)) = (lens.k, lens.tokenizer) {
                    lens_rows = logit_lens(m, &out.raw_resid, plan, &layout, k, tok);
                }
                towers.push((Tower::Decoder, out.captured, layout));
            }
        }
    }
    let mut out = Vec::new();
    for (tower, cap, layout) in &towers {
        for p in partitions.iter().filter(|p| p.tower == *tower) {
            let rows = match p.site {
                Site::Embeds => cap.embeds.as_ref().map(pooled),
                Site::Resid => cap.resid.get(&p.layer).and_then(|h| select(h, p.selector, layout)),
                Site::Attn => cap.attn.get(&p.layer).and_then(|h| select(h, p.selector, layout)),
                Site::Mlp => cap.mlp.get(&p.layer).and_then(|h| select(h, p.selector, layout)),
            };
            if let Some(r) = rows {
                out.push((*p, r));
            }
        }
    }
    (out, lens_rows)
}

/// Top-k next tokens of each selected residual vector (every selector but
/// `all`, whose rows are positions, not samples). `sample` is the batch row.
fn logit_lens(
    m: &crate::llava::LlavaModel,
    raw: &[(usize, Tensor)],
    plan: &ExtractionPlan,
    layout: &SequenceLayout,
    k: usize,
    tok: &PromptTokenizer,
) -> Vec<LensRow> {
    let kind = m.language_model.embed_tokens.ws.kind();
    let mut rows = Vec::new();
    for (layer, h) in raw {
        for &sel in plan.selectors.iter().filter(|s| **s != Selector::All && s.fits(Tower::Decoder, Site::Resid)) {
            let Some(picked) = pick(h, sel, layout) else { continue };
            // Mean selectors average in f32; the head runs in the model's dtype.
            let logits = m.logits(&picked.rows.to_kind(kind)).to_kind(tch::Kind::Float);
            let k = (k as i64).min(logits.size()[1]);
            let (values, ids) = logits.topk(k, -1, true, true);
            let values = Vec::<f32>::try_from(values.to_device(Device::Cpu).reshape([-1])).unwrap_or_default();
            let ids = Vec::<i64>::try_from(ids.to_device(Device::Cpu).reshape([-1])).unwrap_or_default();
            for (r, &sample) in picked.sample.iter().enumerate() {
                for rank in 0..k as usize {
                    let id = ids[r * k as usize + rank];
                    rows.push(LensRow {
                        sample,
                        layer: *layer as u32,
                        selector: sel.to_string(),
                        rank: rank as u32 + 1,
                        token_id: id,
                        token: tok.id_to_token(id as u32).unwrap_or_default(),
                        logit: values[r * k as usize + rank],
                    });
                }
            }
        }
    }
    rows
}

/// Writer thread: one part file per partition and chunk, streamed batch by
/// batch; when a chunk is done its parts are renamed into place and the
/// shard's progress is saved.
fn write_parts(root: &Path, mut status: ShardProgress, rx: Receiver<ToWriter>) -> Result<(ShardProgress, usize)> {
    let mut open: BTreeMap<Partition, PartWriter> = BTreeMap::new();
    let mut lens: BTreeMap<usize, Vec<LensRow>> = BTreeMap::new();
    let mut parts = 0usize;
    for msg in rx {
        match msg {
            ToWriter::Rows(chunk, partition, rows) => {
                let w = match open.entry(partition) {
                    std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::btree_map::Entry::Vacant(e) => {
                        e.insert(PartWriter::create(partition.part(root, status.shard, chunk), rows.width)?)
                    }
                };
                w.write(&rows)?;
            }
            ToWriter::Lens(chunk, rows) => lens.entry(chunk).or_default().extend(rows),
            ToWriter::ChunkDone(chunk, failures) => {
                let finished = open.len();
                for (_, w) in std::mem::take(&mut open) {
                    w.finish()?;
                    parts += 1;
                }
                status.chunk_parts.insert(chunk, finished);
                if let Some(rows) = lens.remove(&chunk) {
                    write_lens_part(root, status.shard, chunk, &rows)?;
                }
                status.errors.retain(|e| !failures.iter().any(|f| f.sample == e.sample));
                status.errors.extend(failures);
                status.chunks_done.insert(chunk);
                status.save(root)?;
            }
        }
    }
    // Unfinished parts (an error upstream) are discarded, never renamed.
    for (_, w) in open {
        w.abandon();
    }
    Ok((status, parts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_libtorch_panic_becomes_its_first_line() {
        let e = guarded(|| {
            Tensor::zeros([2, 3], (tch::Kind::Float, Device::Cpu))
                .matmul(&Tensor::zeros([2], (tch::Kind::Float, Device::Cpu)))
        })
        .unwrap_err();
        assert!(!e.contains('\n') && e.contains("Torch"), "{e}");
        assert_eq!(guarded(|| 7), Ok(7));
    }
}
