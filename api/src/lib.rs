//! frugal's API: the `TrainingJob` and `TrainingBudget` custom resources, the contract between
//! the operator's pods and the trainer, the planner that prices a job before it runs, what admits
//! or refuses it, and the comparison table of runs.
//!
//! This crate does no I/O and links no libtorch: both the operator and the trainer depend on it.

pub mod admission;
pub mod contract;
pub mod finite;
pub mod planner;
pub mod promql;
pub mod report;
pub mod schema;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod v1alpha1;

pub use v1alpha1::{TrainingBudget, TrainingJob, TrainingJobSpec};
