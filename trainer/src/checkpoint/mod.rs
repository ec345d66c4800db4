//! Checkpoints: a directory per step under the job's checkpoint path, committed by a manifest.

pub mod pipelined;
pub mod single;

pub use single::*;
