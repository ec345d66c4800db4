//! The ledger's writes, kept thin: read a budget, let `budget` decide, write
//! its status with the resourceVersion it was read at. A write that loses a race (409 Conflict)
//! reads the budget again and decides again, so two jobs reconciled at once can never both take
//! the last GPUs: the budget's status is the ledger, and the API server serializes its writes.

use kube::api::PostParams;
use kube::{Api, Client, ResourceExt};
use tracing::info;

use frugal_api::TrainingBudget;
use frugal_api::v1alpha1::TrainingBudgetStatus;

use super::budget::{self, Claim, Demand, TooSmall, Verdict, Wait};
use super::now;
use crate::names::FIELD_MANAGER;

/// Reads and decisions a pass makes before it gives up on a contended ledger and backs off.
const TRIES: usize = 8;

/// Whether the job may go on (create or keep its children), or must wait, Queued.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    Go,
    Wait(Wait),
    /// A live attempt's budget has spent this period's limit: the attempt is to stop.
    SpentOut(Wait),
}

/// Why a ledger could not be settled.
#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    /// The job could never fit the budget: permanent until the job or the budget changes.
    #[error(transparent)]
    TooSmall(#[from] TooSmall),
}

pub(super) async fn write(api: &Api<TrainingBudget>, budget: &TrainingBudget, status: TrainingBudgetStatus) -> Result<(), kube::Error> {
    let mut updated = budget.clone();
    updated.status = Some(status);
    // a replace carries metadata.resourceVersion: the API server refuses it (409) if the
    // budget changed since it was read
    let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    api.replace_status(&budget.name_any(), &params, &updated).await?;
    Ok(())
}

pub(super) fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// Makes budget `name`'s ledger say what `demand` asks for `job`, before any child is created.
/// Always reads the budget from the API server, not a cache: a stale copy could show an entry
/// already released and let the job start unrecorded.
pub async fn settle(client: &Client, namespace: &str, name: &str, job: &Claim<'_>, demand: Demand) -> Result<Admission, SettleError> {
    let api: Api<TrainingBudget> = Api::namespaced(client.clone(), namespace);
    let mut last = None;
    for _ in 0..TRIES {
        let Some(b) = api.get_opt(name).await? else {
            return Ok(match demand {
                Demand::Start => Admission::Wait(budget::not_found(name, namespace)),
                // nothing to release; a live attempt goes on and is recorded once the budget exists
                Demand::Release | Demand::Hold => Admission::Go,
            });
        };
        let now = now();
        // a live attempt goes on while the budget has something left this period
        let go = |status: &TrainingBudgetStatus| match budget::spent_out(&b, status, &now).filter(|_| demand == Demand::Hold) {
            Some(w) => Admission::SpentOut(w),
            None => Admission::Go,
        };
        match budget::settle(&b, job, demand, &now) {
            Verdict::Unchanged => return Ok(go(&b.status.clone().unwrap_or_default())),
            Verdict::Wait(w) => return Ok(Admission::Wait(w)),
            Verdict::Refuse(e) => return Err(e.into()),
            Verdict::Release(status, w) => match write(&api, &b, *status).await {
                Ok(()) => {
                    info!(budget = name, "the period is spent: the job gives its entry back and waits");
                    return Ok(Admission::Wait(w));
                }
                Err(e) if is_conflict(&e) => last = Some(e),
                Err(e) => return Err(e.into()),
            },
            Verdict::Write(status) => {
                let gpus_in_use = status.gpus_in_use;
                let admission = go(&status);
                match write(&api, &b, *status).await {
                    Ok(()) => {
                        info!(budget = name, ?demand, gpus = job.gpus, gpus_in_use, "ledger written");
                        return Ok(admission);
                    }
                    Err(e) if is_conflict(&e) => {
                        info!(budget = name, "the budget changed since it was read (409 Conflict); reading it again");
                        last = Some(e);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Err(last.expect("a conflict was recorded").into())
}
