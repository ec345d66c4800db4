//! The charge stage: what the job's pods spent and what it holds of its budget. It bills the
//! pods (`bill`), has the run policy decide knowing what they spent (the job's own limits), and
//! writes the job's entry in its TrainingBudget's ledger before any child is created: the
//! decision goes on, waits for the budget (Queued), or becomes a stop when the budget's period is
//! spent.

use frugal_api::TrainingJob;
use frugal_api::planner::Plan;
use frugal_api::v1alpha1::{BudgetSpec, CostStatus, PricedFrom, TrainingJobStatus};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use tracing::debug;

use super::admit::{self, AdmitError};
use super::error::Error;
use super::lifecycle::{self, Decision, Spending};
use super::observe::AttemptView;
use super::plan::PlannedJob;
use super::{Context, bill, now};
use crate::metrics::AdmissionLabels;
use crate::training_budget::budget::{Demand, Wait};
use crate::training_budget::ledger::{self, Admission};

/// What the charge stage found.
pub enum Charged {
    /// The job's bill, and the run policy's decision to carry out.
    Go { cost: CostStatus, decision: Decision },
    /// The job's bill; its budget has no room for it yet (a change of the budget wakes it).
    Wait { cost: CostStatus, wait: Wait },
}

/// Bills the job's pods, lets `decide` pick the run policy's next step knowing what they spent,
/// and settles the job's entry in its budget, if it is counted in one.
pub async fn charge(
    tj: &TrainingJob,
    ctx: &Context,
    planned: &PlannedJob,
    attempts: &[AttemptView],
    prev: &TrainingJobStatus,
    decide: impl FnOnce(Spending) -> Decision,
) -> Result<Charged, Error> {
    let budget = counted_in(tj, ctx, admit::gates(attempts))?;
    let cost = bill_pods(tj, ctx, budget.as_deref(), &planned.plan, attempts, prev).await?;
    let mut decision = decide(spending(&planned.valid.spec.budget, &cost, &planned.plan));
    // the budget's ledger is written before any child is created
    if let Some(name) = budget.as_deref() {
        let demand = admit::demand(&decision, attempts);
        let gpus = admit::held_gpus(planned.plan.gpus, planned.valid.queue.is_some(), demand, attempts);
        let claim = admit::budget_claim(tj, gpus, planned.plan.estimated_gpu_hours, Some(&cost));
        let settled = ledger::settle(&ctx.client, &planned.valid.names.namespace, name, &claim, demand).await;
        count_decision(ctx, &planned.valid.names.namespace, name, demand, &settled);
        match settled? {
            Admission::Go => {}
            Admission::Wait(wait) => return Ok(Charged::Wait { cost, wait }),
            Admission::SpentOut(w) => {
                if let Some(stop) = lifecycle::stop_for_budget(&decision, attempts, &w.message) {
                    decision = stop;
                }
            }
        }
    }
    Ok(Charged::Go { cost, decision })
}

/// Counts what budget `budget`'s ledger decided (`frugal_budget_admission_decisions_total`): on
/// a job asking to start, and on a live attempt its spent period stops.
fn count_decision(ctx: &Context, namespace: &str, budget: &str, demand: Demand, settled: &Result<Admission, ledger::SettleError>) {
    let (outcome, reason) = match (demand, settled) {
        (Demand::Start, Ok(Admission::Go)) => ("admitted", ""),
        (_, Ok(Admission::Wait(w))) => ("queued", w.reason),
        (_, Ok(Admission::SpentOut(w))) => ("stopped", w.reason),
        (_, Err(ledger::SettleError::TooSmall(_))) => ("refused", crate::conditions::reasons::BUDGET_TOO_SMALL),
        _ => return,
    };
    let labels = AdmissionLabels { namespace: namespace.into(), budget: budget.into(), outcome, reason };
    ctx.metrics.admissions.get_or_create(&labels).inc();
}

/// The job's own limits against what its pods were billed, and its rate while it runs.
fn spending(budget: &BudgetSpec, cost: &CostStatus, plan: &Plan) -> Spending {
    let finite = |x: f64| if x.is_finite() { x } else { 0.0 };
    Spending {
        gpu_hours: finite(cost.gpu_hours),
        cost: finite(cost.cost),
        max_gpu_hours: budget.max_gpu_hours,
        max_cost: budget.max_cost,
        gpus: plan.gpus as f64,
        price_per_gpu_hour: plan.price_per_gpu_hour(),
    }
}

/// Bills the job's pods this pass (see `bill`). A pod is priced once, the first time it is
/// billed: at the job's budget's price (else the GPU table's) for the GPU type its node's
/// product label names, else for the job's spec.resources.gpuType.
pub(super) async fn bill_pods(
    tj: &TrainingJob,
    ctx: &Context,
    budget: Option<&str>,
    plan: &Plan,
    attempts: &[AttemptView],
    prev: &TrainingJobStatus,
) -> Result<CostStatus, Error> {
    // a cache behind this process's own last write would bill a pod's end backwards
    if ctx.stale_bill(&tj.uid().unwrap_or_default(), prev) {
        return Err(Error::StaleCache);
    }
    let seen: Vec<bill::AttemptSeen> = attempts.iter().map(|a| a.billed.clone()).collect();
    let known = |p: &bill::PodSeen| prev.cost.iter().flat_map(|c| &c.pods).any(|r| r.name == p.name && r.attempt == p.attempt);
    let new_pods: Vec<&bill::PodSeen> = seen.iter().flat_map(|a| &a.pods).filter(|p| p.scheduled.is_some() && p.gpus > 0 && !known(p)).collect();
    // prices and currency from the budgets' cache: no request to the API server
    let namespace = tj.namespace().unwrap_or_default();
    let budget = budget.and_then(|name| ctx.budgets.get(&ObjectRef::new(name).within(&namespace)));
    let mut products = std::collections::HashMap::new();
    for node in new_pods.iter().filter_map(|p| p.node.clone()) {
        products.insert(node.clone(), gpu_product(ctx, &node).await);
    }
    let job_type = tj.spec.resources.gpu_type.clone();
    let price = |pod: &bill::PodSeen| {
        let product = pod.node.as_ref().and_then(|n| products.get(n).cloned().flatten());
        let (gpu_type, priced_from) = match product.as_deref().and_then(frugal_api::planner::gpu_type_of_product) {
            Some(g) => (g.name.to_string(), PricedFrom::NodeLabel),
            None => (job_type.clone(), PricedFrom::JobSpec),
        };
        let per_gpu_hour = match &budget {
            Some(b) => crate::training_budget::budget::price(&b.spec, &gpu_type),
            None => frugal_api::planner::gpu_type(&gpu_type).map_or(0.0, |g| g.usd_per_hour),
        };
        bill::Price { gpu_type, priced_from, per_gpu_hour }
    };
    let currency = budget.as_ref().map_or_else(|| plan.currency.clone(), |b| b.spec.currency.clone());
    let target = prev.quality.as_ref().and_then(|q| q.target_reached_time.as_ref());
    Ok(bill::bill(prev.cost.as_ref(), &seen, price, &currency, target, &now()))
}

/// The `nvidia.com/gpu.product` label of node `name`, read once and remembered. A node that
/// cannot be read (the operator's identity may not read nodes) has none.
async fn gpu_product(ctx: &Context, name: &str) -> Option<String> {
    if let Some(known) = ctx.gpu_products.lock().unwrap().get(name) {
        return known.clone();
    }
    let api: Api<k8s_openapi::api::core::v1::Node> = Api::all(ctx.client.clone());
    let product = match api.get_metadata_opt(name).await {
        Ok(node) => node.and_then(|n| n.labels().get(bill::GPU_PRODUCT_LABEL).cloned()),
        Err(e) => {
            debug!(node = name, "reading the node's GPU product label: {e}");
            None
        }
    };
    ctx.gpu_products.lock().unwrap().insert(name.to_string(), product.clone());
    product
}

/// The budget the job is counted in (see `training_budget::effective_budget`); naming another
/// than its namespace's default is a permanent error when an attempt is to start.
fn counted_in(tj: &TrainingJob, ctx: &Context, starting: bool) -> Result<Option<String>, Error> {
    let namespace = tj.namespace().unwrap_or_default();
    let default = crate::training_budget::namespace_default(&namespace, &ctx.budgets.state());
    // a live attempt is counted in the default (one that appeared while it ran); the next start
    // is refused
    frugal_api::admission::counted_in(&namespace, default, tj.spec.budget.budget_ref.clone(), starting).map_err(|e| AdmitError::from(e).into())
}

/// A finished job holds nothing: its entry goes, with what it spent (the pass that finished it
/// released it already, unless that pass was cut short).
pub async fn release_finished(tj: &TrainingJob, ctx: &Context, prev: &TrainingJobStatus) -> Result<(), Error> {
    let (Some(name), Some(namespace)) = (crate::training_budget::effective_budget(tj, &ctx.budgets), tj.namespace()) else {
        return Ok(());
    };
    let gpus = prev.plan.as_ref().map_or(0, |p| i64::from(p.gpus));
    ledger::settle(&ctx.client, &namespace, &name, &admit::budget_claim(tj, gpus, 0.0, prev.cost.as_ref()), Demand::Release).await?;
    Ok(())
}
