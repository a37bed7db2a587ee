//! What the model does on the held-out samples, with or without an
//! intervention: one value per sample and (metric, measured concept), `None`
//! where a sample cannot be scored (no caption naming its class, no question).
//!
//! - Dual encoders: zero-shot accuracy per concept, predicting among the
//!   sample's own caption with its class swapped for every other class (or
//!   `--template` filled with each class), and the cosine of the image with
//!   its true caption.
//! - Decoders: exact match of greedy answers to `question_<concept>` with
//!   `answer_<concept>`, and the log-probability of that answer.
//! - Steering adds `target_rate`: the share of predictions or answers that
//!   are the target class.

use std::collections::{BTreeMap, HashMap};

use mmprobe_extract::llava::prompt::row_prompt;
use mmprobe_extract::preprocess::{decode_rgb, open_rgb};
use mmprobe_store::Tower;
use mmprobe_store::dataset::Dataset;
use ndarray::{Array2, Axis, concatenate};
use polars::prelude::*;
use tch::{Kind, Tensor};

use crate::error::{InterveneError, Result};
use crate::subject::{Intervention, Keep, Model, Subject};

pub const ZERO_SHOT: &str = "zero_shot_accuracy";
pub const CAPTION_SIMILARITY: &str = "caption_similarity";
pub const TARGET_RATE: &str = "target_rate";
pub const VQA: &str = "vqa_accuracy";
pub const ANSWER_LOG_PROB: &str = "answer_log_prob";
pub const PROBE: &str = "probe_accuracy";

/// A label column measured on the held-out rows.
pub struct MeasuredConcept {
    pub name: String,
    /// Sorted class names.
    pub classes: Vec<String>,
    /// Class per held-out row.
    pub label: Vec<Option<usize>>,
    /// `question_<name>` and `answer_<name>` per held-out row, when the dataset has both.
    pub qa: Option<Vec<Option<(String, String)>>>,
}

/// The held-out rows and every concept measured on them.
pub struct EvalSet<'a> {
    pub dataset: &'a Dataset,
    /// Dataset row numbers (= store samples).
    pub rows: Vec<usize>,
    pub concepts: Vec<MeasuredConcept>,
}

fn strings(frame: &DataFrame, name: &str, rows: &[usize]) -> Result<Option<Vec<Option<String>>>> {
    let Ok(c) = frame.column(name) else { return Ok(None) };
    let c = c.cast(&DataType::String).map_err(|e| InterveneError::Input(format!("column '{name}': {e}")))?;
    let ca = c.str().map_err(|e| InterveneError::Input(e.to_string()))?;
    Ok(Some(rows.iter().map(|&r| ca.get(r).map(str::to_string)).collect()))
}

/// Most classes a label column may have to be measured (as many captions per sample).
pub const MAX_CLASSES: usize = 32;

impl<'a> EvalSet<'a> {
    /// The label columns with 2..=32 classes (not the question/answer columns), on `rows`.
    pub fn new(dataset: &'a Dataset, rows: Vec<usize>) -> Result<(EvalSet<'a>, Vec<String>)> {
        let mut concepts = Vec::new();
        let mut skipped = Vec::new();
        for name in dataset.label_columns() {
            if name.starts_with("question_") || name.starts_with("answer_") {
                continue;
            }
            let all: Vec<usize> = (0..dataset.len()).collect();
            let values = strings(&dataset.frame, &name, &all)?.unwrap_or_default();
            let mut classes: Vec<String> = values.iter().flatten().cloned().collect();
            classes.sort();
            classes.dedup();
            if !(2..=MAX_CLASSES).contains(&classes.len()) {
                skipped.push(format!("{name} ({} classes)", classes.len()));
                continue;
            }
            let label = rows.iter().map(|&r| values[r].as_ref().and_then(|v| classes.binary_search(v).ok())).collect();
            let q = strings(&dataset.frame, &format!("question_{name}"), &rows)?;
            let a = strings(&dataset.frame, &format!("answer_{name}"), &rows)?;
            let qa = match (q, a) {
                (Some(q), Some(a)) => Some(q.into_iter().zip(a).map(|(q, a)| q.zip(a)).collect()),
                _ => None,
            };
            concepts.push(MeasuredConcept { name, classes, label, qa });
        }
        Ok((EvalSet { dataset, rows, concepts }, skipped))
    }

    pub fn concept(&self, name: &str) -> Option<usize> {
        self.concepts.iter().position(|c| c.name == name)
    }

    /// Preprocessed images of held-out rows `idx` (indices into `rows`), [B, 3, H, W].
    fn pixels(&self, subject: &Subject, idx: &[usize]) -> Result<Tensor> {
        let (h, w) = subject.processor.output_size();
        let mut data = Vec::with_capacity(idx.len() * 3 * h * w);
        for &i in idx {
            let r = self.rows[i];
            let img = match (self.dataset.image_bytes(r), self.dataset.image_path(r)) {
                (Some(b), p) => decode_rgb(b, &p.map(|p| p.display().to_string()).unwrap_or_default())?,
                (None, Some(p)) => open_rgb(&p)?,
                (None, None) => {
                    return Err(InterveneError::Input(format!("row {r} ({}) has no image", self.dataset.ids[r])));
                }
            };
            data.extend(subject.processor.process(&img));
        }
        let t = Tensor::from_slice(&data).view([idx.len() as i64, 3, h as i64, w as i64]);
        Ok(t.to_device(subject.device).to_kind(subject.dtype.kind()))
    }

    fn caption(&self, i: usize) -> Option<&str> {
        self.dataset.text(self.rows[i])
    }

    /// A decoder's prompt for held-out row `i` as extraction builds it.
    fn row_prompt(&self, i: usize) -> String {
        row_prompt(self.dataset, self.rows[i])
    }
}

/// What to measure besides the fixed metrics.
pub struct Plan {
    /// The downstream rows the amnesic probe reads: a tower and its pooled layer.
    pub keep: (Tower, Keep),
    /// Steering: (measured concept index, class index) answers are compared to.
    pub target: Option<(usize, usize)>,
    pub template: Option<String>,
    pub batch_size: usize,
}

/// Per (metric, measured concept), one value per held-out row; and the
/// downstream rows [n, d] for the amnesic probe.
pub struct Measures {
    pub values: BTreeMap<(String, String), Vec<Option<f64>>>,
    pub downstream: Array2<f64>,
}

impl Measures {
    fn put(&mut self, metric: &str, concept: &str, n: usize, i: usize, v: Option<f64>) {
        self.values.entry((metric.to_string(), concept.to_string())).or_insert_with(|| vec![None; n])[i] = v;
    }
}

/// `text` with the one whole-word occurrence of `from` (any case) replaced
/// by `to`; `None` when `from` is empty, absent, or there more than once (the
/// caption would not say which of its words is the class).
pub fn swap_word(text: &str, from: &str, to: &str) -> Option<String> {
    if from.is_empty() {
        return None;
    }
    // ASCII lower-casing keeps every byte offset, so matches index `text` itself.
    let (hay, needle) = (text.to_ascii_lowercase(), from.to_ascii_lowercase());
    let is_word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric());
    let mut found = None;
    for (at, _) in hay.match_indices(&needle) {
        let end = at + needle.len();
        if !is_word(hay[..at].chars().next_back()) && !is_word(hay[end..].chars().next()) {
            if found.is_some() {
                return None;
            }
            found = Some((at, end));
        }
    }
    let (at, end) = found?;
    Some(format!("{}{to}{}", &text[..at], &text[end..]))
}

/// Answers compared as words: case, surrounding space and a final full stop ignored.
pub fn same_answer(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        s.trim().trim_end_matches('.').split_whitespace().map(str::to_lowercase).collect::<Vec<_>>().join(" ")
    };
    norm(a) == norm(b)
}

/// A question as a LLaVA-1.5 chat turn, unless it already is one.
pub fn chat_prompt(question: &str) -> String {
    if question.contains("ASSISTANT:") {
        return question.to_string();
    }
    let q = if question.contains("<image>") { question.to_string() } else { format!("<image>\n{question}") };
    format!("USER: {q} ASSISTANT:")
}

pub fn measure(subject: &Subject, eval: &EvalSet, edit: Option<&Intervention>, plan: &Plan) -> Result<Measures> {
    let n = eval.rows.len();
    let mut m = Measures { values: BTreeMap::new(), downstream: Array2::zeros((0, 0)) };
    let mut down = Vec::new();
    let order: Vec<usize> = (0..n).collect();
    for chunk in order.chunks(plan.batch_size) {
        let pixels = eval.pixels(subject, chunk)?;
        let (tower, keep) = plan.keep;
        let (image, kept) = subject.vision(&pixels, edit, (tower == Tower::Vision).then_some(keep))?;
        if let Some(k) = kept {
            down.push(k);
        }
        let b = Batch { subject, eval, edit, plan, chunk, image: &image };
        match &subject.model {
            Model::Dual(_) => dual_batch(&b, &mut m, &mut down)?,
            Model::Llava(_) => decoder_batch(&b, &mut m, &mut down)?,
        }
    }
    let views: Vec<_> = down.iter().map(|a| a.view()).collect();
    m.downstream = concatenate(Axis(0), &views).map_err(|e| InterveneError::Input(e.to_string()))?;
    if m.downstream.nrows() != n {
        return Err(InterveneError::Input(format!(
            "kept {} downstream rows for {n} samples: a sample has no caption or prompt",
            m.downstream.nrows()
        )));
    }
    Ok(m)
}

/// One batch of held-out rows under measurement, its image side already run.
struct Batch<'a> {
    subject: &'a Subject,
    eval: &'a EvalSet<'a>,
    edit: Option<&'a Intervention>,
    plan: &'a Plan,
    /// Indices into the held-out rows.
    chunk: &'a [usize],
    /// CLIP/SigLIP: unit image embeddings; LLaVA: projected image features.
    image: &'a Tensor,
}

fn dual_batch(b: &Batch, m: &mut Measures, down: &mut Vec<Array2<f64>>) -> Result<()> {
    let Batch { subject, eval, edit, plan, chunk, image } = *b;
    let n = eval.rows.len();
    let captions: Vec<Option<&str>> = chunk.iter().map(|&i| eval.caption(i)).collect();
    if plan.keep.0 == Tower::Text {
        let texts: Vec<&str> = captions
            .iter()
            .zip(chunk)
            .map(|(c, &i)| {
                c.ok_or_else(|| InterveneError::Input(format!("row {} has no text", eval.dataset.ids[eval.rows[i]])))
            })
            .collect::<Result<_>>()?;
        let (_, kept) = subject.text(&texts, edit, Some(plan.keep.1))?;
        down.extend(kept);
    }
    // Every string to embed: true captions, then each concept's candidates.
    let mut strings: Vec<String> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut id = |s: String, strings: &mut Vec<String>| -> usize {
        *index.entry(s.clone()).or_insert_with(|| {
            strings.push(s);
            strings.len() - 1
        })
    };
    let truth: Vec<Option<usize>> = captions.iter().map(|c| c.map(|c| id(c.to_string(), &mut strings))).collect();
    // candidates[c][b] = the class captions of concept c for batch row b.
    let mut candidates: Vec<Vec<Option<Vec<usize>>>> = Vec::new();
    for c in &eval.concepts {
        let per_row = chunk
            .iter()
            .zip(&captions)
            .map(|(&i, cap)| {
                let own = &c.classes[c.label[i]?];
                let texts: Option<Vec<String>> = match &plan.template {
                    Some(t) => Some(c.classes.iter().map(|v| t.replace("{}", v)).collect()),
                    None => c.classes.iter().map(|v| swap_word((*cap)?, own, v)).collect(),
                };
                Some(texts?.into_iter().map(|s| id(s, &mut strings)).collect())
            })
            .collect();
        candidates.push(per_row);
    }
    let mut parts = Vec::new();
    for s in strings.chunks(plan.batch_size.max(64)) {
        let refs: Vec<&str> = s.iter().map(String::as_str).collect();
        parts.push(subject.text(&refs, edit, None)?.0);
    }
    let text = Tensor::cat(&parts, 0);
    let width = text.size()[0] as usize;
    let sims = tch::no_grad(|| image.mm(&text.tr())).to_kind(Kind::Double).to_device(tch::Device::Cpu);
    let flat = Vec::<f64>::try_from(sims.flatten(0, -1))?;
    let sims: Vec<&[f64]> = flat.chunks(width).collect();
    for (b, &i) in chunk.iter().enumerate() {
        m.put(CAPTION_SIMILARITY, "caption", n, i, truth[b].map(|t| sims[b][t]));
        for (ci, c) in eval.concepts.iter().enumerate() {
            let Some(cands) = &candidates[ci][b] else {
                m.put(ZERO_SHOT, &c.name, n, i, None);
                continue;
            };
            let pred = (0..cands.len()).max_by(|&x, &y| sims[b][cands[x]].total_cmp(&sims[b][cands[y]])).unwrap_or(0);
            let right = c.label[i].map(|l| (l == pred) as u8 as f64);
            m.put(ZERO_SHOT, &c.name, n, i, right);
            if let Some((tc, tk)) = plan.target
                && tc == ci
            {
                m.put(TARGET_RATE, &c.name, n, i, Some((pred == tk) as u8 as f64));
            }
        }
    }
    Ok(())
}

fn decoder_batch(b: &Batch, m: &mut Measures, down: &mut Vec<Array2<f64>>) -> Result<()> {
    let Batch { subject, eval, edit, plan, chunk, image } = *b;
    let n = eval.rows.len();
    if plan.keep.0 == Tower::Decoder {
        let prompts: Vec<String> = chunk.iter().map(|&i| eval.row_prompt(i)).collect();
        down.push(subject.decoder_rows(image, &prompts, edit, plan.keep.1)?);
    }
    let l = subject.llava()?;
    for (ci, c) in eval.concepts.iter().enumerate() {
        let Some(qa) = &c.qa else { continue };
        let rows: Vec<(usize, usize)> =
            chunk.iter().enumerate().filter(|(_, i)| qa[**i].is_some()).map(|(b, &i)| (b, i)).collect();
        for &i in chunk.iter().filter(|&&i| qa[i].is_none()) {
            m.put(VQA, &c.name, n, i, None);
        }
        if rows.is_empty() {
            continue;
        }
        let sel =
            Tensor::from_slice(&rows.iter().map(|(b, _)| *b as i64).collect::<Vec<_>>()).to_device(image.device());
        let img = image.index_select(0, &sel);
        let prompts: Vec<String> = rows.iter().map(|(_, i)| chat_prompt(&qa[*i].as_ref().expect("kept").0)).collect();
        let truths: Vec<String> = rows.iter().map(|(_, i)| qa[*i].as_ref().expect("kept").1.clone()).collect();
        // Room for the longest answer of this concept's rows plus the end token.
        let longest = truths
            .iter()
            .map(|a| l.tokenizer.encode(a).map(|t| t.len()))
            .collect::<mmprobe_extract::Result<Vec<_>>>()?
            .into_iter()
            .max()
            .unwrap_or(1);
        let said = subject.answers(&img, &prompts, longest + 2, edit)?;
        let logp = subject.answer_log_probs(&img, &prompts, &truths, edit)?;
        for (r, &(_, i)) in rows.iter().enumerate() {
            m.put(VQA, &c.name, n, i, Some(same_answer(&said[r], &truths[r]) as u8 as f64));
            m.put(ANSWER_LOG_PROB, &c.name, n, i, logp[r]);
            if let Some((tc, tk)) = plan.target
                && tc == ci
            {
                m.put(TARGET_RATE, &c.name, n, i, Some(same_answer(&said[r], &c.classes[tk]) as u8 as f64));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_swap_whole_and_answers_compare_as_words() {
        let c = "a red square, reddish background";
        assert_eq!(swap_word(c, "red", "blue").as_deref(), Some("a blue square, reddish background"));
        assert_eq!(swap_word("a reddish one", "red", "blue"), None);
        assert_eq!(swap_word("top left corner", "top left", "centre").as_deref(), Some("centre corner"));
        assert_eq!(swap_word("Red square", "red", "blue").as_deref(), Some("blue square"), "any case");
        assert_eq!(swap_word("a red square on red", "red", "blue"), None, "which red is the class?");
        assert_eq!(swap_word("a red square", "", "blue"), None);
        assert_eq!(swap_word("naïve red", "red", "blue").as_deref(), Some("naïve blue"));
        assert!(same_answer(" Red.", "red") && !same_answer("red", "dark red"));
        assert_eq!(chat_prompt("<image> What colour?"), "USER: <image> What colour? ASSISTANT:");
        assert_eq!(chat_prompt("What colour?"), "USER: <image>\nWhat colour? ASSISTANT:");
        assert_eq!(chat_prompt("USER: <image> hi ASSISTANT:"), "USER: <image> hi ASSISTANT:");
    }
}
