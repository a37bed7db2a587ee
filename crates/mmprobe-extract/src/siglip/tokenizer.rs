//! SigLIP 1's tokenizer as transformers' `SiglipTokenizer` applies it: a
//! SentencePiece model (`spiece.model`, read by [`crate::spiece`]) behind a
//! Python-side canonicalisation of each text.
//!
//! For one text: U+2581 becomes a space and one U+2581 is put in front; the
//! special tokens (`</s>`, `<unk>`, and any other added token) are split out
//! and kept whole; every stretch between them is canonicalised (lowercased
//! when `do_lower_case`, ASCII punctuation deleted, whitespace runs made one
//! space, both ends stripped) and encoded by SentencePiece behind the unknown
//! token's text, whose own pieces are then dropped; a leading lone "▁" before
//! a special token is dropped; `</s>` is appended unless the ids end with it,
//! after cutting them to leave it room.

use std::collections::HashMap;
use std::path::Path;

use crate::spiece::SentencePiece;

const SPIECE_UNDERLINE: char = '\u{2581}';

pub struct SiglipSpTokenizer {
    sp: SentencePiece,
    do_lower_case: bool,
    /// Added tokens split out of texts before SentencePiece runs, with their ids.
    added: HashMap<String, u32>,
    /// The special tokens (`all_special_tokens`).
    special: Vec<String>,
    unk_token: String,
    /// How many pieces the unknown token's text alone encodes to.
    unk_len: usize,
    pub eos_id: u32,
    pub pad_id: u32,
}

/// A token string from tokenizer_config.json: a string or `{"content": ...}`.
fn token_text(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        obj => obj.get("content").and_then(|c| c.as_str()).map(str::to_string),
    }
}

/// Python's `str.isspace`, what `re`'s `\s` and `str.strip()` use on text.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

impl SiglipSpTokenizer {
    /// Reads `spiece.model` and `tokenizer_config.json` (its special tokens
    /// and `do_lower_case`) from a checkpoint folder.
    pub fn from_dir(dir: &Path) -> Result<Self, String> {
        let sp = SentencePiece::from_file(&dir.join("spiece.model"))?;
        let cfg: serde_json::Value = match std::fs::read(dir.join("tokenizer_config.json")) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| format!("tokenizer_config.json: {e}"))?,
            Err(_) => serde_json::Value::Null,
        };
        let named = |key: &str, default: &str| token_text(cfg.get(key)).unwrap_or_else(|| default.to_string());
        let (eos, unk, pad) = (named("eos_token", "</s>"), named("unk_token", "<unk>"), named("pad_token", "</s>"));
        let mut special = vec![eos.clone(), unk.clone(), pad.clone()];
        for key in ["additional_special_tokens", "extra_special_tokens"] {
            if let Some(list) = cfg.get(key).and_then(|v| v.as_array()) {
                special.extend(list.iter().filter_map(|v| token_text(Some(v))));
            }
        }
        let mut seen = std::collections::HashSet::new();
        special.retain(|s| seen.insert(s.clone()));
        let mut added: HashMap<String, u32> = HashMap::new();
        if let Some(map) = cfg.get("added_tokens_decoder").and_then(|v| v.as_object()) {
            for (id, tok) in map {
                if let (Ok(id), Some(text)) = (id.parse::<u32>(), token_text(Some(tok))) {
                    added.insert(text, id);
                }
            }
        }
        for s in &special {
            if !added.contains_key(s) {
                let id = sp.piece_to_id(s);
                if sp.id_to_piece(id) != Some(s.as_str()) {
                    return Err(format!("the special token '{s}' is not a piece of spiece.model"));
                }
                added.insert(s.clone(), id);
            }
        }
        let unk_len = sp.encode(&unk).len();
        Ok(SiglipSpTokenizer {
            do_lower_case: cfg.get("do_lower_case").and_then(|v| v.as_bool()).unwrap_or(true),
            eos_id: added[&eos],
            pad_id: added[&pad],
            added,
            special,
            unk_token: unk,
            unk_len,
            sp,
        })
    }

    /// The vocabulary size (the model's pieces; added tokens are among them).
    pub fn vocab_size(&self) -> usize {
        self.sp.len().max(self.added.values().map(|&i| i as usize + 1).max().unwrap_or(0))
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.added
            .iter()
            .find(|(_, i)| **i == id)
            .map(|(t, _)| t.clone())
            .or_else(|| self.sp.id_to_piece(id).map(str::to_string))
    }

    /// `canonicalize_text`: lowercase (when `do_lower_case`), ASCII
    /// punctuation deleted, whitespace runs as one space, ends stripped.
    pub fn canonicalize(&self, text: &str) -> String {
        let lowered;
        let text = if self.do_lower_case {
            lowered = text.to_lowercase();
            &lowered
        } else {
            text
        };
        let mut out = String::with_capacity(text.len());
        let mut in_space = false;
        for c in text.chars().filter(|c| !c.is_ascii_punctuation()) {
            if is_py_space(c) {
                if !in_space {
                    out.push(' ');
                }
                in_space = true;
            } else {
                out.push(c);
                in_space = false;
            }
        }
        out.trim_matches(is_py_space).to_string()
    }

    /// One stretch without special tokens: canonicalised, then SentencePiece
    /// behind the unknown token's text, whose pieces are dropped.
    fn encode_stretch(&self, text: &str) -> Vec<String> {
        let text = self.canonicalize(text);
        let pieces = self.sp.encode(&format!("{}{text}", self.unk_token));
        let skip = if pieces.len() >= self.unk_len { self.unk_len } else { 0 };
        pieces.into_iter().skip(skip).map(|(p, _)| p).collect()
    }

    /// The text cut at the added tokens (longest first where several start at one place).
    fn split<'a>(&self, text: &'a str) -> Vec<&'a str> {
        let mut out = Vec::new();
        let (mut from, mut i) = (0, 0);
        while i < text.len() {
            let hit = self
                .added
                .keys()
                .filter(|t| !t.is_empty() && text[i..].starts_with(t.as_str()))
                .max_by_key(|t| t.len());
            match hit {
                Some(t) => {
                    out.push(&text[from..i]);
                    out.push(&text[i..i + t.len()]);
                    i += t.len();
                    from = i;
                }
                None => i += text[i..].chars().next().map_or(1, char::len_utf8),
            }
        }
        out.push(&text[from..]);
        out.retain(|s| !s.is_empty());
        out
    }

    /// The tokens of a text (no `</s>` added), as `SiglipTokenizer.tokenize` gives them.
    pub fn tokenize(&self, text: &str) -> Vec<String> {
        let text = format!("{SPIECE_UNDERLINE}{}", text.replace(SPIECE_UNDERLINE, " "));
        let mut tokens = Vec::new();
        for part in self.split(&text) {
            if self.added.contains_key(part) {
                tokens.push(part.to_string());
            } else {
                tokens.extend(self.encode_stretch(part));
            }
        }
        if tokens.len() > 1 && tokens[0] == SPIECE_UNDERLINE.to_string() && self.special.contains(&tokens[1]) {
            tokens.remove(0);
        }
        tokens
    }

    /// The ids of a text as the model takes it: at most `max_len`, ending in
    /// `</s>`; and whether the text was cut to fit.
    pub fn encode(&self, text: &str, max_len: usize) -> (Vec<u32>, bool) {
        let mut ids: Vec<u32> = self
            .tokenize(text)
            .iter()
            .map(|t| self.added.get(t).copied().unwrap_or_else(|| self.sp.piece_to_id(t)))
            .collect();
        let truncated = ids.len() + 1 > max_len;
        if truncated {
            ids.truncate(max_len.saturating_sub(1));
        }
        if ids.last() != Some(&self.eos_id) {
            ids.push(self.eos_id);
        }
        (ids, truncated)
    }
}
