//! Argo CD for real: its repo-server and application controller (built by `e2e/cluster/build`
//! from its Go module), with a Redis of their own, running against the test cluster and syncing
//! from a Git repository served on loopback ([`crate::flux::GitServer`]).
//!
//! Argo CD keeps its settings (`argocd-cm`, `argocd-secret`) and its AppProject in the namespace
//! it runs in; here that is the test's namespace, with `argocd-cm` carrying frugal's health
//! checks from `gitops/argocd/argocd-cm.yaml` as users merge them.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::{Value, json};

use crate::processes::{Processes, free_port};
use crate::{FIELD_MANAGER, TestContext};

/// The directory of Argo CD's binary and CRDs: `FRUGAL_ARGOCD_BIN`, which scripts/e2e.sh sets
/// from `e2e/cluster/build`.
pub fn bin_dir() -> Result<PathBuf> {
    std::env::var_os("FRUGAL_ARGOCD_BIN").map(PathBuf::from).filter(|p| p.join("argocd").exists()).context(
        "FRUGAL_ARGOCD_BIN does not name Argo CD's binary: run `eval \"$(e2e/cluster/build)\"` and set FRUGAL_ARGOCD_BIN=$ARGOCD_BIN (scripts/e2e.sh does)",
    )
}

/// Creates Argo CD's CRDs, its settings with frugal's health checks and the `default` AppProject
/// in the test's namespace, then starts Redis, Argo CD's repo-server and its application
/// controller; they are killed when dropped, and their output goes to `<dir>/<component>.log`.
pub async fn start(ctx: &TestContext, dir: &Path) -> Result<Processes> {
    let bin = bin_dir()?;
    crate::manifests::install_crd_files(&ctx.client, &crate::manifests::yaml_files(&bin.join("crds"))?).await?;
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    let part_of = json!({"app.kubernetes.io/part-of": "argocd"});
    // the health checks exactly as users merge them into argocd-cm
    let keys: ConfigMap = serde_saphyr::from_str(&std::fs::read_to_string(crate::repo_root().join("gitops/argocd/argocd-cm.yaml"))?)?;
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "argocd-cm", "labels": part_of}, "data": keys.data});
    ctx.api::<ConfigMap>().patch("argocd-cm", &apply, &Patch::Apply(&cm)).await?;
    // the key Argo CD's API server signs sessions with; no API server runs here
    let key = format!("e2e-unused-{}", ctx.namespace);
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "argocd-secret", "labels": part_of}, "stringData": {"server.secretkey": key}});
    ctx.api::<Secret>().patch("argocd-secret", &apply, &Patch::Apply(&secret)).await?;
    apply_object(
        ctx,
        &json!({
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "AppProject",
            "metadata": {"name": "default", "namespace": ctx.namespace},
            "spec": {
                "sourceRepos": ["*"],
                "destinations": [{"server": "*", "namespace": "*"}],
                "clusterResourceWhitelist": [{"group": "*", "kind": "*"}],
            },
        }),
    )
    .await?;

    let kubeconfig = std::env::var("KUBECONFIG").context("KUBECONFIG names the test cluster (scripts/e2e.sh sets it)")?;
    let (redis_port, repo_port) = (free_port()?, free_port()?);
    let mut argo = Processes::new("Argo CD's components", dir);
    let mut redis = Command::new("redis-server");
    redis.args(["--bind", "127.0.0.1", "--port", &redis_port.to_string(), "--save", "", "--appendonly", "no"]);
    redis.current_dir(dir);
    argo.spawn("redis", &mut redis)?;
    let redis_addr = format!("127.0.0.1:{redis_port}");
    let component = |name: &str| {
        let mut cmd = Command::new(bin.join("argocd"));
        cmd.env("ARGOCD_BINARY_NAME", name).env("ARGOCD_GPG_ENABLED", "false").env("TMPDIR", dir).current_dir(dir);
        cmd
    };
    let mut repo = component("argocd-repo-server");
    repo.args(["--address", "127.0.0.1", "--port", &repo_port.to_string(), "--disable-tls", "--redis", &redis_addr]);
    repo.args(["--metrics-port", &free_port()?.to_string(), "--loglevel", "debug"]);
    // a branch's head is looked up again after 5 s, not Argo CD's default 3 min (the
    // controller compares every 5 s): a push is synced without a webhook
    repo.args(["--revision-cache-expiration", "5s"]);
    argo.spawn("argocd-repo-server", &mut repo)?;
    let mut controller = component("argocd-application-controller");
    // the in-cluster destination (https://kubernetes.default.svc) is the cluster in
    // KUBECONFIG, as Argo CD's own development setup runs it outside a pod
    controller.env("ARGOCD_FAKE_IN_CLUSTER", "true").env("KUBECONFIG", &kubeconfig);
    controller.args(["--kubeconfig", &kubeconfig, "--namespace", &ctx.namespace, "--redis", &redis_addr]);
    controller.args(["--repo-server", &format!("127.0.0.1:{repo_port}"), "--repo-server-plaintext"]);
    controller.args(["--metrics-port", &free_port()?.to_string(), "--app-resync", "5", "--status-processors", "2"]);
    controller.args(["--operation-processors", "2", "--loglevel", "debug"]);
    argo.spawn("argocd-application-controller", &mut controller)?;
    Ok(argo)
}

fn resource(kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("argoproj.io", "v1alpha1", kind))
}

/// Applies an Argo CD object (Application or AppProject, JSON) in the test's namespace.
pub async fn apply_object(ctx: &TestContext, object: &Value) -> Result<()> {
    let kind = object["kind"].as_str().context("no kind")?;
    let name = object["metadata"]["name"].as_str().context("no name")?;
    let api = Api::<DynamicObject>::namespaced_with(ctx.client.clone(), &ctx.namespace, &resource(kind));
    api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(object)).await?;
    Ok(())
}

/// What Argo CD says of an Application: its sync status and revision, its health, the phase and
/// message of its last operation, and each resource's health (kind/name, status, message).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AppState {
    pub sync: String,
    pub revision: String,
    pub health: String,
    pub operation: String,
    pub operation_message: String,
    pub resources: Vec<(String, String, String)>,
    /// The Application's conditions (type: message), e.g. a ComparisonError.
    pub conditions: Vec<String>,
    /// Each managed resource whose sync status is not Synced (kind/name: status).
    pub unsynced: Vec<String>,
}

/// The Application `name`'s state as Argo CD wrote it.
pub async fn app(ctx: &TestContext, name: &str) -> Result<AppState> {
    let api = Api::<DynamicObject>::namespaced_with(ctx.client.clone(), &ctx.namespace, &resource("Application"));
    let object = api.get(name).await?;
    let status = object.data.get("status").cloned().unwrap_or(Value::Null);
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let resources = status["resources"].as_array().cloned().unwrap_or_default();
    Ok(AppState {
        sync: text(&status["sync"]["status"]),
        revision: text(&status["sync"]["revision"]),
        health: text(&status["health"]["status"]),
        operation: text(&status["operationState"]["phase"]),
        operation_message: text(&status["operationState"]["message"]),
        resources: resources
            .iter()
            .filter(|r| r["health"].is_object())
            .map(|r| (format!("{}/{}", text(&r["kind"]), text(&r["name"])), text(&r["health"]["status"]), text(&r["health"]["message"])))
            .collect(),
        conditions: status["conditions"].as_array().into_iter().flatten().map(|c| format!("{}: {}", text(&c["type"]), text(&c["message"]))).collect(),
        unsynced: resources
            .iter()
            .filter(|r| r["status"] != "Synced")
            .map(|r| format!("{}/{}: {}", text(&r["kind"]), text(&r["name"]), text(&r["status"])))
            .collect(),
    })
}
