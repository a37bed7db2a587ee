//! Writing a trained model as a Hugging Face folder: JSON files and
//! `model.safetensors` with the metadata transformers insists on. Every file
//! is written beside its final name and renamed, so an interrupted save never
//! leaves a half-written checkpoint.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use tch::{Kind, Tensor};

use crate::ZooError;

fn io(path: &Path, e: impl std::fmt::Display) -> ZooError {
    ZooError::Io { path: path.display().to_string(), message: e.to_string() }
}

/// The store's atomic write (temporary beside the target, synced, renamed).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ZooError> {
    mmprobe_store::layout::write_atomic(path, |f| {
        f.write_all(bytes).map_err(|source| mmprobe_store::StoreError::Io { path: path.to_path_buf(), source })
    })
    .map_err(|e| match e {
        mmprobe_store::StoreError::Io { source, .. } => io(path, source),
        e => io(path, e),
    })
}

/// The folder a model is written to, created with its parents.
pub fn create_dir(dir: &Path) -> Result<(), ZooError> {
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))
}

pub fn read_json(path: &Path) -> Result<serde_json::Value, ZooError> {
    let bytes = std::fs::read(path).map_err(|e| io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| io(path, e))
}

pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), ZooError> {
    let mut text = serde_json::to_string_pretty(value).map_err(|e| io(path, e))?;
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

/// Saves named tensors as float32 safetensors (keys sorted, so the bytes
/// depend only on the values), with `{"format": "pt"}` metadata: transformers
/// refuses files without it.
pub fn write_safetensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<(), ZooError> {
    let mut named: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.detach().to_kind(Kind::Float).to_device(tch::Device::Cpu).contiguous();
        let shape: Vec<usize> = t.size().iter().map(|&s| s as usize).collect();
        let values = Vec::<f32>::try_from(t.flatten(0, -1)).map_err(|e| io(path, e))?;
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        named.push((name.clone(), shape, bytes));
    }
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let mut views = Vec::with_capacity(named.len());
    for (name, shape, bytes) in &named {
        let view = TensorView::new(Dtype::F32, shape.clone(), bytes).map_err(|e| io(path, e))?;
        views.push((name.as_str(), view));
    }
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = safetensors::tensor::serialize(views, Some(metadata)).map_err(|e| io(path, e))?;
    write_atomic(path, &bytes)
}
