//! LLaVA behind the [`Family`] seam: a CLIP or SigLIP vision tower and a
//! Llama decoder that reads the projected image features at its image tokens.

use std::collections::BTreeMap;

use mmprobe_store::{Selector, Tower};
use tch::{Device, Tensor};

use super::load::llava_config;
use super::{LlavaConfig, LoadedLlava, PromptTokenizer, VisionConfig};
use crate::capture::Capture;
use crate::capture::SiteRequest;
use crate::describe::{ModelInfo, TowerInfo};
use crate::error::{ExtractError, Result};
use crate::family::{Batch, Family, InputTools, LoadedModel, ModelDir, TowerStates};
use crate::runtime::RunOptions;
use crate::select::SequenceLayout;

pub struct Llava {
    config: LlavaConfig,
    info: ModelInfo,
}

pub fn open(md: &ModelDir) -> Result<Box<dyn Family>> {
    let c = llava_config(md)?;
    let t = &c.text_config;
    let (vision, tower_kind, first) = match &c.vision_config {
        VisionConfig::Clip(v) => (crate::clip::family::vision_tower_info(v, false), "CLIP", Selector::Cls),
        VisionConfig::Siglip(v) => (crate::siglip::family::vision_tower_info(v, false), "SigLIP", Selector::Mean),
    };
    let info = ModelInfo {
        family: "llava",
        towers: vec![
            vision,
            TowerInfo {
                tower: Tower::Decoder,
                layers: t.num_hidden_layers,
                width: t.hidden_size,
                heads: t.num_attention_heads,
                max_tokens: t.max_position_embeddings,
                cls: false,
                embeds: false,
                embeds_per_token: false,
            },
        ],
        embeds_width: None,
        details: vec![
            (
                "vision".into(),
                match &c.vision_config {
                    VisionConfig::Clip(_) => "CLIP vision transformer (CLS at position 0)".to_string(),
                    VisionConfig::Siglip(_) => format!(
                        "{tower_kind} vision transformer: no CLS token, so `mean` averages every patch; the \
                         `default` strategy still drops patch 0, as transformers does"
                    ),
                },
            ),
            (
                "image".into(),
                format!(
                    "{} tokens per image from vision hidden states {:?} ({:?} strategy), token id {}",
                    c.image_seq_length, c.vision_feature_layer.0, c.vision_feature_select_strategy, c.image_token_index
                ),
            ),
            (
                "decoder".into(),
                format!(
                    "{} kv heads, vocabulary {}, {} head",
                    t.kv_heads(),
                    t.vocab_size,
                    if c.tied() { "tied" } else { "untied" }
                ),
            ),
        ],
        default_selectors: vec![first, Selector::Last, Selector::MeanImage, Selector::MeanText],
    };
    Ok(Box::new(Llava { config: c, info }))
}

impl Family for Llava {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn inputs(&self, md: &ModelDir, towers: &[Tower], has_images: bool) -> Result<InputTools> {
        let c = &self.config;
        let mut tools = InputTools::default();
        if towers.contains(&Tower::Text) {
            return Err(ExtractError::Input("a LLaVA model has no text tower (its text goes to the decoder)".into()));
        }
        let decoder = towers.contains(&Tower::Decoder);
        if decoder {
            let tok = PromptTokenizer::from_dir(
                &md.dir,
                c.image_token_index,
                c.image_seq_length,
                c.text_config.pad_token_id,
            )?;
            tok.check_vocab(c.text_config.vocab_size, &md.config_path)?;
            tools.prompts = Some(tok);
        }
        // A decoder sees the image through the vision tower, so it needs pixels too.
        if towers.contains(&Tower::Vision) || (decoder && has_images) {
            tools.images = Some(crate::clip::family::image_processor(md, c.vision_config.image_hw())?);
        }
        Ok(tools)
    }

    fn load(&self, md: &ModelDir, device: Device, run: &RunOptions) -> Result<Box<dyn LoadedModel>> {
        let mut m = LoadedLlava::from_config(md, &self.config, device, run.dtype)?;
        m.set_allow_tf32(run.allow_tf32);
        Ok(Box::new(m))
    }
}

impl LoadedModel for LoadedLlava {
    fn forward(&self, b: &Batch, requests: &BTreeMap<Tower, SiteRequest>, device: Device) -> Vec<TowerStates> {
        let m = &self.model;
        let mut out = Vec::new();
        let mut features = None;
        if let Some(px) = &b.pixels {
            let px = px.to_model(device, self.dtype.kind());
            let mut cap = Capture::new(requests.get(&Tower::Vision).cloned().unwrap_or_default());
            features = Some(m.encode_image(&px, &mut cap));
            if requests.contains_key(&Tower::Vision) {
                let (n, t) = (px.size()[0], m.config.vision_config.tokens());
                let layout = match m.config.vision_config.has_cls() {
                    true => SequenceLayout::vision(n, t, device),
                    false => SequenceLayout::patches(n, t, device),
                };
                out.push(TowerStates { tower: Tower::Vision, capture: cap, layout, embeds_layout: None });
            }
        }
        if let Some((ids, mask)) = &b.prompt {
            let (ids, mask) = (ids.to_device(device), mask.to_device(device));
            let mut cap = Capture::new(requests.get(&Tower::Decoder).cloned().unwrap_or_default());
            let _last = m.decode(&ids, &mask, features.as_ref(), &mut cap);
            let layout = SequenceLayout::decoder(&mask, ids.eq(m.config.image_token_index));
            out.push(TowerStates { tower: Tower::Decoder, capture: cap, layout, embeds_layout: None });
        }
        out
    }

    fn logits(&self, h: &Tensor) -> Option<Tensor> {
        Some(self.model.logits(h))
    }

    fn unused_tensors(&self) -> Vec<String> {
        self.unused.clone()
    }
}
