//! Helpers shared by the parity tests: fixture paths and tensor comparison.
#![allow(dead_code)]

use std::path::PathBuf;

use mmprobe_extract::weights::Checkpoint;
use tch::Tensor;

/// The device parity tests run on: `MMPROBE_TEST_DEVICE` (e.g. `cuda:0`), else the CPU.
pub fn device() -> tch::Device {
    match std::env::var("MMPROBE_TEST_DEVICE") {
        Ok(d) => d
            .parse::<mmprobe_extract::DeviceChoice>()
            .and_then(|c| c.resolve())
            .unwrap_or_else(|e| panic!("MMPROBE_TEST_DEVICE={d}: {e}")),
        Err(_) => tch::Device::Cpu,
    }
}

/// [`device`] as extraction options take it.
pub fn device_choice() -> mmprobe_extract::DeviceChoice {
    mmprobe_extract::runtime::device_name(device()).parse().expect("a device name parses")
}

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/fixtures")
}

pub fn clip_dir(name: &str) -> PathBuf {
    fixtures().join("clip").join(name)
}

/// The transformers outputs that scripts/fixtures/make_clip.py saved.
pub fn reference(dir: &std::path::Path) -> Checkpoint {
    Checkpoint::open_files(dir, [dir.join("reference.safetensors")]).expect("reference outputs")
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    let (a, b) = (a.to_device(tch::Device::Cpu), b.to_device(tch::Device::Cpu));
    (a.to_kind(tch::Kind::Float) - b.to_kind(tch::Kind::Float)).abs().max().double_value(&[])
}

#[track_caller]
pub fn assert_close(name: &str, got: &Tensor, want: &Tensor, tol: f64) {
    let d = max_abs_diff(got, want);
    assert!(d <= tol, "{name}: max |diff| = {d:e} > {tol:e}");
}
