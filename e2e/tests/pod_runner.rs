//! The pod runner (test infrastructure standing in for the kubelet) runs real trainer processes
//! behind the test cluster's pods: a pod trains and ends Succeeded, a deleted pod's trainer gets
//! SIGTERM and checkpoints within its grace period, and a pod's process authenticates with its
//! own service-account token and can do exactly what its RBAC allows.
//!
//! `scripts/e2e.sh` starts the runner (`frugal-pod-runner`) beside the cluster and exports
//! `FRUGAL_POD_RUNNER_WORK_DIR` and `FRUGAL_POD_RUNNER_LOG_DIR`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use frugal_e2e::training_job::pod_output;
use frugal_e2e::wait::{for_deletion, for_object};
use frugal_e2e::{TestContext, run};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, ResourceExt as _};
use serde_json::json;

const MARKER: &str = "frugal.dev/pod-runner";

fn work_dir() -> PathBuf {
    PathBuf::from(std::env::var("FRUGAL_POD_RUNNER_WORK_DIR").expect("scripts/e2e.sh sets FRUGAL_POD_RUNNER_WORK_DIR"))
}

fn ended(p: Option<&Pod>) -> bool {
    p.and_then(|p| p.status.as_ref()).and_then(|s| s.phase.as_deref()).is_some_and(|ph| ph == "Succeeded" || ph == "Failed")
}

fn running(p: Option<&Pod>) -> bool {
    p.and_then(|p| p.status.as_ref()).and_then(|s| s.phase.as_deref()) == Some("Running")
}

fn exit_code(p: &Pod) -> Option<i32> {
    p.status.as_ref()?.container_statuses.as_ref()?.first()?.state.as_ref()?.terminated.as_ref().map(|t| t.exit_code)
}

/// A CPU job small enough to train in seconds.
fn job_manifest(steps: i64, checkpoint_interval: i64) -> String {
    format!(
        r#"apiVersion: frugal.dev/v1alpha1
kind: TrainingJob
metadata: {{name: runner-test}}
spec:
  model:
    type: Custom
    custom: {{layers: 2, dModel: 32, heads: 2, seqLen: 16, vocabSize: 257}}
  data: {{source: {{type: Synthetic, synthetic: {{branching: 4, tokens: 20000}}}}}}
  training:
    duration: {{type: Steps, steps: {steps}}}
    batchSize: 4
    precision: fp32
    evalInterval: 1000000
    checkpointInterval: {checkpoint_interval}
    logInterval: 1
  resources: {{device: CPU}}
"#
    )
}

fn trainer_pod(name: &str, checkpoint_volume: serde_json::Value, grace: i64) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {MARKER: "true"}},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": grace,
            "nodeSelector": {"kubernetes.io/hostname": "frugal-cpu-0"},
            "containers": [{
                "name": "trainer",
                "image": "frugal-trainer:test",
                "command": ["frugal-trainer", "train", "/etc/job/job.yaml", "--checkpoint-dir", "/checkpoints", "--threads", "1", "--json"],
                "volumeMounts": [
                    {"name": "job", "mountPath": "/etc/job"},
                    {"name": "checkpoints", "mountPath": "/checkpoints"}
                ]
            }],
            "volumes": [
                {"name": "job", "configMap": {"name": "job"}},
                checkpoint_volume
            ]
        }
    }))
    .expect("a valid pod")
}

async fn job_config(t: &TestContext, manifest: String) -> Result<()> {
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "job"}, "data": {"job.yaml": manifest}}))?;
    t.api::<ConfigMap>().create(&PostParams::default(), &cm).await?;
    Ok(())
}

#[tokio::test]
async fn a_trainer_pod_trains_and_succeeds() {
    run("runner-trains", |t: TestContext| async move {
        job_config(&t, job_manifest(20, 10)).await?;
        let pods = t.api::<Pod>();
        let pod = trainer_pod("trainer", json!({"name": "checkpoints", "emptyDir": {}}), 30);
        pods.create(&PostParams::default(), &pod).await?;
        let done = for_object(&pods, "trainer", "the trainer pod to end", ended).await?;
        let log = pod_output(&t.namespace, "trainer");
        ensure!(exit_code(&done) == Some(0), "exit code {:?}; log:\n{log}", exit_code(&done));
        ensure!(done.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded"), "not Succeeded");
        // the trainer really trained: its JSON lines report step 20
        ensure!(log.contains("\"step\":20"), "the log shows no step 20:\n{log}");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_deleted_pod_gets_sigterm_and_checkpoints_within_its_grace_period() {
    run("runner-sigterm", |t: TestContext| async move {
        let pv_name = frugal_e2e::fixtures::shared_claim(&t, "ckpt").await?;
        let pvs: Api<PersistentVolume> = Api::all(t.client.clone());

        job_config(&t, job_manifest(1_000_000, 1_000_000)).await?;
        let pods = t.api::<Pod>();
        let grace = 30;
        let pod = trainer_pod("trainer", json!({"name": "checkpoints", "persistentVolumeClaim": {"claimName": "ckpt"}}), grace);
        pods.create(&PostParams::default(), &pod).await?;
        let started = for_object(&pods, "trainer", "the trainer pod to run", running).await?;
        let uid = started.uid().unwrap_or_default();
        // Wait until the trainer has taken steps (its JSON lines), so the checkpoint is mid-run.
        let deadline = Instant::now() + frugal_e2e::timeout();
        while !pod_output(&t.namespace, "trainer").contains("\"step\":5,") {
            ensure!(Instant::now() < deadline, "the trainer took no 5 steps:\n{}", pod_output(&t.namespace, "trainer"));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        let asked = Instant::now();
        pods.delete("trainer", &DeleteParams::default()).await?;
        for_deletion(&pods, "trainer", &uid).await?;
        let took = asked.elapsed();
        ensure!(took < Duration::from_secs(grace as u64), "the pod took {took:?}, beyond its {grace}s grace period");

        let claim = work_dir().join("claims").join(&t.namespace).join("ckpt");
        let committed: Vec<String> = std::fs::read_dir(&claim)
            .with_context(|| format!("reading {}", claim.display()))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("MANIFEST.json").is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let log = pod_output(&t.namespace, "trainer");
        ensure!(!committed.is_empty(), "no committed checkpoint under {}; log:\n{log}", claim.display());
        ensure!(committed.iter().all(|d| d != "step-000000000"), "the checkpoint is of step 0: {committed:?}");
        pvs.delete(&pv_name, &DeleteParams::default()).await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_pods_token_does_exactly_what_its_rbac_allows() {
    run("runner-rbac", |t: TestContext| async move {
        let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "reader"}}))?;
        t.api::<ServiceAccount>().create(&PostParams::default(), &sa).await?;
        let role: Role = serde_json::from_value(json!({
            "metadata": {"name": "read-one"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["allowed"], "verbs": ["get"]}]
        }))?;
        t.api::<Role>().create(&PostParams::default(), &role).await?;
        let binding: RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": "read-one"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-one"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": t.namespace}]
        }))?;
        t.api::<RoleBinding>().create(&PostParams::default(), &binding).await?;
        for name in ["allowed", "other"] {
            let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": name}, "data": {"k": "v"}}))?;
            t.api::<ConfigMap>().create(&PostParams::default(), &cm).await?;
        }
        // Each check prints its outcome; the script exits 0 only if the allowed read works and
        // every other request is refused.
        let script = r#"
set -u
kubectl get configmap allowed -o name || { echo "FAIL: the allowed read was refused"; exit 10; }
if kubectl get configmap other -o name; then echo "FAIL: read another configmap"; exit 11; fi
if kubectl get secrets -o name; then echo "FAIL: listed secrets"; exit 12; fi
if kubectl delete configmap allowed; then echo "FAIL: deleted the configmap"; exit 13; fi
who=$(kubectl auth whoami -o jsonpath='{.status.userInfo.username}')
[ "$who" = "system:serviceaccount:$NS:reader" ] || { echo "FAIL: authenticated as $who"; exit 14; }
echo "rbac: exactly as granted"
"#;
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "rbac", "labels": {MARKER: "true"}},
            "spec": {
                "restartPolicy": "Never",
                "serviceAccountName": "reader",
                "nodeSelector": {"kubernetes.io/hostname": "frugal-cpu-0"},
                "containers": [{
                    "name": "check", "image": "kubectl:test",
                    "command": ["/bin/sh", "-c", script],
                    "env": [{"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}]
                }]
            }
        }))?;
        let pods = t.api::<Pod>();
        pods.create(&PostParams::default(), &pod).await?;
        let done = for_object(&pods, "rbac", "the RBAC check pod to end", ended).await?;
        let log = pod_output(&t.namespace, "rbac");
        ensure!(exit_code(&done) == Some(0), "exit code {:?}; log:\n{log}", exit_code(&done));
        ensure!(log.contains("rbac: exactly as granted"), "log:\n{log}");
        Ok(())
    })
    .await;
}
