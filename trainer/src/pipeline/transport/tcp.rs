//! TCP links between pods. Each stage but the first listens for its upstream neighbour; each but
//! the last connects to its downstream neighbour, retrying until it answers. With replicas, each
//! stage also connects to the same stage of the next replica and its process listens (on a second
//! port) for the previous replica's. The connecting side opens with a hello (magic, version, the
//! link's role, its stage and replica, the job's token); the listener checks the token in
//! constant time, the role and who connected, and answers welcome or refuses with a reason, then
//! goes on listening for the right peers until its deadline.
//!
//! Frames are length-prefixed: u32 length (big-endian), then the body:
//!   u8 kind, u32 micro-batch, and for tensor kinds u8 dtype, u8 rank, rank × i64 dims, raw bytes
//!   (little-endian, contiguous); for hello/refuse/abort a UTF-8 payload.
//! A reader thread drains the socket into a channel so that neither side's sends can block on
//! the other's (both directions of a link are busy in 1F1B's steady state).

use super::{Fault, Link, Message, Rank, TransportError, wait};
use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};
use tch::{Kind, Tensor};

const MAGIC: &[u8; 8] = b"FRUGALPP";
const VERSION: u32 = 2;
/// Frames above this are refused as corrupt (1 GiB).
const MAX_FRAME: u32 = 1 << 30;

const ACTIVATION: u8 = 1;
const GRADIENT: u8 = 2;
const REDUCE: u8 = 3;
const ABORT: u8 = 4;
const HELLO: u8 = 5;
const WELCOME: u8 = 6;
const REFUSE: u8 = 7;
const CHUNK: u8 = 8;

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

fn write_frame(w: &mut impl Write, body: &[u8]) -> std::io::Result<()> {
    w.write_all(&(body.len() as u32).to_be_bytes())?;
    w.write_all(body)?;
    w.flush()
}

fn read_frame(r: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len);
    if !(5..=MAX_FRAME).contains(&len) {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("frame of {len} bytes")));
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body)?;
    Ok(body)
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
    rx: Receiver<Result<Message, TransportError>>,
    timeout: Duration,
    fault: Fault,
}

impl TcpLink {
    fn start(stream: TcpStream, peer: Rank, addr: String, timeout: Duration, fault: &Fault) -> std::io::Result<Self> {
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
                let item = match read_frame(&mut r) {
                    Err(e) => {
                        let detail = match e.kind() {
                            std::io::ErrorKind::UnexpectedEof => format!("connection from {reader_addr} closed"),
                            _ => format!("connection from {reader_addr} failed: {e}"),
                        };
                        reader_fault.set(peer, detail.clone(), false);
                        let _ = tx.send(Err(TransportError::PeerGone { peer, detail }));
                        return;
                    }
                    Ok(body) => match decode(&body) {
                        Err(detail) => Err(TransportError::Protocol { peer, detail }),
                        Ok((ACTIVATION, mb, Some(t), _)) => Ok(Message::Activation { micro_batch: mb, tensor: t }),
                        Ok((GRADIENT, mb, Some(t), _)) => Ok(Message::Gradient { micro_batch: mb, tensor: t }),
                        Ok((REDUCE, _, Some(t), _)) => Ok(Message::Reduce { tensor: t }),
                        Ok((CHUNK, index, Some(t), _)) => Ok(Message::Chunk { index, tensor: t }),
                        Ok((ABORT, _, _, reason)) => {
                            reader_fault.set(peer, reason.clone(), true);
                            Ok(Message::Abort { reason })
                        }
                        Ok((k, ..)) => Err(TransportError::Protocol { peer, detail: format!("unexpected frame kind {k}") }),
                    },
                };
                let stop = item.is_err();
                if tx.send(item).is_err() || stop {
                    return;
                }
            }
        })?;
        Ok(Self { peer, addr, writer: BufWriter::with_capacity(1 << 20, stream), rx, timeout, fault: fault.clone() })
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
        write_frame(&mut self.writer, &body)
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

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
    let mut links: Vec<Option<TcpLink>> = expected.iter().map(|_| None).collect();
    while links.iter().any(Option::is_none) {
        let waiting = expected[links.iter().position(Option::is_none).unwrap_or(0)];
        let (stream, from) = match listener.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(TransportError::Timeout { peer: waiting, seconds: timeout.as_secs_f64() });
                }
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => return Err(io(waiting, e)),
        };
        stream.set_nonblocking(false).map_err(|e| io(waiting, e))?;
        stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| io(waiting, e))?;
        let mut s = stream;
        let refuse = |s: &mut TcpStream, reason: &str| {
            eprintln!("frugal-trainer: refused a {} connection from {from}: {reason}", Role::name(role.code()));
            let _ = write_frame(s, &encode(REFUSE, 0, None, reason.as_bytes()));
            let _ = s.shutdown(Shutdown::Both);
        };
        let hello = match read_frame(&mut s) {
            Ok(b) if b[0] == HELLO => b,
            _ => {
                refuse(&mut s, "no hello");
                continue;
            }
        };
        let text = &hello[5..];
        if text.len() < 12 || &text[..8] != MAGIC {
            refuse(&mut s, "not a frugal pipeline peer");
            continue;
        }
        let version = u32::from_be_bytes(text[8..12].try_into().unwrap());
        if version != VERSION || text.len() < 21 {
            refuse(&mut s, &format!("protocol version {version}, expected {VERSION}"));
            continue;
        }
        let their_role = text[12];
        let stage = u32::from_be_bytes(text[13..17].try_into().unwrap()) as usize;
        let replica = u32::from_be_bytes(text[17..21].try_into().unwrap());
        let got = Rank { stage, replica: (replica != u32::MAX).then_some(replica as usize) };
        if !constant_time_eq(&text[21..], token) {
            refuse(&mut s, "wrong token");
            continue;
        }
        if their_role != role.code() {
            refuse(&mut s, &format!("a {} connection, expected a {} one", Role::name(their_role), Role::name(role.code())));
            continue;
        }
        let Some(slot) = expected.iter().position(|&r| r == got).filter(|&i| links[i].is_none()) else {
            let want: Vec<String> = expected.iter().zip(&links).filter(|(_, l)| l.is_none()).map(|(r, _)| r.to_string()).collect();
            refuse(&mut s, &format!("{got} connected, expected {}", want.join(" or ")));
            continue;
        };
        write_frame(&mut s, &encode(WELCOME, 0, None, &[])).map_err(|e| io(got, e))?;
        links[slot] = Some(TcpLink::start(s, got, from.to_string(), timeout, &faults[slot]).map_err(|e| io(got, e))?);
    }
    Ok(links.into_iter().map(|l| l.expect("every expected peer connected")).collect())
}

/// Connects stage `my_stage` of a pipeline that is not replicated to its downstream neighbour at
/// `addr`, retrying until it listens or `timeout` passes.
pub fn connect_downstream(addr: &str, my_stage: usize, token: &[u8], timeout: Duration, fault: &Fault) -> Result<TcpLink, TransportError> {
    connect(addr, Role::Pipeline, Rank::stage(my_stage), Rank::stage(my_stage + 1), token, timeout, fault)
}

/// Connects `me` to `peer` at `addr` for `role`, retrying until it listens or `timeout` passes.
pub fn connect(addr: &str, role: Role, me: Rank, peer: Rank, token: &[u8], timeout: Duration, fault: &Fault) -> Result<TcpLink, TransportError> {
    let deadline = Instant::now() + timeout;
    let mut stream = loop {
        let attempt = addr.to_socket_addrs().and_then(|mut a| {
            let a = a.next().ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))?;
            TcpStream::connect_timeout(&a, Duration::from_secs(5))
        });
        let e = match attempt {
            Ok(s) => break s,
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(TransportError::Io { peer, addr: addr.into(), source: e });
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let io = |source| TransportError::Io { peer, addr: addr.into(), source };
    let mut hello = MAGIC.to_vec();
    hello.extend(VERSION.to_be_bytes());
    hello.push(role.code());
    hello.extend((me.stage as u32).to_be_bytes());
    hello.extend(replica_code(me.replica).to_be_bytes());
    hello.extend(token);
    write_frame(&mut stream, &encode(HELLO, 0, None, &hello)).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    let answer = read_frame(&mut stream).map_err(|e| TransportError::Refused { peer, reason: format!("no answer to hello: {e}") })?;
    match answer[0] {
        WELCOME => TcpLink::start(stream, peer, addr.into(), timeout, fault).map_err(io),
        REFUSE => Err(TransportError::Refused { peer, reason: String::from_utf8_lossy(&answer[5..]).into_owned() }),
        k => Err(TransportError::Protocol { peer, detail: format!("answer of kind {k} to hello") }),
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
