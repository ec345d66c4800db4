//! frugal's API: the `TrainingJob` and `TrainingBudget` custom resources, the contract between
//! the operator's pods and the trainer, and the planner that prices a job before it runs.
//!
//! This crate does no I/O and links no libtorch: both the operator and the trainer depend on it.

pub mod contract;
pub mod finite;
pub mod planner;
pub mod v1alpha1;

pub use v1alpha1::{TrainingBudget, TrainingJob, TrainingJobSpec};
