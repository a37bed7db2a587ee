#[derive(Debug, thiserror::Error)]
pub enum ZooError {
    #[error("invalid parameter: {0}")]
    Params(String),
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("{0}")]
    Model(String),
}

/// Loading a checkpoint, tokenizer or processor through mmprobe-extract.
impl From<mmprobe_extract::ExtractError> for ZooError {
    fn from(e: mmprobe_extract::ExtractError) -> Self {
        ZooError::Model(e.to_string())
    }
}

/// A libtorch call (optimiser set-up, tensor conversion).
impl From<tch::TchError> for ZooError {
    fn from(e: tch::TchError) -> Self {
        ZooError::Model(e.to_string())
    }
}
