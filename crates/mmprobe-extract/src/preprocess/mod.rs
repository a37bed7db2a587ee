//! Image preprocessing with the numerics of transformers' PIL backend.

pub mod decode;
pub mod processor;
pub mod resample;

pub use decode::{decode_rgb, open_rgb};
pub use processor::{ImageProcessor, ImageProcessorConfig};
pub use resample::{Filter, Rgb8};
