//! One process's share of a pipeline: its contiguous stages on threads, joined to the previous
//! process by a TCP link it listens for and to the next by one it opens. A pod runs one process.

use super::engine::{StageLinks, StageWorker, run_stages};
use super::schedule::ScheduleKind;
use super::transport::{Fault, inproc, tcp};
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
}

impl ProcessStages {
    fn last(&self) -> usize {
        self.first + self.count - 1
    }

    /// Opens this process's links: listens first (so that the previous process can connect
    /// while this one waits for the next), then connects downstream, then accepts upstream.
    pub fn connect(&self) -> Result<Vec<StageLinks>> {
        let faults: Vec<Fault> = (0..self.count).map(|_| Fault::default()).collect();
        let mut links = inproc::chain_from(self.first, self.timeout, &faults);
        let listener = match (self.first > 0, &self.listen) {
            (true, Some(addr)) => {
                Some(TcpListener::bind(addr).with_context(|| format!("listening for pipeline stage {} on {addr}", self.first - 1))?)
            }
            (true, None) => anyhow::bail!("stage {} has an upstream stage but no address to listen on", self.first),
            _ => None,
        };
        if self.last() + 1 < self.layouts.len() {
            let addr = self.downstream.as_deref().context("a process before the last needs its downstream address")?;
            let link = tcp::connect_downstream(addr, self.last(), &self.token, self.timeout, &faults[self.count - 1])?;
            links[self.count - 1].1 = Some(Box::new(link));
        }
        if let Some(listener) = listener {
            let link = tcp::accept_upstream(&listener, self.first - 1, &self.token, self.timeout, &faults[0])?;
            links[0].0 = Some(Box::new(link));
        }
        Ok(links)
    }

    /// Connects and runs `body` on each of this process's stages.
    pub fn run<T: Send + 'static>(
        &self,
        cfg: &RunConfig,
        schedule: ScheduleKind,
        devices: &[Device],
        body: impl Fn(&mut StageWorker) -> Result<T> + Send + Sync + 'static,
    ) -> Result<Vec<T>> {
        let links = self.connect()?;
        let mine = self.layouts[self.first..self.first + self.count].to_vec();
        run_stages(cfg, self.layouts.len(), mine, links, schedule, devices, body)
    }
}
