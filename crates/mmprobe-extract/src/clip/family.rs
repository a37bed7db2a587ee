//! CLIP behind the [`Family`] seam: a vision and a text tower, each with its
//! projected `embeds`.

use std::collections::BTreeMap;

use mmprobe_store::{Selector, Tower};
use tch::Device;

use super::{ClipConfig, ClipVisionConfig, LoadedClip};
use crate::capture::{Capture, SiteRequest};
use crate::describe::{ModelInfo, TowerInfo};
use crate::error::Result;
use crate::family::{Batch, Family, InputTools, LoadedModel, ModelDir, TowerStates};
use crate::preprocess::ImageProcessor;
use crate::runtime::RunOptions;
use crate::select::SequenceLayout;
use crate::tokenize::TextTokenizer;

pub struct Clip {
    config: ClipConfig,
    info: ModelInfo,
}

pub fn open(md: &ModelDir) -> Result<Box<dyn Family>> {
    let config: ClipConfig = md.config()?;
    let (v, t) = (&config.vision_config, &config.text_config);
    let info = ModelInfo {
        family: "clip",
        towers: vec![
            vision_tower_info(v, true),
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
        embeds_width: Some(config.projection_dim),
        details: Vec::new(),
        default_selectors: vec![Selector::Cls, Selector::Eos, Selector::Pooled],
    };
    Ok(Box::new(Clip { config, info }))
}

/// A CLIP vision transformer, in any family that has one: patches plus CLS;
/// `embeds` where the family projects its pooled output.
pub(crate) fn vision_tower_info(v: &ClipVisionConfig, embeds: bool) -> TowerInfo {
    TowerInfo {
        tower: Tower::Vision,
        layers: v.num_hidden_layers,
        width: v.hidden_size,
        heads: v.num_attention_heads,
        max_tokens: v.num_patches() + 1,
        cls: true,
        embeds,
        embeds_per_token: false,
    }
}

/// The image processor of `md`, checked to make the (height, width) images a
/// vision tower takes (any family's: CLIP's, SigLIP's, LLaVA's).
pub(crate) fn image_processor(md: &ModelDir, (h, w): (i64, i64)) -> Result<ImageProcessor> {
    let p = ImageProcessor::from_dir(&md.dir)?;
    let (ph, pw) = p.output_size();
    if (ph as i64, pw as i64) != (h, w) {
        return Err(crate::error::ExtractError::BadConfig {
            path: p.config_path().unwrap_or(&md.dir).to_path_buf(),
            message: format!(
                "it makes {ph}x{pw} images, but {} gives the vision tower {h}x{w}",
                md.config_path.display()
            ),
        });
    }
    Ok(p)
}

impl Family for Clip {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn inputs(&self, md: &ModelDir, towers: &[Tower], _has_images: bool) -> Result<InputTools> {
        let mut tools = InputTools::default();
        if towers.contains(&Tower::Text) {
            let t = &self.config.text_config;
            let tok = TextTokenizer::from_dir(&md.dir, t.max_position_embeddings as usize, t.pad_token_id as u32)?;
            tok.check_vocab(t.vocab_size, &md.config_path)?;
            tools.text = Some(tok);
        }
        if towers.contains(&Tower::Vision) {
            let side = self.config.vision_config.image_size;
            tools.images = Some(image_processor(md, (side, side))?);
        }
        Ok(tools)
    }

    fn load(&self, md: &ModelDir, device: Device, run: &RunOptions) -> Result<Box<dyn LoadedModel>> {
        let mut m = LoadedClip::from_config(md, &self.config, device, run.dtype)?;
        m.set_allow_tf32(run.allow_tf32);
        Ok(Box::new(m))
    }
}

impl LoadedModel for LoadedClip {
    fn forward(&self, b: &Batch, requests: &BTreeMap<Tower, SiteRequest>, device: Device) -> Vec<TowerStates> {
        let mut out = Vec::new();
        let request = |t: Tower| requests.get(&t).cloned().unwrap_or_default();
        if let Some(px) = &b.pixels {
            let px = px.to_model(device, self.dtype.kind());
            let mut cap = Capture::new(request(Tower::Vision));
            self.model.encode_image(&px, &mut cap);
            let (n, t) = (px.size()[0], self.model.config.vision_config.num_patches() + 1);
            out.push(TowerStates {
                tower: Tower::Vision,
                capture: cap,
                layout: SequenceLayout::vision(n, t, device),
                embeds_layout: None,
            });
        }
        if let Some((ids, mask)) = &b.text {
            let (ids, mask) = (ids.to_device(device), mask.to_device(device));
            let mut cap = Capture::new(request(Tower::Text));
            self.model.encode_text(&ids, &mask, &mut cap);
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
