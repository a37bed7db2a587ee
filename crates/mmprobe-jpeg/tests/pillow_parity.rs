//! Every JPEG in scripts/fixtures/jpeg against what Pillow made of it
//! (scripts/fixtures/make_jpegs.py: `Image.open(f).convert("RGB")`, the size
//! Pillow's header parser reports, `getexif()`'s orientation, or the error it
//! refuses the file with).

use std::path::PathBuf;

use mmprobe_jpeg::{JpegError, decode_rgb, decode_rgb_into, exif_orientation, read_header};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/fixtures/jpeg")
}

struct Fixtures {
    meta: Value,
    tensors: Vec<u8>,
}

impl Fixtures {
    fn load() -> Self {
        let meta = std::fs::read_to_string(dir().join("reference.json")).expect("reference.json");
        let tensors = std::fs::read(dir().join("reference.safetensors")).expect("reference.safetensors");
        Fixtures { meta: serde_json::from_str(&meta).unwrap(), tensors }
    }

    fn entries(&self) -> Vec<(String, Value, Vec<u8>)> {
        let mut out: Vec<_> = self.meta["fixtures"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(name, e)| {
                let bytes = std::fs::read(dir().join(e["file"].as_str().unwrap())).unwrap();
                (name.clone(), e.clone(), bytes)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        assert!(out.len() >= 20, "only {} fixtures", out.len());
        out
    }
}

#[test]
fn every_fixture_decodes_to_pillows_bytes() {
    let f = Fixtures::load();
    let reference = SafeTensors::deserialize(&f.tensors).unwrap();
    println!("Pillow {} with libjpeg-turbo {}", f.meta["pillow"], f.meta["libjpeg_turbo"]);
    let mut checked = 0;
    for (name, entry, bytes) in f.entries() {
        if entry.get("refused").is_some() {
            continue;
        }
        let want = reference.tensor(&name).unwrap();
        assert_eq!(want.dtype(), Dtype::U8);
        let got = decode_rgb(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(want.shape(), [got.height as usize, got.width as usize, 3], "{name}");
        assert_eq!(got.data.len(), want.data().len(), "{name}");
        let (max, differing) = got.data.iter().zip(want.data()).fold((0u8, 0usize), |(m, n), (a, b)| {
            let d = a.abs_diff(*b);
            (m.max(d), n + (d > 0) as usize)
        });
        println!(
            "{name:28} {:>3}x{:<3} Pillow mode {:4} max |diff| {max} ({differing} of {} bytes differ)",
            got.width,
            got.height,
            entry["mode"].as_str().unwrap(),
            got.data.len()
        );
        assert_eq!(max, 0, "{name}: {differing} bytes differ from Pillow's");
        checked += 1;
    }
    assert!(checked >= 15, "only {checked} decodable fixtures");
}

#[test]
fn header_size_matches_pillow() {
    let f = Fixtures::load();
    for (name, entry, bytes) in f.entries() {
        let Some(width) = entry.get("width") else { continue };
        let h = match read_header(&bytes) {
            Ok(h) => h,
            // libjpeg reads the tables with the header; Pillow only on load, and then refuses.
            Err(e) if name.starts_with("bad_") => {
                println!("{name:28} refused at the header: {e}");
                continue;
            }
            Err(e) => panic!("{name}: {e}"),
        };
        assert_eq!((h.width as u64, h.height as u64), (width.as_u64().unwrap(), entry["height"].as_u64().unwrap()));
        let components = match entry["mode"].as_str().unwrap() {
            "L" => 1,
            "RGB" => 3,
            "CMYK" => 4,
            other => panic!("{name}: mode {other}"),
        };
        assert_eq!(h.components, components, "{name}");
        assert_eq!(h.precision, 8, "{name}");
        println!(
            "{name:28} {}x{} components {} {:?} progressive {}",
            h.width, h.height, h.components, h.colour_space, h.progressive
        );
    }
}

#[test]
fn files_pillow_refuses_are_refused() {
    let f = Fixtures::load();
    let mut refused = 0;
    for (name, entry, bytes) in f.entries() {
        let Some(pillow) = entry.get("refused") else { continue };
        let err = decode_rgb(&bytes).expect_err(&name);
        let kind_ok = match &err {
            JpegError::Truncated { .. } => name.starts_with("truncated"),
            // The patched component count no longer fits the frame header's length.
            JpegError::Corrupt(_) => name.starts_with("bad_") || name.starts_with("two_components"),
            JpegError::Unsupported(_) => name.starts_with("precision") || name.starts_with("two_components"),
            JpegError::NotJpeg => false,
        };
        assert!(kind_ok, "{name}: refused for the wrong reason: {err}");
        let message = err.to_string();
        assert!(!message.contains('\n'), "{name}: {message}");
        println!("{name:24} Pillow: {pillow}\n{:24} here:   {message}", "");
        refused += 1;
    }
    assert_eq!(refused, 5);
    assert_eq!(decode_rgb(b"GIF89a").unwrap_err(), JpegError::NotJpeg);
    assert!(decode_rgb(&[]).is_err());
}

#[test]
fn every_prefix_pillow_refuses_is_refused() {
    let f = Fixtures::load();
    let mut swept = 0;
    for (name, entry, bytes) in f.entries() {
        if entry.get("pillow_refuses_every_prefix").is_none() {
            continue;
        }
        let mut truncated = 0;
        let mut buf = Vec::new();
        for n in 0..bytes.len() {
            match decode_rgb_into(&bytes[..n], &mut buf) {
                Ok(h) => panic!("{name}[..{n}] decoded to {}x{}; Pillow refuses it", h.width, h.height),
                Err(JpegError::Truncated { len }) => {
                    assert_eq!(len, n);
                    truncated += 1;
                }
                Err(JpegError::NotJpeg) => assert!(n < 3, "{name}[..{n}]"),
                Err(e) => panic!("{name}[..{n}]: {e}, not a truncation"),
            }
        }
        assert!(decode_rgb_into(&bytes, &mut buf).is_ok());
        println!("{name:24} all {} proper prefixes refused ({truncated} as truncated)", bytes.len());
        swept += 1;
    }
    assert_eq!(swept, 5);
}

#[test]
fn exif_orientation_matches_pillow() {
    let f = Fixtures::load();
    for (name, entry, bytes) in f.entries() {
        let Some(pillow) = entry.get("orientation") else { continue };
        let want = match pillow.as_u64() {
            Some(v @ 1..=8) => v as u8,
            _ => 1,
        };
        assert_eq!(exif_orientation(&bytes), want, "{name}");
        if want != 1 {
            println!("{name:24} orientation {want}");
        }
    }
}

#[test]
fn buffer_is_reused_across_sizes() {
    let f = Fixtures::load();
    let reference = SafeTensors::deserialize(&f.tensors).unwrap();
    let mut buf = Vec::new();
    for name in ["wide_420_131x9", "grey_31x19", "tiny_420_1x1", "cmyk_adobe_30x20"] {
        let bytes = std::fs::read(dir().join(format!("{name}.jpg"))).unwrap();
        let h = decode_rgb_into(&bytes, &mut buf).unwrap();
        assert_eq!(buf.len(), h.pixels() as usize * 3);
        assert_eq!(buf, reference.tensor(name).unwrap().data(), "{name}");
    }
}

#[test]
fn decodes_on_many_threads_at_once() {
    let f = Fixtures::load();
    let entries: Vec<_> = f.entries().into_iter().filter(|(_, e, _)| e.get("refused").is_none()).collect();
    let single: Vec<Vec<u8>> = entries.iter().map(|(_, _, b)| decode_rgb(b).unwrap().data).collect();
    std::thread::scope(|s| {
        for t in 0..4 {
            let (entries, single) = (&entries, &single);
            s.spawn(move || {
                let mut buf = Vec::new();
                for round in 0..20 {
                    for (i, (name, _, bytes)) in entries.iter().enumerate().skip((t + round) % 3) {
                        decode_rgb_into(bytes, &mut buf).unwrap();
                        assert_eq!(buf, single[i], "{name} on thread {t}");
                    }
                }
            });
        }
    });
}
