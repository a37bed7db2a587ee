//! The loader alone: image files decoded and preprocessed as `extract` does
//! them, on a fixed number of threads, without the model.
//!
//!   cargo run --release -p mmprobe-extract --example loader_bench -- IMAGE_DIR [THREADS] [REPEATS]
//!
//! Files are read into memory first (the disk is not timed). The processor is
//! CLIP ViT-B/32's (shortest edge 224, centre crop 224, bicubic). Prints
//! images/s for decoding alone, for decoding + preprocessing into floats (a
//! CPU run), and into bytes (a GPU run), in total and per thread.

use std::time::Instant;

use mmprobe_extract::preprocess::decode::decode_rgb;
use mmprobe_extract::preprocess::{ImageProcessor, ImageProcessorConfig};
use rayon::prelude::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The allocator settings of the mmprobe binary (crates/mmprobe/src/main.rs), so that
    // each image's buffers come from the heap as they do in `extract`.
    // SAFETY: mallopt only changes allocator thresholds; called before any threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
    let args: Vec<String> = std::env::args().collect();
    let dir = args.get(1).ok_or("usage: loader_bench IMAGE_DIR [THREADS] [REPEATS]")?;
    let threads: usize = args.get(2).map_or(Ok(1), |s| s.parse())?;
    let repeats: usize = args.get(3).map_or(Ok(3), |s| s.parse())?;
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jpg" || e == "jpeg" || e == "png"))
        .collect();
    files.sort();
    let bytes: Vec<Vec<u8>> = files.iter().map(std::fs::read).collect::<Result<_, _>>()?;
    let config: ImageProcessorConfig = serde_json::from_str(
        r#"{"size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224}, "resample": 3}"#,
    )?;
    let processor = ImageProcessor::new(config)?;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    let n = bytes.len() * repeats;
    println!("{} files from {dir}, {threads} threads, {repeats} repeats", bytes.len());

    let time = |what: &str, f: &(dyn Fn(&[u8]) -> usize + Sync)| {
        let t0 = Instant::now();
        let check: usize =
            pool.install(|| (0..repeats).map(|_| bytes.par_iter().map(|b| f(b)).sum::<usize>()).sum::<usize>());
        let s = t0.elapsed().as_secs_f64();
        println!(
            "{what:<22} {:>8.1} images/s  {:>8.1} images/s per thread  ({:.3} ms an image a thread; check {check})",
            n as f64 / s,
            n as f64 / s / threads as f64,
            1e3 * s * threads as f64 / n as f64
        );
    };
    time("decode", &|b| decode_rgb(b, "bench").map(|img| img.data.len()).unwrap_or(0));
    // As the loader does: into the batch's buffer (here one per thread, reused).
    let (h, w) = processor.output_size();
    thread_local! {
        static OUT: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    time("decode + preprocess", &|b| {
        let Ok(img) = decode_rgb(b, "bench") else { return 0 };
        OUT.with_borrow_mut(|out| {
            out.resize(3 * h * w, 0.0);
            processor.process_into(&img, out);
            out.len()
        })
    });
    // What a GPU run's loader writes: the 8-bit image, looked up on the device.
    thread_local! {
        static BYTES: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    time("decode + bytes (GPU)", &|b| {
        let Ok(img) = decode_rgb(b, "bench") else { return 0 };
        BYTES.with_borrow_mut(|out| {
            out.resize(3 * h * w, 0);
            processor.bytes_into(&img, out);
            out.len()
        })
    });
    Ok(())
}
