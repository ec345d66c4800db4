//! `kubectl frugal logs JOB [-f] [--tail N]`: the trainer logs of every pod of the job's current
//! attempt, each line prefixed by where the pod sits in the pipeline (`[stage 0 replica 1] `), in
//! pipeline order; with `-f`, every pod followed at once, lines printed as they come, until every
//! pod of the attempt has ended.

use std::collections::BTreeSet;
use std::ops::Range;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use futures::{AsyncBufReadExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, LogParams};
use kube::{Api, ResourceExt as _};
use tokio::sync::mpsc;

use frugal_api::TrainingJob;
use frugal_api::contract::pods::{INDEX_ANNOTATION, TRAINER_CONTAINER, attempt_selector};
use frugal_api::v1alpha1::{ParallelismSpec, Phase};

use crate::cluster::{self, Reads, Target};

/// How often `-f` looks for pods that are not there yet, and for containers that have not started.
const POLL: Duration = Duration::from_secs(2);

/// Where a pod sits in the pipeline: its replica and the stages it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub replica: i64,
    pub stages: Range<i64>,
}

impl Placement {
    /// The pod at `index` of an attempt of `parallelism`, placed as the trainer places itself
    /// ([`frugal_api::contract::TrainerConfig::assignment`]): pods `r·P .. (r+1)·P` run replica `r`,
    /// P being the pods of one replica, each `gpusPerPod` stages.
    pub fn of(index: i64, parallelism: &ParallelismSpec) -> Self {
        let per_pod = i64::from(parallelism.gpus_per_pod.max(1));
        let per_replica = (i64::from(parallelism.pipeline_stages) / per_pod).max(1);
        let position = index % per_replica;
        Self { replica: index / per_replica, stages: position * per_pod..(position + 1) * per_pod }
    }

    /// What each of the pod's lines starts with.
    pub fn prefix(&self) -> String {
        match self.stages.end - self.stages.start {
            1 => format!("[stage {} replica {}] ", self.stages.start, self.replica),
            _ => format!("[stages {}-{} replica {}] ", self.stages.start, self.stages.end - 1, self.replica),
        }
    }
}

/// The pod's index in its Indexed Job.
pub fn pod_index(pod: &Pod) -> Option<i64> {
    pod.annotations().get(INDEX_ANNOTATION)?.parse().ok()
}

/// Each line of `log` after `prefix`.
pub fn prefixed(prefix: &str, log: &str) -> String {
    log.lines().map(|line| format!("{prefix}{line}\n")).collect()
}

/// The current attempt's pods, each with its prefix, in pipeline order (replica, then stage).
fn placed(tj: &TrainingJob, pods: Vec<Pod>) -> Vec<(String, String)> {
    let mut placed: Vec<(i64, String, String)> = pods
        .into_iter()
        .map(|pod| {
            let name = pod.name_any();
            match pod_index(&pod) {
                Some(index) => (index, name, Placement::of(index, &tj.spec.parallelism).prefix()),
                // not an Indexed Job's pod: its name says which it is
                None => (i64::MAX, name.clone(), format!("[{name}] ")),
            }
        })
        .collect();
    placed.sort();
    placed.into_iter().map(|(_, name, prefix)| (name, prefix)).collect()
}

/// Writes to stdout at once, for a reader following along; false when the reader went away
/// (`| head`).
fn print(text: &str) -> bool {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|()| out.flush()).is_ok()
}

fn started(pod: &Pod) -> bool {
    let statuses = pod.status.as_ref().and_then(|s| s.container_statuses.as_ref());
    statuses
        .and_then(|cs| cs.iter().find(|c| c.name == TRAINER_CONTAINER)?.state.as_ref())
        .is_some_and(|s| s.running.is_some() || s.terminated.is_some())
}

fn finished(tj: &TrainingJob) -> bool {
    matches!(tj.status.as_ref().and_then(|s| s.phase), Some(Phase::Succeeded | Phase::Failed))
}

/// The job and its current attempt; `None` for the attempt when it has not started one.
async fn job(jobs: &Api<TrainingJob>, name: &str, namespace: &str) -> Result<(TrainingJob, Option<i32>)> {
    let tj = jobs
        .get_opt(name)
        .await
        .map_err(|e| cluster::explain(e, "reading the TrainingJob"))?
        .with_context(|| format!("no TrainingJob {name:?} in namespace {namespace:?}: `kubectl frugal report` lists them"))?;
    let attempt = tj.status.as_ref().and_then(|s| s.attempt);
    Ok((tj, attempt))
}

async fn attempt_pods(pods: &Api<Pod>, tj: &TrainingJob, attempt: i32) -> Result<Vec<Pod>> {
    let selector = attempt_selector(&tj.name_any(), tj.metadata.uid.as_deref().unwrap_or_default(), attempt);
    Ok(pods.list(&ListParams::default().labels(&selector)).await.map_err(|e| cluster::explain(e, "listing the attempt's pods"))?.items)
}

pub async fn run(target: &Target, name: &str, follow: bool, tail: Option<i64>) -> Result<()> {
    let cluster = cluster::connect_for(target, if follow { Reads::Streams } else { Reads::Requests }).await?;
    let jobs: Api<TrainingJob> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let (mut tj, mut attempt) = job(&jobs, name, &cluster.namespace).await?;
    if !follow {
        let Some(attempt) = attempt else {
            bail!(
                "{name} has not started an attempt yet (phase {:?}): nothing has logged; -f waits for it",
                tj.status.as_ref().and_then(|s| s.phase)
            );
        };
        let params = LogParams { container: Some(TRAINER_CONTAINER.into()), tail_lines: tail, ..Default::default() };
        let found = placed(&tj, attempt_pods(&pods, &tj, attempt).await?);
        if found.is_empty() {
            bail!("{name}'s attempt {attempt} has no pods: they are not created yet, or are gone");
        }
        for (pod, prefix) in found {
            match pods.logs(&pod, &params).await {
                Ok(log) => {
                    if !print(&prefixed(&prefix, &log)) {
                        break;
                    }
                }
                Err(e) => eprintln!("{prefix}no log from {pod}: {:#}", cluster::explain(e, "reading its log")),
            }
        }
        return Ok(());
    }

    // every pod followed in a task of its own, its lines sent here to be printed whole
    let (lines, mut printed) = mpsc::unbounded_channel::<String>();
    let mut following = BTreeSet::new();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        if let Some(attempt) = attempt {
            for (pod, prefix) in placed(&tj, attempt_pods(&pods, &tj, attempt).await?) {
                if following.insert(pod.clone()) {
                    tasks.spawn(follow_pod(pods.clone(), pod, prefix, tail, lines.clone()));
                }
            }
        }
        if following.is_empty() && finished(&tj) {
            bail!("{name} has ended and its pods are gone: there is no log to follow");
        }
        let expected = tj.status.as_ref().and_then(|s| s.plan.as_ref()).map_or(1, |p| p.pods.max(1)) as usize;
        let all_there = following.len() >= expected || finished(&tj);
        // print what comes until it is time to look for pods again
        let next_look = tokio::time::sleep(POLL);
        tokio::pin!(next_look);
        loop {
            tokio::select! {
                Some(line) = printed.recv() => {
                    if !print(&line) {
                        return Ok(());
                    }
                }
                Some(ended) = tasks.join_next() => match ended {
                    Ok(Ok(())) => {}
                    // one pod's log lost is worth saying, not worth the others'
                    Ok(Err(e)) => eprintln!("kubectl frugal: {e:#}"),
                    Err(e) => bail!("following a pod: {e}"),
                },
                () = &mut next_look => break,
            }
        }
        if tasks.is_empty() && !following.is_empty() && all_there {
            break;
        }
        let (fresh, current) = job(&jobs, name, &cluster.namespace).await?;
        tj = fresh;
        // the attempt followed is the first one seen: a restart's pods are another attempt's
        attempt = attempt.or(current);
    }
    // what the last followers sent before they ended
    drop(lines);
    while let Some(line) = printed.recv().await {
        if !print(&line) {
            break;
        }
    }
    Ok(())
}

/// Follows `pod`'s trainer log from when its container starts until it ends (or the pod is
/// gone), sending each line after `prefix`.
async fn follow_pod(pods: Api<Pod>, pod: String, prefix: String, tail: Option<i64>, lines: mpsc::UnboundedSender<String>) -> Result<()> {
    loop {
        match pods.get_opt(&pod).await.map_err(|e| cluster::explain(e, "reading a pod"))? {
            None => return Ok(()),
            Some(p) if started(&p) => break,
            Some(_) => tokio::time::sleep(POLL).await,
        }
    }
    let params = LogParams { container: Some(TRAINER_CONTAINER.into()), follow: true, tail_lines: tail, ..Default::default() };
    let stream = pods.log_stream(&pod, &params).await.map_err(|e| cluster::explain(e, &format!("following the log of {pod}")))?;
    let mut stream = std::pin::pin!(stream.lines());
    while let Some(line) = stream.try_next().await.with_context(|| format!("reading the log of {pod}"))? {
        if lines.send(format!("{prefix}{line}\n")).is_err() {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
