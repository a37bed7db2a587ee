//! `preprocessor_config.json` and the CLIP image pipeline of transformers'
//! PIL backend: resize (shortest edge), centre crop (zero-padded when the
//! image is smaller), rescale, normalise; output CHW float32.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::resample::{Filter, Rgb8};
use crate::error::{ExtractError, Result, read_file};

#[derive(Debug, Clone, Deserialize, Default)]
pub struct SizeSpec {
    pub shortest_edge: Option<usize>,
    pub height: Option<usize>,
    pub width: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ImageProcessorConfig {
    #[serde(default = "yes")]
    pub do_resize: bool,
    #[serde(default)]
    pub size: SizeSpec,
    #[serde(default = "bicubic")]
    pub resample: i64,
    #[serde(default = "yes")]
    pub do_center_crop: bool,
    #[serde(default)]
    pub crop_size: SizeSpec,
    #[serde(default = "yes")]
    pub do_rescale: bool,
    #[serde(default = "rescale")]
    pub rescale_factor: f64,
    #[serde(default = "yes")]
    pub do_normalize: bool,
    #[serde(default = "clip_mean")]
    pub image_mean: Vec<f32>,
    #[serde(default = "clip_std")]
    pub image_std: Vec<f32>,
}

pub(crate) fn yes() -> bool {
    true
}
pub(crate) fn bicubic() -> i64 {
    3
}
pub(crate) fn rescale() -> f64 {
    1.0 / 255.0
}
/// OpenAI CLIP's normalisation, transformers' default for CLIP-like processors.
pub(crate) fn clip_mean() -> Vec<f32> {
    vec![0.481_454_66, 0.457_827_5, 0.408_210_73]
}
pub(crate) fn clip_std() -> Vec<f32> {
    vec![0.268_629_54, 0.261_302_6, 0.275_777_1]
}

/// A validated image pipeline.
#[derive(Debug, Clone)]
pub struct ImageProcessor {
    pub config: ImageProcessorConfig,
    filter: Filter,
    crop: Option<(usize, usize)>,
    /// Every output's (height, width): images are stacked into batches.
    output: (usize, usize),
    /// The file the config was read from, for messages.
    source: Option<PathBuf>,
}

impl ImageProcessor {
    /// Reads `preprocessor_config.json` from a model folder, or the
    /// `image_processor` part of `processor_config.json` (what transformers 5
    /// writes for a multimodal processor) when there is none.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("preprocessor_config.json");
        let combined = dir.join("processor_config.json");
        let path = if !single.exists() && combined.exists() { combined.clone() } else { single };
        let bytes = read_file(&path)?;
        let bad = |e: serde_json::Error| ExtractError::BadConfig { path: path.clone(), message: e.to_string() };
        let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(bad)?;
        let mut part = if path == combined { v.get("image_processor").cloned().unwrap_or_default() } else { v };
        class_defaults(&mut part);
        let config: ImageProcessorConfig = serde_json::from_value(part).map_err(bad)?;
        let mut p = Self::new(config).map_err(|message| ExtractError::BadConfig { path: path.clone(), message })?;
        p.source = Some(path);
        Ok(p)
    }

    /// The file the config came from (none when built from a config in memory).
    pub fn config_path(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    pub fn new(config: ImageProcessorConfig) -> std::result::Result<Self, String> {
        let filter = Filter::from_pil(config.resample)
            .ok_or_else(|| format!("resample {} is not supported (2 bilinear, 3 bicubic)", config.resample))?;
        if config.do_resize
            && config.size.shortest_edge.is_none()
            && (config.size.height.is_none() || config.size.width.is_none())
        {
            return Err("size needs shortest_edge or height and width".into());
        }
        let crop = if config.do_center_crop {
            match (config.crop_size.height, config.crop_size.width) {
                (Some(h), Some(w)) => Some((h, w)),
                _ => return Err("crop_size needs height and width".into()),
            }
        } else {
            None
        };
        if config.image_mean.len() != 3 || config.image_std.len() != 3 {
            return Err("image_mean and image_std need 3 values".into());
        }
        let fixed_resize = match (config.do_resize, config.size.height, config.size.width) {
            (true, Some(h), Some(w)) if config.size.shortest_edge.is_none() => Some((h, w)),
            _ => None,
        };
        let output = crop.or(fixed_resize).ok_or_else(|| {
            "outputs would vary in size (no center crop and no fixed height/width), so they cannot be batched"
                .to_string()
        })?;
        Ok(ImageProcessor { config, filter, crop, output, source: None })
    }

    /// The (height, width) of every processed image.
    pub fn output_size(&self) -> (usize, usize) {
        self.output
    }

    /// transformers' `get_resize_output_image_size(default_to_square=False)`.
    fn resized_size(&self, (h, w): (usize, usize)) -> (usize, usize) {
        if !self.config.do_resize {
            return (h, w);
        }
        match self.config.size.shortest_edge {
            Some(s) => {
                let (short, long) = if w <= h { (w, h) } else { (h, w) };
                let new_long = (s as f64 * long as f64 / short as f64) as usize;
                if w <= h { (new_long, s) } else { (s, new_long) }
            }
            None => (self.config.size.height.unwrap_or(h), self.config.size.width.unwrap_or(w)),
        }
    }

    /// Resize and crop: the 8-bit image the model's pixels come from.
    pub fn resize_and_crop(&self, img: &Rgb8) -> Rgb8 {
        let (h, w) = self.resized_size((img.height, img.width));
        match self.crop {
            // The crop lies inside the resized image: only its pixels are resampled.
            Some((ch, cw)) if h >= ch && w >= cw => {
                let (top, left) = ((h - ch) / 2, (w - cw) / 2);
                img.resize_window(w, h, self.filter, top..top + ch, left..left + cw)
            }
            Some((ch, cw)) => center_crop(&img.resize(w, h, self.filter), ch, cw),
            None => img.resize(w, h, self.filter),
        }
    }

    /// CHW float32 in [0, 1] (when rescaling), before normalisation.
    pub fn unnormalised(&self, img: &Rgb8) -> Vec<f32> {
        let img = self.resize_and_crop(img);
        let mut out = vec![0f32; 3 * img.width * img.height];
        self.write(&img, &mut out, false);
        out
    }

    /// CHW float32 pixel values as the model takes them.
    pub fn process(&self, img: &Rgb8) -> Vec<f32> {
        let (h, w) = self.output;
        let mut out = vec![0f32; 3 * h * w];
        self.process_into(img, &mut out);
        out
    }

    /// [`ImageProcessor::process`] into `out` (3 x height x width of [`ImageProcessor::output_size`]),
    /// so a batch is filled in place.
    pub fn process_into(&self, img: &Rgb8, out: &mut [f32]) {
        let img = self.resize_and_crop(img);
        self.write(&img, out, self.config.do_normalize);
    }

    /// The resized and cropped image's bytes into `out` (3 x height x width,
    /// CHW): [`ImageProcessor::table`] maps them to what `process_into` writes.
    pub fn bytes_into(&self, img: &Rgb8, out: &mut [u8]) {
        to_planes(&self.resize_and_crop(img), out, |_, v| v);
    }

    /// Each channel's byte -> the model's value: [3][256], what `process` computes per pixel.
    pub fn table(&self) -> [[f32; 256]; 3] {
        let c = &self.config;
        let scale = if c.do_rescale { c.rescale_factor } else { 1.0 };
        chw_table(scale, c.do_normalize.then_some((&c.image_mean[..], &c.image_std[..])))
    }

    /// Rescales (and normalises) an 8-bit image into CHW floats, with the
    /// arithmetic of transformers' PIL backend: the rescale in f64, the
    /// normalisation in f32.
    fn write(&self, img: &Rgb8, out: &mut [f32], normalize: bool) {
        let c = &self.config;
        let scale = if c.do_rescale { c.rescale_factor } else { 1.0 };
        to_chw(img, out, scale, normalize.then_some((&c.image_mean[..], &c.image_std[..])));
    }
}

/// What each channel's byte becomes, with the arithmetic of transformers'
/// PIL backend: multiplied by `scale` in f64, then (with `norm` = (mean,
/// std)) normalised in f32. A byte has 256 values, so pixels look them up.
fn chw_table(scale: f64, norm: Option<(&[f32], &[f32])>) -> [[f32; 256]; 3] {
    std::array::from_fn(|c| {
        std::array::from_fn(|v| {
            let x = (v as f64 * scale) as f32;
            match norm {
                Some((mean, std)) => (x - mean[c]) / std[c],
                None => x,
            }
        })
    })
}

/// An 8-bit image into CHW floats `out` (3 x height x width), through [`chw_table`].
pub(crate) fn to_chw(img: &Rgb8, out: &mut [f32], scale: f64, norm: Option<(&[f32], &[f32])>) {
    let table = chw_table(scale, norm);
    to_planes(img, out, |c, v| table[c][v as usize]);
}

/// An interleaved RGB image into three planes `out` (3 x height x width):
/// each channel `c`'s byte `v` becomes `value(c, v)`.
fn to_planes<T>(img: &Rgb8, out: &mut [T], value: impl Fn(usize, u8) -> T) {
    let plane = img.width * img.height;
    assert_eq!(out.len(), 3 * plane, "the output holds one image");
    let (r, gb) = out.split_at_mut(plane);
    let (g, b) = gb.split_at_mut(plane);
    for (((px, r), g), b) in img.data.chunks_exact(3).zip(r).zip(g).zip(b) {
        (*r, *g, *b) = (value(0, px[0]), value(1, px[1]), value(2, px[2]));
    }
}

/// The defaults of the processor class the config names, where they differ
/// from CLIP's (the struct's serde defaults). SigLIP's processor resizes to
/// `size` and never crops (it has no crop settings), and normalises with
/// mean = std = 0.5 unless told otherwise.
fn class_defaults(v: &mut serde_json::Value) {
    let class = v.get("image_processor_type").and_then(|c| c.as_str()).unwrap_or("");
    if !class.starts_with("SiglipImageProcessor") {
        return;
    }
    if let Some(obj) = v.as_object_mut() {
        obj.insert("do_center_crop".into(), false.into());
        obj.entry("size").or_insert_with(|| serde_json::json!({"height": 224, "width": 224}));
        for key in ["image_mean", "image_std"] {
            obj.entry(key).or_insert_with(|| serde_json::json!([0.5, 0.5, 0.5]));
        }
    }
}

/// transformers' `center_crop`: a window at ((H - h) // 2, (W - w) // 2), on a
/// zero canvas (image placed at the ceiling of half the shortfall) when the
/// image is smaller than the crop.
fn center_crop(img: &Rgb8, ch: usize, cw: usize) -> Rgb8 {
    let (h, w) = (img.height as i64, img.width as i64);
    let (ch_i, cw_i) = (ch as i64, cw as i64);
    let top_pad = (ch_i - h).max(0).div_euclid(2) + (ch_i - h).max(0).rem_euclid(2);
    let left_pad = (cw_i - w).max(0).div_euclid(2) + (cw_i - w).max(0).rem_euclid(2);
    let top = (h - ch_i).div_euclid(2) + top_pad;
    let left = (w - cw_i).div_euclid(2) + left_pad;
    let mut out = vec![0u8; ch * cw * 3];
    for y in 0..ch_i {
        let sy = top + y - top_pad;
        if sy < 0 || sy >= h {
            continue;
        }
        for x in 0..cw_i {
            let sx = left + x - left_pad;
            if sx < 0 || sx >= w {
                continue;
            }
            let s = ((sy * w + sx) * 3) as usize;
            let d = ((y * cw_i + x) * 3) as usize;
            out[d..d + 3].copy_from_slice(&img.data[s..s + 3]);
        }
    }
    Rgb8::new(cw, ch, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_must_have_one_size() {
        let cfg = |json: &str| ImageProcessor::new(serde_json::from_str(json).unwrap());
        let crop = cfg(r#"{"size": {"shortest_edge": 28}, "crop_size": {"height": 30, "width": 30}}"#).unwrap();
        assert_eq!(crop.output_size(), (30, 30));
        let square = cfg(r#"{"size": {"height": 20, "width": 24}, "do_center_crop": false}"#).unwrap();
        assert_eq!(square.output_size(), (20, 24));
        let varying = cfg(r#"{"size": {"shortest_edge": 28}, "do_center_crop": false}"#).unwrap_err();
        assert!(varying.contains("cannot be batched"), "{varying}");
    }

    #[test]
    fn siglip_resizes_to_its_size_without_a_crop() {
        let mut v =
            serde_json::json!({"image_processor_type": "SiglipImageProcessor", "size": {"height": 30, "width": 30}});
        class_defaults(&mut v);
        let p = ImageProcessor::new(serde_json::from_value(v).unwrap()).unwrap();
        assert_eq!((p.output_size(), p.crop), ((30, 30), None));
        assert_eq!((p.config.image_mean.clone(), p.config.resample), (vec![0.5; 3], 3));
        let mut v = serde_json::json!({"image_processor_type": "SiglipImageProcessorFast"});
        class_defaults(&mut v);
        let p = ImageProcessor::new(serde_json::from_value(v).unwrap()).unwrap();
        assert_eq!(p.output_size(), (224, 224));
    }

    #[test]
    fn crop_pads_small_images_centred() {
        let img = Rgb8::new(1, 1, vec![9, 9, 9]);
        let out = center_crop(&img, 3, 2);
        // canvas 3x2, image at top_pad = ceil(2/2) = 1, left_pad = ceil(1/2) = 1
        let nonzero: Vec<usize> = out.data.chunks(3).enumerate().filter(|(_, p)| p[0] != 0).map(|(i, _)| i).collect();
        assert_eq!(nonzero, vec![3]);
    }
}
