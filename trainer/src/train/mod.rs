//! How any model learns: the run loop every worker drives, the optimizer, mixed precision and
//! the FLOP and parameter counts behind MFU.

pub mod flops;
pub mod optim;
pub mod precision;
pub mod run;

pub use run::{StepReport, Stop};
