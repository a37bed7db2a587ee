//! `mmprobe extract`: a dataset through a model into an activation store.
//!
//! Three stages run at once: a loader thread decodes and preprocesses inputs
//! (images in parallel), the calling thread runs the model, and a writer
//! thread streams rows into part files. Channels between them are bounded, so
//! memory does not grow with the dataset. Samples are grouped in fixed chunks;
//! a chunk's part files appear together (renamed into place) and are then
//! recorded in the shard's progress file, so a killed run resumes at the first
//! unfinished chunk and ends with the same store as an uninterrupted one.

mod defaults;
mod inputs;
mod model_stage;
mod store;
mod writer;

use std::path::PathBuf;
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

use mmprobe_store::layout::{self, TOKENS};
use mmprobe_store::logit_lens::merge_lens_parts;
use mmprobe_store::manifest::{Manifest, ShardsDone};
use mmprobe_store::progress::{ShardProgress, all_errors, write_errors};
use mmprobe_store::store::write_parquet;
use mmprobe_store::tokens::write_tokens;
use mmprobe_store::{Dataset, PartFormat, Selector, Site, Tower};

use crate::error::{ExtractError, Result};
use crate::family::ModelDir;
use crate::plan::LayerSpec;
use crate::runtime::{RunOptions, device_name};
use defaults::{check_inputs, check_logit_lens, plan_run};
use inputs::{Inputs, PixelBuffers, Prepared, token_rows};
use model_stage::{Counts, Lens, ModelStage};
use store::{check_shard_count, hash_weights, prepare_store, provenance, remove_stale_temporaries};
use writer::{ToWriter, write_parts};

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
    /// Empty: the family's defaults ([`crate::describe::ModelInfo::default_selectors`]).
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
    /// How part files store rows: `--store-dtype` and `--compression` (f32 + zstd by default).
    pub format: PartFormat,
}

/// Samples per chunk unless a run says otherwise (`--chunk-size`).
pub const DEFAULT_CHUNK_SIZE: usize = 1024;

impl ExtractOptions {
    /// `mmprobe extract --model MODEL --data DATA --out OUT` with every other
    /// flag at its default: every tower, `resid` and `embeds`, every layer, the
    /// family's selectors, one shard, chunks of [`DEFAULT_CHUNK_SIZE`], f32 + zstd parts.
    pub fn new(model: impl Into<PathBuf>, data: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        ExtractOptions {
            model: model.into(),
            data: data.into(),
            out: out.into(),
            towers: None,
            sites: vec![Site::Resid, Site::Embeds],
            layers: LayerSpec::All,
            selectors: Vec::new(),
            run: RunOptions::default(),
            shard: (0, 1),
            skip_bad: false,
            force: false,
            chunk_size: DEFAULT_CHUNK_SIZE,
            logit_lens: None,
            format: PartFormat::default(),
        }
    }
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
    /// Where the time went, stage by stage.
    pub stages: StageTimes,
}

/// One stage thread's wall time, at work and waiting.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Busy {
    pub busy: Duration,
    pub waiting: Duration,
}

impl Busy {
    /// Runs `f`, counting its time as waiting.
    pub fn wait<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let r = f();
        self.waiting += t.elapsed();
        r
    }

    /// Runs `f`, counting its time as work.
    pub fn work<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let r = f();
        self.busy += t.elapsed();
        r
    }
}

/// Where a run's time went: each stage's time at work and waiting on its
/// neighbours (wall time of the stage's thread). The stage that waits least
/// is the one the others wait for.
#[derive(Debug, Clone, Default)]
pub struct StageTimes {
    /// Before the first batch: the dataset read, the model loaded (its weights hashed), the store prepared.
    pub setup: Duration,
    /// Loader: decoding and preparing batches.
    pub loader_busy: Duration,
    /// Loader: waiting for the model to take a batch or hand back a buffer.
    pub loader_waiting: Duration,
    /// Model: forward passes, selection and the rows' copy to the CPU.
    pub model_busy: Duration,
    /// Model: waiting for the loader's next batch.
    pub model_waiting_for_batches: Duration,
    /// Model: waiting for the writer to take rows.
    pub model_waiting_for_writer: Duration,
    /// Writer: encoding, compressing and writing part files, saving progress.
    pub writer_busy: Duration,
    /// Writer: waiting for rows.
    pub writer_waiting: Duration,
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
    let md = ModelDir::open(&opts.model)?;
    let family = crate::family::open(&md)?;
    let info = family.info();
    let dataset = Dataset::open(&opts.data)?;
    let (plan, mut notes) = plan_run(opts, info, &dataset)?;
    check_inputs(&plan, &dataset)?;
    check_logit_lens(opts.logit_lens, &plan)?;
    let device = opts.run.apply()?;

    // Hashing the weights (provenance) overlaps loading them.
    let (model, weights) = std::thread::scope(|s| {
        let hashes = s.spawn(|| hash_weights(&opts.model));
        let model = family.load(&md, device, &opts.run);
        (model, hashes.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
    });
    let (model, weights) = (model?, weights?);
    let towers: Vec<Tower> = plan.towers().collect();
    let tools = family.inputs(&md, &towers, dataset.images.is_some())?;
    let manifest = provenance(opts, &md, info.family, &dataset, &plan, device, weights)?;
    let reads = [("the dataset", opts.data.as_path()), ("the model", opts.model.as_path())];
    let fill = prepare_store(&opts.out, &manifest, &plan, opts.force, &reads)?;
    notes.extend(fill.note.clone());
    check_shard_count(&opts.out, opts.shard)?;
    let _lock = crate::lock::ShardLock::acquire(&opts.out, shard, shards)?;

    let root = opts.out.as_path();
    if !root.join(layout::SAMPLES).exists() {
        write_parquet(&root.join(layout::SAMPLES), &mut dataset.frame.clone())?;
    }
    let plan = &fill.plan;
    if plan.selectors.contains(&Selector::All) && (fill.rewrite_tokens || !root.join(TOKENS).exists()) {
        let (text, prompts, max) = (tools.text.as_ref(), tools.prompts.as_ref(), opts.run.max_image_pixels);
        let rows = token_rows(plan, info, &dataset, text, prompts, tools.rows.as_deref(), max)?;
        write_tokens(root, &rows)?;
    }

    let n_chunks = dataset.len().div_ceil(opts.chunk_size);
    let mut status = ShardProgress::load(root, shard, shards)?.unwrap_or_default();
    status.shard = shard;
    status.shards = shards;
    status.chunks_total = (0..n_chunks).filter(|c| c % shards == shard).count();
    status.device = device_name(device);
    let partitions = &fill.partitions;
    // A run with nothing to fill (the store holds all it asks for) has no parts to count.
    let chunks_redone = match partitions.is_empty() {
        true => Vec::new(),
        false => status.forget_lost_chunks(|c| partitions.iter().filter(|p| p.part(root, shard, c).is_file()).count()),
    };
    let pending: Vec<usize> =
        (0..n_chunks).filter(|c| c % shards == shard && !status.chunks_done.contains(c)).collect();
    let chunk_len = |c: usize| (dataset.len() - c * opts.chunk_size).min(opts.chunk_size);
    let total: usize = (0..n_chunks).filter(|c| c % shards == shard).map(chunk_len).sum();
    let todo: usize = pending.iter().map(|&c| chunk_len(c)).sum();
    progress.start(total, total - todo);
    remove_stale_temporaries(root, partitions, shard);

    let mut filled: Vec<Tower> = partitions.iter().map(|p| p.tower).collect();
    filled.dedup();
    // An addition or a resumed store may fill other towers than those asked for.
    let tools = match filled == towers {
        true => tools,
        false => family.inputs(&md, &filled, dataset.images.is_some())?,
    };
    let inputs = Inputs { dataset: &dataset, tools: &tools, opts, towers: &filled };
    // The logit lens names its tokens with the decoder's tokenizer.
    type Names<'t> = Box<dyn Fn(u32) -> Option<String> + Sync + 't>;
    let names: Option<Names> = match (tools.prompts.as_ref(), tools.rows.as_deref()) {
        (Some(t), _) => Some(Box::new(|id| t.id_to_token(id))),
        (None, Some(r)) => Some(Box::new(|id| r.id_to_token(id))),
        _ => None,
    };
    let stage = ModelStage {
        model: model.as_ref(),
        plan,
        partitions,
        lens: match (opts.logit_lens, names.as_deref()) {
            (Some(k), Some(tokenizer)) => Some(Lens { k, tokenizer }),
            _ => None,
        },
        device,
        progress,
    };
    let (batch_tx, batch_rx) = sync_channel::<Result<Prepared>>(2);
    // Permits pace the loader: it prepares up to two batches ahead of the model
    // on every device. On a GPU that overlaps decoding with the model; on the
    // CPU the two share the cores, but the loader's share is small (about 1 ms
    // of a core per 224 px image against tens of ms of model).
    let ahead = 2;
    let (permit_tx, permit_rx) = sync_channel::<()>(ahead + 1);
    for _ in 0..=ahead {
        let _ = permit_tx.send(());
    }
    // On a GPU, batches are written into a few pinned buffers and copied to the device from there.
    let (buffers, buffers_back) = match (device.is_cuda(), tools.images.as_ref()) {
        (true, Some(p)) => {
            let (b, tx) = PixelBuffers::pinned(ahead + 1, opts.run.batch_size, p.output_size(), device);
            (Some(b), Some(tx))
        }
        _ => (None, None),
    };
    // A few batches of rows at most wait for the writer (an all-token batch can be large).
    let (write_tx, write_rx) = sync_channel::<ToWriter>(4);
    let mut counts = Counts::default();
    let setup = t0.elapsed();
    let (model_result, writer_result, loader_times) = std::thread::scope(|s| {
        let loader = s.spawn(|| inputs.produce(&pending, batch_tx, permit_rx, buffers));
        let writer = s.spawn(|| write_parts(root, status, opts.format, write_rx));
        let r = stage.run(batch_rx, &write_tx, permit_tx, buffers_back, &mut counts);
        drop(write_tx);
        let w = writer.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        (r, w, loader.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
    });
    let (status, parts_written, writer_times) = writer_result?;
    model_result?;
    let stages = StageTimes {
        setup,
        loader_busy: loader_times.busy,
        loader_waiting: loader_times.waiting,
        model_busy: counts.time.busy,
        model_waiting_for_batches: counts.time.waiting,
        model_waiting_for_writer: counts.to_writer.waiting,
        writer_busy: writer_times.busy,
        writer_waiting: writer_times.waiting,
    };

    // Progress is saved; what belongs to the whole store is written one run at a time.
    let _store_lock = crate::lock::StoreLock::wait(root)?;
    let all = ShardProgress::all(root)?;
    let errors = all_errors(root, &all)?;
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
        failed: counts.failed,
        partitions: partitions.len(),
        rows_written: counts.rows_written,
        parts_written,
        elapsed: t0.elapsed(),
        store_complete,
        chunks_redone,
        unused_tensors: model.unused_tensors(),
        texts_truncated: counts.truncated,
        files_skipped: dataset.skipped.clone(),
        notes,
        stages,
    })
}
