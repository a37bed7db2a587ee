//! Decoding any image file to 8-bit RGB the way transformers' `load_image`
//! does (what its pipelines use for paths): EXIF orientation applied, then
//! Pillow's `convert("RGB")`, which drops alpha rather than compositing it,
//! clamps 16-bit grey at 255 and keeps the high byte of 16-bit colour.
//! JPEGs are decoded by libjpeg-turbo with Pillow's settings (`mmprobe-jpeg`),
//! so their pixels are Pillow's; other formats by the `image` crate.

use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageReader};

use super::resample::Rgb8;
use crate::error::{ExtractError, Result};

/// Pillow's `Image.MAX_IMAGE_PIXELS`: larger images are refused as possible
/// decompression bombs (a few MB of PNG can hold 30000x30000 pixels).
pub const MAX_IMAGE_PIXELS: u64 = 89_478_485;

/// Decodes encoded image bytes; `name` is only used in error messages.
pub fn decode_rgb(bytes: &[u8], name: &str) -> Result<Rgb8> {
    decode_rgb_limited(bytes, name, MAX_IMAGE_PIXELS)
}

/// [`decode_rgb`] refusing images of more than `max_pixels` pixels, judged
/// from the header before any pixel is decoded.
pub fn decode_rgb_limited(bytes: &[u8], name: &str, max_pixels: u64) -> Result<Rgb8> {
    let err = |message: String| ExtractError::Image { path: name.to_string(), message };
    let over_limit = |w: u64, h: u64| {
        (w * h > max_pixels).then(|| {
            err(format!(
                "{w}x{h} is {} pixels, over the limit of {max_pixels} (a decompression bomb?); \
                 raise it with --max-image-pixels if the image is meant to be this large",
                w * h
            ))
        })
    };
    if mmprobe_jpeg::is_jpeg(bytes) {
        let header = mmprobe_jpeg::read_header(bytes).map_err(|e| err(e.to_string()))?;
        if let Some(e) = over_limit(header.width as u64, header.height as u64) {
            return Err(e);
        }
        let rgb = mmprobe_jpeg::decode_rgb(bytes).map_err(|e| err(e.to_string()))?;
        let img = Rgb8::new(rgb.width as usize, rgb.height as usize, rgb.data);
        return Ok(match Orientation::from_exif(mmprobe_jpeg::exif_orientation(bytes)) {
            Some(o) if o != Orientation::NoTransforms => {
                let buf = image::RgbImage::from_raw(img.width as u32, img.height as u32, img.data)
                    .expect("the buffer holds the image");
                let mut img = DynamicImage::ImageRgb8(buf);
                img.apply_orientation(o);
                to_rgb8(img)
            }
            _ => img,
        });
    }
    let reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| err(e.to_string()))?;
    if reader.format().is_none() {
        return Err(err("not an image (unknown format)".into()));
    }
    let mut decoder = reader.into_decoder().map_err(|e| err(e.to_string()))?;
    let (w, h) = decoder.dimensions();
    if let Some(e) = over_limit(w as u64, h as u64) {
        return Err(e);
    }
    let orientation = decoder.orientation().map_err(|e| err(e.to_string()))?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| err(e.to_string()))?;
    img.apply_orientation(orientation);
    Ok(to_rgb8(img))
}

pub fn open_rgb(path: &std::path::Path) -> Result<Rgb8> {
    open_rgb_limited(path, MAX_IMAGE_PIXELS)
}

/// [`open_rgb`] with the pixel limit of [`decode_rgb_limited`].
pub fn open_rgb_limited(path: &std::path::Path, max_pixels: u64) -> Result<Rgb8> {
    let bytes = std::fs::read(path)
        .map_err(|e| ExtractError::Image { path: path.display().to_string(), message: e.to_string() })?;
    decode_rgb_limited(&bytes, &path.display().to_string(), max_pixels)
}

fn to_rgb8(img: DynamicImage) -> Rgb8 {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let data: Vec<u8> = match img {
        DynamicImage::ImageRgb8(b) => b.into_raw(),
        DynamicImage::ImageLuma8(b) => b.into_raw().into_iter().flat_map(|v| [v; 3]).collect(),
        DynamicImage::ImageRgba8(b) => b.into_raw().chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect(),
        DynamicImage::ImageLumaA8(b) => b.into_raw().chunks_exact(2).flat_map(|p| [p[0]; 3]).collect(),
        // Pillow opens 16-bit grey as "I;16", and its RGB conversion clamps at 255.
        DynamicImage::ImageLuma16(b) => b.into_raw().into_iter().flat_map(|v| [v.min(255) as u8; 3]).collect(),
        // Pillow reads 16-bit colour PNGs as 8-bit, keeping the high byte.
        DynamicImage::ImageRgb16(b) => b.into_raw().into_iter().map(|v| (v >> 8) as u8).collect(),
        DynamicImage::ImageRgba16(b) => {
            b.into_raw().chunks_exact(4).flat_map(|p| [0, 1, 2].map(|i| (p[i] >> 8) as u8)).collect()
        }
        DynamicImage::ImageLumaA16(b) => b.into_raw().chunks_exact(2).flat_map(|p| [(p[0] >> 8) as u8; 3]).collect(),
        other => other.to_rgb8().into_raw(),
    };
    Rgb8::new(w, h, data)
}
