//! API version `frugal.dev/v1alpha1`.

mod budget;
pub mod pod_security;
mod spec;
mod status;

pub use budget::*;
pub use spec::*;
pub use status::*;
