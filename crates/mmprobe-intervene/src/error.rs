//! Intervention errors: one line each, naming what was refused.

#[derive(Debug, thiserror::Error)]
pub enum InterveneError {
    #[error(transparent)]
    Extract(#[from] mmprobe_extract::ExtractError),
    #[error(transparent)]
    Store(#[from] mmprobe_store::StoreError),
    #[error(transparent)]
    Analysis(#[from] mmprobe_analysis::AnalysisError),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    #[error("invalid parameter: {0}")]
    Params(String),
    #[error("{0}")]
    Input(String),
}

pub type Result<T> = std::result::Result<T, InterveneError>;
