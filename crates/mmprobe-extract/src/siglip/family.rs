//! SigLIP behind the [`Family`] seam: a vision tower without a CLS token
//! (its embeds are the attention-pooling head's output, when the checkpoint
//! has the head) and a text tower padded to its position count that pools
//! the last position.

use std::collections::BTreeMap;
use std::path::Path;

use mmprobe_store::{Selector, Tower};
use tch::Device;

use super::{LoadedSiglip, SiglipConfig, SiglipVisionConfig};
use crate::capture::{Capture, SiteRequest};
use crate::clip::family::image_processor;
use crate::describe::{ModelInfo, TowerInfo};
use crate::error::{ExtractError, Result};
use crate::family::{Batch, Family, InputTools, LoadedModel, ModelDir, TowerStates};
use crate::runtime::RunOptions;
use crate::select::SequenceLayout;
use crate::tokenize::TextTokenizer;

pub struct Siglip {
    config: SiglipConfig,
    info: ModelInfo,
    /// Whether the checkpoint's tokenizer returns an attention mask (and so the text tower gets one).
    text_mask: bool,
}

/// The config of `md`, checked.
pub fn siglip_config(md: &ModelDir) -> Result<SiglipConfig> {
    let c: SiglipConfig = md.config()?;
    c.check().map_err(|m| md.bad_config(m))?;
    Ok(c)
}

/// Whether the tokenizer in `dir` returns an attention mask: its
/// tokenizer_config.json's `model_input_names` where it says (SigLIP 2's
/// Gemma tokenizer lists `input_ids` alone), else yes, as every tokenizer
/// class SigLIP checkpoints name does by default.
pub fn tokenizer_gives_mask(dir: &Path) -> bool {
    std::fs::read(dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("model_input_names").and_then(|n| n.as_array()).cloned())
        .is_none_or(|names| names.iter().any(|n| n == "attention_mask"))
}

/// A SigLIP vision transformer, in any family that has one: patches only;
/// `embeds` where the family uses its pooling head.
pub(crate) fn vision_tower_info(v: &SiglipVisionConfig, embeds: bool) -> TowerInfo {
    TowerInfo {
        tower: Tower::Vision,
        layers: v.num_hidden_layers,
        width: v.hidden_size,
        heads: v.num_attention_heads,
        max_tokens: v.num_patches(),
        cls: false,
        embeds,
        embeds_per_token: false,
    }
}

pub fn open(md: &ModelDir) -> Result<Box<dyn Family>> {
    let config = siglip_config(md)?;
    let (v, t) = (&config.vision_config, &config.text_config);
    let text_mask = tokenizer_gives_mask(&md.dir);
    let vision = if v.vision_use_head {
        format!(
            "no CLS token ({} patches; `mean` averages them all); embeds: the attention-pooling head",
            v.num_patches()
        )
    } else {
        format!(
            "no CLS token ({} patches; `mean` averages them all); no attention-pooling head \
             (vision_use_head false), so no image embeds, as transformers gives none",
            v.num_patches()
        )
    };
    let text = format!(
        "padded to {} positions; `eos` is the last position, which transformers pools (padding included); {}",
        t.max_position_embeddings,
        if text_mask {
            "the tokenizer gives an attention mask, so padding is masked"
        } else {
            "the tokenizer gives no attention mask, so the tower attends to its padding"
        }
    );
    let info = ModelInfo {
        family: "siglip",
        towers: vec![
            vision_tower_info(v, v.vision_use_head),
            TowerInfo {
                tower: Tower::Text,
                layers: t.num_hidden_layers,
                width: t.hidden_size,
                heads: t.num_attention_heads,
                max_tokens: t.max_position_embeddings,
                cls: false,
                embeds: true,
                embeds_per_token: false,
            },
        ],
        embeds_width: Some(t.projection_size()),
        details: vec![("vision".into(), vision), ("text".into(), text)],
        default_selectors: vec![Selector::Mean, Selector::Eos, Selector::Pooled],
    };
    Ok(Box::new(Siglip { config, info, text_mask }))
}

impl Family for Siglip {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn inputs(&self, md: &ModelDir, towers: &[Tower], _has_images: bool) -> Result<InputTools> {
        let mut tools = InputTools::default();
        if towers.contains(&Tower::Text) {
            let t = &self.config.text_config;
            let pad = t.pad_token_id.unwrap_or(0) as u32;
            let tok = TextTokenizer::siglip_from_dir(&md.dir, t.max_position_embeddings as usize, pad)?;
            tok.check_vocab(t.vocab_size, &md.config_path)?;
            check_special_flags(md, &tok)?;
            tools.text = Some(tok);
        }
        if towers.contains(&Tower::Vision) {
            tools.images = Some(image_processor(md, self.config.vision_config.image_hw())?);
        }
        Ok(tools)
    }

    fn load(&self, md: &ModelDir, device: Device, run: &RunOptions) -> Result<Box<dyn LoadedModel>> {
        let mut m = LoadedSiglip::from_config(md, &self.config, device, run.dtype)?;
        m.text_mask = self.text_mask;
        m.set_allow_tf32(run.allow_tf32);
        Ok(Box::new(m))
    }
}

/// transformers lets tokenizer_config.json's `add_bos_token` / `add_eos_token`
/// override what tokenizer.json's post-processor adds; where they say
/// otherwise than the post-processor does, the ids would differ, so refuse.
fn check_special_flags(md: &ModelDir, tok: &TextTokenizer) -> Result<()> {
    let Some((before, after)) = tok.json_specials() else { return Ok(()) };
    let path = md.dir.join("tokenizer_config.json");
    let Some(cfg) = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok()) else {
        return Ok(());
    };
    for (flag, adds) in [("add_bos_token", !before.is_empty()), ("add_eos_token", !after.is_empty())] {
        if let Some(want) = cfg.get(flag).and_then(|v| v.as_bool())
            && want != adds
        {
            return Err(ExtractError::Tokenizer {
                path,
                message: format!(
                    "{flag} is {want}, but tokenizer.json's post-processor {} that token; mmprobe follows \
                     tokenizer.json and cannot match what transformers would make of both",
                    if adds { "adds" } else { "does not add" }
                ),
            });
        }
    }
    Ok(())
}

impl LoadedModel for LoadedSiglip {
    fn forward(&self, b: &Batch, requests: &BTreeMap<Tower, SiteRequest>, device: Device) -> Vec<TowerStates> {
        let mut out = Vec::new();
        let request = |t: Tower| requests.get(&t).cloned().unwrap_or_default();
        if let Some(px) = &b.pixels {
            let px = px.to_model(device, self.dtype.kind());
            let mut cap = Capture::new(request(Tower::Vision));
            self.model.encode_image(&px, &mut cap);
            let (n, t) = (px.size()[0], self.model.config.vision_config.num_patches());
            out.push(TowerStates {
                tower: Tower::Vision,
                capture: cap,
                layout: SequenceLayout::patches(n, t, device),
                embeds_layout: None,
            });
        }
        if let Some((ids, mask)) = &b.text {
            let (ids, mask) = (ids.to_device(device), mask.to_device(device));
            let mut cap = Capture::new(request(Tower::Text));
            self.model.encode_text(&ids, self.text_mask.then_some(&mask), &mut cap);
            let eos = cap.pool_positions.take().expect("text towers pool");
            out.push(TowerStates {
                tower: Tower::Text,
                capture: cap,
                layout: SequenceLayout::text(&mask, eos),
                embeds_layout: None,
            });
        }
        out
    }

    fn logits(&self, _h: &tch::Tensor) -> Option<tch::Tensor> {
        None
    }

    fn unused_tensors(&self) -> Vec<String> {
        self.unused.clone()
    }
}
