//! How neighbouring stages exchange tensors. A stage holds at most two pipeline links, one to the
//! stage before it (activations in, gradients out) and one to the stage after it, and with
//! replicas two ring links, to the same stage of the next replica (chunks out) and of the
//! previous one (chunks in); each carries [`Message`]s in order in each direction. In-process links are channels between threads;
//! TCP links carry length-prefixed frames between pods, authenticated with the job's token.

pub mod inproc;
pub mod tcp;

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tch::Tensor;

/// Who is at the other end of a link: a pipeline stage, of one replica when the pipeline is
/// replicated (data parallelism).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rank {
    pub stage: usize,
    /// `None` when the job has one replica (the messages then say only the stage).
    pub replica: Option<usize>,
}

impl Rank {
    /// Stage `stage` of a pipeline that is not replicated.
    pub const fn stage(stage: usize) -> Self {
        Self { stage, replica: None }
    }

    /// Stage `stage` of replica `replica` of `replicas`.
    pub fn of(stage: usize, replica: usize, replicas: usize) -> Self {
        Self { stage, replica: (replicas > 1).then_some(replica) }
    }

    /// The same stage in another replica.
    pub fn in_replica(self, replica: usize) -> Self {
        Self { stage: self.stage, replica: Some(replica) }
    }
}

impl std::fmt::Display for Rank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.replica {
            None => write!(f, "pipeline stage {}", self.stage),
            Some(r) => write!(f, "pipeline stage {} of replica {r}", self.stage),
        }
    }
}

/// What travels between two stages, or between the same stage of two replicas.
#[derive(Debug)]
pub enum Message {
    /// A micro-batch's activations, downstream.
    Activation { micro_batch: u32, tensor: Tensor },
    /// The gradient of a micro-batch's activations, upstream.
    Gradient { micro_batch: u32, tensor: Tensor },
    /// A partial or complete sum of a chain all-reduce (tied gradients, norms, flags).
    Reduce { tensor: Tensor },
    /// One chunk of a ring all-reduce or all-gather across replicas, numbered in the order both
    /// ends expect it.
    Chunk { index: u32, tensor: Tensor },
    /// The sender failed; the text says why.
    Abort { reason: String },
}

impl Message {
    pub fn name(&self) -> &'static str {
        match self {
            Message::Activation { .. } => "activation",
            Message::Gradient { .. } => "gradient",
            Message::Reduce { .. } => "reduce",
            Message::Chunk { .. } => "chunk",
            Message::Abort { .. } => "abort",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{peer} disappeared: {detail}")]
    PeerGone { peer: Rank, detail: String },
    #[error("{peer} sent nothing for {seconds:.0} s (timeout)")]
    Timeout { peer: Rank, seconds: f64 },
    #[error("{peer} failed: {reason}")]
    PeerAborted { peer: Rank, reason: String },
    #[error("{peer} refused the connection: {reason}")]
    Refused { peer: Rank, reason: String },
    #[error("{peer}: protocol error: {detail}")]
    Protocol { peer: Rank, detail: String },
    #[error("{peer} at {addr}: {source}")]
    Io { peer: Rank, addr: String, source: std::io::Error },
}

/// One direction-pair connection to a neighbouring stage, or to the same stage of the next or
/// previous replica.
pub trait Link: Send {
    /// Who is at the other end.
    fn peer(&self) -> Rank;
    fn send(&mut self, msg: Message) -> Result<(), TransportError>;
    /// The next message; an [`Message::Abort`] from the peer becomes [`TransportError::PeerAborted`].
    fn recv(&mut self) -> Result<Message, TransportError>;
}

/// How long a stage waits for its neighbour before it gives up.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// The first failure any of a stage's links saw. A stage blocked on one neighbour learns from it
/// that another is gone, instead of waiting for a timeout.
#[derive(Clone, Debug, Default)]
pub struct Fault(Arc<Mutex<Option<(Rank, String, bool)>>>);

impl Fault {
    /// Records that `peer` disappeared (or, with `aborted`, failed and said why).
    pub fn set(&self, peer: Rank, detail: String, aborted: bool) {
        let mut slot = self.0.lock().unwrap();
        if slot.is_none() {
            *slot = Some((peer, detail, aborted));
        }
    }

    pub fn error(&self) -> Option<TransportError> {
        self.0.lock().unwrap().clone().map(|(peer, detail, aborted)| {
            if aborted { TransportError::PeerAborted { peer, reason: detail } } else { TransportError::PeerGone { peer, detail } }
        })
    }
}

/// Waits for the next item from a link's channel, checking the stage's [`Fault`] as it waits.
pub(crate) fn wait<T>(rx: &Receiver<T>, fault: &Fault, peer: Rank, timeout: Duration) -> Result<Option<T>, TransportError> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.min(Duration::from_millis(100))) {
            Ok(item) => return Ok(Some(item)),
            Err(RecvTimeoutError::Disconnected) => return Ok(None),
            Err(RecvTimeoutError::Timeout) => {
                if let Some(e) = fault.error() {
                    return Err(e);
                }
                if left.is_zero() {
                    return Err(TransportError::Timeout { peer, seconds: timeout.as_secs_f64() });
                }
            }
        }
    }
}
