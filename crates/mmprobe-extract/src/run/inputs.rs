//! The loader stage: dataset rows into model-ready batches, decoded and
//! tokenised in parallel, bad rows recorded or refused.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, SyncSender};

use mmprobe_store::progress::FailedInput;
use mmprobe_store::tokens::TokenRow;
use mmprobe_store::{Dataset, Selector, Tower};
use rayon::prelude::*;
use tch::Tensor;

use super::{Busy, ExtractOptions};
use crate::describe::ModelInfo;
use crate::error::{ExtractError, Result};
use crate::family::{Batch, InputTools, Pixels, PreparedRow, RowInputs};
use crate::llava::PromptTokenizer;
use crate::llava::prompt::{PromptToken, row_prompt};
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
    /// The pinned buffer the pixels were written into, for the model stage to hand back.
    pub buffer: Option<Tensor>,
}

/// Pixel buffers the loader fills and the model stage hands back: on a GPU,
/// a few page-locked [batch, 3, H, W] buffers allocated once, so each batch is
/// written in place by the decoding threads and copied to the device without
/// a staging copy. On the CPU each batch gets a fresh tensor.
pub(super) struct PixelBuffers {
    pub free: Receiver<Tensor>,
}

impl PixelBuffers {
    /// `count` pinned buffers of `batch` 8-bit images of `(h, w)` for
    /// `device`, and the sender that returns them.
    pub fn pinned(
        count: usize,
        batch: usize,
        (h, w): (usize, usize),
        device: tch::Device,
    ) -> (Self, SyncSender<Tensor>) {
        let (tx, rx) = std::sync::mpsc::sync_channel(count);
        for _ in 0..count {
            let t = Tensor::empty([batch as i64, 3, h as i64, w as i64], (tch::Kind::Uint8, tch::Device::Cpu));
            // The internal op: `pin_memory(device)` warns that its argument is deprecated, for every buffer.
            let _ = tx.send(t.internal_pin_memory(device));
        }
        (PixelBuffers { free: rx }, tx)
    }
}

/// Writes each image's pixels into its slot of `t` ([n, 3, H, W] of `T`, contiguous), in parallel.
fn fill_slots<T: tch::kind::Element + Send, R: Send>(
    t: &Tensor,
    n: usize,
    f: impl Fn(usize, &mut [T]) -> R + Sync + Send,
) -> Vec<R> {
    let each = t.numel() / t.size()[0].max(1) as usize;
    assert!(t.is_contiguous() && t.kind() == T::KIND && t.device() == tch::Device::Cpu && n * each <= t.numel());
    // SAFETY: `t` is a contiguous CPU tensor of `T` of at least n * each elements
    // that nothing else reads or writes until this returns; the slots are disjoint.
    let data = unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut T, n * each) };
    data.par_chunks_mut(each).enumerate().map(|(k, slot)| f(k, slot)).collect()
}

/// tokens.parquet rows for every tower that keeps `all` rows: vision
/// positions are `<cls>` and `<patch r,c>` (with their grid cell), decoder
/// positions the prompt's tokens (image tokens with the cell they come from),
/// text positions the tokenizer's tokens.
pub(super) fn token_rows(
    plan: &ExtractionPlan,
    info: &ModelInfo,
    dataset: &Dataset,
    tokenizer: Option<&TextTokenizer>,
    prompts: Option<&PromptTokenizer>,
    row_inputs: Option<&dyn RowInputs>,
    max_image_pixels: u64,
) -> Result<Vec<TokenRow>> {
    if let Some(ri) = row_inputs {
        return Ok(prepared_token_rows(plan, dataset, ri, max_image_pixels));
    }
    let mut rows = Vec::new();
    // A vision tower's positions: CLIP's CLS first (when it has one), then the
    // patches in raster order; each patch's (row, col, t) cell.
    let vision = info.tower(Tower::Vision).map(|t| {
        let cls = t.cls as i64;
        let side = ((t.max_tokens - cls) as f64).sqrt() as i64;
        (t.max_tokens, move |v: i64| (v >= cls).then(|| (((v - cls) / side) as i32, ((v - cls) % side) as i32, 0)))
    });
    if plan.wants(Tower::Decoder, Selector::All)
        && let Some(tok) = prompts
    {
        for i in 0..dataset.len() {
            // Rows whose prompt cannot be built fail in extraction, with the reason.
            let Ok(tokens) = tok.encode(&row_prompt(dataset, i)) else { continue };
            let mut k = 0i64;
            for (pos, t) in tokens.into_iter().enumerate() {
                // Image token k is the vision tower's position (positions - image_seq_length + k):
                // the projector reads the last image_seq_length positions (the CLS, or
                // SigLIP's first patch, dropped under the `default` strategy).
                let grid = match (&vision, t.image) {
                    (Some((n, cell)), true) => {
                        let v = n - tok.image_seq_length as i64 + k % tok.image_seq_length.max(1) as i64;
                        k += 1;
                        cell(v)
                    }
                    _ => None,
                };
                rows.push(TokenRow {
                    sample: i as u32,
                    tower: Tower::Decoder,
                    pos: pos as i32,
                    token_id: Some(t.id as i64),
                    token: t.text,
                    modality: if t.image { "image" } else { "text" },
                    grid,
                });
            }
        }
    }
    if plan.wants(Tower::Vision, Selector::All)
        && let Some((n, cell)) = &vision
    {
        for sample in 0..dataset.len() as u32 {
            for pos in 0..*n {
                let grid = cell(pos);
                let token = match grid {
                    Some((r, c, _)) => format!("<patch {r},{c}>"),
                    None => "<cls>".to_string(),
                };
                rows.push(TokenRow {
                    sample,
                    tower: Tower::Vision,
                    pos: pos as i32,
                    token_id: None,
                    token,
                    modality: "image",
                    grid,
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
                        grid: None,
                    });
                }
            }
        }
    }
    Ok(rows)
}

/// tokens.parquet rows of a family that prepares each row itself: decoder
/// tokens with each image token's merged grid cell, vision rows
/// `<patch r,c>` with their patch cell. Rows that cannot be prepared fail in
/// extraction, with the reason.
fn prepared_token_rows(plan: &ExtractionPlan, dataset: &Dataset, ri: &dyn RowInputs, max: u64) -> Vec<TokenRow> {
    let decoder = plan.wants(Tower::Decoder, Selector::All);
    let vision = plan.wants(Tower::Vision, Selector::All);
    if !decoder && !vision {
        return Vec::new();
    }
    let per_row: Vec<Vec<TokenRow>> = (0..dataset.len())
        .into_par_iter()
        .map(|i| {
            let image = match (dataset.images.is_some(), dataset.image_bytes(i), dataset.image_path(i)) {
                (false, _, _) => None,
                (true, Some(bytes), _) => ri.decode(bytes, "", max).ok(),
                (true, None, Some(p)) => std::fs::read(&p).ok().and_then(|b| ri.decode(&b, "", max).ok()),
                (true, None, None) => None,
            };
            if dataset.images.is_some() && image.is_none() {
                return Vec::new();
            }
            let Ok(row) = ri.prepare(image.as_ref(), dataset.prompt(i), dataset.text(i)) else { return Vec::new() };
            let grid = row.patches.as_ref().map(|(_, g)| *g);
            let mut out = Vec::new();
            if decoder && let Some(tokens) = row.tokens {
                let (mh, mw) = grid.map_or((1, 1), |g| ((g[1] / 2).max(1), (g[2] / 2).max(1)));
                let mut k = 0i64;
                for (pos, (id, token, image)) in tokens.into_iter().enumerate() {
                    let cell = image.then(|| {
                        let c = ((k % (mh * mw)) / mw, k % mw, k / (mh * mw));
                        k += 1;
                        (c.0 as i32, c.1 as i32, c.2 as i32)
                    });
                    out.push(TokenRow {
                        sample: i as u32,
                        tower: Tower::Decoder,
                        pos: pos as i32,
                        token_id: Some(id as i64),
                        token,
                        modality: if image { "image" } else { "text" },
                        grid: cell,
                    });
                }
            }
            if vision {
                let per_frame = grid.map_or(1, |g| (g[1] * g[2]).max(1));
                for (pos, &(r, c)) in row.cells.iter().enumerate() {
                    out.push(TokenRow {
                        sample: i as u32,
                        tower: Tower::Vision,
                        pos: pos as i32,
                        token_id: None,
                        token: format!("<patch {r},{c}>"),
                        modality: "image",
                        grid: Some((r as i32, c as i32, (pos as i64 / per_frame) as i32)),
                    });
                }
            }
            out
        })
        .collect();
    per_row.into_iter().flatten().collect()
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
    /// Loader thread: prepares every batch of the pending chunks, in order;
    /// returns its time at work and waiting for the model.
    pub fn produce(
        &self,
        pending: &[usize],
        tx: SyncSender<Result<Prepared>>,
        permits: Receiver<()>,
        buffers: Option<PixelBuffers>,
    ) -> Busy {
        let mut time = Busy::default();
        let batch = self.opts.run.batch_size;
        for &chunk in pending {
            let start = chunk * self.opts.chunk_size;
            let end = (start + self.opts.chunk_size).min(self.dataset.len());
            let mut failures = Vec::new();
            let mut b0 = start;
            while b0 < end {
                if time.wait(|| permits.recv()).is_err() {
                    return time;
                }
                let b1 = (b0 + batch).min(end);
                let buffer = match (&buffers, self.tools.images.is_some()) {
                    (Some(b), true) => match time.wait(|| b.free.recv()) {
                        Ok(t) => Some(t),
                        Err(_) => return time,
                    },
                    _ => None,
                };
                let prepared = time.work(|| self.prepare(chunk, b0..b1, b1 == end, &mut failures, buffer));
                let stop = prepared.is_err();
                if time.wait(|| tx.send(prepared).is_err()) || stop {
                    return time;
                }
                b0 = b1;
            }
        }
        time
    }

    fn prepare(
        &self,
        chunk: usize,
        rows: std::ops::Range<usize>,
        chunk_end: bool,
        failures: &mut Vec<FailedInput>,
        buffer: Option<Tensor>,
    ) -> Result<Prepared> {
        if let Some(ri) = self.tools.rows.as_deref() {
            return self.prepare_rows(ri, chunk, rows, chunk_end, failures);
        }
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
        let n = rows.len();
        let (h, w) = self.tools.images.as_ref().map_or((0, 0), |p| p.output_size());
        let all_pixels = self.tools.images.as_ref().map(|_| match &buffer {
            Some(t) => t.shallow_clone(),
            None => Tensor::empty([n as i64, 3, h as i64, w as i64], (tch::Kind::Float, tch::Device::Cpu)),
        });
        let open = |k: usize| {
            let i = rows.start + k;
            let max = self.opts.run.max_image_pixels;
            let img = match (self.dataset.image_bytes(i), self.dataset.image_path(i)) {
                (Some(bytes), path) => {
                    let name = path.map_or(format!("of row {i}"), |p| p.display().to_string());
                    decode_rgb_limited(bytes, &name, max)
                }
                (None, Some(p)) => open_rgb_limited(&p, max),
                (None, None) => Err(ExtractError::Input("no image".into())),
            };
            img.map_err(|e| e.to_string())
        };
        // A GPU's pinned buffers take bytes (looked up on the device); the CPU's pixels are floats.
        let decoded: Vec<std::result::Result<(), String>> = match (self.tools.images.as_ref(), &all_pixels) {
            (Some(proc), Some(t)) if t.kind() == tch::Kind::Uint8 => {
                fill_slots(t, n, |k, slot: &mut [u8]| open(k).map(|img| proc.bytes_into(&img, slot)))
            }
            (Some(proc), Some(t)) => {
                fill_slots(t, n, |k, slot: &mut [f32]| open(k).map(|img| proc.process_into(&img, slot)))
            }
            _ => Vec::new(),
        };
        let mut decoded_ok = vec![self.tools.images.is_none(); n];
        for (k, r) in decoded.into_iter().enumerate() {
            match r {
                Ok(()) => decoded_ok[k] = true,
                Err(m) => fail(rows.start + k, "image", m)?,
            }
        }
        for i in rows.clone() {
            if !decoded_ok[i - rows.start] {
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
        let pixels = match all_pixels {
            Some(t) if ok.len() == n => Some(t.narrow(0, 0, n as i64)),
            // Rows that failed leave their slots out.
            Some(t) if !ok.is_empty() => {
                let keep: Vec<i64> = ok.iter().map(|&i| (i - rows.start) as i64).collect();
                Some(t.index_select(0, &Tensor::from_slice(&keep)))
            }
            _ => None,
        };
        let pixels = pixels.map(|t| match (t.kind(), self.tools.images.as_ref()) {
            (tch::Kind::Uint8, Some(proc)) => {
                let table: Vec<f32> = proc.table().concat();
                Pixels::Bytes { bytes: t, table: Tensor::from_slice(&table).view([3, 256]) }
            }
            _ => Pixels::Float(t),
        });
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
        Ok(Prepared {
            chunk,
            samples,
            batch: Batch { pixels, text, prompt, patches: None },
            failures,
            chunk_end,
            seen,
            truncated,
            buffer,
        })
    }

    /// [`Inputs::prepare`] for a family that prepares each row itself (images
    /// of their own sizes): rows decoded and prepared in parallel, then collated.
    fn prepare_rows(
        &self,
        ri: &dyn RowInputs,
        chunk: usize,
        rows: std::ops::Range<usize>,
        chunk_end: bool,
        failures: &mut Vec<FailedInput>,
    ) -> Result<Prepared> {
        let seen = rows.len();
        let has_images = self.dataset.images.is_some();
        let max = self.opts.run.max_image_pixels;
        let prepared: Vec<std::result::Result<PreparedRow, (&str, String)>> = rows
            .clone()
            .into_par_iter()
            .map(|i| {
                let img = match (has_images, self.dataset.image_bytes(i), self.dataset.image_path(i)) {
                    (false, _, _) => None,
                    (true, Some(bytes), path) => {
                        let name = path.map_or(format!("of row {i}"), |p| p.display().to_string());
                        Some(ri.decode(bytes, &name, max).map_err(|e| ("image", e.to_string()))?)
                    }
                    (true, None, Some(p)) => {
                        let bytes = std::fs::read(&p).map_err(|e| ("image", format!("{}: {e}", p.display())))?;
                        Some(ri.decode(&bytes, &p.display().to_string(), max).map_err(|e| ("image", e.to_string()))?)
                    }
                    (true, None, None) => return Err(("image", "no image".to_string())),
                };
                ri.prepare(img.as_ref(), self.dataset.prompt(i), self.dataset.text(i)).map_err(|m| ("prompt", m))
            })
            .collect();
        let mut ok = Vec::with_capacity(seen);
        let mut kept = Vec::with_capacity(seen);
        for (i, r) in rows.zip(prepared) {
            match r {
                Ok(p) => {
                    ok.push(i as u32);
                    kept.push(p);
                }
                Err((stage, message)) if self.opts.skip_bad => failures.push(FailedInput {
                    sample: i as u32,
                    id: self.dataset.ids[i].clone(),
                    stage: stage.into(),
                    message,
                }),
                Err((_, message)) => {
                    return Err(ExtractError::Input(format!(
                        "row {i} (id '{}'): {message} (use --skip-bad to record it and go on)",
                        self.dataset.ids[i]
                    )));
                }
            }
        }
        let batch = if kept.is_empty() { Batch::default() } else { ri.collate(kept) };
        let failures = if chunk_end { std::mem::take(failures) } else { Vec::new() };
        Ok(Prepared { chunk, samples: ok, batch, failures, chunk_end, seen, truncated: 0, buffer: None })
    }
}
