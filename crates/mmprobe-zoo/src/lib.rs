//! Synthetic concept datasets with known ground truth, and the recipes that
//! train the bundled toy models on them with mmprobe's own model code.

pub mod error;
pub mod hf_folder;
pub mod shapes;
pub mod shapes_clip;
pub mod shapes_llava;
pub mod training;
pub mod vqa;
pub mod word_tokenizer;
pub mod zero_shot;

pub use error::ZooError;
pub use shapes::{ShapeStream, ShapesParams, generate_shapes};
pub use shapes_clip::{ShapesClipParams, train_shapes_clip};
pub use shapes_llava::{ShapesLlavaParams, train_shapes_llava};
pub use training::{StepReport, TrainSummary};
pub use vqa::{VqaReport, vqa_shapes};
pub use zero_shot::{ZeroShotReport, zero_shot_shapes};
