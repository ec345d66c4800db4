//! Admission against a TrainingBudget's ledger (`status.jobs`): whether a job that holds no entry
//! may start now ([`admit`]), must wait, Queued, for GPUs or the next period, or could never fit
//! ([`TooSmall`]); and the period arithmetic and prices the ledger keeps. The operator's
//! `training_budget::budget` writes the ledger with these.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::reasons;
use crate::TrainingBudget;
use crate::v1alpha1::{BudgetAdmission, BudgetPeriod, HolderKind, TrainingBudgetSpec, TrainingBudgetStatus};

/// The job as the ledger sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim<'a> {
    pub name: &'a str,
    pub uid: &'a str,
    pub gpus: i32,
    /// The GPU type, for the price of what it spends.
    pub gpu_type: &'a str,
    /// status.cost.gpuHours and cost as the operator billed them from the job's pods.
    pub gpu_hours: f64,
    pub cost: f64,
    /// GPU-hours its plan estimates for the whole run (`status.plan.estimatedGpuHours`); for a
    /// Kueue Workload, its GPUs times its maximum execution time.
    pub estimated_gpu_hours: f64,
    /// A TrainingJob, or a Kueue Workload.
    pub kind: HolderKind,
}

/// Why a job may not start now; it stays Queued and is looked at again when the budget changes.
#[derive(Debug, Clone, PartialEq)]
pub struct Wait {
    pub reason: &'static str,
    pub message: String,
}

/// A job that could never fit its budget.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TooSmall {
    #[error(
        "the job needs {gpus} GPUs, above the spec.maxGpus of {max} of TrainingBudget {budget:?}, so it could never be admitted: lower spec.parallelism.pipelineStages or spec.parallelism.dataParallel, raise the budget's spec.maxGpus, or name another budget in spec.budget.budgetRef"
    )]
    Gpus { budget: String, gpus: i32, max: i32 },
    #[error(
        "the job needs an estimated {} {unit}, more than the {} {unit} a {period:?} of TrainingBudget {budget:?} allows ({field}), so it could never be admitted: shorten the job (spec.training.duration), raise the budget's {field}, or set the budget's spec.admission to Spend to admit on what is spent only",
        amount(*need),
        amount(*limit)
    )]
    Period { budget: String, need: f64, limit: f64, unit: String, field: &'static str, period: BudgetPeriod },
}

/// Why [`admit`] does not let a job start.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// Not now: it waits, Queued.
    Wait(Wait),
    /// Never, as the job and the budget are.
    TooSmall(TooSmall),
}

/// Why a job whose budget does not exist waits (its reason is BudgetNotFound).
pub fn not_found(budget: &str, namespace: &str) -> String {
    format!(
        "spec.budget.budgetRef names TrainingBudget {budget:?}, which does not exist in namespace {namespace:?}: create it (examples/budget.yaml shows one) or remove spec.budget.budgetRef; the job waits, Queued, and starts once it exists"
    )
}

/// Seconds in one accounting period (a month is 30 days).
pub fn period_seconds(period: BudgetPeriod) -> i64 {
    match period {
        BudgetPeriod::Day => 86_400,
        BudgetPeriod::Week => 7 * 86_400,
        BudgetPeriod::Month => 30 * 86_400,
    }
}

fn at(secs: i64) -> Time {
    Time(Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// The start of the period `now` falls in; periods follow one another from `created`.
pub fn period_start(created: &Time, period: BudgetPeriod, now: &Time) -> Time {
    let (created, now, len) = (created.0.as_second(), now.0.as_second(), period_seconds(period));
    at(created + (now - created).max(0) / len * len)
}

/// When the current period ends, as a delay from `now`.
pub fn until_next_period(created: &Time, period: BudgetPeriod, now: &Time) -> Duration {
    let end = period_start(created, period, now).0.as_second() + period_seconds(period);
    Duration::from_secs((end - now.0.as_second()).max(1) as u64)
}

/// Price of one GPU-hour of `gpu_type`: the budget's own, else frugal's table, else nothing.
pub fn price(spec: &TrainingBudgetSpec, gpu_type: &str) -> f64 {
    spec.prices
        .iter()
        .find(|p| p.gpu_type == gpu_type)
        .map(|p| p.per_gpu_hour)
        .or_else(|| crate::planner::gpu_type(gpu_type).map(|g| g.usd_per_hour))
        .unwrap_or(0.0)
}

fn created(budget: &TrainingBudget) -> Time {
    budget.metadata.creation_timestamp.clone().unwrap_or_else(|| at(0))
}

/// The budget's status as of `now`: a new period starts with nothing spent. What a holder
/// reported before stays counted (its `gpuHoursCounted`), so only what comes after counts again.
pub fn this_period(budget: &TrainingBudget, now: &Time) -> TrainingBudgetStatus {
    let mut status = budget.status.clone().unwrap_or_default();
    let start = period_start(&created(budget), budget.spec.period, now);
    if status.period_start.as_ref() != Some(&start) {
        status.period_start = Some(start);
        status.gpu_hours_spent = 0.0;
        status.cost_spent = 0.0;
    }
    status
}

/// A limit a period's spend reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spent {
    /// spec.gpuHours
    GpuHours,
    /// spec.maxCost
    Cost,
}

/// Which limit is reached, if any, and what is spent against what.
pub fn exhausted(spec: &TrainingBudgetSpec, status: &TrainingBudgetStatus) -> Option<(Spent, String)> {
    if let Some(limit) = spec.gpu_hours.filter(|l| status.gpu_hours_spent >= *l) {
        return Some((Spent::GpuHours, format!("{} of its {limit} GPU-hours (spec.gpuHours)", amount(status.gpu_hours_spent))));
    }
    if let Some(limit) = spec.max_cost.filter(|l| status.cost_spent >= *l) {
        return Some((Spent::Cost, format!("{} of its {limit} {} (spec.maxCost)", amount(status.cost_spent), spec.currency)));
    }
    None
}

/// The field of the limit a spent period has reached.
fn spent_field(spec: &TrainingBudgetSpec, status: &TrainingBudgetStatus) -> &'static str {
    if spec.gpu_hours.is_some_and(|l| status.gpu_hours_spent >= l) { "spec.gpuHours" } else { "spec.maxCost" }
}

/// When the period after the one `now` falls in begins.
fn next_period(budget: &TrainingBudget, now: &Time) -> Timestamp {
    at(now.0.as_second() + until_next_period(&created(budget), budget.spec.period, now).as_secs() as i64).0
}

/// Why the jobs holding `budget` must stop, if this period's GPU-hours or cost are spent.
pub fn spent_out(budget: &TrainingBudget, status: &TrainingBudgetStatus, now: &Time) -> Option<Wait> {
    let spec = &budget.spec;
    let (_, spent) = exhausted(spec, status)?;
    let name = budget.metadata.name.clone().unwrap_or_default();
    let (field, next) = (spent_field(spec, status), next_period(budget, now));
    Some(Wait {
        reason: reasons::BUDGET_EXHAUSTED,
        message: format!(
            "TrainingBudget {name:?} has spent {spent} this {:?}: the job waits, Queued, and resumes from its checkpoint when the next period begins at {next}, or when the budget's {field} is raised",
            spec.period
        ),
    })
}

/// Whether `job`, which holds no entry in `status` (the ledger as of `now`, see [`this_period`]),
/// may start: its GPUs against spec.maxGpus, then this period's spend, then (look-ahead
/// admission) its estimate against what is left.
pub fn admit(budget: &TrainingBudget, status: &TrainingBudgetStatus, job: &Claim, now: &Time) -> Result<(), Refusal> {
    let spec = &budget.spec;
    let name = budget.metadata.name.clone().unwrap_or_default();
    if job.gpus > spec.max_gpus {
        return Err(Refusal::TooSmall(TooSmall::Gpus { budget: name, gpus: job.gpus, max: spec.max_gpus }));
    }
    let in_use: i32 = status.jobs.iter().map(|h| h.gpus).sum();
    if in_use + job.gpus > spec.max_gpus {
        let holders: Vec<String> = status.jobs.iter().map(|h| format!("{} ({})", h.name, h.gpus)).collect();
        return Err(Refusal::Wait(Wait {
            reason: reasons::BUDGET_EXHAUSTED,
            message: format!(
                "TrainingBudget {name:?} has {in_use} of its {} GPUs (spec.maxGpus) held by {}; this job needs {}: it starts when enough of them finish, are suspended or are deleted, or raise the budget's spec.maxGpus",
                spec.max_gpus,
                holders.join(", "),
                job.gpus
            ),
        }));
    }
    if let Some((_, spent)) = exhausted(spec, status) {
        let (field, next) = (spent_field(spec, status), next_period(budget, now));
        return Err(Refusal::Wait(Wait {
            reason: reasons::BUDGET_EXHAUSTED,
            message: format!(
                "TrainingBudget {name:?} has spent {spent} this {:?}: the job starts when the next period begins at {next}, or raise the budget's {field}",
                spec.period
            ),
        }));
    }
    if spec.admission == BudgetAdmission::LookAhead {
        return look_ahead(budget, status, job, now);
    }
    Ok(())
}

/// GPU-hours or money for a message: two decimals, or three significant digits below 1 (a small
/// job's estimate is a few thousandths of a GPU-hour).
pub fn amount(v: f64) -> String {
    if v == 0.0 || v.abs() >= 1.0 || !v.is_finite() {
        return format!("{v:.2}");
    }
    let digits = (2 - v.abs().log10().floor() as i32).max(2) as usize;
    format!("{v:.digits$}")
}

/// `v`, or 0 where it is negative or not a number.
pub fn finite_or_zero(v: f64) -> f64 {
    if v.is_finite() { v.max(0.0) } else { 0.0 }
}

/// What the jobs holding the budget are still estimated to spend: (GPU-hours, cost), each
/// holder's estimate less what it has already been counted for.
fn held_back(status: &TrainingBudgetStatus) -> (f64, f64) {
    status.jobs.iter().fold((0.0, 0.0), |(hours, cost), h| {
        let left = (h.estimated_gpu_hours - h.gpu_hours_counted).max(0.0);
        let share = if h.estimated_gpu_hours > 0.0 { left / h.estimated_gpu_hours } else { 0.0 };
        (hours + left, cost + h.estimated_cost * share)
    })
}

/// Look-ahead admission: whether the job's estimated GPU-hours and cost fit what is left this
/// period after what the holders are still estimated to spend.
fn look_ahead(budget: &TrainingBudget, status: &TrainingBudgetStatus, job: &Claim, now: &Time) -> Result<(), Refusal> {
    let spec = &budget.spec;
    let name = budget.metadata.name.clone().unwrap_or_default();
    // a job admitted before (and released, say while suspended) needs what it has not spent yet
    let need_hours = (finite_or_zero(job.estimated_gpu_hours) - finite_or_zero(job.gpu_hours)).max(0.0);
    let (held_hours, held_cost) = held_back(status);
    let limits = [
        (spec.gpu_hours, need_hours, status.gpu_hours_spent, held_hours, "GPU-hours".to_string(), "spec.gpuHours"),
        (spec.max_cost, need_hours * price(spec, job.gpu_type), status.cost_spent, held_cost, spec.currency.clone(), "spec.maxCost"),
    ];
    for (limit, need, spent, held, unit, field) in limits {
        let Some(limit) = limit else { continue };
        if need > limit {
            return Err(Refusal::TooSmall(TooSmall::Period { budget: name, need, limit, unit, field, period: spec.period }));
        }
        let left = (limit - spent - held).max(0.0);
        if need > left {
            let next = next_period(budget, now);
            return Err(Refusal::Wait(Wait {
                reason: reasons::BUDGET_EXHAUSTED,
                message: format!(
                    "the job needs an estimated {} {unit}; TrainingBudget {name:?} has {} left this {:?} ({} in {field}, {} spent, {} held back for the jobs it admitted): it starts when they finish under their estimates or the next period begins at {next}, or raise the budget's {field}, or set its spec.admission to Spend to admit on what is spent only",
                    amount(need),
                    amount(left),
                    spec.period,
                    amount(limit),
                    amount(spent),
                    amount(held),
                ),
            }));
        }
    }
    Ok(())
}
