//! The watch loop and one supervisor task per pod: start the process, report Running, forward
//! a deletion as SIGTERM, SIGKILL after the grace period, report how it ended.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use crate::hosts::Hosts;
use crate::pod::{ApiServer, prepare};

/// Keeps marked pods from disappearing before their process has ended.
pub const FINALIZER: &str = "frugal.dev/pod-runner";

pub struct Settings {
    pub selector: String,
    pub work_dir: PathBuf,
    pub log_dir: PathBuf,
    pub path_prefix: String,
}

struct Shared {
    client: Client,
    api_server: ApiServer,
    settings: Settings,
    hosts: Mutex<Hosts>,
    next_ip: Mutex<u32>,
}

struct Running {
    terminate: Option<oneshot::Sender<i64>>,
}

/// Runs until `shutdown` resolves; then stops every process and releases every pod.
pub async fn run(client: Client, api_server: ApiServer, settings: Settings, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    std::fs::create_dir_all(&settings.work_dir)?;
    std::fs::create_dir_all(&settings.log_dir)?;
    let shared = Arc::new(Shared { client: client.clone(), api_server, hosts: Mutex::new(Hosts::system()), next_ip: Mutex::new(0), settings });
    let pods: Api<Pod> = Api::all(client.clone());
    let config = watcher::Config::default().labels(&shared.settings.selector);
    let mut events = watcher::watcher(pods, config).boxed();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut finished: HashSet<String> = HashSet::new();
    let mut touched: HashMap<String, (String, String)> = HashMap::new();
    tokio::pin!(shutdown);

    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(uid) = done_rx.recv() => {
                running.remove(&uid);
                finished.insert(uid);
            }
            event = events.next() => {
                let pod = match event {
                    Some(Ok(Event::Apply(pod) | Event::InitApply(pod))) => pod,
                    Some(Ok(Event::Delete(pod))) => {
                        if let Some(r) = running.get_mut(&pod.uid().unwrap_or_default())
                            && let Some(t) = r.terminate.take() { let _ = t.send(0); }
                        continue;
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => { tracing::warn!(error = %e, "watch error; the watcher retries"); continue; }
                    None => break,
                };
                let uid = pod.uid().unwrap_or_default();
                let key = (pod.namespace().unwrap_or_default(), pod.name_any());
                if pod.metadata.deletion_timestamp.is_some() {
                    match running.get_mut(&uid) {
                        Some(r) => {
                            if let Some(t) = r.terminate.take() {
                                let grace = pod.metadata.deletion_grace_period_seconds
                                    .or(pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds))
                                    .unwrap_or(30);
                                let _ = t.send(grace);
                            }
                        }
                        None => release(&shared.client, &key.0, &key.1).await,
                    }
                    continue;
                }
                let bound = pod.spec.as_ref().is_some_and(|s| s.node_name.is_some());
                let terminal = matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"));
                if bound && !terminal && !running.contains_key(&uid) && !finished.contains(&uid) {
                    let (tx, rx) = oneshot::channel();
                    running.insert(uid.clone(), Running { terminate: Some(tx) });
                    touched.insert(uid.clone(), key);
                    let shared = shared.clone();
                    let done = done_tx.clone();
                    tokio::spawn(async move {
                        if let Err(e) = supervise(&shared, pod, rx).await {
                            tracing::error!(pod = %uid, error = format!("{e:#}"), "pod failed to run");
                        }
                        let _ = done.send(uid);
                    });
                }
            }
        }
    }

    // Stop what is still running, as a node drain would, then let every pod go.
    for r in running.values_mut() {
        if let Some(t) = r.terminate.take() {
            let _ = t.send(5);
        }
    }
    while !running.is_empty() {
        match tokio::time::timeout(Duration::from_secs(30), done_rx.recv()).await {
            Ok(Some(uid)) => {
                running.remove(&uid);
            }
            _ => break,
        }
    }
    for (ns, name) in touched.values() {
        release(&shared.client, ns, name).await;
    }
    Ok(())
}

/// Removes the runner's finalizer so that a deleted pod can go.
async fn release(client: &Client, ns: &str, name: &str) {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let Ok(pod) = api.get(name).await else { return };
    let finalizers: Vec<String> = pod.finalizers().iter().filter(|f| *f != FINALIZER).cloned().collect();
    if finalizers.len() != pod.finalizers().len() {
        let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": pod.resource_version()}});
        if let Err(e) = api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            tracing::warn!(pod = name, error = %e, "could not remove the finalizer");
        }
    }
}

fn now() -> String {
    Timestamp::now().round(k8s_openapi::jiff::Unit::Second).unwrap().to_string()
}

async fn supervise(shared: &Shared, pod: Pod, mut terminate: oneshot::Receiver<i64>) -> Result<()> {
    let ns = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let uid = pod.uid().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(shared.client.clone(), &ns);

    // Hold the pod until its process has ended.
    let mut finalizers = pod.finalizers().to_vec();
    finalizers.push(FINALIZER.to_string());
    let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": pod.resource_version()}});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await.context("adding the finalizer")?;

    let ip = {
        let mut next = shared.next_ip.lock().unwrap();
        *next += 1;
        format!("127.77.{}.{}", *next / 250, *next % 250 + 1)
    };
    let names = host_names(&pod, &ns);
    shared.hosts.lock().unwrap().add(&uid, &ip, &names)?;

    let dir = shared.settings.work_dir.join(format!("{ns}.{name}"));
    let log_path = shared.settings.log_dir.join(format!("{ns}.{name}.log"));
    let result = run_process(shared, &api, &pod, &ip, &dir, &log_path, &mut terminate).await;
    shared.hosts.lock().unwrap().remove(&uid)?;
    let _ = std::fs::remove_dir_all(&dir);

    let (code, started) = match result {
        Ok(v) => v,
        Err(e) => {
            // Could not start: the kubelet would report the container as failed to start.
            std::fs::write(&log_path, format!("pod runner: {e:#}\n")).ok();
            (128, now())
        }
    };
    let container = container_name(&pod);
    let reason = if code == 0 { "Completed" } else { "Error" };
    let status = json!({"status": {
        "phase": if code == 0 { "Succeeded" } else { "Failed" },
        "conditions": [
            {"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now()},
            {"type": "ContainersReady", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now()},
        ],
        "containerStatuses": [{
            "name": container, "ready": false, "started": false, "restartCount": 0,
            "image": pod.spec.as_ref().and_then(|s| s.containers.first()).and_then(|c| c.image.clone()).unwrap_or_default(),
            "imageID": "",
            "state": {"terminated": {"exitCode": code, "reason": reason, "startedAt": started, "finishedAt": now()}},
        }],
    }});
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await.context("reporting the exit")?;
    tracing::info!(pod = %format!("{ns}/{name}"), exit_code = code, log = %log_path.display(), "pod ended");

    let current = api.get_opt(&name).await?;
    if current.is_some_and(|p| p.metadata.deletion_timestamp.is_some()) {
        release(&shared.client, &ns, &name).await;
    }
    Ok(())
}

/// Runs the pod's process; returns its exit code (128 + signal when killed) and start time.
async fn run_process(
    shared: &Shared,
    api: &Api<Pod>,
    pod: &Pod,
    ip: &str,
    dir: &std::path::Path,
    log_path: &std::path::Path,
    terminate: &mut oneshot::Receiver<i64>,
) -> Result<(i32, String)> {
    let claims = shared.settings.work_dir.join("claims");
    let prepared = prepare(&shared.client, &shared.api_server, pod, ip, dir, &claims, &shared.settings.path_prefix).await?;
    let log = std::fs::File::create(log_path)?;
    let mut child = tokio::process::Command::new(&prepared.program)
        .args(&prepared.args)
        .env_clear()
        .envs(&prepared.env)
        .current_dir(&prepared.dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {:?}", prepared.program))?;
    let pid = child.id().unwrap_or_default() as i32;
    let started = now();
    let name = pod.name_any();
    let status = json!({"status": {
        "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
        "startTime": started,
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": started},
            {"type": "Initialized", "status": "True", "lastTransitionTime": started},
            {"type": "ContainersReady", "status": "True", "lastTransitionTime": started},
            {"type": "Ready", "status": "True", "lastTransitionTime": started},
        ],
        "containerStatuses": [{
            "name": container_name(pod), "ready": true, "started": true, "restartCount": 0,
            "image": pod.spec.as_ref().and_then(|s| s.containers.first()).and_then(|c| c.image.clone()).unwrap_or_default(),
            "imageID": "", "containerID": format!("pod-runner://{pid}"),
            "state": {"running": {"startedAt": started}},
        }],
    }});
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await.context("reporting Running")?;
    tracing::info!(pod = %name, pid, ip, program = %prepared.program, "pod started");

    let exit = tokio::select! {
        exit = child.wait() => exit?,
        grace = terminate => {
            let grace = grace.unwrap_or(0);
            signal_group(pid, libc::SIGTERM);
            match tokio::time::timeout(Duration::from_secs(grace.max(0) as u64), child.wait()).await {
                Ok(exit) => exit?,
                Err(_) => {
                    signal_group(pid, libc::SIGKILL);
                    child.wait().await?
                }
            }
        }
    };
    use std::os::unix::process::ExitStatusExt;
    let code = exit.code().unwrap_or_else(|| 128 + exit.signal().unwrap_or(0));
    Ok((code, started))
}

fn signal_group(pid: i32, signal: i32) {
    if pid > 0 {
        // SAFETY: kill(2) on a process group this runner created; no memory is shared.
        unsafe {
            libc::kill(-pid, signal);
        }
    }
}

fn container_name(pod: &Pod) -> String {
    pod.spec.as_ref().and_then(|s| s.containers.first()).map(|c| c.name.clone()).unwrap_or_default()
}

/// The names other pods reach this one by: `<hostname>.<subdomain>.<ns>.svc[.cluster.local]`
/// for pods under a headless Service, and the pod's own name.
fn host_names(pod: &Pod, ns: &str) -> Vec<String> {
    let spec = pod.spec.as_ref();
    let host = spec.and_then(|s| s.hostname.clone()).unwrap_or_else(|| pod.name_any());
    let mut names = vec![host.clone()];
    if let Some(sub) = spec.and_then(|s| s.subdomain.clone()) {
        names.push(format!("{host}.{sub}"));
        names.push(format!("{host}.{sub}.{ns}.svc"));
        names.push(format!("{host}.{sub}.{ns}.svc.cluster.local"));
    }
    names
}
