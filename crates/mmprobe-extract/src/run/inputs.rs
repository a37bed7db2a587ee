//! The loader stage: dataset rows into model-ready batches, decoded and
//! tokenised in parallel, bad rows recorded or refused.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, SyncSender};

use mmprobe_store::progress::FailedInput;
use mmprobe_store::tokens::TokenRow;
use mmprobe_store::{Dataset, Selector, Tower};
use rayon::prelude::*;
use tch::Tensor;

use super::ExtractOptions;
use crate::describe::ModelInfo;
use crate::error::{ExtractError, Result};
use crate::family::{Batch, InputTools};
use crate::llava::PromptTokenizer;
use crate::llava::prompt::{PromptToken, default_prompt};
use crate::plan::ExtractionPlan;
use crate::preprocess::decode::{decode_rgb_limited, open_rgb_limited};
use crate::tokenize::TextTokenizer;

/// One batch, ready for the model.
pub(super) struct Prepared {
    pub chunk: usize,
    pub samples: Vec<u32>,
    pub batch: Batch,
    pub failures: Vec<FailedInput>,
    pub chunk_end: bool,
    pub seen: usize,
    /// Texts cut to the context length.
    pub truncated: usize,
}

/// tokens.parquet rows for every tower that keeps `all` rows: vision
/// positions are `<cls>` and `<patch r,c>`, text positions the tokenizer's tokens.
pub(super) fn token_rows(
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

/// The loader stage: what it reads and how it prepares rows.
pub(super) struct Inputs<'a> {
    pub dataset: &'a Dataset,
    pub tools: &'a InputTools,
    pub opts: &'a ExtractOptions,
    /// The towers this run fills.
    pub towers: &'a [Tower],
}

impl Inputs<'_> {
    /// Loader thread: prepares every batch of the pending chunks, in order.
    pub fn produce(&self, pending: &[usize], tx: SyncSender<Result<Prepared>>, permits: Receiver<()>) {
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
        let wants_text = self.towers.contains(&Tower::Text);
        let mut prompt_rows: HashMap<usize, Vec<PromptToken>> = HashMap::new();
        let images: Vec<(usize, std::result::Result<Vec<f32>, String>)> = match self.tools.images.as_ref() {
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
            if self.tools.images.is_some() && !pixels.contains_key(&i) {
                continue;
            }
            if wants_text && self.dataset.text(i).is_none_or(|t| t.trim().is_empty()) {
                fail(i, "text", "empty text".into())?;
                continue;
            }
            if let Some(tok) = self.tools.prompts.as_ref() {
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
        let pixels = match self.tools.images.as_ref() {
            Some(proc) if !ok.is_empty() => {
                let (h, w) = proc.output_size();
                let flat: Vec<f32> = ok.iter().flat_map(|i| pixels.remove(i).expect("decoded")).collect();
                Some(Tensor::from_slice(&flat).view([ok.len() as i64, 3, h as i64, w as i64]))
            }
            _ => None,
        };
        let mut truncated = 0;
        let text = match self.tools.text.as_ref() {
            Some(tok) if !ok.is_empty() => {
                let texts: Vec<&str> = ok.iter().map(|&i| self.dataset.text(i).unwrap_or("")).collect();
                let b = tok.encode_batch(&texts)?;
                truncated = b.truncated;
                Some((b.input_ids, b.attention_mask))
            }
            _ => None,
        };
        let prompt = match self.tools.prompts.as_ref() {
            Some(tok) if !ok.is_empty() => {
                let b = tok.pad(ok.iter().map(|i| prompt_rows.remove(i).expect("encoded")).collect());
                Some((b.input_ids, b.attention_mask))
            }
            _ => None,
        };
        let failures = if chunk_end { std::mem::take(failures) } else { Vec::new() };
        let samples = ok.iter().map(|&i| i as u32).collect();
        Ok(Prepared { chunk, samples, batch: Batch { pixels, text, prompt }, failures, chunk_end, seen, truncated })
    }
}
