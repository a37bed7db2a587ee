//! Hugging Face safetensors checkpoints, single-file or sharded, memory-mapped,
//! copied into a tch `VarStore` by name with every name and shape checked.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use tch::{Device, Kind, Tensor, nn::VarStore};

use crate::error::{ExtractError, Result, read_file};
use crate::runtime::DType;

/// The weight files of one checkpoint folder.
pub struct Checkpoint {
    dir: PathBuf,
    files: Vec<(PathBuf, Mmap)>,
    /// tensor name -> index into `files`
    index: HashMap<String, usize>,
}

/// One component of a model whose checkpoint keys differ between layouts:
/// its prefix in our module tree, the prefixes transformers accepts for it
/// (the first that holds `probe` wins), and a key every layout has under it.
pub type Component = (&'static str, &'static [&'static str], &'static str);

/// Which checkpoint prefix each component has in one checkpoint: (canonical, found).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyLayout(pub Vec<(&'static str, &'static str)>);

impl KeyLayout {
    /// The checkpoint's name for a parameter's canonical name.
    pub fn checkpoint_name(&self, name: &str) -> String {
        for (canon, prefix) in &self.0 {
            if let Some(rest) = name.strip_prefix(canon) {
                return format!("{prefix}{rest}");
            }
        }
        name.to_string()
    }
}

impl Checkpoint {
    /// The layout of this checkpoint's keys for a model made of `components`.
    pub fn key_layout(&self, components: &[Component]) -> KeyLayout {
        KeyLayout(
            components
                .iter()
                .filter_map(|(canon, prefixes, probe)| {
                    prefixes.iter().find(|p| self.contains(&format!("{p}{probe}"))).map(|p| (*canon, *p))
                })
                .collect(),
        )
    }

    /// Opens `model.safetensors`, or the shards listed in `model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let shard_names: Vec<String> = if index_path.exists() {
            let text = read_file(&index_path)?;
            let index: serde_json::Value = serde_json::from_slice(&text)
                .map_err(|e| ExtractError::BadWeights { path: index_path.clone(), message: e.to_string() })?;
            let map = index.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| ExtractError::BadWeights {
                path: index_path.clone(),
                message: "no weight_map".into(),
            })?;
            let mut names: Vec<String> = map.values().filter_map(|v| v.as_str().map(str::to_string)).collect();
            names.sort();
            names.dedup();
            names
        } else if single.exists() {
            vec!["model.safetensors".into()]
        } else {
            return Err(ExtractError::NoWeights(dir.to_path_buf()));
        };

        Self::open_files(dir, shard_names.iter().map(|n| dir.join(n)))
    }

    /// Opens the given safetensors files as one checkpoint.
    pub fn open_files(dir: &Path, paths: impl IntoIterator<Item = PathBuf>) -> Result<Self> {
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for path in paths {
            let file = File::open(&path).map_err(|source| ExtractError::Io { path: path.clone(), source })?;
            // SAFETY: the checkpoint is read-only input; a file changed underneath
            // us while mapped is outside what we promise to handle.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|source| ExtractError::Io { path: path.clone(), source })?;
            let st = SafeTensors::deserialize(&mmap)
                .map_err(|e| ExtractError::BadWeights { path: path.clone(), message: e.to_string() })?;
            for tensor_name in st.names() {
                index.insert(tensor_name.to_string(), files.len());
            }
            files.push((path, mmap));
        }
        Ok(Checkpoint { dir: dir.to_path_buf(), files, index })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|(p, _)| p.as_path())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    /// Shape and raw bytes of one tensor.
    fn view(&self, name: &str) -> Result<safetensors::tensor::TensorView<'_>> {
        let i = *self
            .index
            .get(name)
            .ok_or_else(|| ExtractError::MissingTensor { name: name.to_string(), dir: self.dir.clone() })?;
        let (path, mmap) = &self.files[i];
        let st = SafeTensors::deserialize(mmap)
            .map_err(|e| ExtractError::BadWeights { path: path.clone(), message: e.to_string() })?;
        st.tensor(name).map_err(|e| ExtractError::BadWeights { path: path.clone(), message: e.to_string() })
    }

    pub fn shape(&self, name: &str) -> Result<Vec<i64>> {
        Ok(self.view(name)?.shape().iter().map(|&d| d as i64).collect())
    }

    /// One tensor on the CPU, in the file's dtype.
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        let view = self.view(name)?;
        let kind = match view.dtype() {
            Dtype::F32 => Kind::Float,
            Dtype::F16 => Kind::Half,
            // Moved as raw bytes: tch's typed bf16 path is wrong (README, traps).
            Dtype::BF16 => Kind::BFloat16,
            Dtype::F64 => Kind::Double,
            Dtype::I64 => Kind::Int64,
            Dtype::I32 => Kind::Int,
            Dtype::U8 => Kind::Uint8,
            Dtype::BOOL => Kind::Bool,
            other => {
                return Err(ExtractError::UnsupportedDType { name: name.to_string(), dtype: format!("{other:?}") });
            }
        };
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        Ok(Tensor::f_from_data_size(view.data(), &shape, kind)?)
    }

    /// Copies every variable of `vs` from the checkpoint. `key_for` maps a
    /// variable name to the checkpoint name (identity when the layouts agree);
    /// each variable keeps the store's dtype and device.
    pub fn load_into(&self, vs: &VarStore, key_for: impl Fn(&str) -> String) -> Result<LoadReport> {
        let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
        let mut used = std::collections::HashSet::new();
        for (name, var) in &vars {
            let key = key_for(name);
            let found = self.shape(&key).map_err(|e| match e {
                ExtractError::MissingTensor { dir, .. } => ExtractError::MissingTensor { name: key.clone(), dir },
                e => e,
            })?;
            let expected = var.size();
            if found != expected {
                return Err(ExtractError::ShapeMismatch { name: key, expected, found });
            }
            let src = self.tensor(&key)?.f_to_kind(var.kind())?.f_to_device(var.device())?;
            tch::no_grad(|| {
                let mut var = var.shallow_clone();
                var.f_copy_(&src)
            })?;
            used.insert(key);
        }
        let unused = self.index.keys().filter(|k| !used.contains(*k)).cloned().collect();
        Ok(LoadReport { loaded: vars.len(), unused })
    }
}

/// The variable store a model is declared in before [`Checkpoint::load_into`]
/// fills it. Its parameters are made in the run's dtype: a 16-bit model never
/// exists in f32, and each checkpoint tensor is converted once, on the way in.
pub fn var_store(device: Device, dtype: DType) -> VarStore {
    let mut vs = VarStore::new(device);
    vs.set_kind(dtype.kind());
    vs
}

/// What a load did: unused names are normal for buffers such as `position_ids`.
#[derive(Debug)]
pub struct LoadReport {
    pub loaded: usize,
    pub unused: Vec<String>,
}

impl LoadReport {
    /// The unused names that are not buffers transformers saves beside the
    /// weights (`position_ids`): tensors the model was meant to hold but does not.
    pub fn unexpected(&self) -> Vec<String> {
        let mut v: Vec<String> = self.unused.iter().filter(|n| !n.ends_with("position_ids")).cloned().collect();
        v.sort();
        v
    }
}
