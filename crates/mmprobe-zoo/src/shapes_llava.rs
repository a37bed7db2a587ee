//! `shapes-llava`: a small LLaVA built on shapes-clip's vision tower (frozen),
//! with a projector and a small Llama decoder trained to answer the shapes
//! dataset's VQA prompts, using mmprobe's own LLaVA code (mmprobe-extract).
//! Saved in the Hugging Face LLaVA format (transformers 5 key layout).
//! Deterministic for a seed and a thread count.

use std::collections::HashMap;
use std::path::Path;

use mmprobe_extract::Capture;
use mmprobe_extract::llava::{LlavaConfig, LlavaModel, PromptTokenizer};
use mmprobe_extract::preprocess::ImageProcessor;
use mmprobe_extract::weights::Checkpoint;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};
use tch::nn;
use tch::{Device, Kind, Reduction, Tensor};

use crate::ZooError;
use crate::hf_folder::{create_dir, read_json, write_json};
use crate::shapes::{CONCEPTS, DESCRIBE, QUESTIONS, ShapeSample, ShapeStream, chat_prompt, vqa_words};
use crate::shapes_clip::{IMAGE_SIDE, pixel_batch};
use crate::training::{
    Schedule, StepReport, TrainSummary, freeze_prefix, redraw_normal, save_run, trainable_parameters,
};
use crate::word_tokenizer::{self, WordVocab};

/// Training images come from this generator seed plus the recipe's seed:
/// apart from shapes-clip's training stream (1000 + seed), the bundled split
/// (0) and the held-out split (999).
pub const TRAIN_SEED_OFFSET: u64 = 2_000;
/// A prompt (65 image positions, 13 words at most) and the longest answer fit.
pub const MAX_POSITIONS: i64 = 96;
/// Tasks per image: the four concept questions and the description.
pub const TASKS: usize = CONCEPTS.len() + 1;

/// The recipe's hyperparameters, unchecked.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ShapesLlavaParams {
    #[serde(flatten)]
    pub schedule: Schedule,
    /// The decoder's width.
    pub width: i64,
    pub layers: usize,
    pub heads: i64,
    pub kv_heads: i64,
}

impl Default for ShapesLlavaParams {
    fn default() -> Self {
        ShapesLlavaParams {
            schedule: Schedule {
                seed: 0,
                steps: 3000,
                batch_size: 64,
                learning_rate: 3e-3,
                warmup_steps: 50,
                weight_decay: 0.05,
                threads: 2,
            },
            width: 64,
            layers: 3,
            heads: 4,
            kv_heads: 2,
        }
    }
}

/// Parameters that passed [`ShapesLlavaParams::check`].
#[derive(Debug, Clone)]
pub struct CheckedShapesLlava(ShapesLlavaParams);

impl ShapesLlavaParams {
    pub fn check(self) -> Result<CheckedShapesLlava, ZooError> {
        self.schedule.check(1)?;
        let bad = |m: String| Err(ZooError::Params(m));
        if self.heads <= 0 || self.width <= 0 || self.width % self.heads != 0 || (self.width / self.heads) % 2 != 0 {
            return bad(format!("width {} must be heads {} times an even head size (RoPE)", self.width, self.heads));
        }
        if self.kv_heads <= 0 || self.heads % self.kv_heads != 0 {
            return bad(format!("heads {} must be a multiple of kv heads {}", self.heads, self.kv_heads));
        }
        if self.layers == 0 {
            return bad("layers must be at least 1".into());
        }
        Ok(CheckedShapesLlava(self))
    }
}

/// config.json in transformers' LlavaConfig layout. The projector reads the
/// last two vision layers at every position (CLS too): shapes-clip's CLS is
/// the only token its loss trained, and its last layer's patch outputs feed
/// nothing in CLIP.
fn config_json(p: &ShapesLlavaParams, vision: &Value, vocab: &WordVocab) -> Value {
    let patches = (IMAGE_SIDE as i64 / vision["patch_size"].as_i64().unwrap_or(1)).pow(2);
    json!({
        "architectures": ["LlavaForConditionalGeneration"],
        "model_type": "llava",
        "dtype": "float32",
        "image_token_index": vocab.id(word_tokenizer::IMAGE),
        "image_seq_length": patches + 1,
        "projector_hidden_act": "gelu",
        "vision_feature_select_strategy": "full",
        "vision_feature_layer": [-2, -1],
        "multimodal_projector_bias": true,
        "tie_word_embeddings": false,
        "vision_config": vision,
        "text_config": {
            "model_type": "llama",
            "vocab_size": vocab.len(),
            "hidden_size": p.width,
            "intermediate_size": p.width * 3,
            "num_hidden_layers": p.layers,
            "num_attention_heads": p.heads,
            "num_key_value_heads": p.kv_heads,
            "hidden_act": "silu",
            "max_position_embeddings": MAX_POSITIONS,
            "rms_norm_eps": 1e-5,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
            "attention_bias": false,
            "mlp_bias": false,
            "tie_word_embeddings": false,
            "bos_token_id": vocab.id(word_tokenizer::LLAMA_BOS),
            "eos_token_id": vocab.id(word_tokenizer::LLAMA_EOS),
            "pad_token_id": vocab.id(word_tokenizer::PAD),
        },
    })
}

/// What transformers' LlavaProcessor reads: one image token per CLS and patch.
fn processor_json(patch_size: i64) -> Value {
    json!({
        "processor_class": "LlavaProcessor",
        "image_token": word_tokenizer::IMAGE,
        "patch_size": patch_size,
        "vision_feature_select_strategy": "full",
        "num_additional_image_tokens": 1
    })
}

/// Writes everything but the weights: config, tokenizer, processors.
pub fn write_model_files(dir: &Path, clip_dir: &Path, p: &ShapesLlavaParams) -> Result<LlavaConfig, ZooError> {
    let clip = read_json(&clip_dir.join("config.json"))?;
    let vision = clip.get("vision_config").cloned().ok_or_else(|| ZooError::Io {
        path: clip_dir.join("config.json").display().to_string(),
        message: "no vision_config: not a CLIP checkpoint".into(),
    })?;
    let clip_processor = read_json(&clip_dir.join("preprocessor_config.json"))?;
    create_dir(dir)?;
    let vocab = WordVocab::llama(&vqa_words());
    let config = config_json(p, &vision, &vocab);
    write_json(&dir.join("config.json"), &config)?;
    write_json(&dir.join("preprocessor_config.json"), &clip_processor)?;
    write_json(&dir.join("processor_config.json"), &processor_json(vision["patch_size"].as_i64().unwrap_or(1)))?;
    write_json(&dir.join("tokenizer.json"), &vocab.tokenizer_json())?;
    write_json(&dir.join("tokenizer_config.json"), &vocab.tokenizer_config(MAX_POSITIONS as usize, "left"))?;
    LlavaConfig::from_value(config).map_err(|e| ZooError::Model(format!("config.json: {e}")))
}

/// A task's prompt and answer for a sample (task < [`TASKS`]; the last is the description).
pub fn task_text(s: &ShapeSample, task: usize) -> (String, String) {
    match CONCEPTS.get(task) {
        Some(c) => (chat_prompt(QUESTIONS[task]), s.answer(c)),
        None => (chat_prompt(DESCRIBE), s.description()),
    }
}

/// Prompts with their answers and `</s>`, as ids [B, T], a mask, pixels, and
/// next-token targets [B, T] (-100 except where the next token is part of the answer).
struct VqaBatch {
    pub pixels: Tensor,
    pub input_ids: Tensor,
    pub attention_mask: Tensor,
    pub targets: Tensor,
}

fn vqa_batch(
    samples: &[(ShapeSample, image::RgbImage, usize)],
    proc: &ImageProcessor,
    tok: &PromptTokenizer,
) -> Result<VqaBatch, ZooError> {
    let mut rows = Vec::with_capacity(samples.len());
    let mut prompt_lens = Vec::with_capacity(samples.len());
    for (s, _, task) in samples {
        let (prompt, answer) = task_text(s, *task);
        prompt_lens.push(tok.encode(&prompt)?.len());
        rows.push(tok.encode(&format!("{prompt} {answer} {}", word_tokenizer::LLAMA_EOS))?);
    }
    let lens: Vec<usize> = rows.iter().map(Vec::len).collect();
    let batch = tok.pad(rows);
    let (b, t) = batch.input_ids.size2().expect("ids are [batch, tokens]");
    let ids = Vec::<i64>::try_from(batch.input_ids.flatten(0, -1))?;
    let mut targets = vec![-100i64; (b * t) as usize];
    let t = t as usize;
    for (i, (&len, &plen)) in lens.iter().zip(&prompt_lens).enumerate() {
        let start = if tok.left_padding { t - len } else { 0 };
        for j in plen..len {
            targets[i * t + start + j - 1] = ids[i * t + start + j];
        }
    }
    Ok(VqaBatch {
        pixels: pixel_batch(proc, samples.iter().map(|(_, img, _)| img)),
        input_ids: batch.input_ids,
        attention_mask: batch.attention_mask,
        targets: Tensor::from_slice(&targets).view([b, t as i64]),
    })
}

/// The residual stream after the decoder's last layer, before the final norm
/// [B, T, D]: what `LlavaModel::logits` reads. `image` holds the projected features.
fn final_stream(model: &LlavaModel, ids: &Tensor, mask: &Tensor, image: &Tensor) -> Tensor {
    model.decode(ids, mask, Some(image), &mut Capture::nothing())
}

/// Next-token logits [B, T, V] of a batch; the vision tower runs without gradients.
fn vqa_logits(model: &LlavaModel, pixels: &Tensor, ids: &Tensor, mask: &Tensor) -> Tensor {
    let feats = tch::no_grad(|| model.vision_features(pixels, &mut Capture::nothing()));
    let image = model.multi_modal_projector.forward(&feats);
    model.logits(&final_stream(model, ids, mask, &image))
}

/// Mean cross-entropy over answer tokens, and the share of them predicted right.
fn answer_loss(logits: &Tensor, targets: &Tensor) -> (Tensor, Tensor) {
    let v = logits.size()[2];
    let flat = logits.view([-1, v]);
    let targets = targets.view([-1]);
    let loss = flat.cross_entropy_loss::<Tensor>(&targets, None, Reduction::Mean, -100, 0.0);
    let answer = targets.ne(-100);
    let right = flat.argmax(-1, false).eq_tensor(&targets).logical_and(&answer);
    let accuracy = right.to_kind(Kind::Float).sum(Kind::Float) / answer.to_kind(Kind::Float).sum(Kind::Float);
    (loss, accuracy)
}

/// Canonical variable names (mmprobe's LlavaModel) as transformers 5 saves them.
fn checkpoint_key(name: &str) -> String {
    if let Some(rest) = name.strip_prefix("vision_tower.") {
        format!("model.vision_tower.vision_model.{rest}")
    } else if name.starts_with("lm_head.") {
        name.to_string()
    } else {
        format!("model.{name}")
    }
}

/// Trains shapes-llava into `dir` from the shapes-clip checkpoint in
/// `clip_dir` (its vision tower, frozen). `on_step` sees every step.
pub fn train_shapes_llava(
    dir: &Path,
    clip_dir: &Path,
    params: &CheckedShapesLlava,
    on_step: &mut dyn FnMut(StepReport),
) -> Result<TrainSummary<ShapesLlavaParams>, ZooError> {
    let p = &params.0;
    let start = p.schedule.start();
    let config = write_model_files(dir, clip_dir, p)?;
    let text = &config.text_config;
    let tokenizer =
        PromptTokenizer::from_dir(dir, config.image_token_index, config.image_seq_length, text.pad_token_id)?;
    let processor = ImageProcessor::from_dir(dir)?;

    let vs = nn::VarStore::new(Device::Cpu);
    let model = LlavaModel::new(vs.root(), &config).map_err(ZooError::Model)?;
    redraw_normal(&vs, 0.02, |name| name.ends_with("embed_tokens.weight"));
    let clip = Checkpoint::open(clip_dir)?;
    tch::no_grad(|| -> Result<(), ZooError> {
        for (name, mut var) in vs.variables() {
            if let Some(rest) = name.strip_prefix("vision_tower.") {
                var.copy_(&clip.tensor(&format!("vision_model.{rest}"))?);
            }
        }
        Ok(())
    })?;
    freeze_prefix(&vs, "vision_tower.");
    let parameters = trainable_parameters(&vs);
    let side = processor.output_size().0 as u32;
    let seed = TRAIN_SEED_OFFSET + p.schedule.seed;
    let (mut images, mut tasks) = (ShapeStream::new(seed, side), ChaCha8Rng::seed_from_u64(seed));
    let losses = p.schedule.optimise(
        &vs,
        on_step,
        |_| {
            let samples: Vec<_> = images
                .by_ref()
                .take(p.schedule.batch_size)
                .map(|(s, img)| (s, img, tasks.random_range(0..TASKS)))
                .collect();
            let batch = vqa_batch(&samples, &processor, &tokenizer)?;
            Ok(answer_loss(&vqa_logits(&model, &batch.pixels, &batch.input_ids, &batch.attention_mask), &batch.targets))
        },
        || {},
    )?;
    let saved: HashMap<String, Tensor> = vs.variables().into_iter().map(|(n, t)| (checkpoint_key(&n), t)).collect();
    save_run(dir, &saved, p, parameters, start, &losses)
}
