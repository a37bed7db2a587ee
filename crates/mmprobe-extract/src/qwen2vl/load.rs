//! Loading a Qwen2-VL / Qwen2.5-VL checkpoint whatever its key layout: the hub
//! files (`visual.*`, `model.*` for the decoder, `lm_head.*`) and transformers
//! 5's (`model.visual.*`, `model.language_model.*`, `lm_head.*`).

use std::path::Path;

use tch::{Device, nn::VarStore};

use super::config::Qwen2VlConfig;
use super::model::Qwen2VlModel;
use crate::error::{ExtractError, Result};
use crate::family::ModelDir;
use crate::layers::declare_for_checkpoint;
use crate::runtime::DType;
use crate::weights::{Checkpoint, Component, var_store};

/// Per canonical component: the checkpoint prefixes transformers accepts, and
/// a key under it that every layout has.
const LAYOUTS: &[Component] = &[
    ("visual.", &["model.visual.", "visual."], "patch_embed.proj.weight"),
    (
        "language_model.",
        &["model.language_model.", "language_model.model.", "language_model.", "model."],
        "embed_tokens.weight",
    ),
    ("lm_head.", &["lm_head.", "language_model.lm_head."], "weight"),
];

/// The checkpoint prefix of each canonical component (the first that holds its probe key).
pub fn key_layout(weights: &Checkpoint) -> Vec<(&'static str, &'static str)> {
    weights.key_layout(LAYOUTS).0
}

pub struct LoadedQwen2Vl {
    pub model: Qwen2VlModel,
    pub vs: VarStore,
    pub device: Device,
    pub dtype: DType,
    /// Checkpoint tensors that no parameter took.
    pub unused: Vec<String>,
}

impl LoadedQwen2Vl {
    /// Opens `dir` (a Qwen2-VL or Qwen2.5-VL checkpoint) and loads it.
    pub fn load(dir: &Path, device: Device, dtype: DType) -> Result<Self> {
        let md = ModelDir::open(dir)?;
        if !matches!(md.model_type.as_str(), "qwen2_vl" | "qwen2_5_vl") {
            return Err(ExtractError::UnsupportedFamily {
                path: md.config_path.clone(),
                found: md.model_type.clone(),
                known: "qwen2_vl, qwen2_5_vl".into(),
            });
        }
        Self::from_config(&md, &qwen2vl_config(&md)?, device, dtype)
    }

    /// Loads the weights of `md` for an already parsed config.
    pub fn from_config(md: &ModelDir, config: &Qwen2VlConfig, device: Device, dtype: DType) -> Result<Self> {
        let weights = Checkpoint::open(&md.dir)?;
        let layout = weights.key_layout(LAYOUTS);
        let mut vs = var_store(device, dtype);
        let model = declare_for_checkpoint(|| Qwen2VlModel::new(vs.root(), config))
            .map_err(|message| md.bad_config(message))?;
        let report = weights.load_into(&vs, |name| layout.checkpoint_name(name))?;
        vs.freeze();
        // A tied head ignores a saved lm_head, as transformers does.
        let unused = report
            .unexpected()
            .into_iter()
            .filter(|k| !(config.tie_word_embeddings && k.ends_with("lm_head.weight")))
            .collect();
        Ok(LoadedQwen2Vl { model, vs, device, dtype, unused })
    }
}

/// The config of `md`.
pub fn qwen2vl_config(md: &ModelDir) -> Result<Qwen2VlConfig> {
    Qwen2VlConfig::from_value(&md.config_value).map_err(|e| md.bad_config(e))
}
