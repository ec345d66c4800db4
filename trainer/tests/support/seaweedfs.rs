//! A SeaweedFS server for the tests and benchmarks that need a real S3-compatible store
//! (`tests/s3.rs`, `benches/checkpoint_store.rs`): the binary `scripts/seaweedfs.sh` builds,
//! started as `weed mini` on free loopback ports in a temporary directory. The e2e tests
//! (`e2e/tests/real_node.rs`) start it on an address the real node's pods reach.
#![allow(dead_code)]

use frugal_api::store::{Location, Store};
use frugal_api::v1alpha1::ObjectStoreSpec;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "frugaltest";
pub const SECRET_KEY: &str = "frugal-test-secret-key";
pub const FIELD: &str = "spec.checkpoint.store";

/// A SeaweedFS server (`weed mini`: master, volume server, filer and S3 gateway in one process)
/// on loopback, with one identity (the keys above) and one bucket, stopped and removed on drop.
pub struct SeaweedFs {
    child: Child,
    dir: PathBuf,
    pub endpoint: String,
    pub bucket: String,
}

/// The `weed` binary: `FRUGAL_WEED`, else the one `scripts/seaweedfs.sh` built into the cache.
fn weed_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FRUGAL_WEED") {
        return Some(PathBuf::from(p));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/seaweedfs.sh");
    let out = Command::new("bash").arg(script).arg("--print").stderr(Stdio::null()).output().ok()?;
    let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    (out.status.success() && path.is_file()).then_some(path)
}

fn free_ports(ip: &str, n: usize) -> Vec<u16> {
    // held together, so that no two are the same
    let listeners: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind((ip, 0)).unwrap()).collect();
    listeners.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

impl SeaweedFs {
    /// Starts a server holding `bucket`; `None` (the test is skipped) when there is no binary
    /// and `FRUGAL_REQUIRE_S3` is unset.
    pub fn start(name: &str, bucket: &str) -> Option<Self> {
        Self::start_on(name, bucket, "127.0.0.1")
    }

    /// [`SeaweedFs::start`] listening on `ip` only: an address of this machine that the pods of
    /// the e2e tests' real node reach (`tests/real_node.rs`).
    pub fn start_on(name: &str, bucket: &str, ip: &str) -> Option<Self> {
        let Some(weed) = weed_binary() else {
            assert!(
                std::env::var_os("FRUGAL_REQUIRE_S3").is_none(),
                "FRUGAL_REQUIRE_S3 is set but there is no SeaweedFS binary: run scripts/seaweedfs.sh (or set FRUGAL_WEED)"
            );
            eprintln!("skipping {name}: no SeaweedFS binary (run scripts/seaweedfs.sh, or set FRUGAL_WEED); FRUGAL_REQUIRE_S3 makes this a failure");
            return None;
        };
        let dir = std::env::temp_dir().join(format!("frugal-seaweedfs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let p = free_ports(ip, 10);
        let t0 = Instant::now();
        // At the lowest CPU priority: on a real node the store is another machine, so the
        // trainer's own work (the benchmark's steps) must not wait on it here.
        let child = Command::new("nice")
            .args(["-n", "19"])
            .arg(weed)
            .arg("mini")
            .args([format!("-ip={ip}"), format!("-ip.bind={ip}"), format!("-dir={}", dir.display()), format!("-bucket={bucket}")])
            .args([format!("-master.port={}", p[0]), format!("-master.port.grpc={}", p[1])])
            .args([format!("-volume.port={}", p[2]), format!("-volume.port.grpc={}", p[3])])
            .args([format!("-filer.port={}", p[4]), format!("-filer.port.grpc={}", p[5])])
            .args([format!("-s3.port={}", p[6]), format!("-s3.port.grpc={}", p[7])])
            .args([format!("-admin.port={}", p[8]), format!("-admin.port.grpc={}", p[9]), "-admin.port.legacy=0".into()])
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false", "-master.telemetry=false"])
            // the identity `weed mini` creates, with admin rights
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .current_dir(&dir)
            .stdout(std::fs::File::create(dir.join("weed.log")).unwrap())
            .stderr(std::fs::File::create(dir.join("weed.err")).unwrap())
            .spawn()
            .expect("starting weed mini");
        let server = Self { child, dir, endpoint: format!("http://{ip}:{}", p[6]), bucket: bucket.into() };
        // Ready once the bucket it creates can be listed.
        let store = server.store("", SECRET_KEY);
        let deadline = t0 + Duration::from_secs(90);
        loop {
            match store.check() {
                Ok(()) => break,
                Err(e) if Instant::now() > deadline => panic!("SeaweedFS did not serve {} within 90 s: {e}", server.bucket),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
        eprintln!("{name}: SeaweedFS started in {:.1} s", t0.elapsed().as_secs_f64());
        Some(server)
    }

    pub fn spec(&self, prefix: &str) -> ObjectStoreSpec {
        let uri = if prefix.is_empty() { format!("s3://{}", self.bucket) } else { format!("s3://{}/{prefix}", self.bucket) };
        ObjectStoreSpec { uri, endpoint: Some(self.endpoint.clone()), region: Some("us-east-1".into()), credentials_secret: None }
    }

    /// The bucket's `prefix`, with the access key and `secret`.
    pub fn store(&self, prefix: &str, secret: &str) -> Store {
        let vars = [("AWS_ACCESS_KEY_ID".to_string(), ACCESS_KEY.to_string()), ("AWS_SECRET_ACCESS_KEY".to_string(), secret.to_string())];
        Location::of(FIELD, &self.spec(prefix)).unwrap().open_with(vars).unwrap()
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.join("weed.err")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("SeaweedFS's log, last lines:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
