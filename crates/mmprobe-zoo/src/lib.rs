//! Synthetic concept datasets with known ground truth, and the recipes that
//! train the bundled toy models on them with mmprobe's own model code.

pub mod caption_tokenizer;
pub mod error;
pub mod hf_folder;
pub mod shapes;
pub mod shapes_clip;
pub mod zero_shot;

pub use error::ZooError;
pub use shapes::{ShapeStream, ShapesParams, generate_shapes};
pub use shapes_clip::{ShapesClipParams, StepReport, TrainSummary, train_shapes_clip};
pub use zero_shot::{ZeroShotReport, zero_shot_shapes};
