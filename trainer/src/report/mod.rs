//! What a run reports, and to whom: typed run events ([`event`]), the terminal or JSON-lines
//! output ([`output`]), the TrainingJob status in a pod ([`status`]) with its percentage and
//! expected end ([`eta`]), Prometheus metrics
//! ([`metrics`]), the final summary and its report file ([`summary`]) and the table comparing
//! runs ([`compare`]). Each consumes the same events and values.

pub mod compare;
pub mod eta;
pub mod event;
pub mod metrics;
pub mod output;
pub mod status;
pub mod summary;

pub use output::Reporter;
pub use summary::{Provenance, Summary, TIMING_FIELDS, TargetOutcome, human};
