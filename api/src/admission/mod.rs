//! What refuses a TrainingJob or makes it wait, as pure functions over its plan and its
//! TrainingBudget: the operator's admission stages decide with them, and `kubectl frugal plan`
//! tells the same before anything is applied. Each refusal names the field to change.
//!
//! Here: stages that do not fit their GPU ([`fits_gpu`]), GPUs above the job's own
//! `budget.maxGpus` or the operator's ceiling ([`within_gpu_limit`]), the budget a job is counted
//! in ([`namespace_default`], [`counted_in`]) and, in [`budget`], admission against that budget's
//! ledger.

pub mod budget;

use crate::TrainingBudget;
use crate::planner::Plan;
use crate::v1alpha1::ParallelismSpec;

/// Kueue's queue label: a TrainingJob that carries it is Kueue's to admit, and holds no GPUs in
/// its budget while Kueue keeps it suspended.
pub const KUEUE_QUEUE_LABEL: &str = "kueue.x-k8s.io/queue-name";

/// Kueue's WorkloadPriorityClass label: a TrainingJob that carries it passes it to its attempt's
/// Job, so Kueue orders and preempts that Workload by it.
pub const KUEUE_PRIORITY_CLASS_LABEL: &str = "kueue.x-k8s.io/priority-class";
/// The operator's `--max-gpus-per-job` unless it is set.
pub const DEFAULT_MAX_GPUS_PER_JOB: i32 = 4;

/// Condition reasons of what is decided here (the operator's `conditions::reasons` has all).
pub mod reasons {
    pub const PLAN_FAILED: &str = "PlanFailed";
    pub const GPU_MEMORY_EXCEEDED: &str = "GpuMemoryExceeded";
    pub const GPU_LIMIT_EXCEEDED: &str = "GpuLimitExceeded";
    pub const BUDGET_TOO_SMALL: &str = "BudgetTooSmall";
    pub const BUDGET_NOT_ALLOWED: &str = "BudgetNotAllowed";
    /// A job waits, Queued, for its budget's GPUs or its next period.
    pub const BUDGET_EXHAUSTED: &str = "BudgetExhausted";
    /// A job waits, Queued, for the budget it names to be created.
    pub const BUDGET_NOT_FOUND: &str = "BudgetNotFound";
    /// The spec cannot work as it is (the operator's condition reason too).
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The trainer would stop before training, its configuration refused (the operator's
    /// condition reason for the trainer's exit 78).
    pub const CONFIGURATION_ERROR: &str = "ConfigurationError";
}

const GIB: f64 = (1u64 << 30) as f64;

/// A stage too big for its GPU: permanent until the spec changes.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "planned memory of {planned:.1} GiB per GPU exceeds the {gpu} GPU's {available:.1} GiB: set spec.training.activationCheckpointing: true, raise spec.parallelism.pipelineStages or spec.parallelism.microBatches, or choose a larger spec.resources.gpuType"
)]
pub struct GpuMemory {
    pub planned: f64,
    pub gpu: String,
    pub available: f64,
}

/// Whether every stage of `plan` fits a `gpu_type` GPU (always on CPU jobs).
pub fn fits_gpu(plan: &Plan, gpu_type: &str) -> Result<(), GpuMemory> {
    if plan.fits() {
        return Ok(());
    }
    Err(GpuMemory { planned: plan.memory_per_device_bytes as f64 / GIB, gpu: gpu_type.into(), available: plan.gpu_memory_bytes as f64 / GIB })
}

/// More GPUs than the job may hold.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("the job needs {gpus} GPUs ({}), above {limit}: lower {}{raise}", layout(*stages, *replicas), lower(*replicas))]
pub struct GpuLimit {
    pub gpus: i64,
    pub stages: i32,
    pub replicas: i32,
    pub limit: String,
    pub raise: &'static str,
}

fn layout(stages: i32, replicas: i32) -> String {
    if replicas > 1 { format!("{stages} pipeline stages × {replicas} replicas") } else { format!("{stages} pipeline stages") }
}

/// The fields that make the GPUs: replicas only where there are some to lower.
fn lower(replicas: i32) -> &'static str {
    if replicas > 1 { "spec.parallelism.pipelineStages or spec.parallelism.dataParallel" } else { "spec.parallelism.pipelineStages" }
}

/// Whether a job laid out as `parallelism`, holding `gpus` (its plan's: stages × replicas, none
/// on CPU), is within its own `spec.budget.maxGpus` (`own`) and the operator's
/// `--max-gpus-per-job` (`ceiling`; `None` where it is not known, as before a job is applied).
pub fn within_gpu_limit(gpus: i64, parallelism: &ParallelismSpec, own: Option<i32>, ceiling: Option<i32>) -> Result<(), GpuLimit> {
    let operators = |ceiling: i32| (format!("the operator's limit of {ceiling} GPUs per job (its --max-gpus-per-job setting)"), "", ceiling);
    let (limit, raise, max) = match (own, ceiling) {
        (Some(own), Some(ceiling)) if own >= ceiling => operators(ceiling),
        (Some(own), _) => (format!("its budget.maxGpus of {own}"), ", or raise spec.budget.maxGpus", own),
        (None, Some(ceiling)) => operators(ceiling),
        (None, None) => return Ok(()),
    };
    if gpus > i64::from(max) {
        let (stages, replicas) = (parallelism.pipeline_stages, parallelism.data_parallel.max(1));
        return Err(GpuLimit { gpus, stages, replicas, limit, raise });
    }
    Ok(())
}

/// A job naming another budget than its namespace's default.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "namespace {namespace:?} has the default TrainingBudget {default:?} (spec.namespaceDefault), which every job there is counted in, but spec.budget.budgetRef names {named:?}: remove spec.budget.budgetRef or set it to {default:?}"
)]
pub struct NotTheDefaultBudget {
    pub namespace: String,
    pub default: String,
    pub named: String,
}

/// The default budget of `namespace`: the oldest of its budgets with spec.namespaceDefault (by
/// creation time, then name), one being deleted left out.
pub fn namespace_default<'a>(namespace: &str, budgets: impl IntoIterator<Item = &'a TrainingBudget>) -> Option<String> {
    budgets
        .into_iter()
        .filter(|b| b.spec.namespace_default && b.metadata.namespace.as_deref() == Some(namespace) && b.metadata.deletion_timestamp.is_none())
        .min_by_key(|b| (b.metadata.creation_timestamp.as_ref().map(|t| t.0), b.metadata.name.clone()))
        .and_then(|b| b.metadata.name.clone())
}

/// The budget a job is counted in: its namespace's `default` if there is one, else the one it
/// `named` in spec.budget.budgetRef. Naming another than the default is refused when an attempt
/// is `starting` (a live attempt is counted in the default).
pub fn counted_in(namespace: &str, default: Option<String>, named: Option<String>, starting: bool) -> Result<Option<String>, NotTheDefaultBudget> {
    match (default, named) {
        (Some(default), Some(named)) if named != default && starting => Err(NotTheDefaultBudget { namespace: namespace.into(), default, named }),
        (default, named) => Ok(default.or(named)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stages(stages: i32, replicas: i32) -> ParallelismSpec {
        ParallelismSpec { pipeline_stages: stages, data_parallel: replicas, ..Default::default() }
    }

    #[test]
    fn gpu_limits_the_job_and_the_operator_set() {
        assert_eq!(within_gpu_limit(8, &stages(8, 1), None, None), Ok(()), "no limit known");
        assert_eq!(within_gpu_limit(4, &stages(4, 1), None, Some(4)), Ok(()));
        let e = within_gpu_limit(8, &stages(8, 1), None, Some(4)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the job needs 8 GPUs (8 pipeline stages), above the operator's limit of 4 GPUs per job (its --max-gpus-per-job setting): lower spec.parallelism.pipelineStages"
        );
        // the job's own maxGpus cannot lift the ceiling, and applies below it
        assert!(within_gpu_limit(8, &stages(8, 1), Some(8), Some(4)).unwrap_err().to_string().contains("operator's limit of 4"));
        let e = within_gpu_limit(4, &stages(4, 1), Some(2), Some(4)).unwrap_err().to_string();
        assert!(e.contains("its budget.maxGpus of 2") && e.contains("or raise spec.budget.maxGpus"), "{e}");
        assert!(within_gpu_limit(4, &stages(4, 1), Some(2), None).is_err(), "the job's own limit is known without the operator's");
    }

    #[test]
    fn replicas_count_in_the_gpus_and_the_fix() {
        let p = stages(2, 4);
        assert_eq!(p.ranks(), 8);
        assert_eq!(within_gpu_limit(8, &p, None, Some(8)), Ok(()));
        let e = within_gpu_limit(8, &p, Some(4), Some(8)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the job needs 8 GPUs (2 pipeline stages × 4 replicas), above its budget.maxGpus of 4: lower spec.parallelism.pipelineStages or spec.parallelism.dataParallel, or raise spec.budget.maxGpus"
        );
        // a CPU job holds no GPUs, however many ranks it runs
        assert_eq!(within_gpu_limit(0, &p, Some(1), Some(1)), Ok(()));
    }

    fn budget(name: &str, default: bool, created: i64) -> TrainingBudget {
        let mut b: TrainingBudget = serde_saphyr::from_str(&format!(
            "apiVersion: frugal.dev/v1alpha1\nkind: TrainingBudget\nmetadata: {{name: {name}, namespace: ml}}\nspec: {{maxGpus: 4, namespaceDefault: {default}}}\n"
        ))
        .unwrap();
        b.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::from_second(created).unwrap()));
        b
    }

    #[test]
    fn the_oldest_default_budget_counts_every_job() {
        let budgets = [budget("team", false, 1), budget("late", true, 20), budget("early", true, 10)];
        assert_eq!(namespace_default("ml", &budgets), Some("early".into()));
        assert_eq!(namespace_default("other", &budgets), None);
        assert_eq!(counted_in("ml", Some("early".into()), None, true), Ok(Some("early".into())));
        assert_eq!(counted_in("ml", None, Some("team".into()), true), Ok(Some("team".into())));
        let e = counted_in("ml", Some("early".into()), Some("team".into()), true).unwrap_err();
        assert!(e.to_string().contains("remove spec.budget.budgetRef or set it to \"early\""), "{e}");
        assert_eq!(counted_in("ml", Some("early".into()), Some("team".into()), false), Ok(Some("early".into())), "a live attempt");
    }
}
