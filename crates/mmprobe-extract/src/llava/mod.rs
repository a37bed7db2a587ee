//! The LLaVA family (transformers' `LlavaForConditionalGeneration`).

pub mod config;
pub mod family;
pub mod generate;
pub mod load;
pub mod model;
pub mod prompt;

pub use config::{FeatureSelect, LlavaConfig, VisionConfig};
pub use load::LoadedLlava;
pub use model::{LlavaModel, VisionTower};
pub use prompt::{PromptBatch, PromptTokenizer};
