//! Zero-shot accuracy of a shapes CLIP per concept on a freshly generated split.
//!
//! The model scores every full caption (one template, every combination of
//! colour, shape, size and position: 8 x 6 x 3 x 9 = 1296) against an image; a
//! softmax over them is its distribution over captions, and a concept's
//! prediction is the value with the largest marginal probability (summed over
//! the captions that name it). No caption is fitted to the split.

use std::path::Path;

use mmprobe_extract::clip::LoadedClip;
use mmprobe_extract::preprocess::ImageProcessor;
use mmprobe_extract::tokenize::TextTokenizer;
use mmprobe_extract::{Capture, DType, SiteRequest};
use tch::{Device, Kind, Tensor};

use crate::ZooError;
use crate::shapes::{COLOURS, CONCEPTS, SHAPES, SIZES, ShapeSample, ShapeStream};
use crate::shapes_clip::pixel_batch;

/// Held-out images come from this seed unless told otherwise: neither the
/// bundled split (seed 0) nor the training stream (seeds from 1000).
pub const EVAL_SEED: u64 = 999;

#[derive(Debug, Clone)]
pub struct ConceptAccuracy {
    pub concept: &'static str,
    pub classes: usize,
    pub accuracy: f64,
}

#[derive(Debug, Clone)]
pub struct ZeroShotReport {
    pub n: usize,
    pub seed: u64,
    pub concepts: Vec<ConceptAccuracy>,
}

/// Each concept's value index for a sample, in CONCEPTS order.
fn values(s: &ShapeSample) -> [usize; 4] {
    [s.colour, s.shape, s.size, s.row * 3 + s.col]
}

fn every_caption() -> Vec<ShapeSample> {
    let mut out = Vec::new();
    for colour in 0..COLOURS.len() {
        for shape in 0..SHAPES.len() {
            for size in 0..SIZES.len() {
                for cell in 0..9 {
                    out.push(ShapeSample {
                        colour,
                        shape,
                        size,
                        row: cell / 3,
                        col: cell % 3,
                        background: 0,
                        template: 0,
                    });
                }
            }
        }
    }
    out
}

fn unit(x: Tensor) -> Tensor {
    &x / x.norm_scalaropt_dim(2, [-1], true)
}

pub fn zero_shot_shapes(model_dir: &Path, n: usize, seed: u64) -> Result<ZeroShotReport, ZooError> {
    if n == 0 {
        return Err(ZooError::Params("--n must be at least 1".into()));
    }
    let clip = LoadedClip::load(model_dir, Device::Cpu, DType::F32)?;
    let model = &clip.model;
    let max_len = model.config.text_config.max_position_embeddings as usize;
    let tokenizer = TextTokenizer::from_dir(model_dir, max_len, model.config.text_config.pad_token_id as u32)?;
    let processor = ImageProcessor::from_dir(model_dir)?;
    let side = processor.output_size().0 as u32;

    let captions = every_caption();
    let texts: Vec<String> = captions.iter().map(ShapeSample::caption).collect();
    let text_emb = tch::no_grad(|| -> Result<Tensor, ZooError> {
        let mut parts = Vec::new();
        for chunk in texts.chunks(256) {
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            let b = tokenizer.encode_batch(&refs)?;
            let mut cap = Capture::new(SiteRequest::embeds());
            model.encode_text(&b.input_ids, &b.attention_mask, &mut cap);
            parts.push(unit(cap.embeds.expect("asked")));
        }
        Ok(Tensor::cat(&parts, 0))
    })?;
    // One-hot [captions, values] per concept, to sum caption probabilities into marginals.
    let membership: Vec<Tensor> = (0..CONCEPTS.len())
        .map(|c| {
            let idx: Vec<i64> = captions.iter().map(|s| values(s)[c] as i64).collect();
            Tensor::from_slice(&idx).one_hot(-1).to_kind(Kind::Float)
        })
        .collect();

    let mut correct = [0usize; 4];
    let mut stream = ShapeStream::new(seed, side).take(n).peekable();
    while stream.peek().is_some() {
        let batch: Vec<(ShapeSample, image::RgbImage)> = stream.by_ref().take(128).collect();
        let pixels = pixel_batch(&processor, batch.iter().map(|(_, img)| img));
        let probs = tch::no_grad(|| {
            let mut cap = Capture::new(SiteRequest::embeds());
            model.encode_image(&pixels, &mut cap);
            let img = unit(cap.embeds.expect("asked"));
            (img.mm(&text_emb.tr()) * model.logit_scale.exp()).softmax(-1, Kind::Float)
        });
        for (c, m) in membership.iter().enumerate() {
            let pred = Vec::<i64>::try_from(probs.mm(m).argmax(-1, false))?;
            for ((s, _), p) in batch.iter().zip(pred) {
                correct[c] += (values(s)[c] as i64 == p) as usize;
            }
        }
    }
    let classes = [COLOURS.len(), SHAPES.len(), SIZES.len(), 9];
    let concepts = (0..4)
        .map(|c| ConceptAccuracy { concept: CONCEPTS[c], classes: classes[c], accuracy: correct[c] as f64 / n as f64 })
        .collect();
    Ok(ZeroShotReport { n, seed, concepts })
}
