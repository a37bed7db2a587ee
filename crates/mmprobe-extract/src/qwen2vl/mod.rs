//! The Qwen2-VL family (transformers' `Qwen2VLForConditionalGeneration` and
//! `Qwen2_5_VLForConditionalGeneration`): a dynamic-resolution vision
//! transformer whose 2x2-merged patches fill the `<|image_pad|>` positions
//! of a Qwen2 decoder under multimodal rotary positions.

pub mod config;
pub mod family;
pub mod load;
pub mod model;
pub mod processor;
pub mod prompt;

pub use config::{Qwen2VlConfig, Version, VisionConfig};
pub use load::LoadedQwen2Vl;
pub use model::{Qwen2VlModel, VisionPlan, rope_index};
pub use processor::{ImagePatches, Qwen2VlImageProcessor, smart_resize};
pub use prompt::{Qwen2VlPromptBatch, Qwen2VlPromptToken, Qwen2VlTokenizer, chat_prompt};
