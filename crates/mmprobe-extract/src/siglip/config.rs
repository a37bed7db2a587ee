//! `config.json` of a SigLIP checkpoint (transformers' SiglipConfig, which
//! SigLIP 2 checkpoints at a fixed resolution use too), with transformers' defaults.

use serde::{Deserialize, Deserializer};

pub use crate::layers::Activation;

#[derive(Debug, Clone, Deserialize)]
pub struct SiglipTextConfig {
    #[serde(default = "d::vocab_size")]
    pub vocab_size: i64,
    #[serde(default = "d::hidden")]
    pub hidden_size: i64,
    #[serde(default = "d::intermediate")]
    pub intermediate_size: i64,
    #[serde(default = "d::layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d::heads")]
    pub num_attention_heads: i64,
    #[serde(default = "d::max_positions")]
    pub max_position_embeddings: i64,
    #[serde(default = "d::act")]
    pub hidden_act: Activation,
    #[serde(default = "d::eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "d::pad")]
    pub pad_token_id: Option<i64>,
    /// The text head's output width; `None` (or absent) means `hidden_size`.
    #[serde(default)]
    pub projection_size: Option<i64>,
}

impl SiglipTextConfig {
    /// The width of the text embedding (`get_text_features`).
    pub fn projection_size(&self) -> i64 {
        self.projection_size.unwrap_or(self.hidden_size)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct SiglipVisionConfig {
    #[serde(default = "d::hidden")]
    pub hidden_size: i64,
    #[serde(default = "d::intermediate")]
    pub intermediate_size: i64,
    #[serde(default = "d::layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d::heads")]
    pub num_attention_heads: i64,
    #[serde(default = "d::channels")]
    pub num_channels: i64,
    #[serde(default = "d::image_size")]
    pub image_size: Side,
    #[serde(default = "d::patch_size")]
    pub patch_size: Side,
    #[serde(default = "d::act")]
    pub hidden_act: Activation,
    #[serde(default = "d::eps")]
    pub layer_norm_eps: f64,
    /// The attention-pooling head (`head.*`), whose output is the image embedding.
    #[serde(default = "d::yes")]
    pub vision_use_head: bool,
}

impl SiglipVisionConfig {
    /// The (height, width) of the images the tower takes.
    pub fn image_hw(&self) -> (i64, i64) {
        (self.image_size.0, self.image_size.1)
    }

    /// Patches per image: every position of the sequence (there is no CLS).
    pub fn num_patches(&self) -> i64 {
        (self.image_size.0 / self.patch_size.0) * (self.image_size.1 / self.patch_size.1)
    }

    /// A config mmprobe can run: square patches whose grid covers the image
    /// (transformers' Conv2d drops a remainder, but its position table counts
    /// `(image_size // patch_size) ** 2` positions, so only square sizes load).
    pub fn check(&self) -> Result<(), String> {
        if self.patch_size.0 != self.patch_size.1 {
            return Err(format!("vision_config.patch_size {:?} is not square", self.patch_size));
        }
        if self.image_size.0 != self.image_size.1 {
            return Err(format!("vision_config.image_size {:?} is not square", self.image_size));
        }
        if self.patch_size.0 <= 0 || self.image_size.0 < self.patch_size.0 {
            return Err(format!(
                "vision_config.image_size {} holds no {}-pixel patch",
                self.image_size.0, self.patch_size.0
            ));
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            return Err(format!(
                "vision_config.hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        Ok(())
    }
}

/// An image or patch size: one number (square) or [height, width], as transformers accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Side(pub i64, pub i64);

impl<'de> Deserialize<'de> for Side {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrTwo {
            One(i64),
            Two([i64; 2]),
        }
        Ok(match OneOrTwo::deserialize(d)? {
            OneOrTwo::One(s) => Side(s, s),
            OneOrTwo::Two([h, w]) => Side(h, w),
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct SiglipConfig {
    #[serde(default = "d::empty")]
    pub text_config: SiglipTextConfig,
    #[serde(default = "d::empty")]
    pub vision_config: SiglipVisionConfig,
}

impl SiglipConfig {
    /// A config mmprobe can run (one line saying what is wrong otherwise).
    pub fn check(&self) -> Result<(), String> {
        self.vision_config.check()?;
        let (t, v) = (&self.text_config, &self.vision_config);
        if t.hidden_size % t.num_attention_heads != 0 {
            return Err(format!(
                "text_config.hidden_size {} is not a multiple of num_attention_heads {}",
                t.hidden_size, t.num_attention_heads
            ));
        }
        // The sigmoid loss compares the two embeddings: one width for both.
        if v.vision_use_head && v.hidden_size != t.projection_size() {
            return Err(format!(
                "the image embedding is {} wide (vision_config.hidden_size) but the text embedding {} \
                 (text_config.projection_size): they share no space",
                v.hidden_size,
                t.projection_size()
            ));
        }
        Ok(())
    }
}

/// transformers' defaults (SiglipTextConfig / SiglipVisionConfig).
mod d {
    use super::{Activation, Side};
    pub fn empty<T: serde::de::DeserializeOwned>() -> T {
        serde_json::from_value(serde_json::json!({})).expect("every field has a default")
    }
    pub fn vocab_size() -> i64 {
        32000
    }
    pub fn hidden() -> i64 {
        768
    }
    pub fn intermediate() -> i64 {
        3072
    }
    pub fn layers() -> usize {
        12
    }
    pub fn heads() -> i64 {
        12
    }
    pub fn max_positions() -> i64 {
        64
    }
    pub fn act() -> Activation {
        Activation::GeluTanh
    }
    pub fn eps() -> f64 {
        1e-6
    }
    pub fn pad() -> Option<i64> {
        Some(1)
    }
    pub fn channels() -> i64 {
        3
    }
    pub fn image_size() -> Side {
        Side(224, 224)
    }
    pub fn patch_size() -> Side {
        Side(16, 16)
    }
    pub fn yes() -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_transformers() {
        let c: SiglipConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c.text_config.max_position_embeddings, 64);
        assert_eq!(c.text_config.projection_size(), 768);
        assert_eq!(c.text_config.hidden_act, Activation::GeluTanh);
        assert_eq!(c.vision_config.num_patches(), 196);
        assert!(c.vision_config.vision_use_head);
        assert!(c.check().is_ok());
        let c: SiglipVisionConfig = serde_json::from_str(r#"{"image_size": [32, 32], "patch_size": 8}"#).unwrap();
        assert_eq!(c.num_patches(), 16);
        let c: SiglipConfig =
            serde_json::from_str(r#"{"vision_config": {"hidden_size": 24}, "text_config": {"projection_size": 16}}"#)
                .unwrap();
        assert!(c.check().unwrap_err().contains("share no space"));
    }
}
