//! The operator's own settings (flags of `frugal-operator run`), handed to the stages that need
//! them; no stage reads the environment.

use frugal_api::planner::PlanOptions;

#[derive(Debug, Clone)]
pub struct Settings {
    /// GPUs a single job may hold, whatever its budget says.
    pub max_gpus_per_job: i32,
    /// Trainer image for jobs that set none.
    pub trainer_image: Option<String>,
    /// Trainer image for CPU jobs that set none (else `trainer_image`).
    pub trainer_cpu_image: Option<String>,
    /// Command and arguments of the trainer container.
    pub trainer_command: Vec<String>,
    /// Seconds a stopping pod has to write its checkpoint.
    pub termination_grace_seconds: i64,
    pub plan_options: PlanOptions,
    /// Seconds after which a finished job's attempt Jobs are deleted when it sets no
    /// ttlSecondsAfterFinished (None: kept).
    pub finished_attempt_ttl_seconds: Option<i64>,
    /// The namespace allowed to scrape trainer pods' metrics port (None: any).
    pub metrics_namespace: Option<String>,
    /// The admission policies the chart installed, by name (`--admission-policy`).
    pub admission_policies: Vec<String>,
    /// The ConfigMap that keeps deleted jobs' bills for the billed counters (`--billed-record`;
    /// None: not kept, the counters then read lower after a restart once jobs were deleted).
    pub billed_record: Option<crate::metrics::folded::Location>,
    /// Serve Kueue's AdmissionCheck controller `frugal.dev/budget` (`--kueue-admission-check`).
    pub admission_check: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_gpus_per_job: frugal_api::admission::DEFAULT_MAX_GPUS_PER_JOB,
            trainer_image: None,
            trainer_cpu_image: None,
            trainer_command: vec!["frugal-trainer".into(), "train".into()],
            termination_grace_seconds: 300,
            plan_options: PlanOptions::default(),
            admission_policies: Vec::new(),
            admission_check: false,
            metrics_namespace: None,
            finished_attempt_ttl_seconds: Some(3600),
            billed_record: None,
        }
    }
}
