//! What the cluster reports about a job's attempts, read from the controller's caches of Jobs
//! and pods (both watched by label, so only the operator's own): where each attempt's Job is
//! ([`attempt_state`]), what keeps its pods from starting, and what the trainer said when it
//! refused its configuration.

use k8s_openapi::api::batch::v1::{Job, JobCondition};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::runtime::reflector::Store;

use super::bill::{self, AttemptSeen};
use super::children::{CONFIGURATION_ERROR_EXIT_CODE, rules};
use super::validate::ValidJob;
use crate::conditions::reasons;
use crate::names::{ATTEMPT_LABEL, JOB_LABEL, JOB_UID_LABEL, STOP_REASON_ANNOTATION};

/// Why an attempt ended without success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// A stage failed: counts against backoffLimit.
    Failed,
    /// Node disruption or preemption (the pod had a DisruptionTarget condition): does not count.
    Disrupted,
    /// The trainer exited with [`CONFIGURATION_ERROR_EXIT_CODE`]: permanent.
    Configuration,
    /// The operator stopped it: no progress within progressDeadlineSeconds. Counts.
    Stalled,
    /// The operator stopped it: the job's activeDeadlineSeconds passed. Permanent.
    DeadlineExceeded,
    /// The operator stopped it because the job was suspended. Does not count.
    Suspended,
    /// The operator stopped it: the job spent its own spec.budget.maxGpuHours or maxCost. Does
    /// not count; the job waits for the limit to be raised.
    BudgetExceeded,
    /// The operator stopped it: its TrainingBudget spent this period's GPU-hours or cost. Does
    /// not count; the job waits for the budget to allow it again.
    BudgetExhausted,
    /// The operator stopped it: its pods did not start within startupDeadlineSeconds. Counts.
    StartupTimeout,
}

impl FailureKind {
    pub fn counts_against_backoff(self) -> bool {
        matches!(self, Self::Failed | Self::Stalled | Self::StartupTimeout)
    }
}

/// Why the operator stops a running attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Stalled,
    DeadlineExceeded,
    Suspended,
    BudgetExceeded,
    BudgetExhausted,
    StartupTimeout,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stalled => "Stalled",
            Self::DeadlineExceeded => "DeadlineExceeded",
            Self::Suspended => "Suspended",
            Self::BudgetExceeded => "BudgetExceeded",
            Self::BudgetExhausted => "BudgetExhausted",
            Self::StartupTimeout => "StartupTimeout",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        [Self::Stalled, Self::DeadlineExceeded, Self::Suspended, Self::BudgetExceeded, Self::BudgetExhausted, Self::StartupTimeout]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
    fn failure(self) -> FailureKind {
        match self {
            Self::Stalled => FailureKind::Stalled,
            Self::DeadlineExceeded => FailureKind::DeadlineExceeded,
            Self::Suspended => FailureKind::Suspended,
            Self::BudgetExceeded => FailureKind::BudgetExceeded,
            Self::BudgetExhausted => FailureKind::BudgetExhausted,
            Self::StartupTimeout => FailureKind::StartupTimeout,
        }
    }
}

/// Why a starting attempt's pods are not running yet, as the scheduler or the kubelet says.
#[derive(Debug, Clone, PartialEq)]
pub struct StartTrouble {
    /// One of the `reasons` constants.
    pub reason: &'static str,
    /// Names the pod and what is wrong, in the cluster's own words.
    pub message: String,
}

/// Where one attempt's Job is.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptState {
    /// Created, no pod Ready yet.
    Starting,
    /// Suspended by Kueue (created suspended, not yet admitted, or evicted).
    Queued,
    /// Some pod is Ready.
    Running,
    /// Failing or being stopped; its pods are not all gone yet.
    Stopping(Option<StopReason>),
    Succeeded {
        at: Option<Time>,
    },
    Failed {
        kind: FailureKind,
        message: String,
    },
}

/// One attempt as the cluster reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptView {
    pub attempt: i32,
    pub state: AttemptState,
    /// When its Job started (unsuspended).
    pub started: Option<Time>,
    /// What keeps its pods from starting, while it is Starting.
    pub trouble: Option<StartTrouble>,
    /// Its pods and its Job's end, as billing reads them.
    pub billed: AttemptSeen,
}

fn condition_true<'a>(job: &'a Job, type_: &str) -> Option<&'a JobCondition> {
    job.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == type_ && c.status == "True")
}

/// What an attempt's Job says, given how many of its pods are not yet terminal and whether a
/// trainer of its pods has exited 0 ([`trainer_exited_well`]).
pub fn attempt_state(job: &Job, live_pods: usize, a_trainer_exited_well: bool) -> AttemptState {
    let stop = job.metadata.annotations.as_ref().and_then(|a| a.get(STOP_REASON_ANNOTATION)).and_then(|s| StopReason::parse(s));
    if let Some(c) = condition_true(job, "Complete") {
        return AttemptState::Succeeded { at: job.status.as_ref().and_then(|s| s.completion_time.clone()).or(c.last_transition_time.clone()) };
    }
    if let Some(c) = condition_true(job, "Failed") {
        if live_pods > 0 {
            return AttemptState::Stopping(stop);
        }
        let message = c.message.clone().unwrap_or_default();
        let kind = match (stop, c.reason.as_deref()) {
            (Some(stop), _) => stop.failure(),
            (None, Some("PodFailurePolicy")) => match matched_rule(&message) {
                Some(rules::DISRUPTION) => FailureKind::Disrupted,
                Some(rules::CONFIGURATION) => FailureKind::Configuration,
                _ => FailureKind::Failed,
            },
            _ => FailureKind::Failed,
        };
        return AttemptState::Failed { kind, message };
    }
    if condition_true(job, "FailureTarget").is_some() || stop.is_some() {
        return AttemptState::Stopping(stop);
    }
    let spec_suspended = job.spec.as_ref().and_then(|s| s.suspend).unwrap_or(false);
    if spec_suspended {
        return AttemptState::Queued;
    }
    let ready = job.status.as_ref().and_then(|s| s.ready).unwrap_or(0);
    // A trainer that exited 0 (its pod stays active and not ready until the kubelet reports it
    // Succeeded), a pod that has finished well (counted, or not yet counted while the Job
    // controller removes its tracking finalizer), or the Job's success criteria met before its
    // Complete condition (which waits for the last pod to terminate): the attempt ran and is
    // ending, not starting. Without this the job read Pending, PodsStarting, between Running and
    // Succeeded.
    let status = job.status.as_ref();
    let uncounted = status.and_then(|s| s.uncounted_terminated_pods.as_ref()?.succeeded.as_ref()).is_some_and(|s| !s.is_empty());
    let finishing = a_trainer_exited_well
        || status.and_then(|s| s.succeeded).unwrap_or(0) > 0
        || uncounted
        || condition_true(job, "SuccessCriteriaMet").is_some();
    if ready > 0 || finishing { AttemptState::Running } else { AttemptState::Starting }
}

/// When a Job completed or failed: the Job controller adds the condition once its pods are gone.
/// Whether a Job has completed or failed.
pub fn ended(job: &Job) -> bool {
    condition_true(job, "Complete").is_some() || condition_true(job, "Failed").is_some()
}

fn ended_at(job: &Job) -> Option<Time> {
    let status = job.status.as_ref()?;
    status.completion_time.clone().or_else(|| condition_true(job, "Failed").or_else(|| condition_true(job, "Complete"))?.last_transition_time.clone())
}

/// The rule index in a Job controller message such as
/// "Container trainer for pod ns/p failed with exit code 78 matching FailJob rule at index 1".
fn matched_rule(message: &str) -> Option<usize> {
    let rest = &message[message.find("rule at index ")? + "rule at index ".len()..];
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// The attempt number of one of `job`'s attempt Jobs, if it is one.
fn attempt_of(child: &Job, job: &ValidJob) -> Option<i32> {
    // by its owner reference, or by the job's uid on its label once that reference was taken
    // away (an orphaning delete, an edit): either way its pods are this job's
    let owned = child.owner_references().iter().any(|o| o.uid == job.uid) || child.labels().get(JOB_UID_LABEL) == Some(&job.uid);
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
        .filter(|p| crate::pods::belongs_to(p, &job.names.namespace, &job.names.job, &job.uid) && p.labels().get(ATTEMPT_LABEL) == Some(&attempt))
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

/// Whether a container of `pod` has terminated with exit code 0.
fn trainer_exited_well(pod: &Pod) -> bool {
    let statuses = pod.status.as_ref().and_then(|s| s.container_statuses.as_ref());
    statuses.into_iter().flatten().any(|c| c.state.as_ref().and_then(|s| s.terminated.as_ref()).is_some_and(|t| t.exit_code == 0))
}

/// The attempts as the lifecycle sees them.
pub fn attempts(jobs: &Store<Job>, pods: &Store<Pod>, job: &ValidJob) -> Vec<AttemptView> {
    attempt_jobs(jobs, job)
        .into_iter()
        .map(|(attempt, j)| {
            // one read of the pod cache per attempt serves both its state and its trouble
            let own = attempt_pods(pods, job, attempt);
            let mut state = attempt_state(&j, live(&own), own.iter().any(|p| trainer_exited_well(p)));
            // the Job says only which rule matched; the trainer's own words say what to fix
            if let AttemptState::Failed { kind: FailureKind::Configuration, message } = &mut state
                && let Some(said) = configuration_message(&own)
            {
                *message = said;
            }
            let trouble = if state == AttemptState::Starting { start_trouble(&own) } else { None };
            let billed = AttemptSeen {
                attempt,
                pods: own.iter().map(|p| bill::seen(p, attempt, &job.spec.resources.gpu_resource_name)).collect(),
                job_ended: ended_at(&j),
            };
            AttemptView { attempt, state, started: j.status.as_ref().and_then(|s| s.start_time.clone()), trouble, billed }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::batch::v1::{JobSpec, JobStatus, UncountedTerminatedPods};
    use kube::api::ObjectMeta;

    use super::*;

    fn job(conditions: &[(&str, Option<&str>, &str)], suspend: bool, ready: i32, stop: Option<&str>) -> Job {
        Job {
            metadata: ObjectMeta { annotations: stop.map(|s| [(STOP_REASON_ANNOTATION.to_string(), s.to_string())].into()), ..Default::default() },
            spec: Some(JobSpec { suspend: Some(suspend), ..Default::default() }),
            status: Some(JobStatus {
                ready: Some(ready),
                conditions: Some(
                    conditions
                        .iter()
                        .map(|(type_, reason, message)| JobCondition {
                            type_: type_.to_string(),
                            status: "True".into(),
                            reason: reason.map(str::to_string),
                            message: Some(message.to_string()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
        }
    }

    const RULE0: &str = "Pod ns/lm-a1-0 has condition DisruptionTarget matching FailJob rule at index 0";
    const RULE1: &str = "Container trainer for pod ns/lm-a1-0 failed with exit code 78 matching FailJob rule at index 1";
    const RULE2: &str = "Container trainer for pod ns/lm-a1-1 failed with exit code 1 matching FailJob rule at index 2";

    #[test]
    fn a_trainer_that_exited_0_has_exited_well() {
        use k8s_openapi::api::core::v1::{ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStatus, PodStatus};
        let pod = |state: ContainerState| Pod {
            status: Some(PodStatus {
                container_statuses: Some(vec![ContainerStatus { state: Some(state), ..Default::default() }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let ended =
            |code| ContainerState { terminated: Some(ContainerStateTerminated { exit_code: code, ..Default::default() }), ..Default::default() };
        assert!(trainer_exited_well(&pod(ended(0))));
        assert!(!trainer_exited_well(&pod(ended(1))));
        assert!(!trainer_exited_well(&pod(ContainerState { running: Some(ContainerStateRunning::default()), ..Default::default() })));
        assert!(!trainer_exited_well(&Pod::default()));
    }

    #[test]
    fn attempt_states_from_jobs() {
        use AttemptState::*;
        let failed = |kind| Failed { kind, message: String::new() };
        let cases: Vec<(&str, Job, usize, AttemptState)> = vec![
            ("new", job(&[], false, 0, None), 0, Starting),
            ("kueue holds it", job(&[], true, 0, None), 0, Queued),
            ("a pod ready", job(&[], false, 1, None), 1, Running),
            ("success criteria met, pod terminating", job(&[("SuccessCriteriaMet", None, "")], false, 0, None), 1, Running),
            (
                "a pod succeeded, the Job not yet complete",
                Job { status: Some(JobStatus { succeeded: Some(1), ..Default::default() }), ..job(&[], false, 0, None) },
                0,
                Running,
            ),
            (
                "a pod succeeded, not yet counted",
                Job {
                    status: Some(JobStatus {
                        uncounted_terminated_pods: Some(UncountedTerminatedPods { succeeded: Some(vec!["uid".into()]), failed: None }),
                        ..Default::default()
                    }),
                    ..job(&[], false, 0, None)
                },
                1,
                Running,
            ),
            ("complete", job(&[("Complete", None, "")], false, 0, None), 0, Succeeded { at: None }),
            ("failing, pods left", job(&[("FailureTarget", Some("PodFailurePolicy"), RULE2)], false, 1, None), 1, Stopping(None)),
            ("failed, pods left", job(&[("Failed", Some("PodFailurePolicy"), RULE2)], false, 0, None), 1, Stopping(None)),
            (
                "stage failed",
                job(&[("Failed", Some("PodFailurePolicy"), RULE2)], false, 0, None),
                0,
                Failed { kind: FailureKind::Failed, message: RULE2.into() },
            ),
            (
                "disrupted",
                job(&[("Failed", Some("PodFailurePolicy"), RULE0)], false, 0, None),
                0,
                Failed { kind: FailureKind::Disrupted, message: RULE0.into() },
            ),
            (
                "config error",
                job(&[("Failed", Some("PodFailurePolicy"), RULE1)], false, 0, None),
                0,
                Failed { kind: FailureKind::Configuration, message: RULE1.into() },
            ),
            ("backoff", job(&[("Failed", Some("BackoffLimitExceeded"), "")], false, 0, None), 0, failed(FailureKind::Failed)),
            ("stopping stalled", job(&[], false, 1, Some("Stalled")), 1, Stopping(Some(StopReason::Stalled))),
            ("stopped stalled", job(&[("Failed", Some("DeadlineExceeded"), "")], false, 0, Some("Stalled")), 0, failed(FailureKind::Stalled)),
            ("stopped for suspend", job(&[("Failed", Some("DeadlineExceeded"), "")], false, 0, Some("Suspended")), 0, failed(FailureKind::Suspended)),
            (
                "stopped at deadline",
                job(&[("Failed", Some("DeadlineExceeded"), "")], false, 0, Some("DeadlineExceeded")),
                0,
                failed(FailureKind::DeadlineExceeded),
            ),
            ("stopping over budget", job(&[], false, 1, Some("BudgetExceeded")), 1, Stopping(Some(StopReason::BudgetExceeded))),
            (
                "stopped over budget",
                job(&[("Failed", Some("DeadlineExceeded"), "")], false, 0, Some("BudgetExceeded")),
                0,
                failed(FailureKind::BudgetExceeded),
            ),
            (
                "stopped before it started",
                job(&[("Failed", Some("DeadlineExceeded"), "")], false, 0, Some("StartupTimeout")),
                0,
                failed(FailureKind::StartupTimeout),
            ),
        ];
        for (name, job, live, want) in cases {
            assert_eq!(attempt_state(&job, live, false), want, "{name}");
        }
    }

    #[test]
    fn the_matched_rule_is_read_from_the_message() {
        assert_eq!(matched_rule(RULE0), Some(0));
        assert_eq!(matched_rule(RULE2), Some(2));
        assert_eq!(matched_rule("Job has reached the specified backoff limit"), None);
    }

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
