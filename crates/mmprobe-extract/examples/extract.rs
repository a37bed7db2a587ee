//! Extraction from Rust: what `mmprobe extract` does, through the library API.
//!
//!     cargo run --release -p mmprobe-extract --example extract -- MODEL DATA STORE
//!
//! e.g. `-- datasets/models/shapes-clip datasets/shapes/data.csv out/store`:
//! both towers of a CLIP (or the vision tower and decoder of a LLaVA), the
//! residual stream of every layer and the projected embeds, with the model's
//! default selectors, into a new store (an existing one is replaced).

use std::path::PathBuf;

use mmprobe_extract::{ExtractOptions, ProgressSink};

/// Prints progress every chunk; `mmprobe_extract::Quiet` prints nothing.
struct Print;
impl ProgressSink for Print {
    fn start(&self, total: usize, done_before: usize) {
        eprintln!("extracting {total} samples ({done_before} already in the store)");
    }
    fn advance(&self, samples: usize) {
        eprintln!("  +{samples} samples");
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).map(PathBuf::from);
    let usage = "usage: extract MODEL DATA STORE";
    let (model, data, out) = (args.next().ok_or(usage)?, args.next().ok_or(usage)?, args.next().ok_or(usage)?);

    // `new` is `mmprobe extract`'s defaults: every tower the model has, resid and embeds,
    // every layer, the family's selectors, device auto, f32, batch size 32.
    let opts = ExtractOptions { force: true, ..ExtractOptions::new(model, data, out) };
    let summary = mmprobe_extract::extract(&opts, &Print)?;
    println!(
        "{} samples on {} -> {} partitions, {} rows in {} part files, {:.1} s: {}",
        summary.samples_run,
        summary.device,
        summary.partitions,
        summary.rows_written,
        summary.parts_written,
        summary.elapsed.as_secs_f64(),
        summary.store.display()
    );
    Ok(())
}
