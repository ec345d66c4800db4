//! Restarts, deadlines, clean-up and suspension.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Restarts, deadlines, clean-up and suspension, with Kubernetes Job's field names.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunPolicy {
    /// Failed attempts allowed before the job is Failed. Node disruptions, preemptions and
    /// Kueue evictions do not count.
    #[serde(default = "default_backoff_limit")]
    #[schemars(range(min = 0, max = 100))]
    pub backoff_limit: i32,
    /// Seconds the job may run, counted from its first start; then it is Failed with reason
    /// DeadlineExceeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub active_deadline_seconds: Option<i64>,
    /// Seconds after the job finishes when its pods and other children are deleted. The
    /// TrainingJob itself stays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i32>,
    /// Seconds without a progress report after which an attempt counts as stalled and is
    /// restarted.
    #[serde(default = "default_progress_deadline")]
    #[schemars(range(min = 30))]
    pub progress_deadline_seconds: i64,
    /// Seconds an attempt's pods may take to start (scheduled, images pulled, containers
    /// running) before the attempt is stopped and counted as a failure, its GPUs released. Until
    /// then a pod that cannot be scheduled or whose image cannot be pulled is named in the Ready
    /// condition.
    #[serde(default = "default_startup_deadline")]
    #[schemars(range(min = 10))]
    pub startup_deadline_seconds: i64,
    /// Stop the job's pods (each writes a checkpoint) and keep them stopped until false again.
    #[serde(default)]
    pub suspend: bool,
}

fn default_backoff_limit() -> i32 {
    3
}
fn default_progress_deadline() -> i64 {
    1800
}
fn default_startup_deadline() -> i64 {
    600
}

impl Default for RunPolicy {
    fn default() -> Self {
        Self {
            backoff_limit: default_backoff_limit(),
            active_deadline_seconds: None,
            ttl_seconds_after_finished: None,
            progress_deadline_seconds: default_progress_deadline(),
            startup_deadline_seconds: default_startup_deadline(),
            suspend: false,
        }
    }
}
