//! Stages on threads of one process: a link is a pair of channels. When a stage's thread ends,
//! its end of the channel drops and the neighbour's next receive fails naming that stage.

use super::{Fault, Link, Message, Rank, TransportError, wait};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::Duration;

pub struct ChannelLink {
    me: Rank,
    peer: Rank,
    tx: Sender<Message>,
    rx: Receiver<Message>,
    timeout: Duration,
    fault: Fault,
    peer_fault: Fault,
}

/// Two connected ends: the first is held by `a`, the second by `b`; `fa` and `fb` are their
/// faults.
pub fn pair(a: Rank, b: Rank, timeout: Duration, fa: &Fault, fb: &Fault) -> (ChannelLink, ChannelLink) {
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
    chain_from(0, None, timeout, &(0..stages).map(|_| Fault::default()).collect::<Vec<_>>())
}

/// Links between stages `first..first + faults.len()` of one process (of `replica`, when the
/// pipeline is replicated), each with its fault.
pub fn chain_from(first: usize, replica: Option<usize>, timeout: Duration, faults: &[Fault]) -> Vec<StageLinks> {
    let n = faults.len();
    let rank = |s: usize| Rank { stage: first + s, replica };
    let mut out: Vec<StageLinks> = (0..n).map(|_| (None, None)).collect();
    for s in 1..n {
        let (down, up) = pair(rank(s - 1), rank(s), timeout, &faults[s - 1], &faults[s]);
        out[s - 1].1 = Some(Box::new(down));
        out[s].0 = Some(Box::new(up));
    }
    out
}

/// A stage's ring links: (to the next replica, from the previous one).
pub type RingLinks = (Box<dyn Link>, Box<dyn Link>);

/// The ring of stage `stage` across `faults.len()` replicas of one process: element r is replica
/// r's (next, previous) pair.
pub fn ring(stage: usize, timeout: Duration, faults: &[Fault]) -> Vec<RingLinks> {
    let n = faults.len();
    let rank = |r: usize| Rank::stage(stage).in_replica(r);
    let mut next: Vec<Option<Box<dyn Link>>> = (0..n).map(|_| None).collect();
    let mut previous: Vec<Option<Box<dyn Link>>> = (0..n).map(|_| None).collect();
    for r in 0..n {
        let to = (r + 1) % n;
        let (a, b) = pair(rank(r), rank(to), timeout, &faults[r], &faults[to]);
        next[r] = Some(Box::new(a));
        previous[to] = Some(Box::new(b));
    }
    next.into_iter().zip(previous).map(|(n, p)| (n.expect("every replica has a next"), p.expect("and a previous"))).collect()
}

impl Link for ChannelLink {
    fn peer(&self) -> Rank {
        self.peer
    }

    fn send(&mut self, msg: Message) -> Result<(), TransportError> {
        if let Message::Abort { reason } = &msg {
            self.peer_fault.set(self.me, reason.clone(), true);
        }
        self.tx.send(msg).map_err(|_| TransportError::PeerGone { peer: self.peer, detail: "its thread ended".into() })
    }

    fn recv(&mut self) -> Result<Message, TransportError> {
        match wait(&self.rx, &self.fault, self.peer, self.timeout)? {
            Some(Message::Abort { reason }) => Err(TransportError::PeerAborted { peer: self.peer, reason }),
            Some(m) => Ok(m),
            None => Err(TransportError::PeerGone { peer: self.peer, detail: "its thread ended".into() }),
        }
    }
}
