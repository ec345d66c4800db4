//! The build stage: pure builders of a TrainingJob's children, the token Secret and the attempt
//! Job the lifecycle starts among them ([`build_children`]). They take a planned job and cannot
//! fail; the tests next to them check names, labels, selectors, owner references, env,
//! resources, security context and volumes.

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

use crate::settings::Settings;
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

/// The kinds of children server-side apply writes on every pass, in the order they are applied
/// and deleted (the headless Service last: once it is gone, so are the others): for each, the
/// field that holds it in [`Children`] (and its cache in `apply::Watched`), its type, and the
/// [`Names`](crate::names::Names) method that names it. The watches, the apply and the deletes of
/// these kinds all expand this one list (`applied_kinds!(then)` calls
/// `then! { field: Type = name, ... }`). The job's other children are written once each: the
/// token Secret (neither listed nor watched: the operator's identity may not) and each attempt's
/// Job (watched whole; Kueue owns some of its fields).
macro_rules! applied_kinds {
    ($then:ident) => {
        $then! {
            service_account: k8s_openapi::api::core::v1::ServiceAccount = trainer_identity,
            role: k8s_openapi::api::rbac::v1::Role = trainer_identity,
            role_binding: k8s_openapi::api::rbac::v1::RoleBinding = trainer_identity,
            config_map: k8s_openapi::api::core::v1::ConfigMap = config_map,
            network_policy: k8s_openapi::api::networking::v1::NetworkPolicy = network_policy,
            service: k8s_openapi::api::core::v1::Service = service,
        }
    };
}
pub(crate) use applied_kinds;

macro_rules! children {
    ($($field:ident: $kind:ty = $name:ident),* $(,)?) => {
        /// A job's children as this pass wants them: the applied kinds, the token Secret, and the
        /// attempt Job the lifecycle starts, if it starts one.
        #[derive(Debug, Clone)]
        pub struct Children {
            $(pub $field: $kind,)*
            /// Created only if the job has no Secret yet: its token is never rotated while the
            /// job lives.
            pub secret: k8s_openapi::api::core::v1::Secret,
            /// Created, never applied again.
            pub attempt_job: Option<k8s_openapi::api::batch::v1::Job>,
        }
    };
}
applied_kinds!(children);

/// The children of `job`, with the Job of attempt `starting` if the lifecycle starts one.
pub fn build_children(job: &PlannedJob, starting: Option<i32>, settings: &Settings) -> Children {
    Children {
        service_account: build_service_account(&job.valid),
        role: build_role(&job.valid),
        role_binding: build_role_binding(&job.valid),
        config_map: build_config_map(job),
        // where the pods' metrics may be scraped from
        network_policy: build_network_policy(&job.valid, settings.metrics_namespace.as_deref()),
        service: build_service(&job.valid),
        secret: build_secret(&job.valid, &new_token()),
        attempt_job: starting.map(|attempt| build_job(job, attempt, settings)),
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

    #[test]
    fn the_attempt_job_and_the_secret_are_built_with_the_other_children() {
        let job = planned(1);
        let settings = Settings::default();
        let starting = super::build_children(&job, Some(2), &settings);
        let attempt_job = starting.attempt_job.expect("the attempt the lifecycle starts");
        assert_eq!(attempt_job.metadata.name, Some(job.valid.names.attempt_job(2)));
        assert_owned(&attempt_job.metadata);
        assert_eq!(starting.secret.metadata.name, Some(job.valid.names.secret()));
        assert_owned(&starting.secret.metadata);
        assert!(super::build_children(&job, None, &settings).attempt_job.is_none(), "no attempt starts: no Job to create");
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
