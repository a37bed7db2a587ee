//! transformers' `Qwen2VLImageProcessor` (PIL backend): images converted to
//! RGB with alpha composited onto white, resized by `smart_resize` to
//! multiples of 28 between `min_pixels` and `max_pixels` (Pillow's bicubic),
//! rescaled and normalised, then cut into 14x14 patches (each repeated over
//! the temporal patch of 2) ordered by 2x2 merge blocks; `image_grid_thw`
//! is (1, height / 14, width / 14).

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageDecoder, ImageReader};
use serde::Deserialize;

use crate::error::{ExtractError, Result, read_file};
use crate::preprocess::decode::{MAX_IMAGE_PIXELS, decode_rgb_limited};
use crate::preprocess::processor::{bicubic, clip_mean, clip_std, rescale, to_chw, yes};
use crate::preprocess::{Filter, Rgb8};

#[derive(Debug, Clone, Deserialize, Default)]
pub struct PixelRange {
    pub shortest_edge: Option<u64>,
    pub longest_edge: Option<u64>,
}

/// `preprocessor_config.json` (or `processor_config.json`'s `image_processor`).
#[derive(Debug, Clone, Deserialize)]
pub struct Qwen2VlProcessorConfig {
    #[serde(default = "yes")]
    pub do_resize: bool,
    /// transformers 5: min / max pixels as `shortest_edge` / `longest_edge`.
    #[serde(default)]
    pub size: PixelRange,
    /// Hub files: min / max pixels at the top (they win over `size`).
    #[serde(default)]
    pub min_pixels: Option<u64>,
    #[serde(default)]
    pub max_pixels: Option<u64>,
    #[serde(default = "bicubic")]
    pub resample: i64,
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
    #[serde(default = "patch")]
    pub patch_size: usize,
    #[serde(default = "two")]
    pub temporal_patch_size: usize,
    #[serde(default = "two")]
    pub merge_size: usize,
}

fn patch() -> usize {
    14
}
fn two() -> usize {
    2
}

/// transformers' `smart_resize`: (height, width) rounded (half to even, as
/// Python's `round`) to multiples of `factor`, then scaled down (floor) or up
/// (ceil) keeping the aspect ratio when the area leaves [min_pixels, max_pixels].
pub fn smart_resize(
    height: usize,
    width: usize,
    factor: usize,
    min_pixels: u64,
    max_pixels: u64,
) -> Result<(usize, usize)> {
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    if height == 0 || width == 0 {
        return Err(ExtractError::Input(format!("an image of {width}x{height} pixels has no area")));
    }
    if h.max(w) / h.min(w) > 200.0 {
        return Err(ExtractError::Input(format!(
            "absolute aspect ratio must be smaller than 200, got {}",
            h.max(w) / h.min(w)
        )));
    }
    let mut hb = (h / f).round_ties_even() * f;
    let mut wb = (w / f).round_ties_even() * f;
    if hb * wb > max_pixels as f64 {
        let beta = (h * w / max_pixels as f64).sqrt();
        hb = f.max((h / beta / f).floor() * f);
        wb = f.max((w / beta / f).floor() * f);
    } else if hb * wb < min_pixels as f64 {
        let beta = (min_pixels as f64 / (h * w)).sqrt();
        hb = (h * beta / f).ceil() * f;
        wb = (w * beta / f).ceil() * f;
    }
    Ok((hb as usize, wb as usize))
}

/// One image's patches: rows of `channels x temporal x patch x patch` values.
#[derive(Debug, Clone)]
pub struct ImagePatches {
    /// [patches * patch_len] row-major f32.
    pub values: Vec<f32>,
    /// (t, h, w) in patches.
    pub grid_thw: [i64; 3],
}

impl ImagePatches {
    pub fn patches(&self) -> i64 {
        self.grid_thw.iter().product()
    }
}

/// A validated Qwen2-VL image pipeline.
#[derive(Debug, Clone)]
pub struct Qwen2VlImageProcessor {
    pub config: Qwen2VlProcessorConfig,
    pub min_pixels: u64,
    pub max_pixels: u64,
    filter: Filter,
    source: Option<PathBuf>,
}

impl Qwen2VlImageProcessor {
    /// Reads `preprocessor_config.json`, or `processor_config.json`'s `image_processor`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("preprocessor_config.json");
        let combined = dir.join("processor_config.json");
        let path = if !single.exists() && combined.exists() { combined.clone() } else { single };
        let bytes = read_file(&path)?;
        let bad = |message: String| ExtractError::BadConfig { path: path.clone(), message };
        let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        let part = if path == combined { v.get("image_processor").cloned().unwrap_or_default() } else { v };
        let config: Qwen2VlProcessorConfig = serde_json::from_value(part).map_err(|e| bad(e.to_string()))?;
        let mut p = Self::new(config).map_err(bad)?;
        p.source = Some(path);
        Ok(p)
    }

    pub fn new(config: Qwen2VlProcessorConfig) -> std::result::Result<Self, String> {
        let filter = Filter::from_pil(config.resample)
            .ok_or_else(|| format!("resample {} is not supported (2 bilinear, 3 bicubic)", config.resample))?;
        if config.image_mean.len() != 3 || config.image_std.len() != 3 {
            return Err("image_mean and image_std need 3 values".into());
        }
        if config.merge_size != 2 || config.patch_size == 0 || config.temporal_patch_size == 0 {
            return Err(format!(
                "merge_size {} / patch_size {} are not supported (merge 2)",
                config.merge_size, config.patch_size
            ));
        }
        let min_pixels = config.min_pixels.or(config.size.shortest_edge).unwrap_or(56 * 56);
        let max_pixels = config.max_pixels.or(config.size.longest_edge).unwrap_or(28 * 28 * 1280);
        if min_pixels > max_pixels {
            return Err(format!("min_pixels {min_pixels} is over max_pixels {max_pixels}"));
        }
        Ok(Qwen2VlImageProcessor { config, min_pixels, max_pixels, filter, source: None })
    }

    /// The file the config came from.
    pub fn config_path(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    fn factor(&self) -> usize {
        self.config.patch_size * self.config.merge_size
    }

    /// The (height, width) in pixels an image of `(height, width)` is resized to.
    pub fn resized_size(&self, height: usize, width: usize) -> Result<(usize, usize)> {
        if !self.config.do_resize {
            return Ok((height, width));
        }
        smart_resize(height, width, self.factor(), self.min_pixels, self.max_pixels)
    }

    /// `image_grid_thw` of an image of `(height, width)`.
    pub fn grid_thw(&self, height: usize, width: usize) -> Result<[i64; 3]> {
        let (h, w) = self.resized_size(height, width)?;
        let p = self.config.patch_size;
        let f = self.factor();
        if h % f != 0 || w % f != 0 {
            return Err(ExtractError::Input(format!("{w}x{h} is not a multiple of {f} pixels")));
        }
        Ok([1, (h / p) as i64, (w / p) as i64])
    }

    /// The image's patches and grid, as the processor's `pixel_values` rows.
    pub fn process(&self, img: &Rgb8) -> Result<ImagePatches> {
        let grid_thw = self.grid_thw(img.height, img.width)?;
        let (h, w) = ((grid_thw[1] as usize) * self.config.patch_size, (grid_thw[2] as usize) * self.config.patch_size);
        let resized = if (h, w) == (img.height, img.width) { img.clone() } else { img.resize(w, h, self.filter) };
        let chw = self.normalised(&resized);
        Ok(ImagePatches { values: self.patchify(&chw, h, w), grid_thw })
    }

    /// CHW f32: rescaled in f64, normalised in f32 (transformers' PIL backend).
    fn normalised(&self, img: &Rgb8) -> Vec<f32> {
        let c = &self.config;
        let scale = if c.do_rescale { c.rescale_factor } else { 1.0 };
        let mut out = vec![0f32; 3 * img.width * img.height];
        to_chw(img, &mut out, scale, c.do_normalize.then_some((&c.image_mean[..], &c.image_std[..])));
        out
    }

    /// Rows over 2x2 merge blocks in raster order of the merged grid, inside
    /// a block (0,0), (0,1), (1,0), (1,1); each row [channel][temporal][y][x].
    fn patchify(&self, chw: &[f32], h: usize, w: usize) -> Vec<f32> {
        let (p, t, m) = (self.config.patch_size, self.config.temporal_patch_size, self.config.merge_size);
        let (gh, gw) = (h / p, w / p);
        let row_len = 3 * t * p * p;
        let mut out = Vec::with_capacity(gh * gw * row_len);
        for br in 0..gh / m {
            for bc in 0..gw / m {
                for sr in 0..m {
                    for sc in 0..m {
                        let (y0, x0) = ((br * m + sr) * p, (bc * m + sc) * p);
                        for ch in 0..3 {
                            for _ in 0..t {
                                for y in 0..p {
                                    let start = ch * h * w + (y0 + y) * w + x0;
                                    out.extend_from_slice(&chw[start..start + p]);
                                }
                            }
                        }
                    }
                }
            }
        }
        out
    }
}

/// The (row, col) patch cell of each `pixel_values` row of one image of grid
/// (t, h, w), in the processor's row order; t copies for t frames.
pub fn patch_cells(grid_thw: [i64; 3], merge: i64) -> Vec<(i64, i64)> {
    let [t, h, w] = grid_thw;
    let mut out = Vec::with_capacity((t * h * w) as usize);
    for _ in 0..t {
        for br in 0..h / merge {
            for bc in 0..w / merge {
                for sr in 0..merge {
                    for sc in 0..merge {
                        out.push((br * merge + sr, bc * merge + sc));
                    }
                }
            }
        }
    }
    out
}

/// Decodes an image file as transformers' Qwen2-VL processor sees it: as
/// [`decode_rgb_limited`], except that an image with an alpha channel is
/// composited onto white (Pillow's `alpha_composite` arithmetic) rather
/// than having its alpha dropped.
pub fn decode_rgb_on_white(bytes: &[u8], name: &str, max_pixels: u64) -> Result<Rgb8> {
    if !mmprobe_jpeg::is_jpeg(bytes)
        && let Some(rgba) = decode_rgba(bytes, name, max_pixels)?
    {
        return Ok(composite_on_white(&rgba));
    }
    decode_rgb_limited(bytes, name, max_pixels)
}

/// [`decode_rgb_on_white`] of a file.
pub fn open_rgb_on_white(path: &Path) -> Result<Rgb8> {
    let bytes = std::fs::read(path)
        .map_err(|e| ExtractError::Image { path: path.display().to_string(), message: e.to_string() })?;
    decode_rgb_on_white(&bytes, &path.display().to_string(), MAX_IMAGE_PIXELS)
}

/// RGBA8 of an image that has alpha (16-bit channels keep their high byte,
/// as Pillow reads them), orientation applied; `None` for images without alpha.
fn decode_rgba(bytes: &[u8], name: &str, max_pixels: u64) -> Result<Option<image::RgbaImage>> {
    let err = |message: String| ExtractError::Image { path: name.to_string(), message };
    let reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| err(e.to_string()))?;
    if reader.format().is_none() {
        return Ok(None);
    }
    let mut decoder = reader.into_decoder().map_err(|e| err(e.to_string()))?;
    if !decoder.color_type().has_alpha() {
        return Ok(None);
    }
    let (w, h) = decoder.dimensions();
    if w as u64 * h as u64 > max_pixels {
        // The plain decoder words the refusal.
        return Ok(None);
    }
    let orientation = decoder.orientation().map_err(|e| err(e.to_string()))?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| err(e.to_string()))?;
    img.apply_orientation(orientation);
    Ok(Some(match img {
        DynamicImage::ImageRgba8(b) => b,
        DynamicImage::ImageLumaA8(b) => {
            let (w, h) = b.dimensions();
            let data = b.into_raw().chunks_exact(2).flat_map(|p| [p[0], p[0], p[0], p[1]]).collect();
            image::RgbaImage::from_raw(w, h, data).expect("the buffer holds the image")
        }
        other => {
            let (w, h) = (other.width(), other.height());
            let data: Vec<u8> = match other {
                DynamicImage::ImageRgba16(b) => b.into_raw().into_iter().map(|v| (v >> 8) as u8).collect(),
                DynamicImage::ImageLumaA16(b) => b
                    .into_raw()
                    .chunks_exact(2)
                    .flat_map(|p| {
                        let (l, a) = ((p[0] >> 8) as u8, (p[1] >> 8) as u8);
                        [l, l, l, a]
                    })
                    .collect(),
                other => other.to_rgba8().into_raw(),
            };
            image::RgbaImage::from_raw(w, h, data).expect("the buffer holds the image")
        }
    }))
}

/// Pillow's `Image.alpha_composite(white, image).convert("RGB")`: its
/// integer blend with 7 extra bits, divisions by 255 rounded.
fn composite_on_white(img: &image::RgbaImage) -> Rgb8 {
    const BITS: u32 = 7;
    let div255 = |a: u32| ((a >> 8) + a) >> 8;
    let data = img
        .as_raw()
        .chunks_exact(4)
        .flat_map(|p| {
            let a = p[3] as u32;
            if a == 0 {
                return [255u8; 3];
            }
            // The background's alpha is 255: the output alpha is opaque.
            let blend = 255 * (255 - a);
            let outa255 = a * 255 + blend;
            let coef1 = a * 255 * 255 * (1 << BITS) / outa255;
            let coef2 = 255 * (1 << BITS) - coef1;
            [0, 1, 2].map(|c| {
                let tmp = p[c] as u32 * coef1 + 255 * coef2;
                (div255(tmp + (0x80 << BITS)) >> BITS) as u8
            })
        })
        .collect();
    Rgb8::new(img.width() as usize, img.height() as usize, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_resize_rounds_half_to_even_and_keeps_within_bounds() {
        // 70 / 28 = 2.5 goes to 2, as Python's round.
        assert_eq!(smart_resize(70, 42, 28, 56 * 56, 112 * 112).unwrap(), (56, 56));
        assert_eq!(smart_resize(1, 150, 28, 3136, 12544).unwrap(), (28, 700));
        assert!(smart_resize(1, 300, 28, 3136, 12544).is_err(), "aspect over 200");
    }

    #[test]
    fn patches_run_over_merge_blocks() {
        let cells = patch_cells([1, 4, 6], 2);
        assert_eq!(&cells[..6], &[(0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (0, 3)]);
        assert_eq!(cells.len(), 24);
        assert_eq!(cells[12], (2, 0));
    }

    #[test]
    fn alpha_is_composited_onto_white() {
        let img = image::RgbaImage::from_raw(3, 1, vec![10, 20, 30, 0, 10, 20, 30, 255, 0, 100, 200, 128]).unwrap();
        let rgb = composite_on_white(&img);
        assert_eq!(&rgb.data[..6], &[255, 255, 255, 10, 20, 30]);
        // Half transparent: about halfway to white.
        assert_eq!(&rgb.data[6..], &[127, 177, 227]);
    }
}
