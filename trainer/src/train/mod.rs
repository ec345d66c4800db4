//! Training: the single-process trainer, the run loop every parallelism shares, the optimizer,
//! mixed precision and the FLOP and parameter counts behind MFU.

pub mod flops;
pub mod optim;
pub mod precision;
pub mod run;
pub mod trainer;

pub use run::{Engine, StepReport, Stop};
pub use trainer::{Trainer, pick_device};
