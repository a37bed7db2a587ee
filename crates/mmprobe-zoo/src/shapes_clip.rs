//! `shapes-clip`: a small CLIP trained contrastively on generated shapes with
//! mmprobe's own CLIP code (mmprobe-extract), saved in the Hugging Face CLIP
//! format. Deterministic for a seed and a thread count.

use std::path::Path;

use image::RgbImage;
use mmprobe_extract::clip::{ClipConfig, ClipModel};
use mmprobe_extract::preprocess::{ImageProcessor, Rgb8};
use mmprobe_extract::tokenize::TextTokenizer;
use mmprobe_extract::{Capture, SiteRequest};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};
use tch::nn;
use tch::{Device, Kind, Tensor};

use crate::ZooError;
use crate::hf_folder::{create_dir, write_json};
use crate::shapes::{BACKGROUNDS, COLOURS, SHAPES, SIZES, ShapeSample, TEMPLATES, caption_words, draw};
use crate::training::{Schedule, StepReport, TrainSummary, redraw_normal, save_run, trainable_parameters};
use crate::word_tokenizer::{self, WordVocab};

/// Training images come from this seed offset, far from the seeds datasets are
/// generated with (the bundled split is seed 0; `zoo eval` uses its own).
pub const TRAIN_SEED_OFFSET: u64 = 1_000;
/// Longest caption plus framing fits with room to spare.
pub const MAX_POSITIONS: usize = 24;
pub const IMAGE_SIDE: u32 = 64;

/// The recipe's hyperparameters, unchecked.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ShapesClipParams {
    #[serde(flatten)]
    pub schedule: Schedule,
    /// Width of both towers and of the joint embedding.
    pub width: i64,
    pub layers: usize,
    pub heads: i64,
    pub patch_size: i64,
}

impl Default for ShapesClipParams {
    fn default() -> Self {
        ShapesClipParams {
            schedule: Schedule {
                seed: 0,
                steps: 3500,
                batch_size: 128,
                learning_rate: 2e-3,
                warmup_steps: 60,
                weight_decay: 0.05,
                threads: 2,
            },
            width: 64,
            layers: 4,
            heads: 4,
            patch_size: 8,
        }
    }
}

/// Parameters that passed [`ShapesClipParams::check`].
#[derive(Debug, Clone)]
pub struct CheckedShapesClip(ShapesClipParams);

impl ShapesClipParams {
    pub fn check(self) -> Result<CheckedShapesClip, ZooError> {
        // A contrastive loss needs a negative in every batch.
        self.schedule.check(2)?;
        let bad = |m: String| Err(ZooError::Params(m));
        if self.width <= 0 || self.heads <= 0 || self.width % self.heads != 0 {
            return bad(format!("width {} must be a positive multiple of heads {}", self.width, self.heads));
        }
        if self.layers == 0 {
            return bad("layers must be at least 1".into());
        }
        if self.patch_size <= 0 || IMAGE_SIDE as i64 % self.patch_size != 0 {
            return bad(format!("patch size {} must divide the image side {IMAGE_SIDE}", self.patch_size));
        }
        Ok(CheckedShapesClip(self))
    }
}

/// config.json in transformers' CLIPConfig layout.
fn config_json(p: &ShapesClipParams, vocab: &WordVocab) -> Value {
    let tower = |extra: Value| {
        let mut v = json!({
            "hidden_size": p.width,
            "intermediate_size": p.width * 4,
            "num_hidden_layers": p.layers,
            "num_attention_heads": p.heads,
            "hidden_act": "gelu",
            "layer_norm_eps": 1e-5,
            "projection_dim": p.width,
        });
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        v
    };
    json!({
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": p.width,
        "logit_scale_init_value": 2.6592,
        "dtype": "float32",
        "text_config": tower(json!({
            "model_type": "clip_text_model",
            "vocab_size": vocab.len(),
            "max_position_embeddings": MAX_POSITIONS,
            "pad_token_id": vocab.id(word_tokenizer::PAD),
            "bos_token_id": vocab.id(word_tokenizer::CLIP_BOS),
            "eos_token_id": vocab.id(word_tokenizer::CLIP_EOS),
        })),
        "vision_config": tower(json!({
            "model_type": "clip_vision_model",
            "image_size": IMAGE_SIDE,
            "patch_size": p.patch_size,
            "num_channels": 3,
        })),
    })
}

fn preprocessor_json() -> Value {
    json!({
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": true,
        "size": {"shortest_edge": IMAGE_SIDE},
        "resample": 3,
        "do_center_crop": true,
        "crop_size": {"height": IMAGE_SIDE, "width": IMAGE_SIDE},
        "do_rescale": true,
        "rescale_factor": 1.0 / 255.0,
        "do_normalize": true,
        "image_mean": [0.481_454_66, 0.457_827_5, 0.408_210_73],
        "image_std": [0.268_629_54, 0.261_302_6, 0.275_777_1],
        "do_convert_rgb": true
    })
}

/// Writes everything but the weights: config, tokenizer, image processor.
pub fn write_model_files(dir: &Path, p: &ShapesClipParams) -> Result<ClipConfig, ZooError> {
    create_dir(dir)?;
    let vocab = WordVocab::clip(&caption_words());
    let config = config_json(p, &vocab);
    write_json(&dir.join("config.json"), &config)?;
    write_json(&dir.join("preprocessor_config.json"), &preprocessor_json())?;
    write_json(&dir.join("tokenizer.json"), &vocab.tokenizer_json())?;
    write_json(&dir.join("tokenizer_config.json"), &vocab.tokenizer_config(MAX_POSITIONS, "right"))?;
    serde_json::from_value(config).map_err(|e| ZooError::Model(format!("config.json: {e}")))
}

/// A batch of generated images and captions as model inputs.
struct Batch {
    pixels: Tensor,
    input_ids: Tensor,
    attention_mask: Tensor,
}

/// Training samples in groups of [`GROUP`] that each differ from the group's
/// first in exactly one factor (see [`CHANGES`]), with their own texture and
/// template. Random batches
/// rarely hold two images that only their shape tells apart, so a contrastive
/// loss learns colour and position and little shape; groups make every
/// factor's hard negatives common.
struct GroupSampler {
    factors: ChaCha8Rng,
    image_seed: u64,
    images: u64,
}

const GROUP: usize = 8;
/// The factor each member after the first changes.
/// Shape is the factor random batches teach least (colour and position are
/// learnt first and then separate most pairs), so each group holds all six
/// shapes under otherwise equal conditions.
const CHANGES: [&str; GROUP - 1] = ["shape", "shape", "shape", "shape", "shape", "position", "size"];

/// A value in 0..n not in `taken`.
fn other(rng: &mut ChaCha8Rng, n: usize, taken: &[usize]) -> usize {
    loop {
        let v = rng.random_range(0..n);
        if !taken.contains(&v) {
            return v;
        }
    }
}

impl GroupSampler {
    fn new(seed: u64) -> Self {
        GroupSampler { factors: ChaCha8Rng::seed_from_u64(seed), image_seed: seed, images: 0 }
    }

    fn group(&mut self) -> Vec<(ShapeSample, RgbImage)> {
        let rng = &mut self.factors;
        let base = ShapeSample::random_object(rng);
        let mut members = vec![base.clone()];
        let mut shapes = vec![base.shape];
        let mut cells = vec![base.row * 3 + base.col];
        for change in CHANGES {
            let mut s = base.clone();
            match change {
                "shape" => {
                    s.shape = other(rng, SHAPES.len(), &shapes);
                    shapes.push(s.shape);
                }
                "position" => {
                    let cell = other(rng, 9, &cells);
                    cells.push(cell);
                    (s.row, s.col) = (cell / 3, cell % 3);
                }
                "colour" => s.colour = other(rng, COLOURS.len(), &[base.colour]),
                _ => s.size = other(rng, SIZES.len(), &[base.size]),
            }
            members.push(s);
        }
        members
            .into_iter()
            .map(|mut s| {
                s.background = self.factors.random_range(0..BACKGROUNDS.len());
                s.template = self.factors.random_range(0..TEMPLATES.len());
                let mut texture =
                    ChaCha8Rng::seed_from_u64(self.image_seed.wrapping_mul(1_000_003).wrapping_add(self.images));
                self.images += 1;
                let img = draw(&s, IMAGE_SIDE, &mut texture);
                (s, img)
            })
            .collect()
    }
}

/// Generated images as the model's pixel batch [N, 3, H, W], through the checkpoint's processor.
pub(crate) fn pixel_batch<'a>(proc: &ImageProcessor, images: impl ExactSizeIterator<Item = &'a RgbImage>) -> Tensor {
    let (h, w) = proc.output_size();
    let n = images.len();
    let mut pixels = Vec::with_capacity(n * 3 * h * w);
    for img in images {
        let (iw, ih) = img.dimensions();
        pixels.extend(proc.process(&Rgb8::new(iw as usize, ih as usize, img.as_raw().clone())));
    }
    Tensor::from_slice(&pixels).view([n as i64, 3, h as i64, w as i64])
}

fn next_batch(
    sampler: &mut GroupSampler,
    n: usize,
    proc: &ImageProcessor,
    tok: &TextTokenizer,
) -> Result<Batch, ZooError> {
    let mut samples = Vec::with_capacity(n);
    while samples.len() < n {
        let group = sampler.group();
        let room = n - samples.len();
        samples.extend(group.into_iter().take(room));
    }
    let captions: Vec<String> = samples.iter().map(|(s, _)| s.caption()).collect();
    let refs: Vec<&str> = captions.iter().map(String::as_str).collect();
    let tokens = tok.encode_batch(&refs)?;
    Ok(Batch {
        pixels: pixel_batch(proc, samples.iter().map(|(_, img)| img)),
        input_ids: tokens.input_ids,
        attention_mask: tokens.attention_mask,
    })
}

/// Symmetric InfoNCE over the batch, and the image-to-text in-batch accuracy.
fn contrastive_loss(model: &ClipModel, b: &Batch) -> (Tensor, Tensor) {
    let (mut img, mut txt) = (Capture::new(SiteRequest::embeds()), Capture::new(SiteRequest::embeds()));
    model.encode_image(&b.pixels, &mut img);
    model.encode_text(&b.input_ids, &b.attention_mask, &mut txt);
    let img = img.embeds.expect("embeds were requested");
    let txt = txt.embeds.expect("embeds were requested");
    let norm = |x: Tensor| &x / x.norm_scalaropt_dim(2, [-1], true);
    let logits = norm(img).mm(&norm(txt).tr()) * model.logit_scale.exp();
    let n = logits.size()[0];
    let target = Tensor::arange(n, (Kind::Int64, logits.device()));
    let loss = (logits.cross_entropy_for_logits(&target) + logits.tr().cross_entropy_for_logits(&target)) / 2.0;
    let accuracy = logits.argmax(-1, false).eq_tensor(&target).to_kind(Kind::Float).mean(None);
    (loss, accuracy)
}

/// Trains shapes-clip into `dir` (config, tokenizer, processor, weights,
/// training.json). `on_step` sees every step.
pub fn train_shapes_clip(
    dir: &Path,
    params: &CheckedShapesClip,
    on_step: &mut dyn FnMut(StepReport),
) -> Result<TrainSummary<ShapesClipParams>, ZooError> {
    let p = &params.0;
    let start = p.schedule.start();
    let config = write_model_files(dir, p)?;
    let tokenizer = TextTokenizer::from_dir(dir, MAX_POSITIONS, 0)?;
    let processor = ImageProcessor::from_dir(dir)?;

    let vs = nn::VarStore::new(Device::Cpu);
    let model = ClipModel::new(vs.root(), &config);
    redraw_normal(&vs, 0.02, |name| {
        name.contains("embedding") && !name.ends_with("bias") && !name.contains("patch_embedding")
    });
    let parameters = trainable_parameters(&vs);
    let mut sampler = GroupSampler::new(TRAIN_SEED_OFFSET + p.schedule.seed);
    let losses = p.schedule.optimise(
        &vs,
        on_step,
        |_| Ok(contrastive_loss(&model, &next_batch(&mut sampler, p.schedule.batch_size, &processor, &tokenizer)?)),
        // CLIP clamps the temperature at 100.
        || {
            tch::no_grad(|| {
                let mut scale = model.logit_scale.shallow_clone();
                let _ = scale.clamp_max_(100f64.ln());
            })
        },
    )?;
    save_run(dir, &vs.variables(), p, parameters, start, &losses)
}
