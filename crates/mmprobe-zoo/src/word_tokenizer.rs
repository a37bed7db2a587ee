//! Word-level tokenizers for the toy models' closed vocabularies, written as
//! the `tokenizer.json` of the `tokenizers` library (so the Rust extractor and
//! transformers' `PreTrainedTokenizerFast` read the same file). Two framings:
//! CLIP's `<|startoftext|> words <|endoftext|>` for shapes-clip's captions and
//! Llama's `<s> words` for shapes-llava's prompts.

use serde_json::{Value, json};

pub const PAD: &str = "<pad>";
pub const UNK: &str = "<unk>";
pub const CLIP_BOS: &str = "<|startoftext|>";
pub const CLIP_EOS: &str = "<|endoftext|>";
pub const LLAMA_BOS: &str = "<s>";
pub const LLAMA_EOS: &str = "</s>";
pub const IMAGE: &str = "<image>";

/// How an encoded text is framed by special tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Framing {
    /// BOS words EOS (CLIP pools at the EOS).
    Clip,
    /// BOS words (a decoder prompt; generation ends with EOS).
    Llama,
}

/// Special tokens first (ids 0..), words after in the given order.
pub struct WordVocab {
    pub tokens: Vec<String>,
    specials: usize,
    framing: Framing,
}

impl WordVocab {
    /// CLIP captions. The EOS id is 3, not 2: transformers treats
    /// `eos_token_id == 2` as the legacy openai config and pools at
    /// argmax(input_ids) instead of the first EOS.
    pub fn clip(words: &[String]) -> Self {
        Self::with_specials(&[PAD, UNK, CLIP_BOS, CLIP_EOS], words, Framing::Clip)
    }

    /// Llama-style prompts with an `<image>` placeholder (llava-hf's ids: unk 0, bos 1, eos 2).
    pub fn llama(words: &[String]) -> Self {
        Self::with_specials(&[UNK, LLAMA_BOS, LLAMA_EOS, PAD, IMAGE], words, Framing::Llama)
    }

    fn with_specials(specials: &[&str], words: &[String], framing: Framing) -> Self {
        let mut tokens: Vec<String> = specials.iter().map(|s| s.to_string()).collect();
        for w in words.iter().map(|w| w.to_lowercase()) {
            if !tokens.contains(&w) {
                tokens.push(w);
            }
        }
        WordVocab { tokens, specials: specials.len(), framing }
    }

    pub fn id(&self, token: &str) -> i64 {
        self.tokens.iter().position(|t| t == token).unwrap_or_else(|| panic!("'{token}' is not in the vocabulary"))
            as i64
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    fn bos_eos(&self) -> (&'static str, &'static str) {
        match self.framing {
            Framing::Clip => (CLIP_BOS, CLIP_EOS),
            Framing::Llama => (LLAMA_BOS, LLAMA_EOS),
        }
    }

    /// The `tokenizer.json` text.
    pub fn tokenizer_json(&self) -> Value {
        let special = |t: &str| {
            json!({"id": self.id(t), "content": t, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        };
        let vocab: serde_json::Map<String, Value> =
            self.tokens.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
        let tok = |t: &str| json!({"SpecialToken": {"id": t, "type_id": 0}});
        let seq = |s: &str| json!({"Sequence": {"id": s, "type_id": 0}});
        let framing = |t: &str| json!({"id": t, "ids": [self.id(t)], "tokens": [t]});
        let (bos, eos) = self.bos_eos();
        let (single, pair) = match self.framing {
            Framing::Clip => {
                (vec![tok(bos), seq("A"), tok(eos)], vec![tok(bos), seq("A"), tok(eos), seq("B"), tok(eos)])
            }
            Framing::Llama => (vec![tok(bos), seq("A")], vec![tok(bos), seq("A"), tok(bos), seq("B")]),
        };
        let added: Vec<Value> = self.tokens[..self.specials].iter().map(|t| special(t)).collect();
        json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": {"type": "Lowercase"},
            // \w+|[^\w\s]+ : words, and punctuation as separate tokens.
            "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": {
                "type": "TemplateProcessing",
                "single": single,
                "pair": pair,
                "special_tokens": {bos: framing(bos), eos: framing(eos)}
            },
            "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": UNK}
        })
    }

    /// `tokenizer_config.json`: what transformers' AutoTokenizer needs besides tokenizer.json.
    pub fn tokenizer_config(&self, max_len: usize, padding_side: &str) -> Value {
        let (bos, eos) = self.bos_eos();
        let mut v = json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": bos,
            "eos_token": eos,
            "pad_token": PAD,
            "unk_token": UNK,
            "model_max_length": max_len,
            "padding_side": padding_side
        });
        if self.tokens.iter().any(|t| t == IMAGE) {
            v["extra_special_tokens"] = json!({"image_token": IMAGE});
        }
        v
    }
}
