//! Run-time options (device, dtype, threads) and facts about the loaded libtorch.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use tch::{Device, Kind};

/// Where to run: `auto` picks the first CUDA device when there is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl DeviceChoice {
    /// The concrete device, or an error when CUDA was asked for and is not there.
    pub fn resolve(self) -> Result<Device, RuntimeError> {
        match self {
            DeviceChoice::Auto => Ok(Device::cuda_if_available()),
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda(i) => {
                let n = tch::Cuda::device_count() as usize;
                if i < n {
                    Ok(Device::Cuda(i))
                } else if n == 0 {
                    Err(RuntimeError::NoCuda(i))
                } else {
                    Err(RuntimeError::CudaOutOfRange { index: i, count: n })
                }
            }
        }
    }
}

impl FromStr for DeviceChoice {
    type Err = RuntimeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|i| i.parse().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| RuntimeError::BadDevice(s.to_string())),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// A device as the command line spells it: `cpu`, `cuda:0`.
pub fn device_name(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// The dtype the model's weights and activations are computed in.
/// Stored activations are always f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DType {
    #[default]
    F32,
    F16,
    Bf16,
}

impl DType {
    pub fn kind(self) -> Kind {
        match self {
            DType::F32 => Kind::Float,
            DType::F16 => Kind::Half,
            DType::Bf16 => Kind::BFloat16,
        }
    }
}

impl FromStr for DType {
    type Err = RuntimeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" | "float32" => Ok(DType::F32),
            "f16" | "float16" => Ok(DType::F16),
            "bf16" | "bfloat16" => Ok(DType::Bf16),
            _ => Err(RuntimeError::BadDType(s.to_string())),
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::Bf16 => "bf16",
        })
    }
}

/// Run-time options, kept apart from the model's config.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub device: DeviceChoice,
    pub dtype: DType,
    pub batch_size: usize,
    /// libtorch intra-op threads; `None` keeps libtorch's default.
    pub threads: Option<usize>,
    /// f32 on CUDA may use TF32 (`--allow-tf32`): cuDNN runs the patch
    /// embedding's convolution in TF32. Without it f32 is IEEE f32 throughout.
    pub allow_tf32: bool,
    /// Images of more pixels are bad inputs (`--max-image-pixels`; Pillow's limit by default).
    pub max_image_pixels: u64,
}

/// Inputs per forward pass unless a run says otherwise (`--batch-size`).
pub const DEFAULT_BATCH_SIZE: usize = 32;

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            device: DeviceChoice::Auto,
            dtype: DType::F32,
            batch_size: DEFAULT_BATCH_SIZE,
            threads: None,
            allow_tf32: false,
            max_image_pixels: crate::preprocess::decode::MAX_IMAGE_PIXELS,
        }
    }
}

impl RunOptions {
    /// Applies the thread count and resolves the device. f32 on CUDA without
    /// `allow_tf32` is refused while the environment makes libtorch run every
    /// f32 matmul in TF32 ([`TF32_MATMUL_OVERRIDE`]).
    pub fn apply(&self) -> Result<Device, RuntimeError> {
        if let Some(n) = self.threads {
            tch::set_num_threads(n.max(1) as i32);
        }
        let device = self.device.resolve()?;
        if device.is_cuda() && self.dtype == DType::F32 && !self.allow_tf32 && tf32_matmul_forced() {
            return Err(RuntimeError::Tf32Forced);
        }
        Ok(device)
    }
}

/// When this environment variable is `1` (NVIDIA's PyTorch containers set
/// it), libtorch runs f32 matmuls on CUDA in TF32 whatever the program asks.
pub const TF32_MATMUL_OVERRIDE: &str = "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE";

/// libtorch reads [`TF32_MATMUL_OVERRIDE`] as a flag that is on only when it is `1`.
pub fn tf32_matmul_forced() -> bool {
    std::env::var(TF32_MATMUL_OVERRIDE).is_ok_and(|v| v == "1")
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("unknown device '{0}': use auto, cpu or cuda:N")]
    BadDevice(String),
    #[error("unknown dtype '{0}': use f32, f16 or bf16")]
    BadDType(String),
    #[error("cuda:{0} was asked for but libtorch sees no CUDA device")]
    NoCuda(usize),
    #[error("cuda:{index} was asked for but libtorch sees only {count} CUDA device(s)")]
    CudaOutOfRange { index: usize, count: usize },
    #[error(
        "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1 makes libtorch run f32 matmuls on CUDA in TF32: \
         unset it (or set it to 0) for f32, or pass --allow-tf32"
    )]
    Tf32Forced,
    #[error("libtorch does not compute: {0}")]
    Broken(String),
}

/// What the loaded libtorch is and can do.
#[derive(Debug, Clone)]
pub struct LibtorchInfo {
    /// The folder of the `libtorch_cpu.so` this process mapped.
    pub lib_dir: Option<PathBuf>,
    /// From `version.py` (a torch wheel) or `build-version` (a libtorch zip) beside it.
    pub version: Option<String>,
    pub cuda_available: bool,
    pub cuda_devices: usize,
    pub cudnn: bool,
    pub threads: i32,
}

impl LibtorchInfo {
    /// Probes the loaded library: runs one small computation, so a broken
    /// install is an error here rather than later.
    pub fn probe() -> Result<Self, RuntimeError> {
        let t = tch::Tensor::f_from_slice(&[1.0f32, 2.0, 3.0])
            .and_then(|t| t.f_dot(&t))
            .map_err(|e| RuntimeError::Broken(e.to_string()))?;
        let v = f64::try_from(t).map_err(|e| RuntimeError::Broken(e.to_string()))?;
        if v != 14.0 {
            return Err(RuntimeError::Broken(format!("[1,2,3]·[1,2,3] gave {v}, not 14")));
        }
        let lib_dir = mapped_library_dir("libtorch_cpu.so");
        let version = lib_dir.as_deref().and_then(read_version);
        Ok(LibtorchInfo {
            lib_dir,
            version,
            cuda_available: tch::Cuda::is_available(),
            cuda_devices: tch::Cuda::device_count().max(0) as usize,
            cudnn: tch::Cuda::cudnn_is_available(),
            threads: tch::get_num_threads(),
        })
    }
}

/// The folder holding a shared library this process has mapped (Linux only).
fn mapped_library_dir(name: &str) -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.rsplit('/').next() == Some(name))
        .and_then(|p| PathBuf::from(p).parent().map(PathBuf::from))
}

fn read_version(lib_dir: &std::path::Path) -> Option<String> {
    let root = lib_dir.parent()?;
    if let Ok(s) = std::fs::read_to_string(root.join("build-version")) {
        return Some(s.trim().to_string());
    }
    let py = std::fs::read_to_string(root.join("version.py")).ok()?;
    py.lines()
        .find_map(|l| l.strip_prefix("__version__"))
        .and_then(|rest| rest.split(['\'', '"']).nth(1))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtorch_links_and_computes() {
        let a = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).reshape([2, 2]);
        let b = a.matmul(&a.transpose(0, 1));
        let got: Vec<f32> = Vec::try_from(b.flatten(0, -1)).unwrap();
        assert_eq!(got, vec![5.0, 11.0, 11.0, 25.0]);
        let info = LibtorchInfo::probe().unwrap();
        assert!(info.version.as_deref().is_some_and(|v| v.starts_with("2.11.0")), "{info:?}");
    }

    #[test]
    fn parses_devices_and_dtypes() {
        assert_eq!("cuda:1".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cuda(1));
        assert_eq!("cpu".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        assert!("gpu".parse::<DeviceChoice>().is_err());
        assert_eq!("bf16".parse::<DType>().unwrap(), DType::Bf16);
        assert!("f64".parse::<DType>().is_err());
    }
}
