//! The trainer pods' identity: a ServiceAccount whose Role allows `get` and `patch` on this one
//! job's `trainingjobs/status`, and nothing else.

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};

use super::child_meta;
use crate::training_job::validate::ValidJob;

pub fn build_service_account(job: &ValidJob) -> ServiceAccount {
    ServiceAccount {
        metadata: child_meta(job, job.names.trainer_identity(), job.names.labels("trainer-identity")),
        automount_service_account_token: Some(false),
        ..Default::default()
    }
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
