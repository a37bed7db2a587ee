//! Bytes, write and read speed of part files for every `--store-dtype` x
//! `--compression` (bench/README.md, "Store dtypes").
//!
//! ```sh
//! POLARS_MAX_THREADS=1 cargo run --release -p mmprobe-store --example store_dtypes -- \
//!     --out /tmp/store-dtypes [--rows 20000] [--width 768] [--repeat 3] [--from PART.parquet]...
//! ```
//!
//! Sources: `normal` (N(0, 1), rows x width) and each `--from` Parquet file
//! with an `emb` array column (its first `--rows` rows). Each format is written
//! as one part of 1,024-row batches under `OUT/<source>/<dtype>-<compression>/`
//! (a store's `acts/` layout) and read back with `read_partition`; `--keep`
//! leaves the files there (for `scripts/check_store_dtypes.py`). MB/s are of f32 rows (rows x width x 4 bytes),
//! best of `--repeat`: by wall time, and by the CPU time of all of the
//! process's threads (Linux schedstat), which other work on the machine
//! disturbs less. `--from NAME=PATH` names a source (default: the file stem).

use std::path::{Path, PathBuf};
use std::time::Instant;

use mmprobe_store::part::{PartWriter, read_partition};
use mmprobe_store::{Compression, PartFormat, PartRows, Partition, Selector, Site, StoreDType, Tower};
use polars::prelude::*;

const PARTITION: Partition = Partition { tower: Tower::Vision, site: Site::Resid, layer: 0, selector: Selector::All };
const BATCH: usize = 1024;

fn normals(n: usize, seed: u64) -> Vec<f32> {
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
            ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
        })
        .collect()
}

/// The first `rows` rows of the `emb` column of a Parquet file.
fn load(path: &Path, rows: usize) -> PolarsResult<(usize, Vec<f32>)> {
    let df = ParquetReader::new(std::fs::File::open(path)?).with_columns(Some(vec!["emb".into()])).finish()?;
    let emb = df.column("emb")?.as_materialized_series().head(Some(rows)).rechunk();
    let DataType::Array(_, width) = emb.dtype() else { polars_bail!(ComputeError: "emb is not an array") };
    let width = *width;
    let values = emb.array()?.get_inner().cast(&DataType::Float32)?;
    Ok((width, values.f32()?.into_no_null_iter().collect()))
}

/// Seconds on a CPU of every thread of this process so far (Linux).
fn cpu_seconds() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return f64::NAN };
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    ns as f64 * 1e-9
}

/// Best wall and best CPU seconds of `repeat` runs, and the last result.
fn best_of<T>(repeat: usize, mut f: impl FnMut() -> T) -> (f64, f64, T) {
    let (mut wall, mut cpu) = (f64::INFINITY, f64::INFINITY);
    let mut out = None;
    for _ in 0..repeat {
        let (t, c) = (Instant::now(), cpu_seconds());
        let r = f();
        wall = wall.min(t.elapsed().as_secs_f64());
        cpu = cpu.min(cpu_seconds() - c);
        out = Some(r);
    }
    (wall, cpu, out.expect("repeat >= 1"))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (mut rows, mut width, mut repeat) = (20_000usize, 768usize, 3usize);
    let mut out = std::env::temp_dir().join("store-dtypes");
    let mut from: Vec<String> = Vec::new();
    let mut keep = false;
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--rows" => rows = value()?.parse()?,
            "--width" => width = value()?.parse()?,
            "--repeat" => repeat = value()?.parse::<usize>()?.max(1),
            "--out" => out = value()?.into(),
            "--from" => from.push(value()?),
            "--keep" => keep = true,
            _ => return Err(format!("unknown argument {a}").into()),
        }
    }
    let threads = std::env::var("POLARS_MAX_THREADS").unwrap_or_else(|_| "unset".into());
    println!("POLARS_MAX_THREADS={threads}, best of {repeat}, batches of {BATCH} rows");
    let mut sources = vec![("normal".to_string(), width, normals(rows * width, 1))];
    for f in &from {
        let (name, path) = match f.split_once('=') {
            Some((name, path)) => (name.to_string(), PathBuf::from(path)),
            None => {
                let path = PathBuf::from(f);
                (path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(), path)
            }
        };
        let (w, data) = load(&path, rows)?;
        sources.push((name, w, data));
    }
    println!(
        "| source | rows x width | dtype | compression | bytes | / f32 raw | / f32 same compression | write MB/s wall | \
         write MB/s CPU | read MB/s wall | read MB/s CPU |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (name, width, data) in &sources {
        let n = data.len() / width;
        let raw = (data.len() * 4) as f64;
        let batches: Vec<PartRows> = (0..n)
            .step_by(BATCH)
            .map(|lo| {
                let hi = (lo + BATCH).min(n);
                PartRows {
                    width: *width,
                    sample: (lo as u32..hi as u32).collect(),
                    pos: vec![-1; hi - lo],
                    data: data[lo * width..hi * width].to_vec(),
                }
            })
            .collect();
        for compression in Compression::ALL {
            let mut f32_bytes = 0.0;
            for dtype in StoreDType::ALL {
                let format = PartFormat::new(*dtype, *compression);
                let root = out.join(name).join(format!("{dtype}-{compression}"));
                let (write_s, write_cpu, path) = best_of(repeat, || {
                    let mut w = PartWriter::create_with(PARTITION.part(&root, 0, 0), *width, format).unwrap();
                    for b in &batches {
                        w.write(b).unwrap();
                    }
                    w.finish().unwrap()
                });
                let bytes = std::fs::metadata(&path)?.len() as f64;
                if *dtype == StoreDType::F32 {
                    f32_bytes = bytes;
                }
                let (read_s, read_cpu, acts) = best_of(repeat, || read_partition(&root, PARTITION).unwrap());
                assert_eq!(acts.matrix.dim(), (n, *width));
                println!(
                    "| {name} | {n} x {width} | {dtype} | {compression} | {bytes:.0} | {:.3} | {:.3} | {:.0} | {:.0} | \
                     {:.0} | {:.0} |",
                    bytes / raw,
                    bytes / f32_bytes,
                    raw / write_s / 1e6,
                    raw / write_cpu / 1e6,
                    raw / read_s / 1e6,
                    raw / read_cpu / 1e6,
                );
                if !keep {
                    std::fs::remove_dir_all(&root)?;
                }
            }
        }
    }
    Ok(())
}
