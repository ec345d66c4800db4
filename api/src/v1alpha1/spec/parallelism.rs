//! How the model is split across GPUs: pipeline stages, micro-batches and data-parallel replicas.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::default_one;

/// Pipeline and data parallelism: the layers are split into stages, one GPU each, and the
/// pipeline is replicated `dataParallel` times; the job runs on pipelineStages × dataParallel GPUs.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("self.pipelineStages % self.gpusPerPod == 0")
        .message("parallelism.pipelineStages must be a multiple of parallelism.gpusPerPod: every pod runs gpusPerPod stages; change one of them"),
    validation = Rule::new("self.pipelineStages * self.dataParallel <= 256")
        .message("parallelism.pipelineStages × parallelism.dataParallel must be at most 256 GPUs: lower one of them"),
    validation = Rule::new("!self.shardOptimizerState || self.dataParallel > 1")
        .message("parallelism.shardOptimizerState needs parallelism.dataParallel of at least 2: the optimizer state is sharded across replicas; raise dataParallel or unset shardOptimizerState"),
)]
#[serde(rename_all = "camelCase")]
pub struct ParallelismSpec {
    /// Pipeline stages of each replica, one GPU each.
    #[serde(default = "default_one")]
    #[schemars(range(min = 1, max = 64))]
    pub pipeline_stages: i32,
    /// `1f1b` (less activation memory) or `gpipe`.
    #[serde(default)]
    pub schedule: PipelineSchedule,
    /// Micro-batches per step of each replica; more shrink the pipeline bubble, (stages − 1) /
    /// (microBatches + stages − 1). With one stage they accumulate gradients.
    #[serde(default = "default_one")]
    #[schemars(range(min = 1, max = 4096))]
    pub micro_batches: i32,
    /// Stages (GPUs) per pod, all of one replica; the job runs pipelineStages / gpusPerPod pods
    /// per replica.
    #[serde(default = "default_one")]
    #[schemars(range(min = 1, max = 16))]
    pub gpus_per_pod: i32,
    /// Replicas of the pipeline (data parallelism). Each trains on its own share of every batch,
    /// batchSize / dataParallel sequences in microBatches micro-batches; gradients are averaged
    /// across replicas every step. The job runs on pipelineStages × dataParallel GPUs.
    #[serde(default = "default_one")]
    #[schemars(range(min = 1, max = 64))]
    pub data_parallel: i32,
    /// Shard the optimizer state across the replicas (ZeRO stage 1): each replica keeps and
    /// updates 1 / dataParallel of it and the updated weights are gathered after every step.
    /// Needs dataParallel ≥ 2.
    #[serde(default)]
    pub shard_optimizer_state: bool,
}

impl Default for ParallelismSpec {
    fn default() -> Self {
        Self {
            pipeline_stages: 1,
            schedule: PipelineSchedule::default(),
            micro_batches: 1,
            gpus_per_pod: 1,
            data_parallel: 1,
            shard_optimizer_state: false,
        }
    }
}

impl ParallelismSpec {
    /// GPUs (or, on CPU jobs, ranks) the job runs on: stages × replicas.
    pub fn ranks(&self) -> i64 {
        i64::from(self.pipeline_stages.max(1)) * i64::from(self.data_parallel.max(1))
    }
}

/// Pipeline schedules.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PipelineSchedule {
    #[default]
    #[serde(rename = "1f1b")]
    OneFOneB,
    #[serde(rename = "gpipe")]
    GPipe,
}
