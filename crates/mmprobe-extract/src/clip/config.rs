//! `config.json` of a CLIP checkpoint, with transformers' defaults.

use serde::Deserialize;

pub use crate::layers::Activation;

#[derive(Debug, Clone, Deserialize)]
pub struct ClipTextConfig {
    #[serde(default = "d::vocab_size")]
    pub vocab_size: i64,
    #[serde(default = "d::text_hidden")]
    pub hidden_size: i64,
    #[serde(default = "d::text_intermediate")]
    pub intermediate_size: i64,
    #[serde(default = "d::layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d::text_heads")]
    pub num_attention_heads: i64,
    #[serde(default = "d::max_positions")]
    pub max_position_embeddings: i64,
    #[serde(default = "d::act")]
    pub hidden_act: Activation,
    #[serde(default = "d::eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "d::pad")]
    pub pad_token_id: i64,
    #[serde(default = "d::bos")]
    pub bos_token_id: i64,
    #[serde(default = "d::eos")]
    pub eos_token_id: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ClipVisionConfig {
    #[serde(default = "d::vision_hidden")]
    pub hidden_size: i64,
    #[serde(default = "d::vision_intermediate")]
    pub intermediate_size: i64,
    #[serde(default = "d::layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d::vision_heads")]
    pub num_attention_heads: i64,
    #[serde(default = "d::channels")]
    pub num_channels: i64,
    #[serde(default = "d::image_size")]
    pub image_size: i64,
    #[serde(default = "d::patch_size")]
    pub patch_size: i64,
    #[serde(default = "d::act")]
    pub hidden_act: Activation,
    #[serde(default = "d::eps")]
    pub layer_norm_eps: f64,
}

impl ClipVisionConfig {
    pub fn num_patches(&self) -> i64 {
        (self.image_size / self.patch_size).pow(2)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ClipConfig {
    pub text_config: ClipTextConfig,
    pub vision_config: ClipVisionConfig,
    #[serde(default = "d::projection_dim")]
    pub projection_dim: i64,
}

impl ClipTextConfig {
    /// transformers pools at argmax(input_ids) for configs that ship the
    /// legacy `eos_token_id: 2` (openai/clip-vit-*), else at the first EOS.
    pub fn legacy_eos_pooling(&self) -> bool {
        self.eos_token_id == 2
    }
}

/// transformers' defaults (CLIPTextConfig / CLIPVisionConfig / CLIPConfig).
mod d {
    use super::Activation;
    pub fn vocab_size() -> i64 {
        49408
    }
    pub fn text_hidden() -> i64 {
        512
    }
    pub fn text_intermediate() -> i64 {
        2048
    }
    pub fn vision_hidden() -> i64 {
        768
    }
    pub fn vision_intermediate() -> i64 {
        3072
    }
    pub fn layers() -> usize {
        12
    }
    pub fn text_heads() -> i64 {
        8
    }
    pub fn vision_heads() -> i64 {
        12
    }
    pub fn max_positions() -> i64 {
        77
    }
    pub fn act() -> Activation {
        Activation::QuickGelu
    }
    pub fn eps() -> f64 {
        1e-5
    }
    pub fn pad() -> i64 {
        1
    }
    pub fn bos() -> i64 {
        49406
    }
    pub fn eos() -> i64 {
        49407
    }
    pub fn channels() -> i64 {
        3
    }
    pub fn image_size() -> i64 {
        224
    }
    pub fn patch_size() -> i64 {
        32
    }
    pub fn projection_dim() -> i64 {
        512
    }
}
