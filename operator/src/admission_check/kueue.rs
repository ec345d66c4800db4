//! The few parts of Kueue's `kueue.x-k8s.io/v1beta2` objects the admission check reads, as
//! small typed structs (Kueue publishes no Rust types): a Workload's pod sets, maximum execution
//! time, conditions and admission-check states, and an AdmissionCheck's controller name.

use std::borrow::Cow;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use kube::Resource;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "kueue.x-k8s.io";
pub const VERSION: &str = "v1beta2";

macro_rules! kueue_resource {
    ($ty:ident, $kind:literal, $plural:literal, $scope:ty) => {
        impl Resource for $ty {
            type DynamicType = ();
            type Scope = $scope;
            fn kind(_: &()) -> Cow<'_, str> {
                $kind.into()
            }
            fn group(_: &()) -> Cow<'_, str> {
                GROUP.into()
            }
            fn version(_: &()) -> Cow<'_, str> {
                VERSION.into()
            }
            fn plural(_: &()) -> Cow<'_, str> {
                $plural.into()
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

/// A Kueue Workload: what Kueue queues and admits for one job of any kind.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct Workload {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: WorkloadSpec,
    #[serde(default)]
    pub status: Option<WorkloadStatus>,
}
kueue_resource!(Workload, "Workload", "workloads", k8s_openapi::NamespaceResourceScope);

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSpec {
    #[serde(default)]
    pub pod_sets: Vec<PodSet>,
    #[serde(default)]
    pub queue_name: Option<String>,
    /// Set from the job's `kueue.x-k8s.io/max-exec-time-seconds` label.
    #[serde(default)]
    pub maximum_execution_time_seconds: Option<i64>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct PodSet {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub count: i32,
    #[serde(default)]
    pub template: PodTemplateSpec,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadStatus {
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub admission_checks: Vec<AdmissionCheckState>,
}

/// One entry of a Workload's `status.admissionChecks` (a list keyed by name).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionCheckState {
    pub name: String,
    /// `Pending`, `Ready`, `Retry` or `Rejected`.
    pub state: String,
    #[serde(default)]
    pub message: String,
    pub last_transition_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requeue_after_seconds: Option<i32>,
}

/// A Kueue AdmissionCheck: a ClusterQueue lists it by name; its controller decides it.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct AdmissionCheck {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: AdmissionCheckSpec,
    #[serde(default)]
    pub status: Option<AdmissionCheckStatus>,
}
kueue_resource!(AdmissionCheck, "AdmissionCheck", "admissionchecks", k8s_openapi::ClusterResourceScope);

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionCheckSpec {
    #[serde(default)]
    pub controller_name: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct AdmissionCheckStatus {
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

impl Workload {
    /// Whether condition `type_` is True.
    pub fn is(&self, type_: &str) -> bool {
        self.status.iter().flat_map(|s| &s.conditions).any(|c| c.type_ == type_ && c.status == "True")
    }

    /// Its entry for AdmissionCheck `name`, once Kueue has added it.
    pub fn check(&self, name: &str) -> Option<&AdmissionCheckState> {
        self.status.iter().flat_map(|s| &s.admission_checks).find(|c| c.name == name)
    }
}
