//! The `shapes` concept dataset: images of one coloured shape on a textured
//! background, with every generating factor recorded. Colour (8), shape (6),
//! size (3) and position (3 x 3 grid) are named in the caption and asked
//! about in VQA-style questions; the background texture is a nuisance that
//! no caption mentions. Deterministic for a seed.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::ZooError;

pub const COLOURS: [(&str, [u8; 3]); 8] = [
    ("red", [220, 30, 30]),
    ("orange", [245, 140, 20]),
    ("yellow", [235, 220, 40]),
    ("green", [40, 170, 60]),
    ("cyan", [40, 200, 210]),
    ("blue", [40, 70, 220]),
    ("purple", [140, 50, 190]),
    ("pink", [240, 120, 190]),
];
pub const SHAPES: [&str; 6] = ["circle", "square", "triangle", "diamond", "cross", "ring"];
/// Radius as a fraction of the image side: the largest fits its grid cell.
pub const SIZES: [(&str, f64); 3] = [("small", 0.065), ("medium", 0.095), ("large", 0.13)];
pub const ROWS: [&str; 3] = ["top", "middle", "bottom"];
pub const COLS: [&str; 3] = ["left", "centre", "right"];
pub const BACKGROUNDS: [&str; 3] = ["plain", "noise", "stripes"];

pub const TEMPLATES: [&str; 5] = [
    "a {size} {colour} {shape} in the {position}",
    "a {colour} {shape}, {size}, at the {position}",
    "there is a {size} {shape} coloured {colour} in the {position}",
    "{position}: one {colour} {shape} of {size} size",
    "a picture of a {colour} {shape} placed in the {position}, {size}",
];

/// The concepts a caption names, each with its VQA question (after the image).
pub const CONCEPTS: [&str; 4] = ["colour", "shape", "size", "position"];
pub const QUESTIONS: [&str; 4] = [
    "What colour is the shape?",
    "What shape is in the picture?",
    "Is the shape small, medium or large?",
    "Where is the shape?",
];
/// The open question whose answer is [`ShapeSample::description`]: the
/// `prompt` column, so a decoder's states at its last token are not given
/// any concept by the text.
pub const DESCRIBE: &str = "Describe the picture.";

/// A decoder prompt in llava-1.5's chat format, the image first.
pub fn chat_prompt(question: &str) -> String {
    format!("USER: <image> {question} ASSISTANT:")
}

#[derive(Debug, Clone)]
pub struct ShapesParams {
    pub n: usize,
    pub seed: u64,
    /// Image side in pixels.
    pub size: u32,
}

impl Default for ShapesParams {
    fn default() -> Self {
        ShapesParams { n: 1000, seed: 0, size: 64 }
    }
}

/// One generated sample's factors.
#[derive(Debug, Clone, PartialEq)]
pub struct ShapeSample {
    pub colour: usize,
    pub shape: usize,
    pub size: usize,
    pub row: usize,
    pub col: usize,
    pub background: usize,
    pub template: usize,
}

impl ShapeSample {
    pub fn position(&self) -> String {
        if self.row == 1 && self.col == 1 { "centre".into() } else { format!("{} {}", ROWS[self.row], COLS[self.col]) }
    }

    /// Colour, shape, size and position drawn in that order (plain background,
    /// first template). The order of draws is part of every seed's output.
    pub fn random_object(rng: &mut ChaCha8Rng) -> Self {
        ShapeSample {
            colour: rng.random_range(0..COLOURS.len()),
            shape: rng.random_range(0..SHAPES.len()),
            size: rng.random_range(0..SIZES.len()),
            row: rng.random_range(0..3),
            col: rng.random_range(0..3),
            background: 0,
            template: 0,
        }
    }

    /// The answer to the question about `concept` (one of [`CONCEPTS`]).
    pub fn answer(&self, concept: &str) -> String {
        match concept {
            "colour" => COLOURS[self.colour].0.into(),
            "shape" => SHAPES[self.shape].into(),
            "size" => SIZES[self.size].0.into(),
            _ => self.position(),
        }
    }

    /// The answer to [`DESCRIBE`]: every captioned concept in one fixed order.
    pub fn description(&self) -> String {
        format!("{} {} {} in the {}", SIZES[self.size].0, COLOURS[self.colour].0, SHAPES[self.shape], self.position())
    }

    pub fn caption(&self) -> String {
        let text = TEMPLATES[self.template]
            .replace("{size}", SIZES[self.size].0)
            .replace("{colour}", COLOURS[self.colour].0)
            .replace("{shape}", SHAPES[self.shape])
            .replace("{position}", &self.position());
        // "a orange" -> "an orange"
        let words: Vec<&str> = text.split(' ').collect();
        let mut out = Vec::with_capacity(words.len());
        for (i, w) in words.iter().enumerate() {
            let vowel = words.get(i + 1).and_then(|n| n.chars().next()).is_some_and(|c| "aeiou".contains(c));
            out.push(if *w == "a" && vowel { "an" } else { w });
        }
        out.join(" ")
    }
}

/// Every word a caption can hold, in a fixed order (the caption tokenizer's vocabulary).
pub fn caption_words() -> Vec<String> {
    // What a template word keeps once its placeholder is cut: "{position}:" -> ":".
    let fixed = TEMPLATES.iter().flat_map(|t| t.split(' ')).map(|w| w.rsplit('}').next().unwrap_or(w));
    let values = COLOURS.iter().map(|c| c.0).chain(SHAPES).chain(SIZES.iter().map(|s| s.0)).chain(ROWS).chain(COLS);
    distinct_words(["an"].into_iter().chain(fixed).chain(values))
}

/// The words of `texts` (see [`words_of`]) in order of first appearance.
fn distinct_words<'a>(texts: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut words: Vec<String> = Vec::new();
    for w in texts.into_iter().flat_map(words_of) {
        if !words.contains(&w) {
            words.push(w);
        }
    }
    words
}

/// A text's tokens under the word tokenizers' rules (`\w+|[^\w\s]+`, lowercased).
pub fn words_of(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut last_alnum = None;
    for c in text.chars() {
        if c.is_whitespace() {
            if !word.is_empty() {
                out.push(std::mem::take(&mut word));
            }
            last_alnum = None;
            continue;
        }
        let alnum = c.is_alphanumeric() || c == '_';
        if last_alnum.is_some_and(|a| a != alnum) && !word.is_empty() {
            out.push(std::mem::take(&mut word));
        }
        word.extend(c.to_lowercase());
        last_alnum = Some(alnum);
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

/// Every word a VQA prompt or answer can hold, in a fixed order (the
/// shapes-llava tokenizer's vocabulary; `<image>` is a special token).
pub fn vqa_words() -> Vec<String> {
    let prompts: Vec<String> =
        QUESTIONS.iter().chain([&DESCRIBE]).map(|q| chat_prompt(q).replace("<image>", "")).collect();
    let captions = caption_words();
    distinct_words(prompts.iter().chain(&captions).map(String::as_str).chain(["in the"]))
}

/// Whether pixel (x, y) (in units of the image side, centred on the shape) is inside.
fn inside(shape: usize, dx: f64, dy: f64, r: f64) -> bool {
    let (ax, ay) = (dx.abs(), dy.abs());
    match SHAPES[shape] {
        "circle" => dx * dx + dy * dy <= r * r,
        "square" => ax <= r * 0.85 && ay <= r * 0.85,
        "triangle" => dy <= r * 0.8 && dy >= -r && ax <= (dy + r) * 0.6,
        "diamond" => ax + ay <= r,
        "cross" => (ax <= r * 0.3 && ay <= r) || (ay <= r * 0.3 && ax <= r),
        _ => {
            let d2 = dx * dx + dy * dy;
            d2 <= r * r && d2 >= (r * 0.55) * (r * 0.55)
        }
    }
}

/// Draws one sample; `rng` supplies the background texture and the jitter.
pub fn draw(s: &ShapeSample, side: u32, rng: &mut ChaCha8Rng) -> RgbImage {
    let n = side as f64;
    let base = [rng.random_range(150..230u8), rng.random_range(150..230u8), rng.random_range(150..230u8)];
    let phase = rng.random_range(0.0..6.3);
    let period = rng.random_range(4.0..9.0);
    let mut img = RgbImage::from_fn(side, side, |x, y| {
        let v: i32 = match BACKGROUNDS[s.background] {
            "plain" => 0,
            "noise" => rng.random_range(-40..=40),
            _ => ((((x + y) as f64 / period + phase).sin()) * 35.0) as i32,
        };
        Rgb(base.map(|c| (c as i32 + v).clamp(0, 255) as u8))
    });
    // Centre of the grid cell, jittered within it.
    let cell = n / 3.0;
    let jitter = cell * 0.06;
    let cx = (s.col as f64 + 0.5) * cell + rng.random_range(-jitter..jitter);
    let cy = (s.row as f64 + 0.5) * cell + rng.random_range(-jitter..jitter);
    let r = SIZES[s.size].1 * n;
    let colour = Rgb(COLOURS[s.colour].1);
    for y in 0..side {
        for x in 0..side {
            if inside(s.shape, x as f64 + 0.5 - cx, y as f64 + 0.5 - cy, r) {
                img.put_pixel(x, y, colour);
            }
        }
    }
    img
}

/// The endless sequence of samples for a seed, as `generate_shapes` writes
/// them: factors from one seeded stream, each image's texture and jitter from
/// its own (so the first n samples never depend on how many follow).
pub struct ShapeStream {
    seed: u64,
    side: u32,
    factors: ChaCha8Rng,
    next: usize,
}

impl ShapeStream {
    pub fn new(seed: u64, side: u32) -> Self {
        ShapeStream { seed, side, factors: ChaCha8Rng::seed_from_u64(seed), next: 0 }
    }
}

impl Iterator for ShapeStream {
    type Item = (ShapeSample, RgbImage);

    fn next(&mut self) -> Option<Self::Item> {
        let rng = &mut self.factors;
        let mut s = ShapeSample::random_object(rng);
        s.background = rng.random_range(0..BACKGROUNDS.len());
        s.template = rng.random_range(0..TEMPLATES.len());
        let mut img_rng = ChaCha8Rng::seed_from_u64(self.seed.wrapping_mul(1_000_003).wrapping_add(self.next as u64));
        self.next += 1;
        let img = draw(&s, self.side, &mut img_rng);
        Some((s, img))
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

/// Writes DIR/images/NNNNN.png and DIR/data.csv (a dataset manifest, see the README).
pub fn generate_shapes(dir: &Path, p: &ShapesParams) -> Result<PathBuf, ZooError> {
    if p.n == 0 {
        return Err(ZooError::Params("--n must be at least 1".into()));
    }
    if !(16..=1024).contains(&p.size) {
        return Err(ZooError::Params(format!("image size {} is outside 16..=1024", p.size)));
    }
    let io = |path: &Path, e: &dyn std::fmt::Display| ZooError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let images = dir.join("images");
    std::fs::create_dir_all(&images).map_err(|e| io(&images, &e))?;
    let mut csv = String::from("id,image,text,colour,shape,size,position,row,col,background");
    for c in CONCEPTS {
        let _ = write!(csv, ",question_{c},answer_{c}");
    }
    csv.push_str(",prompt\n");
    for (i, (s, img)) in ShapeStream::new(p.seed, p.size).take(p.n).enumerate() {
        let name = format!("images/{i:05}.png");
        img.save(dir.join(&name)).map_err(|e| io(&dir.join(&name), &e))?;
        let mut fields = vec![
            format!("s{i:05}"),
            name,
            s.caption(),
            COLOURS[s.colour].0.into(),
            SHAPES[s.shape].into(),
            SIZES[s.size].0.into(),
            s.position(),
            ROWS[s.row].into(),
            COLS[s.col].into(),
            BACKGROUNDS[s.background].into(),
        ];
        for (c, q) in CONCEPTS.iter().zip(QUESTIONS) {
            fields.push(format!("<image> {q}"));
            fields.push(s.answer(c));
        }
        fields.push(chat_prompt(DESCRIBE));
        csv += &fields.iter().map(|f| csv_field(f)).collect::<Vec<_>>().join(",");
        csv.push('\n');
    }
    let manifest = dir.join("data.csv");
    std::fs::write(&manifest, csv).map_err(|e| io(&manifest, &e))?;
    Ok(manifest)
}
