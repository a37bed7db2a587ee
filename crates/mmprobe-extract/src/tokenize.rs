//! Text tokenisation from a checkpoint's `tokenizer.json` with the `tokenizers`
//! crate: special tokens added, truncation to the model's positions, batches
//! padded on the right with the tokenizer's pad token.

use std::path::{Path, PathBuf};

use tch::Tensor;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::error::{ExtractError, Result};

pub struct TextTokenizer {
    inner: Tokenizer,
    path: PathBuf,
    pub pad_id: u32,
}

/// A padded batch: ids and mask [B, T] int64, and each row's token strings
/// (without padding).
pub struct TokenBatch {
    pub input_ids: Tensor,
    pub attention_mask: Tensor,
    pub tokens: Vec<Vec<(u32, String)>>,
    /// Rows cut to the model's positions.
    pub truncated: usize,
}

impl TextTokenizer {
    /// `max_len`: the model's position count; `fallback_pad`: the config's
    /// pad_token_id, used only when the tokenizer files name no pad token.
    pub fn from_dir(dir: &Path, max_len: usize, fallback_pad: u32) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let err = |message: String| ExtractError::Tokenizer { path: path.clone(), message };
        if !path.is_file() {
            return Err(err("missing".into()));
        }
        let mut inner = Tokenizer::from_file(&path).map_err(|e| err(e.to_string()))?;
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| err(e.to_string()))?;
        inner.with_padding(None);
        let pad_id = pad_token(dir, &inner).unwrap_or(fallback_pad);
        Ok(TextTokenizer { inner, path, pad_id })
    }

    pub fn encode_batch(&self, texts: &[&str]) -> Result<TokenBatch> {
        let encodings = self
            .inner
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| ExtractError::Tokenizer { path: self.path.clone(), message: e.to_string() })?;
        let t = encodings.iter().map(|e| e.get_ids().len()).max().unwrap_or(0).max(1);
        let b = encodings.len();
        let mut ids = vec![self.pad_id as i64; b * t];
        let mut mask = vec![0i64; b * t];
        let mut tokens = Vec::with_capacity(b);
        for (i, e) in encodings.iter().enumerate() {
            for (j, &id) in e.get_ids().iter().enumerate() {
                ids[i * t + j] = id as i64;
                mask[i * t + j] = 1;
            }
            tokens.push(e.get_ids().iter().copied().zip(e.get_tokens().iter().cloned()).collect());
        }
        Ok(TokenBatch {
            input_ids: Tensor::from_slice(&ids).view([b as i64, t as i64]),
            attention_mask: Tensor::from_slice(&mask).view([b as i64, t as i64]),
            tokens,
            truncated: encodings.iter().filter(|e| !e.get_overflowing().is_empty()).count(),
        })
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Refuses a tokenizer that can emit an id the model's embedding table has no row for.
    pub fn check_vocab(&self, vocab_size: i64, config: &Path) -> Result<()> {
        check_vocab(&self.inner, &self.path, vocab_size, config)
    }
}

pub(crate) fn check_vocab(tok: &Tokenizer, path: &Path, vocab_size: i64, config: &Path) -> Result<()> {
    match tok.get_vocab(true).into_iter().max_by_key(|(_, id)| *id) {
        Some((token, id)) if id as i64 >= vocab_size => Err(ExtractError::Tokenizer {
            path: path.to_path_buf(),
            message: format!(
                "token '{token}' has id {id}, but {} gives the model vocab_size {vocab_size} (ids 0..{vocab_size})",
                config.display()
            ),
        }),
        _ => Ok(()),
    }
}

/// The pad token as transformers would pick it: tokenizer.json's padding
/// settings, else tokenizer_config.json / special_tokens_map.json's pad_token.
pub(crate) fn pad_token(dir: &Path, tok: &Tokenizer) -> Option<u32> {
    if let Some(p) = tok.get_padding() {
        return Some(p.pad_id);
    }
    for file in ["tokenizer_config.json", "special_tokens_map.json"] {
        let Ok(bytes) = std::fs::read(dir.join(file)) else { continue };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else { continue };
        let name = match v.get("pad_token") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(obj) => obj.get("content").and_then(|c| c.as_str()).map(str::to_string),
            None => None,
        };
        if let Some(id) = name.and_then(|n| tok.token_to_id(&n)) {
            return Some(id);
        }
    }
    None
}
