//! What the cluster reports about a job's attempts, read from the controller's caches of Jobs
//! and pods (both watched by label, so only the operator's own).

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::reflector::Store;

use crate::conditions::reasons;
use crate::lifecycle::{AttemptState, AttemptView, CONFIGURATION_ERROR_EXIT_CODE, FailureKind, StartTrouble, attempt_state};
use crate::names::{ATTEMPT_LABEL, JOB_LABEL};
use crate::validate::ValidJob;

/// The attempt number of one of `job`'s attempt Jobs, if it is one.
fn attempt_of(child: &Job, job: &ValidJob) -> Option<i32> {
    let owned = child.owner_references().iter().any(|o| o.uid == job.uid);
    let ours = child.namespace().as_deref() == Some(job.names.namespace.as_str()) && child.labels().get(JOB_LABEL) == Some(&job.names.job);
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

/// The pods of attempt `attempt`, by name.
fn attempt_pods(pods: &Store<Pod>, job: &ValidJob, attempt: i32) -> Vec<std::sync::Arc<Pod>> {
    let attempt = attempt.to_string();
    let mut out: Vec<_> = pods
        .state()
        .into_iter()
        .filter(|p| {
            p.namespace().as_deref() == Some(job.names.namespace.as_str())
                && p.labels().get(JOB_LABEL) == Some(&job.names.job)
                && p.labels().get(ATTEMPT_LABEL) == Some(&attempt)
        })
        .collect();
    out.sort_by_key(|p| p.name_any());
    out
}

/// Pods that are not yet Succeeded or Failed (they hold GPUs).
fn live(pods: &[std::sync::Arc<Pod>]) -> usize {
    pods.iter().filter(|p| !matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))).count()
}

/// Waiting reasons of a container the kubelet cannot start, and what they are called here.
const IMAGE_REASONS: [&str; 5] = ["ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull", "RegistryUnavailable"];
const CREATE_REASONS: [&str; 3] = ["CreateContainerConfigError", "CreateContainerError", "RunContainerError"];

/// What keeps the first troubled pod of `pods` from starting: the scheduler's reason, or the
/// kubelet's for a container (its image, the pull error).
pub fn start_trouble(pods: &[std::sync::Arc<Pod>]) -> Option<StartTrouble> {
    pods.iter().find_map(|pod| {
        let name = pod.name_any();
        let status = pod.status.as_ref()?;
        let unschedulable = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable"));
        if let Some(c) = unschedulable {
            let why = c.message.as_deref().unwrap_or("no reason given");
            return Some(StartTrouble { reason: reasons::UNSCHEDULABLE, message: format!("pod {name} cannot be scheduled: {why}") });
        }
        let containers = status.init_container_statuses.iter().flatten().chain(status.container_statuses.iter().flatten());
        containers.into_iter().find_map(|c| {
            let waiting = c.state.as_ref()?.waiting.as_ref()?;
            let reason = waiting.reason.as_deref()?;
            let detail = waiting.message.as_deref().map_or(String::new(), |m| format!(": {m}"));
            if IMAGE_REASONS.contains(&reason) {
                let message = format!("pod {name} cannot pull image {:?} ({reason}){detail}", c.image);
                Some(StartTrouble { reason: reasons::IMAGE_PULL_FAILED, message })
            } else if CREATE_REASONS.contains(&reason) {
                let message = format!("pod {name}: container {} cannot start ({reason}){detail}", c.name);
                Some(StartTrouble { reason: reasons::CONTAINER_NOT_CREATED, message })
            } else {
                None
            }
        })
    })
}

/// What the trainer wrote to its termination log when it exited with the configuration-error
/// code (the kubelet puts it in the container's terminated state), with the pod's name.
pub fn configuration_message(pods: &[std::sync::Arc<Pod>]) -> Option<String> {
    pods.iter().find_map(|pod| {
        let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
        statuses.iter().find_map(|c| {
            let t = c.state.as_ref()?.terminated.as_ref()?;
            let message = t.message.as_deref().map(str::trim).filter(|m| !m.is_empty())?;
            (t.exit_code == CONFIGURATION_ERROR_EXIT_CODE)
                .then(|| format!("pod {}: {}", pod.name_any(), message.chars().take(1024).collect::<String>()))
        })
    })
}

/// The attempts as the lifecycle sees them.
pub fn attempts(jobs: &Store<Job>, pods: &Store<Pod>, job: &ValidJob) -> Vec<AttemptView> {
    attempt_jobs(jobs, job)
        .into_iter()
        .map(|(attempt, j)| {
            // one read of the pod cache per attempt serves both its state and its trouble
            let own = attempt_pods(pods, job, attempt);
            let mut state = attempt_state(&j, live(&own));
            // the Job says only which rule matched; the trainer's own words say what to fix
            if let AttemptState::Failed { kind: FailureKind::Configuration, message } = &mut state
                && let Some(said) = configuration_message(&own)
            {
                *message = said;
            }
            let trouble = if state == AttemptState::Starting { start_trouble(&own) } else { None };
            AttemptView { attempt, state, started: j.status.as_ref().and_then(|s| s.start_time.clone()), trouble }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configuration_error_is_said_in_the_trainers_words() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "lm-a1-0"},
            "status": {"phase": "Failed", "containerStatuses": [{"name": "trainer", "image": "t", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 78, "reason": "Error",
                    "message": "data.source.text.path \"/data/corpus.txt\" cannot be read (No such file or directory): mount it into the pod\n"}}}]}}))
        .unwrap();
        let said = configuration_message(&[std::sync::Arc::new(pod.clone())]).unwrap();
        assert_eq!(said, "pod lm-a1-0: data.source.text.path \"/data/corpus.txt\" cannot be read (No such file or directory): mount it into the pod");
        // another exit code is not a configuration error
        let mut other = pod;
        other.status.as_mut().unwrap().container_statuses.as_mut().unwrap()[0].state.as_mut().unwrap().terminated.as_mut().unwrap().exit_code = 1;
        assert_eq!(configuration_message(&[std::sync::Arc::new(other)]), None);
    }

    fn pod(status: serde_json::Value) -> std::sync::Arc<Pod> {
        std::sync::Arc::new(serde_json::from_value(serde_json::json!({"metadata": {"name": "lm-a1-0"}, "status": status})).unwrap())
    }

    #[test]
    fn the_scheduler_and_the_kubelet_say_why_a_pod_does_not_start() {
        let unschedulable =
            pod(serde_json::json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}]}));
        let t = start_trouble(&[unschedulable]).unwrap();
        assert_eq!(t.reason, reasons::UNSCHEDULABLE);
        assert_eq!(t.message, "pod lm-a1-0 cannot be scheduled: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu.");

        let pulling =
            pod(serde_json::json!({"phase": "Pending", "containerStatuses": [{"name": "trainer", "image": "registry.invalid/frugal/trainer:1",
            "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"registry.invalid/frugal/trainer:1\""}}}]}));
        let t = start_trouble(&[pulling]).unwrap();
        assert_eq!(t.reason, reasons::IMAGE_PULL_FAILED);
        assert!(
            t.message.starts_with("pod lm-a1-0 cannot pull image \"registry.invalid/frugal/trainer:1\" (ImagePullBackOff): Back-off"),
            "{}",
            t.message
        );

        let creating =
            pod(serde_json::json!({"phase": "Pending", "containerStatuses": [{"name": "trainer", "image": "i", "imageID": "", "ready": false,
            "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}}]}));
        assert_eq!(start_trouble(&[creating]), None, "a container being created is not in trouble");
    }
}
