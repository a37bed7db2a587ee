//! A word-level tokenizer for the shapes captions, written as the
//! `tokenizer.json` of the `tokenizers` library (so the Rust extractor and
//! transformers' `PreTrainedTokenizerFast` read the same file), with CLIP's
//! framing: `<|startoftext|> words <|endoftext|>`.

use serde_json::{Value, json};

pub const PAD: &str = "<pad>";
pub const UNK: &str = "<unk>";
pub const BOS: &str = "<|startoftext|>";
pub const EOS: &str = "<|endoftext|>";

/// The special tokens take ids 0..4; words follow in the given order.
/// The EOS id is 3, not 2: transformers treats `eos_token_id == 2` as the
/// legacy openai config and pools at argmax(input_ids) instead of the first EOS.
pub struct CaptionVocab {
    pub tokens: Vec<String>,
}

impl CaptionVocab {
    pub fn new(words: &[String]) -> Self {
        let mut tokens: Vec<String> = [PAD, UNK, BOS, EOS].map(String::from).to_vec();
        tokens.extend(words.iter().map(|w| w.to_lowercase()));
        CaptionVocab { tokens }
    }

    pub fn id(&self, token: &str) -> i64 {
        self.tokens.iter().position(|t| t == token).expect("special tokens are always present") as i64
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
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
        json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [special(PAD), special(UNK), special(BOS), special(EOS)],
            "normalizer": {"type": "Lowercase"},
            // \w+|[^\w\s]+ : words, and punctuation as separate tokens.
            "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": {
                "type": "TemplateProcessing",
                "single": [tok(BOS), seq("A"), tok(EOS)],
                "pair": [tok(BOS), seq("A"), tok(EOS), seq("B"), tok(EOS)],
                "special_tokens": {BOS: framing(BOS), EOS: framing(EOS)}
            },
            "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": UNK}
        })
    }

    /// `tokenizer_config.json`: what transformers' AutoTokenizer needs besides tokenizer.json.
    pub fn tokenizer_config(&self, max_len: usize) -> Value {
        json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": BOS,
            "eos_token": EOS,
            "pad_token": PAD,
            "unk_token": UNK,
            "model_max_length": max_len,
            "padding_side": "right"
        })
    }
}
