//! frugal-trainer: sparse, mixed-precision GPT training on libtorch.

// On a tch Tensor `a += b` is the in-place `add_`, not `a = a + b`: it would change a tensor
// that autograd or another binding still holds. The long form is kept on purpose.
#![allow(clippy::assign_op_pattern)]

pub mod checkpoint;
pub mod config;
pub mod cuda;
pub mod data;
pub mod distill;
pub mod eval;
pub mod export_store;
pub mod hf;
pub mod inputs;
pub mod job;
pub mod log;
pub mod model;
pub mod parallel;
pub mod params;
pub mod progress;
pub mod quantize;
pub mod report;
pub mod rng;
pub use frugal_api::store;
pub mod train;
