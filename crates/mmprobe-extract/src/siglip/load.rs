//! Loading a SigLIP checkpoint folder whatever its key layout: the flat one
//! that the hub's google/siglip-* files and `save_pretrained` use
//! (`vision_model.*`, `text_model.*`, `logit_scale`, `logit_bias`), the nested
//! one of older towers saved apart (`vision_model.vision_model.*`,
//! `text_model.text_model.*`), and the flat one under the base model's prefix
//! (`siglip.*`); transformers loads all three into `SiglipModel`.

use std::path::Path;

use tch::{Device, nn::VarStore};

use super::{SiglipConfig, SiglipModel};
use crate::error::{ExtractError, Result};
use crate::family::ModelDir;
use crate::layers::PatchCompute;
use crate::layers::declare_for_checkpoint;
use crate::runtime::DType;
use crate::weights::{Checkpoint, Component, var_store};

/// Per canonical component: the checkpoint prefixes transformers accepts,
/// and a key under it that every layout has.
const LAYOUTS: &[Component] = &[
    (
        "vision_model.",
        &["vision_model.vision_model.", "siglip.vision_model.", "vision_model."],
        "embeddings.patch_embedding.weight",
    ),
    (
        "text_model.",
        &["text_model.text_model.", "siglip.text_model.", "text_model."],
        "embeddings.token_embedding.weight",
    ),
    ("logit_", &["siglip.logit_", "logit_"], "scale"),
];

/// The checkpoint prefix of each canonical component (the first that holds its probe key).
pub fn key_layout(weights: &Checkpoint) -> Vec<(&'static str, &'static str)> {
    weights.key_layout(LAYOUTS).0
}

/// A SigLIP model with the store that owns its parameters.
pub struct LoadedSiglip {
    pub model: SiglipModel,
    pub vs: VarStore,
    pub device: Device,
    pub dtype: DType,
    /// Whether the text tower gets the attention mask: only where the
    /// checkpoint's tokenizer returns one (SigLIP 2's does not).
    pub text_mask: bool,
    /// Checkpoint tensors that no parameter took (buffers such as `position_ids` aside).
    pub unused: Vec<String>,
}

impl LoadedSiglip {
    /// Opens `dir` (which must hold a SigLIP checkpoint) and loads it.
    pub fn load(dir: &Path, device: Device, dtype: DType) -> Result<Self> {
        let md = ModelDir::open(dir)?;
        if md.model_type != "siglip" {
            return Err(ExtractError::UnsupportedFamily {
                path: md.config_path.clone(),
                found: md.model_type.clone(),
                known: "siglip".into(),
            });
        }
        let config = super::family::siglip_config(&md)?;
        let mut m = Self::from_config(&md, &config, device, dtype)?;
        m.text_mask = super::family::tokenizer_gives_mask(&md.dir);
        Ok(m)
    }

    /// Loads the weights of `md` for an already parsed config (the text
    /// tower gets the mask until [`LoadedSiglip::text_mask`] says otherwise).
    pub fn from_config(md: &ModelDir, config: &SiglipConfig, device: Device, dtype: DType) -> Result<Self> {
        let weights = Checkpoint::open(&md.dir)?;
        let layout = weights.key_layout(LAYOUTS);
        let mut vs = var_store(device, dtype);
        let mut model = declare_for_checkpoint(|| SiglipModel::new(vs.root(), config));
        model.vision_model.patch_compute = PatchCompute::for_run(dtype, false);
        let report = weights.load_into(&vs, |name| layout.checkpoint_name(name))?;
        vs.freeze();
        Ok(LoadedSiglip { model, vs, device, dtype, text_mask: true, unused: report.unexpected() })
    }

    /// Lets cuDNN run the patch embedding in TF32 (`--allow-tf32`; only f32 on CUDA changes).
    pub fn set_allow_tf32(&mut self, allow: bool) {
        self.model.vision_model.patch_compute = PatchCompute::for_run(self.dtype, allow);
    }
}
