//! The real node (a kubelet with containerd beside the control plane, or kind's node) and what
//! runs on it for real: the chart's operator, installed with helm, and trainer pods from the
//! project's images.

use std::process::Command;

use anyhow::{Context as _, Result, bail};
use futures::{AsyncBufReadExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{LogParams, Patch, PatchParams};
use kube::{Api, ResourceExt as _};

use crate::TestContext;

/// The label the real node carries (`e2e/cluster/node/lib.sh`, `e2e/kind/run`); pods select it
/// to run for real, as kwok's nodes are selected by `type: kwok`.
pub const REAL_NODE_LABEL: (&str, &str) = ("frugal.dev/node", "real");

/// The images `images/build` makes, under the names the chart gives them by default.
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}
pub fn operator_image() -> String {
    format!("frugal-operator:{}", version())
}
pub fn cpu_trainer_image() -> String {
    format!("frugal-trainer:{}-cpu", version())
}

/// False when the cluster has no real node (`FRUGAL_REAL_NODE=0`): the tests that need one
/// print a note and pass, as every e2e test does without `FRUGAL_E2E=1`.
pub fn available(test: &str) -> bool {
    let on = std::env::var("FRUGAL_REAL_NODE").map_or(true, |v| v != "0");
    if !on {
        eprintln!("e2e: skipping {test}: FRUGAL_REAL_NODE=0, the cluster has no real node");
    }
    on
}

/// Makes the test namespace enforce Pod Security `restricted`, as a careful cluster would: the
/// operator's and the trainer's pods must be admitted under it.
pub async fn enforce_restricted(ctx: &TestContext) -> Result<()> {
    let patch = serde_json::json!({"metadata": {"labels": {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }}});
    Api::<Namespace>::all(ctx.client.clone()).patch(&ctx.namespace, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

/// Runs `helm` (from PATH, as scripts/e2e.sh sets it) against the cluster in KUBECONFIG.
pub fn helm(args: &[&str]) -> Result<String> {
    let out = Command::new("helm").args(args).output().context("running helm (scripts/e2e.sh puts it on PATH)")?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("helm {} failed ({}):\n{text}", args.join(" "), out.status);
    }
    Ok(text)
}

/// Runs `kubectl` (from PATH, as scripts/e2e.sh sets it) against the cluster in KUBECONFIG;
/// its stdout.
pub fn kubectl(args: &[&str]) -> Result<String> {
    let out = Command::new("kubectl").args(args).output().context("running kubectl (scripts/e2e.sh puts it on PATH)")?;
    if !out.status.success() {
        bail!("kubectl {} failed ({}): {}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Whether `user` may `verb` `resource` (of API group `group`) in the test's namespace, as the
/// API server's authorizer answers a SubjectAccessReview.
pub async fn may(ctx: &TestContext, user: &str, verb: &str, group: &str, resource: &str) -> Result<bool> {
    use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
    let (groups, user) = match user.strip_prefix("system:serviceaccount:") {
        Some(rest) => {
            let namespace = rest.split(':').next().unwrap_or_default();
            (
                Some(vec!["system:serviceaccounts".to_string(), format!("system:serviceaccounts:{namespace}"), "system:authenticated".to_string()]),
                user,
            )
        }
        None => (None, user),
    };
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.into()),
            groups,
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(ctx.namespace.clone()),
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = kube::Api::<SubjectAccessReview>::all(ctx.client.clone()).create(&Default::default(), &review).await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// Installs `charts/frugal` as release `release` into the test's namespace, its operator
/// watching only that namespace (so tests side by side never share an operator) and placed on
/// the real node (kwok's nodes would accept the pod and only pretend to run it), and waits for
/// the Deployment to be available. The CRDs are the harness's (`--skip-crds`).
pub fn install_chart(ctx: &TestContext, release: &str, values: &[&str]) -> Result<String> {
    let chart = crate::repo_root().join("charts/frugal");
    let watch = format!("operator.watchNamespace={}", ctx.namespace);
    let placement = format!("nodeSelector.{}={}", REAL_NODE_LABEL.0.replace('.', "\\."), REAL_NODE_LABEL.1);
    let mut args = vec![
        "install",
        release,
        chart.to_str().unwrap(),
        "--namespace",
        &ctx.namespace,
        "--skip-crds",
        "--set",
        &watch,
        "--set",
        &placement,
        "--set",
        "operator.logFormat=text",
        "--wait",
        "--timeout",
        "180s",
    ];
    for v in values {
        args.extend(["--set", v]);
    }
    helm(&args)
}

/// A container's log through the API server (the kubelet serves it), whole.
pub async fn logs(ctx: &TestContext, pod: &str) -> String {
    let params = LogParams { container: Some("trainer".into()), ..Default::default() };
    ctx.api::<Pod>().logs(pod, &params).await.unwrap_or_else(|e| format!("(no log: {e})"))
}

/// Follows a trainer container's log until the container ends, in the background: what a pod
/// said survives the pod's deletion.
pub fn follow_logs(ctx: &TestContext, pod: &str) -> tokio::task::JoinHandle<String> {
    let api = ctx.api::<Pod>();
    let pod = pod.to_string();
    tokio::spawn(async move {
        let params = LogParams { container: Some("trainer".into()), follow: true, ..Default::default() };
        let mut out = String::new();
        // the container may not have started yet
        for _ in 0..600 {
            match api.log_stream(&pod, &params).await {
                Ok(stream) => {
                    let mut lines = stream.lines();
                    while let Ok(Some(line)) = lines.try_next().await {
                        out.push_str(&line);
                        out.push('\n');
                    }
                    return out;
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
            }
        }
        out
    })
}

/// The node a pod was scheduled to and its container's ID as the kubelet reports it
/// (`containerd://…` on the real node).
pub fn placement(pod: &Pod) -> (String, String) {
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
    let id = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.iter().find(|c| c.name == "trainer").or(c.first()))
        .and_then(|c| c.container_id.clone())
        .unwrap_or_default();
    (node, id)
}

/// The pod's node name, for messages.
pub fn describe(pod: &Pod) -> String {
    let (node, id) = placement(pod);
    format!("{} on {node} ({id})", pod.name_any())
}

/// A ReadWriteMany claim named `claim` bound to a hostPath volume on the real node (the test
/// cluster has no provisioner), its directory made writable for the trainer's non-root user.
/// Returns the volume's name, for deleting it.
pub async fn shared_claim(ctx: &TestContext, claim: &str) -> Result<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let volume = format!("{}-{claim}", ctx.namespace);
    let dir = std::env::temp_dir().join("frugal-e2e-volumes").join(&volume);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))?;
    crate::fixtures::hostpath_claim(ctx, claim, &volume, serde_json::json!({"path": dir, "type": "Directory"})).await
}
