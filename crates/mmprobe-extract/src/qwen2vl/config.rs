//! `config.json` of Qwen2-VL and Qwen2.5-VL checkpoints, either layout:
//! transformers 5's nested one (`text_config`, `vision_config`,
//! `rope_parameters` with `mrope_section`) or the hub's flat one (text fields
//! at the top, `rope_scaling {"type": "mrope", ...}` and `rope_theta`,
//! `in_chans`). Read into one resolved struct, transformers' defaults of the
//! checkpoint's version filled in.

use serde::Deserialize;
use serde_json::Value;

use crate::layers::Activation;
use crate::llama::{LlamaConfig, RopeParameters};

/// Which architecture: their vision towers differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// `qwen2_vl`: LayerNorm / quick-GELU MLP blocks, full attention per image.
    Qwen2Vl,
    /// `qwen2_5_vl`: RMSNorm / SwiGLU blocks, window attention but in `fullatt_block_indexes`.
    Qwen25Vl,
}

/// The vision tower's settings, resolved.
#[derive(Debug, Clone)]
pub struct VisionConfig {
    pub version: Version,
    pub depth: usize,
    /// Block width (2-VL `embed_dim`, 2.5-VL `hidden_size`).
    pub width: i64,
    pub num_heads: i64,
    /// MLP hidden width (2-VL `embed_dim * mlp_ratio`, 2.5-VL `intermediate_size`).
    pub mlp_hidden: i64,
    pub hidden_act: Activation,
    /// The merger's output width: the decoder's (2-VL `hidden_size`, 2.5-VL `out_hidden_size`).
    pub out_width: i64,
    pub in_channels: i64,
    pub patch_size: i64,
    pub temporal_patch_size: i64,
    pub spatial_merge_size: i64,
    /// 2.5-VL: window side in pixels.
    pub window_size: i64,
    /// 2.5-VL: blocks with full (per-image) attention; the others attend within windows.
    pub fullatt_block_indexes: Vec<usize>,
    pub rope_theta: f64,
}

impl VisionConfig {
    pub fn head_dim(&self) -> i64 {
        self.width / self.num_heads
    }

    /// Values of one patch row: channels x temporal patch x patch x patch.
    pub fn patch_len(&self) -> i64 {
        self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size
    }

    /// Whether block `i` (0-based) attends within windows.
    pub fn windowed(&self, i: usize) -> bool {
        self.version == Version::Qwen25Vl && !self.fullatt_block_indexes.contains(&i)
    }

    /// 2.5-VL: a window's side in merged tokens.
    pub fn window_merged(&self) -> i64 {
        self.window_size / self.spatial_merge_size / self.patch_size
    }
}

/// The vision_config keys of both versions and layouts (defaults resolved per version).
#[derive(Debug, Clone, Deserialize, Default)]
struct RawVision {
    depth: Option<usize>,
    embed_dim: Option<i64>,
    hidden_size: Option<i64>,
    mlp_ratio: Option<f64>,
    num_heads: Option<i64>,
    intermediate_size: Option<i64>,
    out_hidden_size: Option<i64>,
    hidden_act: Option<Activation>,
    in_channels: Option<i64>,
    /// Hub spelling of `in_channels`.
    in_chans: Option<i64>,
    patch_size: Option<i64>,
    /// Hub configs repeat `patch_size` under this name.
    spatial_patch_size: Option<i64>,
    temporal_patch_size: Option<i64>,
    spatial_merge_size: Option<i64>,
    window_size: Option<i64>,
    fullatt_block_indexes: Option<Vec<usize>>,
    rope_parameters: Option<RopeParameters>,
    rope_theta: Option<f64>,
}

/// A whole Qwen2-VL / Qwen2.5-VL config.
#[derive(Debug, Clone)]
pub struct Qwen2VlConfig {
    pub version: Version,
    pub vision: VisionConfig,
    /// The decoder as a Llama with q/k/v bias; its rope is the default one at
    /// the mrope theta (the multimodal sections are applied on top).
    pub text: LlamaConfig,
    pub mrope_section: [i64; 3],
    pub rope_theta: f64,
    pub image_token_id: i64,
    pub vision_start_token_id: i64,
    pub vision_end_token_id: i64,
    pub tie_word_embeddings: bool,
}

impl Qwen2VlConfig {
    /// Parses a config.json value of `model_type` `qwen2_vl` or `qwen2_5_vl`.
    pub fn from_value(v: &Value) -> Result<Self, String> {
        let version = match v.get("model_type").and_then(Value::as_str) {
            Some("qwen2_vl") => Version::Qwen2Vl,
            Some("qwen2_5_vl") => Version::Qwen25Vl,
            other => return Err(format!("model_type {other:?} is neither qwen2_vl nor qwen2_5_vl")),
        };
        // transformers 5 nests the decoder's fields; hub configs have them at the top.
        let text_value = v.get("text_config").filter(|t| t.is_object()).unwrap_or(v);
        let mut text: LlamaConfig =
            serde_json::from_value(text_value.clone()).map_err(|e| format!("text config: {e}"))?;
        text.qkv_bias = true;
        let top_tie = v.get("tie_word_embeddings").and_then(Value::as_bool);
        let tie_word_embeddings = top_tie.unwrap_or(false) || text.tie_word_embeddings;

        // mrope: rope_parameters (5.x) or rope_scaling + rope_theta (hub), in the text part or at the top.
        let rope = [text_value, v]
            .iter()
            .flat_map(|o| [o.get("rope_parameters"), o.get("rope_scaling")])
            .flatten()
            .find(|r| r.get("mrope_section").is_some())
            .ok_or("no mrope_section in rope_parameters or rope_scaling")?;
        let section: Vec<i64> =
            serde_json::from_value(rope["mrope_section"].clone()).map_err(|e| format!("mrope_section: {e}"))?;
        let rope_theta = rope
            .get("rope_theta")
            .and_then(Value::as_f64)
            .or_else(|| text_value.get("rope_theta").and_then(Value::as_f64))
            .or_else(|| v.get("rope_theta").and_then(Value::as_f64))
            .unwrap_or(1_000_000.0);
        let kind = rope.get("rope_type").or(rope.get("type")).and_then(Value::as_str).unwrap_or("default");
        if !matches!(kind, "default" | "mrope") {
            return Err(format!("rope type '{kind}' is not supported for Qwen2-VL (default, mrope)"));
        }
        let hd = text.head_dim();
        let mrope_section: [i64; 3] = section
            .clone()
            .try_into()
            .map_err(|_| format!("mrope_section {section:?} must have three entries (t, h, w)"))?;
        if mrope_section.iter().sum::<i64>() * 2 != hd || mrope_section.iter().any(|&s| s < 0) {
            return Err(format!("mrope_section {section:?} must sum to half the head dim {hd}"));
        }
        text.rope_parameters =
            Some(RopeParameters { rope_type: "default".into(), rope_theta: Some(rope_theta), factor: None });
        text.rope_scaling = None;

        let raw: RawVision = match v.get("vision_config") {
            Some(vc) => serde_json::from_value(vc.clone()).map_err(|e| format!("vision_config: {e}"))?,
            None => RawVision::default(),
        };
        let vision = resolve_vision(version, raw)?;
        if vision.out_width != text.hidden_size {
            return Err(format!(
                "the vision merger's output width {} differs from the decoder's hidden_size {}",
                vision.out_width, text.hidden_size
            ));
        }
        let id = |key: &str, default: i64| v.get(key).and_then(Value::as_i64).unwrap_or(default);
        Ok(Qwen2VlConfig {
            version,
            vision,
            text,
            mrope_section,
            rope_theta,
            image_token_id: id("image_token_id", 151655),
            vision_start_token_id: id("vision_start_token_id", 151652),
            vision_end_token_id: id("vision_end_token_id", 151653),
            tie_word_embeddings,
        })
    }
}

/// transformers' Qwen2VLVisionConfig / Qwen2_5_VLVisionConfig defaults.
fn resolve_vision(version: Version, r: RawVision) -> Result<VisionConfig, String> {
    let theta = r.rope_parameters.as_ref().and_then(|p| p.rope_theta).or(r.rope_theta).unwrap_or(10_000.0);
    let common = |width: i64, mlp_hidden: i64, out_width: i64, act: Activation| VisionConfig {
        version,
        depth: r.depth.unwrap_or(32),
        width,
        num_heads: r.num_heads.unwrap_or(16),
        mlp_hidden,
        hidden_act: r.hidden_act.unwrap_or(act),
        out_width,
        in_channels: r.in_channels.or(r.in_chans).unwrap_or(3),
        patch_size: r.patch_size.or(r.spatial_patch_size).unwrap_or(14),
        temporal_patch_size: r.temporal_patch_size.unwrap_or(2),
        spatial_merge_size: r.spatial_merge_size.unwrap_or(2),
        window_size: r.window_size.unwrap_or(112),
        fullatt_block_indexes: r.fullatt_block_indexes.clone().unwrap_or_else(|| vec![7, 15, 23, 31]),
        rope_theta: theta,
    };
    let c = match version {
        Version::Qwen2Vl => {
            let width = r.embed_dim.unwrap_or(1280);
            let ratio = r.mlp_ratio.unwrap_or(4.0);
            common(width, (width as f64 * ratio) as i64, r.hidden_size.unwrap_or(3584), Activation::QuickGelu)
        }
        Version::Qwen25Vl => common(
            r.hidden_size.unwrap_or(3584),
            r.intermediate_size.unwrap_or(3420),
            r.out_hidden_size.unwrap_or(3584),
            Activation::Silu,
        ),
    };
    if c.num_heads <= 0 || c.width % c.num_heads != 0 || c.head_dim() % 4 != 0 {
        return Err(format!(
            "vision width {} over {} heads must give a head dim divisible by 4 (2-D rotary)",
            c.width, c.num_heads
        ));
    }
    if c.spatial_merge_size != 2 {
        return Err(format!("spatial_merge_size {} is not supported (2)", c.spatial_merge_size));
    }
    if c.version == Version::Qwen25Vl && (c.window_merged() <= 0 || c.window_size % (c.patch_size * 2) != 0) {
        return Err(format!(
            "window_size {} must be a positive multiple of patch_size x spatial_merge_size",
            c.window_size
        ));
    }
    if let Some(&bad) = c.fullatt_block_indexes.iter().find(|&&i| i >= c.depth && version == Version::Qwen25Vl) {
        return Err(format!("fullatt_block_indexes names block {bad} of a {}-block tower", c.depth));
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_and_nested_configs_resolve_alike() {
        let nested = serde_json::json!({
            "model_type": "qwen2_5_vl", "tie_word_embeddings": true, "image_token_id": 7,
            "text_config": {"hidden_size": 16, "num_attention_heads": 2, "num_hidden_layers": 1, "vocab_size": 10,
                            "intermediate_size": 8,
                            "rope_parameters": {"rope_type": "default", "rope_theta": 100.0, "mrope_section": [1, 1, 2]}},
            "vision_config": {"depth": 2, "hidden_size": 8, "num_heads": 2, "intermediate_size": 4, "out_hidden_size": 16,
                              "window_size": 56, "fullatt_block_indexes": [1]}
        });
        let flat = serde_json::json!({
            "model_type": "qwen2_5_vl", "tie_word_embeddings": true, "image_token_id": 7,
            "hidden_size": 16, "num_attention_heads": 2, "num_hidden_layers": 1, "vocab_size": 10,
            "intermediate_size": 8, "rope_theta": 100.0, "rope_scaling": {"type": "mrope", "mrope_section": [1, 1, 2]},
            "vision_config": {"depth": 2, "hidden_size": 8, "num_heads": 2, "intermediate_size": 4, "out_hidden_size": 16,
                              "window_size": 56, "fullatt_block_indexes": [1], "in_chans": 3}
        });
        for v in [nested, flat] {
            let c = Qwen2VlConfig::from_value(&v).unwrap();
            assert_eq!((c.mrope_section, c.rope_theta, c.image_token_id), ([1, 1, 2], 100.0, 7));
            assert!(c.tie_word_embeddings && c.text.qkv_bias && !c.text.attention_bias);
            assert_eq!(c.text.rope().0, "default");
            assert_eq!((c.vision.width, c.vision.mlp_hidden, c.vision.window_merged()), (8, 4, 2));
            assert!(c.vision.windowed(0) && !c.vision.windowed(1));
        }
    }

    #[test]
    fn a_section_that_does_not_fill_the_head_is_refused() {
        let v = serde_json::json!({
            "model_type": "qwen2_vl", "hidden_size": 16, "num_attention_heads": 2,
            "rope_scaling": {"type": "mrope", "mrope_section": [1, 1, 1]},
            "vision_config": {"embed_dim": 8, "num_heads": 2, "hidden_size": 16}
        });
        let e = Qwen2VlConfig::from_value(&v).unwrap_err();
        assert!(e.contains("half the head dim 8"), "{e}");
    }
}
