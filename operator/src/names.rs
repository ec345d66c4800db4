//! Names, labels and annotations of a TrainingJob's children.
//!
//! Every child name is the TrainingJob's name plus a short suffix; `validate` leaves room for the
//! longest (`-a<attempt>-<index>` on a pod hostname, which must fit a DNS label).

use std::collections::BTreeMap;

/// Field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "frugal-operator";

/// The standard label saying who manages a child; the watches select on it.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "frugal-operator";
/// The TrainingJob a child belongs to; the uid of the TrainingJob an attempt's Job and pods
/// belong to: a job deleted and made again under the same name is another job, and pods that
/// outlive their Job (orphaned) still say whose they are; the attempt an attempt's Job and pods
/// belong to. In the contract, for whoever looks for the pods.
pub use frugal_api::contract::pods::{ATTEMPT_LABEL, JOB_LABEL, JOB_UID_LABEL};
/// The finalizer on every TrainingJob: its deletion waits until its pods are gone, billed and
/// released from its budget.
pub const FINALIZER: &str = "frugal.dev/stop-and-bill";
/// Which part of the job a child is.
pub const COMPONENT: &str = "app.kubernetes.io/component";
/// Kueue's queue label, copied from the TrainingJob to the attempt's Job.
pub use frugal_api::admission::KUEUE_QUEUE_LABEL;
/// Set on an attempt's Job when the operator stops it, saying why (`Stalled`, `DeadlineExceeded`,
/// `Suspended`): the Job then fails with reason DeadlineExceeded and this tells the causes apart.
pub const STOP_REASON_ANNOTATION: &str = "frugal.dev/stop-reason";

/// The longest attempt number a name leaves room for (`-a100` plus `-63` index).
pub const MAX_ATTEMPT: i32 = 999;

/// The names of one TrainingJob's children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub namespace: String,
    pub job: String,
}

impl Names {
    pub fn new(namespace: &str, job: &str) -> Self {
        Self { namespace: namespace.into(), job: job.into() }
    }
    /// The headless Service; also the pods' subdomain.
    pub fn service(&self) -> String {
        self.job.clone()
    }
    /// The NetworkPolicy that keeps other pods off the job's stage ports.
    pub fn network_policy(&self) -> String {
        self.job.clone()
    }
    pub fn config_map(&self) -> String {
        format!("{}-config", self.job)
    }
    pub fn secret(&self) -> String {
        format!("{}-token", self.job)
    }
    /// The ServiceAccount, Role and RoleBinding of the trainer pods.
    pub fn trainer_identity(&self) -> String {
        format!("{}-trainer", self.job)
    }
    /// The Indexed Job of attempt `attempt` (counting from 1).
    pub fn attempt_job(&self, attempt: i32) -> String {
        format!("{}-a{attempt}", self.job)
    }

    /// Labels every child carries.
    pub fn labels(&self, component: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (MANAGED_BY.to_string(), MANAGED_BY_VALUE.to_string()),
            (JOB_LABEL.to_string(), self.job.clone()),
            (COMPONENT.to_string(), component.to_string()),
        ])
    }

    /// Labels of an attempt's Job and its pods; `uid` is the TrainingJob's.
    pub fn attempt_labels(&self, attempt: i32, uid: &str) -> BTreeMap<String, String> {
        let mut labels = self.labels("trainer");
        labels.insert(ATTEMPT_LABEL.into(), attempt.to_string());
        labels.insert(JOB_UID_LABEL.into(), uid.to_string());
        labels
    }

    /// The label selector of every child of every TrainingJob (what the watches ask for).
    pub fn managed_selector() -> String {
        format!("{MANAGED_BY}={MANAGED_BY_VALUE}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_have_fixed_suffixes() {
        let n = Names::new("ml", "lm");
        assert_eq!(n.service(), "lm");
        assert_eq!(n.config_map(), "lm-config");
        assert_eq!(n.secret(), "lm-token");
        assert_eq!(n.trainer_identity(), "lm-trainer");
        assert_eq!(n.attempt_job(3), "lm-a3");
        assert_eq!(n.attempt_labels(3, "u-1")[ATTEMPT_LABEL], "3");
        assert_eq!(n.attempt_labels(3, "u-1")[JOB_LABEL], "lm");
        assert_eq!(n.attempt_labels(3, "u-1")[JOB_UID_LABEL], "u-1");
        assert_eq!(Names::managed_selector(), "app.kubernetes.io/managed-by=frugal-operator");
    }

    #[test]
    fn the_longest_pod_hostname_fits_a_dns_label() {
        let name = "a".repeat(frugal_api::v1alpha1::MAX_JOB_NAME_LENGTH);
        let n = Names::new("ml", &name);
        // an Indexed Job's pod hostname is `<job>-<index>`; a job runs at most 256 pods (stages ×
        // replicas, one GPU each)
        let hostname = format!("{}-{}", n.attempt_job(MAX_ATTEMPT), 255);
        assert!(hostname.len() <= 63, "{hostname} is {} characters", hostname.len());
        assert!(n.trainer_identity().len() <= 63);
    }
}
