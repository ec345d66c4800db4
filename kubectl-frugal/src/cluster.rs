//! The cluster, as kubectl finds it: the kubeconfig from `KUBECONFIG` or `~/.kube/config` (or
//! the pod's service account inside a cluster), its current context or `--context`, and that
//! context's namespace or `-n`. Errors say what to fix.

use std::time::Duration;

use anyhow::{Result, anyhow};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// A client and the namespace commands work in unless told otherwise.
pub struct Cluster {
    pub client: Client,
    pub namespace: String,
}

/// Which cluster and namespace the command line names.
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub context: Option<String>,
    pub namespace: Option<String>,
}

/// Connects as kubectl would. Nothing is sent yet: a cluster that is down shows at the first
/// request ([`explain`]).
pub async fn connect(target: &Target) -> Result<Cluster> {
    let mut config = match &target.context {
        Some(context) => {
            let options = KubeConfigOptions { context: Some(context.clone()), ..Default::default() };
            Config::from_kubeconfig(&options).await.map_err(|e| {
                let known = Kubeconfig::read().ok().map(|k| k.contexts.into_iter().map(|c| c.name).collect::<Vec<_>>().join(", "));
                anyhow!(
                    "cannot use the kubeconfig context {context:?}: {e}; the kubeconfig has {} (`kubectl config get-contexts`)",
                    known.filter(|k| !k.is_empty()).map_or("no contexts".to_string(), |k| format!("these: {k}"))
                )
            })?
        }
        None => Config::infer().await.map_err(|e| {
            anyhow!(
                "no cluster to talk to ({e}): point KUBECONFIG at a kubeconfig (or write ~/.kube/config), or pass --context; `kubectl frugal plan --offline` needs none"
            )
        })?,
    };
    // a cluster that is down should not hang the command
    config.connect_timeout = Some(Duration::from_secs(10));
    config.read_timeout = Some(Duration::from_secs(60));
    let namespace = target.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).map_err(|e| anyhow!("building a client from the kubeconfig: {e}"))?;
    Ok(Cluster { client, namespace })
}

/// Whether the API server could not be reached at all (as opposed to answering with an error).
pub fn unreachable(e: &kube::Error) -> bool {
    matches!(e, kube::Error::HyperError(_) | kube::Error::Service(_))
}

/// What went wrong with a request about `what`, and what to do about it.
pub fn explain(e: kube::Error, what: &str) -> anyhow::Error {
    match &e {
        kube::Error::Api(s) if s.code == 404 && s.reason == "NotFound" && s.message.contains("could not find the requested resource") => anyhow!(
            "{what}: this cluster does not know TrainingJobs and TrainingBudgets (frugal.dev/v1alpha1): install frugal's CRDs with its chart (`helm install frugal charts/frugal`) or on their own (`kubectl apply --server-side -f crds/`)"
        ),
        kube::Error::Api(s) if s.code == 403 => {
            anyhow!("{what}: the API server refused: {}; ask for RBAC that allows it, or use another --context", s.message)
        }
        kube::Error::Api(s) => anyhow!("{what}: the API server answered {} {}: {}", s.code, s.reason, s.message),
        e if unreachable(e) => {
            anyhow!("{what}: cannot reach the API server ({e}): is the cluster up, and does the kubeconfig's context point at it?")
        }
        _ => anyhow!("{what}: {e}"),
    }
}
