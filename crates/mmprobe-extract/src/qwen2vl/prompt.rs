//! Qwen2-VL prompts as its processor builds them: the checkpoint's ChatML
//! format (rendered here, not through Jinja), each `<|image_pad|>` expanded to
//! its image's merged token count (t * h * w / 4), then a batch padded on the
//! side the tokenizer names.

use std::path::{Path, PathBuf};

use tch::Tensor;
use tokenizers::Tokenizer;

use crate::error::{ExtractError, Result};
use crate::tokenize::{pad_batch, pad_token};

/// The image placeholder a prompt holds once per image.
pub const IMAGE_PLACEHOLDER: &str = "<|vision_start|><|image_pad|><|vision_end|>";

/// The system turn the Qwen2-VL instruct templates add when the first message is not one.
pub const DEFAULT_SYSTEM: &str = "You are a helpful assistant.";

/// The ChatML prompt of one user turn (the images first, then the text) with
/// the generation prompt, as the Qwen2-VL chat template renders
/// `[{"role": "user", "content": [{"type": "image"}, ..., {"type": "text", ...}]}]`
/// (after a system turn, the default one unless `system` is given).
pub fn chat_prompt(system: Option<&str>, text: &str, images: usize) -> String {
    format!(
        "<|im_start|>system\n{}<|im_end|>\n<|im_start|>user\n{}{text}<|im_end|>\n<|im_start|>assistant\n",
        system.unwrap_or(DEFAULT_SYSTEM),
        IMAGE_PLACEHOLDER.repeat(images)
    )
}

/// One token of an expanded prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Qwen2VlPromptToken {
    pub id: u32,
    pub text: String,
    /// The image (0-based, within the prompt) this position belongs to, and its merged-token index.
    pub image: Option<(usize, usize)>,
}

/// A padded batch: ids and mask [B, T] int64, and each row's tokens (no padding).
pub struct Qwen2VlPromptBatch {
    pub input_ids: Tensor,
    pub attention_mask: Tensor,
    pub tokens: Vec<Vec<Qwen2VlPromptToken>>,
}

pub struct Qwen2VlTokenizer {
    inner: Tokenizer,
    path: PathBuf,
    pub image_token_id: u32,
    pub pad_id: u32,
    pub left_padding: bool,
}

impl Qwen2VlTokenizer {
    pub fn from_dir(dir: &Path, image_token_id: i64, config_pad: Option<i64>) -> Result<Self> {
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
        Ok(Qwen2VlTokenizer { inner, path, image_token_id: image_token_id as u32, pad_id, left_padding })
    }

    /// Tokens of one prompt, the k-th `<|image_pad|>` expanded to `merged[k]` positions.
    pub fn encode(&self, prompt: &str, merged: &[usize]) -> Result<Vec<Qwen2VlPromptToken>> {
        let err = |message: String| ExtractError::Tokenizer { path: self.path.clone(), message };
        let enc = self.inner.encode(prompt, true).map_err(|e| err(e.to_string()))?;
        let mut out = Vec::with_capacity(enc.get_ids().len() + merged.iter().sum::<usize>());
        let mut k = 0;
        for (&id, text) in enc.get_ids().iter().zip(enc.get_tokens()) {
            if id != self.image_token_id {
                out.push(Qwen2VlPromptToken { id, text: text.clone(), image: None });
                continue;
            }
            let n = *merged.get(k).ok_or_else(|| {
                ExtractError::Input(format!("the prompt has more image tokens than its {} image(s)", merged.len()))
            })?;
            out.extend((0..n).map(|j| Qwen2VlPromptToken { id, text: text.clone(), image: Some((k, j)) }));
            k += 1;
        }
        if k != merged.len() {
            return Err(ExtractError::Input(format!(
                "the prompt has {k} image token(s) for {} image(s) (each image needs {IMAGE_PLACEHOLDER})",
                merged.len()
            )));
        }
        Ok(out)
    }

    /// Refuses a tokenizer that can emit an id the decoder's embedding table has no row for.
    pub fn check_vocab(&self, vocab_size: i64, config: &Path) -> Result<()> {
        crate::tokenize::check_vocab(&self.inner, &self.path, vocab_size, config)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Rows of tokens as one batch, padded on the tokenizer's side.
    pub fn pad(&self, rows: Vec<Vec<Qwen2VlPromptToken>>) -> Qwen2VlPromptBatch {
        let (input_ids, attention_mask) = pad_batch(&rows, |t| t.id, self.pad_id, self.left_padding, 0);
        Qwen2VlPromptBatch { input_ids, attention_mask, tokens: rows }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chat_prompt_is_chatml_with_the_image_first() {
        assert_eq!(
            chat_prompt(Some("Answer in one word."), "Describe.", 1),
            "<|im_start|>system\nAnswer in one word.<|im_end|>\n<|im_start|>user\n\
             <|vision_start|><|image_pad|><|vision_end|>Describe.<|im_end|>\n<|im_start|>assistant\n"
        );
    }
}
