//! The finalizer's stage: a deleted TrainingJob is stopped, billed to its end and released from
//! its budget before it goes, however it was deleted (`--cascade=orphan` included, which would
//! otherwise leave its pods running, unbilled and outside every budget).
//!
//! Each pass of a deleted job bills its pods, deletes its attempt Jobs in the foreground (a Job
//! stays, and so its pods' record, until its pods are gone; they get SIGTERM and their grace
//! period to checkpoint) and any pod of it whose Job is gone already, and keeps its budget's
//! entry while a pod of it still runs. Once none does: the last bill, the entry released, the
//! children it controls deleted, and the finalizer removed.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{DeleteParams, Preconditions};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use frugal_api::TrainingJob;

use super::children::applied_kinds;
use super::error::Error;
use super::{Context, admit, charge, observe, plan, status, validate};
use crate::metrics::{folded, spend};
use crate::names::{JOB_UID_LABEL, Names};
use crate::training_budget::budget::Demand;
use crate::training_budget::{effective_budget, ledger};

/// How soon a deleted job whose pods still run is looked at again, billing them (each pod's
/// change wakes it too).
pub const STOPPING_CHECK: Duration = super::bill::BILLING_INTERVAL;

/// Whether `meta` is of an object this job made: it is the object's controller, or (its owner
/// reference taken away by an orphaning delete) the object carries the job's uid label.
pub fn made_by(meta: &kube::api::ObjectMeta, uid: &str) -> bool {
    let controller = meta.owner_references.iter().flatten().find(|o| o.controller == Some(true));
    match controller {
        Some(o) => o.uid == uid,
        None => meta.labels.as_ref().and_then(|l| l.get(JOB_UID_LABEL)).is_some_and(|u| u == uid),
    }
}

/// One pass of a deleted job; `Ok` lets its finalizer go.
pub async fn cleanup(tj: &TrainingJob, ctx: &Context) -> Result<Action, Error> {
    let namespace = tj.namespace().unwrap_or_default();
    let name = tj.name_any();
    let uid = tj.uid().unwrap_or_default();
    let prev = tj.status.clone().unwrap_or_default();

    // the bill up to now, from its pods; a spec that cannot be read any more ran nothing the
    // cache does not show, and is billed as it stands
    let cost = match validate::validate(tj, &ctx.settings)
        .map_err(Error::from)
        .and_then(|v| plan::plan(&v, &ctx.settings.plan_options).map_err(Error::from))
    {
        Ok(planned) => {
            let attempts = observe::attempts(&ctx.jobs, &ctx.pods, &planned.valid);
            let budget = effective_budget(tj, &ctx.budgets);
            Some(charge::bill_pods(tj, ctx, budget.as_deref(), &planned.plan, &attempts, &prev).await?)
        }
        Err(_) => prev.cost.clone(),
    };

    // stop what runs: its attempt Jobs in the foreground, and its pods no Job will take away
    let jobs: Vec<Arc<Job>> =
        ctx.jobs.state().into_iter().filter(|j| j.namespace().as_deref() == Some(namespace.as_str()) && made_by(&j.metadata, &uid)).collect();
    let job_api: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
    for job in jobs.iter().filter(|j| j.meta().deletion_timestamp.is_none()) {
        info!(job = %job.name_any(), "the TrainingJob was deleted: stopping its attempt");
        delete_exactly(&job_api, &job.name_any(), job.uid(), &DeleteParams::foreground()).await?;
    }
    let live = crate::pods::live_pods_of(&ctx.pods, &namespace, &name, &uid);
    let pod_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let job_uids: Vec<String> = jobs.iter().filter_map(|j| j.uid()).collect();
    for pod in live.iter().filter(|p| p.meta().deletion_timestamp.is_none()) {
        let owned_by_a_job = pod.owner_references().iter().any(|o| job_uids.contains(&o.uid));
        if !owned_by_a_job {
            info!(pod = %pod.name_any(), "the TrainingJob was deleted: stopping its pod, whose Job is gone");
            delete_exactly(&pod_api, &pod.name_any(), pod.uid(), &DeleteParams::default()).await?;
        }
    }

    // the budget keeps its GPUs while a pod holds them (an entry it has stays; the budget's own
    // pass counts what it spends), and counts the last bill when it lets them go
    let held = |b: &str| {
        let budget = ctx.budgets.get(&kube::runtime::reflector::ObjectRef::new(b).within(&namespace));
        budget.is_some_and(|b| b.status.iter().flat_map(|s| &s.jobs).any(|h| h.uid == uid))
    };
    if let Some(budget) = effective_budget(tj, &ctx.budgets).filter(|b| live.is_empty() || !held(b)) {
        let gpus = prev.plan.as_ref().map_or(0, |p| i64::from(p.gpus));
        let demand = if live.is_empty() { Demand::Release } else { Demand::Hold };
        let claim = admit::budget_claim(tj, gpus, 0.0, cost.as_ref());
        ledger::settle(&ctx.client, &namespace, &budget, &claim, demand).await?;
    }
    if let Some(cost) = cost.as_ref().filter(|c| prev.cost.as_ref() != Some(*c)) {
        let api: Api<TrainingJob> = Api::namespaced(ctx.client.clone(), &namespace);
        let billed = status::billed(&prev, cost.clone());
        status::patch(&api, &name, &billed).await?;
        ctx.metrics.status_patches.inc();
        ctx.wrote_bill(&uid, &billed);
    }
    if !live.is_empty() {
        return Err(Error::Stopping { pods: live.len() });
    }
    record_bill(tj, ctx, cost.as_ref().or(prev.cost.as_ref())).await?;
    delete_children(ctx, &Names::new(&namespace, &name), &uid).await?;
    ctx.written_bills.lock().unwrap().remove(&uid);
    info!("the TrainingJob's pods are gone, billed and released from its budget: letting it go");
    Ok(Action::await_change())
}

/// Adds the job's final bill to the record of deleted jobs' bills, so that the billed counters
/// keep it after the job is gone and across restarts. An operator not allowed to write the
/// record (a chart without its Role), or a record that does not parse, is reported and the job
/// goes all the same: a deletion never waits on a metric.
async fn record_bill(tj: &TrainingJob, ctx: &Context, cost: Option<&frugal_api::v1alpha1::CostStatus>) -> Result<(), Error> {
    let (Some(location), Some(cost)) = (&ctx.settings.billed_record, cost) else { return Ok(()) };
    if cost.pods.is_empty() {
        return Ok(());
    }
    let budgets: Vec<_> = ctx.budgets.state();
    let budgets: Vec<&frugal_api::TrainingBudget> = budgets.iter().map(|b| b.as_ref()).collect();
    let namespace = tj.namespace().unwrap_or_default();
    let bills = spend::bills_of(&namespace, &spend::counted_budget(tj, &budgets), cost);
    let uid = tj.uid().unwrap_or_default();
    match folded::fold(&ctx.client, location, &uid, &bills).await {
        Ok(record) => {
            ctx.metrics.set_folded(record);
            Ok(())
        }
        Err(folded::Error::Kube(kube::Error::Api(s))) if s.code == 403 || s.code == 404 => {
            warn!(record = %location, "the job's bill is not recorded for the billed counters ({}): they will read lower after a restart", s.message);
            Ok(())
        }
        Err(folded::Error::Kube(e)) => Err(e.into()),
        Err(e) => {
            warn!(record = %location, "the job's bill is not recorded for the billed counters: {e}");
            Ok(())
        }
    }
}

/// Deletes a finished job's attempt Jobs (their pods have ended).
pub(super) async fn delete_attempt_jobs(client: &kube::Client, namespace: &str, jobs: &[Arc<Job>]) -> Result<(), kube::Error> {
    let api: Api<Job> = Api::namespaced(client.clone(), namespace);
    for job in jobs {
        delete_exactly(&api, &job.name_any(), job.uid(), &DeleteParams::background()).await?;
    }
    Ok(())
}

/// Deletes `name` if it is still the object of uid `uid` (not one made since under its name).
async fn delete_exactly<K>(api: &Api<K>, name: &str, uid: Option<String>, params: &DeleteParams) -> Result<(), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let params = DeleteParams { preconditions: Some(Preconditions { uid, resource_version: None }), ..params.clone() };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        // gone, or another object under its name (409 on the precondition)
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Deletes the children this job made, and only those (an object of one of their names that
/// another made is left alone): the garbage collector would, unless the delete orphaned them.
pub(super) async fn delete_children(ctx: &Context, names: &Names, uid: &str) -> Result<(), kube::Error> {
    let ns = &names.namespace;
    async fn one<K>(ctx: &Context, ns: &str, name: &str, uid: &str) -> Result<(), kube::Error>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
        let meta = match api.get_metadata_opt(name).await {
            Ok(Some(m)) => m.metadata,
            Ok(None) => return Ok(()),
            Err(e) => return Err(e),
        };
        if made_by(&meta, uid) {
            delete_exactly(&api, name, meta.uid, &DeleteParams::background()).await?;
        }
        Ok(())
    }
    macro_rules! delete_each {
        ($($field:ident: $kind:ty = $name:ident),* $(,)?) => {
            $(one::<$kind>(ctx, ns, &names.$name(), uid).await?;)*
        };
    }
    one::<Secret>(ctx, ns, &names.secret(), uid).await?;
    applied_kinds!(delete_each);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use kube::api::ObjectMeta;

    fn meta(owner: Option<(&str, bool)>, label: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            owner_references: owner.map(|(uid, controller)| {
                vec![OwnerReference { uid: uid.into(), controller: Some(controller), kind: "TrainingJob".into(), ..Default::default() }]
            }),
            labels: label.map(|u| [(JOB_UID_LABEL.to_string(), u.to_string())].into()),
            ..Default::default()
        }
    }

    #[test]
    fn an_object_is_the_jobs_by_its_controller_or_once_orphaned_by_its_uid_label() {
        assert!(made_by(&meta(Some(("u-1", true)), Some("u-1")), "u-1"));
        // another job controls it, whatever its label says
        assert!(!made_by(&meta(Some(("u-2", true)), Some("u-1")), "u-1"));
        // orphaned: its label says whose it was
        assert!(made_by(&meta(None, Some("u-1")), "u-1"));
        // made by someone else: no reference, no label
        assert!(!made_by(&meta(None, None), "u-1"));
        assert!(!made_by(&meta(Some(("u-1", false)), None), "u-1"), "an owner that is not the controller did not make it");
    }
}
