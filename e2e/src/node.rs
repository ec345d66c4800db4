//! The real node (a kubelet with containerd beside the control plane, or kind's node) and what
//! runs on it for real: the chart's operator, installed with helm, and trainer pods from the
//! project's images.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use futures::{AsyncBufReadExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{ListParams, LogParams, Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Api, ResourceExt as _};

use crate::{TestContext, wait};

/// The label the real node carries (`e2e/cluster/node/lib.sh`, `e2e/kind/run`); pods select it
/// to run for real, as kwok's nodes are selected by `type: kwok`.
pub const REAL_NODE_LABEL: (&str, &str) = ("frugal.dev/node", "real");

/// How long real training in containers may take: on two cores, longer than a status change.
pub const TRAINING: Duration = Duration::from_secs(420);

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
    may_on(ctx, user, verb, group, resource, None).await
}

/// [`may`] on the object `name` (None: any object of the resource).
pub async fn may_on(ctx: &TestContext, user: &str, verb: &str, group: &str, resource: &str, name: Option<&str>) -> Result<bool> {
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
                name: name.map(Into::into),
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
    let settings = chart_settings(ctx);
    let mut args = vec!["install", release, chart.to_str().unwrap(), "--namespace", &ctx.namespace, "--skip-crds", "--wait", "--timeout", "180s"];
    args.extend(settings.iter().map(String::as_str));
    for v in values {
        args.extend(["--set", v]);
    }
    helm(&args)
}

/// The chart's values for a test: its operator watches the test's namespace, runs on the real
/// node and logs text; as `--set` arguments for helm.
pub fn chart_settings(ctx: &TestContext) -> Vec<String> {
    let watch = format!("operator.watchNamespace={}", ctx.namespace);
    let placement = format!("nodeSelector.{}={}", REAL_NODE_LABEL.0.replace('.', "\\."), REAL_NODE_LABEL.1);
    ["--set", &watch, "--set", &placement, "--set", "operator.logFormat=text"].map(String::from).to_vec()
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
        match follow(&api, &pod, |_| false).await {
            Ok((out, _)) => out,
            Err(e) => format!("(no log: {e:#})"),
        }
    })
}

/// Follows `pod`'s trainer log until a line contains `needle`, for at most `limit`; the log up
/// to and including that line.
pub async fn log_until(ctx: &TestContext, pod: &str, needle: &str, limit: Duration) -> Result<String> {
    let api = ctx.api::<Pod>();
    let (out, found) = wait::within(limit, &format!("{pod} to log {needle}"), follow(&api, pod, |line| line.contains(needle))).await?;
    ensure!(found, "{pod}'s log ended without {needle}:\n{out}");
    Ok(out)
}

/// Waits until `pod`'s trainer container has started (the API server serves no log before),
/// then reads its log as it is written, line by line, until `stop` says so or the container
/// ends. The lines read, and whether `stop` ended it.
async fn follow(api: &Api<Pod>, pod: &str, mut stop: impl FnMut(&str) -> bool) -> Result<(String, bool)> {
    let started = |p: Option<&Pod>| {
        p.and_then(|p| p.status.as_ref()?.container_statuses.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.name == "trainer")?.state.as_ref())
            .is_some_and(|s| s.running.is_some() || s.terminated.is_some())
    };
    kube::runtime::wait::await_condition(api.clone(), pod, started).await?.with_context(|| format!("{pod} was deleted before it started"))?;
    let params = LogParams { container: Some("trainer".into()), follow: true, ..Default::default() };
    let mut lines = std::pin::pin!(api.log_stream(pod, &params).await?.lines());
    let mut out = String::new();
    while let Some(line) = lines.try_next().await? {
        out.push_str(&line);
        out.push('\n');
        if stop(&line) {
            return Ok((out, true));
        }
    }
    Ok((out, false))
}

/// The pods of attempt `attempt` of `job`, by name.
pub async fn attempt_pods(ctx: &TestContext, job: &str, attempt: i32) -> Result<Vec<Pod>> {
    let selector = format!("frugal.dev/training-job={job},frugal.dev/attempt={attempt}");
    let mut pods = ctx.api::<Pod>().list(&ListParams::default().labels(&selector)).await?.items;
    pods.sort_by_key(|p| p.name_any());
    Ok(pods)
}

/// Waits up to `limit` until a pod of attempt `attempt` of `job` has logged `needle`, following
/// the logs of the attempt's pods once the first of them exists.
pub async fn pod_logging(ctx: &TestContext, job: &str, attempt: i32, needle: &str, limit: Duration) -> Result<Pod> {
    let selector = format!("frugal.dev/training-job={job},frugal.dev/attempt={attempt}");
    let what = format!("a pod of {job} attempt {attempt} to log {needle}");
    wait::within(limit, &what, async {
        wait::for_any(&ctx.api::<Pod>(), watcher::Config::default().labels(&selector), &format!("a pod of {job} attempt {attempt}"), |_| true)
            .await?;
        let pods = attempt_pods(ctx, job, attempt).await?;
        let logging = pods.into_iter().map(|pod| Box::pin(async move { log_until(ctx, &pod.name_any(), needle, limit).await.map(|_| pod) }));
        futures::future::select_ok(logging).await.map(|(pod, _)| pod)
    })
    .await
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
