//! Qwen2-VL and Qwen2.5-VL behind the [`Family`] seam: a vision tower whose
//! images keep their own sizes, and a Qwen2 decoder reading the merged image
//! tokens. Rows are prepared one by one ([`RowInputs`]): the image decoded,
//! resized and cut into patches, the prompt expanded to its image's merged
//! token count; a batch concatenates the patches and pads the prompts.
//!
//! Vision states are reported as [images, most patches, width], each image's
//! rows in patch-row order (2x2 merge blocks in raster order), padding past
//! its own count invalid.

use std::collections::BTreeMap;

use mmprobe_store::{Selector, Tower};
use tch::{Device, Kind, Tensor};

use super::config::{Qwen2VlConfig, Version};
use super::load::{LoadedQwen2Vl, qwen2vl_config};
use super::processor::{Qwen2VlImageProcessor, decode_rgb_on_white, patch_cells};
use super::prompt::{IMAGE_PLACEHOLDER, Qwen2VlTokenizer, chat_prompt};
use crate::capture::{Capture, SiteRequest};
use crate::describe::{ModelInfo, TowerInfo};
use crate::error::{ExtractError, Result};
use crate::family::{Batch, Family, InputTools, LoadedModel, ModelDir, PreparedRow, RowInputs, TowerStates};
use crate::preprocess::Rgb8;
use crate::runtime::RunOptions;
use crate::select::SequenceLayout;

/// The question of a row with neither `prompt` nor `text`.
const DEFAULT_QUESTION: &str = "What is shown in the image?";

pub struct Qwen2Vl {
    config: Qwen2VlConfig,
    info: ModelInfo,
}

pub fn open(md: &ModelDir) -> Result<Box<dyn Family>> {
    let c = qwen2vl_config(md)?;
    let (v, t) = (&c.vision, &c.text);
    let name = match c.version {
        Version::Qwen2Vl => "qwen2_vl",
        Version::Qwen25Vl => "qwen2_5_vl",
    };
    let mut details = vec![
        (
            "image".into(),
            format!(
                "dynamic resolution: {}px patches, 2x2 merged into one decoder token each, token id {}",
                v.patch_size, c.image_token_id
            ),
        ),
        (
            "decoder".into(),
            format!(
                "Qwen2, {} kv heads, vocabulary {}, {} head, mrope sections {:?} (theta {})",
                t.kv_heads(),
                t.vocab_size,
                if c.tie_word_embeddings { "tied" } else { "untied" },
                c.mrope_section,
                c.rope_theta
            ),
        ),
    ];
    if c.version == Version::Qwen25Vl {
        details.push((
            "vision attention".into(),
            format!("windows of {}px; full attention in blocks {:?}", v.window_size, v.fullatt_block_indexes),
        ));
    }
    // What grid an image size gives, when the folder has the processor's config.
    if let Ok(p) = Qwen2VlImageProcessor::from_dir(&md.dir) {
        let examples: Vec<String> = [(224, 224), (480, 640), (1080, 1920)]
            .iter()
            .filter_map(|&(h, w)| {
                let [t, gh, gw] = p.grid_thw(h, w).ok()?;
                Some(format!("{w}x{h} -> {gh}x{gw} patches, {} image tokens", t * gh * gw / 4))
            })
            .collect();
        details.push((
            "image grid".into(),
            format!("{}..{} pixels, sides at multiples of 28; {}", p.min_pixels, p.max_pixels, examples.join("; ")),
        ));
    }
    let info = ModelInfo {
        family: name,
        towers: vec![
            TowerInfo {
                tower: Tower::Vision,
                layers: v.depth,
                width: v.width,
                heads: v.num_heads,
                // Varies with the image: patches of the largest image the processor allows.
                max_tokens: 28 * 28 * 1280 / (v.patch_size * v.patch_size),
                cls: false,
                // The merger's output: one row per merged token, what the decoder reads.
                embeds: true,
                embeds_per_token: true,
            },
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
        embeds_width: Some(t.hidden_size),
        details,
        default_selectors: vec![Selector::Last, Selector::Mean, Selector::MeanImage, Selector::MeanText],
    };
    Ok(Box::new(Qwen2Vl { config: c, info }))
}

impl Family for Qwen2Vl {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn image_grid(&self, md: &ModelDir, width: usize, height: usize) -> Option<Result<String>> {
        let grid = Qwen2VlImageProcessor::from_dir(&md.dir).and_then(|p| {
            let [t, gh, gw] = p.grid_thw(height, width)?;
            Ok(format!(
                "{width}x{height} -> resized to {}x{}, {gh}x{gw} patches of 14 px, {}x{} merged cells: {} image tokens",
                gw * 14,
                gh * 14,
                gh / 2,
                gw / 2,
                t * gh * gw / 4
            ))
        });
        Some(grid)
    }

    fn inputs(&self, md: &ModelDir, towers: &[Tower], has_images: bool) -> Result<InputTools> {
        let c = &self.config;
        if towers.contains(&Tower::Text) {
            return Err(ExtractError::Input(
                "a Qwen2-VL model has no text tower (its text goes to the decoder)".into(),
            ));
        }
        let decoder = towers.contains(&Tower::Decoder);
        let tokenizer = match decoder {
            true => {
                let tok = Qwen2VlTokenizer::from_dir(&md.dir, c.image_token_id, c.text.pad_token_id)?;
                tok.check_vocab(c.text.vocab_size, &md.config_path)?;
                Some(tok)
            }
            false => None,
        };
        let wants_images = towers.contains(&Tower::Vision) || (decoder && has_images);
        let processor = match wants_images {
            true => {
                let p = Qwen2VlImageProcessor::from_dir(&md.dir)?;
                let (pp, tp) = (p.config.patch_size as i64, p.config.temporal_patch_size as i64);
                if (pp, tp) != (c.vision.patch_size, c.vision.temporal_patch_size) {
                    return Err(ExtractError::BadConfig {
                        path: p.config_path().map(|p| p.to_path_buf()).unwrap_or_default(),
                        message: format!(
                            "patch_size {pp} / temporal_patch_size {tp} differ from the model's {} / {}",
                            c.vision.patch_size, c.vision.temporal_patch_size
                        ),
                    });
                }
                Some(p)
            }
            false => None,
        };
        Ok(InputTools {
            rows: Some(Box::new(QwenRows { processor, tokenizer, image_token_id: c.image_token_id })),
            ..Default::default()
        })
    }

    fn load(&self, md: &ModelDir, device: Device, run: &RunOptions) -> Result<Box<dyn LoadedModel>> {
        Ok(Box::new(LoadedQwen2Vl::from_config(md, &self.config, device, run.dtype)?))
    }
}

/// The row preparation of a Qwen2-VL run.
pub struct QwenRows {
    pub processor: Option<Qwen2VlImageProcessor>,
    pub tokenizer: Option<Qwen2VlTokenizer>,
    pub image_token_id: i64,
}

impl RowInputs for QwenRows {
    fn decode(&self, bytes: &[u8], name: &str, max_pixels: u64) -> Result<Rgb8> {
        decode_rgb_on_white(bytes, name, max_pixels)
    }

    fn prepare(
        &self,
        image: Option<&Rgb8>,
        prompt: Option<&str>,
        text: Option<&str>,
    ) -> std::result::Result<PreparedRow, String> {
        let patches = match (&self.processor, image) {
            (Some(p), Some(img)) => {
                let out = p.process(img).map_err(|e| e.to_string())?;
                let n = out.patches();
                Some((Tensor::from_slice(&out.values).view([n, -1]), out.grid_thw))
            }
            _ => None,
        };
        let cells = patches.as_ref().map(|(_, g)| patch_cells(*g, 2)).unwrap_or_default();
        let tokens = match &self.tokenizer {
            Some(tok) => {
                let images = usize::from(image.is_some());
                let prompt = match prompt.filter(|p| !p.trim().is_empty()) {
                    Some(p) => p.to_string(),
                    None => {
                        chat_prompt(None, text.filter(|t| !t.trim().is_empty()).unwrap_or(DEFAULT_QUESTION), images)
                    }
                };
                let merged: Vec<usize> =
                    patches.iter().map(|(_, g)| (g.iter().product::<i64>() / 4) as usize).collect();
                if merged.len() != images {
                    return Err("the decoder needs the row's image".into());
                }
                let toks = tok.encode(&prompt, &merged).map_err(|e| match images {
                    1 => format!("{e}; a prompt with an image holds {IMAGE_PLACEHOLDER} once"),
                    _ => e.to_string(),
                })?;
                Some(toks.into_iter().map(|t| (t.id, t.text, t.image.is_some())).collect())
            }
            None => None,
        };
        Ok(PreparedRow { patches, tokens, cells })
    }

    fn id_to_token(&self, id: u32) -> Option<String> {
        self.tokenizer.as_ref().and_then(|t| t.id_to_token(id))
    }

    fn collate(&self, rows: Vec<PreparedRow>) -> Batch {
        let mut batch = Batch::default();
        let (px, grids): (Vec<Tensor>, Vec<[i64; 3]>) =
            rows.iter().filter_map(|r| r.patches.as_ref()).map(|(t, g)| (t.shallow_clone(), *g)).unzip();
        if !px.is_empty() {
            batch.patches = Some((Tensor::cat(&px, 0), grids));
        }
        if let Some(tok) = &self.tokenizer {
            let toks = rows
                .into_iter()
                .map(|r| {
                    r.tokens
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(id, text, image)| super::prompt::Qwen2VlPromptToken {
                            id,
                            text,
                            image: image.then_some((0, 0)),
                        })
                        .collect()
                })
                .collect();
            let b = tok.pad(toks);
            batch.prompt = Some((b.input_ids, b.attention_mask));
        }
        batch
    }
}

/// Rows [N, D] of images with `counts` patches each, as [images, max count, D] (zeros past each count).
fn pad_rows(x: &Tensor, counts: &[i64]) -> Tensor {
    let (b, most) = (counts.len() as i64, counts.iter().copied().max().unwrap_or(0));
    let d = x.size()[1];
    let index: Vec<i64> =
        counts.iter().enumerate().flat_map(|(i, &n)| (0..n).map(move |j| i as i64 * most + j)).collect();
    let index = Tensor::from_slice(&index).to_device(x.device());
    Tensor::zeros([b * most, d], (x.kind(), x.device())).index_copy(0, &index, x).view([b, most, d])
}

impl LoadedModel for LoadedQwen2Vl {
    fn forward(&self, b: &Batch, requests: &BTreeMap<Tower, SiteRequest>, device: Device) -> Vec<TowerStates> {
        let m = &self.model;
        let mut out = Vec::new();
        let mut embeds = None;
        let mut grids = Vec::new();
        if let Some((px, g)) = &b.patches {
            grids = g.clone();
            let px = px.to_device(device).to_kind(self.dtype.kind());
            let mut cap = Capture::new(requests.get(&Tower::Vision).cloned().unwrap_or_default());
            embeds = Some(m.encode_images(&px, &grids, &mut cap));
            if requests.contains_key(&Tower::Vision) {
                let counts: Vec<i64> = grids.iter().map(|g| g.iter().product()).collect();
                for map in [&mut cap.resid, &mut cap.attn, &mut cap.mlp, &mut cap.raw] {
                    for v in map.values_mut() {
                        *v = pad_rows(v, &counts);
                    }
                }
                // The merger's rows: one per 2x2 block of patches, in the patches' order.
                let merged: Vec<i64> = counts.iter().map(|n| n / 4).collect();
                cap.embeds = cap.embeds.as_ref().map(|e| pad_rows(e, &merged));
                out.push(TowerStates {
                    tower: Tower::Vision,
                    capture: cap,
                    layout: SequenceLayout::ragged(&counts, device),
                    embeds_layout: Some(SequenceLayout::ragged(&merged, device)),
                });
            }
        }
        if let Some((ids, mask)) = &b.prompt {
            let (ids, mask) = (ids.to_device(device), mask.to_device(device));
            let mut cap = Capture::new(requests.get(&Tower::Decoder).cloned().unwrap_or_default());
            let pos = m
                .position_ids(&ids, &mask, &grids)
                .unwrap_or_else(|e| panic!("position ids of a batch the loader checked: {e}"));
            let _last = m.decode(&ids, &mask, &pos, embeds.as_ref(), &mut cap);
            let layout = SequenceLayout::decoder(&mask, ids.eq(m.config.image_token_id));
            out.push(TowerStates { tower: Tower::Decoder, capture: cap, layout, embeds_layout: None });
        }
        out
    }

    fn logits(&self, h: &Tensor) -> Option<Tensor> {
        Some(self.model.logits(&h.to_kind(self.dtype.kind())).to_kind(Kind::Float))
    }

    fn unused_tensors(&self) -> Vec<String> {
        self.unused.clone()
    }
}
