//! How any model learns: the optimizer, mixed precision and the FLOP and parameter counts behind
//! MFU. The run loop that drives a worker through them is `parallel/run.rs`.

pub mod flops;
pub mod optim;
pub mod precision;
