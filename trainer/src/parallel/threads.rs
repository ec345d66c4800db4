//! Workers on threads: one per stage of every replica in this process, linked by channels (or
//! by the TCP links and rings a pod's process opened), each driving `body`. A worker that fails
//! tells its neighbours, and the first failure is the one returned.

use super::ring::Ring;
use super::schedule::ScheduleKind;
use super::transport::{Fault, Link, TransportError};
use super::worker::Worker;
use crate::config::RunConfig;
use anyhow::{Result, anyhow, bail};
use frugal_api::contract::StageLayout;
use tch::Device;

/// Links of one stage: (upstream, downstream).
pub type StageLinks = (Option<Box<dyn Link>>, Option<Box<dyn Link>>);

/// Runs `body` on one thread per stage, each with its worker, the stages linked by channels.
/// Devices: stage s runs on `devices[s % devices.len()]` (several stages may share one).
pub fn run_in_process<T: Send + 'static>(
    cfg: &RunConfig,
    layouts: &[StageLayout],
    schedule: ScheduleKind,
    devices: &[Device],
    body: impl Fn(&mut Worker) -> Result<T> + Send + Sync + 'static,
) -> Result<Vec<T>> {
    run_replicated(cfg, layouts, Replicas::one(), schedule, devices, body)
}

/// How many replicas of the pipeline train side by side, and whether they shard the optimizer
/// state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replicas {
    pub count: usize,
    pub shard_optimizer: bool,
}

impl Replicas {
    pub const fn one() -> Self {
        Self { count: 1, shard_optimizer: false }
    }
}

/// Runs `body` on one thread per stage of every replica of the pipeline, in one process: the
/// stages of a replica linked by channels, the same stage of every replica by a ring of them.
/// Results come back replica by replica, stage by stage. Stage s of replica r runs on
/// `devices[(r · stages + s) % devices.len()]`.
pub fn run_replicated<T: Send + 'static>(
    cfg: &RunConfig,
    layouts: &[StageLayout],
    replicas: Replicas,
    schedule: ScheduleKind,
    devices: &[Device],
    body: impl Fn(&mut Worker) -> Result<T> + Send + Sync + 'static,
) -> Result<Vec<T>> {
    if layouts.is_empty() {
        bail!("a pipeline needs at least one stage");
    }
    let (stages, n) = (layouts.len(), replicas.count.max(1));
    let timeout = super::transport::DEFAULT_TIMEOUT;
    let faults: Vec<Vec<Fault>> = (0..n).map(|_| (0..stages).map(|_| Fault::default()).collect()).collect();
    let mut chains: Vec<Vec<StageLinks>> =
        faults.iter().enumerate().map(|(r, f)| super::transport::inproc::chain_from(0, (n > 1).then_some(r), timeout, f)).collect();
    let mut rings: Vec<Vec<Option<Ring>>> = (0..n).map(|_| (0..stages).map(|_| None).collect()).collect();
    if n > 1 {
        for s in 0..stages {
            let column: Vec<Fault> = faults.iter().map(|f| f[s].clone()).collect();
            for (r, (next, previous)) in super::transport::inproc::ring(s, timeout, &column).into_iter().enumerate() {
                rings[r][s] = Some(Ring::new(r, n, next, previous));
            }
        }
    }
    let body = std::sync::Arc::new(body);
    let mut handles = vec![];
    for r in 0..n {
        let links = std::mem::take(&mut chains[r]);
        let ring = std::mem::take(&mut rings[r]);
        let placed: Vec<Device> = (0..stages).map(|s| devices[(r * stages + s) % devices.len()]).collect();
        handles.extend(spawn_stages(cfg, stages, layouts.to_vec(), links, ring, (r, replicas), schedule, &placed, body.clone())?);
    }
    join(handles)
}

/// Runs this process's stages (`mine`, of `stages` in all) on threads with the given links.
pub fn run_stages<T: Send + 'static>(
    cfg: &RunConfig,
    stages: usize,
    mine: Vec<StageLayout>,
    links: Vec<StageLinks>,
    schedule: ScheduleKind,
    devices: &[Device],
    body: impl Fn(&mut Worker) -> Result<T> + Send + Sync + 'static,
) -> Result<Vec<T>> {
    let rings = mine.iter().map(|_| None).collect();
    run_replica_stages(cfg, stages, mine, links, rings, (0, Replicas::one()), schedule, devices, body)
}

/// Runs this process's stages of replica `replica.0` on threads with the given links and rings.
#[allow(clippy::too_many_arguments)]
pub fn run_replica_stages<T: Send + 'static>(
    cfg: &RunConfig,
    stages: usize,
    mine: Vec<StageLayout>,
    links: Vec<StageLinks>,
    rings: Vec<Option<Ring>>,
    replica: (usize, Replicas),
    schedule: ScheduleKind,
    devices: &[Device],
    body: impl Fn(&mut Worker) -> Result<T> + Send + Sync + 'static,
) -> Result<Vec<T>> {
    let placed: Vec<Device> = (0..mine.len()).map(|i| devices[i % devices.len()]).collect();
    join(spawn_stages(cfg, stages, mine, links, rings, replica, schedule, &placed, std::sync::Arc::new(body))?)
}

type Handle<T> = std::thread::JoinHandle<Result<T>>;

#[allow(clippy::too_many_arguments)]
fn spawn_stages<T: Send + 'static, F: Fn(&mut Worker) -> Result<T> + Send + Sync + 'static>(
    cfg: &RunConfig,
    stages: usize,
    mine: Vec<StageLayout>,
    links: Vec<StageLinks>,
    rings: Vec<Option<Ring>>,
    (replica, replicas): (usize, Replicas),
    schedule: ScheduleKind,
    devices: &[Device],
    body: std::sync::Arc<F>,
) -> Result<Vec<Handle<T>>> {
    let mut handles = Vec::with_capacity(mine.len());
    for (i, ((layout, (up, down)), ring)) in mine.into_iter().zip(links).zip(rings).enumerate() {
        let cfg = cfg.clone();
        let s = layout.index as usize;
        let device = devices[i % devices.len()];
        let body = body.clone();
        let name = if replicas.count > 1 { format!("r{replica}-stage-{s}") } else { format!("stage-{s}") };
        handles.push(std::thread::Builder::new().name(name).spawn(move || -> Result<T> {
            let mut worker = Worker::new(&cfg, layout, stages, schedule, device, up, down)?;
            worker.replicate(replica, replicas.count, ring, replicas.shard_optimizer)?;
            match body(&mut worker) {
                Ok(v) => Ok(v),
                Err(e) => {
                    worker.abort(&format!("{e:#}"));
                    Err(e.context(worker.rank().to_string()))
                }
            }
        })?);
    }
    Ok(handles)
}

/// The stages' results, or the error of the stage that failed first rather than its neighbours'
/// reports of it (a stage whose teacher does not load aborts, and the others fail for that).
fn join<T>(handles: Vec<Handle<T>>) -> Result<Vec<T>> {
    let results: Vec<Result<T>> = handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("a stage thread panicked")))).collect();
    if results.iter().all(Result::is_ok) {
        return results.into_iter().collect();
    }
    let mut errors: Vec<anyhow::Error> = results.into_iter().filter_map(Result::err).collect();
    let peer_failed = |e: &anyhow::Error| {
        e.chain().any(|c| matches!(c.downcast_ref::<TransportError>(), Some(TransportError::PeerAborted { .. } | TransportError::PeerGone { .. })))
    };
    let first = errors.iter().position(|e| !peer_failed(e)).unwrap_or(0);
    Err(errors.swap_remove(first))
}
