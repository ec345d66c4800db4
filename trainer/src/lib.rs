//! frugal-trainer: sparse, mixed-precision GPT training on libtorch.

pub mod attention;
pub mod block;
pub mod checkpoint;
pub mod compare;
pub mod config;
pub mod cuda;
pub mod data;
pub mod eval;
pub mod flops;
pub mod gpt;
pub mod job;
pub mod metrics;
pub mod moe;
pub mod optim;
pub mod params;
pub mod pipeline;
pub mod precision;
pub mod report;
pub mod rng;
pub mod status;
pub mod train;
