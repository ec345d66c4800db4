//! What the cluster reports about a job's attempts, read from the controller's caches of Jobs
//! and pods (both watched by label, so only the operator's own).

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::Store;
use kube::ResourceExt;

use crate::lifecycle::{attempt_state, AttemptView};
use crate::names::{ATTEMPT_LABEL, JOB_LABEL};
use crate::validate::ValidJob;

/// The attempt number of one of `job`'s attempt Jobs, if it is one.
fn attempt_of(child: &Job, job: &ValidJob) -> Option<i32> {
    let owned = child.owner_references().iter().any(|o| o.uid == job.uid);
    let ours = child.namespace().as_deref() == Some(job.names.namespace.as_str())
        && child.labels().get(JOB_LABEL) == Some(&job.names.job);
    if !(owned && ours) {
        return None;
    }
    child.labels().get(ATTEMPT_LABEL)?.parse().ok()
}

/// The job's attempt Jobs, oldest first.
pub fn attempt_jobs(jobs: &Store<Job>, job: &ValidJob) -> Vec<(i32, std::sync::Arc<Job>)> {
    let mut out: Vec<_> = jobs.state().into_iter().filter_map(|j| attempt_of(&j, job).map(|a| (a, j))).collect();
    out.sort_by_key(|(a, _)| *a);
    out
}

/// Pods of attempt `attempt` that are not yet Succeeded or Failed (they hold GPUs).
pub fn live_pods(pods: &Store<Pod>, job: &ValidJob, attempt: i32) -> usize {
    let attempt = attempt.to_string();
    pods.state()
        .iter()
        .filter(|p| {
            p.namespace().as_deref() == Some(job.names.namespace.as_str())
                && p.labels().get(JOB_LABEL) == Some(&job.names.job)
                && p.labels().get(ATTEMPT_LABEL) == Some(&attempt)
        })
        .filter(|p| !matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed")))
        .count()
}

/// The attempts as the lifecycle sees them.
pub fn attempts(jobs: &Store<Job>, pods: &Store<Pod>, job: &ValidJob) -> Vec<AttemptView> {
    attempt_jobs(jobs, job)
        .into_iter()
        .map(|(attempt, j)| AttemptView {
            attempt,
            state: attempt_state(&j, live_pods(pods, job, attempt)),
            started: j.status.as_ref().and_then(|s| s.start_time.clone()),
        })
        .collect()
}
