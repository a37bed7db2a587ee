//! The seam every model family sits behind. A family is one folder (`clip/`,
//! `llava/`, `siglip/`) holding its config, its modules, its loader and one
//! [`Family`] implementation; [`open`] picks it from `config.json`'s
//! `model_type` through [`FAMILIES`], the one list a new family joins.
//!
//! A new family adds: its folder with `config.rs` (serde, transformers'
//! defaults), `model.rs` (one struct per HF module, fields named after the
//! checkpoint keys, forward passes reporting to a [`Capture`]), `load.rs`
//! (key layouts onto the canonical module paths) and `family.rs` (this
//! trait: what it is, what inputs it needs, how a prepared batch runs); and
//! one line in [`FAMILIES`]. Shared modules live in `layers.rs` and, for
//! decoders, `llama/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mmprobe_store::Tower;
use serde::de::DeserializeOwned;
use tch::{Device, Kind, Tensor};

use crate::capture::{Capture, SiteRequest};
use crate::describe::ModelInfo;
use crate::error::{ExtractError, Result, read_file};
use crate::llava::PromptTokenizer;
use crate::preprocess::ImageProcessor;
use crate::runtime::RunOptions;
use crate::select::SequenceLayout;
use crate::tokenize::TextTokenizer;

/// A checkpoint folder's config.json, read and parsed once.
pub struct ModelDir {
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub config_bytes: Vec<u8>,
    pub config_value: serde_json::Value,
    /// `model_type`, or "" when the config has none.
    pub model_type: String,
}

impl ModelDir {
    pub fn open(dir: &Path) -> Result<Self> {
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(ExtractError::NoConfig(dir.to_path_buf()));
        }
        let config_bytes = read_file(&config_path)?;
        let config_value: serde_json::Value = serde_json::from_slice(&config_bytes)
            .map_err(|e| ExtractError::BadConfig { path: config_path.clone(), message: e.to_string() })?;
        let model_type = config_value.get("model_type").and_then(|v| v.as_str()).unwrap_or("").to_string();
        Ok(ModelDir { dir: dir.to_path_buf(), config_path, config_bytes, config_value, model_type })
    }

    /// The config as a family's struct.
    pub fn config<T: DeserializeOwned>(&self) -> Result<T> {
        T::deserialize(&self.config_value).map_err(|e| self.bad_config(e.to_string()))
    }

    /// A one-line error about this config.
    pub fn bad_config(&self, message: impl Into<String>) -> ExtractError {
        ExtractError::BadConfig { path: self.config_path.clone(), message: message.into() }
    }
}

/// How a family parses a checkpoint folder's config.
pub type OpenFamily = fn(&ModelDir) -> Result<Box<dyn Family>>;

/// The families mmprobe reads: `model_type` and how to open one.
pub const FAMILIES: &[(&str, OpenFamily)] = &[
    ("clip", crate::clip::family::open),
    ("llava", crate::llava::family::open),
    ("siglip", crate::siglip::family::open),
    ("qwen2_vl", crate::qwen2vl::family::open),
    ("qwen2_5_vl", crate::qwen2vl::family::open),
];

/// The family of a checkpoint folder, its config parsed.
pub fn open(md: &ModelDir) -> Result<Box<dyn Family>> {
    match FAMILIES.iter().find(|(name, _)| *name == md.model_type) {
        Some((_, open)) => open(md),
        None => Err(ExtractError::UnsupportedFamily {
            path: md.config_path.clone(),
            found: if md.model_type.is_empty() { "(none)".into() } else { md.model_type.clone() },
            known: FAMILIES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "),
        }),
    }
}

/// What turns a dataset's columns into model inputs, for the towers a run needs.
#[derive(Default)]
pub struct InputTools {
    /// Text towers: the tokenizer, padded to the family's convention.
    pub text: Option<TextTokenizer>,
    /// Decoders: the prompt tokenizer, image tokens expanded.
    pub prompts: Option<PromptTokenizer>,
    /// Pixels for the vision tower (or a decoder's image).
    pub images: Option<ImageProcessor>,
    /// Families whose images keep their own sizes (Qwen2-VL): each row's image
    /// and prompt prepared together, the batch collated by the family.
    pub rows: Option<Box<dyn RowInputs>>,
}

/// One dataset row as a [`RowInputs`] family prepares it.
pub struct PreparedRow {
    /// The image's patch rows [patches, patch_len] f32 and its (t, h, w) grid.
    pub patches: Option<(Tensor, [i64; 3])>,
    /// The prompt's tokens (id, text, image position), the image tokens expanded.
    pub tokens: Option<Vec<(u32, String, bool)>>,
    /// The image's patch cells (row, col) in patch-row order, for tokens.parquet.
    pub cells: Vec<(i64, i64)>,
}

/// How a family whose inputs vary in size per row prepares them.
pub trait RowInputs: Send + Sync {
    /// An image file's bytes decoded as the family's processor sees them.
    fn decode(&self, bytes: &[u8], name: &str, max_pixels: u64) -> Result<crate::preprocess::Rgb8>;
    /// One row: its image (when the dataset has images) and its prompt
    /// (the dataset's `prompt`, else its `text`).
    fn prepare(
        &self,
        image: Option<&crate::preprocess::Rgb8>,
        prompt: Option<&str>,
        text: Option<&str>,
    ) -> std::result::Result<PreparedRow, String>;
    /// Prepared rows as one batch.
    fn collate(&self, rows: Vec<PreparedRow>) -> Batch;
    /// The text of a vocabulary id (the logit lens names its tokens with it).
    fn id_to_token(&self, _id: u32) -> Option<String> {
        None
    }
}

/// A batch's images as the loader leaves them.
pub enum Pixels {
    /// [B, 3, H, W] f32, as the model takes them.
    Float(Tensor),
    /// [B, 3, H, W] u8 (resized and cropped) and [3, 256] f32, each
    /// channel's byte -> the model's value (rescaled, normalised): looked
    /// up on the model's device, so a quarter of the bytes cross to it.
    Bytes { bytes: Tensor, table: Tensor },
}

impl Pixels {
    /// The images on `device` as `kind`: the values [`ImageProcessor::process`] gives.
    pub fn to_model(&self, device: Device, kind: Kind) -> Tensor {
        match self {
            Pixels::Float(t) => t.to_device(device).to_kind(kind),
            Pixels::Bytes { bytes, table } => {
                // The small table first (a blocking copy), then the images without blocking
                // from pinned memory, queued before the kernels that read them.
                let table = table.to_device(device).view([-1]);
                let b = bytes.to_device_(device, Kind::Uint8, true, false);
                // Indices into the flat table: byte + 256 x channel, as 4-byte integers.
                let mut index = b.to_kind(Kind::Int);
                let channel = Tensor::arange(3, (Kind::Int, device)).view([1, 3, 1, 1]) * 256;
                let _ = index.g_add_(&channel);
                table.index_select(0, &index.view([-1])).view(b.size().as_slice()).to_kind(kind)
            }
        }
    }
}

/// One prepared batch, on the CPU as the loader made it.
#[derive(Default)]
pub struct Batch {
    pub pixels: Option<Pixels>,
    /// Text tower: ids and mask [B, T].
    pub text: Option<(Tensor, Tensor)>,
    /// Decoder prompts: ids and mask [B, T], image tokens expanded.
    pub prompt: Option<(Tensor, Tensor)>,
    /// Images of their own sizes (Qwen2-VL): patch rows [N, patch_len] f32 of
    /// every image concatenated, and each image's (t, h, w) grid, in batch order.
    pub patches: Option<(Tensor, Vec<[i64; 3]>)>,
}

/// One tower's states after a batch: what its hook kept, and what its positions mean.
pub struct TowerStates {
    pub tower: Tower,
    pub capture: Capture,
    pub layout: SequenceLayout,
    /// Where the embeds are one row per token ([B, T', D]), what their
    /// positions mean; `None` where they are one pooled vector per input.
    pub embeds_layout: Option<SequenceLayout>,
}

/// A model family, its config parsed; nothing loaded yet.
pub trait Family: Send + Sync {
    /// Towers, layers, widths, sites and default selectors.
    fn info(&self) -> &ModelInfo;

    /// The tokenizers and image processor that running `towers` needs, read
    /// from the folder and checked against the config (vocabulary, image size).
    fn inputs(&self, md: &ModelDir, towers: &[Tower], has_images: bool) -> Result<InputTools>;

    /// What an image of `width` x `height` pixels becomes (its grid and token
    /// count), for families whose grid depends on the image; `None` where every
    /// image is resized to the model's one size (the towers' token counts say it).
    fn image_grid(&self, _md: &ModelDir, _width: usize, _height: usize) -> Option<Result<String>> {
        None
    }

    /// The weights onto `device` in the run's dtype.
    fn load(&self, md: &ModelDir, device: Device, run: &RunOptions) -> Result<Box<dyn LoadedModel>>;
}

/// A family's model with its weights loaded.
pub trait LoadedModel {
    /// One batch through the model: each tower in `requests` reports its sites.
    fn forward(&self, batch: &Batch, requests: &BTreeMap<Tower, SiteRequest>, device: Device) -> Vec<TowerStates>;

    /// Next-token logits of decoder residual vectors [.., D] (final norm, then
    /// the head), for the logit lens; `None` for families without a decoder.
    fn logits(&self, h: &Tensor) -> Option<Tensor>;

    /// Checkpoint tensors that no parameter took (buffers such as `position_ids` aside).
    fn unused_tensors(&self) -> Vec<String>;
}
