//! The operator as a child process of a test, watching only the test's namespace, so tests run
//! side by side and one can kill and restart its own operator. Its log goes to
//! [`log_path`], which the failure diagnostics print.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::{Context as _, Result, bail, ensure};

/// Trainer image the operator gives GPU jobs that set none; kwok runs no containers.
pub const TRAINER_IMAGE: &str = "registry.invalid/frugal/trainer:e2e";

/// Where the operator of `namespace` logs.
pub fn log_path(namespace: &str) -> PathBuf {
    std::env::temp_dir().join(format!("frugal-operator-{namespace}.log"))
}

/// The operator binary: `FRUGAL_OPERATOR_BIN`, else the one `cargo build -p frugal-operator`
/// put beside this test binary's profile directory.
pub fn binary() -> Result<PathBuf> {
    if let Ok(path) = std::env::var("FRUGAL_OPERATOR_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> -> target/<profile>/frugal-operator
    let path = exe.parent().and_then(|deps| deps.parent()).map(|profile| profile.join("frugal-operator")).context("locating the target directory")?;
    if !path.exists() {
        bail!("{} does not exist: run `cargo build -p frugal-operator` first (scripts/e2e.sh does), or set FRUGAL_OPERATOR_BIN", path.display());
    }
    Ok(path)
}

/// A running operator; killed when dropped.
pub struct Operator {
    child: Child,
    namespace: String,
    /// How long its log was when it started: what this process logs comes after.
    log_from: usize,
}

impl Operator {
    /// Starts `frugal-operator run --namespace <namespace>` with `extra` arguments.
    pub fn start(namespace: &str, extra: &[&str]) -> Result<Self> {
        Self::start_with_env(namespace, extra, &[])
    }

    /// [`Operator::start`] with `env` set for the process (`KUBECONFIG`, say).
    pub fn start_with_env(namespace: &str, extra: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        let log = OpenOptions::new().create(true).append(true).open(log_path(namespace))?;
        let log_from = log.metadata()?.len() as usize;
        let child = Command::new(binary()?)
            .envs(env.iter().copied())
            .args(["run", "--namespace", namespace, "--metrics-addr", "127.0.0.1:0", "--trainer-image", TRAINER_IMAGE])
            // CPU jobs on the real node run the image images/build makes
            .args(["--trainer-cpu-image", &crate::node::cpu_trainer_image()])
            // each test's record of deleted jobs' bills in its own namespace (the operator's
            // default, outside a pod, is default/frugal-billed, which the tests would share)
            .args(if extra.iter().any(|a| a.starts_with("--billed-record")) {
                vec![]
            } else {
                vec!["--billed-record".to_string(), format!("{namespace}/frugal-billed")]
            })
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting frugal-operator")?;
        Ok(Self { child, namespace: namespace.into(), log_from })
    }

    /// Kills the operator at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Sends SIGTERM, as the kubelet does when its pod is deleted, and waits up to `limit` for the
    /// process to exit; returns how long it took. Past the limit it is killed and this fails.
    pub fn terminate_within(&mut self, limit: std::time::Duration) -> Result<std::time::Duration> {
        let started = std::time::Instant::now();
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status()?;
        ensure!(status.success(), "kill -TERM {} failed", self.child.id());
        while started.elapsed() < limit {
            if let Some(exit) = self.child.try_wait()? {
                ensure!(exit.success(), "the operator exited with {exit} after SIGTERM");
                return Ok(started.elapsed());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        self.kill()?;
        bail!("the operator was still running {limit:?} after SIGTERM")
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> Result<bool> {
        Ok(self.child.try_wait()?.is_none())
    }

    /// The address this process serves `/metrics` on (it binds a free port), from its log line
    /// `serving /metrics, /healthz and /readyz`; waits up to 30 s for it.
    pub async fn metrics_addr(&self) -> Result<std::net::SocketAddr> {
        let started = std::time::Instant::now();
        loop {
            let log = self.log();
            let line = log
                .get(self.log_from..)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|l| l["message"].as_str().is_some_and(|m| m.starts_with("serving /metrics")));
            if let Some(addr) = line.as_ref().and_then(|l| l["addr"].as_str()) {
                return addr.parse().with_context(|| format!("the operator logged {addr} as its metrics address"));
            }
            ensure!(started.elapsed() < std::time::Duration::from_secs(30), "the operator logged no metrics address within 30 s");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// A scrape of the operator's `/metrics`.
    pub async fn scrape(&self) -> Result<String> {
        let addr = self.metrics_addr().await?;
        tokio::task::spawn_blocking(move || crate::prometheus::scrape(addr)).await?
    }

    /// The operator's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(log_path(&self.namespace)).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
