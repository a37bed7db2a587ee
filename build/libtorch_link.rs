//! Build script shared by every crate whose binaries or tests link tch.
//!
//! torch-sys links libtorch for its own object files only; a final binary also
//! needs (a) an rpath so it runs without LD_LIBRARY_PATH and (b) `libtorch.so`
//! kept in NEEDED even though no symbol of it is referenced directly: the CUDA
//! kernels register themselves from `libtorch_cuda.so`, which `libtorch.so`
//! pulls in. With `--as-needed` (the default on Debian/Ubuntu toolchains) the
//! linker drops it and CUDA is silently unavailable.

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        // torch-sys only provides it on Linux and macOS.
        return;
    };
    // Resolve the repo's `.libtorch` link so a copied binary still finds the venv.
    let lib = std::fs::canonicalize(&lib).map(|p| p.display().to_string()).unwrap_or(lib);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
    println!("cargo:rustc-link-arg=-Wl,--as-needed");
}
