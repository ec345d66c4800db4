//! Condition types and reasons, in one place, and the helper that sets a condition the
//! Kubernetes way (its `lastTransitionTime` moves only when its status does).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub mod types {
    pub const READY: &str = "Ready";
    pub const QUEUED: &str = "Queued";
    pub const RUNNING: &str = "Running";
    pub const SUSPENDED: &str = "Suspended";
    pub const STALLED: &str = "Stalled";
    pub const SUCCEEDED: &str = "Succeeded";
    pub const FAILED: &str = "Failed";
    /// True while the trainer's latest training loss is not a finite number.
    pub const NON_FINITE_LOSS: &str = "NonFiniteLoss";
    /// True while an admission policy of the chart is missing (`policies.rs`).
    pub const ADMISSION_POLICIES_MISSING: &str = "AdmissionPoliciesMissing";
    /// Every type the operator owns on a TrainingJob, in the order they are written.
    pub const ALL: [&str; 9] = [READY, QUEUED, RUNNING, SUSPENDED, STALLED, SUCCEEDED, FAILED, NON_FINITE_LOSS, ADMISSION_POLICIES_MISSING];
    /// A TrainingBudget's: True while a limit is reached.
    pub const EXHAUSTED: &str = "Exhausted";
}

pub mod reasons {
    // the reasons admission decides live in the API crate, which the kubectl plugin shares
    pub use frugal_api::admission::reasons::{
        BUDGET_EXHAUSTED, BUDGET_NOT_ALLOWED, BUDGET_NOT_FOUND, BUDGET_TOO_SMALL, CONFIGURATION_ERROR, GPU_LIMIT_EXCEEDED, GPU_MEMORY_EXCEEDED,
        INVALID_SPEC, PLAN_FAILED,
    };
    // progress
    pub const CREATING: &str = "Creating";
    pub const PODS_STARTING: &str = "PodsStarting";
    pub const RESTARTING: &str = "Restarting";
    pub const QUEUED: &str = "Queued";
    pub const RUNNING: &str = "Running";
    pub const SUSPENDED: &str = "Suspended";
    pub const SUSPENDING: &str = "Suspending";
    pub const SUCCEEDED: &str = "Succeeded";
    pub const WAITING_FOR_PODS: &str = "WaitingForPods";
    pub const WAITING_FOR_CHECKPOINT_CLAIM: &str = "WaitingForCheckpointClaim";
    // terminal or permanent (and, above, the budget's: a job Queued for it, or refused by it)
    pub const CHECKPOINT_NOT_SHARED: &str = "CheckpointNotShared";
    pub const BACKOFF_LIMIT_EXCEEDED: &str = "BackoffLimitExceeded";
    pub const DEADLINE_EXCEEDED: &str = "DeadlineExceeded";
    /// The API server refused a child (the attempt's Job, say) as invalid.
    pub const REJECTED_BY_API_SERVER: &str = "RejectedByApiServer";
    /// An object of a child's name exists that the job did not make; it is left alone.
    pub const NAME_TAKEN: &str = "NameTaken";
    /// The reasons of permanent errors: the spec cannot work as it is, and the job waits for it
    /// to change (see `Error::permanent_reason`).
    pub const PERMANENT: [&str; 9] = [
        INVALID_SPEC,
        PLAN_FAILED,
        GPU_LIMIT_EXCEEDED,
        GPU_MEMORY_EXCEEDED,
        CHECKPOINT_NOT_SHARED,
        BUDGET_TOO_SMALL,
        BUDGET_NOT_ALLOWED,
        REJECTED_BY_API_SERVER,
        NAME_TAKEN,
    ];
    // the watchdog
    pub const STALLED: &str = "Stalled";
    // an attempt whose pods do not start
    pub const IMAGE_PULL_FAILED: &str = "ImagePullFailed";
    pub const UNSCHEDULABLE: &str = "Unschedulable";
    pub const CONTAINER_NOT_CREATED: &str = "ContainerNotCreated";
    pub const STARTUP_TIMEOUT: &str = "StartupTimeout";
    /// Every reason a TrainingJob's conditions may carry: the values of the `reason` label of
    /// `frugal_operator_training_jobs`, so that the label stays bounded whatever a status says.
    pub const JOB: [&str; 29] = [
        CREATING,
        PODS_STARTING,
        RESTARTING,
        QUEUED,
        RUNNING,
        SUSPENDED,
        SUSPENDING,
        SUCCEEDED,
        WAITING_FOR_PODS,
        WAITING_FOR_CHECKPOINT_CLAIM,
        INVALID_SPEC,
        CHECKPOINT_NOT_SHARED,
        BACKOFF_LIMIT_EXCEEDED,
        DEADLINE_EXCEEDED,
        CONFIGURATION_ERROR,
        REJECTED_BY_API_SERVER,
        NAME_TAKEN,
        STALLED,
        IMAGE_PULL_FAILED,
        UNSCHEDULABLE,
        CONTAINER_NOT_CREATED,
        STARTUP_TIMEOUT,
        BUDGET_EXHAUSTED,
        BUDGET_NOT_ALLOWED,
        BUDGET_NOT_FOUND,
        BUDGET_TOO_SMALL,
        GPU_LIMIT_EXCEEDED,
        GPU_MEMORY_EXCEEDED,
        PLAN_FAILED,
    ];
    // a TrainingBudget's Exhausted condition
    pub const GPU_HOURS_SPENT: &str = "GpuHoursSpent";
    pub const COST_SPENT: &str = "CostSpent";
    pub const ALL_GPUS_IN_USE: &str = "AllGpusInUse";
    pub const WITHIN_LIMITS: &str = "WithinLimits";
}

/// Sets condition `type_` in `conditions`: a new condition, or the old one updated, keeping its
/// `lastTransitionTime` unless its status changes.
pub fn set(conditions: &mut Vec<Condition>, type_: &str, status: bool, reason: &str, message: &str, generation: i64, now: &Time) {
    let status = if status { "True" } else { "False" }.to_string();
    let message = message.chars().take(32768).collect::<String>();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = now.clone();
            }
            c.status = status;
            c.reason = reason.into();
            c.message = message;
            c.observed_generation = Some(generation);
        }
        None => conditions.push(Condition {
            type_: type_.into(),
            status,
            reason: reason.into(),
            message,
            observed_generation: Some(generation),
            last_transition_time: now.clone(),
        }),
    }
}

/// Whether two condition lists say the same, ignoring `lastTransitionTime` and order.
pub fn same(a: &[Condition], b: &[Condition]) -> bool {
    let key = |c: &Condition| (c.type_.clone(), c.status.clone(), c.reason.clone(), c.message.clone(), c.observed_generation);
    let mut a: Vec<_> = a.iter().map(key).collect();
    let mut b: Vec<_> = b.iter().map(key).collect();
    a.sort();
    b.sort();
    a == b
}

pub fn get<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    /// A reason added to `reasons` and forgotten in `reasons::JOB` would be counted as `Other`.
    #[test]
    fn every_job_reason_is_a_label_value() {
        let source = include_str!("conditions.rs");
        let module = &source[source.find("pub mod reasons").unwrap()..source.find("pub const JOB").unwrap()];
        let budget_only = [reasons::GPU_HOURS_SPENT, reasons::COST_SPENT, reasons::ALL_GPUS_IN_USE, reasons::WITHIN_LIMITS];
        let mut declared = 0;
        for line in module.lines().map(str::trim).filter(|l| l.starts_with("pub const") && l.contains(": &str = \"")) {
            let value = line.split('"').nth(1).unwrap();
            declared += 1;
            assert!(reasons::JOB.contains(&value) || budget_only.contains(&value), "reason {value} is missing from reasons::JOB");
        }
        assert!(declared >= 20, "read {declared} reasons from conditions.rs");
        let imported = [reasons::BUDGET_EXHAUSTED, reasons::BUDGET_NOT_FOUND, reasons::BUDGET_TOO_SMALL, reasons::BUDGET_NOT_ALLOWED];
        assert!(imported.iter().all(|r| reasons::JOB.contains(r)));
    }

    #[test]
    fn transition_time_moves_only_with_the_status() {
        let mut c = Vec::new();
        set(&mut c, "Ready", false, "Creating", "creating", 1, &at(10));
        set(&mut c, "Ready", false, "PodsStarting", "starting", 2, &at(20));
        assert_eq!(c[0].last_transition_time, at(10));
        assert_eq!(c[0].reason, "PodsStarting");
        assert_eq!(c[0].observed_generation, Some(2));
        set(&mut c, "Ready", true, "Running", "running", 2, &at(30));
        assert_eq!(c[0].last_transition_time, at(30));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn sameness_ignores_times_and_order() {
        let mut a = Vec::new();
        set(&mut a, "Ready", true, "Running", "m", 1, &at(1));
        set(&mut a, "Failed", false, "NotApplicable", "", 1, &at(1));
        let mut b = Vec::new();
        set(&mut b, "Failed", false, "NotApplicable", "", 1, &at(5));
        set(&mut b, "Ready", true, "Running", "m", 1, &at(5));
        assert!(same(&a, &b));
        set(&mut b, "Ready", true, "Running", "other", 1, &at(5));
        assert!(!same(&a, &b));
    }
}
