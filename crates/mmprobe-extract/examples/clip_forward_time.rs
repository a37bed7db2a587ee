//! Times the CLIP vision forward pass with every hidden state kept, as
//! transformers' `output_hidden_states=True` does, and with the last layer
//! at the CLS position alone, as a store of `cls` rows runs it; on a CPU, the
//! latter also with every f32 linear layer on libtorch's BLAS `linear`
//! instead of oneDNN (bench/README.md).
//!
//!     cargo run --release --example clip_forward_time -- MODEL_DIR [BATCH] [REPEATS]

use std::time::Instant;

use mmprobe_extract::clip::LoadedClip;
use mmprobe_extract::layers::{CpuLinear, with_cpu_linear};
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
    let every = SiteRequest { resid: (0..=v.num_hidden_layers).collect(), embeds: true, ..Default::default() };
    // What a store of `cls` rows asks for: the last layer is computed at CLS alone.
    let cls = SiteRequest { first_token_only: true, ..every.clone() };
    tch::no_grad(|| clip.model.encode_image(&pixels, &mut Capture::new(every.clone()))); // warm-up
    let ways = [
        ("every position", &every, CpuLinear::Auto),
        ("last layer at CLS alone", &cls, CpuLinear::Auto),
        ("last layer at CLS alone, BLAS linear", &cls, CpuLinear::Blas),
    ];
    let mut per_image = [0.0; 3];
    // The ways take turns, so that a shared machine's drift falls on each.
    for _ in 0..repeats {
        for (i, (_, req, how)) in ways.iter().enumerate() {
            let t0 = Instant::now();
            let mut out = Capture::new((*req).clone());
            with_cpu_linear(*how, || tch::no_grad(|| clip.model.encode_image(&pixels, &mut out)));
            // Force completion (CUDA is asynchronous).
            let _ = out.embeds.map(|e| e.sum(tch::Kind::Float).double_value(&[]));
            per_image[i] += t0.elapsed().as_secs_f64() / (repeats as f64 * batch as f64);
        }
    }
    let threads = tch::get_num_threads();
    for ((what, _, _), t) in ways.iter().zip(per_image) {
        println!(
            "mmprobe vision forward, {what}: {:.2} ms/image (batch {batch}, {threads} threads, {device:?})",
            t * 1e3
        );
    }
    Ok(())
}
