//! How neighbouring stages exchange tensors. A stage holds at most two links, one to the stage
//! before it (activations in, gradients out) and one to the stage after it; each carries
//! [`Message`]s in order in each direction. In-process links are channels between threads;
//! TCP links carry length-prefixed frames between pods, authenticated with the job's token.

pub mod inproc;
pub mod tcp;

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tch::Tensor;

/// What travels between two stages.
#[derive(Debug)]
pub enum Message {
    /// A micro-batch's activations, downstream.
    Activation { micro_batch: u32, tensor: Tensor },
    /// The gradient of a micro-batch's activations, upstream.
    Gradient { micro_batch: u32, tensor: Tensor },
    /// A partial or complete sum of a chain all-reduce (tied gradients, norms, flags).
    Reduce { tensor: Tensor },
    /// The sender failed; the text says why.
    Abort { reason: String },
}

impl Message {
    pub fn name(&self) -> &'static str {
        match self {
            Message::Activation { .. } => "activation",
            Message::Gradient { .. } => "gradient",
            Message::Reduce { .. } => "reduce",
            Message::Abort { .. } => "abort",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("pipeline stage {stage} disappeared: {detail}")]
    PeerGone { stage: usize, detail: String },
    #[error("pipeline stage {stage} sent nothing for {seconds:.0} s (timeout)")]
    Timeout { stage: usize, seconds: f64 },
    #[error("pipeline stage {stage} failed: {reason}")]
    PeerAborted { stage: usize, reason: String },
    #[error("pipeline stage {stage} refused the connection: {reason}")]
    Refused { stage: usize, reason: String },
    #[error("pipeline stage {stage}: protocol error: {detail}")]
    Protocol { stage: usize, detail: String },
    #[error("pipeline stage {stage} at {addr}: {source}")]
    Io { stage: usize, addr: String, source: std::io::Error },
}

/// One direction-pair connection to a neighbouring stage.
pub trait Link: Send {
    /// The stage at the other end.
    fn peer_stage(&self) -> usize;
    fn send(&mut self, msg: Message) -> Result<(), TransportError>;
    /// The next message; an [`Message::Abort`] from the peer becomes [`TransportError::PeerAborted`].
    fn recv(&mut self) -> Result<Message, TransportError>;
}

/// How long a stage waits for its neighbour before it gives up.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// The first failure any of a stage's links saw. A stage blocked on one neighbour learns from it
/// that the other neighbour is gone, instead of waiting for a timeout.
#[derive(Clone, Debug, Default)]
pub struct Fault(Arc<Mutex<Option<(usize, String, bool)>>>);

impl Fault {
    /// Records that `stage` disappeared (or, with `aborted`, failed and said why).
    pub fn set(&self, stage: usize, detail: String, aborted: bool) {
        let mut slot = self.0.lock().unwrap();
        if slot.is_none() {
            *slot = Some((stage, detail, aborted));
        }
    }

    pub fn error(&self) -> Option<TransportError> {
        self.0.lock().unwrap().clone().map(|(stage, detail, aborted)| {
            if aborted { TransportError::PeerAborted { stage, reason: detail } } else { TransportError::PeerGone { stage, detail } }
        })
    }
}

/// Waits for the next item from a link's channel, checking the stage's [`Fault`] as it waits.
pub(crate) fn wait<T>(rx: &Receiver<T>, fault: &Fault, peer: usize, timeout: Duration) -> Result<Option<T>, TransportError> {
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
                    return Err(TransportError::Timeout { stage: peer, seconds: timeout.as_secs_f64() });
                }
            }
        }
    }
}
