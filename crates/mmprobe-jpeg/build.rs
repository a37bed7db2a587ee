//! Compiles csrc/decode.c against the libjpeg-turbo headers that turbojpeg-sys
//! builds from its vendored source (it exports their folder as
//! DEP_TURBOJPEG_INCLUDE); the library itself is linked by turbojpeg-sys.

fn main() {
    println!("cargo:rerun-if-changed=csrc/decode.c");
    println!("cargo:rerun-if-env-changed=DEP_TURBOJPEG_INCLUDE");
    let include = std::env::var("DEP_TURBOJPEG_INCLUDE").unwrap_or_default();
    let mut build = cc::Build::new();
    for dir in include.split(',').filter(|d| !d.is_empty()) {
        build.include(dir);
    }
    build.file("csrc/decode.c").warnings(true).extra_warnings(true).compile("mmprobe_jpeg_decode");
}
