//! Links the trainer so it runs without `LD_LIBRARY_PATH` and really uses CUDA when present.
//!
//! * rpath: torch-sys (links = "tch") exports the libtorch directory as `DEP_TCH_LIBTORCH_LIB`;
//!   we add it as an rpath so the binary finds `libtorch_cpu.so` on its own.
//! * `libtorch_cuda.so` is deliberately not linked: the binary would then need every CUDA library
//!   to start, and the `cpu` image has none. `src/cuda.rs` opens it at start where it exists.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-changed=build.rs");
    provenance();
    let Some(lib_dir) = std::env::var_os("DEP_TCH_LIBTORCH_LIB").map(PathBuf::from) else {
        println!("cargo:warning=torch-sys did not report its libtorch directory; no rpath added");
        return;
    };
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target_os != "linux" {
        return;
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
}

/// Versions for run reports: the git commit of the source and the libtorch (PyTorch) release.
fn provenance() {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    if let Some(commit) = git(&["rev-parse", "--short=12", "HEAD"]) {
        println!("cargo:rustc-env=FRUGAL_GIT_COMMIT={commit}");
    }
    // HEAD names the branch; the branch's ref file changes with each commit.
    for path in ["HEAD".to_string()].into_iter().chain(git(&["symbolic-ref", "-q", "HEAD"])) {
        if let Some(p) = git(&["rev-parse", "--git-path", &path]).filter(|p| std::path::Path::new(p).exists()) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    if let Some(lib_dir) = std::env::var_os("DEP_TCH_LIBTORCH_LIB").map(PathBuf::from) {
        // The wheel's torch/version.py: `__version__ = '2.11.0+cpu'`.
        let version = std::fs::read_to_string(lib_dir.join("../version.py"))
            .ok()
            .and_then(|t| t.lines().find(|l| l.starts_with("__version__")).and_then(|l| l.split('\'').nth(1)).map(str::to_string));
        println!("cargo:rustc-env=FRUGAL_LIBTORCH_VERSION={}", version.unwrap_or_else(|| "unknown".into()));
    }
}
