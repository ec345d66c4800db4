//! frugal-trainer: sparse, mixed-precision GPT training on libtorch.

// On a tch Tensor `a += b` is the in-place `add_`, not `a = a + b`: it would change a tensor
// that autograd or another binding still holds. The long form is kept on purpose.
#![allow(clippy::assign_op_pattern)]

pub mod attention;
pub mod block;
pub mod checkpoint;
pub mod compare;
pub mod config;
pub mod cuda;
pub mod data;
pub mod eval;
pub mod event;
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
pub mod summary;
pub mod train;
