//! The SigLIP family (transformers' `SiglipModel`; SigLIP 2 checkpoints at a
//! fixed resolution use it too).

pub mod config;
pub mod family;
pub mod load;
pub mod model;
pub mod tokenizer;

pub use config::{SiglipConfig, SiglipTextConfig, SiglipVisionConfig};
pub use load::LoadedSiglip;
pub use model::{SiglipModel, SiglipTextTransformer, SiglipVisionTransformer};
pub use tokenizer::SiglipSpTokenizer;
