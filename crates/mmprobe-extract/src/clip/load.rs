//! Loading a CLIP checkpoint folder onto a device.

use std::path::Path;

use tch::{Device, nn::VarStore};

use super::{ClipConfig, ClipModel, PatchCompute};
use crate::error::{ExtractError, Result};
use crate::family::ModelDir;
use crate::layers::declare_for_checkpoint;
use crate::runtime::DType;
use crate::weights::{Checkpoint, var_store};

/// A CLIP model with the store that owns its parameters.
pub struct LoadedClip {
    pub model: ClipModel,
    pub vs: VarStore,
    pub device: Device,
    pub dtype: DType,
    /// Checkpoint tensors that no parameter took (buffers such as `position_ids` aside).
    pub unused: Vec<String>,
}

impl LoadedClip {
    /// Opens `dir` (which must hold a CLIP checkpoint) and loads it.
    pub fn load(dir: &Path, device: Device, dtype: DType) -> Result<Self> {
        let md = ModelDir::open(dir)?;
        if md.model_type != "clip" {
            return Err(ExtractError::UnsupportedFamily {
                path: md.config_path.clone(),
                found: md.model_type.clone(),
                known: "clip".into(),
            });
        }
        Self::from_config(&md, &md.config()?, device, dtype)
    }

    /// Loads the weights of `md` for an already parsed config.
    pub fn from_config(md: &ModelDir, config: &ClipConfig, device: Device, dtype: DType) -> Result<Self> {
        let weights = Checkpoint::open(&md.dir)?;
        let mut vs = var_store(device, dtype);
        let mut model = declare_for_checkpoint(|| ClipModel::new(vs.root(), config));
        model.vision_model.patch_compute = PatchCompute::for_run(dtype, false);
        let report = weights.load_into(&vs, str::to_string)?;
        vs.freeze();
        Ok(LoadedClip { model, vs, device, dtype, unused: report.unexpected() })
    }

    /// Lets cuDNN run the patch embedding in TF32 (`--allow-tf32`; only f32 on CUDA changes).
    pub fn set_allow_tf32(&mut self, allow: bool) {
        self.model.vision_model.patch_compute = PatchCompute::for_run(self.dtype, allow);
    }
}
