use clap::Args;
use mmprobe_extract::{DType, DeviceChoice, ExtractOptions, LayerSpec, RunOptions, Selector, Site, Tower};
use mmprobe_store::{Compression, PartFormat, StoreDType};
use std::path::PathBuf;

use super::progress::SampleBar;

#[derive(Args, Debug)]
pub struct ExtractArgs {
    /// A Hugging Face checkpoint folder.
    #[arg(long)]
    model: PathBuf,
    /// Dataset manifest (.csv, .jsonl, .parquet) or an image folder DIR/<label>/<file>.
    #[arg(long)]
    data: PathBuf,
    /// The store folder to write (created; an existing store of the same model and dataset is resumed, or takes the partitions it lacks).
    #[arg(long)]
    out: PathBuf,
    /// Towers to run, comma-separated (vision, text, decoder); default: all the model has.
    #[arg(long, value_delimiter = ',')]
    towers: Option<Vec<Tower>>,
    /// Sites: resid (after each layer; 0 = embeddings), attn, mlp (sublayer outputs), embeds (projected).
    #[arg(long, default_value = "resid,embeds", value_delimiter = ',')]
    sites: Vec<Site>,
    /// Layers: `all`, or indices such as 0,4,-1 (negative counts from the last).
    #[arg(long, default_value = "all", allow_hyphen_values = true)]
    layers: LayerSpec,
    /// Selectors, applied wherever they fit: cls, eos, last, mean, mean_image, mean_text, pooled, all.
    /// (A LLaVA decoder takes last, mean, mean_image, mean_text, all.)
    /// Default: cls,eos,pooled for CLIP; cls,last,mean_image,mean_text for LLaVA.
    #[arg(long = "select", value_delimiter = ',')]
    select: Option<Vec<Selector>>,
    /// Inputs per forward pass.
    #[arg(long, default_value_t = mmprobe_extract::DEFAULT_BATCH_SIZE, value_parser = parse_batch_size)]
    batch_size: usize,
    /// auto, cpu or cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// Compute dtype (stored activations are always f32): f32, f16, bf16.
    /// f32 on CUDA is IEEE f32 throughout (no TF32), matching the CPU.
    #[arg(long, default_value = "f32")]
    dtype: DType,
    /// f32 on CUDA: let cuDNN run the patch-embedding convolution in TF32 (products of
    /// 10-bit mantissas). Recorded in manifest.json; a store is resumed only with the
    /// setting it was made with. Matmuls stay f32 unless the environment sets
    /// TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1 (which f32 on CUDA without this flag refuses).
    #[arg(long)]
    allow_tf32: bool,
    /// Images of more pixels are refused as bad inputs (possible decompression bombs),
    /// judged from the header before decoding. Default: Pillow's limit.
    #[arg(long, value_name = "N", default_value_t = mmprobe_extract::preprocess::decode::MAX_IMAGE_PIXELS)]
    max_image_pixels: u64,
    /// libtorch threads (default: libtorch's choice).
    #[arg(long)]
    threads: Option<usize>,
    /// Extract only slice I of N (0-based), e.g. 1/4; run N of these into the same store.
    #[arg(long, default_value = "0/1", value_parser = parse_shard)]
    shard: (usize, usize),
    /// Record inputs that fail (unreadable image, empty text) in errors.parquet and go on.
    #[arg(long)]
    skip_bad: bool,
    /// Replace a store that holds another model's, dataset's or plan's activations.
    #[arg(long)]
    force: bool,
    /// Samples per chunk: the unit of part files and of resumption (fixed per store).
    #[arg(long, default_value_t = mmprobe_extract::DEFAULT_CHUNK_SIZE, hide_short_help = true)]
    chunk_size: usize,
    /// Decoder models (LLaVA): also write the top-K next tokens that each extracted
    /// resid layer and selector reads as (final norm + LM head) to logit_lens.parquet.
    #[arg(long, value_name = "K")]
    logit_lens: Option<usize>,
    /// How rows are stored: f32 (exact), f16 (Parquet FLOAT16, half the bytes; values past
    /// +-65504 are refused) or bf16 (rounded to bfloat16, stored as f32 that zstd halves).
    /// Every reader (polars, pyarrow, DuckDB) reads them as floats. Fixed per store.
    #[arg(long, default_value = "f32")]
    store_dtype: StoreDType,
    /// Part file compression: zstd, lz4 (faster, larger) or none. Fixed per store.
    #[arg(long, default_value = "zstd")]
    compression: Compression,
}

fn parse_batch_size(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("the batch size must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("'{s}' is not a number of inputs")),
    }
}

fn parse_shard(s: &str) -> Result<(usize, usize), String> {
    let (i, n) = s.split_once('/').ok_or("expected I/N, e.g. 0/2")?;
    let i: usize = i.trim().parse().map_err(|_| format!("'{i}' is not a shard index"))?;
    let n: usize = n.trim().parse().map_err(|_| format!("'{n}' is not a shard count"))?;
    if n == 0 || i >= n {
        return Err(format!("need 0 <= I < N, got {i}/{n}"));
    }
    Ok((i, n))
}

pub fn run(a: ExtractArgs) -> anyhow::Result<()> {
    let opts = ExtractOptions {
        model: a.model,
        data: a.data,
        out: a.out,
        towers: a.towers,
        sites: a.sites,
        layers: a.layers,
        selectors: a.select.unwrap_or_default(),
        run: RunOptions {
            device: a.device,
            dtype: a.dtype,
            batch_size: a.batch_size,
            threads: a.threads,
            allow_tf32: a.allow_tf32,
            max_image_pixels: a.max_image_pixels,
        },
        shard: a.shard,
        skip_bad: a.skip_bad,
        force: a.force,
        chunk_size: a.chunk_size,
        logit_lens: a.logit_lens,
        format: PartFormat::new(a.store_dtype, a.compression),
    };
    let bar = SampleBar::new();
    let result = mmprobe_extract::extract(&opts, &bar);
    bar.0.end(&result);
    let s = result?;
    print_summary(&s);
    Ok(())
}

pub fn print_summary(s: &mmprobe_extract::ExtractSummary) {
    let few = |v: &[String]| {
        let shown: Vec<&str> = v.iter().take(5).map(String::as_str).collect();
        format!(
            "{}{}",
            shown.join(", "),
            if v.len() > 5 { format!(", and {} more", v.len() - 5) } else { String::new() }
        )
    };
    for note in &s.notes {
        println!("{note}");
    }
    if !s.unused_tensors.is_empty() {
        println!(
            "{} checkpoint tensor(s) are not part of the model and were not loaded: {}",
            s.unused_tensors.len(),
            few(&s.unused_tensors)
        );
    }
    if !s.files_skipped.is_empty() {
        println!("{} file(s) in the image folder are not samples: {}", s.files_skipped.len(), few(&s.files_skipped));
    }
    if s.texts_truncated > 0 {
        println!("{} text(s) were longer than the text tower's context and were cut to it", s.texts_truncated);
    }
    if !s.chunks_redone.is_empty() {
        println!(
            "{} chunk(s) recorded as done had lost part files and were extracted again (chunks {:?})",
            s.chunks_redone.len(),
            s.chunks_redone
        );
    }
    println!(
        "extracted {} samples on {} in {:.1} s ({:.1} samples/s){}",
        s.samples_run,
        s.device,
        s.elapsed.as_secs_f64(),
        s.samples_run as f64 / s.elapsed.as_secs_f64().max(1e-9),
        if s.samples_resumed > 0 { format!(", {} already done before", s.samples_resumed) } else { String::new() }
    );
    println!("wrote {} rows in {} part files over {} partitions", s.rows_written, s.parts_written, s.partitions);
    let t = &s.stages;
    let secs = |d: std::time::Duration| format!("{:.1} s", d.as_secs_f64());
    println!(
        "time: setup {}; loader {} at work, {} waiting for the model; model {} at work, {} waiting for \
         batches, {} for the writer; writer {} at work",
        secs(t.setup),
        secs(t.loader_busy),
        secs(t.loader_waiting),
        secs(t.model_busy),
        secs(t.model_waiting_for_batches),
        secs(t.model_waiting_for_writer),
        secs(t.writer_busy),
    );
    if s.failed > 0 {
        println!("{} inputs failed: see {}", s.failed, s.store.join("errors.parquet").display());
    }
    println!(
        "store {} ({})",
        s.store.display(),
        if s.store_complete { "complete" } else { "other shards still to run" }
    );
    let lens = s.store.join(mmprobe_store::layout::LOGIT_LENS);
    if s.store_complete && lens.exists() {
        println!("logit lens {}", lens.display());
    }
}
