//! Additions to every pod of the job: labels, annotations, env, volumes, affinity and image pull
//! secrets.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, EnvVar, LocalObjectReference, Volume, VolumeMount};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::QUANTITY_RULE;

/// [`crate::v1alpha1::pod_security::SECURITY_ANNOTATION_PREFIXES`] as a CEL list.
const SECURITY_ANNOTATION_PREFIXES: &str =
    "['container.apparmor.security.beta.kubernetes.io/', 'seccomp.security.alpha.kubernetes.io/', 'container.seccomp.security.alpha.kubernetes.io/']";

/// Additions to every pod of the job.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodOverrides {
    /// Extra pod labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub labels: BTreeMap<String, String>,
    /// Extra pod annotations. AppArmor and seccomp annotations are refused: the trainer runs
    /// under the runtime's default profiles, as Pod Security `restricted` requires.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    #[x_kube(validation = Rule::new("self.all(k, !SECURITY_ANNOTATION_PREFIXES.exists(p, k.startsWith(p)))".replace("SECURITY_ANNOTATION_PREFIXES", SECURITY_ANNOTATION_PREFIXES))
        .message("podTemplate.annotations may not set AppArmor or seccomp profiles (container.apparmor.security.beta.kubernetes.io/, seccomp.security.alpha.kubernetes.io/): the trainer runs under the runtime's default profiles (Pod Security restricted); remove the annotation"))]
    pub annotations: BTreeMap<String, String>,
    /// Extra environment variables of the trainer container. `NVIDIA_*` and
    /// `CUDA_VISIBLE_DEVICES` are reserved: which GPUs a pod sees is the device plugin's to say
    /// (a CPU job sees none), so a job cannot reach GPUs its budget does not count.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.all(e, !e.name.startsWith('NVIDIA_') && e.name != 'CUDA_VISIBLE_DEVICES')")
        .message("podTemplate.env may not set NVIDIA_* or CUDA_VISIBLE_DEVICES: the GPUs a pod sees are the ones the device plugin gave it and its budget counts (resources.device and parallelism.gpusPerPod); remove the variable"))]
    pub env: Vec<EnvVar>,
    /// Extra volumes, such as a dataset PersistentVolumeClaim. Only the sources Pod Security
    /// `restricted` allows: persistentVolumeClaim, configMap, secret, emptyDir, projected,
    /// ephemeral, csi and downwardAPI.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), schema_with = "crate::v1alpha1::pod_security::volumes_schema")]
    pub volumes: Vec<Volume>,
    /// Where the extra volumes are mounted in the trainer container: without mount propagation,
    /// and with sub-paths that stay inside their volume.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), schema_with = "crate::v1alpha1::pod_security::volume_mounts_schema")]
    pub volume_mounts: Vec<VolumeMount>,
    /// Annotations of the trainer pods' ServiceAccount (`<job>-trainer`, which the operator
    /// creates), for a platform's workload identity: `eks.amazonaws.com/role-arn` (IAM roles for
    /// service accounts), `iam.gke.io/gcp-service-account`, `azure.workload.identity/client-id`.
    /// The cloud's trust policy decides whether the role may be taken by this namespace's
    /// ServiceAccount. Kubernetes' own keys (`kubernetes.io/`, `k8s.io/`) are refused.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 8))]
    #[x_kube(validation = Rule::new("self.all(k, !k.contains('kubernetes.io/') && !k.contains('k8s.io/'))")
        .message("podTemplate.serviceAccountAnnotations may not set kubernetes.io/ or k8s.io/ keys, which are Kubernetes' own: set the platform's workload-identity annotation, such as eks.amazonaws.com/role-arn or iam.gke.io/gcp-service-account"))]
    pub service_account_annotations: BTreeMap<String, String>,
    /// Secrets for pulling the image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// Node affinity and pod (anti-)affinity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Size of the in-memory `/dev/shm`; unset means 1Gi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(QUANTITY_RULE).message("podTemplate.shmSize must be a Kubernetes quantity of at least 0, such as 1Gi or 512Mi: a number, or a number with a suffix (m, Ki, Mi, Gi, k, M, G)"))]
    pub shm_size: Option<Quantity>,
}
