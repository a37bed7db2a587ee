#[derive(Debug, thiserror::Error)]
pub enum ZooError {
    #[error("invalid parameter: {0}")]
    Params(String),
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("{0}")]
    Model(String),
}
