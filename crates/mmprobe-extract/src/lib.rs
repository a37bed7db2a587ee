//! Model loading and hidden-state extraction through LibTorch (tch).
//!
//! Model code follows the Hugging Face module tree: one struct per HF module,
//! field names equal to the checkpoint keys, configs deserialised from
//! `config.json` and kept apart from run-time options ([`RunOptions`]).
//!
//! Extraction from Rust, as `mmprobe extract` does it: fill an [`ExtractOptions`] and call
//! [`extract`]; see `examples/extract.rs`
//! (`cargo run --release -p mmprobe-extract --example extract -- MODEL DATA STORE`).

pub mod capture;
pub mod clip;
pub mod describe;
pub mod error;
pub mod family;
pub mod layers;
pub mod llama;
pub mod llava;
pub mod lock;
pub mod plan;
pub mod preprocess;
pub mod qwen2vl;
pub mod run;
pub mod runtime;
pub mod select;
pub mod siglip;
pub mod spiece;
pub mod tokenize;
pub mod weights;

pub use capture::{Capture, Edit, EditKind, SiteRequest};
pub use describe::{ModelInfo, TowerInfo};
pub use error::{ExtractError, Result};
pub use family::{Batch, Family, InputTools, LoadedModel, ModelDir, Pixels, TowerStates};
pub use mmprobe_store::{Selector, Site, Tower};
pub use plan::{ExtractionPlan, LayerSpec};
pub use run::{DEFAULT_CHUNK_SIZE, ExtractOptions, ExtractSummary, ProgressSink, Quiet, StageTimes, extract};
pub use runtime::{DEFAULT_BATCH_SIZE, DType, DeviceChoice, LibtorchInfo, RunOptions};
