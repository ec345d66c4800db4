//! The metrics of money, read from the durable records at scrape time: what was billed (the
//! jobs' `status.cost.pods`), what each budget holds and has spent (its ledger), which jobs wait
//! on a budget, and the jobs by phase and reason.
//!
//! The billed counters are sums of the per-pod bills in the TrainingJobs' statuses, which only
//! ever grow (`training_job/bill.rs`), plus the bills of deleted jobs, which each job's finalizer
//! adds to a ConfigMap before the job goes ([`super::folded`]). A restarted operator reads back
//! the same records and exports the same totals, never less: the counters survive restarts
//! because their sources do, not because the process remembers them. What a process does
//! remember is a job moved to another budget, which takes its bill from one series to another:
//! [`Billed`] keeps the old series where it was for the rest of the process's life, and a restart
//! shows that series lower once, which Prometheus takes as a reset (`docs/operator.md`, Metrics).
//!
//! Labels are bounded: namespace and budget (as many as there are TrainingBudgets, plus `""` for
//! jobs in none), GPU type (frugal's GPU table, `other` for anything else, `unknown` for bills
//! folded before they kept their type), currency (the budgets'), phase (six) and reason
//! ([`reasons::JOB`], `Other` for anything else). No label names a job.

use std::collections::BTreeMap;

use frugal_api::v1alpha1::{CostStatus, Phase, TrainingJobStatus};
use frugal_api::{TrainingBudget, TrainingJob};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::conditions::{reasons, types};

/// Where a bill goes: one series of the billed counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct BilledLabels {
    pub namespace: String,
    /// The TrainingBudget the job is counted in (`""` for none).
    pub budget: String,
    pub gpu_type: String,
    /// The bill's currency (the budget's, else USD): costs in different currencies never add.
    pub currency: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct BudgetLabels {
    pub namespace: String,
    pub budget: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct BudgetCostLabels {
    pub namespace: String,
    pub budget: String,
    pub currency: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct WaitingLabels {
    pub namespace: String,
    pub budget: String,
    /// BudgetExhausted or BudgetNotFound.
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct PhaseReasonLabels {
    pub phase: String,
    pub reason: String,
}

/// GPU-seconds and cost.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Amount {
    pub gpu_seconds: f64,
    pub cost: f64,
}

impl Amount {
    fn add(&mut self, other: Amount) {
        self.gpu_seconds += other.gpu_seconds;
        self.cost += other.cost;
    }
}

/// One budget's ledger as the gauges show it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BudgetGauges {
    pub currency: String,
    pub spent: Amount,
    /// spec.gpuHours in GPU-seconds and spec.maxCost, where set.
    pub limit_gpu_seconds: Option<f64>,
    pub limit_cost: Option<f64>,
    pub gpus_held: i64,
    pub gpus_limit: i64,
    /// When the current period began, in seconds since the epoch.
    pub period_start: Option<f64>,
}

/// Jobs waiting on one budget for one reason.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Waiting {
    pub jobs: i64,
    /// How long the longest-waiting of them has been Queued.
    pub oldest_seconds: f64,
}

/// What the caches say at one scrape.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Each job's bill by where it goes (keyed by the job's uid too, for [`Billed`]).
    pub bills: BTreeMap<(BilledLabels, String), Amount>,
    pub budgets: BTreeMap<BudgetLabels, BudgetGauges>,
    pub waiting: BTreeMap<WaitingLabels, Waiting>,
    pub jobs: BTreeMap<PhaseReasonLabels, i64>,
}

const PHASES: [Phase; 6] = [Phase::Pending, Phase::Queued, Phase::Running, Phase::Suspended, Phase::Succeeded, Phase::Failed];

/// A GPU type as a label value: one of frugal's table, else `other` (or `unknown` for none).
fn gpu_type_label(gpu_type: &str) -> String {
    match gpu_type {
        "" => "unknown".into(),
        t if frugal_api::planner::gpu_type(t).is_some() => t.into(),
        _ => "other".into(),
    }
}

fn reason_label(status: &TrainingJobStatus) -> String {
    let ready = status.conditions.iter().find(|c| c.type_ == types::READY);
    match ready.map(|c| c.reason.as_str()) {
        None => String::new(),
        Some(r) if reasons::JOB.contains(&r) => r.into(),
        Some(_) => "Other".into(),
    }
}

/// Reads the snapshot from the TrainingJobs and TrainingBudgets in the caches at `now`.
pub fn snapshot<'a>(jobs: impl IntoIterator<Item = &'a TrainingJob>, budgets: &[&TrainingBudget], now: Timestamp) -> Snapshot {
    let mut s = Snapshot::default();
    for p in PHASES {
        // every phase is a series, 0 when no job is in it
        s.jobs.insert(PhaseReasonLabels { phase: format!("{p:?}"), reason: String::new() }, 0);
    }
    for b in budgets {
        let status = b.status.clone().unwrap_or_default();
        let labels = BudgetLabels { namespace: b.namespace().unwrap_or_default(), budget: b.name_any() };
        // a budget no job waits on shows 0 (a wait for a missing budget has no budget to show)
        let none_waiting =
            WaitingLabels { namespace: labels.namespace.clone(), budget: labels.budget.clone(), reason: reasons::BUDGET_EXHAUSTED.into() };
        s.waiting.insert(none_waiting, Waiting::default());
        s.budgets.insert(
            labels,
            BudgetGauges {
                currency: b.spec.currency.clone(),
                spent: Amount { gpu_seconds: finite(status.gpu_hours_spent) * 3600.0, cost: finite(status.cost_spent) },
                limit_gpu_seconds: b.spec.gpu_hours.map(|h| h * 3600.0),
                limit_cost: b.spec.max_cost,
                gpus_held: status.gpus_in_use.into(),
                gpus_limit: b.spec.max_gpus.into(),
                period_start: status.period_start.map(|t| t.0.as_second() as f64),
            },
        );
    }
    let no_status = TrainingJobStatus::default();
    // each namespace's default budget, looked up once
    let mut defaults = std::collections::HashMap::new();
    for tj in jobs {
        let namespace = tj.namespace().unwrap_or_default();
        let status = tj.status.as_ref().unwrap_or(&no_status);
        let phase = status.phase.unwrap_or(Phase::Pending);
        let reason = reason_label(status);
        *s.jobs.entry(PhaseReasonLabels { phase: format!("{phase:?}"), reason: reason.clone() }).or_default() += 1;
        // the budget a job is counted in: its namespace's default, else the one it names
        let default = defaults
            .entry(namespace.clone())
            .or_insert_with(|| frugal_api::admission::namespace_default(&namespace, budgets.iter().copied()))
            .clone();
        let budget = budget_label(tj, default);
        if let Some(cost) = &status.cost {
            for (labels, amount) in bills_of(&namespace, &budget, cost) {
                s.bills.entry((labels, tj.uid().unwrap_or_default())).or_default().add(amount);
            }
        }
        let queued = status.conditions.iter().find(|c| c.type_ == types::QUEUED && c.status == "True");
        if let (Phase::Queued, Some(queued), reasons::BUDGET_EXHAUSTED | reasons::BUDGET_NOT_FOUND) = (phase, queued, reason.as_str()) {
            let waited = (now.as_second() - queued.last_transition_time.0.as_second()).max(0) as f64;
            let w = s.waiting.entry(WaitingLabels { namespace: namespace.clone(), budget, reason }).or_default();
            w.jobs += 1;
            w.oldest_seconds = w.oldest_seconds.max(waited);
        }
    }
    s
}

/// A job's bill `cost`, in the series it adds to: one entry a pod record.
pub fn bills_of(namespace: &str, budget: &str, cost: &CostStatus) -> Vec<(BilledLabels, Amount)> {
    cost.pods
        .iter()
        .map(|pod| {
            let labels = BilledLabels {
                namespace: namespace.into(),
                budget: budget.into(),
                gpu_type: gpu_type_label(&pod.gpu_type),
                currency: cost.currency.clone(),
            };
            (labels, Amount { gpu_seconds: finite(pod.gpu_hours) * 3600.0, cost: finite(pod.cost) })
        })
        .collect()
}

/// The budget whose series a job's bill goes to: its namespace's default, else the one it names
/// (`""` for none), as [`snapshot`] counts it.
pub fn counted_budget(tj: &TrainingJob, budgets: &[&TrainingBudget]) -> String {
    let namespace = tj.namespace().unwrap_or_default();
    budget_label(tj, frugal_api::admission::namespace_default(&namespace, budgets.iter().copied()))
}

/// The budget label of `tj`, given its namespace's `default` budget.
fn budget_label(tj: &TrainingJob, default: Option<String>) -> String {
    default.or_else(|| tj.spec.budget.budget_ref.clone()).unwrap_or_default()
}

fn finite(x: f64) -> f64 {
    if x.is_finite() { x } else { 0.0 }
}

/// How long a folded job's uid is kept in the record.
pub const KEEP_UIDS_SECONDS: i64 = 3600;

/// The record of deleted jobs' bills ([`super::folded`]) as the process holds it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Folded {
    /// What the bills of deleted jobs add up to, by series.
    pub totals: BTreeMap<BilledLabels, Amount>,
    /// The jobs whose bills are in `totals`, folded in the last hour: uid → when, in seconds
    /// since the epoch.
    pub uids: BTreeMap<String, i64>,
}

impl Folded {
    /// Adds a job's bills at `now` unless they are in already; whether they were added.
    pub fn fold(&mut self, uid: &str, bills: &[(BilledLabels, Amount)], now: i64) -> bool {
        if self.uids.contains_key(uid) {
            return false;
        }
        self.uids.insert(uid.to_string(), now);
        for (labels, amount) in bills {
            self.fold_into(labels.clone(), *amount);
        }
        true
    }

    /// Adds `amount` to the series `labels`.
    pub fn fold_into(&mut self, labels: BilledLabels, amount: Amount) {
        self.totals.entry(labels).or_default().add(amount);
    }

    /// Forgets the uids folded over an hour before `now`: their jobs are long gone.
    pub fn prune(&mut self, now: i64) {
        self.uids.retain(|_, at| *at > now - KEEP_UIDS_SECONDS);
    }
}

/// The billed totals a process exports: the bills of the jobs in the cache, plus the durable
/// record of deleted jobs' bills, plus what bills that left a series without being recorded (a
/// job moved to another budget, or deleted while the record could not be written) had reached,
/// so that no series goes down while the process lives.
#[derive(Debug, Default)]
pub struct Billed {
    /// Each job's bill at the last scrape (jobs not in the record).
    last: BTreeMap<(BilledLabels, String), Amount>,
    /// What bills no longer in their series, and not in the record, had reached.
    gone: BTreeMap<BilledLabels, Amount>,
    /// The totals last exported.
    exported: BTreeMap<BilledLabels, Amount>,
}

impl Billed {
    /// The totals after `bills` and the record `folded`, each series at least what it was last
    /// exported at. A job whose bill is in the record counts there, not in `bills` as well.
    pub fn observe(&mut self, bills: &BTreeMap<(BilledLabels, String), Amount>, folded: &Folded) -> BTreeMap<BilledLabels, Amount> {
        let live: BTreeMap<_, _> = bills.iter().filter(|((_, uid), _)| !folded.uids.contains_key(uid)).map(|(k, v)| (k.clone(), *v)).collect();
        for (key, before) in &self.last {
            if folded.uids.contains_key(&key.1) {
                // its bill moved into the record
                continue;
            }
            let now = live.get(key).copied().unwrap_or_default();
            let gone = self.gone.entry(key.0.clone()).or_default();
            gone.gpu_seconds += (before.gpu_seconds - now.gpu_seconds).max(0.0);
            gone.cost += (before.cost - now.cost).max(0.0);
        }
        let mut totals = self.gone.clone();
        for (labels, amount) in folded.totals.iter().chain(live.iter().map(|((labels, _uid), amount)| (labels, amount))) {
            totals.entry(labels.clone()).or_default().add(*amount);
        }
        self.last = live;
        for (labels, total) in &mut totals {
            // sums in another order may differ in the last bit
            let before = self.exported.get(labels).copied().unwrap_or_default();
            total.gpu_seconds = total.gpu_seconds.max(before.gpu_seconds);
            total.cost = total.cost.max(before.cost);
        }
        self.exported = totals.clone();
        totals
    }
}

/// The series of one scrape, ready to encode.
#[derive(Debug, Default)]
pub struct Exposition {
    pub billed: BTreeMap<BilledLabels, Amount>,
    pub snapshot: Snapshot,
}

fn family<L: EncodeLabelSet, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    series: impl IntoIterator<Item = (L, M)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in series {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// The series of the last scrape, which the registry encodes.
#[derive(Debug, Default)]
pub struct Scraped(std::sync::Mutex<Exposition>);

impl Scraped {
    pub fn set(&self, exposition: Exposition) {
        *self.0.lock().unwrap() = exposition;
    }
}

impl Collector for Scraped {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let x = self.0.lock().unwrap();
        let (s, billed) = (&x.snapshot, &x.billed);
        let counter = MetricType::Counter;
        let gauge = MetricType::Gauge;
        // GPU-seconds have no currency: a budget whose currency changed has two bills to add
        let mut gpu_seconds = BTreeMap::<BudgetTypeLabels, f64>::new();
        for (l, a) in billed {
            *gpu_seconds.entry(BudgetTypeLabels::of(l)).or_default() += a.gpu_seconds;
        }
        family(
            &mut e,
            "frugal_billed_gpu_seconds",
            "GPU-seconds billed from the jobs' pods (status.cost), by namespace, budget and GPU type",
            counter,
            gpu_seconds.into_iter().map(|(l, s)| (l, ConstCounter::new(s))),
        )?;
        family(
            &mut e,
            "frugal_billed_cost",
            "Cost billed from the jobs' pods (status.cost), in the currency its label names",
            counter,
            billed.iter().map(|(l, a)| (l.clone(), ConstCounter::new(a.cost))),
        )?;
        let budgets = &s.budgets;
        family(
            &mut e,
            "frugal_budget_spent_gpu_seconds",
            "GPU-seconds a TrainingBudget's jobs spent this period (status.gpuHoursSpent)",
            gauge,
            budgets.iter().map(|(l, b)| (l.clone(), ConstGauge::new(b.spent.gpu_seconds))),
        )?;
        family(
            &mut e,
            "frugal_budget_limit_gpu_seconds",
            "GPU-seconds a TrainingBudget allows per period (spec.gpuHours), where set",
            gauge,
            budgets.iter().filter_map(|(l, b)| Some((l.clone(), ConstGauge::new(b.limit_gpu_seconds?)))),
        )?;
        family(
            &mut e,
            "frugal_budget_spent_cost",
            "Cost a TrainingBudget's jobs spent this period (status.costSpent), in its currency",
            gauge,
            budgets.iter().map(|(l, b)| (cost_labels(l, b), ConstGauge::new(b.spent.cost))),
        )?;
        family(
            &mut e,
            "frugal_budget_limit_cost",
            "Cost a TrainingBudget allows per period (spec.maxCost), where set",
            gauge,
            budgets.iter().filter_map(|(l, b)| Some((cost_labels(l, b), ConstGauge::new(b.limit_cost?)))),
        )?;
        family(
            &mut e,
            "frugal_budget_gpus_held",
            "GPUs a TrainingBudget's jobs hold now (status.gpusInUse)",
            gauge,
            budgets.iter().map(|(l, b)| (l.clone(), ConstGauge::new(b.gpus_held))),
        )?;
        family(
            &mut e,
            "frugal_budget_gpus_limit",
            "GPUs a TrainingBudget's jobs may hold at once (spec.maxGpus)",
            gauge,
            budgets.iter().map(|(l, b)| (l.clone(), ConstGauge::new(b.gpus_limit))),
        )?;
        family(
            &mut e,
            "frugal_budget_period_start_timestamp_seconds",
            "When a TrainingBudget's current period began (status.periodStart)",
            gauge,
            budgets.iter().filter_map(|(l, b)| Some((l.clone(), ConstGauge::new(b.period_start?)))),
        )?;
        family(
            &mut e,
            "frugal_budget_waiting_jobs",
            "TrainingJobs Queued on a budget, by reason (BudgetExhausted, BudgetNotFound)",
            gauge,
            s.waiting.iter().map(|(l, w)| (l.clone(), ConstGauge::new(w.jobs))),
        )?;
        family(
            &mut e,
            "frugal_budget_oldest_wait_seconds",
            "How long the longest-waiting TrainingJob Queued on a budget has waited, by reason",
            gauge,
            s.waiting.iter().map(|(l, w)| (l.clone(), ConstGauge::new(w.oldest_seconds))),
        )?;
        family(
            &mut e,
            "frugal_operator_training_jobs",
            "TrainingJobs by phase and the reason of their Ready condition",
            gauge,
            s.jobs.iter().map(|(l, n)| (l.clone(), ConstGauge::new(*n))),
        )?;
        Ok(())
    }
}

/// The labels of the GPU-seconds counter: a bill's without its currency.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct BudgetTypeLabels {
    namespace: String,
    budget: String,
    gpu_type: String,
}

impl BudgetTypeLabels {
    fn of(l: &BilledLabels) -> Self {
        Self { namespace: l.namespace.clone(), budget: l.budget.clone(), gpu_type: l.gpu_type.clone() }
    }
}

fn cost_labels(l: &BudgetLabels, b: &BudgetGauges) -> BudgetCostLabels {
    BudgetCostLabels { namespace: l.namespace.clone(), budget: l.budget.clone(), currency: b.currency.clone() }
}

/// Fixtures of jobs and budgets, for the tests here and the registry's.
#[cfg(test)]
pub mod tests_support {
    use super::*;
    use frugal_api::v1alpha1::{CostStatus, PodCost, PricedFrom, TrainingBudgetStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    pub fn t(s: i64) -> Time {
        Time(Timestamp::from_second(s).unwrap())
    }

    pub fn budget(name: &str, default: bool) -> TrainingBudget {
        let mut b: TrainingBudget = serde_saphyr::from_str(&format!(
            "apiVersion: frugal.dev/v1alpha1\nkind: TrainingBudget\nmetadata: {{name: {name}, namespace: ml}}\nspec: {{maxGpus: 4, gpuHours: 10, maxCost: 40, currency: EUR, namespaceDefault: {default}}}\n"
        ))
        .unwrap();
        b.metadata.creation_timestamp = Some(t(0));
        b.status =
            Some(TrainingBudgetStatus { gpus_in_use: 2, gpu_hours_spent: 0.5, cost_spent: 2.0, period_start: Some(t(100)), ..Default::default() });
        b
    }

    pub fn record(gpu_type: &str, gpu_hours: f64, price: f64) -> PodCost {
        PodCost {
            name: "p".into(),
            attempt: 1,
            gpus: 1,
            gpu_type: gpu_type.into(),
            priced_from: PricedFrom::JobSpec,
            price_per_gpu_hour: price,
            gpu_hours,
            cost: gpu_hours * price,
            from: t(0),
            until: t(1),
            ended: false,
        }
    }

    pub fn job(name: &str, budget: Option<&str>, pods: Vec<PodCost>) -> TrainingJob {
        let mut tj = TrainingJob::test().name(name).namespace("ml").uid(&format!("uid-{name}")).build();
        tj.spec.budget.budget_ref = budget.map(Into::into);
        let status = tj.status.get_or_insert_with(Default::default);
        status.phase = Some(Phase::Running);
        status.cost = Some(CostStatus { currency: "EUR".into(), pods, ..Default::default() });
        tj
    }

    pub fn queued(mut tj: TrainingJob, reason: &str, since: i64) -> TrainingJob {
        let status = tj.status.get_or_insert_with(Default::default);
        status.phase = Some(Phase::Queued);
        for type_ in [types::READY, types::QUEUED] {
            status.conditions.push(Condition {
                type_: type_.into(),
                status: if type_ == types::QUEUED { "True" } else { "False" }.into(),
                reason: reason.into(),
                message: String::new(),
                last_transition_time: t(since),
                observed_generation: None,
            });
        }
        tj
    }

    /// Budget `team` (4 GPUs, 2 held), jobs `a` and `b` billed 1.5 H100-hours under it at
    /// 4 EUR, and `c` waiting on it since 600 s before the snapshot.
    pub fn cluster() -> Snapshot {
        let team = budget("team", false);
        let jobs = [
            job("a", Some("team"), vec![record("nvidia-h100-80gb", 1.0, 4.0)]),
            job("b", Some("team"), vec![record("nvidia-h100-80gb", 0.5, 4.0)]),
            queued(job("c", Some("team"), vec![]), reasons::BUDGET_EXHAUSTED, 400),
        ];
        snapshot(&jobs, &[&team], Timestamp::from_second(1000).unwrap())
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::*;
    use super::*;

    fn labels(budget: &str, gpu_type: &str) -> BilledLabels {
        BilledLabels { namespace: "ml".into(), budget: budget.into(), gpu_type: gpu_type.into(), currency: "EUR".into() }
    }

    #[test]
    fn bills_are_summed_by_budget_and_gpu_type_from_the_pod_records() {
        let team = budget("team", false);
        let jobs = [
            job("a", Some("team"), vec![record("nvidia-h100-80gb", 0.5, 4.0), record("nvidia-l4-24gb", 1.0, 1.0)]),
            job("b", Some("team"), vec![record("nvidia-h100-80gb", 0.25, 4.0)]),
            job("c", None, vec![record("nvidia-h100-80gb", 1.0, 4.0), record("", 1.0, 0.0), record("made-up", 1.0, 0.0)]),
        ];
        let s = snapshot(&jobs, &[&team], Timestamp::from_second(1000).unwrap());
        let totals = Billed::default().observe(&s.bills, &Folded::default());
        assert_eq!(totals[&labels("team", "nvidia-h100-80gb")], Amount { gpu_seconds: 2700.0, cost: 3.0 });
        assert_eq!(totals[&labels("team", "nvidia-l4-24gb")], Amount { gpu_seconds: 3600.0, cost: 1.0 });
        assert_eq!(totals[&labels("", "nvidia-h100-80gb")].gpu_seconds, 3600.0);
        // a GPU type outside frugal's table, or none, is one series each: bounded
        assert_eq!(totals[&labels("", "other")].gpu_seconds, 3600.0);
        assert_eq!(totals[&labels("", "unknown")].gpu_seconds, 3600.0);
        assert_eq!(totals.len(), 5);
    }

    #[test]
    fn a_namespace_default_budget_counts_the_jobs_that_name_none() {
        let default = budget("team", true);
        let jobs = [job("a", None, vec![record("nvidia-h100-80gb", 1.0, 4.0)])];
        let s = snapshot(&jobs, &[&default], Timestamp::from_second(1000).unwrap());
        assert_eq!(s.bills.keys().map(|(l, _)| l.budget.as_str()).collect::<Vec<_>>(), ["team"]);
    }

    #[test]
    fn a_bill_that_leaves_the_cache_stays_counted() {
        let team = budget("team", false);
        let now = Timestamp::from_second(1000).unwrap();
        let mut billed = Billed::default();
        let both =
            [job("a", Some("team"), vec![record("nvidia-h100-80gb", 1.0, 4.0)]), job("b", Some("team"), vec![record("nvidia-h100-80gb", 2.0, 4.0)])];
        let before = billed.observe(&snapshot(&both, &[&team], now).bills, &Folded::default())[&labels("team", "nvidia-h100-80gb")];
        assert_eq!(before, Amount { gpu_seconds: 3.0 * 3600.0, cost: 12.0 });
        // b is deleted, a bills another half hour
        let after = [job("a", Some("team"), vec![record("nvidia-h100-80gb", 1.5, 4.0)])];
        let totals = billed.observe(&snapshot(&after, &[&team], now).bills, &Folded::default());
        assert_eq!(totals[&labels("team", "nvidia-h100-80gb")], Amount { gpu_seconds: 3.5 * 3600.0, cost: 14.0 });
        // a moves to another budget: the team's series keeps what it had, the other starts
        let moved = [job("a", Some("other"), vec![record("nvidia-h100-80gb", 1.5, 4.0)])];
        let totals = billed.observe(&snapshot(&moved, &[&team], now).bills, &Folded::default());
        assert_eq!(totals[&labels("team", "nvidia-h100-80gb")].gpu_seconds, 3.5 * 3600.0);
        assert_eq!(totals[&labels("other", "nvidia-h100-80gb")].gpu_seconds, 1.5 * 3600.0);
    }

    #[test]
    fn a_deleted_jobs_recorded_bill_is_counted_once_and_after_a_restart() {
        let team = budget("team", false);
        let now = Timestamp::from_second(1000).unwrap();
        let h100 = labels("team", "nvidia-h100-80gb");
        let (a, b) =
            (job("a", Some("team"), vec![record("nvidia-h100-80gb", 1.0, 4.0)]), job("b", Some("team"), vec![record("nvidia-h100-80gb", 2.0, 4.0)]));
        let mut billed = Billed::default();
        let mut record = Folded::default();
        let before = billed.observe(&snapshot([&a, &b], &[&team], now).bills, &record)[&h100];
        assert_eq!(before.gpu_seconds, 3.0 * 3600.0);
        // b's finalizer records its bill while b is still in the cache: counted once
        let bill_b = bills_of("ml", &counted_budget(&b, &[&team]), b.status.as_ref().unwrap().cost.as_ref().unwrap());
        record.fold("uid-b", &bill_b, 1000);
        assert_eq!(billed.observe(&snapshot([&a, &b], &[&team], now).bills, &record)[&h100], before);
        // b is gone
        assert_eq!(billed.observe(&snapshot([&a], &[&team], now).bills, &record)[&h100], before);
        // a new process reads the record back: the same total, where without it the series would fall
        let restarted = Billed::default().observe(&snapshot([&a], &[&team], now).bills, &record)[&h100];
        assert_eq!(restarted, before);
        let forgetful = Billed::default().observe(&snapshot([&a], &[&team], now).bills, &Folded::default())[&h100];
        assert_eq!(forgetful.gpu_seconds, 3600.0);
    }

    #[test]
    fn a_restarted_process_exports_the_same_totals_from_the_same_records() {
        let team = budget("team", false);
        let now = Timestamp::from_second(1000).unwrap();
        let jobs: Vec<_> = (0..50).map(|i| job(&format!("j{i}"), Some("team"), vec![record("nvidia-h100-80gb", 0.1 * f64::from(i), 2.7)])).collect();
        let first = Billed::default().observe(&snapshot(&jobs, &[&team], now).bills, &Folded::default());
        let mut reversed = jobs.clone();
        reversed.reverse();
        let restarted = Billed::default().observe(&snapshot(&reversed, &[&team], now).bills, &Folded::default());
        assert_eq!(first, restarted, "the sums do not depend on the cache's order");
    }

    #[test]
    fn budgets_waiting_jobs_and_phases_are_read_from_the_caches() {
        let team = budget("team", false);
        let jobs = [
            job("a", Some("team"), vec![]),
            queued(job("b", Some("team"), vec![]), reasons::BUDGET_EXHAUSTED, 400),
            queued(job("c", Some("team"), vec![]), reasons::BUDGET_EXHAUSTED, 700),
            queued(job("d", Some("gone"), vec![]), reasons::BUDGET_NOT_FOUND, 900),
            queued(job("e", None, vec![]), "a reason nobody wrote", 900),
        ];
        let s = snapshot(&jobs, &[&team], Timestamp::from_second(1000).unwrap());
        let team_labels = BudgetLabels { namespace: "ml".into(), budget: "team".into() };
        let b = &s.budgets[&team_labels];
        assert_eq!((b.spent.gpu_seconds, b.spent.cost, b.limit_gpu_seconds, b.limit_cost), (1800.0, 2.0, Some(36000.0), Some(40.0)));
        assert_eq!((b.gpus_held, b.gpus_limit, b.period_start, b.currency.as_str()), (2, 4, Some(100.0), "EUR"));
        let waiting = |budget: &str, reason: &str| s.waiting[&WaitingLabels { namespace: "ml".into(), budget: budget.into(), reason: reason.into() }];
        assert_eq!(waiting("team", reasons::BUDGET_EXHAUSTED), Waiting { jobs: 2, oldest_seconds: 600.0 });
        assert_eq!(waiting("gone", reasons::BUDGET_NOT_FOUND), Waiting { jobs: 1, oldest_seconds: 100.0 });
        assert_eq!(s.waiting.len(), 2, "a job queued for another reason is not waiting on a budget");
        let idle = snapshot(&[job("a", Some("team"), vec![])], &[&team], Timestamp::from_second(1000).unwrap());
        assert_eq!(idle.waiting.values().collect::<Vec<_>>(), [&Waiting::default()], "a budget nobody waits on shows 0");
        let jobs_in = |phase: &str, reason: &str| s.jobs.get(&PhaseReasonLabels { phase: phase.into(), reason: reason.into() }).copied();
        assert_eq!(jobs_in("Queued", reasons::BUDGET_EXHAUSTED), Some(2));
        assert_eq!(jobs_in("Queued", "Other"), Some(1), "an unknown reason is not a label value");
        assert_eq!(jobs_in("Running", ""), Some(1));
        assert_eq!(jobs_in("Failed", ""), Some(0), "every phase is a series");
    }
}
