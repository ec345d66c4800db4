//! `kubectl frugal budget`: each TrainingBudget's ledger as its status keeps it: its limits, what
//! is spent this period, the GPUs in use and the jobs holding them (`status.jobs`), its Exhausted
//! condition, and the TrainingJobs waiting for it (phase Queued, counted in it) with the reason
//! the operator gave them.

use anyhow::Result;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::ListParams;
use serde::Serialize;

use frugal_api::admission::{self, budget};
use frugal_api::report::Table;
use frugal_api::v1alpha1::{BudgetAdmission, BudgetHolder, BudgetPeriod, Phase};
use frugal_api::{TrainingBudget, TrainingJob};

use crate::BudgetFormat;
use crate::cluster::{self, Target};
use crate::output;

/// A job waiting, Queued, for a budget.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Waiter {
    pub name: String,
    pub gpus: Option<i32>,
    pub reason: String,
    pub message: String,
}

/// One budget's ledger as of now.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Ledger {
    pub namespace: String,
    pub name: String,
    /// It is its namespace's default budget: every job there is counted in it.
    pub namespace_default: bool,
    pub max_gpus: i32,
    pub gpu_hours: Option<f64>,
    pub max_cost: Option<f64>,
    pub currency: String,
    pub period: BudgetPeriod,
    pub admission: BudgetAdmission,
    pub period_start: Option<Time>,
    pub next_period: Time,
    /// Spent this period (nothing yet when a new period has begun since the status was written).
    pub gpu_hours_spent: f64,
    pub cost_spent: f64,
    pub gpus_in_use: i32,
    pub holders: Vec<BudgetHolder>,
    pub waiting: Vec<Waiter>,
    pub exhausted: Option<Condition>,
}

fn condition<'a>(tj: &'a TrainingJob, type_: &str) -> Option<&'a Condition> {
    tj.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)
}

/// The ledger of `b`, among the `budgets` and `jobs` of its namespace.
pub fn ledger(b: &TrainingBudget, budgets: &[TrainingBudget], jobs: &[TrainingJob], now: &Time) -> Ledger {
    let namespace = b.metadata.namespace.clone().unwrap_or_default();
    let name = b.metadata.name.clone().unwrap_or_default();
    let default = admission::namespace_default(&namespace, budgets);
    let status = budget::this_period(b, now);
    let created = b.metadata.creation_timestamp.clone().unwrap_or_else(|| now.clone());
    let until = budget::until_next_period(&created, b.spec.period, now);
    let next = Time(Timestamp::from_second(now.0.as_second() + until.as_secs() as i64).unwrap_or(now.0));
    let waiting = jobs
        .iter()
        .filter(|tj| tj.metadata.namespace.as_deref() == Some(namespace.as_str()))
        .filter(|tj| tj.status.as_ref().and_then(|s| s.phase) == Some(Phase::Queued))
        .filter(|tj| {
            let counted = admission::counted_in(&namespace, default.clone(), tj.spec.budget.budget_ref.clone(), false);
            counted.ok().flatten().as_deref() == Some(name.as_str())
        })
        .map(|tj| {
            let why = condition(tj, "Queued").or_else(|| condition(tj, "Ready"));
            Waiter {
                name: tj.metadata.name.clone().unwrap_or_default(),
                gpus: tj.status.as_ref().and_then(|s| s.plan.as_ref()).map(|p| p.gpus),
                reason: why.map_or("-".into(), |c| c.reason.clone()),
                message: why.map_or(String::new(), |c| c.message.clone()),
            }
        })
        .collect();
    Ledger {
        namespace_default: default.as_deref() == Some(name.as_str()),
        max_gpus: b.spec.max_gpus,
        gpu_hours: b.spec.gpu_hours,
        max_cost: b.spec.max_cost,
        currency: b.spec.currency.clone(),
        period: b.spec.period,
        admission: b.spec.admission,
        period_start: status.period_start.clone(),
        next_period: next,
        gpu_hours_spent: status.gpu_hours_spent,
        cost_spent: status.cost_spent,
        gpus_in_use: status.jobs.iter().map(|h| h.gpus).sum(),
        exhausted: status.conditions.iter().find(|c| c.type_ == "Exhausted").cloned(),
        holders: status.jobs,
        waiting,
        namespace,
        name,
    }
}

pub fn time(t: Option<&Time>) -> String {
    t.map_or("-".into(), |t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
}

fn of(spent: f64, limit: Option<f64>, unit: &str) -> String {
    match limit {
        Some(l) => format!("{} of {l} {unit}", budget::amount(spent)),
        None => format!("{} {unit} (no limit)", budget::amount(spent)),
    }
}

/// The ledgers, for people; `wide` adds each holder's estimated cost and uid.
pub fn text(ledgers: &[Ledger], wide: bool) -> String {
    let mut out = String::new();
    for (i, l) in ledgers.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out += &format!("TrainingBudget {}/{}{}\n", l.namespace, l.name, if l.namespace_default { " (the namespace's default)" } else { "" });
        let mut limits = vec![format!("{} GPUs at once (spec.maxGpus)", l.max_gpus)];
        if let Some(h) = l.gpu_hours {
            limits.push(format!("{h} GPU-hours"));
        }
        if let Some(c) = l.max_cost {
            limits.push(format!("{c} {}", l.currency));
        }
        let mut facts = Table::new(&["", ""]);
        facts.push(vec!["limits".into(), format!("{} per {:?}, admission {:?}", limits.join(", "), l.period, l.admission)]);
        facts.push(vec!["period".into(), format!("since {}, the next begins {}", time(l.period_start.as_ref()), time(Some(&l.next_period)))]);
        facts.push(vec![
            "spent".into(),
            format!("{}, {}", of(l.gpu_hours_spent, l.gpu_hours, "GPU-hours"), of(l.cost_spent, l.max_cost, &l.currency)),
        ]);
        facts.push(vec!["GPUs".into(), format!("{} of {} in use", l.gpus_in_use, l.max_gpus)]);
        if let Some(c) = &l.exhausted {
            facts.push(vec!["Exhausted".into(), format!("{} ({}): {}", c.status, c.reason, c.message)]);
        }
        out += &facts.text().lines().skip(1).map(|line| format!("  {line}\n")).collect::<String>();
        if l.holders.is_empty() {
            out += "  holders: none\n";
        } else {
            out += "  holders:\n";
            let mut header = vec!["job", "GPUs", "GPU-h counted", "cost counted", "estimated GPU-h", "admitted at"];
            if wide {
                header.extend(["estimated cost", "uid"]);
            }
            let mut t = Table::new(&header);
            for h in &l.holders {
                // a Kueue Workload the admission check admitted (a Job, JobSet, ...), beside TrainingJobs
                let name = match h.kind {
                    frugal_api::v1alpha1::HolderKind::Workload => format!("workload/{}", h.name),
                    frugal_api::v1alpha1::HolderKind::TrainingJob => h.name.clone(),
                };
                let mut cells = vec![
                    name,
                    h.gpus.to_string(),
                    budget::amount(h.gpu_hours_counted),
                    format!("{} {}", budget::amount(h.cost_counted), l.currency),
                    if h.estimated_gpu_hours > 0.0 { budget::amount(h.estimated_gpu_hours) } else { "-".into() },
                    time(h.admitted_at.as_ref()),
                ];
                if wide {
                    cells.push(if h.estimated_cost > 0.0 { format!("{} {}", budget::amount(h.estimated_cost), l.currency) } else { "-".into() });
                    cells.push(h.uid.clone());
                }
                t.push(cells);
            }
            out += &t.text().lines().map(|line| format!("    {line}\n")).collect::<String>();
        }
        if l.waiting.is_empty() {
            out += "  waiting: none\n";
        } else {
            out += "  waiting:\n";
            for w in &l.waiting {
                let gpus = w.gpus.map_or(String::new(), |g| format!(" ({g} GPUs)"));
                out += &format!("    {}{gpus}: {}: {}\n", w.name, w.reason, w.message);
            }
        }
    }
    out
}

/// The ledgers in `format`.
pub fn render(ledgers: &[Ledger], format: BudgetFormat) -> Result<String> {
    Ok(match format {
        BudgetFormat::Text => text(ledgers, false),
        BudgetFormat::Wide => text(ledgers, true),
        BudgetFormat::Json => serde_json::to_string_pretty(ledgers)? + "\n",
        BudgetFormat::Yaml => output::yaml(&ledgers)?,
        BudgetFormat::Name => output::names(output::TRAINING_BUDGET, ledgers.iter().map(|l| l.name.as_str())),
    })
}

pub async fn run(target: &Target, all: bool, format: BudgetFormat) -> Result<String> {
    let cluster = cluster::connect(target).await?;
    let client = cluster.client.clone();
    let (budgets, jobs): (Api<TrainingBudget>, Api<TrainingJob>) = if all {
        (Api::all(client.clone()), Api::all(client))
    } else {
        (Api::namespaced(client.clone(), &cluster.namespace), Api::namespaced(client, &cluster.namespace))
    };
    let budgets = budgets.list(&ListParams::default()).await.map_err(|e| cluster::explain(e, "listing TrainingBudgets"))?.items;
    let jobs = jobs.list(&ListParams::default()).await.map_err(|e| cluster::explain(e, "listing TrainingJobs"))?.items;
    let now = Time(Timestamp::now());
    let ledgers: Vec<Ledger> = budgets.iter().map(|b| ledger(b, &budgets, &jobs, &now)).collect();
    if ledgers.is_empty() && matches!(format, BudgetFormat::Text | BudgetFormat::Wide | BudgetFormat::Name) {
        let scope = if all { "any namespace".to_string() } else { format!("namespace {:?}", cluster.namespace) };
        eprintln!("No TrainingBudgets in {scope}.");
    }
    render(&ledgers, format)
}

#[cfg(test)]
mod tests;
