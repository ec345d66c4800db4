//! Limits the job must stay within: GPUs at once, GPU-hours, cost, and a shared TrainingBudget.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Limits the job must stay within. All may change while the job runs.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BudgetSpec {
    /// Most GPUs the job may hold at once. The operator also applies its own ceiling (4 unless
    /// configured otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("budget.maxGpus must be at least 1: a job needs a GPU to run; remove maxGpus or raise it"))]
    pub max_gpus: Option<i32>,
    /// Most GPU-hours the job may spend; it stops with a checkpoint when they are spent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub max_gpu_hours: Option<f64>,
    /// Most the job may cost, in the TrainingBudget's currency (USD without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub max_cost: Option<f64>,
    /// A TrainingBudget in the same namespace whose limits this job also counts against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub budget_ref: Option<String>,
}
