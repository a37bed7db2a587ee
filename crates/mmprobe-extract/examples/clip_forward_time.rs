//! Times the CLIP vision forward pass with every hidden state kept, as
//! transformers' `output_hidden_states=True` does (bench/README.md).
//!
//!     cargo run --release --example clip_forward_time -- MODEL_DIR [BATCH] [REPEATS]

use std::time::Instant;

use mmprobe_extract::clip::LoadedClip;
use mmprobe_extract::{Capture, DType, SiteRequest};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().ok_or("usage: clip_forward_time MODEL_DIR [BATCH] [REPEATS]")?;
    let batch: i64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(32);
    let repeats: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(3);
    let device = tch::Device::cuda_if_available();
    let t_load = Instant::now();
    let clip = LoadedClip::load(std::path::Path::new(&dir), device, DType::F32)?;
    println!("load {:.2} s", t_load.elapsed().as_secs_f64());
    let v = &clip.model.config.vision_config;
    let pixels = tch::Tensor::randn([batch, 3, v.image_size, v.image_size], (tch::Kind::Float, device));
    let req = SiteRequest { resid: (0..=v.num_hidden_layers).collect(), embeds: true, ..Default::default() };
    tch::no_grad(|| clip.model.encode_image(&pixels, &mut Capture::new(req.clone()))); // warm-up
    let t0 = Instant::now();
    for _ in 0..repeats {
        let mut out = Capture::new(req.clone());
        tch::no_grad(|| clip.model.encode_image(&pixels, &mut out));
        // Force completion (CUDA is asynchronous).
        let _ = out.embeds.map(|e| e.sum(tch::Kind::Float).double_value(&[]));
    }
    let per_image = t0.elapsed().as_secs_f64() / (repeats as f64 * batch as f64);
    println!(
        "mmprobe vision forward {:.2} ms/image (batch {batch}, {} threads, {device:?})",
        per_image * 1e3,
        tch::get_num_threads()
    );
    Ok(())
}
