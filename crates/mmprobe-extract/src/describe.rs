//! What a checkpoint folder holds, from its config alone: what `mmprobe
//! inspect` prints and what extraction validates its flags against.

use std::path::Path;

use mmprobe_store::{Site, Tower};

use crate::clip::ClipConfig;
use crate::error::Result;
use crate::family::{Family, ModelDir};

/// One tower: its layer count and width, and the sites it offers.
#[derive(Debug, Clone, PartialEq)]
pub struct TowerInfo {
    pub tower: Tower,
    pub layers: usize,
    pub width: i64,
    pub heads: i64,
    /// Tokens per input (vision: patches + CLS; text: the position limit).
    pub max_tokens: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    pub family: Family,
    pub towers: Vec<TowerInfo>,
    /// Width of the shared `embeds` space, when the family has one.
    pub embeds_width: Option<i64>,
    /// Family-specific facts worth printing (name, value).
    pub details: Vec<(String, String)>,
}

/// A CLIP vision transformer, in either family: patches plus CLS.
fn vision_tower(v: &crate::clip::ClipVisionConfig) -> TowerInfo {
    TowerInfo {
        tower: Tower::Vision,
        layers: v.num_hidden_layers,
        width: v.hidden_size,
        heads: v.num_attention_heads,
        max_tokens: v.num_patches() + 1,
    }
}

impl ModelInfo {
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let md = ModelDir::open(dir)?;
        match md.family {
            Family::Clip => {
                let c: ClipConfig = md.config()?;
                let v = &c.vision_config;
                let t = &c.text_config;
                Ok(ModelInfo {
                    family: Family::Clip,
                    towers: vec![
                        vision_tower(v),
                        TowerInfo {
                            tower: Tower::Text,
                            layers: t.num_hidden_layers,
                            width: t.hidden_size,
                            heads: t.num_attention_heads,
                            max_tokens: t.max_position_embeddings,
                        },
                    ],
                    embeds_width: Some(c.projection_dim),
                    details: Vec::new(),
                })
            }
            Family::Llava => {
                let c = crate::llava::load::llava_config(&md)?;
                let v = &c.vision_config;
                let t = &c.text_config;
                Ok(ModelInfo {
                    family: Family::Llava,
                    towers: vec![
                        vision_tower(v),
                        TowerInfo {
                            tower: Tower::Decoder,
                            layers: t.num_hidden_layers,
                            width: t.hidden_size,
                            heads: t.num_attention_heads,
                            max_tokens: t.max_position_embeddings,
                        },
                    ],
                    embeds_width: None,
                    details: vec![
                        (
                            "image".into(),
                            format!(
                                "{} tokens per image from vision hidden states {:?} ({:?} strategy), token id {}",
                                c.image_seq_length,
                                c.vision_feature_layer.0,
                                c.vision_feature_select_strategy,
                                c.image_token_index
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
                })
            }
        }
    }

    pub fn tower(&self, tower: Tower) -> Option<&TowerInfo> {
        self.towers.iter().find(|t| t.tower == tower)
    }

    /// The sites a tower offers in this family.
    pub fn sites(&self, tower: Tower) -> Vec<Site> {
        let mut sites = vec![Site::Resid, Site::Attn, Site::Mlp];
        if self.embeds_width.is_some() && tower != Tower::Decoder {
            sites.push(Site::Embeds);
        }
        sites
    }

    /// The width of a site's vectors in a tower.
    pub fn width(&self, tower: Tower, site: Site) -> Option<i64> {
        match site {
            Site::Embeds => self.embeds_width,
            _ => self.tower(tower).map(|t| t.width),
        }
    }
}
