//! Decoding any image file to 8-bit RGB the way transformers' `load_image`
//! does (what its pipelines use for paths): EXIF orientation applied, then
//! Pillow's `convert("RGB")`, which drops alpha rather than compositing it,
//! clamps 16-bit grey at 255 and keeps the high byte of 16-bit colour.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};

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
    let reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| err(e.to_string()))?;
    match reader.format() {
        None => return Err(err("not an image (unknown format)".into())),
        Some(ImageFormat::Jpeg) => jpeg_complete(bytes).map_err(err)?,
        Some(_) => {}
    }
    let mut decoder = reader.into_decoder().map_err(|e| err(e.to_string()))?;
    let (w, h) = decoder.dimensions();
    if w as u64 * h as u64 > max_pixels {
        return Err(err(format!(
            "{w}x{h} is {} pixels, over the limit of {max_pixels} (a decompression bomb?); \
             raise it with --max-image-pixels if the image is meant to be this large",
            w as u64 * h as u64
        )));
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

/// Pillow refuses a JPEG whose data ends early ("image file is truncated"),
/// while the `image` crate fills the missing rows with grey. A JPEG is taken
/// as complete only when its segments and scans run to an end-of-image marker.
fn jpeg_complete(b: &[u8]) -> std::result::Result<(), String> {
    let truncated =
        |at: usize| Err(format!("truncated JPEG: the data ends at byte {at} before its end-of-image marker"));
    let mut i = 2; // after the start-of-image marker
    loop {
        // Like libjpeg, skip stray bytes and fill bytes before a marker.
        while i < b.len() && (b[i] != 0xFF || b.get(i + 1) == Some(&0xFF)) {
            i += 1;
        }
        if i + 1 >= b.len() {
            return truncated(b.len());
        }
        let marker = b[i + 1];
        i += 2;
        match marker {
            0xD9 => return Ok(()),
            // Standalone markers: no length follows.
            0x01 | 0xD0..=0xD8 => continue,
            _ => {}
        }
        let Some(len) = b.get(i..i + 2).map(|l| u16::from_be_bytes([l[0], l[1]]) as usize) else {
            return truncated(b.len());
        };
        i += len;
        if i > b.len() {
            return truncated(b.len());
        }
        if marker == 0xDA {
            // Entropy-coded data: 0xFF is followed by a stuffed 0x00 or a restart
            // marker inside it; any other marker ends the scan.
            while i + 1 < b.len() && !(b[i] == 0xFF && b[i + 1] != 0x00 && !(0xD0..=0xD7).contains(&b[i + 1])) {
                i += 1;
            }
        }
    }
}
