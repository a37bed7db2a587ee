#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("drawing {figure}: {message}")]
    Draw { figure: String, message: String },
    #[error(transparent)]
    Analysis(#[from] mmprobe_analysis::AnalysisError),
    #[error(transparent)]
    Store(#[from] mmprobe_store::StoreError),
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("{0}")]
    Input(String),
}

pub type Result<T> = std::result::Result<T, PlotError>;
