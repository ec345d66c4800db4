//! TrainingBudget admission as pure functions over the budget's ledger, its `status.jobs`. Whether
//! a job may start is `frugal_api::admission::budget::admit` (`kubectl frugal plan` asks it too);
//! what the ledger then says is decided here.
//!
//! A job counted in a budget (it names it in `spec.budget.budgetRef`, or the budget is its
//! namespace's default) is written into the ledger before any of
//! its children is created ([`settle`]), and taken out when it finishes, is suspended (once its
//! pods are gone) or is deleted. The ledger is written with the budget's resourceVersion
//! (`ledger.rs`), so jobs reconciled at the same time cannot both take the last GPUs. What the
//! jobs spend is counted from their own `status.cost` (the operator's bill of their pods), by the
//! jobs' own passes ([`settle`]) and by the budget's controller ([`refresh`]). The tables in `docs/operator.md` are the tests
//! below.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use frugal_api::TrainingBudget;
use frugal_api::admission::budget::{self as admission, Refusal, Spent, exhausted, finite_or_zero, this_period};
use frugal_api::v1alpha1::{BudgetHolder, HolderKind, TrainingBudgetSpec, TrainingBudgetStatus};

pub use frugal_api::admission::budget::{Claim, TooSmall, Wait, price, spent_out, until_next_period};

use crate::conditions::{self, reasons};

// what the tests below use of the moved functions
#[cfg(test)]
use frugal_api::admission::budget::{amount, period_start};
#[cfg(test)]
use std::time::Duration;

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

/// The wait of a job whose budget does not exist.
pub fn not_found(budget: &str, namespace: &str) -> Wait {
    Wait { reason: reasons::BUDGET_NOT_FOUND, message: admission::not_found(budget, namespace) }
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

/// Sets what follows from the ledger: GPUs in use, the Exhausted condition, the generation.
fn summarize(budget: &TrainingBudget, mut status: TrainingBudgetStatus, now: &Time) -> TrainingBudgetStatus {
    let spec = &budget.spec;
    status.jobs.sort_by(|a, b| a.name.cmp(&b.name));
    status.gpus_in_use = status.jobs.iter().map(|j| j.gpus).sum();
    let generation = budget.metadata.generation.unwrap_or(0);
    let (state, reason, message) = match exhausted(spec, &status) {
        Some((limit, spent)) => {
            let reason = match limit {
                Spent::GpuHours => reasons::GPU_HOURS_SPENT,
                Spent::Cost => reasons::COST_SPENT,
            };
            (true, reason, format!("spent {spent} this {:?}: jobs naming it wait, Queued, until the next period", spec.period))
        }
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
    let mut status = this_period(budget, now);
    // An entry of the same name with another uid is a deleted job's. It stays until the
    // budget's own pass finds that job's pods gone ([`refresh`]): a job made again under the
    // same name must not take GPUs the old one's pods still hold.
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
        (Demand::Start, None) => match admission::admit(budget, &status, job, now) {
            Ok(()) => status.jobs.push(holder(spec, job, now)),
            Err(Refusal::Wait(w)) => return Verdict::Wait(w),
            Err(Refusal::TooSmall(e)) => return Verdict::Refuse(e),
        },
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
        kind: job.kind,
    }
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
/// Exhausted condition. `job` finds a holder's TrainingJob by name; `pods_hold` says whether
/// pods the operator made for an entry's job (by its uid) still run. GPUs are held by pods, not
/// by TrainingJobs: an entry whose job is gone or says it finished stays while its pods run
/// (deleted with its finalizer removed by hand, its pods orphaned, or its status forged).
///
/// A Kueue Workload's entry is the admission check's (`admission_check`): it counts and
/// releases it. Here it goes only when `workload_gone` says its Workload no longer exists (the
/// check's controller is not told of a deletion).
pub fn refresh(
    budget: &TrainingBudget,
    job: impl Fn(&str) -> Option<Holder>,
    pods_hold: impl Fn(&BudgetHolder) -> bool,
    workload_gone: impl Fn(&BudgetHolder) -> bool,
    now: &Time,
) -> Verdict {
    let mut status = this_period(budget, now);
    let mut i = 0;
    while i < status.jobs.len() {
        if status.jobs[i].kind == HolderKind::Workload {
            if workload_gone(&status.jobs[i]) {
                status.jobs.remove(i);
            } else {
                i += 1;
            }
            continue;
        }
        let found = job(&status.jobs[i].name).filter(|h| h.uid == status.jobs[i].uid);
        let held_by_pods = pods_hold(&status.jobs[i]);
        match found {
            Some(h) => {
                count(&mut status, i, h.gpu_hours, h.cost);
                if (h.finished && !held_by_pods) || !h.names_budget {
                    status.jobs.remove(i);
                    continue;
                }
            }
            // deleted: what it reported after it was last counted is not known any more
            None if !held_by_pods => {
                status.jobs.remove(i);
                continue;
            }
            None => {}
        }
        i += 1;
    }
    write_if_changed(budget, summarize(budget, status, now))
}

#[cfg(test)]
mod tests;
