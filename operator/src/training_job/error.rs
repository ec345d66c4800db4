//! Errors by layer, and the TrainingJob controller's [`Error`] with a stable category for metrics
//! and conditions. Permanent errors (a spec that can never work as it is) become a condition and
//! wait for the spec to change; the others are retried with backoff.

use super::admit::AdmitError;
use super::plan::PlanStageError;
use super::validate::ValidationError;
use crate::training_budget::ledger::SettleError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Validation(#[from] ValidationError),
    #[error(transparent)]
    Plan(#[from] PlanStageError),
    #[error(transparent)]
    Admit(#[from] AdmitError),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The API server refused a child as invalid: retrying the same spec cannot help.
    #[error("{0}")]
    Rejected(String),
    #[error("the operator's caches closed: it is stopping")]
    CacheClosed,
    /// A child's name is held by an object this job did not make.
    #[error("{0}")]
    NameTaken(String),
    /// A deleted job's pods still run: its finalizer stays until they are gone.
    #[error("deleted; waiting for {pods} pod(s) to stop before releasing its budget")]
    Stopping { pods: usize },
    /// The cache was a moment behind the operator's own write: look again shortly.
    #[error("the cache is behind the operator's own last write; looking again")]
    StaleCache,
    /// The finalizer could not be read or written.
    #[error("the finalizer: {0}")]
    Finalizer(String),
    /// The object does not decode as a TrainingJob (stored through a path that skipped the
    /// CRD's schema, or written for another version of the operator): it waits for a change.
    #[error("the TrainingJob cannot be read: {0}")]
    Undecodable(String),
}

/// The finalizer helper's error, by layer: a pass's own error stays itself.
impl From<kube::runtime::finalizer::Error<Error>> for Error {
    fn from(e: kube::runtime::finalizer::Error<Error>) -> Self {
        use kube::runtime::finalizer::Error as F;
        match e {
            F::ApplyFailed(e) | F::CleanupFailed(e) => e,
            // the finalizer patch tests the finalizers it read: a cache a moment behind our own
            // write (a pass woken before the watch brought it) fails the test, harmlessly
            F::AddFinalizer(kube::Error::Api(s)) | F::RemoveFinalizer(kube::Error::Api(s)) if s.code == 422 || s.code == 409 => Self::StaleCache,
            F::AddFinalizer(e) | F::RemoveFinalizer(e) => Self::Kube(e),
            other => Self::Finalizer(other.to_string()),
        }
    }
}

/// A budget too small for the job is an admission error like the job's own limits.
impl From<SettleError> for Error {
    fn from(e: SettleError) -> Self {
        match e {
            SettleError::Kube(e) => Self::Kube(e),
            SettleError::TooSmall(e) => Self::Admit(e.into()),
        }
    }
}

impl Error {
    /// Every [`Error::category`] that is counted, so that each series of
    /// `reconcile_errors_total` exists from the start (at 0) and a query of it finds it before
    /// the first error. `deleting` and `stale-cache` are not failures (`next_try`: soon, not
    /// counted).
    pub const CATEGORIES: [&str; 9] =
        ["validation", "plan", "admission", "kubernetes", "rejected", "stopping", "name-taken", "finalizer", "undecodable"];

    /// A stable label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Validation(_) => "validation",
            Self::Plan(_) => "plan",
            Self::Admit(_) => "admission",
            Self::Kube(_) => "kubernetes",
            Self::Rejected(_) => "rejected",
            Self::CacheClosed => "stopping",
            Self::Stopping { .. } => "deleting",
            Self::NameTaken(_) => "name-taken",
            Self::Finalizer(_) => "finalizer",
            Self::StaleCache => "stale-cache",
            Self::Undecodable(_) => "undecodable",
        }
    }

    /// The condition reason of a permanent error; `None` for errors worth retrying.
    pub fn permanent_reason(&self) -> Option<&'static str> {
        match self {
            Self::Validation(e) => Some(e.reason()),
            Self::Plan(e) => Some(e.reason()),
            Self::Admit(e) => e.permanent_reason(),
            Self::Rejected(_) => Some(crate::conditions::reasons::REJECTED_BY_API_SERVER),
            Self::NameTaken(_) => Some(crate::conditions::reasons::NAME_TAKEN),
            Self::Kube(_) | Self::CacheClosed | Self::Stopping { .. } | Self::Finalizer(_) | Self::StaleCache | Self::Undecodable(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A category added to `category` and forgotten in `CATEGORIES` would have no series until
    /// its first error.
    #[test]
    fn every_category_is_listed() {
        let source = include_str!("error.rs");
        let body = &source[source.find("pub fn category").unwrap()..source.find("pub fn permanent_reason").unwrap()];
        let named: Vec<&str> = body.lines().filter_map(|l| l.split("=> \"").nth(1)?.split('"').next()).collect();
        let not_failures = ["deleting", "stale-cache"];
        assert_eq!(named.len(), Error::CATEGORIES.len() + not_failures.len(), "{named:?}");
        assert!(named.iter().all(|c| Error::CATEGORIES.contains(c) || not_failures.contains(c)), "{named:?} against {:?}", Error::CATEGORIES);
    }
}
