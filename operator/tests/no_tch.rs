//! libtorch belongs to the trainer only: the API crate and the operator must build without it.

use std::process::Command;

fn dependencies_of(package: &str) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    let out = Command::new(cargo)
        .args(["tree", "--manifest-path", manifest, "-p", package, "-e", "normal,build", "--prefix", "none", "--format", "{p}"])
        .output()
        .expect("cargo tree runs");
    assert!(out.status.success(), "cargo tree -p {package} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().filter_map(|l| l.split_whitespace().next().map(str::to_string)).collect()
}

#[test]
fn neither_api_nor_operator_depends_on_tch() {
    for package in ["frugal-api", "frugal-operator"] {
        let deps = dependencies_of(package);
        assert!(deps.iter().any(|d| d == package), "cargo tree listed nothing for {package}: {deps:?}");
        assert!(deps.iter().any(|d| d == "kube"), "{package}'s tree lacks kube; is the listing right? {deps:?}");
        let torch: Vec<_> = deps.iter().filter(|d| *d == "tch" || *d == "torch-sys").collect();
        assert!(torch.is_empty(), "{package} depends on {torch:?}; libtorch belongs to frugal-trainer only");
    }
}

#[test]
fn the_check_sees_tch_where_it_is() {
    // the trainer does depend on tch, so a listing that cannot see it would make the test above vacuous
    let deps = dependencies_of("frugal-trainer");
    assert!(deps.iter().any(|d| d == "tch"), "frugal-trainer's tree lacks tch: {deps:?}");
}
