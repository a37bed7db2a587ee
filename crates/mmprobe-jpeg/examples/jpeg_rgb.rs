//! Decodes JPEG files as Pillow would and writes each one's RGB bytes, or
//! times the decoding.
//!
//!     cargo run --release -p mmprobe-jpeg --example jpeg_rgb -- OUT_DIR FILE...
//!         writes OUT_DIR/<file name>.rgb (width * height * 3 bytes) or
//!         OUT_DIR/<file name>.err (the error), for comparing with Pillow
//!     cargo run --release -p mmprobe-jpeg --example jpeg_rgb -- --time FILE...
//!         decodes each file repeatedly on one thread and prints images/s

use std::path::{Path, PathBuf};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(first) = args.first() else {
        eprintln!("usage: jpeg_rgb OUT_DIR FILE... | jpeg_rgb --time FILE...");
        std::process::exit(2);
    };
    let files: Vec<PathBuf> = args[1..].iter().map(PathBuf::from).collect();
    let read = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    if first == "--time" {
        let data: Vec<Vec<u8>> = files.iter().map(|p| read(p)).collect();
        let mut buf = Vec::new();
        let (mut images, mut pixels) = (0u64, 0u64);
        let start = Instant::now();
        while start.elapsed().as_secs_f64() < 3.0 {
            for d in &data {
                let h = mmprobe_jpeg::decode_rgb_into(d, &mut buf).expect("decodable");
                images += 1;
                pixels += h.pixels();
            }
        }
        let s = start.elapsed().as_secs_f64();
        println!(
            "{images} images in {s:.2} s on one thread: {:.0} images/s, {:.1} Mpixel/s",
            images as f64 / s,
            pixels as f64 / s / 1e6
        );
        return;
    }
    let out = PathBuf::from(first);
    std::fs::create_dir_all(&out).unwrap();
    for p in &files {
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        match mmprobe_jpeg::decode_rgb(&read(p)) {
            Ok(img) => std::fs::write(out.join(format!("{name}.rgb")), &img.data).unwrap(),
            Err(e) => std::fs::write(out.join(format!("{name}.err")), e.to_string()).unwrap(),
        }
    }
}
