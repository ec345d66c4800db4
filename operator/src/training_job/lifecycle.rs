//! The run policy as a pure function: given the attempts as `observe` reports them, what to do
//! next ([`decide`]): start the next attempt, stop the current one, or finish. `decide` looks at
//! where the current attempt is and hands the pass to the function for that state.
//!
//! Attempts are counted from the children (each attempt is a Job labelled with its number), so an
//! operator restart neither loses nor doubles one. The table in `docs/operator.md` is
//! `decide_table` in the tests below.

use std::time::Duration;

use frugal_api::v1alpha1::Phase;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::observe::{AttemptState, AttemptView, FailureKind, StopReason};
use crate::conditions::reasons;
use crate::names::MAX_ATTEMPT;

/// The job's own spending limits (spec.budget.maxGpuHours, maxCost) and what its status says it
/// has been billed (status.cost, which the operator bills from its pods).
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

/// A pass bills the job's pods when it runs; looking sooner than this again finds
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
    /// from this pass's bill; `None` without a limit or GPUs.
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

impl Action {
    /// The attempt whose Job this action creates, if it creates one.
    pub fn starts(&self) -> Option<i32> {
        match self {
            Action::Create(attempt) => Some(*attempt),
            _ => None,
        }
    }
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

/// Where the job stands this pass: the inputs, and what every state's decision works out from
/// them (the time, the active deadline, a spent limit), worked out once.
struct Situation<'a> {
    inputs: &'a Inputs<'a>,
    /// `inputs.now` in seconds.
    now: i64,
    /// When runPolicy.activeDeadlineSeconds runs out, if it is set and the job has started.
    deadline_at: Option<i64>,
    past_deadline: bool,
    /// The job's own limit it has spent, as a sentence naming the field.
    spent: Option<String>,
}

impl Situation<'_> {
    /// Why attempt `attempt` is stopped for making no progress.
    fn stalled(&self, attempt: i32) -> String {
        let secs = self.inputs.progress_deadline.as_secs();
        format!("attempt {attempt} made no progress within runPolicy.progressDeadlineSeconds ({secs}s); stopping it to start the next")
    }

    /// Why attempt `attempt` is stopped before its pods started; `trouble` says what kept them,
    /// as ` (...)`, if known.
    fn not_started(&self, attempt: i32, trouble: &str) -> String {
        let secs = self.inputs.startup_deadline.as_secs();
        format!("attempt {attempt}: its pods did not start within runPolicy.startupDeadlineSeconds ({secs}s){trouble}; stopping it")
    }
}

/// Decides the next step of the run policy, by where the current attempt is.
pub fn decide(i: &Inputs) -> Decision {
    let restarts =
        i.attempts.iter().filter(|a| matches!(&a.state, AttemptState::Failed { kind, .. } if kind.counts_against_backoff())).count() as i32;
    let current = i.attempts.last();
    let d = Decision {
        action: Action::Nothing,
        phase: Phase::Pending,
        reason: reasons::CREATING,
        message: String::new(),
        stalled: false,
        attempt: current.map_or(0, |a| a.attempt),
        restarts,
        succeeded_at: None,
        requeue_after: None,
    };
    let now = secs(&i.now);
    let deadline_at = i.active_deadline.zip(i.start_time.as_ref()).map(|(limit, start)| secs(start) + limit.as_secs() as i64);
    let s = Situation { inputs: i, now, deadline_at, past_deadline: deadline_at.is_some_and(|at| now >= at), spent: i.spending.exceeded() };
    let Some(current) = current else {
        return no_attempt(&s, d);
    };
    match &current.state {
        AttemptState::Succeeded { at } => succeeded(d, current, at),
        AttemptState::Failed { kind, message } => ended(&s, d, current, *kind, message),
        AttemptState::Stopping(reason) => stopping(&s, d, current, *reason),
        AttemptState::Queued | AttemptState::Starting | AttemptState::Running => live(&s, d, current),
    }
}

/// No attempt yet: the first starts, unless the job is suspended.
fn no_attempt(s: &Situation, mut d: Decision) -> Decision {
    if s.inputs.suspend {
        d.phase = Phase::Suspended;
        d.reason = reasons::SUSPENDED;
        d.message = "runPolicy.suspend is true: no pods run until it is false".into();
    } else {
        d.action = Action::Create(1);
        d.message = "creating the first attempt's pods".into();
    }
    d
}

/// The current attempt completed: so has the job.
fn succeeded(mut d: Decision, current: &AttemptView, at: &Option<Time>) -> Decision {
    d.phase = Phase::Succeeded;
    d.reason = reasons::SUCCEEDED;
    d.message = format!("attempt {} completed", current.attempt);
    d.succeeded_at = at.clone();
    d
}

/// The current attempt ended without success: the job fails, stays suspended, or starts the next
/// attempt.
fn ended(s: &Situation, mut d: Decision, current: &AttemptView, kind: FailureKind, message: &str) -> Decision {
    let why = match kind {
        // the Job's own message would only say its deadline passed
        FailureKind::StartupTimeout => {
            format!(": its pods did not start within runPolicy.startupDeadlineSeconds ({}s)", s.inputs.startup_deadline.as_secs())
        }
        _ if message.is_empty() => String::new(),
        _ => format!(": {message}"),
    };
    let next = current.attempt + 1;
    if let Some((reason, message)) = final_failure(s, &d, current, kind, &why) {
        d.phase = Phase::Failed;
        d.reason = reason;
        d.message = message;
    } else if let Some(spent) = &s.spent {
        // the job waits for its own limit to be raised, and then resumes from its checkpoint
        d.phase = Phase::Queued;
        d.reason = reasons::BUDGET_EXHAUSTED;
        d.message = format!(
            "{spent}: attempt {} was stopped and wrote a checkpoint; the job waits, Queued, and resumes from it with attempt {next} once the limit is raised or removed",
            current.attempt
        );
    } else if s.inputs.suspend {
        d.phase = Phase::Suspended;
        d.reason = reasons::SUSPENDED;
        d.message = format!("suspended after attempt {}; resuming starts attempt {next} from the latest checkpoint", current.attempt);
    } else {
        d = retry(s, d, current, kind, &why);
    }
    d
}

/// Why an ended attempt is the job's last, if it is: a permanent failure, the job's deadline or
/// own limit, or no retries left. `why` is what the attempt's Job said, as `": ..."`.
fn final_failure(s: &Situation, d: &Decision, current: &AttemptView, kind: FailureKind, why: &str) -> Option<(&'static str, String)> {
    let (limit, restarts, attempt) = (s.inputs.backoff_limit, d.restarts, current.attempt);
    let deadline_secs = s.inputs.active_deadline.map_or(0, |d| d.as_secs());
    Some(match kind {
        FailureKind::Configuration => {
            (reasons::CONFIGURATION_ERROR, format!("attempt {attempt} failed with a configuration error the trainer reports as permanent{why}"))
        }
        FailureKind::DeadlineExceeded => {
            (reasons::DEADLINE_EXCEEDED, format!("runPolicy.activeDeadlineSeconds ({deadline_secs}s) passed; attempt {attempt} was stopped"))
        }
        _ if s.past_deadline => (reasons::DEADLINE_EXCEEDED, format!("runPolicy.activeDeadlineSeconds ({deadline_secs}s) passed")),
        _ if restarts > limit => {
            (reasons::BACKOFF_LIMIT_EXCEEDED, format!("{restarts} failed attempts exceed runPolicy.backoffLimit {limit}; the last{why}"))
        }
        _ if attempt + 1 > MAX_ATTEMPT => {
            (reasons::BACKOFF_LIMIT_EXCEEDED, format!("{attempt} attempts, the most a job may make (disruptions included){why}"))
        }
        _ => return None,
    })
}

/// The next attempt starts after one that ended and may be retried (or was suspended, and the
/// job is resumed).
fn retry(s: &Situation, mut d: Decision, current: &AttemptView, kind: FailureKind, why: &str) -> Decision {
    let (limit, restarts, attempt) = (s.inputs.backoff_limit, d.restarts, current.attempt);
    let next = attempt + 1;
    d.action = Action::Create(next);
    d.reason = match kind {
        FailureKind::Suspended | FailureKind::BudgetExceeded | FailureKind::BudgetExhausted => reasons::CREATING,
        _ => reasons::RESTARTING,
    };
    d.message = match kind {
        FailureKind::Suspended => format!("resumed: starting attempt {next} from the latest checkpoint"),
        FailureKind::BudgetExceeded | FailureKind::BudgetExhausted => {
            format!("the budget allows the job again: starting attempt {next} from the latest checkpoint")
        }
        FailureKind::Disrupted => format!("attempt {attempt} was disrupted (not counted against backoffLimit){why}; starting attempt {next}"),
        FailureKind::StartupTimeout => format!("attempt {attempt} did not start ({restarts} of {limit} retries used){why}; starting attempt {next}"),
        _ => format!("attempt {attempt} failed ({restarts} of {limit} retries used){why}; starting attempt {next}"),
    };
    d.attempt = next;
    d
}

/// The current attempt is being stopped (by the operator, for `reason`, or by its Job's failure):
/// wait for its pods to go.
fn stopping(s: &Situation, mut d: Decision, current: &AttemptView, reason: Option<StopReason>) -> Decision {
    d.message = format!("attempt {}: waiting for its pods to stop", current.attempt);
    match reason {
        Some(StopReason::Suspended) => {
            d.phase = Phase::Suspended;
            d.reason = reasons::SUSPENDING;
        }
        Some(StopReason::Stalled) => {
            d.reason = reasons::STALLED;
            d.stalled = true;
            d.message = s.stalled(current.attempt);
        }
        Some(StopReason::DeadlineExceeded) => {
            d.phase = Phase::Running;
            d.reason = reasons::DEADLINE_EXCEEDED;
            d.message = format!("runPolicy.activeDeadlineSeconds passed; stopping attempt {}", current.attempt);
        }
        Some(StopReason::BudgetExceeded) => {
            d.phase = Phase::Running;
            d.reason = reasons::BUDGET_EXHAUSTED;
            d.message = format!(
                "{}; stopping attempt {}: its pods write a checkpoint",
                s.spent.clone().unwrap_or_else(|| "a limit of spec.budget is spent".into()),
                current.attempt
            );
        }
        Some(StopReason::BudgetExhausted) => {
            d.phase = Phase::Running;
            d.reason = reasons::BUDGET_EXHAUSTED;
            d.message =
                format!("its TrainingBudget has spent this period's limit; stopping attempt {}: its pods write a checkpoint", current.attempt);
        }
        Some(StopReason::StartupTimeout) => {
            d.reason = reasons::STARTUP_TIMEOUT;
            d.message = s.not_started(current.attempt, "");
        }
        None => d.reason = reasons::WAITING_FOR_PODS,
    }
    d
}

/// The current attempt is live (queued, starting or running): it is stopped when the job is
/// suspended, past its deadline or over its own limit; otherwise its state decides.
fn live(s: &Situation, mut d: Decision, current: &AttemptView) -> Decision {
    let started = current.started.as_ref().map(secs);
    if s.inputs.suspend {
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
    if s.past_deadline && started.is_some() {
        d.action = Action::Stop(current.attempt, StopReason::DeadlineExceeded);
        d.phase = Phase::Running;
        d.reason = reasons::DEADLINE_EXCEEDED;
        d.message = format!("runPolicy.activeDeadlineSeconds passed; stopping attempt {}", current.attempt);
        return d;
    }
    if let Some(why) = &s.spent {
        // its pods write a checkpoint; one that never started is simply removed
        (d.action, d.phase) = match started {
            Some(_) => (Action::Stop(current.attempt, StopReason::BudgetExceeded), Phase::Running),
            None => (Action::Delete(current.attempt), Phase::Pending),
        };
        d.reason = reasons::BUDGET_EXHAUSTED;
        d.message = format!("{why}; stopping attempt {}: its pods write a checkpoint", current.attempt);
        return d;
    }
    // seconds until the job's deadline, which each state may bring forward
    let wake = s.deadline_at.map(|at| at - s.now);
    match current.state {
        AttemptState::Queued => queued(d, current, wake),
        AttemptState::Starting => starting(s, d, current, started, wake),
        _ => running(s, d, current, started, wake),
    }
}

/// The decision when the job's TrainingBudget has spent this period's limit (`why` says so) while
/// an attempt is live: that attempt stops (its pods write a checkpoint), or, never started, is
/// removed. `None` when no attempt is live or the decision already stops it.
pub fn stop_for_budget(d: &Decision, attempts: &[AttemptView], why: &str) -> Option<Decision> {
    let current = attempts.last()?;
    if !matches!(current.state, AttemptState::Queued | AttemptState::Starting | AttemptState::Running) || d.action != Action::Nothing {
        return None;
    }
    let action = match current.started {
        Some(_) => Action::Stop(current.attempt, StopReason::BudgetExhausted),
        None => Action::Delete(current.attempt),
    };
    Some(Decision {
        action,
        phase: Phase::Running,
        reason: reasons::BUDGET_EXHAUSTED,
        message: format!("{why}; stopping attempt {}: its pods write a checkpoint", current.attempt),
        stalled: false,
        requeue_after: None,
        ..d.clone()
    })
}

/// Whichever of `wake` and `at` (seconds from now) comes first.
fn sooner(wake: Option<i64>, at: i64) -> Option<i64> {
    Some(wake.map_or(at, |w| w.min(at)))
}

fn requeue(wake: Option<i64>) -> Option<Duration> {
    wake.map(|s| Duration::from_secs(s.max(1) as u64))
}

/// Kueue holds the attempt: nothing to do until it admits it.
fn queued(mut d: Decision, current: &AttemptView, wake: Option<i64>) -> Decision {
    d.phase = Phase::Queued;
    d.reason = reasons::QUEUED;
    d.message = format!("attempt {} waits for its queue to admit it", current.attempt);
    d.requeue_after = requeue(wake);
    d
}

/// The attempt's pods are not all ready yet: say what keeps them, and stop the attempt once the
/// startup deadline passes so that it gives its GPUs back.
fn starting(s: &Situation, mut d: Decision, current: &AttemptView, started: Option<i64>, mut wake: Option<i64>) -> Decision {
    d.reason = reasons::PODS_STARTING;
    d.message = format!("attempt {}: waiting for its pods to start", current.attempt);
    if let Some(trouble) = &current.trouble {
        d.reason = trouble.reason;
        d.message = format!("attempt {}: {}", current.attempt, trouble.message);
    }
    if let Some(started) = started {
        let give_up = started + s.inputs.startup_deadline.as_secs() as i64;
        if s.now >= give_up {
            d.action = Action::Stop(current.attempt, StopReason::StartupTimeout);
            d.reason = reasons::STARTUP_TIMEOUT;
            let why = current.trouble.as_ref().map_or(String::new(), |t| format!(" ({})", t.message));
            d.message = s.not_started(current.attempt, &why);
            return d;
        }
        wake = sooner(wake, give_up - s.now);
    }
    d.requeue_after = requeue(wake);
    d
}

/// The attempt runs: the watchdog stops it when it makes no progress, and the pass looks again
/// when it would stall or spend the job's own limit.
fn running(s: &Situation, mut d: Decision, current: &AttemptView, started: Option<i64>, mut wake: Option<i64>) -> Decision {
    d.phase = Phase::Running;
    d.reason = reasons::RUNNING;
    d.message = format!("attempt {} is running", current.attempt);
    // progress since the later of the last report and this start
    let since = [started, s.inputs.last_progress.as_ref().map(secs)].into_iter().flatten().max();
    if let Some(since) = since {
        let stall_at = since + s.inputs.progress_deadline.as_secs() as i64;
        if s.now >= stall_at {
            d.action = Action::Stop(current.attempt, StopReason::Stalled);
            d.phase = Phase::Pending;
            d.reason = reasons::STALLED;
            d.stalled = true;
            d.message = s.stalled(current.attempt);
            return d;
        }
        wake = sooner(wake, stall_at - s.now);
    }
    // status writes do not wake the controller: look again when the job's own limit would be
    // spent at the rate it spends
    if let Some(left) = s.inputs.spending.seconds_left() {
        wake = sooner(wake, left.ceil() as i64);
    }
    d.requeue_after = requeue(wake);
    d
}

#[cfg(test)]
mod tests;
