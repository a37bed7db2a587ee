//! VQA accuracy of a shapes LLaVA per question on a freshly generated split:
//! the model answers each question by greedy decoding (up to `</s>`), and an
//! answer counts when its words equal the true answer's. Loaded from the
//! folder the way extraction loads it, so the saved checkpoint is what is measured.

use std::path::Path;

use mmprobe_extract::llava::generate::greedy;
use mmprobe_extract::llava::{LoadedLlava, PromptTokenizer};
use mmprobe_extract::preprocess::ImageProcessor;
use mmprobe_extract::{Capture, DType};
use tch::{Device, Tensor};

use crate::ZooError;
use crate::shapes::{CONCEPTS, ShapeSample, ShapeStream, words_of};
use crate::shapes_clip::pixel_batch;
use crate::shapes_llava::{TASKS, task_text};
use crate::word_tokenizer::LLAMA_EOS;

/// The description's answer has 6 words at most; one more for `</s>`.
const MAX_NEW_TOKENS: usize = 8;

#[derive(Debug, Clone)]
pub struct TaskAccuracy {
    /// A concept, or `describe` (every word of the description right).
    pub task: &'static str,
    pub accuracy: f64,
}

#[derive(Debug, Clone)]
pub struct VqaReport {
    pub n: usize,
    pub seed: u64,
    pub tasks: Vec<TaskAccuracy>,
}

pub fn vqa_shapes(model_dir: &Path, n: usize, seed: u64) -> Result<VqaReport, ZooError> {
    if n == 0 {
        return Err(ZooError::Params("--n must be at least 1".into()));
    }
    let llava = LoadedLlava::load(model_dir, Device::Cpu, DType::F32)?;
    let model = &llava.model;
    let c = &model.config;
    let mut tok =
        PromptTokenizer::from_dir(model_dir, c.image_token_index, c.image_seq_length, c.text_config.pad_token_id)?;
    // Generation appends at the end, so every prompt ends there.
    tok.left_padding = true;
    let processor = ImageProcessor::from_dir(model_dir)?;
    let side = processor.output_size().0 as u32;

    let mut correct = [0usize; TASKS];
    let mut stream = ShapeStream::new(seed, side).take(n).peekable();
    while stream.peek().is_some() {
        let batch: Vec<(ShapeSample, image::RgbImage)> = stream.by_ref().take(100).collect();
        let pixels = pixel_batch(&processor, batch.iter().map(|(_, img)| img));
        let image = tch::no_grad(|| model.encode_image(&pixels, &mut Capture::nothing()));
        for (task, right) in correct.iter_mut().enumerate() {
            let (prompts, truths): (Vec<String>, Vec<String>) = batch.iter().map(|(s, _)| task_text(s, task)).unzip();
            let answers = greedy_answers(&llava, &tok, &image, &prompts)?;
            *right += answers.iter().zip(&truths).filter(|(words, truth)| **words == words_of(truth)).count();
        }
    }
    let names = CONCEPTS.iter().copied().chain(["describe"]);
    let tasks = names.zip(correct).map(|(task, k)| TaskAccuracy { task, accuracy: k as f64 / n as f64 }).collect();
    Ok(VqaReport { n, seed, tasks })
}

/// Greedy answers to one prompt per image, as words up to (not including)
/// `</s>`. `image` holds the projected features [B, image_seq_length, D]
/// (`LlavaModel::encode_image`); `tok` must pad on the left.
pub fn greedy_answers(
    llava: &LoadedLlava,
    tok: &PromptTokenizer,
    image: &Tensor,
    prompts: &[String],
) -> Result<Vec<Vec<String>>, ZooError> {
    if !tok.left_padding {
        return Err(ZooError::Params("greedy answers need prompts padded on the left".into()));
    }
    let eos = tok.encode(LLAMA_EOS)?.last().map(|t| t.id as i64).unwrap_or(-1);
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let batch = tok.encode_batch(&refs)?;
    let ids =
        greedy(&llava.model, &batch.input_ids, &batch.attention_mask, image, &[eos], MAX_NEW_TOKENS, &mut |_, _| {
            Capture::nothing()
        })?;
    Ok(ids.into_iter().map(|row| row.iter().filter_map(|&i| tok.id_to_token(i as u32)).collect()).collect())
}
