//! The trainer pods' identity: a ServiceAccount whose Role allows `get` and `patch` on this one
//! job's `trainingjobs/status`, and nothing else.

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};

use super::child_meta;
use crate::training_job::validate::ValidJob;

/// The ServiceAccount, with the spec's `podTemplate.serviceAccountAnnotations` (a platform's
/// workload identity: the pods' credentials for object storage).
pub fn build_service_account(job: &ValidJob) -> ServiceAccount {
    let mut metadata = child_meta(job, job.names.trainer_identity(), job.names.labels("trainer-identity"));
    if let Some(o) = job.spec.pod_template.as_ref().filter(|o| !o.service_account_annotations.is_empty()) {
        metadata.annotations = Some(o.service_account_annotations.clone());
    }
    ServiceAccount { metadata, automount_service_account_token: Some(false), ..Default::default() }
}

pub fn build_role(job: &ValidJob) -> Role {
    Role {
        metadata: child_meta(job, job.names.trainer_identity(), job.names.labels("trainer-identity")),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["frugal.dev".into()]),
            resources: Some(vec!["trainingjobs/status".into()]),
            resource_names: Some(vec![job.names.job.clone()]),
            verbs: vec!["get".into(), "patch".into()],
            ..Default::default()
        }]),
    }
}

pub fn build_role_binding(job: &ValidJob) -> RoleBinding {
    RoleBinding {
        metadata: child_meta(job, job.names.trainer_identity(), job.names.labels("trainer-identity")),
        role_ref: RoleRef { api_group: "rbac.authorization.k8s.io".into(), kind: "Role".into(), name: job.names.trainer_identity() },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: job.names.trainer_identity(),
            namespace: Some(job.names.namespace.clone()),
            ..Default::default()
        }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::training_job::children::tests::{assert_owned, planned};

    #[test]
    fn the_service_account_carries_the_specs_workload_identity_annotations() {
        let plain = build_service_account(&planned(1).valid);
        assert_owned(&plain.metadata);
        assert_eq!((plain.metadata.name.as_deref(), plain.metadata.annotations.as_ref()), (Some("lm-trainer"), None));
        assert_eq!(plain.automount_service_account_token, Some(false));
        let mut job = planned(1).valid;
        let role = [("eks.amazonaws.com/role-arn".to_string(), "arn:aws:iam::123456789012:role/lm".to_string())];
        job.spec.pod_template = Some(frugal_api::v1alpha1::PodOverrides { service_account_annotations: role.into(), ..Default::default() });
        let sa = build_service_account(&job);
        let annotations = sa.metadata.annotations.unwrap();
        assert_eq!(annotations.get("eks.amazonaws.com/role-arn").map(String::as_str), Some("arn:aws:iam::123456789012:role/lm"));
    }

    #[test]
    fn the_role_allows_only_this_jobs_status() {
        let job = planned(1).valid;
        let role = build_role(&job);
        assert_owned(&role.metadata);
        assert_eq!(role.metadata.name.as_deref(), Some("lm-trainer"));
        let rules = role.rules.unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].api_groups.as_deref(), Some(&["frugal.dev".to_string()][..]));
        assert_eq!(rules[0].resources.as_deref(), Some(&["trainingjobs/status".to_string()][..]));
        assert_eq!(rules[0].resource_names.as_deref(), Some(&["lm".to_string()][..]));
        assert_eq!(rules[0].verbs, vec!["get", "patch"]);
    }

    #[test]
    fn the_binding_ties_the_role_to_the_service_account() {
        let job = planned(1).valid;
        let sa = build_service_account(&job);
        assert_owned(&sa.metadata);
        // the pod asks for its token explicitly; other pods using this account get none
        assert_eq!(sa.automount_service_account_token, Some(false));
        let rb = build_role_binding(&job);
        assert_owned(&rb.metadata);
        assert_eq!(rb.role_ref.kind, "Role");
        assert_eq!(rb.role_ref.name, "lm-trainer");
        let subjects = rb.subjects.unwrap();
        assert_eq!(subjects[0].kind, "ServiceAccount");
        assert_eq!(subjects[0].name, sa.metadata.name.unwrap());
        assert_eq!(subjects[0].namespace.as_deref(), Some("ml"));
    }
}
