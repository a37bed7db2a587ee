//! Bad input gives a one-line error that names the cause, never a panic.

mod common;

use std::fs;

use common::{clip_dir, fixtures};
use mmprobe_extract::clip::LoadedClip;
use mmprobe_extract::preprocess::{decode_rgb, open_rgb};
use mmprobe_extract::{DType, ExtractError, ModelInfo};
use tch::Device;

fn copy_fixture(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in fs::read_dir(clip_dir(name)).unwrap() {
        let p = entry.unwrap().path();
        fs::copy(&p, tmp.path().join(p.file_name().unwrap())).unwrap();
    }
    tmp
}

fn load_err(dir: &std::path::Path) -> String {
    match LoadedClip::load(dir, Device::Cpu, DType::F32) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => {
            let s = e.to_string();
            assert!(!s.contains('\n'), "not one line: {s}");
            s
        }
    }
}

#[test]
fn folder_without_config() {
    let tmp = tempfile::tempdir().unwrap();
    let msg = load_err(tmp.path());
    assert!(msg.contains("is not a model folder: it has no config.json"), "{msg}");
}

#[test]
fn config_of_another_family() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("config.json"), r#"{"model_type": "bert", "hidden_size": 8}"#).unwrap();
    let msg = load_err(tmp.path());
    assert!(msg.contains("model_type 'bert' is not supported") && msg.contains("clip"), "{msg}");
    assert!(matches!(ModelInfo::from_dir(tmp.path()), Err(ExtractError::UnsupportedFamily { .. })));
}

#[test]
fn config_that_is_not_json() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("config.json"), "model_type = clip").unwrap();
    let msg = load_err(tmp.path());
    assert!(msg.contains("config.json is not a valid config"), "{msg}");
}

#[test]
fn truncated_safetensors() {
    let tmp = copy_fixture("tiny-a");
    let f = tmp.path().join("model.safetensors");
    let len = fs::metadata(&f).unwrap().len();
    fs::OpenOptions::new().write(true).open(&f).unwrap().set_len(len / 2).unwrap();
    let msg = load_err(tmp.path());
    assert!(msg.contains("model.safetensors is not a readable safetensors file"), "{msg}");
}

#[test]
fn missing_tensor_is_named() {
    let tmp = copy_fixture("tiny-b");
    // Drop the shard that holds the text projection from the index.
    let index_path = tmp.path().join("model.safetensors.index.json");
    let mut index: serde_json::Value = serde_json::from_slice(&fs::read(&index_path).unwrap()).unwrap();
    index["weight_map"].as_object_mut().unwrap().retain(|_, file| file != "model-00002-of-00002.safetensors");
    fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
    let msg = load_err(tmp.path());
    assert!(msg.starts_with("tensor '") && msg.contains("is missing from the checkpoint"), "{msg}");
}

#[test]
fn shape_mismatch_names_tensor_and_both_shapes() {
    let tmp = copy_fixture("tiny-a");
    let cfg_path = tmp.path().join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&fs::read(&cfg_path).unwrap()).unwrap();
    cfg["projection_dim"] = 21.into();
    fs::write(&cfg_path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let msg = load_err(tmp.path());
    assert!(msg.contains("'text_projection.weight' has shape [20, 24]") && msg.contains("implies [21, 24]"), "{msg}");
}

#[test]
fn image_that_is_not_an_image() {
    let path = fixtures().join("images/not_an_image.png");
    let msg = open_rgb(&path).unwrap_err().to_string();
    assert!(msg.contains("not_an_image.png") && !msg.contains('\n'), "{msg}");
    let msg = open_rgb(&fixtures().join("images/no_such_file.png")).unwrap_err().to_string();
    assert!(msg.contains("no_such_file.png"), "{msg}");
}

#[test]
fn truncated_jpeg_is_a_bad_image() {
    let bytes = fs::read(fixtures().join("images/exif6_40x24.jpg")).unwrap();
    assert!(decode_rgb(&bytes, "whole.jpg").is_ok());
    // Mid-scan (the scan starts at byte 645) and just before the end-of-image marker.
    for cut in [700, 1100, bytes.len() - 2] {
        let msg = decode_rgb(&bytes[..cut], "cut.jpg").unwrap_err().to_string();
        assert!(msg.contains("cut.jpg") && msg.contains("truncated") && !msg.contains('\n'), "{cut}: {msg}");
    }
    // Bytes after the end-of-image marker (some cameras append data) are not truncation.
    let mut trailing = bytes.clone();
    trailing.extend_from_slice(b"\0\0trailer");
    assert!(decode_rgb(&trailing, "trailing.jpg").is_ok());
}

#[test]
fn truncated_png_is_a_bad_image() {
    let bytes = fs::read(fixtures().join("images/rgb_50x41.png")).unwrap();
    for cut in [bytes.len() / 2, bytes.len() - 12] {
        let msg = decode_rgb(&bytes[..cut], "cut.png").unwrap_err().to_string();
        assert!(msg.contains("cut.png") && !msg.contains('\n'), "{cut}: {msg}");
    }
}

/// A PNG whose header claims `w` x `h` pixels, with a few bytes of image data.
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in bytes {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            }
        }
        !c
    }
    let chunk = |kind: &[u8], data: &[u8]| {
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        let mut out = (data.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
        out
    };
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &ihdr));
    png.extend(chunk(b"IDAT", &[0x78, 0x9c, 0x63, 0, 0, 0, 1, 0, 1]));
    png.extend(chunk(b"IEND", &[]));
    png
}

#[test]
fn an_image_over_the_pixel_limit_is_refused_before_decoding() {
    use mmprobe_extract::preprocess::decode::{MAX_IMAGE_PIXELS, decode_rgb_limited};
    assert_eq!(MAX_IMAGE_PIXELS, 89_478_485, "Pillow's limit");
    let t = std::time::Instant::now();
    let msg = decode_rgb(&png_header_only(30_000, 30_000), "bomb.png").unwrap_err().to_string();
    assert!(t.elapsed().as_secs_f64() < 1.0, "refused from the header, not after decoding");
    assert!(msg.contains("bomb.png") && msg.contains("30000x30000") && msg.contains("89478485"), "{msg}");
    assert!(msg.contains("--max-image-pixels") && !msg.contains('\n'), "{msg}");
    // The limit is the caller's: 50x41 = 2050 pixels.
    let bytes = fs::read(fixtures().join("images/rgb_50x41.png")).unwrap();
    assert!(decode_rgb_limited(&bytes, "small.png", 2049).is_err());
    assert!(decode_rgb_limited(&bytes, "small.png", 2050).is_ok());
}
