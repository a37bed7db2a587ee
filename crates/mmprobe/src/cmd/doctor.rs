use anyhow::Context;
use mmprobe_extract::LibtorchInfo;

pub fn run() -> anyhow::Result<()> {
    let info = LibtorchInfo::probe().context("libtorch cannot be used (rerun scripts/setup.sh)")?;
    let unknown = || "unknown".to_string();
    println!("mmprobe   {}", env!("CARGO_PKG_VERSION"));
    println!("libtorch  {}", info.version.clone().unwrap_or_else(unknown));
    println!("lib dir   {}", info.lib_dir.as_ref().map(|p| p.display().to_string()).unwrap_or_else(unknown));
    if info.cuda_available {
        println!(
            "cuda      available, {} device(s), cudnn {}",
            info.cuda_devices,
            if info.cudnn { "yes" } else { "no" }
        );
    } else {
        println!("cuda      not available (CPU only)");
    }
    println!("threads   {}", info.threads);
    Ok(())
}
