//! LLaVA prompts as transformers' LlavaProcessor builds them: the `<image>`
//! token expanded to `image_seq_length` positions, then a batch padded on the
//! side the tokenizer names (tokenizer_config.json `padding_side`).

use std::path::{Path, PathBuf};

use tch::Tensor;
use tokenizers::Tokenizer;

use crate::error::{ExtractError, Result};
use crate::tokenize::{pad_batch, pad_token};

/// The prompt used when a row has no `prompt` column: llava-1.5's format.
pub fn default_prompt(text: Option<&str>, has_image: bool) -> String {
    let question = text.filter(|t| !t.trim().is_empty()).unwrap_or("What is shown in the image?");
    if has_image { format!("USER: <image>\n{question} ASSISTANT:") } else { format!("USER: {question} ASSISTANT:") }
}

/// Row `i`'s decoder prompt: its `prompt`, else llava-1.5's template around its text.
pub fn row_prompt(dataset: &mmprobe_store::Dataset, i: usize) -> String {
    match dataset.prompt(i).filter(|p| !p.trim().is_empty()) {
        Some(p) => p.to_string(),
        None => default_prompt(dataset.text(i), dataset.images.is_some()),
    }
}

/// One token of an expanded prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptToken {
    pub id: u32,
    pub text: String,
    pub image: bool,
}

/// A padded batch: ids and mask [B, T] int64, and each row's tokens (no padding).
pub struct PromptBatch {
    pub input_ids: Tensor,
    pub attention_mask: Tensor,
    pub tokens: Vec<Vec<PromptToken>>,
}

pub struct PromptTokenizer {
    inner: Tokenizer,
    path: PathBuf,
    pub image_token_id: u32,
    pub image_seq_length: usize,
    pub pad_id: u32,
    pub left_padding: bool,
}

impl PromptTokenizer {
    pub fn from_dir(dir: &Path, image_token_id: i64, image_seq_length: i64, config_pad: Option<i64>) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let err = |message: String| ExtractError::Tokenizer { path: path.clone(), message };
        if !path.is_file() {
            return Err(err("missing".into()));
        }
        let mut inner = Tokenizer::from_file(&path).map_err(|e| err(e.to_string()))?;
        inner.with_truncation(None).map_err(|e| err(e.to_string()))?;
        inner.with_padding(None);
        let settings: serde_json::Value = std::fs::read(dir.join("tokenizer_config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let left_padding = settings.get("padding_side").and_then(|v| v.as_str()) == Some("left");
        let pad_id = pad_token(dir, &inner).or(config_pad.map(|p| p as u32)).unwrap_or(0);
        Ok(PromptTokenizer {
            inner,
            path,
            image_token_id: image_token_id as u32,
            image_seq_length: image_seq_length as usize,
            pad_id,
            left_padding,
        })
    }

    /// Tokens of one prompt, the image token expanded.
    pub fn encode(&self, prompt: &str) -> Result<Vec<PromptToken>> {
        let enc = self
            .inner
            .encode(prompt, true)
            .map_err(|e| ExtractError::Tokenizer { path: self.path.clone(), message: e.to_string() })?;
        let mut out = Vec::with_capacity(enc.get_ids().len() + self.image_seq_length);
        for (&id, text) in enc.get_ids().iter().zip(enc.get_tokens()) {
            let image = id == self.image_token_id;
            let copies = if image { self.image_seq_length } else { 1 };
            out.extend(std::iter::repeat_n(PromptToken { id, text: text.clone(), image }, copies));
        }
        Ok(out)
    }

    pub fn encode_batch(&self, prompts: &[&str]) -> Result<PromptBatch> {
        Ok(self.pad(prompts.iter().map(|p| self.encode(p)).collect::<Result<Vec<_>>>()?))
    }

    /// Refuses a tokenizer that can emit an id the decoder's embedding table has no row for.
    pub fn check_vocab(&self, vocab_size: i64, config: &Path) -> Result<()> {
        crate::tokenize::check_vocab(&self.inner, &self.path, vocab_size, config)
    }

    /// Text of generated ids, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| ExtractError::Tokenizer { path: self.path.clone(), message: e.to_string() })
    }

    /// The id of a token, when the vocabulary has it.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Rows of tokens as one batch, padded on the tokenizer's side.
    pub fn pad(&self, rows: Vec<Vec<PromptToken>>) -> PromptBatch {
        let (input_ids, attention_mask) = pad_batch(&rows, |t| t.id, self.pad_id, self.left_padding, 0);
        PromptBatch { input_ids, attention_mask, tokens: rows }
    }
}
