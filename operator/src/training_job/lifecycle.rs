//! The run policy as pure functions: what an attempt's Job says happened ([`attempt_state`]), and
//! what to do next ([`decide`]): start the next attempt, stop the current one, or finish.
//!
//! Attempts are counted from the children (each attempt is a Job labelled with its number), so an
//! operator restart neither loses nor doubles one. The table in `docs/operator.md` is
//! `decide_table` in the tests below.

use std::time::Duration;

use frugal_api::v1alpha1::Phase;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::conditions::reasons;
use crate::names::{MAX_ATTEMPT, STOP_REASON_ANNOTATION};

/// Exit code with which the trainer says its configuration can never work (sysexits' EX_CONFIG);
/// such a failure is permanent and not retried.
pub const CONFIGURATION_ERROR_EXIT_CODE: i32 = 78;

/// Indices of the child Job's pod failure policy rules (see `build::job`); the Job controller
/// names the matching rule's index in its Failed condition's message.
pub mod rules {
    pub const DISRUPTION: usize = 0;
    pub const CONFIGURATION: usize = 1;
    pub const FAILURE: usize = 2;
}

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
    /// The operator stopped it: the job spent its own spec.budget.maxGpuHours or maxCost.
    /// Permanent.
    BudgetExceeded,
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
    StartupTimeout,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stalled => "Stalled",
            Self::DeadlineExceeded => "DeadlineExceeded",
            Self::Suspended => "Suspended",
            Self::BudgetExceeded => "BudgetExceeded",
            Self::StartupTimeout => "StartupTimeout",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        [Self::Stalled, Self::DeadlineExceeded, Self::Suspended, Self::BudgetExceeded, Self::StartupTimeout].into_iter().find(|r| r.as_str() == s)
    }
    fn failure(self) -> FailureKind {
        match self {
            Self::Stalled => FailureKind::Stalled,
            Self::DeadlineExceeded => FailureKind::DeadlineExceeded,
            Self::Suspended => FailureKind::Suspended,
            Self::BudgetExceeded => FailureKind::BudgetExceeded,
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
}

fn condition_true<'a>(job: &'a Job, type_: &str) -> Option<&'a k8s_openapi::api::batch::v1::JobCondition> {
    job.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == type_ && c.status == "True")
}

/// What an attempt's Job says, given how many of its pods are not yet terminal.
pub fn attempt_state(job: &Job, live_pods: usize) -> AttemptState {
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
    if ready > 0 { AttemptState::Running } else { AttemptState::Starting }
}

/// The rule index in a Job controller message such as
/// "Container trainer for pod ns/p failed with exit code 78 matching FailJob rule at index 1".
fn matched_rule(message: &str) -> Option<usize> {
    let rest = &message[message.find("rule at index ")? + "rule at index ".len()..];
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// The job's own spending limits (spec.budget.maxGpuHours, maxCost) and what its status says it
/// has spent (status.cost, which the trainer reports every few seconds while it runs).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Spending {
    pub gpu_hours: f64,
    pub cost: f64,
    pub max_gpu_hours: Option<f64>,
    pub max_cost: Option<f64>,
    /// GPUs a running attempt holds, and what a GPU-hour costs: how fast it spends.
    pub gpus: f64,
    pub price_per_gpu_hour: f64,
}

/// The trainer reports its spending every few seconds; looking sooner than this again finds
/// nothing new.
const SPENDING_REPORT_SECONDS: f64 = 5.0;

impl Spending {
    /// The limit the job has spent, as a sentence naming the field, if any. A job that has spent
    /// nothing (a CPU job, or one not started) has spent no limit, even a limit of 0.
    pub fn exceeded(&self) -> Option<String> {
        if let Some(max) = self.max_gpu_hours.filter(|m| self.gpu_hours > 0.0 && self.gpu_hours >= *m) {
            return Some(format!("the job has spent {:.3} GPU-hours, its spec.budget.maxGpuHours is {max}", self.gpu_hours));
        }
        if let Some(max) = self.max_cost.filter(|m| self.cost > 0.0 && self.cost >= *m) {
            return Some(format!("the job has spent {:.2}, its spec.budget.maxCost is {max}", self.cost));
        }
        None
    }

    /// Seconds until a running attempt would spend the first of the limits, at its GPUs' rate
    /// from the last report; `None` without a limit or GPUs.
    fn seconds_left(&self) -> Option<f64> {
        if self.gpus <= 0.0 {
            return None;
        }
        let per_second = self.gpus / 3600.0;
        let hours = self.max_gpu_hours.map(|m| (m - self.gpu_hours) / per_second);
        let cost = self.max_cost.filter(|_| self.price_per_gpu_hour > 0.0).map(|m| (m - self.cost) / (per_second * self.price_per_gpu_hour));
        [hours, cost].into_iter().flatten().reduce(f64::min).map(|s| s.max(SPENDING_REPORT_SECONDS))
    }
}

/// Everything [`decide`] looks at.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    /// The job's attempts, oldest first.
    pub attempts: &'a [AttemptView],
    pub suspend: bool,
    pub backoff_limit: i32,
    pub active_deadline: Option<Duration>,
    pub progress_deadline: Duration,
    /// How long an attempt's pods may take to start.
    pub startup_deadline: Duration,
    /// When the job first started (status.startTime, or the first attempt's start).
    pub start_time: Option<Time>,
    /// The trainer's last progress report.
    pub last_progress: Option<Time>,
    pub spending: Spending,
    pub now: Time,
}

/// What the operator does this pass.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Nothing,
    /// Create attempt N's Job (its predecessor's pods are gone).
    Create(i32),
    /// Stop a started attempt: its pods get SIGTERM and write a checkpoint.
    Stop(i32, StopReason),
    /// Delete an attempt that never started (queued when the job was suspended).
    Delete(i32),
}

/// The decision: an action and what the status says about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub action: Action,
    pub phase: Phase,
    pub reason: &'static str,
    pub message: String,
    /// The watchdog found the attempt stalled (status condition Stalled).
    pub stalled: bool,
    /// The current attempt number; 0 before the first.
    pub attempt: i32,
    /// Failed attempts counted against backoffLimit.
    pub restarts: i32,
    /// When the job succeeded (its Job's completion time).
    pub succeeded_at: Option<Time>,
    /// When to look again even if nothing changes (a deadline or the watchdog).
    pub requeue_after: Option<Duration>,
}

fn secs(t: &Time) -> i64 {
    t.0.as_second()
}

/// Decides the next step of the run policy.
pub fn decide(i: &Inputs) -> Decision {
    let restarts =
        i.attempts.iter().filter(|a| matches!(&a.state, AttemptState::Failed { kind, .. } if kind.counts_against_backoff())).count() as i32;
    let current = i.attempts.last();
    let attempt = current.map_or(0, |a| a.attempt);
    let mut d = Decision {
        action: Action::Nothing,
        phase: Phase::Pending,
        reason: reasons::CREATING,
        message: String::new(),
        stalled: false,
        attempt,
        restarts,
        succeeded_at: None,
        requeue_after: None,
    };
    let now = secs(&i.now);
    let deadline_at = i.active_deadline.zip(i.start_time.as_ref()).map(|(limit, start)| secs(start) + limit.as_secs() as i64);
    let past_deadline = deadline_at.is_some_and(|at| now >= at);
    let limit = i.backoff_limit;
    let spent = i.spending.exceeded();

    let Some(current) = current else {
        if i.suspend {
            d.phase = Phase::Suspended;
            d.reason = reasons::SUSPENDED;
            d.message = "runPolicy.suspend is true: no pods run until it is false".into();
        } else {
            d.action = Action::Create(1);
            d.message = "creating the first attempt's pods".into();
        }
        return d;
    };
    let next = current.attempt + 1;
    match &current.state {
        AttemptState::Succeeded { at } => {
            d.phase = Phase::Succeeded;
            d.reason = reasons::SUCCEEDED;
            d.message = format!("attempt {} completed", current.attempt);
            d.succeeded_at = at.clone();
        }
        AttemptState::Failed { kind, message } => {
            let why = match kind {
                // the Job's own message would only say its deadline passed
                FailureKind::StartupTimeout => {
                    format!(": its pods did not start within runPolicy.startupDeadlineSeconds ({}s)", i.startup_deadline.as_secs())
                }
                _ if message.is_empty() => String::new(),
                _ => format!(": {message}"),
            };
            match kind {
                FailureKind::Configuration => {
                    d.phase = Phase::Failed;
                    d.reason = reasons::CONFIGURATION_ERROR;
                    d.message = format!("attempt {} failed with a configuration error the trainer reports as permanent{why}", current.attempt);
                }
                FailureKind::DeadlineExceeded => {
                    d.phase = Phase::Failed;
                    d.reason = reasons::DEADLINE_EXCEEDED;
                    d.message = format!(
                        "runPolicy.activeDeadlineSeconds ({}s) passed; attempt {} was stopped",
                        i.active_deadline.map_or(0, |d| d.as_secs()),
                        current.attempt
                    );
                }
                FailureKind::BudgetExceeded => {
                    d.phase = Phase::Failed;
                    d.reason = reasons::BUDGET_EXCEEDED;
                    let why = spent.clone().unwrap_or_else(|| "the job spent a limit of spec.budget".into());
                    d.message = format!("{why}; attempt {} was stopped and wrote a checkpoint", current.attempt);
                }
                _ if past_deadline => {
                    d.phase = Phase::Failed;
                    d.reason = reasons::DEADLINE_EXCEEDED;
                    d.message = format!("runPolicy.activeDeadlineSeconds ({}s) passed", i.active_deadline.map_or(0, |d| d.as_secs()));
                }
                _ if spent.is_some() => {
                    d.phase = Phase::Failed;
                    d.reason = reasons::BUDGET_EXCEEDED;
                    d.message = format!("{}: no further attempt starts", spent.clone().unwrap_or_default());
                }
                _ if restarts > limit => {
                    d.phase = Phase::Failed;
                    d.reason = reasons::BACKOFF_LIMIT_EXCEEDED;
                    d.message = format!("{restarts} failed attempts exceed runPolicy.backoffLimit {limit}; the last{why}");
                }
                _ if next > MAX_ATTEMPT => {
                    d.phase = Phase::Failed;
                    d.reason = reasons::BACKOFF_LIMIT_EXCEEDED;
                    d.message = format!("{} attempts, the most a job may make (disruptions included){why}", current.attempt);
                }
                _ if i.suspend => {
                    d.phase = Phase::Suspended;
                    d.reason = reasons::SUSPENDED;
                    d.message = format!("suspended after attempt {}; resuming starts attempt {next} from the latest checkpoint", current.attempt);
                }
                kind => {
                    d.action = Action::Create(next);
                    d.reason = if *kind == FailureKind::Suspended { reasons::CREATING } else { reasons::RESTARTING };
                    d.message = match kind {
                        FailureKind::Suspended => format!("resumed: starting attempt {next} from the latest checkpoint"),
                        FailureKind::Disrupted => {
                            format!("attempt {} was disrupted (not counted against backoffLimit){why}; starting attempt {next}", current.attempt)
                        }
                        FailureKind::StartupTimeout => {
                            format!("attempt {} did not start ({restarts} of {limit} retries used){why}; starting attempt {next}", current.attempt)
                        }
                        _ => format!("attempt {} failed ({restarts} of {limit} retries used){why}; starting attempt {next}", current.attempt),
                    };
                    d.attempt = next;
                }
            }
        }
        AttemptState::Stopping(reason) => {
            d.message = format!("attempt {}: waiting for its pods to stop", current.attempt);
            match reason {
                Some(StopReason::Suspended) => {
                    d.phase = Phase::Suspended;
                    d.reason = reasons::SUSPENDING;
                }
                Some(StopReason::Stalled) => {
                    d.reason = reasons::STALLED;
                    d.stalled = true;
                    d.message = format!(
                        "attempt {} made no progress within runPolicy.progressDeadlineSeconds ({}s); stopping it to start the next",
                        current.attempt,
                        i.progress_deadline.as_secs()
                    );
                }
                Some(StopReason::DeadlineExceeded) => {
                    d.phase = Phase::Running;
                    d.reason = reasons::DEADLINE_EXCEEDED;
                    d.message = format!("runPolicy.activeDeadlineSeconds passed; stopping attempt {}", current.attempt);
                }
                Some(StopReason::BudgetExceeded) => {
                    d.phase = Phase::Running;
                    d.reason = reasons::BUDGET_EXCEEDED;
                    d.message = format!(
                        "{}; stopping attempt {}",
                        spent.clone().unwrap_or_else(|| "a limit of spec.budget is spent".into()),
                        current.attempt
                    );
                }
                Some(StopReason::StartupTimeout) => {
                    d.reason = reasons::STARTUP_TIMEOUT;
                    d.message = format!(
                        "attempt {}: its pods did not start within runPolicy.startupDeadlineSeconds ({}s); stopping it",
                        current.attempt,
                        i.startup_deadline.as_secs()
                    );
                }
                None => d.reason = reasons::WAITING_FOR_PODS,
            }
        }
        AttemptState::Queued | AttemptState::Starting | AttemptState::Running => {
            let started = current.started.as_ref().map(secs);
            if i.suspend {
                if started.is_some() {
                    d.action = Action::Stop(current.attempt, StopReason::Suspended);
                } else {
                    d.action = Action::Delete(current.attempt);
                }
                d.phase = Phase::Suspended;
                d.reason = reasons::SUSPENDING;
                d.message = format!("runPolicy.suspend is true: stopping attempt {}; its pods write a checkpoint", current.attempt);
                return d;
            }
            if past_deadline && started.is_some() {
                d.action = Action::Stop(current.attempt, StopReason::DeadlineExceeded);
                d.phase = Phase::Running;
                d.reason = reasons::DEADLINE_EXCEEDED;
                d.message = format!("runPolicy.activeDeadlineSeconds passed; stopping attempt {}", current.attempt);
                return d;
            }
            if let Some(why) = spent {
                // its pods write a checkpoint; one that never started is simply removed
                (d.action, d.phase) = match started {
                    Some(_) => (Action::Stop(current.attempt, StopReason::BudgetExceeded), Phase::Running),
                    None => (Action::Delete(current.attempt), Phase::Pending),
                };
                d.reason = reasons::BUDGET_EXCEEDED;
                d.message = format!("{why}; stopping attempt {}", current.attempt);
                return d;
            }
            let mut wake = deadline_at.map(|at| at - now);
            match current.state {
                AttemptState::Queued => {
                    d.phase = Phase::Queued;
                    d.reason = reasons::QUEUED;
                    d.message = format!("attempt {} waits for its queue to admit it", current.attempt);
                }
                AttemptState::Starting => {
                    d.reason = reasons::PODS_STARTING;
                    d.message = format!("attempt {}: waiting for its pods to start", current.attempt);
                    if let Some(trouble) = &current.trouble {
                        d.reason = trouble.reason;
                        d.message = format!("attempt {}: {}", current.attempt, trouble.message);
                    }
                    // an attempt that cannot start gives its GPUs back after the startup deadline
                    if let Some(started) = started {
                        let give_up = started + i.startup_deadline.as_secs() as i64;
                        if now >= give_up {
                            d.action = Action::Stop(current.attempt, StopReason::StartupTimeout);
                            d.reason = reasons::STARTUP_TIMEOUT;
                            let why = current.trouble.as_ref().map_or(String::new(), |t| format!(" ({})", t.message));
                            d.message = format!(
                                "attempt {}: its pods did not start within runPolicy.startupDeadlineSeconds ({}s){why}; stopping it",
                                current.attempt,
                                i.startup_deadline.as_secs()
                            );
                            return d;
                        }
                        wake = Some(wake.map_or(give_up - now, |w| w.min(give_up - now)));
                    }
                }
                _ => {
                    d.phase = Phase::Running;
                    d.reason = reasons::RUNNING;
                    d.message = format!("attempt {} is running", current.attempt);
                    // the watchdog: progress since the later of the last report and this start
                    let since = [started, i.last_progress.as_ref().map(secs)].into_iter().flatten().max();
                    if let Some(since) = since {
                        let stall_at = since + i.progress_deadline.as_secs() as i64;
                        if now >= stall_at {
                            d.action = Action::Stop(current.attempt, StopReason::Stalled);
                            d.phase = Phase::Pending;
                            d.reason = reasons::STALLED;
                            d.stalled = true;
                            d.message = format!(
                                "attempt {} made no progress within runPolicy.progressDeadlineSeconds ({}s); stopping it to start the next",
                                current.attempt,
                                i.progress_deadline.as_secs()
                            );
                            return d;
                        }
                        wake = Some(wake.map_or(stall_at - now, |w| w.min(stall_at - now)));
                    }
                    // status writes do not wake the controller: look again when the job's own
                    // limit would be spent at the rate it spends
                    if let Some(left) = i.spending.seconds_left() {
                        let left = left.ceil() as i64;
                        wake = Some(wake.map_or(left, |w| w.min(left)));
                    }
                }
            }
            d.requeue_after = wake.map(|s| Duration::from_secs(s.max(1) as u64));
        }
    }
    d
}

#[cfg(test)]
mod tests;
