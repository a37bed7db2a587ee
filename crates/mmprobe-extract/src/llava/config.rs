//! `config.json` of a LLaVA checkpoint (transformers' LlavaConfig: a CLIP or
//! SigLIP vision config and a Llama text config), with transformers' defaults.

use serde::{Deserialize, Deserializer};

use crate::clip::{Activation, ClipVisionConfig};
use crate::llama::LlamaConfig;
use crate::siglip::SiglipVisionConfig;

/// The vision tower's config, by its `model_type`: CLIP's
/// (`clip_vision_model`, the default) or SigLIP's (`siglip_vision_model`,
/// as llava-interleave and others ship).
#[derive(Debug, Clone)]
pub enum VisionConfig {
    Clip(ClipVisionConfig),
    Siglip(SiglipVisionConfig),
}

impl<'de> Deserialize<'de> for VisionConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let v = serde_json::Value::deserialize(d)?;
        match v.get("model_type").and_then(|t| t.as_str()).unwrap_or("clip_vision_model") {
            "clip_vision_model" => ClipVisionConfig::deserialize(v).map(VisionConfig::Clip).map_err(D::Error::custom),
            "siglip_vision_model" => {
                let c = SiglipVisionConfig::deserialize(v).map_err(D::Error::custom)?;
                c.check().map_err(D::Error::custom)?;
                Ok(VisionConfig::Siglip(c))
            }
            other => Err(D::Error::custom(format!(
                "vision_config.model_type '{other}' is not supported (clip_vision_model, siglip_vision_model)"
            ))),
        }
    }
}

impl VisionConfig {
    pub fn num_hidden_layers(&self) -> usize {
        match self {
            VisionConfig::Clip(c) => c.num_hidden_layers,
            VisionConfig::Siglip(c) => c.num_hidden_layers,
        }
    }

    pub fn hidden_size(&self) -> i64 {
        match self {
            VisionConfig::Clip(c) => c.hidden_size,
            VisionConfig::Siglip(c) => c.hidden_size,
        }
    }

    /// The (height, width) of the images the tower takes.
    pub fn image_hw(&self) -> (i64, i64) {
        match self {
            VisionConfig::Clip(c) => (c.image_size, c.image_size),
            VisionConfig::Siglip(c) => c.image_hw(),
        }
    }

    /// Whether position 0 is a CLS token (CLIP's; SigLIP has none).
    pub fn has_cls(&self) -> bool {
        matches!(self, VisionConfig::Clip(_))
    }

    /// Positions per image: the patches, plus CLIP's CLS.
    pub fn tokens(&self) -> i64 {
        match self {
            VisionConfig::Clip(c) => c.num_patches() + 1,
            VisionConfig::Siglip(c) => c.num_patches(),
        }
    }
}

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
    /// Drop position 0: the CLS token of a CLIP tower, and (as transformers
    /// does) the first patch of a SigLIP tower, which has no CLS.
    Default,
    /// Keep every position.
    Full,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LlavaConfig {
    pub vision_config: VisionConfig,
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
        let n = self.vision_config.num_hidden_layers() as i64;
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

    /// Image features per image: the tower's positions, less position 0 under
    /// the `default` strategy (CLIP: the patches; SigLIP: all patches but the first).
    pub fn image_features(&self) -> i64 {
        let tokens = self.vision_config.tokens();
        match self.vision_feature_select_strategy {
            FeatureSelect::Default => tokens - 1,
            FeatureSelect::Full => tokens,
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
    /// them, so missing keys of a CLIP vision config are filled with LLaVA's
    /// before parsing (a SigLIP vision config keeps SiglipVisionConfig's).
    pub fn from_value(mut v: serde_json::Value) -> Result<Self, serde_json::Error> {
        let defaults = serde_json::json!({
            "intermediate_size": 4096, "hidden_size": 1024, "patch_size": 14, "image_size": 336,
            "num_hidden_layers": 24, "num_attention_heads": 16, "projection_dim": 768
        });
        if let Some(obj) = v.as_object_mut() {
            let vision = obj.entry("vision_config").or_insert_with(|| serde_json::json!({}));
            let clip = vision.get("model_type").and_then(|t| t.as_str()).is_none_or(|t| t == "clip_vision_model");
            if let (true, Some(vision), Some(defaults)) = (clip, vision.as_object_mut(), defaults.as_object()) {
                for (k, val) in defaults {
                    vision.entry(k.clone()).or_insert_with(|| val.clone());
                }
            }
            obj.entry("text_config").or_insert_with(|| serde_json::json!({}));
        }
        serde_json::from_value(v)
    }
}
