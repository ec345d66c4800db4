//! Stages on threads of one process: a link is a pair of channels. When a stage's thread ends,
//! its end of the channel drops and the neighbour's next receive fails naming that stage.

use super::{Fault, Link, Message, TransportError, wait};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::Duration;

pub struct ChannelLink {
    me: usize,
    peer: usize,
    tx: Sender<Message>,
    rx: Receiver<Message>,
    timeout: Duration,
    fault: Fault,
    peer_fault: Fault,
}

/// Two connected ends: the first is held by stage `a`, the second by stage `b`.
/// `fa` and `fb` are the two stages' faults.
pub fn pair(a: usize, b: usize, timeout: Duration, fa: &Fault, fb: &Fault) -> (ChannelLink, ChannelLink) {
    let (tx_ab, rx_ab) = channel();
    let (tx_ba, rx_ba) = channel();
    (
        ChannelLink { me: a, peer: b, tx: tx_ab, rx: rx_ba, timeout, fault: fa.clone(), peer_fault: fb.clone() },
        ChannelLink { me: b, peer: a, tx: tx_ba, rx: rx_ab, timeout, fault: fb.clone(), peer_fault: fa.clone() },
    )
}

/// A stage's links: (upstream, downstream), either absent at the ends of the chain.
pub type StageLinks = (Option<Box<dyn Link>>, Option<Box<dyn Link>>);

/// Links for `stages` stages in a chain: element s is (upstream, downstream) of stage s.
pub fn chain(stages: usize, timeout: Duration) -> Vec<StageLinks> {
    chain_from(0, timeout, &(0..stages).map(|_| Fault::default()).collect::<Vec<_>>())
}

/// Links between stages `first..first + faults.len()` of one process, each with its fault.
pub fn chain_from(first: usize, timeout: Duration, faults: &[Fault]) -> Vec<StageLinks> {
    let n = faults.len();
    let mut out: Vec<StageLinks> = (0..n).map(|_| (None, None)).collect();
    for s in 1..n {
        let (down, up) = pair(first + s - 1, first + s, timeout, &faults[s - 1], &faults[s]);
        out[s - 1].1 = Some(Box::new(down));
        out[s].0 = Some(Box::new(up));
    }
    out
}

impl Link for ChannelLink {
    fn peer_stage(&self) -> usize {
        self.peer
    }

    fn send(&mut self, msg: Message) -> Result<(), TransportError> {
        if let Message::Abort { reason } = &msg {
            self.peer_fault.set(self.me, reason.clone(), true);
        }
        self.tx.send(msg).map_err(|_| TransportError::PeerGone { stage: self.peer, detail: "its thread ended".into() })
    }

    fn recv(&mut self) -> Result<Message, TransportError> {
        match wait(&self.rx, &self.fault, self.peer, self.timeout)? {
            Some(Message::Abort { reason }) => Err(TransportError::PeerAborted { stage: self.peer, reason }),
            Some(m) => Ok(m),
            None => Err(TransportError::PeerGone { stage: self.peer, detail: "its thread ended".into() }),
        }
    }
}
