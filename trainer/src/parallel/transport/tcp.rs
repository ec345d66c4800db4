//! TCP links between pods. Each stage but the first listens for its upstream neighbour; each but
//! the last connects to its downstream neighbour, retrying until it answers. With replicas, each
//! stage also connects to the same stage of the next replica and its process listens (on a second
//! port) for the previous replica's.
//!
//! The handshake proves the job's token without sending it (see `auth.rs` for the keys):
//!   listener → challenge: magic, version, the listener's nonce;
//!   connector → hello: magic, version, the link's role, its stage and replica, the connector's
//!     nonce and its proof (an HMAC of all that under a key derived from the token and both nonces);
//!   listener → welcome with its own proof, or refuse with a reason (a wrong version, a wrong
//!     token, a wrong role, a peer it does not expect). The connector checks the listener's proof.
//! The listener handshakes every connection on a thread of its own (at most `MAX_HANDSHAKES` at a
//! time; a connection past them is closed at once), reads at most `MAX_HELLO` bytes of hello and
//! gives each connection `HANDSHAKE_TIMEOUT` in all, so a slow, silent or malicious client cannot
//! keep the real peer out; it goes on accepting until every expected peer is in or its deadline
//! passes. A connector whose handshake fails without a refusal (closed, timed out) tries again
//! until its deadline.
//!
//! Frames are length-prefixed: u32 length (big-endian), then the body:
//!   u8 kind, u32 micro-batch, and for tensor kinds u8 dtype, u8 rank, rank × i64 dims, raw bytes
//!   (little-endian, contiguous); for the handshake's frames and abort their payload;
//! after the handshake, the body is followed by its 32-byte tag (`auth::FrameMac`: BLAKE3 keyed
//! with the direction's key, over the frame's number and body), which the receiver checks before
//! it decodes anything: a frame that fails is a protocol error that ends the link. Frames are
//! authenticated, not encrypted: a MAC keyed from the job's token rather than TLS, which would
//! need the operator to issue each job certificates; BLAKE3 for its speed (see `FrameMac`).
//! A reader thread drains the socket into a channel so that neither side's sends can block on
//! the other's (both directions of a link are busy in 1F1B's steady state).

mod auth;

pub use auth::{FrameMac, TAG};

use super::{Fault, Link, Message, Rank, TransportError, wait};
use auth::{NONCE, PROOF, Session, Side, nonce};
use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant};
use tch::{Kind, Tensor};

const MAGIC: &[u8; 8] = b"FRUGALPP";
const VERSION: u32 = 3;
/// Frames above this are refused as corrupt (1 GiB).
const MAX_FRAME: u32 = 1 << 30;
/// The largest hello a listener reads (one is 90 bytes): a larger length is refused unread.
const MAX_HELLO: u32 = 256;
/// The largest challenge or answer a connector reads (a refusal's reason is cut to fit).
const MAX_ANSWER: u32 = 1024;
/// How long a listener gives one connection for the whole handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// Handshakes a listener runs at once.
const MAX_HANDSHAKES: usize = 32;
/// The introduction in a hello: magic, version, role, stage, replica.
const INTRODUCTION: usize = 8 + 4 + 1 + 4 + 4;

const ACTIVATION: u8 = 1;
const GRADIENT: u8 = 2;
const REDUCE: u8 = 3;
const ABORT: u8 = 4;
const HELLO: u8 = 5;
const WELCOME: u8 = 6;
const REFUSE: u8 = 7;
const CHUNK: u8 = 8;
const CHALLENGE: u8 = 9;

/// What a connection is for, named in its hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Between neighbouring stages of one pipeline.
    Pipeline,
    /// From a stage to the same stage of the next replica.
    Ring,
}

impl Role {
    fn code(self) -> u8 {
        match self {
            Role::Pipeline => 0,
            Role::Ring => 1,
        }
    }

    fn name(code: u8) -> &'static str {
        match code {
            0 => "pipeline",
            1 => "ring",
            _ => "unknown",
        }
    }
}

/// A replica index on the wire; `u32::MAX` for a pipeline that is not replicated.
fn replica_code(r: Option<usize>) -> u32 {
    r.map_or(u32::MAX, |r| r as u32)
}

fn kind_code(k: Kind) -> Option<u8> {
    Some(match k {
        Kind::Float => 0,
        Kind::Double => 1,
        Kind::Half => 2,
        Kind::BFloat16 => 3,
        Kind::Int64 => 4,
        _ => return None,
    })
}

fn code_kind(c: u8) -> Option<Kind> {
    Some(match c {
        0 => Kind::Float,
        1 => Kind::Double,
        2 => Kind::Half,
        3 => Kind::BFloat16,
        4 => Kind::Int64,
        _ => return None,
    })
}

/// One frame's body.
fn encode(kind: u8, micro_batch: u32, tensor: Option<&Tensor>, text: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend(micro_batch.to_be_bytes());
    if let Some(t) = tensor {
        let t = t.to_device(tch::Device::Cpu).contiguous();
        let code = kind_code(t.kind()).unwrap_or_else(|| panic!("no wire format for {:?}", t.kind()));
        out.push(code);
        let dims = t.size();
        out.push(dims.len() as u8);
        for d in &dims {
            out.extend(d.to_le_bytes());
        }
        let numel = t.numel();
        let bytes = numel * t.kind().elt_size_in_bytes();
        let start = out.len();
        out.resize(start + bytes, 0);
        t.copy_data_u8(&mut out[start..], numel);
    }
    out.extend(text);
    out
}

/// Writes one frame made of `parts` (a body, and after the handshake its tag).
fn write_frame(mut w: impl Write, parts: &[&[u8]]) -> std::io::Result<()> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    w.write_all(&(len as u32).to_be_bytes())?;
    for p in parts {
        w.write_all(p)?;
    }
    w.flush()
}

/// Reads one frame of `min..=max` bytes. A length outside is refused before anything is read or
/// allocated, and memory grows with the bytes that arrive, not with the length announced.
fn read_frame(r: &mut impl Read, min: u32, max: u32) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len);
    if !(min..=max).contains(&len) {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("a frame of {len} bytes (from {min} to {max})")));
    }
    let len = len as usize;
    let mut body = Vec::new();
    while body.len() < len {
        // At most as much again as has arrived (at least 1 MiB) at a time.
        let start = body.len();
        body.resize(start + (len - start).min(start.max(1 << 20)), 0);
        r.read_exact(&mut body[start..])?;
    }
    Ok(body)
}

/// Reads from a stream until an instant: the deadline holds for the whole handshake, however
/// the bytes trickle in.
struct Until<'a> {
    stream: &'a TcpStream,
    deadline: Instant,
}

impl Read for Until<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        match self.stream.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Err(std::io::ErrorKind::TimedOut.into()),
            other => other,
        }
    }
}

/// Writes a small handshake frame, waiting at most until `deadline`.
fn write_until(stream: &TcpStream, deadline: Instant, body: &[u8]) -> std::io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    stream.set_write_timeout(Some(left))?;
    write_frame(stream, &[body])
}

/// (kind, micro-batch, tensor, text) of a frame body.
fn decode(body: &[u8]) -> Result<(u8, u32, Option<Tensor>, String), String> {
    let kind = body[0];
    let micro_batch = u32::from_be_bytes(body[1..5].try_into().unwrap());
    let rest = &body[5..];
    if matches!(kind, ACTIVATION | GRADIENT | REDUCE | CHUNK) {
        if rest.len() < 2 {
            return Err("truncated tensor header".into());
        }
        let dtype = code_kind(rest[0]).ok_or_else(|| format!("unknown dtype code {}", rest[0]))?;
        let rank = rest[1] as usize;
        let mut at = 2;
        let mut dims = Vec::with_capacity(rank);
        for _ in 0..rank {
            let d = rest.get(at..at + 8).ok_or("truncated dims")?;
            dims.push(i64::from_le_bytes(d.try_into().unwrap()));
            at += 8;
        }
        let numel: i64 = dims.iter().product();
        let bytes = numel as usize * dtype.elt_size_in_bytes();
        if rest.len() != at + bytes {
            return Err(format!("tensor {dims:?} {dtype:?} needs {bytes} bytes, the frame has {}", rest.len() - at));
        }
        let t = Tensor::from_data_size(&rest[at..], &dims, dtype);
        Ok((kind, micro_batch, Some(t), String::new()))
    } else {
        Ok((kind, micro_batch, None, String::from_utf8_lossy(rest).into_owned()))
    }
}

/// A connected, authenticated link to a neighbouring stage or replica.
pub struct TcpLink {
    peer: Rank,
    addr: String,
    writer: BufWriter<TcpStream>,
    /// Tags the frames this side sends.
    mac: FrameMac,
    rx: Receiver<Result<Message, TransportError>>,
    timeout: Duration,
    fault: Fault,
}

impl TcpLink {
    /// Starts a link over a handshaken `stream`: `sending` tags this side's frames, `receiving`
    /// checks the peer's.
    fn start(
        stream: TcpStream,
        peer: Rank,
        addr: String,
        timeout: Duration,
        fault: &Fault,
        (sending, mut receiving): (FrameMac, FrameMac),
    ) -> std::io::Result<Self> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(None)?;
        stream.set_write_timeout(Some(timeout))?;
        let reader = stream.try_clone()?;
        let (tx, rx) = channel();
        let reader_addr = addr.clone();
        let reader_fault = fault.clone();
        std::thread::Builder::new().name(format!("link-{}", peer.stage)).spawn(move || {
            let mut r = BufReader::with_capacity(1 << 20, reader);
            loop {
                let body = match read_frame(&mut r, (5 + TAG) as u32, MAX_FRAME) {
                    Ok(body) => Ok(body),
                    // A length no frame can have: as bad as a failed tag.
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Err(format!("{e} from {reader_addr}")),
                    Err(e) => {
                        let detail = match e.kind() {
                            std::io::ErrorKind::UnexpectedEof => format!("connection from {reader_addr} closed"),
                            _ => format!("connection from {reader_addr} failed: {e}"),
                        };
                        reader_fault.set(peer, detail.clone(), false);
                        let _ = tx.send(Err(TransportError::PeerGone { peer, detail }));
                        return;
                    }
                };
                let item = body.and_then(|body| {
                    let (body, tag) = body.split_at(body.len() - TAG);
                    let frame = receiving.frames();
                    if !receiving.verify(body, tag) {
                        return Err(format!(
                            "frame {frame} from {reader_addr} failed authentication (altered, replayed, reordered or after a lost one)"
                        ));
                    }
                    match decode(body) {
                        Err(detail) => Err(detail),
                        Ok((ACTIVATION, mb, Some(t), _)) => Ok(Message::Activation { micro_batch: mb, tensor: t }),
                        Ok((GRADIENT, mb, Some(t), _)) => Ok(Message::Gradient { micro_batch: mb, tensor: t }),
                        Ok((REDUCE, _, Some(t), _)) => Ok(Message::Reduce { tensor: t }),
                        Ok((CHUNK, index, Some(t), _)) => Ok(Message::Chunk { index, tensor: t }),
                        Ok((ABORT, _, _, reason)) => {
                            reader_fault.set(peer, reason.clone(), true);
                            Ok(Message::Abort { reason })
                        }
                        Ok((k, ..)) => Err(format!("unexpected frame kind {k}")),
                    }
                });
                match item {
                    Ok(msg) => {
                        if tx.send(Ok(msg)).is_err() {
                            return;
                        }
                    }
                    // Nothing after a bad frame can be trusted: this link is over, and the
                    // stage's other links learn it through the fault.
                    Err(detail) => {
                        let _ = tx.send(Err(TransportError::Protocol { peer, detail: detail.clone() }));
                        reader_fault.set(peer, format!("protocol error: {detail}"), false);
                        return;
                    }
                }
            }
        })?;
        Ok(Self { peer, addr, writer: BufWriter::with_capacity(1 << 20, stream), mac: sending, rx, timeout, fault: fault.clone() })
    }
}

impl Drop for TcpLink {
    fn drop(&mut self) {
        let _ = self.writer.flush();
        let _ = self.writer.get_ref().shutdown(Shutdown::Both);
    }
}

impl Link for TcpLink {
    fn peer(&self) -> Rank {
        self.peer
    }

    fn send(&mut self, msg: Message) -> Result<(), TransportError> {
        let body = match &msg {
            Message::Activation { micro_batch, tensor } => encode(ACTIVATION, *micro_batch, Some(tensor), &[]),
            Message::Gradient { micro_batch, tensor } => encode(GRADIENT, *micro_batch, Some(tensor), &[]),
            Message::Reduce { tensor } => encode(REDUCE, 0, Some(tensor), &[]),
            Message::Chunk { index, tensor } => encode(CHUNK, *index, Some(tensor), &[]),
            Message::Abort { reason } => encode(ABORT, 0, None, reason.as_bytes()),
        };
        let tag = self.mac.tag(&body);
        write_frame(&mut self.writer, &[&body, &tag])
            .map_err(|e| TransportError::PeerGone { peer: self.peer, detail: format!("sending a {} to {}: {e}", msg.name(), self.addr) })
    }

    fn recv(&mut self) -> Result<Message, TransportError> {
        match wait(&self.rx, &self.fault, self.peer, self.timeout)? {
            Some(Ok(Message::Abort { reason })) => Err(TransportError::PeerAborted { peer: self.peer, reason }),
            Some(item) => item,
            None => Err(TransportError::PeerGone { peer: self.peer, detail: format!("connection from {} closed", self.addr) }),
        }
    }
}

/// Listens on `listener` for stage `upstream_stage` of a pipeline that is not replicated,
/// refusing any peer without `token`, until one is accepted or `timeout` passes.
pub fn accept_upstream(
    listener: &TcpListener,
    upstream_stage: usize,
    token: &[u8],
    timeout: Duration,
    fault: &Fault,
) -> Result<TcpLink, TransportError> {
    let mut links = accept(listener, Role::Pipeline, &[Rank::stage(upstream_stage)], token, timeout, std::slice::from_ref(fault))?;
    Ok(links.remove(0))
}

/// A connection whose hello proved the token, for the role the listener serves.
struct Introduced {
    stream: TcpStream,
    from: SocketAddr,
    rank: Rank,
    session: Session,
}

/// Refuses a connection, saying why to both ends.
fn refuse_connection(stream: &TcpStream, deadline: Instant, role: Role, from: SocketAddr, reason: &str) {
    crate::warn!("refused a {} connection from {from}: {reason}", Role::name(role.code()));
    let mut reason = reason.as_bytes();
    reason = &reason[..reason.len().min(MAX_ANSWER as usize - 5)];
    let _ = write_until(stream, deadline, &encode(REFUSE, 0, None, reason));
    let _ = stream.shutdown(Shutdown::Both);
}

/// The listener's side of a handshake, up to the point where it knows who connected: challenge,
/// hello, version, proof, role. `None` when the connection was refused (and closed).
fn introduce(stream: TcpStream, from: SocketAddr, role: Role, token: &[u8]) -> Option<Introduced> {
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let refuse = |reason: &str| refuse_connection(&stream, deadline, role, from, reason);
    let challenge = |nonce: &[u8; NONCE]| -> std::io::Result<()> {
        stream.set_nodelay(true)?;
        write_until(&stream, deadline, &encode(CHALLENGE, 0, None, &[MAGIC.as_slice(), &VERSION.to_be_bytes(), nonce].concat()))
    };
    let ours = match nonce() {
        Ok(n) => n,
        Err(e) => {
            refuse(&format!("no nonce: {e}"));
            return None;
        }
    };
    if challenge(&ours).is_err() {
        let _ = stream.shutdown(Shutdown::Both);
        return None;
    }
    let hello = match read_frame(&mut Until { stream: &stream, deadline }, 5, MAX_HELLO) {
        Ok(b) if b[0] == HELLO => b,
        Ok(b) => {
            refuse(&format!("a frame of kind {} where the hello belongs", b[0]));
            return None;
        }
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            refuse(&format!("no hello within {} s", HANDSHAKE_TIMEOUT.as_secs()));
            return None;
        }
        Err(e) => {
            refuse(&format!("no hello: {e}"));
            return None;
        }
    };
    let text = &hello[5..];
    if text.len() < 12 || &text[..8] != MAGIC {
        refuse("not a frugal pipeline peer");
        return None;
    }
    let version = u32::from_be_bytes(text[8..12].try_into().unwrap());
    if version != VERSION {
        refuse(&format!("protocol version {version}, expected {VERSION}"));
        return None;
    }
    if text.len() != INTRODUCTION + NONCE + PROOF {
        refuse(&format!("a hello of {} bytes, expected {}", hello.len(), 5 + INTRODUCTION + NONCE + PROOF));
        return None;
    }
    let (introduction, rest) = text.split_at(INTRODUCTION);
    let (theirs, proof) = rest.split_at(NONCE);
    let session = Session::new(token, &ours, theirs.try_into().unwrap(), introduction);
    if !session.verify(Side::Connector, proof) {
        refuse("wrong token");
        return None;
    }
    let their_role = introduction[12];
    if their_role != role.code() {
        refuse(&format!("a {} connection, expected a {} one", Role::name(their_role), Role::name(role.code())));
        return None;
    }
    let stage = u32::from_be_bytes(introduction[13..17].try_into().unwrap()) as usize;
    let replica = u32::from_be_bytes(introduction[17..21].try_into().unwrap());
    let rank = Rank { stage, replica: (replica != u32::MAX).then_some(replica as usize) };
    Some(Introduced { stream, from, rank, session })
}

/// Listens on `listener` until each of `expected` has connected for `role` (in any order),
/// refusing any peer without `token`, in the wrong role, or not expected, or until `timeout`
/// passes. The links come back in the order of `expected`, each with its fault.
pub fn accept(
    listener: &TcpListener,
    role: Role,
    expected: &[Rank],
    token: &[u8],
    timeout: Duration,
    faults: &[Fault],
) -> Result<Vec<TcpLink>, TransportError> {
    let deadline = Instant::now() + timeout;
    let local = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let first = expected.first().copied().unwrap_or(Rank::stage(0));
    let io = |peer: Rank, source| TransportError::Io { peer, addr: local.clone(), source };
    listener.set_nonblocking(true).map_err(|e| io(first, e))?;
    let token: Arc<[u8]> = token.into();
    // Each connection is introduced on a thread of its own, which reports here once.
    let (done, introduced): (Sender<Option<Introduced>>, _) = channel();
    let mut in_flight = 0;
    let mut links: Vec<Option<TcpLink>> = expected.iter().map(|_| None).collect();
    while links.iter().any(Option::is_none) {
        let waiting = expected[links.iter().position(Option::is_none).unwrap_or(0)];
        loop {
            let (stream, from) = match listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                // A connection reset before it was accepted, or a momentary lack of descriptors.
                Err(e) if matches!(e.kind(), std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset) => continue,
                Err(e) if e.raw_os_error().is_some_and(|c| c == libc::EMFILE || c == libc::ENFILE) => break,
                Err(e) => return Err(io(waiting, e)),
            };
            if in_flight >= MAX_HANDSHAKES {
                crate::warn!("closed a connection from {from}: {MAX_HANDSHAKES} handshakes already running");
                continue;
            }
            let (done, token) = (done.clone(), token.clone());
            let handshake = std::thread::Builder::new().name("handshake".into()).stack_size(256 << 10).spawn(move || {
                let _ = stream.set_nonblocking(false);
                let _ = done.send(introduce(stream, from, role, &token));
            });
            match handshake {
                Ok(_) => in_flight += 1,
                Err(e) => crate::warn!("closed a connection from {from}: no thread for its handshake: {e}"),
            }
        }
        match introduced.recv_timeout(Duration::from_millis(10)) {
            Ok(report) => {
                in_flight -= 1;
                if let Some(peer) = report {
                    let rank = peer.rank;
                    admit(&mut links, expected, peer, role, timeout, faults).map_err(|e| io(rank, e))?;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => unreachable!("this loop holds a sender"),
        }
        if links.iter().any(Option::is_none) && Instant::now() >= deadline {
            return Err(TransportError::Timeout { peer: waiting, seconds: timeout.as_secs_f64() });
        }
    }
    Ok(links.into_iter().map(|l| l.expect("every expected peer connected")).collect())
}

/// Welcomes an introduced peer into its slot, or refuses it when it is not expected (or already in).
fn admit(links: &mut [Option<TcpLink>], expected: &[Rank], peer: Introduced, role: Role, timeout: Duration, faults: &[Fault]) -> std::io::Result<()> {
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let Some(slot) = expected.iter().position(|&r| r == peer.rank).filter(|&i| links[i].is_none()) else {
        let want: Vec<String> = expected.iter().zip(links.iter()).filter(|(_, l)| l.is_none()).map(|(r, _)| r.to_string()).collect();
        refuse_connection(&peer.stream, deadline, role, peer.from, &format!("{} connected, expected {}", peer.rank, want.join(" or ")));
        return Ok(());
    };
    if let Err(e) = write_until(&peer.stream, deadline, &encode(WELCOME, 0, None, &peer.session.proof(Side::Listener))) {
        crate::warn!("lost {} ({}) before its welcome: {e}", peer.rank, peer.from);
        return Ok(());
    }
    let keys = (peer.session.frames_from(Side::Listener), peer.session.frames_from(Side::Connector));
    links[slot] = Some(TcpLink::start(peer.stream, peer.rank, peer.from.to_string(), timeout, &faults[slot], keys)?);
    Ok(())
}

/// Connects stage `my_stage` of a pipeline that is not replicated to its downstream neighbour at
/// `addr`, retrying until it listens or `timeout` passes.
pub fn connect_downstream(addr: &str, my_stage: usize, token: &[u8], timeout: Duration, fault: &Fault) -> Result<TcpLink, TransportError> {
    connect(addr, Role::Pipeline, Rank::stage(my_stage), Rank::stage(my_stage + 1), token, timeout, fault)
}

/// Why a connector's handshake did not end in a link.
enum Failed {
    /// The connection broke or went quiet: worth another one.
    Broken(std::io::Error),
    /// The listener refused, or is not a peer to trust.
    Final(TransportError),
}

/// Connects `me` to `peer` at `addr` for `role`, retrying until it listens and completes a
/// handshake, or `timeout` passes.
pub fn connect(addr: &str, role: Role, me: Rank, peer: Rank, token: &[u8], timeout: Duration, fault: &Fault) -> Result<TcpLink, TransportError> {
    let deadline = Instant::now() + timeout;
    let io = |source| TransportError::Io { peer, addr: addr.into(), source };
    loop {
        let attempt = addr.to_socket_addrs().and_then(|mut a| {
            let a = a.next().ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))?;
            TcpStream::connect_timeout(&a, Duration::from_secs(5))
        });
        let failure = match attempt {
            Ok(stream) => {
                let ours = nonce().map_err(io)?;
                // Twice the listener's allowance: the clock started before it accepted.
                let until = deadline.min(Instant::now() + 2 * HANDSHAKE_TIMEOUT);
                match handshake(&stream, role, me, peer, token, &ours, until) {
                    Ok(keys) => return TcpLink::start(stream, peer, addr.into(), timeout, fault, keys).map_err(io),
                    Err(Failed::Final(e)) => return Err(e),
                    Err(Failed::Broken(e)) => std::io::Error::new(e.kind(), format!("handshake failed: {e}")),
                }
            }
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(io(failure));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The connector's side of a handshake: reads the challenge, sends the hello with its proof,
/// checks the listener's. The frame MACs (sending, receiving) when both proofs hold.
fn handshake(
    stream: &TcpStream,
    role: Role,
    me: Rank,
    peer: Rank,
    token: &[u8],
    ours: &[u8; NONCE],
    deadline: Instant,
) -> Result<(FrameMac, FrameMac), Failed> {
    let protocol = |detail: String| Failed::Final(TransportError::Protocol { peer, detail });
    let refused = |reason: &[u8]| Failed::Final(TransportError::Refused { peer, reason: String::from_utf8_lossy(reason).into_owned() });
    stream.set_nodelay(true).map_err(Failed::Broken)?;
    let challenge = read_frame(&mut Until { stream, deadline }, 5, MAX_ANSWER).map_err(Failed::Broken)?;
    let text = &challenge[5..];
    match challenge[0] {
        CHALLENGE => {}
        REFUSE => return Err(refused(text)),
        k => return Err(protocol(format!("a frame of kind {k} where the challenge belongs"))),
    }
    if text.len() < 12 || &text[..8] != MAGIC {
        return Err(protocol("not a frugal pipeline peer".into()));
    }
    let version = u32::from_be_bytes(text[8..12].try_into().unwrap());
    if version != VERSION {
        return Err(protocol(format!("protocol version {version}, expected {VERSION}")));
    }
    if text.len() != 12 + NONCE {
        return Err(protocol(format!("a challenge of {} bytes, expected {}", challenge.len(), 5 + 12 + NONCE)));
    }
    let mut introduction = MAGIC.to_vec();
    introduction.extend(VERSION.to_be_bytes());
    introduction.push(role.code());
    introduction.extend((me.stage as u32).to_be_bytes());
    introduction.extend(replica_code(me.replica).to_be_bytes());
    let session = Session::new(token, text[12..].try_into().unwrap(), ours, &introduction);
    let hello = [introduction.as_slice(), ours, &session.proof(Side::Connector)].concat();
    write_until(stream, deadline, &encode(HELLO, 0, None, &hello)).map_err(Failed::Broken)?;
    let answer = read_frame(&mut Until { stream, deadline }, 5, MAX_ANSWER).map_err(Failed::Broken)?;
    match answer[0] {
        WELCOME if session.verify(Side::Listener, &answer[5..]) => Ok((session.frames_from(Side::Connector), session.frames_from(Side::Listener))),
        WELCOME => Err(protocol("its welcome does not prove that it holds the job's token".into())),
        REFUSE => Err(refused(&answer[5..])),
        k => Err(protocol(format!("answer of kind {k} to hello"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_round_trip_through_frames() {
        for kind in [Kind::Float, Kind::BFloat16, Kind::Int64, Kind::Double] {
            let t = Tensor::arange(24, (Kind::Float, tch::Device::Cpu)).view([2, 3, 4]).to_kind(kind);
            let (k, mb, back, _) = decode(&encode(GRADIENT, 7, Some(&t), &[])).unwrap();
            assert_eq!((k, mb), (GRADIENT, 7));
            let back = back.unwrap();
            assert_eq!(back.size(), vec![2, 3, 4]);
            assert_eq!(back.kind(), kind);
            assert!(back.equal(&t));
        }
        let mut body = encode(ACTIVATION, 0, Some(&Tensor::ones([4], (Kind::Float, tch::Device::Cpu))), &[]);
        body.pop();
        assert!(decode(&body).is_err(), "a truncated tensor is refused");
    }
}
