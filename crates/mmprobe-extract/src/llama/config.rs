//! `config.json` of a Llama decoder (transformers' LlamaConfig), with transformers' defaults.

use serde::Deserialize;

use crate::layers::Activation;

/// RoPE settings, from transformers 5's `rope_parameters` or the older
/// top-level `rope_theta` / `rope_scaling`.
#[derive(Debug, Clone, Deserialize)]
pub struct RopeParameters {
    #[serde(default = "d::rope_type", alias = "type")]
    pub rope_type: String,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub factor: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LlamaConfig {
    #[serde(default = "d::vocab")]
    pub vocab_size: i64,
    #[serde(default = "d::hidden")]
    pub hidden_size: i64,
    #[serde(default = "d::intermediate")]
    pub intermediate_size: i64,
    #[serde(default = "d::layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d::heads")]
    pub num_attention_heads: i64,
    #[serde(default)]
    pub num_key_value_heads: Option<i64>,
    #[serde(default)]
    pub head_dim: Option<i64>,
    #[serde(default = "d::silu")]
    pub hidden_act: Activation,
    #[serde(default = "d::max_positions")]
    pub max_position_embeddings: i64,
    #[serde(default = "d::rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_scaling: Option<RopeParameters>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    /// Bias on the query, key and value projections only (Qwen2's attention;
    /// `o_proj` stays without). Not a config.json key: set by the family.
    #[serde(skip)]
    pub qkv_bias: bool,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub pad_token_id: Option<i64>,
}

impl LlamaConfig {
    pub fn head_dim(&self) -> i64 {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    pub fn kv_heads(&self) -> i64 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// (type, theta, linear factor), whichever way the config spells them.
    pub fn rope(&self) -> (String, f64, f64) {
        let p = self.rope_parameters.as_ref().or(self.rope_scaling.as_ref());
        let kind = p.map_or("default".to_string(), |p| p.rope_type.clone());
        let theta = p.and_then(|p| p.rope_theta).or(self.rope_theta).unwrap_or(10_000.0);
        let factor = p.and_then(|p| p.factor).unwrap_or(1.0);
        (kind, theta, factor)
    }
}

/// transformers' defaults (LlamaConfig).
mod d {
    use super::Activation;
    pub fn vocab() -> i64 {
        32000
    }
    pub fn hidden() -> i64 {
        4096
    }
    pub fn intermediate() -> i64 {
        11008
    }
    pub fn layers() -> usize {
        32
    }
    pub fn heads() -> i64 {
        32
    }
    pub fn silu() -> Activation {
        Activation::Silu
    }
    pub fn max_positions() -> i64 {
        2048
    }
    pub fn rms_eps() -> f64 {
        1e-6
    }
    pub fn rope_type() -> String {
        "default".into()
    }
}
