//! What each pod asks of a node: device, GPU type, CPU, memory and placement.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Toleration;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::QUANTITY_RULE;

/// What each pod asks of a node.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResourcesSpec {
    /// `GPU`, or `CPU` to train on the pods' CPUs (no GPUs requested; for small models and tests).
    #[serde(default)]
    pub device: Device,
    /// The extended resource a GPU is requested as.
    #[serde(default = "default_gpu_resource")]
    #[schemars(length(min = 1, max = 253))]
    pub gpu_resource_name: String,
    /// GPU model, for memory limits and pricing: one of frugal's GPU table
    /// (nvidia-h100-80gb, nvidia-h200-141gb, nvidia-a100-80gb, nvidia-a100-40gb, nvidia-l40s-48gb,
    /// nvidia-l4-24gb, nvidia-a10g-24gb, nvidia-t4-16gb).
    #[serde(default = "default_gpu_type")]
    #[schemars(length(min = 1, max = 63))]
    pub gpu_type: String,
    /// CPU request and limit of each pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(QUANTITY_RULE).message("resources.cpu must be a Kubernetes quantity of at least 0, such as 2 or 500m: a number, or a number with a suffix (m, Ki, Mi, Gi, k, M, G)"))]
    pub cpu: Option<Quantity>,
    /// Memory request and limit of each pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(QUANTITY_RULE).message("resources.memory must be a Kubernetes quantity of at least 0, such as 8Gi or 512Mi: a number, or a number with a suffix (m, Ki, Mi, Gi, k, M, G)"))]
    pub memory: Option<Quantity>,
    /// Nodes the pods may run on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(length(max = 32))]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub tolerations: Vec<Toleration>,
    /// PriorityClass of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub priority_class_name: Option<String>,
}

fn default_gpu_resource() -> String {
    "nvidia.com/gpu".into()
}
fn default_gpu_type() -> String {
    "nvidia-h100-80gb".into()
}

impl Default for ResourcesSpec {
    fn default() -> Self {
        Self {
            device: Device::default(),
            gpu_resource_name: default_gpu_resource(),
            gpu_type: default_gpu_type(),
            cpu: None,
            memory: None,
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            priority_class_name: None,
        }
    }
}

/// Devices a job trains on.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Device {
    #[default]
    #[serde(rename = "GPU")]
    Gpu,
    #[serde(rename = "CPU")]
    Cpu,
}
