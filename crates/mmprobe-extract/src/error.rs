//! Errors of model loading and extraction. Each prints as one line that names
//! the file, tensor or input it is about.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("{} is not a model folder: it has no config.json", .0.display())]
    NoConfig(PathBuf),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{} is not a valid config: {message}", path.display())]
    BadConfig { path: PathBuf, message: String },
    #[error("{}: model_type '{found}' is not supported (mmprobe knows: {known})", path.display())]
    UnsupportedFamily { path: PathBuf, found: String, known: String },
    #[error("{} has no weights (model.safetensors or model.safetensors.index.json)", .0.display())]
    NoWeights(PathBuf),
    #[error("{} is not a readable safetensors file: {message}", path.display())]
    BadWeights { path: PathBuf, message: String },
    #[error("tensor '{name}' is missing from the checkpoint in {}", dir.display())]
    MissingTensor { name: String, dir: PathBuf },
    #[error("tensor '{name}' has shape {found:?} in the checkpoint, the config implies {expected:?}")]
    ShapeMismatch { name: String, expected: Vec<i64>, found: Vec<i64> },
    #[error("tensor '{name}' has dtype {dtype}, which mmprobe cannot load")]
    UnsupportedDType { name: String, dtype: String },
    #[error("tokenizer {}: {message}", path.display())]
    Tokenizer { path: PathBuf, message: String },
    #[error("image {path}: {message}")]
    Image { path: String, message: String },
    #[error("bad input: {0}")]
    Input(String),
    #[error(transparent)]
    Store(#[from] mmprobe_store::StoreError),
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error("the forward pass over rows {first}..={last} failed: {message}")]
    Forward { first: u32, last: u32, message: String },
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

pub type Result<T> = std::result::Result<T, ExtractError>;

pub(crate) fn read_file(path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| ExtractError::Io { path: path.to_path_buf(), source })
}
