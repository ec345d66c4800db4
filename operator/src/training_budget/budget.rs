//! TrainingBudget admission as pure functions over the budget's ledger, its `status.jobs`.
//!
//! A job counted in a budget (it names it in `spec.budget.budgetRef`, or the budget is its
//! namespace's default) is written into the ledger before any of
//! its children is created ([`settle`]), and taken out when it finishes, is suspended (once its
//! pods are gone) or is deleted. The ledger is written with the budget's resourceVersion
//! (`ledger.rs`), so jobs reconciled at the same time cannot both take the last GPUs. What the
//! jobs spend is counted from their own `status.cost` (the operator's bill of their pods), by the
//! jobs' own passes ([`settle`]) and by the budget's controller ([`refresh`]). The tables in `docs/operator.md` are the tests
//! below.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use frugal_api::TrainingBudget;
use frugal_api::v1alpha1::{BudgetAdmission, BudgetHolder, BudgetPeriod, TrainingBudgetSpec, TrainingBudgetStatus};

use crate::conditions::{self, reasons};

/// What a job asks of its budget this pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Demand {
    /// Nothing: it is finished, or suspended with its pods gone. Its entry is released.
    Release,
    /// It is about to create an attempt: admitted only if it fits.
    Start,
    /// An attempt of it is live (its pods hold GPUs, or Kueue may start them): recorded even past
    /// the limits, because the GPUs are held whatever the ledger says.
    Hold,
}

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
    /// GPU-hours its plan estimates for the whole run (`status.plan.estimatedGpuHours`).
    pub estimated_gpu_hours: f64,
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
        "the job needs {gpus} GPUs, above the spec.maxGpus of {max} of TrainingBudget {budget:?}, so it could never be admitted: lower spec.parallelism.pipelineStages, raise the budget's spec.maxGpus, or name another budget in spec.budget.budgetRef"
    )]
    Gpus { budget: String, gpus: i32, max: i32 },
    #[error(
        "the job needs an estimated {} {unit}, more than the {} {unit} a {period:?} of TrainingBudget {budget:?} allows ({field}), so it could never be admitted: shorten the job (spec.training.duration), raise the budget's {field}, or set the budget's spec.admission to Spend to admit on what is spent only",
        amount(*need),
        amount(*limit)
    )]
    Period { budget: String, need: f64, limit: f64, unit: String, field: &'static str, period: BudgetPeriod },
}

/// The outcome of [`settle`].
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The ledger already says what it should: write nothing.
    Unchanged,
    /// Write this ledger (with the resourceVersion it was read at), then go on.
    Write(Box<TrainingBudgetStatus>),
    /// Stay Queued.
    Wait(Wait),
    /// Write this ledger (the job's entry taken out), then stay Queued: a job that held the
    /// budget asks to start again (a restart, or a resume after its budget stopped it) while the
    /// period is spent.
    Release(Box<TrainingBudgetStatus>, Wait),
    /// Refused until the job or the budget changes.
    Refuse(TooSmall),
}

/// The message of a job whose budget does not exist.
pub fn not_found(budget: &str, namespace: &str) -> Wait {
    Wait {
        reason: reasons::BUDGET_NOT_FOUND,
        message: format!(
            "spec.budget.budgetRef names TrainingBudget {budget:?}, which does not exist in namespace {namespace:?}: create it (examples/budget.yaml shows one) or remove spec.budget.budgetRef; the job waits, Queued, and starts once it exists"
        ),
    }
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
        .or_else(|| frugal_api::planner::gpu_type(gpu_type).map(|g| g.usd_per_hour))
        .unwrap_or(0.0)
}

fn created(budget: &TrainingBudget) -> Time {
    budget.metadata.creation_timestamp.clone().unwrap_or_else(|| at(0))
}

/// The status at the start of a pass: a new period starts with nothing spent. What a holder
/// reported before stays counted (its `gpuHoursCounted`), so only what comes after counts again.
fn rolled(budget: &TrainingBudget, now: &Time) -> TrainingBudgetStatus {
    let mut status = budget.status.clone().unwrap_or_default();
    let start = period_start(&created(budget), budget.spec.period, now);
    if status.period_start.as_ref() != Some(&start) {
        status.period_start = Some(start);
        status.gpu_hours_spent = 0.0;
        status.cost_spent = 0.0;
    }
    status
}

/// Counts what a holder was billed since it was last counted (its job's status.cost, which the
/// operator bills from its pods at the budget's prices).
fn count(status: &mut TrainingBudgetStatus, holder: usize, gpu_hours: f64, cost: f64) {
    let h = &mut status.jobs[holder];
    if h.cost_counted == 0.0 && h.gpu_hours_counted > 0.0 && gpu_hours > 0.0 && cost.is_finite() {
        // an entry counted before costs were counted: its GPU-hours so far at the job's average price
        h.cost_counted = cost * (h.gpu_hours_counted / gpu_hours).min(1.0);
    }
    if gpu_hours.is_finite() && gpu_hours > h.gpu_hours_counted {
        status.gpu_hours_spent += gpu_hours - h.gpu_hours_counted;
        h.gpu_hours_counted = gpu_hours;
    }
    if cost.is_finite() && cost > h.cost_counted {
        status.cost_spent += cost - h.cost_counted;
        h.cost_counted = cost;
    }
}

/// Which limit is reached, if any: (reason, what is spent against what).
fn exhausted(spec: &TrainingBudgetSpec, status: &TrainingBudgetStatus) -> Option<(&'static str, String)> {
    if let Some(limit) = spec.gpu_hours.filter(|l| status.gpu_hours_spent >= *l) {
        return Some((reasons::GPU_HOURS_SPENT, format!("{:.2} of its {limit} GPU-hours (spec.gpuHours)", status.gpu_hours_spent)));
    }
    if let Some(limit) = spec.max_cost.filter(|l| status.cost_spent >= *l) {
        return Some((reasons::COST_SPENT, format!("{:.2} of its {limit} {} (spec.maxCost)", status.cost_spent, spec.currency)));
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

/// Sets what follows from the ledger: GPUs in use, the Exhausted condition, the generation.
fn summarize(budget: &TrainingBudget, mut status: TrainingBudgetStatus, now: &Time) -> TrainingBudgetStatus {
    let spec = &budget.spec;
    status.jobs.sort_by(|a, b| a.name.cmp(&b.name));
    status.gpus_in_use = status.jobs.iter().map(|j| j.gpus).sum();
    let generation = budget.metadata.generation.unwrap_or(0);
    let (state, reason, message) = match exhausted(spec, &status) {
        Some((reason, spent)) => (true, reason, format!("spent {spent} this {:?}: jobs naming it wait, Queued, until the next period", spec.period)),
        None if status.gpus_in_use >= spec.max_gpus => (
            true,
            reasons::ALL_GPUS_IN_USE,
            format!(
                "{} of its {} GPUs (spec.maxGpus) are held: jobs naming it wait, Queued, until some are released",
                status.gpus_in_use, spec.max_gpus
            ),
        ),
        None => (
            false,
            reasons::WITHIN_LIMITS,
            format!("{} of {} GPUs held; GPU-hours and cost within this period's limits", status.gpus_in_use, spec.max_gpus),
        ),
    };
    conditions::set(&mut status.conditions, conditions::types::EXHAUSTED, state, reason, &message, generation, now);
    status.observed_generation = Some(generation);
    status
}

/// Whether two ledgers say the same, ignoring condition timestamps.
pub fn changed(a: &TrainingBudgetStatus, b: &TrainingBudgetStatus) -> bool {
    let plain = |s: &TrainingBudgetStatus| TrainingBudgetStatus { conditions: Vec::new(), ..s.clone() };
    plain(a) != plain(b) || !conditions::same(&a.conditions, &b.conditions)
}

/// True when `b` differs from `a` only in what was spent (totals and per-job counts).
pub fn only_spending_changed(a: &TrainingBudgetStatus, b: &TrainingBudgetStatus) -> bool {
    let unspent = |s: &TrainingBudgetStatus| {
        let mut s = s.clone();
        (s.gpu_hours_spent, s.cost_spent) = (0.0, 0.0);
        s.jobs.iter_mut().for_each(|j| (j.gpu_hours_counted, j.cost_counted) = (0.0, 0.0));
        s
    };
    changed(a, b) && !changed(&unspent(a), &unspent(b))
}

fn write_if_changed(budget: &TrainingBudget, status: TrainingBudgetStatus) -> Verdict {
    let current = budget.status.clone().unwrap_or_default();
    if changed(&current, &status) { Verdict::Write(Box::new(status)) } else { Verdict::Unchanged }
}

/// What the ledger of `budget` must say for `job` given its demand.
pub fn settle(budget: &TrainingBudget, job: &Claim, demand: Demand, now: &Time) -> Verdict {
    let spec = &budget.spec;
    let mut status = rolled(budget, now);
    // an entry of the same name with another uid is a deleted job's: names are unique
    status.jobs.retain(|h| h.name != job.name || h.uid == job.uid);
    let held = status.jobs.iter().position(|h| h.uid == job.uid);
    match (demand, held) {
        (Demand::Release, None) => {}
        (Demand::Release, Some(i)) => {
            count(&mut status, i, job.gpu_hours, job.cost);
            status.jobs.remove(i);
        }
        (Demand::Start | Demand::Hold, Some(i)) => {
            status.jobs[i].gpus = job.gpus;
            count(&mut status, i, job.gpu_hours, job.cost);
            // its GPUs are not checked again, but a spent period starts nobody: it gives its
            // entry back, so that a raised limit or the next period wakes it like any waiting job
            if demand == Demand::Start
                && let Some(w) = spent_out(budget, &status, now)
            {
                status.jobs.remove(i);
                return Verdict::Release(Box::new(summarize(budget, status, now)), w);
            }
        }
        (Demand::Start, None) => {
            let name = budget.metadata.name.clone().unwrap_or_default();
            if job.gpus > spec.max_gpus {
                return Verdict::Refuse(TooSmall::Gpus { budget: name, gpus: job.gpus, max: spec.max_gpus });
            }
            let in_use: i32 = status.jobs.iter().map(|h| h.gpus).sum();
            if in_use + job.gpus > spec.max_gpus {
                let holders: Vec<String> = status.jobs.iter().map(|h| format!("{} ({})", h.name, h.gpus)).collect();
                return Verdict::Wait(Wait {
                    reason: reasons::BUDGET_EXHAUSTED,
                    message: format!(
                        "TrainingBudget {name:?} has {in_use} of its {} GPUs (spec.maxGpus) held by {}; this job needs {}: it starts when enough of them finish, are suspended or are deleted, or raise the budget's spec.maxGpus",
                        spec.max_gpus,
                        holders.join(", "),
                        job.gpus
                    ),
                });
            }
            if let Some((_, spent)) = exhausted(spec, &status) {
                let (field, next) = (spent_field(spec, &status), next_period(budget, now));
                return Verdict::Wait(Wait {
                    reason: reasons::BUDGET_EXHAUSTED,
                    message: format!(
                        "TrainingBudget {name:?} has spent {spent} this {:?}: the job starts when the next period begins at {next}, or raise the budget's {field}",
                        spec.period
                    ),
                });
            }
            if spec.admission == BudgetAdmission::LookAhead
                && let Some(verdict) = look_ahead(budget, &status, job, now)
            {
                return verdict;
            }
            status.jobs.push(holder(spec, job, now));
        }
        (Demand::Hold, None) => status.jobs.push(holder(spec, job, now)),
    }
    write_if_changed(budget, summarize(budget, status, now))
}

/// The ledger entry of `job`, admitted `now`.
fn holder(spec: &TrainingBudgetSpec, job: &Claim, now: &Time) -> BudgetHolder {
    let estimated = finite_or_zero(job.estimated_gpu_hours);
    BudgetHolder {
        name: job.name.into(),
        uid: job.uid.into(),
        gpus: job.gpus,
        gpu_hours_counted: finite_or_zero(job.gpu_hours),
        cost_counted: finite_or_zero(job.cost),
        admitted_at: Some(now.clone()),
        estimated_gpu_hours: estimated,
        estimated_cost: estimated * price(spec, job.gpu_type),
    }
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

fn finite_or_zero(v: f64) -> f64 {
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
/// period after what the holders are still estimated to spend. `None` when they fit.
fn look_ahead(budget: &TrainingBudget, status: &TrainingBudgetStatus, job: &Claim, now: &Time) -> Option<Verdict> {
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
            return Some(Verdict::Refuse(TooSmall::Period { budget: name, need, limit, unit, field, period: spec.period }));
        }
        let left = (limit - spent - held).max(0.0);
        if need > left {
            let next = next_period(budget, now);
            return Some(Verdict::Wait(Wait {
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
    None
}

/// A holder's job as the budget's controller finds it in the cache.
#[derive(Debug, Clone, PartialEq)]
pub struct Holder {
    pub uid: String,
    /// It still names this budget in spec.budget.budgetRef.
    pub names_budget: bool,
    /// It ran and Succeeded or Failed.
    pub finished: bool,
    pub gpu_hours: f64,
    pub cost: f64,
}

/// The budget's own pass: counts what holders spent, releases the entries of jobs that are gone
/// (or finished, or name another budget), starts a new period when one is due, and sets the
/// Exhausted condition. `job` finds a holder's TrainingJob by name.
pub fn refresh(budget: &TrainingBudget, job: impl Fn(&str) -> Option<Holder>, now: &Time) -> Verdict {
    let mut status = rolled(budget, now);
    let mut i = 0;
    while i < status.jobs.len() {
        let found = job(&status.jobs[i].name).filter(|h| h.uid == status.jobs[i].uid);
        match found {
            Some(h) => {
                count(&mut status, i, h.gpu_hours, h.cost);
                if h.finished || !h.names_budget {
                    status.jobs.remove(i);
                    continue;
                }
            }
            // deleted: what it reported after it was last counted is not known any more
            None => {
                status.jobs.remove(i);
                continue;
            }
        }
        i += 1;
    }
    write_if_changed(budget, summarize(budget, status, now))
}

#[cfg(test)]
mod tests;
