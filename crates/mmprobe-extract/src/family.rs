//! Which model family a checkpoint folder holds, from its `config.json`.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::error::{ExtractError, Result, read_file};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Clip,
    Llava,
}

impl Family {
    const KNOWN: &'static [(&'static str, Family)] = &[("clip", Family::Clip), ("llava", Family::Llava)];

    pub fn name(self) -> &'static str {
        match self {
            Family::Clip => "clip",
            Family::Llava => "llava",
        }
    }
}

/// A checkpoint folder's config.json, parsed once.
pub struct ModelDir {
    pub dir: PathBuf,
    pub family: Family,
    pub config_path: PathBuf,
    pub config_bytes: Vec<u8>,
}

impl ModelDir {
    pub fn open(dir: &Path) -> Result<Self> {
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(ExtractError::NoConfig(dir.to_path_buf()));
        }
        let config_bytes = read_file(&config_path)?;
        let value: serde_json::Value = serde_json::from_slice(&config_bytes)
            .map_err(|e| ExtractError::BadConfig { path: config_path.clone(), message: e.to_string() })?;
        let model_type = value.get("model_type").and_then(|v| v.as_str()).unwrap_or("");
        let family = Family::KNOWN.iter().find(|(n, _)| *n == model_type).map(|(_, f)| *f).ok_or_else(|| {
            ExtractError::UnsupportedFamily {
                path: config_path.clone(),
                found: if model_type.is_empty() { "(none)".into() } else { model_type.into() },
                known: Family::KNOWN.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "),
            }
        })?;
        Ok(ModelDir { dir: dir.to_path_buf(), family, config_path, config_bytes })
    }

    /// The config as the family's struct.
    pub fn config<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.config_bytes)
            .map_err(|e| ExtractError::BadConfig { path: self.config_path.clone(), message: e.to_string() })
    }
}
