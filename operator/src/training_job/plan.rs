//! The plan stage: the planner's estimate for a valid job, the trainer configuration rendered from
//! it, and the one plan result that is a permanent error: stages that cannot fit their GPU
//! (`frugal_api::admission::fits_gpu`).

use frugal_api::admission::{self, GpuMemory};
use frugal_api::contract::{JobRef, TrainerConfig};
use frugal_api::planner::{self, Plan, PlanError, PlanOptions};

use super::validate::ValidJob;
use crate::conditions::reasons;

/// A valid job with its plan and its rendered trainer configuration.
#[derive(Debug, Clone)]
pub struct PlannedJob {
    pub valid: ValidJob,
    pub plan: Plan,
    /// `TrainerConfig` YAML, the ConfigMap's content.
    pub trainer_config: String,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanStageError {
    #[error("{0}")]
    Plan(String),
    #[error(transparent)]
    GpuMemory(#[from] GpuMemory),
}

impl PlanStageError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Plan(_) => reasons::PLAN_FAILED,
            Self::GpuMemory(_) => reasons::GPU_MEMORY_EXCEEDED,
        }
    }
}

impl From<PlanError> for PlanStageError {
    fn from(e: PlanError) -> Self {
        Self::Plan(e.to_string())
    }
}

pub fn plan(valid: &ValidJob, options: &PlanOptions) -> Result<PlannedJob, PlanStageError> {
    let plan = planner::plan(&valid.spec, options)?;
    admission::fits_gpu(&plan, &valid.spec.resources.gpu_type)?;
    let job =
        JobRef { namespace: valid.names.namespace.clone(), name: valid.names.job.clone(), uid: valid.uid.clone(), generation: valid.generation };
    let trainer_config = TrainerConfig::render(job, &valid.spec).map_err(|e| PlanStageError::Plan(e.to_string()))?.to_yaml();
    Ok(PlannedJob { valid: valid.clone(), plan, trainer_config })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Settings;
    use crate::training_job::validate::{tests::training_job, validate};

    #[test]
    fn a_plan_and_its_trainer_config() {
        let valid = validate(&training_job(2), &Settings::default()).unwrap();
        let p = plan(&valid, &PlanOptions::default()).unwrap();
        assert_eq!(p.plan.gpus, 2);
        assert_eq!(p.plan.pods, 2);
        let config = TrainerConfig::from_yaml(&p.trainer_config).unwrap();
        assert_eq!(config.job.uid, "u-1");
        assert_eq!(config.job.generation, 2);
        assert_eq!(config.pipeline.stages.len(), 2);
    }

    #[test]
    fn a_stage_too_big_for_its_gpu_is_permanent_and_names_the_fix() {
        let mut job = training_job(1);
        job.spec.model.custom.as_mut().unwrap().layers = 48;
        job.spec.model.custom.as_mut().unwrap().d_model = 8192;
        job.spec.model.custom.as_mut().unwrap().heads = 64;
        job.spec.model.custom.as_mut().unwrap().seq_len = 4096;
        job.spec.resources.gpu_type = "nvidia-t4-16gb".into();
        let valid = validate(&job, &Settings::default()).unwrap();
        let e = plan(&valid, &PlanOptions::default()).unwrap_err();
        assert_eq!(e.reason(), "GpuMemoryExceeded");
        let m = e.to_string();
        assert!(m.contains("nvidia-t4-16gb") && m.contains("activationCheckpointing") && m.contains("pipelineStages"), "{m}");
    }

    #[test]
    fn an_unknown_gpu_type_is_a_plan_error() {
        let mut job = training_job(1);
        job.spec.resources.gpu_type = "nvidia-z9".into();
        let valid = validate(&job, &Settings::default()).unwrap();
        let e = plan(&valid, &PlanOptions::default()).unwrap_err();
        assert_eq!(e.reason(), "PlanFailed");
        assert!(e.to_string().contains("nvidia-z9"));
    }
}
