//! Store errors: one line each, naming the file or partition.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: {message}", path.display())]
    Parquet { path: PathBuf, message: String },
    #[error("{}: not a valid manifest: {message}", path.display())]
    BadManifest { path: PathBuf, message: String },
    #[error("{} is not an mmprobe store: it has no samples.parquet or acts/", .0.display())]
    NotAStore(PathBuf),
    #[error("{} holds no activations: it has samples.parquet but no acts/ (an extraction that wrote no rows?)", .0.display())]
    NoActivations(PathBuf),
    #[error("the store has no partition {0}")]
    NoPartition(String),
    #[error("partition {partition}: {message}")]
    BadPartition { partition: String, message: String },
    #[error("dataset {}: {message}", path.display())]
    Dataset { path: PathBuf, message: String },
    #[error("the store has no column '{column}' in samples.parquet (it has: {available})")]
    NoColumn { column: String, available: String },
    #[error(transparent)]
    Name(#[from] crate::names::NameError),
    #[error(
        "{}: value {value} (sample {sample}) is beyond the range of f16 (largest 65504); store bf16 (f32's range) or f32",
        path.display()
    )]
    F16Range { path: PathBuf, value: f32, sample: u32 },
}

pub type Result<T> = std::result::Result<T, StoreError>;

pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

pub(crate) fn pq(path: &std::path::Path) -> impl FnOnce(polars::error::PolarsError) -> StoreError + '_ {
    move |e| StoreError::Parquet { path: path.to_path_buf(), message: e.to_string() }
}
