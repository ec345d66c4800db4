//! `kubectl frugal describe JOB`: one TrainingJob as `kubectl describe` would tell it, from what
//! its status says: the plan, progress, the bill of each pod, its conditions in the order they
//! happened, and the view of the TrainingBudget it is counted in (the namespace's default, else
//! `spec.budget.budgetRef`): its limits, what is spent, who holds its GPUs and who waits.

use anyhow::{Context as _, Result};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::ListParams;

use frugal_api::admission::{self, budget::amount};
use frugal_api::planner::ResolvedModel;
use frugal_api::report::{Table, describe_model, human};
use frugal_api::v1alpha1::PricedFrom;
use frugal_api::{TrainingBudget, TrainingJob};

use crate::budget::{self, Ledger, time};
use crate::cluster::{self, Target};
use crate::plan::{bytes, count};

/// What can be said of the budget a job is counted in.
#[derive(Debug, Clone, PartialEq)]
pub enum BudgetView {
    /// It names none, and its namespace has no default.
    None,
    /// The budget it is counted in does not exist.
    NotFound(String),
    /// The budgets could not be read: why.
    Unreadable(String),
    Ledger(Box<Ledger>),
}

/// The budget `tj` is counted in, among its namespace's `budgets` and `jobs`.
pub fn budget_view(tj: &TrainingJob, budgets: &[TrainingBudget], jobs: &[TrainingJob], now: &Time) -> BudgetView {
    let namespace = tj.metadata.namespace.clone().unwrap_or_default();
    let default = admission::namespace_default(&namespace, budgets);
    // a job that runs already is counted in the default even when it names another
    let Ok(Some(name)) = admission::counted_in(&namespace, default, tj.spec.budget.budget_ref.clone(), false) else {
        return BudgetView::None;
    };
    match budgets.iter().find(|b| b.metadata.name.as_deref() == Some(name.as_str())) {
        Some(b) => BudgetView::Ledger(Box::new(budget::ledger(b, budgets, jobs, now))),
        None => BudgetView::NotFound(name),
    }
}

fn indent(text: &str, by: &str) -> String {
    text.lines().map(|l| format!("{by}{l}\n")).collect()
}

/// Two columns without a header, as `kubectl describe` prints its fields.
fn fields(pairs: &[(&str, String)], by: &str) -> String {
    let mut t = Table::new(&["", ""]);
    for (k, v) in pairs {
        t.push(vec![format!("{k}:"), v.clone()]);
    }
    indent(&t.text().lines().skip(1).collect::<Vec<_>>().join("\n"), by)
}

/// The job's conditions, the oldest transition first.
pub fn story(conditions: &[Condition]) -> Vec<&Condition> {
    let mut ordered: Vec<&Condition> = conditions.iter().collect();
    ordered.sort_by_key(|c| c.last_transition_time.0);
    ordered
}

/// The job, for people.
pub fn text(tj: &TrainingJob, view: &BudgetView) -> String {
    let status = tj.status.clone().unwrap_or_default();
    let spec = &tj.spec;
    let mut top = vec![
        ("Name", tj.metadata.name.clone().unwrap_or_default()),
        ("Namespace", tj.metadata.namespace.clone().unwrap_or_default()),
        (
            "Phase",
            match (status.phase, status.attempt) {
                (Some(p), Some(a)) => format!("{p:?}, attempt {a} ({})", count(status.restarts.unwrap_or(0).into(), "restart")),
                (Some(p), None) => format!("{p:?}"),
                (None, _) => "- (the operator has not seen it yet)".into(),
            },
        ),
        ("Model", ResolvedModel::from_spec(&spec.model).map_or("-".into(), |m| describe_model(&m, spec.training.precision))),
        ("Budget", spec.budget.budget_ref.clone().map_or("names none (spec.budget.budgetRef)".into(), |b| format!("{b} (spec.budget.budgetRef)"))),
    ];
    if let Some(t) = &status.start_time {
        top.push(("Started", time(Some(t))));
    }
    if let Some(t) = &status.completion_time {
        top.push(("Completed", time(Some(t))));
    }
    let mut out = fields(&top, "");

    out += "Plan:\n";
    match &status.plan {
        None => out += "  none yet: the operator writes it when it first sees the job\n",
        Some(p) => {
            let mut plan = vec![
                ("parameters", format!("{} total, {} active", human(p.parameters as f64), human(p.active_parameters as f64))),
                ("FLOPs", format!("{:.3e} per token, {:.3e} in all ({} steps, {} tokens)", p.flops_per_token, p.total_flops, p.steps, p.tokens)),
                (
                    "GPUs",
                    if p.gpus > 0 {
                        format!(
                            "{} × {} in {} ({}), pipeline bubble {:.1}%",
                            p.gpus,
                            spec.resources.gpu_type,
                            count(p.pods.into(), "pod"),
                            count(p.replicas.max(1).into(), "replica"),
                            p.pipeline_bubble * 100.0
                        )
                    } else {
                        format!("none: trains on CPU, in {} ({})", count(p.pods.into(), "pod"), count(p.replicas.max(1).into(), "replica"))
                    },
                ),
                ("estimate", format!("{} GPU-hours, {} {}", amount(p.estimated_gpu_hours), amount(p.estimated_cost), p.currency)),
            ];
            if p.memory_per_gpu_bytes > 0 && p.gpu_memory_bytes > 0 {
                plan.push(("memory", format!("{} of each GPU's {}", bytes(p.memory_per_gpu_bytes), bytes(p.gpu_memory_bytes))));
            }
            out += &fields(&plan, "  ");
            for w in &p.warnings {
                out += &format!("  warning: {w}\n");
            }
        }
    }

    if let Some(p) = &status.progress {
        let mut progress = format!("step {} of {}, {} tokens", p.step, p.total_steps, p.tokens);
        if let Some(loss) = p.loss {
            progress += &format!(", loss {loss:.4}");
        }
        if let Some(eta) = &p.estimated_completion_time {
            progress += &format!(", done about {}", time(Some(eta)));
        }
        out += &fields(&[("Progress", progress)], "");
    }
    if let Some(q) = &status.quality {
        let figures = [("bits/byte", q.bits_per_byte, 4), ("perplexity", q.perplexity, 3), ("validation loss", q.validation_loss, 4)];
        let said: Vec<String> = figures.iter().filter_map(|(k, v, d)| v.map(|v| format!("{k} {v:.d$}"))).collect();
        out += &fields(&[("Quality", format!("at step {}: {}", q.step, if said.is_empty() { "-".into() } else { said.join(", ") }))], "");
    }

    out += "Bill:\n";
    match &status.cost {
        None => out += "  nothing billed yet\n",
        Some(c) => {
            out += &format!("  {} GPU-hours, {} {} in all\n", amount(c.gpu_hours), amount(c.cost), c.currency);
            if !c.pods.is_empty() {
                let mut t = Table::new(&["pod", "attempt", "GPUs", "priced as", "per GPU-hour", "GPU-h", "cost", "from", "until"]);
                for pod in &c.pods {
                    let from = match pod.priced_from {
                        PricedFrom::NodeLabel => "node label",
                        PricedFrom::JobSpec => "spec",
                    };
                    t.push(vec![
                        pod.name.clone(),
                        pod.attempt.to_string(),
                        pod.gpus.to_string(),
                        format!("{} ({from})", pod.gpu_type),
                        format!("{} {}", amount(pod.price_per_gpu_hour), c.currency),
                        amount(pod.gpu_hours),
                        format!("{} {}", amount(pod.cost), c.currency),
                        time(Some(&pod.from)),
                        if pod.ended { time(Some(&pod.until)) } else { format!("{} (running)", time(Some(&pod.until))) },
                    ]);
                }
                out += &indent(&t.text(), "  ");
            }
        }
    }

    out += "Conditions:\n";
    if status.conditions.is_empty() {
        out += "  none yet\n";
    } else {
        let mut t = Table::new(&["since", "type", "status", "reason", "message"]);
        for c in story(&status.conditions) {
            t.push(vec![time(Some(&c.last_transition_time)), c.type_.clone(), c.status.clone(), c.reason.clone(), c.message.clone()]);
        }
        out += &indent(&t.text(), "  ");
    }

    match view {
        BudgetView::None => out += "TrainingBudget: none (it names none, and the namespace has no default)\n",
        BudgetView::NotFound(name) => out += &format!("TrainingBudget: {name:?} does not exist: the job waits, Queued, until it does\n"),
        BudgetView::Unreadable(why) => out += &format!("TrainingBudget: not shown: {why}\n"),
        BudgetView::Ledger(ledger) => {
            // the ledger as `kubectl frugal budget` prints it, under its own heading
            let ledger = budget::text(std::slice::from_ref(ledger), false);
            let (heading, rest) = ledger.split_once('\n').unwrap_or((&ledger, ""));
            out += &format!("{heading}:\n{rest}");
        }
    }
    out
}

pub async fn run(target: &Target, name: &str) -> Result<String> {
    let cluster = cluster::connect(target).await?;
    let jobs: Api<TrainingJob> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let tj = jobs
        .get_opt(name)
        .await
        .map_err(|e| cluster::explain(e, "reading the TrainingJob"))?
        .with_context(|| format!("no TrainingJob {name:?} in namespace {:?}: `kubectl frugal report` lists them", cluster.namespace))?;
    let budgets: Api<TrainingBudget> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let view = match budgets.list(&ListParams::default()).await {
        Ok(budgets) => {
            let others = jobs.list(&ListParams::default()).await.map_err(|e| cluster::explain(e, "listing TrainingJobs"))?;
            budget_view(&tj, &budgets.items, &others.items, &Time(Timestamp::now()))
        }
        Err(kube::Error::Api(s)) if s.code == 403 => BudgetView::Unreadable(format!("cannot list TrainingBudgets: {}", s.message)),
        Err(e) => return Err(cluster::explain(e, "listing TrainingBudgets")),
    };
    Ok(text(&tj, &view))
}

#[cfg(test)]
mod tests;
