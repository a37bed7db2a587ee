//! The CLIP family (transformers' `CLIPModel`).

pub mod config;
pub mod family;
pub mod load;
pub mod model;

pub use config::{Activation, ClipConfig, ClipTextConfig, ClipVisionConfig};
pub use load::LoadedClip;
pub use model::{ClipModel, PatchCompute};
