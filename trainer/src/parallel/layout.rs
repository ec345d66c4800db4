//! How a job's model splits into pipeline stages: contiguous ranges of blocks balanced by the
//! planner's cost model, the embedding on the first stage, the head and loss on the last. Each
//! stage then holds that slice of the one model ([`crate::model::gpt::Gpt::build_slice`]).

use crate::config::ModelConfig;
use frugal_api::contract::StageLayout;
use frugal_api::planner::partition_layers;

/// The stages of a `stages`-way pipeline over `model`, split by the planner's cost model.
pub fn layouts(model: &ModelConfig, stages: usize) -> Vec<StageLayout> {
    let ranges = partition_layers(model, stages as i64);
    let n = ranges.len();
    ranges.into_iter().enumerate().map(|(i, layers)| StageLayout { index: i as i64, layers, embedding: i == 0, head: i + 1 == n }).collect()
}
