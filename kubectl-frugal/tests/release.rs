//! `make plugin-release` (scripts/plugin-release.sh), on a stand-in binary so that it costs no
//! release build: the archive holds the binary, its sha256 is the one the krew manifest and the
//! `.sha256` file name, and the same binary makes the same archive.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest as _, Sha256};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Runs the script with `binary` into `dist`.
fn release(binary: &Path, dist: &Path) {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/plugin-release.sh"))
        .env("FRUGAL_PLUGIN_BINARY", binary)
        .env("FRUGAL_DIST", dist)
        .env("FRUGAL_RELEASE_URL", "https://releases.invalid/v1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_archive_holds_the_binary_and_the_manifest_names_its_sha256() {
    let dir = std::env::temp_dir().join(format!("kubectl-frugal-release-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let binary = dir.join("stand-in");
    std::fs::write(&binary, "#!/bin/sh\necho frugal\n").unwrap();
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    let dist = dir.join("dist");
    release(&binary, &dist);

    let version = env!("CARGO_PKG_VERSION");
    let name = format!("kubectl-frugal_{version}_linux_amd64.tar.gz");
    let archive = std::fs::read(dist.join(&name)).unwrap();
    let sha = hex::encode(Sha256::digest(&archive));
    assert_eq!(std::fs::read_to_string(dist.join(format!("{name}.sha256"))).unwrap(), format!("{sha}  {name}\n"));

    let manifest: serde_json::Value = serde_saphyr::from_str(&std::fs::read_to_string(dist.join("frugal.yaml")).unwrap()).unwrap();
    assert_eq!((manifest["apiVersion"].as_str(), manifest["kind"].as_str()), (Some("krew.googlecontainertools.github.com/v1alpha2"), Some("Plugin")));
    assert_eq!(manifest["metadata"]["name"], "frugal");
    assert_eq!(manifest["spec"]["version"], format!("v{version}"));
    let platform = &manifest["spec"]["platforms"][0];
    assert_eq!(platform["selector"]["matchLabels"], serde_json::json!({"os": "linux", "arch": "amd64"}));
    assert_eq!(platform["sha256"], sha);
    assert_eq!(platform["uri"], format!("https://releases.invalid/v1/{name}"));
    assert_eq!(platform["bin"], "kubectl-frugal");
    let license = repo_root().join("LICENSE").exists();
    let files: Vec<&str> = platform["files"].as_array().unwrap().iter().filter_map(|f| f["from"].as_str()).collect();
    assert_eq!(files, if license { vec!["kubectl-frugal", "LICENSE"] } else { vec!["kubectl-frugal"] });

    // what krew unpacks: the binary, executable, byte for byte
    let unpacked = dir.join("unpacked");
    std::fs::create_dir_all(&unpacked).unwrap();
    let tar = Command::new("tar").arg("-xzf").arg(dist.join(&name)).arg("-C").arg(&unpacked).status().unwrap();
    assert!(tar.success());
    let mut listed: Vec<String> = std::fs::read_dir(&unpacked).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    listed.sort();
    assert_eq!(listed, if license { vec!["LICENSE", "kubectl-frugal"] } else { vec!["kubectl-frugal"] });
    let bin = unpacked.join("kubectl-frugal");
    assert_eq!(std::fs::read(&bin).unwrap(), std::fs::read(&binary).unwrap());
    assert_ne!(std::fs::metadata(&bin).unwrap().permissions().mode() & 0o111, 0, "not executable");

    // the same binary, the same archive
    std::thread::sleep(std::time::Duration::from_millis(1100));
    release(&binary, &dist);
    assert_eq!(std::fs::read(dist.join(&name)).unwrap(), archive, "a second run made other bytes");
    std::fs::remove_dir_all(&dir).ok();
}
