//! `TrainingBudget`: a namespace's shared GPU budget that TrainingJobs count against.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::finite::is_not_finite;

/// A GPU budget shared by the TrainingJobs that name it in spec.budget.budgetRef.
// kube's printcolumn(...) arguments repeat their keys, which clippy reads as duplicated attributes
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "frugal.dev",
    version = "v1alpha1",
    kind = "TrainingBudget",
    namespaced,
    status = "TrainingBudgetStatus",
    shortname = "tb",
    category = "frugal",
    doc = "A GPU budget shared by the TrainingJobs that name it in spec.budget.budgetRef.",
    printcolumn(name = "Max-GPUs", type_ = "integer", json_path = ".spec.maxGpus", description = "GPUs the jobs may hold at once"),
    printcolumn(name = "In-Use", type_ = "integer", json_path = ".status.gpusInUse", description = "GPUs held now"),
    printcolumn(name = "GPU-Hours", type_ = "number", json_path = ".status.gpuHoursSpent", description = "GPU-hours spent this period"),
    printcolumn(name = "Cost", type_ = "number", json_path = ".status.costSpent", description = "Cost spent this period"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct TrainingBudgetSpec {
    /// Most GPUs the jobs under this budget may hold at once; jobs past it wait, Queued.
    #[x_kube(validation = Rule::new("self >= 1").message("maxGpus must be at least 1: a budget of no GPUs admits no job; raise it"))]
    pub max_gpus: i32,
    /// Most GPU-hours the jobs may spend per period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub gpu_hours: Option<f64>,
    /// Most the jobs may cost per period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub max_cost: Option<f64>,
    /// The accounting period: `Day`, `Week` or `Month` (30 days), from the budget's creation.
    #[serde(default)]
    pub period: BudgetPeriod,
    /// Currency of maxCost and the prices.
    #[serde(default = "default_currency")]
    #[schemars(length(min = 1, max = 8))]
    pub currency: String,
    /// How a job is admitted against the period's GPU-hours and cost. `LookAhead` (the default):
    /// a job starts only if its plan's estimated GPU-hours and cost fit what is left this period,
    /// after what the jobs already holding the budget are still estimated to spend. `Spend`: a job
    /// starts while the period's spend is below the limits, whatever it is estimated to need.
    #[serde(default)]
    pub admission: BudgetAdmission,
    /// Prices per GPU-hour by GPU type; types not listed use frugal's table.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["gpuType".into()]))]
    pub prices: Vec<GpuPrice>,
    /// The namespace's default budget: every TrainingJob in the namespace is counted in it,
    /// whether or not it names it in spec.budget.budgetRef, and one naming another budget is
    /// refused. Only the operator's and admins' identities may create, change or delete a
    /// default budget (the chart's admission policy). If several are, the oldest is the default.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub namespace_default: bool,
}

fn default_currency() -> String {
    "USD".into()
}

/// How a budget admits jobs against its GPU-hours and cost.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BudgetAdmission {
    /// On the plan's estimate: what a job is estimated to spend must fit what is left.
    #[default]
    LookAhead,
    /// On what is spent: a job starts while the period's spend is below the limits.
    Spend,
}

/// Accounting periods.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BudgetPeriod {
    Day,
    Week,
    #[default]
    Month,
}

/// The price of one GPU-hour of a GPU type.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GpuPrice {
    /// A GPU type, as in TrainingJob spec.resources.gpuType.
    #[schemars(length(min = 1, max = 63))]
    pub gpu_type: String,
    /// Price of one GPU-hour.
    #[schemars(range(min = 0.0))]
    pub per_gpu_hour: f64,
}

/// What the jobs under a budget hold and have spent.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TrainingBudgetStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// GPUs held now.
    #[serde(default)]
    pub gpus_in_use: i32,
    /// GPU-hours spent in the current period.
    #[serde(default, skip_serializing_if = "is_not_finite")]
    pub gpu_hours_spent: f64,
    /// Cost spent in the current period.
    #[serde(default, skip_serializing_if = "is_not_finite")]
    pub cost_spent: f64,
    /// When the current period began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_start: Option<Time>,
    /// Jobs holding GPUs now (the ledger admission writes before it creates a job's pods).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub jobs: Vec<BudgetHolder>,
    /// Standard conditions (Exhausted when a limit is reached).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub conditions: Vec<Condition>,
}

/// A job holding GPUs under a budget: one entry of the ledger the operator keeps in the status.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BudgetHolder {
    /// The TrainingJob's name.
    pub name: String,
    /// The TrainingJob's uid: a job deleted and created again under the same name is another job.
    #[serde(default)]
    pub uid: String,
    /// GPUs it holds.
    pub gpus: i32,
    /// The job's own status.cost.gpuHours already counted into gpuHoursSpent.
    #[serde(default, skip_serializing_if = "is_not_finite")]
    pub gpu_hours_counted: f64,
    /// The job's own status.cost.cost already counted into costSpent.
    #[serde(default, skip_serializing_if = "is_not_finite")]
    pub cost_counted: f64,
    /// When it was admitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admitted_at: Option<Time>,
    /// What holds the entry: a TrainingJob (the default, left out), or a Kueue Workload that the
    /// `frugal.dev/budget` admission check admitted (a Job, JobSet, PyTorchJob, ...), named by
    /// the Workload's name and uid.
    #[serde(default, skip_serializing_if = "HolderKind::is_training_job")]
    pub kind: HolderKind,
    /// GPU-hours its plan estimated at admission (what look-ahead admission holds back for it).
    #[serde(default, skip_serializing_if = "is_not_positive")]
    pub estimated_gpu_hours: f64,
    /// Cost its plan estimated at admission, at the budget's prices.
    #[serde(default, skip_serializing_if = "is_not_positive")]
    pub estimated_cost: f64,
}

/// What holds a ledger entry.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum HolderKind {
    /// A frugal TrainingJob.
    #[default]
    TrainingJob,
    /// A Kueue Workload (of any kind of job) decided by the `frugal.dev/budget` admission check.
    Workload,
}

impl HolderKind {
    pub fn is_training_job(&self) -> bool {
        *self == HolderKind::TrainingJob
    }
}

fn is_not_positive(v: &f64) -> bool {
    !(v.is_finite() && *v > 0.0)
}
