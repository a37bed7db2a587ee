//! LLaVA as transformers' `LlavaForConditionalGeneration`: a CLIP or SigLIP
//! vision tower, the multi-modal projector and a Llama decoder, one struct per HF
//! module with the checkpoint's names (module paths are the canonical layout;
//! `load.rs` maps other layouts onto them).

use tch::Tensor;
use tch::nn::{self, Module};

use super::config::{FeatureSelect, LlavaConfig, VisionConfig};
use crate::capture::Capture;
use crate::clip::model::ClipVisionTransformer;
use crate::layers::{Activation, Linear, PatchCompute, linear};
use crate::llama::LlamaModel;
use crate::siglip::SiglipVisionTransformer;

/// The vision tower: CLIP's vision transformer (CLS, pre-norm) or SigLIP's
/// (patches only; its pooling head, when the checkpoint has one, is loaded
/// but LLaVA reads hidden states, not the head).
pub enum VisionTower {
    Clip(ClipVisionTransformer),
    Siglip(SiglipVisionTransformer),
}

impl VisionTower {
    fn new(p: nn::Path, c: &VisionConfig) -> Self {
        match c {
            VisionConfig::Clip(c) => VisionTower::Clip(ClipVisionTransformer::new(p, c)),
            VisionConfig::Siglip(c) => VisionTower::Siglip(SiglipVisionTransformer::new(p, c)),
        }
    }

    /// pixel_values [B, C, H, W] in the model's dtype through every layer,
    /// each site reported to `cap` (hidden states as transformers reports them).
    pub fn forward(&self, pixel_values: &Tensor, cap: &mut Capture) {
        match self {
            VisionTower::Clip(t) => _ = t.forward(pixel_values, cap),
            VisionTower::Siglip(t) => _ = t.encode(pixel_values, cap),
        }
    }

    pub fn patch_compute(&self) -> PatchCompute {
        match self {
            VisionTower::Clip(t) => t.patch_compute,
            VisionTower::Siglip(t) => t.patch_compute,
        }
    }

    pub fn set_patch_compute(&mut self, how: PatchCompute) {
        match self {
            VisionTower::Clip(t) => t.patch_compute = how,
            VisionTower::Siglip(t) => t.patch_compute = how,
        }
    }
}

pub struct LlavaMultiModalProjector {
    pub linear_1: Linear,
    pub linear_2: Linear,
    act: Activation,
}

impl LlavaMultiModalProjector {
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.linear_2.forward(&self.act.apply(&self.linear_1.forward(x)))
    }
}

/// transformers' `LlavaForConditionalGeneration`.
pub struct LlavaModel {
    pub vision_tower: VisionTower,
    pub multi_modal_projector: LlavaMultiModalProjector,
    pub language_model: LlamaModel,
    /// `None` when tied to the input embeddings.
    pub lm_head: Option<Linear>,
    pub config: LlavaConfig,
    feature_layers: Vec<usize>,
}

impl LlavaModel {
    /// Declares every parameter under canonical names: `vision_tower.*` (CLIP
    /// or SigLIP vision transformer keys), `multi_modal_projector.*`, `language_model.*`
    /// (Llama model keys) and `lm_head.*`.
    pub fn new(p: nn::Path, c: &LlavaConfig) -> Result<Self, String> {
        let feature_layers = c.feature_layers()?;
        let t = &c.text_config;
        if c.image_seq_length != c.image_features() {
            return Err(format!(
                "image_seq_length {} differs from the {} features the vision tower gives per image",
                c.image_seq_length,
                c.image_features()
            ));
        }
        let in_dim = c.vision_config.hidden_size() * feature_layers.len() as i64;
        let mp = &p / "multi_modal_projector";
        let bias = c.multimodal_projector_bias;
        Ok(LlavaModel {
            vision_tower: VisionTower::new(&p / "vision_tower", &c.vision_config),
            multi_modal_projector: LlavaMultiModalProjector {
                linear_1: linear(&mp / "linear_1", in_dim, t.hidden_size, bias),
                linear_2: linear(&mp / "linear_2", t.hidden_size, t.hidden_size, bias),
                act: c.projector_hidden_act,
            },
            language_model: LlamaModel::new(&p / "language_model", t)?,
            lm_head: (!c.tied()).then(|| linear(&p / "lm_head", t.hidden_size, t.vocab_size, false)),
            config: c.clone(),
            feature_layers,
        })
    }

    /// The vision tower, its sites reported to `cap`; returns the projected
    /// image features [B, image_seq_length, D].
    pub fn encode_image(&self, pixel_values: &Tensor, cap: &mut Capture) -> Tensor {
        self.multi_modal_projector.forward(&self.vision_features(pixel_values, cap))
    }

    /// The vision tower, its sites reported to `cap`; returns the selected
    /// feature layers concatenated [B, image_seq_length, layers x width],
    /// before the projector (a frozen tower's part of `encode_image`).
    pub fn vision_features(&self, pixel_values: &Tensor, cap: &mut Capture) -> Tensor {
        cap.need_resid(self.feature_layers.iter().copied());
        self.vision_tower.forward(pixel_values, cap);
        let feats: Vec<Tensor> = self
            .feature_layers
            .iter()
            .map(|l| {
                let h = &cap.internal_resid[l];
                match self.config.vision_feature_select_strategy {
                    FeatureSelect::Default => h.narrow(1, 1, h.size()[1] - 1),
                    FeatureSelect::Full => h.shallow_clone(),
                }
            })
            .collect();
        cap.internal_resid.clear();
        Tensor::cat(&feats, -1)
    }

    /// The decoder over a padded batch, its sites reported to `cap`.
    /// `input_ids`/`attention_mask` [B, T]; `image_features` [N_img, F, D]
    /// fill the image-token positions in row-major order. Returns the last
    /// residual stream before the final norm.
    pub fn decode(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        image_features: Option<&Tensor>,
        cap: &mut Capture,
    ) -> Tensor {
        let lm = &self.language_model;
        let image = input_ids.eq(self.config.image_token_index);
        // The image token may lie outside the embedding table; its rows are replaced anyway.
        let ids = input_ids.masked_fill(&image, 0);
        let mut x = lm.embed_tokens.forward(&ids);
        if let Some(f) = image_features {
            let f = f.to_kind(x.kind()).reshape([-1, x.size()[2]]);
            x = x.masked_scatter(&image.unsqueeze(-1), &f);
        }
        lm.forward(x, attention_mask, cap)
    }

    /// Next-token logits of residual-stream vectors [.., D]: final norm, then the head.
    pub fn logits(&self, h: &Tensor) -> Tensor {
        let normed = self.language_model.norm.forward(h);
        match &self.lm_head {
            Some(head) => head.forward(&normed),
            None => normed.matmul(&self.language_model.embed_tokens.ws.tr()),
        }
    }
}
