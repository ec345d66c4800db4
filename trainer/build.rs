//! Links the trainer so it runs without `LD_LIBRARY_PATH` and really uses CUDA when present.
//!
//! * rpath: torch-sys (links = "tch") exports the libtorch directory as `DEP_TCH_LIBTORCH_LIB`;
//!   we add it as an rpath so the binary finds `libtorch_cpu.so` on its own.
//! * `libtorch_cuda.so`: nothing in the trainer references its symbols directly, so the linker's
//!   default `--as-needed` drops it and `tch::Cuda::is_available()` is false even on a GPU. We
//!   force it into `NEEDED` with `--no-as-needed` whenever the library exists.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-changed=build.rs");
    let Some(lib_dir) = std::env::var_os("DEP_TCH_LIBTORCH_LIB").map(PathBuf::from) else {
        println!("cargo:warning=torch-sys did not report its libtorch directory; no rpath added");
        return;
    };
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target_os != "linux" {
        return;
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
    if lib_dir.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-search=native={}", lib_dir.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
        println!("cargo:rustc-cfg=frugal_cuda_linked");
    }
    println!("cargo:rustc-check-cfg=cfg(frugal_cuda_linked)");
}
