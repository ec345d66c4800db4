//! The cluster, as kubectl finds it: the kubeconfig from `--kubeconfig`, `KUBECONFIG` or
//! `~/.kube/config` (or the pod's service account inside a cluster), its current context or
//! `--context`, that context's namespace or `-n`, and `--as`/`--as-group` impersonation. Errors
//! say what to fix.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, anyhow};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// A client and the namespace commands work in unless told otherwise.
pub struct Cluster {
    pub client: Client,
    pub namespace: String,
}

/// Which cluster, namespace and identity the command line names, as kubectl's flags do.
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    pub namespace: Option<String>,
    /// `--as`: the user to impersonate.
    pub user: Option<String>,
    /// `--as-group`: the groups to impersonate, with `--as`.
    pub groups: Vec<String>,
}

/// How long a request may take to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reads {
    /// A request that answers at once: a minute without a byte is a cluster in trouble.
    Requests,
    /// A followed log, silent as long as its container is.
    Streams,
}

/// The contexts of the kubeconfig, for an error message.
fn contexts(kubeconfig: Option<&Kubeconfig>) -> String {
    let known = kubeconfig.map(|k| k.contexts.iter().map(|c| c.name.clone()).collect::<Vec<_>>().join(", "));
    known.filter(|k| !k.is_empty()).map_or("no contexts".to_string(), |k| format!("these: {k}"))
}

/// The client configuration the target names, before impersonation and timeouts.
async fn base_config(target: &Target) -> Result<Config> {
    let options = KubeConfigOptions { context: target.context.clone(), ..Default::default() };
    match (&target.kubeconfig, &target.context) {
        (Some(path), _) => {
            let kubeconfig = Kubeconfig::read_from(path).map_err(|e| anyhow!("reading the kubeconfig {} (--kubeconfig): {e}", path.display()))?;
            let known = contexts(Some(&kubeconfig));
            Config::from_custom_kubeconfig(kubeconfig, &options).await.map_err(|e| match &target.context {
                Some(context) => anyhow!("cannot use the context {context:?} of {}: {e}; it has {known}", path.display()),
                None => anyhow!("cannot use the kubeconfig {}: {e}", path.display()),
            })
        }
        (None, Some(context)) => Config::from_kubeconfig(&options).await.map_err(|e| {
            anyhow!(
                "cannot use the kubeconfig context {context:?}: {e}; the kubeconfig has {} (`kubectl config get-contexts`)",
                contexts(Kubeconfig::read().ok().as_ref())
            )
        }),
        (None, None) => Config::infer().await.map_err(|e| {
            anyhow!(
                "no cluster to talk to ({e}): point KUBECONFIG at a kubeconfig (or write ~/.kube/config), or pass --kubeconfig or --context; `kubectl frugal plan --offline` needs none"
            )
        }),
    }
}

/// The configuration of `target`: its kubeconfig and context, impersonating `--as` and
/// `--as-group` as kubectl does, and timeouts for `reads`.
pub async fn config(target: &Target, reads: Reads) -> Result<Config> {
    if !target.groups.is_empty() && target.user.is_none() {
        anyhow::bail!("--as-group needs --as: name the user to impersonate as well");
    }
    let mut config = base_config(target).await?;
    if let Some(user) = &target.user {
        config.auth_info.impersonate = Some(user.clone());
        config.auth_info.impersonate_groups = (!target.groups.is_empty()).then(|| target.groups.clone());
    }
    // a cluster that is down should not hang the command
    config.connect_timeout = Some(Duration::from_secs(10));
    config.read_timeout = match reads {
        Reads::Requests => Some(Duration::from_secs(60)),
        Reads::Streams => None,
    };
    Ok(config)
}

/// Connects as kubectl would. Nothing is sent yet: a cluster that is down shows at the first
/// request ([`explain`]).
pub async fn connect(target: &Target) -> Result<Cluster> {
    connect_for(target, Reads::Requests).await
}

/// [`connect`], for requests that `reads`.
pub async fn connect_for(target: &Target, reads: Reads) -> Result<Cluster> {
    let config = config(target, reads).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    const KUBECONFIG: &str = "apiVersion: v1
kind: Config
clusters:
- name: one
  cluster: {server: 'https://one.invalid:6443'}
- name: two
  cluster: {server: 'https://two.invalid:6443'}
users:
- name: admin
  user: {token: secret}
contexts:
- name: first
  context: {cluster: one, user: admin, namespace: ml}
- name: second
  context: {cluster: two, user: admin, namespace: research}
current-context: first
";

    /// The kubeconfig above in a file of its own for the test `test` (tests run side by side).
    fn kubeconfig(test: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("kubectl-frugal-{test}-{}.yaml", std::process::id()));
        std::fs::write(&path, KUBECONFIG).unwrap();
        path
    }

    #[tokio::test]
    async fn the_kubeconfig_and_context_flags_pick_the_cluster_and_namespace() {
        let path = kubeconfig("contexts");
        let target = |context: Option<&str>| Target { kubeconfig: Some(path.clone()), context: context.map(Into::into), ..Default::default() };
        let first = config(&target(None), Reads::Requests).await.unwrap();
        assert_eq!((first.cluster_url.host(), first.default_namespace.as_str()), (Some("one.invalid"), "ml"), "the current context");
        let second = config(&target(Some("second")), Reads::Requests).await.unwrap();
        assert_eq!((second.cluster_url.host(), second.default_namespace.as_str()), (Some("two.invalid"), "research"));
        assert_eq!(second.read_timeout, Some(Duration::from_secs(60)));
        assert_eq!(config(&target(None), Reads::Streams).await.unwrap().read_timeout, None, "a followed log may be silent");
        let e = config(&target(Some("third")), Reads::Requests).await.unwrap_err().to_string();
        assert!(e.contains("\"third\"") && e.ends_with("it has these: first, second"), "{e}");
        let missing = Target { kubeconfig: Some(path.with_extension("missing")), ..Default::default() };
        assert!(config(&missing, Reads::Requests).await.unwrap_err().to_string().contains("(--kubeconfig)"));
        std::fs::remove_file(path).ok();
    }

    #[tokio::test]
    async fn as_and_as_group_impersonate() {
        let path = kubeconfig("impersonation");
        let mut target = Target { kubeconfig: Some(path.clone()), user: Some("alice".into()), ..Default::default() };
        let c = config(&target, Reads::Requests).await.unwrap();
        assert_eq!((c.auth_info.impersonate.as_deref(), c.auth_info.impersonate_groups.as_ref()), (Some("alice"), None));
        target.groups = vec!["team".into(), "ml".into()];
        let c = config(&target, Reads::Requests).await.unwrap();
        assert_eq!(c.auth_info.impersonate_groups, Some(vec!["team".to_string(), "ml".to_string()]));
        target.user = None;
        assert!(config(&target, Reads::Requests).await.unwrap_err().to_string().contains("--as-group needs --as"));
        std::fs::remove_file(path).ok();
    }
}
