//! Flux for real: its source-controller and kustomize-controller (built by `e2e/cluster/build`
//! from their Go modules) running against the test cluster, and a Git repository they clone over
//! smart HTTP from loopback, served by Git's own `git http-backend`.
//!
//! The controllers watch only the test's namespace (their runtime namespace), so two tests'
//! Flux objects never meet; their artifacts live in a directory removed with the test.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use kube::Api;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::Value;

use crate::processes::{Processes, free_port};
use crate::{FIELD_MANAGER, TestContext};

/// The directory of Flux's binaries and CRDs: `FRUGAL_FLUX_BIN`, which scripts/e2e.sh sets from
/// `e2e/cluster/build`.
pub fn bin_dir() -> Result<PathBuf> {
    std::env::var_os("FRUGAL_FLUX_BIN").map(PathBuf::from).filter(|p| p.join("kustomize-controller").exists()).context(
        "FRUGAL_FLUX_BIN does not name Flux's controllers: run `eval \"$(e2e/cluster/build)\"` and set FRUGAL_FLUX_BIN=$FLUX_BIN (scripts/e2e.sh does)",
    )
}

/// Runs `git` with `args` in `dir`, failing with what it printed.
pub fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .args(["-c", "user.name=frugal e2e", "-c", "user.email=e2e@frugal.invalid", "-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .output()
        .context("running git")?;
    ensure!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A bare Git repository served over smart HTTP on loopback, and a working tree that commits
/// and pushes to it.
pub struct GitServer {
    root: PathBuf,
    addr: SocketAddr,
    work: PathBuf,
}

impl GitServer {
    /// Serves `<dir>/frugal.git` (created empty) at `http://127.0.0.1:<port>/frugal.git`, with a
    /// working tree at `<dir>/work`.
    pub fn start(dir: &Path) -> Result<Self> {
        let root = dir.join("served");
        std::fs::create_dir_all(&root)?;
        git(&root, &["init", "--quiet", "--bare", "frugal.git"])?;
        let work = dir.join("work");
        std::fs::create_dir_all(&work)?;
        git(&work, &["init", "--quiet"])?;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let served = root.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let served = served.clone();
                std::thread::spawn(move || {
                    if let Err(e) = serve(stream, &served) {
                        eprintln!("e2e: git server: {e:#}");
                    }
                });
            }
        });
        let server = GitServer { root, addr, work };
        git(&server.work, &["remote", "add", "origin", &server.url()])?;
        Ok(server)
    }

    /// The repository's URL, as a GitRepository names it.
    pub fn url(&self) -> String {
        format!("http://{}/frugal.git", self.addr)
    }

    /// The working tree: write files here, then [`GitServer::commit`].
    pub fn work(&self) -> &Path {
        &self.work
    }

    /// Commits everything in the working tree and pushes it to `main`; the commit's hash.
    pub fn commit(&self, message: &str) -> Result<String> {
        git(&self.work, &["add", "--all"])?;
        git(&self.work, &["commit", "--quiet", "--allow-empty", "-m", message])?;
        git(&self.work, &["push", "--quiet", "origin", "HEAD:main"])?;
        let sha = git(&self.work, &["rev-parse", "HEAD"])?;
        ensure!(git(&self.root.join("frugal.git"), &["rev-parse", "main"])? == sha, "the push did not reach the served repository");
        Ok(sha)
    }
}

/// One HTTP/1.1 request, answered by `git http-backend` as a CGI program, then the connection
/// closes. Request bodies come with a Content-Length or chunked, as Go's and Git's clients send.
fn serve(stream: TcpStream, root: &Path) -> Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().context("no method")?.to_string(), parts.next().context("no target")?.to_string());
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if header("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(length) = header("content-length") {
        body.resize(length.parse()?, 0);
        reader.read_exact(&mut body)?;
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let mut cgi = Command::new("git");
    cgi.arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", &method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("CONTENT_TYPE", header("content-type").unwrap_or_default())
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_ADDR", "127.0.0.1")
        // pushes come from the test's own working tree, on loopback
        .env("REMOTE_USER", "e2e")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(encoding) = header("content-encoding") {
        cgi.env("HTTP_CONTENT_ENCODING", encoding);
    }
    if let Some(protocol) = header("git-protocol") {
        cgi.env("GIT_PROTOCOL", protocol);
    }
    let mut child = cgi.spawn().context("starting git http-backend")?;
    let mut stdin = child.stdin.take().context("no stdin")?;
    let writer = std::thread::spawn(move || stdin.write_all(&body));
    let out = child.wait_with_output()?;
    writer.join().ok();
    ensure!(out.status.success(), "git http-backend {method} {target}: {}", String::from_utf8_lossy(&out.stderr));
    let split = out.stdout.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, 4));
    let split = split.or_else(|| out.stdout.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
    let (end, gap) = split.context("git http-backend wrote no CGI header")?;
    let cgi_headers = String::from_utf8_lossy(&out.stdout[..end]).to_string();
    let mut status = "200 OK".to_string();
    let mut response = Vec::new();
    for h in cgi_headers.lines() {
        match h.split_once(':') {
            Some((name, value)) if name.eq_ignore_ascii_case("status") => status = value.trim().to_string(),
            Some(_) => response.extend_from_slice(format!("{h}\r\n").as_bytes()),
            None => {}
        }
    }
    let content = &out.stdout[end + gap..];
    let mut stream = reader.into_inner();
    stream.write_all(format!("HTTP/1.1 {status}\r\n").as_bytes())?;
    stream.write_all(&response)?;
    stream.write_all(format!("Content-Length: {}\r\nConnection: close\r\n\r\n", content.len()).as_bytes())?;
    stream.write_all(content)?;
    stream.flush()?;
    Ok(())
}

/// Creates Flux's CRDs (as its install does) and starts its two controllers against the cluster
/// in KUBECONFIG, watching only the test's namespace; they are killed when dropped, and their
/// output goes to `<dir>/<controller>.log`.
pub async fn start(ctx: &TestContext, dir: &Path) -> Result<Processes> {
    let bin = bin_dir()?;
    crate::manifests::install_crd_files(&ctx.client, &crate::manifests::yaml_files(&bin.join("crds"))?).await?;
    let storage = dir.join("artifacts");
    std::fs::create_dir_all(&storage)?;
    let storage_addr = format!("127.0.0.1:{}", free_port()?);
    let controller = |name: &str| {
        let mut cmd = Command::new(bin.join(name));
        cmd.env("RUNTIME_NAMESPACE", &ctx.namespace)
            .args(["--watch-all-namespaces=false", "--enable-leader-election=false", "--log-level=debug"])
            .args(["--metrics-addr=127.0.0.1:0", "--health-addr=127.0.0.1:0"]);
        cmd
    };
    let mut flux = Processes::new("Flux's controllers", dir);
    let mut source = controller("source-controller");
    source.arg(format!("--storage-path={}", storage.display())).arg(format!("--storage-addr={storage_addr}"));
    flux.spawn("source-controller", source.arg(format!("--storage-adv-addr={storage_addr}")))?;
    flux.spawn("kustomize-controller", controller("kustomize-controller").arg("--no-remote-bases=true"))?;
    Ok(flux)
}

/// Flux's objects as dynamic ones: `GitRepository` (source.toolkit.fluxcd.io/v1) and
/// `Kustomization` (kustomize.toolkit.fluxcd.io/v1).
pub fn resource(kind: &str) -> ApiResource {
    let gvk = match kind {
        "GitRepository" => GroupVersionKind::gvk("source.toolkit.fluxcd.io", "v1", "GitRepository"),
        _ => GroupVersionKind::gvk("kustomize.toolkit.fluxcd.io", "v1", kind),
    };
    ApiResource::from_gvk(&gvk)
}

/// Applies a Flux object (JSON with apiVersion and kind) in the test's namespace.
pub async fn apply(ctx: &TestContext, object: &Value) -> Result<()> {
    let kind = object["kind"].as_str().context("no kind")?;
    let name = object["metadata"]["name"].as_str().context("no name")?;
    let api = Api::<DynamicObject>::namespaced_with(ctx.client.clone(), &ctx.namespace, &resource(kind));
    api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(object)).await?;
    Ok(())
}

/// A Flux object's Ready condition as Flux wrote it (status, reason, message), the revision it
/// last applied (a Kustomization) or stored (a GitRepository), and the one it last tried (a
/// Kustomization whose health check fails has tried a revision it does not call applied).
#[derive(Debug, Clone, PartialEq)]
pub struct Ready {
    pub status: String,
    pub reason: String,
    pub message: String,
    pub revision: String,
    pub attempted: String,
}

impl Ready {
    /// The same state, whatever durations the message quotes.
    pub fn same(&self, other: &Ready) -> bool {
        let plain = |r: &Ready| (r.status.clone(), r.reason.clone(), r.revision.clone(), r.attempted.clone());
        plain(self) == plain(other)
    }
}

/// The Ready condition of the Flux object `kind`/`name`, if it has one.
pub async fn ready(ctx: &TestContext, kind: &str, name: &str) -> Result<Option<Ready>> {
    let api = Api::<DynamicObject>::namespaced_with(ctx.client.clone(), &ctx.namespace, &resource(kind));
    let object = api.get(name).await?;
    let status = object.data.get("status").cloned().unwrap_or(Value::Null);
    let revision = status["lastAppliedRevision"].as_str().or(status["artifact"]["revision"].as_str()).unwrap_or_default().to_string();
    let attempted = status["lastAttemptedRevision"].as_str().unwrap_or(&revision).to_string();
    let conditions = status["conditions"].as_array().cloned().unwrap_or_default();
    Ok(conditions.iter().find(|c| c["type"] == "Ready").map(|c| Ready {
        status: c["status"].as_str().unwrap_or_default().into(),
        reason: c["reason"].as_str().unwrap_or_default().into(),
        message: c["message"].as_str().unwrap_or_default().into(),
        revision: revision.clone(),
        attempted: attempted.clone(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Git's own client clones what the test pushed, over the server's smart HTTP, and fetches a
    /// second commit: the protocol Flux's source-controller speaks.
    #[test]
    fn git_clones_and_fetches_from_the_served_repository() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("frugal-git-http-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        std::fs::create_dir_all(&dir)?;
        let server = GitServer::start(&dir)?;
        std::fs::write(server.work().join("a.yaml"), "a: 1\n")?;
        let first = server.commit("first")?;
        git(&dir, &["clone", "--quiet", "--branch", "main", &server.url(), "clone"])?;
        let clone = dir.join("clone");
        assert_eq!(git(&clone, &["rev-parse", "HEAD"])?, first);
        assert_eq!(std::fs::read_to_string(clone.join("a.yaml"))?, "a: 1\n");
        std::fs::write(server.work().join("a.yaml"), "a: 2\n")?;
        let second = server.commit("second")?;
        git(&clone, &["pull", "--quiet", "--ff-only"])?;
        assert_eq!(git(&clone, &["rev-parse", "HEAD"])?, second);
        assert_eq!(std::fs::read_to_string(clone.join("a.yaml"))?, "a: 2\n");
        std::fs::remove_dir_all(&dir).ok();
        Ok(())
    }
}
