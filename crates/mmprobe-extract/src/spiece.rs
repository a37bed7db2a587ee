//! A SentencePiece unigram model (`spiece.model`) read and applied as
//! libsentencepiece applies it, in Rust: the model's protobuf, its
//! normalisation (the precompiled character map, then the whitespace rules)
//! and the Viterbi segmentation with unknown characters fused.
//!
//! What it covers is what SigLIP 1's tokenizer uses: unigram models whose
//! pieces are normal, control, unknown or unused. Models with user-defined
//! or byte pieces, byte fallback, another segmentation algorithm or
//! whitespace as a suffix are refused when read.

use std::collections::HashMap;
use std::path::Path;

/// The piece types of sentencepiece_model.proto.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl PieceType {
    fn from_proto(v: u64) -> Option<Self> {
        Some(match v {
            1 => PieceType::Normal,
            2 => PieceType::Unknown,
            3 => PieceType::Control,
            4 => PieceType::UserDefined,
            5 => PieceType::Unused,
            6 => PieceType::Byte,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone)]
pub struct Piece {
    pub piece: String,
    pub score: f32,
    pub kind: PieceType,
}

/// The normaliser's settings (NormalizerSpec).
#[derive(Debug, Clone)]
struct Normalizer {
    /// The double-array trie of the character map, as 32-bit units.
    trie: Vec<u32>,
    /// The replacement strings the trie's values point into, each ending in NUL.
    replacements: Vec<u8>,
    add_dummy_prefix: bool,
    remove_extra_whitespaces: bool,
    escape_whitespaces: bool,
}

const SPACE_SYMBOL: &str = "\u{2581}";
/// libsentencepiece's penalty on an unknown character, below the lowest piece score.
const UNK_PENALTY: f32 = 10.0;

/// A unigram SentencePiece model.
#[derive(Debug, Clone)]
pub struct SentencePiece {
    pub pieces: Vec<Piece>,
    pub unk_id: u32,
    normalizer: Normalizer,
    /// Normal pieces: what the segmentation may use.
    vocab: HashMap<String, u32>,
    /// Every piece, for `piece_to_id`.
    all: HashMap<String, u32>,
    /// The longest normal piece, in bytes.
    max_piece_len: usize,
    unk_score: f32,
}

impl SentencePiece {
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
        Self::from_bytes(&bytes)
    }

    /// Parses a serialised ModelProto; one line saying what is wrong or unsupported otherwise.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut trainer = Vec::new();
        let mut norm = Vec::new();
        for field in Fields::new(bytes) {
            match field? {
                (1, Value::Bytes(b)) => pieces.push(parse_piece(b)?),
                (2, Value::Bytes(b)) => trainer = fields(b)?,
                (3, Value::Bytes(b)) => norm = fields(b)?,
                _ => {}
            }
        }
        fn get<'a>(fs: &[(u32, Value<'a>)], n: u32) -> Option<Value<'a>> {
            fs.iter().rev().find(|(k, _)| *k == n).map(|(_, v)| v.clone())
        }
        let int = |fs: &[(u32, Value)], n: u32, default: u64| match get(fs, n) {
            Some(Value::Int(v)) => v,
            _ => default,
        };
        match int(&trainer, 3, 1) {
            1 => {}
            2 => return Err("it is a BPE model; only unigram models are supported".into()),
            t => return Err(format!("its model type {t} is not unigram, the only one supported")),
        }
        if int(&trainer, 35, 0) != 0 {
            return Err("it uses byte fallback, which is not supported".into());
        }
        if int(&trainer, 24, 0) != 0 {
            return Err("it treats whitespace as a suffix, which is not supported".into());
        }
        // unk_id is an int32; protobuf writes negatives as 10-byte varints.
        let unk_id = int(&trainer, 40, 0) as i64 as i32;
        if pieces.is_empty() {
            return Err("it holds no pieces".into());
        }
        if unk_id < 0 || unk_id as usize >= pieces.len() || pieces[unk_id as usize].kind != PieceType::Unknown {
            return Err(format!("its unk_id {unk_id} is not an unknown piece"));
        }
        if let Some(p) = pieces.iter().find(|p| matches!(p.kind, PieceType::UserDefined | PieceType::Byte)) {
            return Err(format!("it has {:?} pieces ('{}'), which are not supported", p.kind, p.piece));
        }
        let charsmap = match get(&norm, 2) {
            Some(Value::Bytes(b)) => b.to_vec(),
            _ => Vec::new(),
        };
        let flag = |n: u32| int(&norm, n, 1) != 0;
        let (trie, replacements) = split_charsmap(&charsmap)?;
        let normalizer = Normalizer {
            trie,
            replacements,
            add_dummy_prefix: flag(3),
            remove_extra_whitespaces: flag(4),
            escape_whitespaces: flag(5),
        };
        let mut vocab = HashMap::new();
        let mut all = HashMap::new();
        let (mut min_score, mut max_len) = (f32::MAX, 0);
        for (i, p) in pieces.iter().enumerate() {
            if all.insert(p.piece.clone(), i as u32).is_some() {
                return Err(format!("the piece '{}' appears twice", p.piece));
            }
            if p.kind == PieceType::Normal {
                vocab.insert(p.piece.clone(), i as u32);
                min_score = min_score.min(p.score);
                max_len = max_len.max(p.piece.len());
            }
        }
        if vocab.is_empty() {
            return Err("it has no normal pieces".into());
        }
        Ok(SentencePiece {
            pieces,
            unk_id: unk_id as u32,
            normalizer,
            vocab,
            all,
            max_piece_len: max_len,
            unk_score: min_score - UNK_PENALTY,
        })
    }

    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// The id of a piece of any type; unknown strings are `unk_id`.
    pub fn piece_to_id(&self, piece: &str) -> u32 {
        self.all.get(piece).copied().unwrap_or(self.unk_id)
    }

    pub fn id_to_piece(&self, id: u32) -> Option<&str> {
        self.pieces.get(id as usize).map(|p| p.piece.as_str())
    }

    /// The text as the model's normaliser makes it: the character map
    /// (longest rule first), leading, repeated and trailing spaces dropped,
    /// a space prefixed, spaces written as U+2581.
    pub fn normalize(&self, input: &str) -> String {
        let n = &self.normalizer;
        let space = if n.escape_whitespaces { SPACE_SYMBOL } else { " " };
        let mut rest = input;
        if n.remove_extra_whitespaces {
            while !rest.is_empty() {
                let (rep, used) = self.normalize_prefix(rest);
                if rep != " " {
                    break;
                }
                rest = &rest[used..];
            }
        }
        let mut out = String::with_capacity(rest.len() + 3);
        if rest.is_empty() {
            return out;
        }
        if n.add_dummy_prefix {
            out.push_str(space);
        }
        let mut prev_space = n.remove_extra_whitespaces;
        while !rest.is_empty() {
            let (rep, used) = self.normalize_prefix(rest);
            let mut rep: &str = &rep;
            if prev_space {
                rep = rep.trim_start_matches(' ');
            }
            if !rep.is_empty() {
                for c in rep.chars() {
                    if c == ' ' && n.escape_whitespaces { out.push_str(SPACE_SYMBOL) } else { out.push(c) }
                }
                prev_space = rep.ends_with(' ');
            }
            rest = &rest[used..];
            if !n.remove_extra_whitespaces {
                prev_space = false;
            }
        }
        if n.remove_extra_whitespaces {
            while out.ends_with(space) {
                out.truncate(out.len() - space.len());
            }
        }
        out
    }

    /// The replacement of the longest character-map rule `input` starts
    /// with and the bytes it covers; else its first character, unchanged.
    fn normalize_prefix<'a>(&'a self, input: &'a str) -> (std::borrow::Cow<'a, str>, usize) {
        if let Some((value, len)) = longest_match(&self.normalizer.trie, input.as_bytes())
            && input.is_char_boundary(len)
        {
            let tail = self.normalizer.replacements.get(value..).unwrap_or_default();
            let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
            return (String::from_utf8_lossy(&tail[..end]), len);
        }
        let len = input.chars().next().map_or(0, char::len_utf8);
        (std::borrow::Cow::Borrowed(&input[..len]), len)
    }

    /// The pieces of a text as `SentencePieceProcessor.encode(text, out_type=str)`
    /// gives them, with their ids: a run of unknown characters is one piece
    /// (its text), id `unk_id`.
    pub fn encode(&self, text: &str) -> Vec<(String, u32)> {
        let normalized = self.normalize(text);
        let mut out: Vec<(String, u32)> = Vec::new();
        for (piece, id) in self.segment(&normalized) {
            match out.last_mut() {
                Some(last) if id == self.unk_id && last.1 == self.unk_id => last.0.push_str(piece),
                _ => out.push((piece.to_string(), id)),
            }
        }
        out
    }

    /// The best segmentation of a normalised text (Viterbi over the normal
    /// pieces; a character no one-character piece covers is an unknown piece).
    fn segment<'a>(&self, s: &'a str) -> Vec<(&'a str, u32)> {
        #[derive(Clone, Copy)]
        struct Best {
            score: f32,
            start: Option<usize>,
            id: u32,
        }
        let n = s.len();
        let mut best = vec![Best { score: 0.0, start: None, id: 0 }; n + 1];
        let mut start = 0;
        while start < n {
            let here = best[start].score;
            let char_len = s[start..].chars().next().map_or(1, char::len_utf8);
            let mut single = false;
            let offer = |best: &mut [Best], end: usize, score: f32, id: u32| {
                let b = &mut best[end];
                if b.start.is_none() || score > b.score {
                    *b = Best { score, start: Some(start), id };
                }
            };
            // Prefixes in increasing length, as libsentencepiece's trie walk visits them.
            for (off, c) in s[start..].char_indices() {
                let end = start + off + c.len_utf8();
                if end - start > self.max_piece_len {
                    break;
                }
                if let Some(&id) = self.vocab.get(&s[start..end]) {
                    offer(&mut best, end, here + self.pieces[id as usize].score, id);
                    single |= end - start == char_len;
                }
            }
            if !single {
                offer(&mut best, start + char_len, here + self.unk_score, self.unk_id);
            }
            start += char_len;
        }
        let mut out = Vec::new();
        let mut end = n;
        while end > 0 {
            let b = best[end];
            let start = b.start.expect("every position is reached (unknown characters at worst)");
            out.push((&s[start..end], b.id));
            end = start;
        }
        out.reverse();
        out
    }
}

/// The trie and the replacement strings of a `precompiled_charsmap`:
/// a little-endian u32 byte length, the trie's u32 units, then the strings.
fn split_charsmap(b: &[u8]) -> Result<(Vec<u32>, Vec<u8>), String> {
    if b.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let bad = || "its precompiled_charsmap is malformed".to_string();
    let size = u32::from_le_bytes(b.get(..4).ok_or_else(bad)?.try_into().map_err(|_| bad())?) as usize;
    let trie_bytes = b.get(4..4 + size).ok_or_else(bad)?;
    if !size.is_multiple_of(4) {
        return Err(bad());
    }
    let trie = trie_bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    Ok((trie, b[4 + size..].to_vec()))
}

/// The longest key of a darts-clone double array that `key` starts with:
/// (its value, its length in bytes).
fn longest_match(trie: &[u32], key: &[u8]) -> Option<(usize, usize)> {
    let has_leaf = |u: u32| (u >> 8) & 1 == 1;
    let value = |u: u32| (u & ((1 << 31) - 1)) as usize;
    let label = |u: u32| u & ((1 << 31) | 0xFF);
    let offset = |u: u32| ((u >> 10) << ((u & (1 << 9)) >> 6)) as usize;
    let mut found = None;
    let mut pos = offset(*trie.first()?);
    for (i, &c) in key.iter().enumerate() {
        if c == 0 {
            break;
        }
        pos ^= c as usize;
        let unit = *trie.get(pos)?;
        if label(unit) != c as u32 {
            break;
        }
        pos ^= offset(unit);
        if has_leaf(unit) {
            found = Some((value(*trie.get(pos)?), i + 1));
        }
    }
    found
}

fn parse_piece(b: &[u8]) -> Result<Piece, String> {
    let mut p = Piece { piece: String::new(), score: 0.0, kind: PieceType::Normal };
    for field in Fields::new(b) {
        match field? {
            (1, Value::Bytes(s)) => p.piece = String::from_utf8(s.to_vec()).map_err(|_| "a piece is not UTF-8")?,
            (2, Value::Fixed32(v)) => p.score = f32::from_bits(v),
            (3, Value::Int(v)) => {
                p.kind = PieceType::from_proto(v).ok_or_else(|| format!("piece type {v} is unknown"))?
            }
            _ => {}
        }
    }
    Ok(p)
}

/// A protobuf field's value, by wire type.
#[derive(Debug, Clone)]
enum Value<'a> {
    Int(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(u32),
}

fn fields(b: &[u8]) -> Result<Vec<(u32, Value<'_>)>, String> {
    Fields::new(b).collect()
}

/// The (field number, value) pairs of one protobuf message.
struct Fields<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Fields<'a> {
    fn new(b: &'a [u8]) -> Self {
        Fields { b, at: 0 }
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.b.get(self.at).ok_or("the model file ends inside a number")?;
            self.at += 1;
            v |= ((byte & 0x7F) as u64) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("the model file holds a malformed number".into())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).ok_or("the model file is truncated")?;
        let s = self.b.get(self.at..end).ok_or("the model file is truncated")?;
        self.at += n;
        Ok(s)
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Value<'a>), String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.b.len() {
            return None;
        }
        let field = (|| {
            let key = self.varint()?;
            let number = (key >> 3) as u32;
            let value = match key & 7 {
                0 => Value::Int(self.varint()?),
                1 => {
                    self.take(8)?;
                    Value::Fixed64
                }
                2 => {
                    let n = self.varint()? as usize;
                    Value::Bytes(self.take(n)?)
                }
                5 => Value::Fixed32(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes"))),
                w => return Err(format!("the model file has a field of wire type {w}, not a SentencePiece model")),
            };
            Ok((number, value))
        })();
        if field.is_err() {
            self.at = self.b.len();
        }
        Some(field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn bytes_field(n: u32, b: &[u8], out: &mut Vec<u8>) {
        varint(((n as u64) << 3) | 2, out);
        varint(b.len() as u64, out);
        out.extend_from_slice(b);
    }

    fn int_field(n: u32, v: u64, out: &mut Vec<u8>) {
        varint((n as u64) << 3, out);
        varint(v, out);
    }

    /// A model with no character map: `<unk>`, then the given normal pieces; trainer fields as given.
    fn model(pieces: &[(&str, f32)], trainer: &[(u32, u64)]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut all = vec![("<unk>", 0.0, 2u64)];
        all.extend(pieces.iter().map(|&(p, s)| (p, s, 1)));
        for (p, s, kind) in all {
            let mut m = Vec::new();
            bytes_field(1, p.as_bytes(), &mut m);
            varint((2 << 3) | 5, &mut m);
            m.extend_from_slice(&s.to_bits().to_le_bytes());
            int_field(3, kind, &mut m);
            bytes_field(1, &m, &mut out);
        }
        let mut t = Vec::new();
        for &(n, v) in trainer {
            int_field(n, v, &mut t);
        }
        bytes_field(2, &t, &mut out);
        out
    }

    #[test]
    fn segments_by_score_and_fuses_unknown_characters() {
        let sp =
            SentencePiece::from_bytes(&model(&[("▁", -1.0), ("a", -2.0), ("▁a", -1.5), ("b", -2.0)], &[])).unwrap();
        assert_eq!(sp.normalize("  a   b "), "▁a▁b");
        let pieces = |t: &str| sp.encode(t).into_iter().map(|(p, _)| p).collect::<Vec<_>>();
        assert_eq!(pieces("a b"), ["▁a", "▁", "b"]);
        assert_eq!(pieces("xyb"), ["▁", "xy", "b"]);
        assert_eq!(sp.encode("xy")[1].1, sp.unk_id);
        assert_eq!((sp.piece_to_id("▁a"), sp.piece_to_id("zz")), (3, 0));
    }

    #[test]
    fn unsupported_models_are_refused_in_one_line() {
        let pieces = [("a", -1.0)];
        let bpe = SentencePiece::from_bytes(&model(&pieces, &[(3, 2)])).unwrap_err();
        assert!(bpe.contains("BPE"), "{bpe}");
        let bytes = SentencePiece::from_bytes(&model(&pieces, &[(35, 1)])).unwrap_err();
        assert!(bytes.contains("byte fallback"), "{bytes}");
        let unk = SentencePiece::from_bytes(&model(&pieces, &[(40, 1)])).unwrap_err();
        assert!(unk.contains("unk_id 1"), "{unk}");
        assert!(SentencePiece::from_bytes(b"\x0b\x01").is_err(), "not a protobuf message");
    }
}
