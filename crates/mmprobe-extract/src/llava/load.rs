//! Loading a LLaVA checkpoint folder whatever its key layout: llava-hf hub
//! files (`vision_tower.vision_model.*`, `language_model.model.*`,
//! `language_model.lm_head.*`), transformers 5 files (`model.vision_tower.*`,
//! `model.language_model.*`, `lm_head.*`), and the mixes in between.

use std::path::Path;

use tch::{Device, nn::VarStore};

use super::{LlavaConfig, LlavaModel};
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
        "vision_tower.",
        &["model.vision_tower.vision_model.", "vision_tower.vision_model.", "model.vision_tower.", "vision_tower."],
        "embeddings.patch_embedding.weight",
    ),
    ("multi_modal_projector.", &["model.multi_modal_projector.", "multi_modal_projector."], "linear_1.weight"),
    ("language_model.", &["model.language_model.", "language_model.model.", "language_model."], "embed_tokens.weight"),
    ("lm_head.", &["lm_head.", "language_model.lm_head."], "weight"),
];

/// The checkpoint prefix of each canonical component (the first that holds its probe key).
pub fn key_layout(weights: &Checkpoint) -> Vec<(&'static str, &'static str)> {
    weights.key_layout(LAYOUTS).0
}

pub struct LoadedLlava {
    pub model: LlavaModel,
    pub vs: VarStore,
    pub device: Device,
    pub dtype: DType,
    /// Checkpoint tensors that no parameter took (buffers such as `position_ids` aside).
    pub unused: Vec<String>,
}

impl LoadedLlava {
    /// Opens `dir` (which must hold a LLaVA checkpoint) and loads it.
    pub fn load(dir: &Path, device: Device, dtype: DType) -> Result<Self> {
        let md = ModelDir::open(dir)?;
        if md.model_type != "llava" {
            return Err(ExtractError::UnsupportedFamily {
                path: md.config_path.clone(),
                found: md.model_type.clone(),
                known: "llava".into(),
            });
        }
        Self::from_config(&md, &llava_config(&md)?, device, dtype)
    }

    /// Loads the weights of `md` for an already parsed config.
    pub fn from_config(md: &ModelDir, config: &LlavaConfig, device: Device, dtype: DType) -> Result<Self> {
        let weights = Checkpoint::open(&md.dir)?;
        let layout = weights.key_layout(LAYOUTS);
        let mut vs = var_store(device, dtype);
        let mut model =
            declare_for_checkpoint(|| LlavaModel::new(vs.root(), config)).map_err(|message| md.bad_config(message))?;
        model.vision_tower.set_patch_compute(PatchCompute::for_run(dtype, false));
        let report = weights.load_into(&vs, |name| layout.checkpoint_name(name))?;
        vs.freeze();
        Ok(LoadedLlava { model, vs, device, dtype, unused: report.unexpected() })
    }

    /// Lets cuDNN run the patch embedding in TF32 (`--allow-tf32`; only f32 on CUDA changes).
    pub fn set_allow_tf32(&mut self, allow: bool) {
        self.model.vision_tower.set_patch_compute(PatchCompute::for_run(self.dtype, allow));
    }
}

/// The config of `md`, LLaVA's vision defaults filled in.
pub fn llava_config(md: &ModelDir) -> Result<LlavaConfig> {
    LlavaConfig::from_value(md.config_value.clone()).map_err(|e| md.bad_config(e.to_string()))
}
