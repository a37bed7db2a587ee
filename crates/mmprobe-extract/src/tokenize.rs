//! Text tokenisation from a checkpoint's `tokenizer.json` with the `tokenizers`
//! crate (or, for SigLIP 1, its `spiece.model` as `SiglipTokenizer` applies
//! it): special tokens added, truncation to the model's positions, batches
//! padded on the right with the tokenizer's pad token, to the longest text or
//! to a fixed length.

use std::path::{Path, PathBuf};

use tch::Tensor;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::error::{ExtractError, Result};
use crate::siglip::tokenizer::SiglipSpTokenizer;

pub struct TextTokenizer {
    backend: Backend,
    path: PathBuf,
    pub pad_id: u32,
    /// Every batch padded to this many positions (SigLIP pads to
    /// `max_length`), else to its longest text.
    pub pad_to: Option<usize>,
    max_len: usize,
}

enum Backend {
    /// tokenizer.json through the `tokenizers` crate.
    Json(Box<Tokenizer>),
    /// SigLIP 1's spiece.model with its canonicalisation.
    SiglipSp(Box<SiglipSpTokenizer>),
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
        Ok(TextTokenizer { backend: Backend::Json(Box::new(inner)), path, pad_id, pad_to: None, max_len })
    }

    /// A SigLIP text tower's tokenizer, every batch padded to `max_len`
    /// positions: tokenizer.json, or (when tokenizer_config.json names
    /// `SiglipTokenizer`, as SigLIP 1 checkpoints do) spiece.model.
    pub fn siglip_from_dir(dir: &Path, max_len: usize, fallback_pad: u32) -> Result<Self> {
        let spiece = dir.join("spiece.model");
        let class = std::fs::read(dir.join("tokenizer_config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v.get("tokenizer_class").and_then(|c| c.as_str()).map(str::to_string));
        let mut tok = if class.as_deref() == Some("SiglipTokenizer") && spiece.is_file() {
            let sp = SiglipSpTokenizer::from_dir(dir)
                .map_err(|message| ExtractError::Tokenizer { path: spiece.clone(), message })?;
            TextTokenizer {
                pad_id: sp.pad_id,
                backend: Backend::SiglipSp(Box::new(sp)),
                path: spiece,
                pad_to: None,
                max_len,
            }
        } else {
            Self::from_dir(dir, max_len, fallback_pad)?
        };
        tok.pad_to = Some(max_len);
        Ok(tok)
    }

    /// The file the tokenizer was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn encode_batch(&self, texts: &[&str]) -> Result<TokenBatch> {
        let err = |e: String| ExtractError::Tokenizer { path: self.path.clone(), message: e };
        // Per text: (id, token) pairs and whether it was cut.
        let rows: Vec<(Vec<(u32, String)>, bool)> = match &self.backend {
            Backend::Json(inner) => inner
                .encode_batch(texts.to_vec(), true)
                .map_err(|e| err(e.to_string()))?
                .into_iter()
                .map(|e| {
                    let cut = !e.get_overflowing().is_empty();
                    (e.get_ids().iter().copied().zip(e.get_tokens().iter().cloned()).collect(), cut)
                })
                .collect(),
            Backend::SiglipSp(sp) => texts
                .iter()
                .map(|t| {
                    let (ids, cut) = sp.encode(t, self.max_len);
                    (ids.into_iter().map(|id| (id, sp.id_to_token(id).unwrap_or_default())).collect(), cut)
                })
                .collect(),
        };
        let tokens: Vec<&[(u32, String)]> = rows.iter().map(|(r, _)| r.as_slice()).collect();
        let (input_ids, attention_mask) =
            pad_batch(&tokens, |(id, _)| *id, self.pad_id, false, self.pad_to.unwrap_or(0));
        Ok(TokenBatch {
            input_ids,
            attention_mask,
            truncated: rows.iter().filter(|(_, cut)| *cut).count(),
            tokens: rows.into_iter().map(|(r, _)| r).collect(),
        })
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        match &self.backend {
            Backend::Json(inner) => inner.id_to_token(id),
            Backend::SiglipSp(sp) => sp.id_to_token(id),
        }
    }

    /// Refuses a tokenizer that can emit an id the model's embedding table has no row for.
    pub fn check_vocab(&self, vocab_size: i64, config: &Path) -> Result<()> {
        match &self.backend {
            Backend::Json(inner) => check_vocab(inner, &self.path, vocab_size, config),
            Backend::SiglipSp(sp) if sp.vocab_size() as i64 > vocab_size => Err(ExtractError::Tokenizer {
                path: self.path.clone(),
                message: format!(
                    "it has {} pieces, but {} gives the model vocab_size {vocab_size}",
                    sp.vocab_size(),
                    config.display()
                ),
            }),
            Backend::SiglipSp(_) => Ok(()),
        }
    }

    /// What tokenizer.json adds around a text (ids before and after it), for checks against the config.
    pub(crate) fn json_specials(&self) -> Option<(Vec<u32>, Vec<u32>)> {
        let Backend::Json(inner) = &self.backend else { return None };
        let plain = inner.encode("x", false).ok()?;
        let full = inner.encode("x", true).ok()?;
        let (p, f) = (plain.get_ids(), full.get_ids());
        let start = f.windows(p.len()).position(|w| w == p)?;
        Some((f[..start].to_vec(), f[start + p.len()..].to_vec()))
    }
}

/// Rows of tokens as one batch: ids and mask [B, T] int64, T the longest row
/// (at least `min_len`, and 1), each row padded with `pad_id` on the left or
/// on the right.
pub(crate) fn pad_batch<T>(
    rows: &[impl AsRef<[T]>],
    id: impl Fn(&T) -> u32,
    pad_id: u32,
    left: bool,
    min_len: usize,
) -> (Tensor, Tensor) {
    let t = rows.iter().map(|r| r.as_ref().len()).max().unwrap_or(0).max(min_len).max(1);
    let b = rows.len();
    let mut ids = vec![pad_id as i64; b * t];
    let mut mask = vec![0i64; b * t];
    for (i, row) in rows.iter().enumerate() {
        let row = row.as_ref();
        let start = i * t + if left { t - row.len() } else { 0 };
        for (j, tok) in row.iter().enumerate() {
            ids[start + j] = id(tok) as i64;
            mask[start + j] = 1;
        }
    }
    let shape = [b as i64, t as i64];
    (Tensor::from_slice(&ids).view(shape), Tensor::from_slice(&mask).view(shape))
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
