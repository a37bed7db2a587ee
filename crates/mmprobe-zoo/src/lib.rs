//! Synthetic concept datasets with known ground truth (and, later, the toy
//! models trained on them).

pub mod shapes;

pub use shapes::{ShapesParams, generate_shapes};
