//! `config.json` of a LLaVA checkpoint (transformers' LlavaConfig: a CLIP
//! vision config and a Llama text config), with transformers' defaults.

use serde::{Deserialize, Deserializer};

use crate::clip::{Activation, ClipVisionConfig};
use crate::llama::LlamaConfig;

/// `vision_feature_layer`: one hidden-state index or several (concatenated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureLayers(pub Vec<i64>);

impl<'de> Deserialize<'de> for FeatureLayers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(i64),
            Many(Vec<i64>),
        }
        Ok(FeatureLayers(match OneOrMany::deserialize(d)? {
            OneOrMany::One(i) => vec![i],
            OneOrMany::Many(v) => v,
        }))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureSelect {
    /// Drop the CLS position.
    Default,
    /// Keep every position.
    Full,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LlavaConfig {
    pub vision_config: ClipVisionConfig,
    pub text_config: LlamaConfig,
    #[serde(default = "d::image_token", alias = "image_token_id")]
    pub image_token_index: i64,
    #[serde(default = "d::image_seq_length")]
    pub image_seq_length: i64,
    #[serde(default = "d::gelu")]
    pub projector_hidden_act: Activation,
    #[serde(default = "d::select")]
    pub vision_feature_select_strategy: FeatureSelect,
    #[serde(default = "d::feature_layer")]
    pub vision_feature_layer: FeatureLayers,
    #[serde(default = "d::yes")]
    pub multimodal_projector_bias: bool,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

impl LlavaConfig {
    /// transformers forwards the text config's flag when the top level's is false.
    pub fn tied(&self) -> bool {
        self.tie_word_embeddings || self.text_config.tie_word_embeddings
    }

    /// Hidden-state indices (0..=N) the projector reads, negatives resolved.
    pub fn feature_layers(&self) -> Result<Vec<usize>, String> {
        let n = self.vision_config.num_hidden_layers as i64;
        self.vision_feature_layer
            .0
            .iter()
            .map(|&i| {
                let l = if i < 0 { n + 1 + i } else { i };
                if (0..=n).contains(&l) {
                    Ok(l as usize)
                } else {
                    Err(format!("vision_feature_layer {i} is outside a {n}-layer vision tower"))
                }
            })
            .collect()
    }

    /// Image features per image: patches, plus CLS under the `full` strategy.
    pub fn image_features(&self) -> i64 {
        let patches = self.vision_config.num_patches();
        match self.vision_feature_select_strategy {
            FeatureSelect::Default => patches,
            FeatureSelect::Full => patches + 1,
        }
    }
}

/// transformers' defaults (LlavaConfig).
mod d {
    use super::{Activation, FeatureLayers, FeatureSelect};
    pub fn gelu() -> Activation {
        Activation::Gelu
    }
    pub fn image_token() -> i64 {
        32000
    }
    pub fn image_seq_length() -> i64 {
        576
    }
    pub fn select() -> FeatureSelect {
        FeatureSelect::Default
    }
    pub fn feature_layer() -> FeatureLayers {
        FeatureLayers(vec![-2])
    }
    pub fn yes() -> bool {
        true
    }
}

impl LlavaConfig {
    /// Parses a config.json value. LlavaConfig's vision defaults differ from
    /// CLIPVisionConfig's (a ViT-L/14 at 336 px), and hub configs rely on
    /// them, so missing vision keys are filled with LLaVA's before parsing.
    pub fn from_value(mut v: serde_json::Value) -> Result<Self, serde_json::Error> {
        let defaults = serde_json::json!({
            "intermediate_size": 4096, "hidden_size": 1024, "patch_size": 14, "image_size": 336,
            "num_hidden_layers": 24, "num_attention_heads": 16, "projection_dim": 768
        });
        if let Some(obj) = v.as_object_mut() {
            let vision = obj.entry("vision_config").or_insert_with(|| serde_json::json!({}));
            if let (Some(vision), Some(defaults)) = (vision.as_object_mut(), defaults.as_object()) {
                for (k, val) in defaults {
                    vision.entry(k.clone()).or_insert_with(|| val.clone());
                }
            }
            obj.entry("text_config").or_insert_with(|| serde_json::json!({}));
        }
        serde_json::from_value(v)
    }
}
