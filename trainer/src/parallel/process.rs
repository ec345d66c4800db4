//! One process's share of a pipeline: its contiguous stages of one replica on threads, joined to
//! the previous process of its replica by a TCP link it listens for and to the next by one it
//! opens; with replicas, each of its stages also opens a ring link to the same stage of the next
//! replica and the process listens for the previous replica's. A pod runs one process. A laptop
//! runs every replica and stage in one process, linked by channels.

use super::ring::Ring;
use super::schedule::ScheduleKind;
use super::threads::{Replicas, StageLinks, run_replica_stages, run_replicated};
use super::transport::{Fault, Link, Rank, inproc, tcp};
use super::worker::Worker;
use crate::config::RunConfig;
use anyhow::{Context, Result};
use frugal_api::contract::StageLayout;
use std::net::TcpListener;
use std::time::Duration;
use tch::Device;

/// Where this process sits in the pipeline.
#[derive(Clone, Debug)]
pub struct ProcessStages {
    /// Every stage of the pipeline, in order.
    pub layouts: Vec<StageLayout>,
    /// This process's stages: `first..first + count`.
    pub first: usize,
    pub count: usize,
    /// Address to listen on for the previous process (when `first > 0`).
    pub listen: Option<String>,
    /// Address of the next process (when this process does not hold the last stage).
    pub downstream: Option<String>,
    /// The job's stage-to-stage token.
    pub token: Vec<u8>,
    pub timeout: Duration,
    /// The replicas of the pipeline, and which one this process runs.
    pub replicas: Replicas,
    pub replica: usize,
    /// Every replica runs in this process (no ring addresses: the rings are channels).
    pub all_replicas_here: bool,
    /// With replicas across processes: the address to listen on for the same stages of the
    /// previous replica, and the address of the next replica's process with these stages.
    pub ring_listen: Option<String>,
    pub ring_next: Option<String>,
}

impl ProcessStages {
    /// Every stage of every replica in this process.
    pub fn local(layouts: Vec<StageLayout>, replicas: Replicas) -> Self {
        let count = layouts.len();
        Self {
            layouts,
            first: 0,
            count,
            listen: None,
            downstream: None,
            token: vec![],
            timeout: super::transport::DEFAULT_TIMEOUT,
            replicas,
            replica: 0,
            all_replicas_here: true,
            ring_listen: None,
            ring_next: None,
        }
    }

    fn last(&self) -> usize {
        self.first + self.count - 1
    }

    fn rank(&self, stage: usize) -> Rank {
        Rank::of(stage, self.replica, self.replicas.count)
    }

    /// Opens this process's links. Both listeners are bound and accept on threads of their own
    /// before any connection is opened, so that no order in which the processes start can
    /// deadlock (with two replicas each process connects to the other's ring port).
    pub fn connect(&self) -> Result<(Vec<StageLinks>, Vec<Option<Ring>>)> {
        let faults: Vec<Fault> = (0..self.count).map(|_| Fault::default()).collect();
        let replicated = self.replicas.count > 1;
        let mut links = inproc::chain_from(self.first, replicated.then_some(self.replica), self.timeout, &faults);
        let upstream = match (self.first > 0, &self.listen) {
            (true, Some(addr)) => {
                let listener = TcpListener::bind(addr).with_context(|| format!("listening for {} on {addr}", self.rank(self.first - 1)))?;
                let (expected, token, timeout, fault) = ([self.rank(self.first - 1)], self.token.clone(), self.timeout, [faults[0].clone()]);
                Some(std::thread::spawn(move || tcp::accept(&listener, tcp::Role::Pipeline, &expected, &token, timeout, &fault)))
            }
            (true, None) => anyhow::bail!("stage {} has an upstream stage but no address to listen on", self.first),
            _ => None,
        };
        let n = self.replicas.count;
        let previous_replica = (self.replica + n - 1) % n;
        let ring_accept = if replicated {
            let addr = self.ring_listen.as_deref().context("a replicated pipeline needs an address to listen on for the previous replica")?;
            let listener = TcpListener::bind(addr).with_context(|| format!("listening for replica {previous_replica} on {addr}"))?;
            let expected: Vec<Rank> = (self.first..=self.last()).map(|s| Rank::stage(s).in_replica(previous_replica)).collect();
            let (token, timeout, faults) = (self.token.clone(), self.timeout, faults.clone());
            Some(std::thread::spawn(move || tcp::accept(&listener, tcp::Role::Ring, &expected, &token, timeout, &faults)))
        } else {
            None
        };
        if self.last() + 1 < self.layouts.len() {
            let addr = self.downstream.as_deref().context("a process before the last needs its downstream address")?;
            let (me, peer) = (self.rank(self.last()), self.rank(self.last() + 1));
            let link = tcp::connect(addr, tcp::Role::Pipeline, me, peer, &self.token, self.timeout, &faults[self.count - 1])?;
            links[self.count - 1].1 = Some(Box::new(link));
        }
        let mut next: Vec<Option<Box<dyn Link>>> = (0..self.count).map(|_| None).collect();
        if replicated {
            let addr = self.ring_next.as_deref().context("a replicated pipeline needs the next replica's address")?;
            for (i, slot) in next.iter_mut().enumerate() {
                let s = self.first + i;
                let link = tcp::connect(
                    addr,
                    tcp::Role::Ring,
                    self.rank(s),
                    Rank::stage(s).in_replica((self.replica + 1) % n),
                    &self.token,
                    self.timeout,
                    &faults[i],
                )?;
                *slot = Some(Box::new(link));
            }
        }
        if let Some(accepting) = upstream {
            let mut accepted = accepting.join().map_err(|_| anyhow::anyhow!("the pipeline listener panicked"))??;
            links[0].0 = Some(Box::new(accepted.remove(0)));
        }
        let mut rings: Vec<Option<Ring>> = (0..self.count).map(|_| None).collect();
        if let Some(accepting) = ring_accept {
            let previous = accepting.join().map_err(|_| anyhow::anyhow!("the ring listener panicked"))??;
            for (i, p) in previous.into_iter().enumerate() {
                let next = next[i].take().expect("connected above");
                rings[i] = Some(Ring::new(self.replica, n, next, Box::new(p)));
            }
        }
        Ok((links, rings))
    }

    /// Connects and runs `body` on each of this process's stages.
    pub fn run<T: Send + 'static>(
        &self,
        cfg: &RunConfig,
        schedule: ScheduleKind,
        devices: &[Device],
        body: impl Fn(&mut Worker) -> Result<T> + Send + Sync + 'static,
    ) -> Result<Vec<T>> {
        if self.all_replicas_here {
            return run_replicated(cfg, &self.layouts, self.replicas, schedule, devices, body);
        }
        let (links, rings) = self.connect()?;
        let mine = self.layouts[self.first..self.first + self.count].to_vec();
        run_replica_stages(cfg, self.layouts.len(), mine, links, rings, (self.replica, self.replicas), schedule, devices, body)
    }
}
