//! frugal's API: the `TrainingJob` and `TrainingBudget` custom resources, the contract between
//! the operator's pods and the trainer, the planner that prices a job before it runs, what admits
//! or refuses it, and the comparison table of runs.
//!
//! This crate links no libtorch: the operator, the trainer and the kubectl plugin depend on it.
//! It does no I/O but in [`store`], behind the `store` feature, which the operator leaves off.

pub mod admission;
pub mod contract;
pub mod finite;
pub mod planner;
pub mod promql;
pub mod report;
pub mod schema;
#[cfg(feature = "store")]
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod v1alpha1;

pub use v1alpha1::{TrainingBudget, TrainingJob, TrainingJobSpec};
