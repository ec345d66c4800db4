//! Small builders for the plain Kubernetes objects the tests create.

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodTemplateSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::ObjectMeta;

use crate::{GPU_RESOURCE, TEST_EXIT_CODE_ANNOTATION, TEST_OUTCOME_ANNOTATION};

/// Image for pods that never really run (kwok fakes their containers).
pub const FAKE_IMAGE: &str = "registry.invalid/frugal/fake:latest";

/// Label every fake node carries (e2e/cluster/kwok/nodes.yaml).
pub const FAKE_NODE_LABEL: (&str, &str) = ("type", "kwok");

/// A bare pod with one container and `restartPolicy: Never`.
pub fn pod(name: &str) -> Pod {
    Pod { metadata: ObjectMeta { name: Some(name.to_string()), ..Default::default() }, spec: Some(pod_spec()), ..Default::default() }
}

fn pod_spec() -> PodSpec {
    PodSpec {
        containers: vec![Container { name: "main".into(), image: Some(FAKE_IMAGE.into()), ..Default::default() }],
        restart_policy: Some("Never".into()),
        // Only kwok's nodes fake containers; on kind this keeps test pods off the real node.
        node_selector: Some([(FAKE_NODE_LABEL.0.to_string(), FAKE_NODE_LABEL.1.to_string())].into()),
        ..Default::default()
    }
}

/// Extension methods that keep test setup to one line each.
pub trait PodExt {
    /// Asks for `n` GPUs (as a limit, which also sets the request).
    fn gpus(self, n: u32) -> Self;
    /// Pre-sets the outcome kwok gives the pod once it is Running.
    fn outcome(self, outcome: &str, exit_code: Option<i32>) -> Self;
    /// Pins the pod to a node, bypassing the scheduler.
    fn on_node(self, node: &str) -> Self;
}

impl PodExt for Pod {
    fn gpus(mut self, n: u32) -> Self {
        let spec = self.spec.get_or_insert_with(pod_spec);
        spec.containers[0].resources =
            Some(ResourceRequirements { limits: Some([(GPU_RESOURCE.to_string(), Quantity(n.to_string()))].into()), ..Default::default() });
        self
    }

    fn outcome(mut self, outcome: &str, exit_code: Option<i32>) -> Self {
        let annotations = self.metadata.annotations.get_or_insert_with(Default::default);
        annotations.insert(TEST_OUTCOME_ANNOTATION.into(), outcome.into());
        if let Some(code) = exit_code {
            annotations.insert(TEST_EXIT_CODE_ANNOTATION.into(), code.to_string());
        }
        self
    }

    fn on_node(mut self, node: &str) -> Self {
        self.spec.get_or_insert_with(pod_spec).node_name = Some(node.into());
        self
    }
}

/// A one-pod Job whose pod template is `template` (its name is ignored).
pub fn job(name: &str, template: Pod) -> Job {
    Job {
        metadata: ObjectMeta { name: Some(name.to_string()), ..Default::default() },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: template.metadata.labels, annotations: template.metadata.annotations, ..Default::default() }),
                spec: template.spec,
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The pod's phase, or `""` before it has one.
pub fn phase(pod: &Pod) -> &str {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("")
}

/// A ReadWriteMany claim named `claim` statically bound to the hostPath volume `volume` with
/// `host_path` as its `hostPath` source. Returns the volume's name.
pub async fn hostpath_claim(ctx: &crate::TestContext, claim: &str, volume: &str, host_path: serde_json::Value) -> anyhow::Result<String> {
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
    use kube::api::PostParams;
    let pv: PersistentVolume = serde_json::from_value(serde_json::json!({
        "metadata": {"name": volume},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
                 "hostPath": host_path,
                 "claimRef": {"namespace": ctx.namespace, "name": claim}}
    }))?;
    kube::Api::<PersistentVolume>::all(ctx.client.clone()).create(&PostParams::default(), &pv).await?;
    let pvc: PersistentVolumeClaim = serde_json::from_value(serde_json::json!({
        "metadata": {"name": claim},
        "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": volume,
                 "resources": {"requests": {"storage": "1Gi"}}}
    }))?;
    ctx.api::<PersistentVolumeClaim>().create(&PostParams::default(), &pvc).await?;
    Ok(volume.to_string())
}
