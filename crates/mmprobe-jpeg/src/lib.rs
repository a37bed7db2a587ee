//! JPEG bytes to 8-bit RGB exactly as Pillow's `Image.open(f).convert("RGB")`
//! gives them, which is what transformers' `load_image` feeds a processor
//! (after `ImageOps.exif_transpose`, which is the caller's: see
//! [`exif_orientation`]).
//!
//! Pillow decodes JPEGs with libjpeg-turbo; so does this crate, with Pillow's
//! settings (its `JpegDecode.c` outside draft mode): the accurate integer IDCT
//! (`JDCT_ISLOW`), fancy chroma upsampling, libjpeg's own guess of the file's
//! colour space, and output in the mode Pillow picks from the component
//! count: 1 -> `L`, 3 -> `RGB`, 4 -> `CMYK` (libjpeg turns YCCK into CMYK;
//! Pillow takes every 4-channel JPEG as Adobe-inverted). The conversion to
//! RGB is then Pillow's: grey replicated, CMYK by its `cmyk2rgb`.
//!
//! Refused as Pillow refuses them: files that end before the image does
//! (Pillow: "image file is truncated"), files libjpeg stops on (Pillow:
//! "broken data stream"), and samples other than 8-bit or component counts
//! other than 1, 3 and 4 (Pillow: "cannot identify image file"). Corrupt
//! entropy-coded data that libjpeg only warns about decodes, as in Pillow.

mod exif;

use std::ffi::{CStr, c_char, c_int, c_uint};

pub use exif::exif_orientation;

// libjpeg-turbo's static library, built and linked by turbojpeg-sys: nothing
// of its Rust API is used, so name the crate to keep its library linked.
use turbojpeg_sys as _;

/// Why a JPEG was not decoded; each message is one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JpegError {
    #[error("not a JPEG file (it does not start with the bytes FF D8 FF)")]
    NotJpeg,
    #[error(
        "truncated JPEG: its {len} bytes end before the image does \
         (Pillow, and so transformers, refuse it too: \"image file is truncated\")"
    )]
    Truncated { len: usize },
    #[error("corrupt JPEG: {0} (libjpeg stops there, and Pillow refuses it too)")]
    Corrupt(String),
    #[error("unsupported JPEG: {0}")]
    Unsupported(String),
}

pub type Result<T> = std::result::Result<T, JpegError>;

/// The colour space libjpeg infers for the file (from the JFIF and Adobe
/// markers, the component count and ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColourSpace {
    Unknown,
    Grey,
    Rgb,
    YCbCr,
    Cmyk,
    Ycck,
    /// Any other `J_COLOR_SPACE` value.
    Other(i32),
}

impl ColourSpace {
    fn from_libjpeg(v: c_int) -> Self {
        match v {
            0 => Self::Unknown,
            1 => Self::Grey,
            2 => Self::Rgb,
            3 => Self::YCbCr,
            4 => Self::Cmyk,
            5 => Self::Ycck,
            other => Self::Other(other),
        }
    }
}

/// What the JPEG header says, read without decoding any pixel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub width: u32,
    pub height: u32,
    /// Components per pixel in the frame header (Pillow decodes 1, 3 and 4).
    pub components: u8,
    /// Bits per sample (Pillow decodes 8 only).
    pub precision: u8,
    pub colour_space: ColourSpace,
    pub progressive: bool,
}

impl Header {
    /// `width * height`, for a pixel limit checked before decoding.
    pub fn pixels(&self) -> u64 {
        self.width as u64 * self.height as u64
    }

    /// `Unsupported` unless Pillow would decode this file's samples.
    fn check_supported(&self) -> Result<()> {
        if self.precision != 8 {
            return Err(JpegError::Unsupported(format!(
                "{}-bit samples; Pillow reads 8-bit JPEGs only",
                self.precision
            )));
        }
        if !matches!(self.components, 1 | 3 | 4) {
            return Err(JpegError::Unsupported(format!(
                "{} components per pixel; Pillow reads 1, 3 or 4",
                self.components
            )));
        }
        Ok(())
    }
}

/// An 8-bit RGB image, rows packed top to bottom, `width * height * 3` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

/// Whether `bytes` start like a JPEG (FF D8 FF, the test Pillow uses to pick
/// its JPEG reader).
pub fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xFF, 0xD8, 0xFF])
}

/// The header of `jpeg` (size, components, colour space), parsed by libjpeg
/// up to the first scan: cheap, for a pixel limit before [`decode_rgb`].
/// Fails on a file that ends within its header or that libjpeg rejects there;
/// 12-bit or 2-component files still give their header here, and are refused
/// by the decoding functions.
pub fn read_header(jpeg: &[u8]) -> Result<Header> {
    if !is_jpeg(jpeg) {
        return Err(JpegError::NotJpeg);
    }
    let mut raw = RawHeader::default();
    run(jpeg, std::ptr::null_mut(), 0, &mut raw)?;
    Ok(raw.header())
}

/// Decodes `jpeg` to 8-bit RGB, as `Image.open(f).convert("RGB")` does (no
/// EXIF orientation applied).
pub fn decode_rgb(jpeg: &[u8]) -> Result<RgbImage> {
    let mut data = Vec::new();
    let header = decode_rgb_into(jpeg, &mut data)?;
    Ok(RgbImage { width: header.width, height: header.height, data })
}

/// [`decode_rgb`] into `out` (cleared first; its allocation is reused, so a
/// loader decoding many files can keep one buffer per thread). Returns the
/// header; `out` then holds `width * height * 3` bytes. It is sized from the
/// header before decoding (4 bytes a pixel for CMYK files), so check
/// [`read_header`]'s [`Header::pixels`] against a limit first.
pub fn decode_rgb_into(jpeg: &[u8], out: &mut Vec<u8>) -> Result<Header> {
    let header = read_header(jpeg)?;
    header.check_supported()?;
    let n = header.width as usize * header.height as usize;
    let channels = header.components as usize;
    out.clear();
    out.resize(n * channels.max(3), 0);
    let mut raw = RawHeader::default();
    run(jpeg, out.as_mut_ptr(), n * channels, &mut raw)?;
    if raw.header() != header {
        return Err(JpegError::Corrupt("the header changed between two reads".into()));
    }
    match channels {
        1 => grey_to_rgb_in_place(out, n),
        4 => cmyk_to_rgb_in_place(out, n),
        _ => {}
    }
    out.truncate(n * 3);
    Ok(header)
}

/// Pillow's `L` -> `RGB`: the grey value in all three channels. The first `n`
/// bytes of `buf` are grey; it ends as `n` RGB pixels (expanded from the end
/// so nothing is overwritten before it is read).
fn grey_to_rgb_in_place(buf: &mut [u8], n: usize) {
    for i in (0..n).rev() {
        let v = buf[i];
        buf[3 * i..3 * i + 3].fill(v);
    }
}

/// Pillow's view of libjpeg's CMYK output and its conversion to RGB. Pillow
/// reads every 4-component JPEG with the rawmode "CMYK;I" (Adobe's inverted
/// convention, whatever the markers say), so its CMYK pixel is 255 minus
/// libjpeg's samples; `convert("RGB")` then computes, per channel,
/// `nk - nk * C / 255` rounded as Pillow's MULDIV255, with `nk = 255 - K`.
/// In libjpeg's samples (c, m, y, k): `nk = k` and `C = 255 - c`. Pixels are
/// packed from the front: pixel i is read (bytes 4i..4i+4) before bytes
/// 3i..3i+3 are written.
fn cmyk_to_rgb_in_place(buf: &mut [u8], n: usize) {
    for i in 0..n {
        let [c, m, y, k] = [buf[4 * i], buf[4 * i + 1], buf[4 * i + 2], buf[4 * i + 3]];
        let nk = k as u32;
        let channel = |v: u8| (nk - muldiv255(255 - v as u32, nk)) as u8;
        buf[3 * i] = channel(c);
        buf[3 * i + 1] = channel(m);
        buf[3 * i + 2] = channel(y);
    }
}

/// `a * b / 255` rounded to nearest, the integer form Pillow uses.
fn muldiv255(a: u32, b: u32) -> u32 {
    let t = a * b + 128;
    ((t >> 8) + t) >> 8
}

#[repr(C)]
#[derive(Debug, Default)]
struct RawHeader {
    width: c_uint,
    height: c_uint,
    components: c_int,
    precision: c_int,
    colour_space: c_int,
    progressive: c_int,
}

impl RawHeader {
    fn header(&self) -> Header {
        Header {
            width: self.width,
            height: self.height,
            components: self.components.clamp(0, 255) as u8,
            precision: self.precision.clamp(0, 255) as u8,
            colour_space: ColourSpace::from_libjpeg(self.colour_space),
            progressive: self.progressive != 0,
        }
    }
}

const MMJ_OK: c_int = 0;
const MMJ_TRUNCATED: c_int = 1;
const MMJ_CORRUPT: c_int = 2;
const MMJ_BAD_OUTPUT: c_int = 3;
/// libjpeg's JMSG_LENGTH_MAX.
const MESSAGE_LEN: usize = 200;

unsafe extern "C" {
    /// csrc/decode.c: reads the header and, when `out` is not null, decodes
    /// every row into `out` (`out_len` bytes). Returns one of the MMJ_ codes.
    fn mmj_decode(
        data: *const u8,
        len: usize,
        out: *mut u8,
        out_len: usize,
        header: *mut RawHeader,
        msg: *mut c_char,
        msg_len: usize,
    ) -> c_int;
}

fn run(jpeg: &[u8], out: *mut u8, out_len: usize, raw: &mut RawHeader) -> Result<()> {
    let mut msg = [0 as c_char; MESSAGE_LEN];
    // SAFETY: `jpeg` is read-only for the call; `out` is null or valid for
    // `out_len` bytes (the C side writes no more); `raw` and `msg` are valid
    // for writes of their sizes, and libjpeg keeps none of them after return.
    let status = unsafe { mmj_decode(jpeg.as_ptr(), jpeg.len(), out, out_len, raw, msg.as_mut_ptr(), msg.len()) };
    match status {
        MMJ_OK => Ok(()),
        MMJ_TRUNCATED => Err(JpegError::Truncated { len: jpeg.len() }),
        MMJ_CORRUPT => {
            // SAFETY: the C side writes a NUL-terminated string (snprintf), or leaves msg[0] = 0.
            let text = unsafe { CStr::from_ptr(msg.as_ptr()) }.to_string_lossy().trim().to_string();
            Err(JpegError::Corrupt(if text.is_empty() { "libjpeg stopped decoding it".into() } else { text }))
        }
        MMJ_BAD_OUTPUT => Err(JpegError::Corrupt("libjpeg's output does not match the frame header".into())),
        other => Err(JpegError::Corrupt(format!("unexpected decoder status {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn muldiv255_rounds_to_nearest() {
        for a in 0..=255u32 {
            for b in 0..=255u32 {
                let exact = (a * b) as f64 / 255.0;
                assert_eq!(muldiv255(a, b), exact.round() as u32, "{a} * {b} / 255");
            }
        }
    }

    #[test]
    fn in_place_conversions() {
        let mut grey = vec![10, 20, 0, 0, 0, 0];
        grey_to_rgb_in_place(&mut grey, 2);
        assert_eq!(grey, [10, 10, 10, 20, 20, 20]);
        // libjpeg's (c, m, y, k) = (255, 0, 255, 255) is Pillow's CMYK (0, 255, 0, 0): magenta
        // ink only; libjpeg's (0, 0, 0, 0) is Pillow's (255, 255, 255, 255): black.
        let mut cmyk = vec![255, 0, 255, 255, 0, 0, 0, 0];
        cmyk_to_rgb_in_place(&mut cmyk, 2);
        assert_eq!(&cmyk[..6], [255, 0, 255, 0, 0, 0]);
    }
}
