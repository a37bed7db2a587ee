//! `--store-dtype` x `--compression`: every format reads back through
//! `read_partition` as f32 (exact for f32, the input rounded for f16 / bf16),
//! 16-bit parts are smaller, and bad values and names are refused.

use std::path::{Path, PathBuf};

use mmprobe_store::format::DTYPE_KEY;
use mmprobe_store::part::{PartWriter, read_partition, write_part_with};
use mmprobe_store::{Compression, PartFormat, PartRows, Partition, Selector, Site, StoreDType, StoreError, Tower};
use polars::prelude::*;

const PARTITION: Partition = Partition { tower: Tower::Vision, site: Site::Resid, layer: 3, selector: Selector::All };

/// A fresh folder under the system temporary folder, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("mmprobe-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Deterministic standard normals (xorshift64* and Box-Muller), scaled by `scale`.
fn normals(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut uniform = || {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        ((s.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let (u, v) = (uniform(), uniform());
            ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32 * scale
        })
        .collect()
}

/// Rows of `samples` samples x `tokens` positions; values spread over many
/// binades (tiny, subnormal for f16, large but inside f16's range, zeros).
fn rows(samples: u32, tokens: i32, width: usize, seed: u64) -> PartRows {
    let n = samples as usize * tokens as usize;
    let mut data = normals(n * width, seed, 1.0);
    for (i, v) in data.iter_mut().enumerate() {
        *v *= match i % 7 {
            0 => 1e-6,
            1 => 3e3,
            2 => 0.0,
            _ => 1.0 + (i % 13) as f32,
        };
    }
    PartRows {
        width,
        sample: (0..samples).flat_map(|s| std::iter::repeat_n(s, tokens as usize)).collect(),
        pos: (0..samples).flat_map(|_| 0..tokens).collect(),
        data,
    }
}

/// `x` rounded to nearest (ties to even) on a float format's grid: `mantissa`
/// stored bits, smallest normal exponent `min_exp` (below it the spacing of
/// subnormals). Exact in f64; independent of half, polars and format.rs.
fn round_to(x: f32, mantissa: i32, min_exp: i32) -> f32 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let x = x as f64;
    let exp = ((x.to_bits() >> 52) & 0x7ff) as i32 - 1023; // floor(log2 |x|): x is an f64 normal
    let quantum = 2f64.powi(exp.max(min_exp) - mantissa);
    ((x / quantum).round_ties_even() * quantum) as f32
}

fn expected(dtype: StoreDType, x: f32) -> f32 {
    match dtype {
        StoreDType::F32 => x,
        StoreDType::F16 => round_to(x, 10, -14),
        StoreDType::Bf16 => round_to(x, 7, -126),
    }
}

#[test]
fn the_reference_rounding_agrees_with_known_values() {
    assert_eq!(round_to(1.0 + 2f32.powi(-11), 10, -14), 1.0); // tie to even
    assert_eq!(round_to(1.0 + 3.0 * 2f32.powi(-11), 10, -14), 1.0 + 2f32.powi(-9));
    assert_eq!(round_to(65_519.0, 10, -14), 65_504.0);
    assert_eq!(round_to(1e-6, 10, -14), 17.0 * 2f32.powi(-24)); // f16 subnormal
    assert_eq!(round_to(0.1, 7, -126), 0.100_097_656);
    assert_eq!(round_to(-70_000.0, 7, -126), -70_144.0);
}

fn formats() -> impl Iterator<Item = PartFormat> {
    StoreDType::ALL.iter().flat_map(|&d| Compression::ALL.iter().map(move |&c| PartFormat::new(d, c)))
}

#[test]
fn every_format_round_trips_through_read_partition() {
    let dir = Scratch::new("round-trip");
    let width = 48;
    // Two parts of two batches each, written in reverse sample order: the reader sorts.
    let first = rows(6, 5, width, 1);
    let second = PartRows { sample: first.sample.iter().map(|s| s + 6).collect(), ..rows(6, 5, width, 2) };
    for (k, format) in formats().enumerate() {
        let root = dir.0.join(k.to_string());
        for (chunk, part) in [(0, &second), (1, &first)] {
            let mut w = PartWriter::create_with(PARTITION.part(&root, 0, chunk), width, format).unwrap();
            assert_eq!(w.format(), format);
            let half = part.len() / 2 * width;
            let split = |lo: usize, hi: usize| PartRows {
                width,
                sample: part.sample[lo / width..hi / width].to_vec(),
                pos: part.pos[lo / width..hi / width].to_vec(),
                data: part.data[lo..hi].to_vec(),
            };
            w.write(&split(half, part.data.len())).unwrap();
            w.write(&split(0, half)).unwrap();
            w.finish().unwrap();
        }
        let acts = read_partition(&root, PARTITION).unwrap();
        assert_eq!(acts.matrix.dim(), (first.len() + second.len(), width), "{format}");
        assert_eq!(acts.sample, [first.sample.clone(), second.sample.clone()].concat(), "{format}");
        assert_eq!(acts.pos, [first.pos.clone(), second.pos.clone()].concat(), "{format}");
        let input = [first.data.clone(), second.data.clone()].concat();
        let got = acts.matrix.as_slice().unwrap();
        for (i, (&x, &y)) in input.iter().zip(got).enumerate() {
            let want = expected(format.dtype, x);
            assert!(want.to_bits() == y.to_bits(), "{format}: value {i}: {x} stored as {y}, expected {want}");
        }
        let rounded = input.iter().zip(got).filter(|(x, y)| x != y).count();
        match format.dtype {
            StoreDType::F32 => assert_eq!(rounded, 0),
            _ => assert!(rounded > input.len() / 2, "{format}: only {rounded} values changed"),
        }
    }
}

fn emb_dtype_and_key(path: &Path) -> (DataType, Option<String>) {
    let mut reader = ParquetReader::new(std::fs::File::open(path).unwrap());
    let key = reader
        .get_metadata()
        .unwrap()
        .key_value_metadata()
        .as_ref()
        .and_then(|kv| kv.iter().find(|kv| kv.key == DTYPE_KEY).and_then(|kv| kv.value.clone()));
    let df = reader.finish().unwrap();
    (df.column("emb").unwrap().dtype().clone(), key)
}

#[test]
fn parts_hold_float16_or_float32_and_name_their_dtype() {
    let dir = Scratch::new("types");
    let r = rows(3, 2, 8, 3);
    for dtype in StoreDType::ALL {
        let path =
            write_part_with(PARTITION.part(&dir.0, 0, 0), &r, PartFormat::new(*dtype, Compression::Zstd)).unwrap();
        let (emb, key) = emb_dtype_and_key(&path);
        let inner = if *dtype == StoreDType::F16 { DataType::Float16 } else { DataType::Float32 };
        assert_eq!(emb, DataType::Array(Box::new(inner), 8), "{dtype}");
        assert_eq!(key.as_deref(), Some(dtype.as_str()));
    }
}

#[test]
fn a_partition_of_mixed_formats_reads_as_f32() {
    let dir = Scratch::new("mixed");
    let mut all = Vec::new();
    for (chunk, dtype) in StoreDType::ALL.iter().enumerate() {
        let mut r = rows(2, 3, 16, 10 + chunk as u64);
        r.sample.iter_mut().for_each(|s| *s += 2 * chunk as u32);
        all.extend(r.data.iter().map(|&x| expected(*dtype, x)));
        write_part_with(PARTITION.part(&dir.0, 0, chunk), &r, PartFormat::new(*dtype, Compression::Lz4)).unwrap();
    }
    let acts = read_partition(&dir.0, PARTITION).unwrap();
    assert_eq!(acts.matrix.as_slice().unwrap(), all.as_slice());
}

/// Bytes on disk of 4,000 rows x 256 of N(0, 1), per format.
fn part_bytes(format: PartFormat, dir: &Path) -> u64 {
    let width = 256;
    let n = 4000;
    let r = PartRows { width, sample: (0..n as u32).collect(), pos: vec![-1; n], data: normals(n * width, 7, 1.0) };
    let path = write_part_with(dir.join(format!("acts/{format}/part-000-000000.parquet")), &r, format).unwrap();
    std::fs::metadata(path).unwrap().len()
}

#[test]
fn sixteen_bit_parts_are_smaller() {
    let dir = Scratch::new("bytes");
    for compression in Compression::ALL {
        let bytes = |dtype| part_bytes(PartFormat::new(dtype, *compression), &dir.0) as f64;
        let f32 = bytes(StoreDType::F32);
        let (f16, bf16) = (bytes(StoreDType::F16) / f32, bytes(StoreDType::Bf16) / f32);
        eprintln!("{compression}: f32 {f32} bytes, f16 {f16:.3}x, bf16 {bf16:.3}x");
        // Measured here: f16 0.498 / 0.502 / 0.504 of f32 (zstd / lz4 / none), bf16
        // 0.492 / 0.641 / 1.000; bench/README.md, "Store dtypes", has 20,000 x 768.
        assert!(f16 < 0.56, "f16 {compression}: {f16:.3} of f32");
        match compression {
            Compression::Zstd => assert!(bf16 < 0.58, "bf16 zstd: {bf16:.3} of f32"),
            Compression::Lz4 => assert!(bf16 < 0.72, "bf16 lz4: {bf16:.3} of f32"),
            // bf16 is stored as FLOAT: only compression removes its zero low halves.
            Compression::None => assert!((0.98..1.02).contains(&bf16), "bf16 none: {bf16:.3} of f32"),
        }
    }
}

#[test]
fn f16_refuses_what_it_cannot_hold_and_leaves_no_file() {
    let dir = Scratch::new("range");
    let path = PARTITION.part(&dir.0, 0, 0);
    let f16 = PartFormat::new(StoreDType::F16, Compression::Zstd);
    let mut r = rows(2, 2, 4, 5);
    r.data[9] = -70_000.0;
    let err = write_part_with(path.clone(), &r, f16).unwrap_err();
    assert!(matches!(err, StoreError::F16Range { value: -70_000.0, sample: 1, .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("value -70000 (sample 1) is beyond the range of f16 (largest 65504)"), "{msg}");
    assert!(msg.contains("bf16"), "{msg}");
    assert!(std::fs::read_dir(path.parent().unwrap()).unwrap().next().is_none(), "a file was left behind");
    // The largest magnitude that rounds to a finite f16, and any value as bf16.
    r.data[9] = -65_519.0;
    write_part_with(path.clone(), &r, f16).unwrap();
    assert_eq!(read_partition(&dir.0, PARTITION).unwrap().matrix[[2, 1]], -65_504.0);
    r.data[9] = -70_000.0;
    write_part_with(path, &r, PartFormat::new(StoreDType::Bf16, Compression::Zstd)).unwrap();
    assert_eq!(read_partition(&dir.0, PARTITION).unwrap().matrix[[2, 1]], -70_144.0);
}

#[test]
fn bad_names_are_refused_naming_the_accepted_values() {
    let e = "float16".parse::<StoreDType>().unwrap_err().to_string();
    assert_eq!(e, "unknown store dtype 'float16' (expected one of: f32, f16, bf16)");
    let e = "snappy".parse::<Compression>().unwrap_err().to_string();
    assert_eq!(e, "unknown compression 'snappy' (expected one of: zstd, lz4, none)");
    assert_eq!("bf16".parse::<StoreDType>().unwrap(), StoreDType::Bf16);
    assert_eq!("none".parse::<Compression>().unwrap(), Compression::None);
}
