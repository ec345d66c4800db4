//! Pure builders of a TrainingJob's children. They take a planned job and cannot fail; the tests
//! next to them check names, labels, selectors, owner references, env, resources, security
//! context and volumes.

mod config;
mod identity;
mod job;
mod network;

pub use config::{build_config_map, build_secret, build_service, new_token};
pub use identity::{build_role, build_role_binding, build_service_account};
pub use job::{CONFIGURATION_ERROR_EXIT_CODE, build_job, rules};
pub use network::build_network_policy;

use std::collections::BTreeMap;

use kube::api::ObjectMeta;

use crate::training_job::plan::PlannedJob;
use crate::training_job::validate::ValidJob;

/// Metadata of a child: its name, the job's namespace, labels and the owner reference.
fn child_meta(job: &ValidJob, name: String, mut labels: BTreeMap<String, String>) -> ObjectMeta {
    // whose it is, should the owner reference be taken away (an orphaning delete)
    labels.insert(crate::names::JOB_UID_LABEL.into(), job.uid.clone());
    ObjectMeta {
        name: Some(name),
        namespace: Some(job.names.namespace.clone()),
        labels: Some(labels),
        owner_references: Some(vec![job.owner.clone()]),
        ..Default::default()
    }
}

/// The children written by server-side apply on every pass (the Secret and the attempt Jobs are
/// created once instead).
#[derive(Debug, Clone)]
pub struct Children {
    pub service_account: k8s_openapi::api::core::v1::ServiceAccount,
    pub role: k8s_openapi::api::rbac::v1::Role,
    pub role_binding: k8s_openapi::api::rbac::v1::RoleBinding,
    pub service: k8s_openapi::api::core::v1::Service,
    pub config_map: k8s_openapi::api::core::v1::ConfigMap,
    pub network_policy: k8s_openapi::api::networking::v1::NetworkPolicy,
}

/// The children of `job`; `metrics_namespace` is where the pods' metrics may be scraped from.
pub fn build_children(job: &PlannedJob, metrics_namespace: Option<&str>) -> Children {
    Children {
        service_account: build_service_account(&job.valid),
        role: build_role(&job.valid),
        role_binding: build_role_binding(&job.valid),
        service: build_service(&job.valid),
        config_map: build_config_map(job),
        network_policy: build_network_policy(&job.valid, metrics_namespace),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use crate::settings::Settings;
    use crate::training_job::plan::{PlannedJob, plan};
    use crate::training_job::validate::{tests::training_job, validate};
    use frugal_api::TrainingJob;

    pub fn planned_from(job: &TrainingJob) -> PlannedJob {
        let settings = Settings::default();
        plan(&validate(job, &settings).unwrap(), &settings.plan_options).unwrap()
    }

    pub fn planned(stages: i32) -> PlannedJob {
        planned_from(&training_job(stages))
    }

    /// Every child is owned by its TrainingJob as controller and carries the job's labels.
    pub fn assert_owned(meta: &kube::api::ObjectMeta) {
        let owners = meta.owner_references.as_ref().expect("owner references");
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].uid, "u-1");
        assert_eq!(owners[0].kind, "TrainingJob");
        assert_eq!(owners[0].api_version, "frugal.dev/v1alpha1");
        assert_eq!(owners[0].controller, Some(true));
        assert_eq!(meta.namespace.as_deref(), Some("ml"));
        let labels = meta.labels.as_ref().expect("labels");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "frugal-operator");
        assert_eq!(labels["frugal.dev/training-job"], "lm");
    }
}
