//! Waiting on cluster state through watches, bounded by [`crate::timeout`].

use std::fmt::Debug;
use std::future::Future;
use std::pin::pin;

use anyhow::{Context as _, Result, anyhow};
use futures::TryStreamExt as _;
use k8s_openapi::api::core::v1::Event;
use kube::runtime::wait::{Condition, await_condition};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;

/// Awaits `fut` for at most [`crate::timeout`], naming `what` in the error.
pub async fn until<T, E>(what: &str, fut: impl Future<Output = Result<T, E>>) -> Result<T>
where
    E: Into<anyhow::Error>,
{
    within(crate::timeout(), what, fut).await
}

/// Awaits `fut` for at most `limit` (for what really trains, which takes longer than a status
/// change), naming `what` in the error.
pub async fn within<T, E>(limit: std::time::Duration, what: &str, fut: impl Future<Output = Result<T, E>>) -> Result<T>
where
    E: Into<anyhow::Error>,
{
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => result.map_err(Into::into).with_context(|| format!("waiting for {what}")),
        Err(_) => Err(anyhow!("timed out after {limit:?} waiting for {what}")),
    }
}

/// Waits until the named object satisfies `cond` and returns it.
pub async fn for_object<K>(api: &Api<K>, name: &str, what: &str, cond: impl Condition<K>) -> Result<K>
where
    K: Clone + Debug + Send + DeserializeOwned + Resource + 'static,
{
    until(what, await_condition(api.clone(), name, cond)).await?.ok_or_else(|| anyhow!("{name} was deleted while waiting for {what}"))
}

/// Waits until some object selected by `config` satisfies `pred` and returns it.
pub async fn for_any<K>(api: &Api<K>, config: watcher::Config, what: &str, pred: impl Fn(&K) -> bool + Send) -> Result<K>
where
    K: Clone + Debug + Send + DeserializeOwned + Resource + 'static,
{
    let matching = watcher(api.clone(), config).applied_objects().try_filter(|obj| std::future::ready(pred(obj)));
    until(what, async move {
        let mut matching = pin!(matching);
        matching.try_next().await?.ok_or_else(|| anyhow!("watch ended"))
    })
    .await
}

/// Waits for an event about the object `name` in `api`'s namespace that satisfies `pred`.
pub async fn for_event(api: &Api<Event>, name: &str, what: &str, pred: impl Fn(&Event) -> bool + Send) -> Result<Event> {
    let config = watcher::Config::default().fields(&format!("involvedObject.name={name}"));
    for_any(api, config, what, pred).await
}

/// Waits until the object `name` with `uid` is gone.
pub async fn for_deletion<K>(api: &Api<K>, name: &str, uid: &str) -> Result<()>
where
    K: Clone + Debug + Send + DeserializeOwned + Resource + 'static,
{
    let cond = kube::runtime::wait::conditions::is_deleted::<K>(uid);
    until(&format!("{name} deleted"), await_condition(api.clone(), name, cond)).await?;
    Ok(())
}
