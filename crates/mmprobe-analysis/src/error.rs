//! Analysis errors: one line each, naming the concept or partition.

#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    #[error(transparent)]
    Store(#[from] mmprobe_store::StoreError),
    #[error("concept '{concept}': {message}")]
    Concept { concept: String, message: String },
    #[error("invalid parameter: {0}")]
    Params(String),
    #[error("{what} did not converge: {message}")]
    Fit { what: &'static str, message: String },
    #[error("partition {partition}: {message}")]
    Partition { partition: String, message: String },
    #[error("{0}")]
    Input(String),
    /// Too few rows or groups for the folds asked for: a sweep skips the partition and records why.
    #[error("too small for cross-validation: {0}")]
    TooSmall(String),
    #[error(transparent)]
    Linfa(#[from] linfa::Error),
    #[error("cannot write {path}: {message}")]
    Write { path: String, message: String },
}

pub type Result<T> = std::result::Result<T, AnalysisError>;
