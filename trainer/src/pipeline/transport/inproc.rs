//! Stages on threads of one process: a link is a pair of channels. When a stage's thread ends,
//! its end of the channel drops and the neighbour's next receive fails naming that stage.

use super::{Link, Message, TransportError};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::Duration;

pub struct ChannelLink {
    peer: usize,
    tx: Sender<Message>,
    rx: Receiver<Message>,
    timeout: Duration,
}

/// Two connected ends: the first is held by stage `a`, the second by stage `b`.
pub fn pair(a: usize, b: usize, timeout: Duration) -> (ChannelLink, ChannelLink) {
    let (tx_ab, rx_ab) = channel();
    let (tx_ba, rx_ba) = channel();
    (
        ChannelLink { peer: b, tx: tx_ab, rx: rx_ba, timeout },
        ChannelLink { peer: a, tx: tx_ba, rx: rx_ab, timeout },
    )
}

/// Links for `stages` stages in a chain: element s is (upstream, downstream) of stage s.
pub fn chain(stages: usize, timeout: Duration) -> Vec<(Option<Box<dyn Link>>, Option<Box<dyn Link>>)> {
    let mut out: Vec<(Option<Box<dyn Link>>, Option<Box<dyn Link>>)> = (0..stages).map(|_| (None, None)).collect();
    for s in 1..stages {
        let (down, up) = pair(s - 1, s, timeout);
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
        self.tx.send(msg).map_err(|_| TransportError::PeerGone { stage: self.peer, detail: "its thread ended".into() })
    }

    fn recv(&mut self) -> Result<Message, TransportError> {
        match self.rx.recv_timeout(self.timeout) {
            Ok(Message::Abort { reason }) => Err(TransportError::PeerAborted { stage: self.peer, reason }),
            Ok(m) => Ok(m),
            Err(RecvTimeoutError::Timeout) => Err(TransportError::Timeout { stage: self.peer, seconds: self.timeout.as_secs_f64() }),
            Err(RecvTimeoutError::Disconnected) => {
                Err(TransportError::PeerGone { stage: self.peer, detail: "its thread ended".into() })
            }
        }
    }
}
