//! The admission check's decisions, pure: which budget binds a Workload, what it asks of the
//! budget's ledger, what the check says from the ledger's answer, and what its pods spent. The
//! ledger's own arithmetic (GPUs against spec.maxGpus, the period's spend, look-ahead) is
//! `training_budget::budget`'s, the same a TrainingJob is admitted with.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use frugal_api::TrainingBudget;
use frugal_api::admission::budget::{Spent, TooSmall, amount, exhausted, this_period, until_next_period};

use super::kueue::{AdmissionCheckState, Workload};
use crate::training_budget::budget::Demand;
use crate::training_budget::ledger::Admission;
use crate::training_job::bill::PodSeen;

/// The label that names a Workload's budget, on the Workload (Kueue copies the job's labels to
/// it) or on its LocalQueue.
pub const BUDGET_LABEL: &str = "frugal.dev/budget";

/// Where a Workload's budget came from, strongest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoundBy {
    /// The namespace's default budget (spec.namespaceDefault): it binds every Workload there,
    /// whatever a label says.
    NamespaceDefault,
    /// The `frugal.dev/budget` label of the Workload's LocalQueue.
    LocalQueue,
    /// The `frugal.dev/budget` label of the Workload (its job's).
    Workload,
}

/// The budget that binds a Workload: its namespace's default, else its LocalQueue's label, else
/// its own label. A budget is always one of the Workload's own namespace, so a label can only
/// choose among the budgets of the namespace it is in; and where the namespace has a default
/// budget (which only admins may make), no label can move a Workload out of it.
pub fn binding(namespace_default: Option<String>, local_queue: Option<String>, workload: Option<String>) -> Option<(String, BoundBy)> {
    namespace_default
        .map(|b| (b, BoundBy::NamespaceDefault))
        .or_else(|| local_queue.map(|b| (b, BoundBy::LocalQueue)))
        .or_else(|| workload.map(|b| (b, BoundBy::Workload)))
}

/// Where a Workload stands in Kueue's life cycle, as far as its budget cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Kueue reserved its quota and waits for this check (state Pending).
    Deciding,
    /// Admitted, or told Ready with Kueue not yet done admitting it: its pods may run.
    Admitted,
    /// It finished.
    Finished,
    /// Queued, evicted or deactivated: nothing runs for it unless pods are still stopping.
    Waiting,
}

pub fn stage(w: &Workload, check: &str) -> Stage {
    if w.is("Finished") {
        Stage::Finished
    } else if w.is("Admitted") || (w.is("QuotaReserved") && w.check(check).is_some_and(|c| c.state == "Ready")) {
        // between this check's Ready and Kueue's Admitted, its entry must stay
        Stage::Admitted
    } else if w.is("QuotaReserved") && w.check(check).is_some_and(|c| c.state == "Pending") {
        Stage::Deciding
    } else {
        Stage::Waiting
    }
}

/// GPUs a Workload asks for: each pod set's count times its containers' requests (or limits)
/// of `resource`.
pub fn gpus(w: &Workload, resource: &str) -> i32 {
    w.spec
        .pod_sets
        .iter()
        .map(|set| set.count.max(0).saturating_mul(crate::training_job::bill::spec_gpus(set.template.spec.as_ref(), resource)))
        .fold(0i32, i32::saturating_add)
}

/// GPU-hours a Workload may spend if it runs its maximum execution time (Kueue's
/// spec.maximumExecutionTimeSeconds); none when it sets no maximum.
pub fn look_ahead_gpu_hours(gpus: i32, max_execution_seconds: Option<i64>) -> f64 {
    max_execution_seconds.map_or(0.0, |s| f64::from(gpus) * s.max(0) as f64 / 3600.0)
}

/// What a Workload asks of its budget's ledger this pass; `held`: its entry is in the ledger,
/// `pods_hold`: pods of it still hold their GPUs. None: nothing to write.
pub fn demand(stage: Stage, held: bool, pods_hold: bool) -> Option<Demand> {
    match stage {
        Stage::Deciding => Some(Demand::Start),
        Stage::Admitted => Some(Demand::Hold),
        // stopping pods are billed to the end; then the entry goes with what they spent
        Stage::Finished | Stage::Waiting if held && pods_hold => Some(Demand::Hold),
        Stage::Finished | Stage::Waiting if held => Some(Demand::Release),
        Stage::Finished | Stage::Waiting => None,
    }
}

/// What the check says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Within budget.
    Ready,
    /// Not now: Kueue requeues it (and evicts it, if admitted).
    Retry(String),
    /// Never, as the Workload and the budget are.
    Rejected(String),
}

impl Verdict {
    pub fn state(&self) -> &'static str {
        match self {
            Verdict::Ready => "Ready",
            Verdict::Retry(_) => "Retry",
            Verdict::Rejected(_) => "Rejected",
        }
    }

    pub fn message(&self, budget: &str) -> String {
        match self {
            Verdict::Ready => format!("within TrainingBudget {budget:?}"),
            Verdict::Retry(m) | Verdict::Rejected(m) => m.clone(),
        }
    }
}

/// The check's verdict from the ledger's answer about `budget`; None where the check keeps what
/// it said (a Workload that is not being decided nor admitted).
pub fn verdict(stage: Stage, answer: Result<Admission, TooSmall>, budget: &TrainingBudget, now: &Time) -> Option<Verdict> {
    if !matches!(stage, Stage::Deciding | Stage::Admitted) {
        return None;
    }
    Some(match answer {
        Ok(Admission::Go) => Verdict::Ready,
        // why it waits: GPUs held, the period spent, or its look-ahead estimate
        Ok(Admission::Wait(w)) => Verdict::Retry(w.message),
        Ok(Admission::SpentOut(w)) => Verdict::Retry(evicted(budget, now).unwrap_or(w.message)),
        Err(e) => Verdict::Rejected(too_small(&e)),
    })
}

/// Why a running Workload is evicted: its budget's period is spent.
fn evicted(budget: &TrainingBudget, now: &Time) -> Option<String> {
    let spec = &budget.spec;
    let (limit, spent) = exhausted(spec, &this_period(budget, now))?;
    let field = match limit {
        Spent::GpuHours => "spec.gpuHours",
        Spent::Cost => "spec.maxCost",
    };
    let created = budget.metadata.creation_timestamp.clone().unwrap_or_else(|| now.clone());
    let next = now.0.as_second() + until_next_period(&created, spec.period, now).as_secs() as i64;
    let next = k8s_openapi::jiff::Timestamp::from_second(next).ok()?;
    Some(format!(
        "TrainingBudget {:?} has spent {spent} this {:?}: Kueue evicts the workload (its pods stop with their grace period) and admits it again when the next period begins at {next}, or when the budget's {field} is raised",
        budget.metadata.name.clone().unwrap_or_default(),
        spec.period
    ))
}

/// Why a Workload could never fit, in a Workload's words.
pub fn too_small(e: &TooSmall) -> String {
    match e {
        TooSmall::Gpus { budget, gpus, max } => format!(
            "the workload asks for {gpus} GPUs, above the spec.maxGpus of {max} of TrainingBudget {budget:?}, so it could never be admitted: ask for fewer GPUs or raise the budget's spec.maxGpus"
        ),
        TooSmall::Period { budget, need, limit, unit, field, period } => format!(
            "the workload may run {} {unit} (its GPUs times its maximum execution time, the kueue.x-k8s.io/max-exec-time-seconds label), more than the {} {unit} a {period:?} of TrainingBudget {budget:?} allows ({field}), so it could never be admitted: lower its maximum execution time or raise the budget's {field}",
            amount(*need),
            amount(*limit)
        ),
    }
}

/// Why a Workload no budget binds waits.
pub fn unbound(namespace: &str) -> String {
    format!(
        "no TrainingBudget binds this workload: namespace {namespace:?} has no default budget (spec.namespaceDefault), and neither its LocalQueue nor the workload carries the {BUDGET_LABEL} label naming one; it waits until one does"
    )
}

/// Why a Workload whose budget does not exist waits.
pub fn not_found(budget: &str, namespace: &str, by: BoundBy) -> String {
    let from = match by {
        BoundBy::NamespaceDefault => "the namespace's default",
        BoundBy::LocalQueue => "its LocalQueue's frugal.dev/budget label",
        BoundBy::Workload => "its frugal.dev/budget label",
    };
    format!("{from} names TrainingBudget {budget:?}, which does not exist in namespace {namespace:?}: it waits until it does")
}

/// The entry to write for a check, if it changes what the Workload says: a new state takes
/// `now` as its transition time; the same state with a new message keeps its time.
pub fn entry(
    current: Option<&AdmissionCheckState>,
    name: &str,
    state: &str,
    message: &str,
    retry_after: Option<i32>,
    now: &Time,
) -> Option<AdmissionCheckState> {
    let same_state = current.is_some_and(|c| c.state == state);
    if same_state && current.is_some_and(|c| c.message == message && (state != "Retry" || c.requeue_after_seconds == retry_after)) {
        return None;
    }
    Some(AdmissionCheckState {
        name: name.into(),
        state: state.into(),
        message: message.chars().take(32768).collect(),
        last_transition_time: if same_state { current.and_then(|c| c.last_transition_time.clone()) } else { Some(now.clone()) },
        requeue_after_seconds: if state == "Retry" { retry_after } else { None },
    })
}

fn secs(t: &Time) -> f64 {
    t.0.as_second() as f64 + f64::from(t.0.subsec_nanosecond()) / 1e9
}

/// What a Workload's pods spent since it was admitted (`since`, its ledger entry's admission):
/// each pod's GPUs from when it was scheduled until it terminated, or until `now`, priced by
/// `price` from the pod's node. Pods made before `since` were an earlier admission's, counted
/// in the entry that admission held. A running pod is billed up to `now` in whole seconds: the
/// API server keeps its end in whole seconds, so a bill never runs past the end it will show.
pub fn bill(pods: &[(PodSeen, Time)], since: &Time, now: &Time, price: impl Fn(&PodSeen) -> f64) -> (f64, f64) {
    let now = now.0.as_second() as f64;
    pods.iter().filter(|(_, created)| created.0 >= since.0).fold((0.0, 0.0), |(hours, cost), (pod, _)| {
        let Some(from) = &pod.scheduled else { return (hours, cost) };
        let until = pod.terminated.as_ref().map_or(now, secs);
        let h = f64::from(pod.gpus) * (until - secs(from)).max(0.0) / 3600.0;
        (hours + h, cost + h * price(pod))
    })
}

#[cfg(test)]
mod tests;
