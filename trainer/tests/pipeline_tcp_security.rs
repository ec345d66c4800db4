//! The TCP transport against hostile clients and a hostile path: a hello that announces 1 GiB or
//! trickles in, or a flood of silent connections, does not keep the real peer out; the token
//! never crosses the wire; a frame altered, replayed, reordered or dropped on the way is a
//! protocol error naming the peer; a listener that cannot prove the token is not trusted.

use frugal_trainer::parallel::transport::tcp::{self, Role};
use frugal_trainer::parallel::transport::{Fault, Link, Message, Rank, TransportError};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

/// Like the operator's: 32 random bytes, hex.
const TOKEN: &[u8] = b"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
const LONG: Duration = Duration::from_secs(20);

fn listen() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    (listener, addr)
}

/// A field of /proc/self/status, in its unit (kB for memory).
fn proc_status(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Writes a byte every 100 ms for `seconds`, until the connection breaks.
fn trickle(stream: &TcpStream, seconds: u64) -> JoinHandle<()> {
    let mut s = stream.try_clone().unwrap();
    std::thread::spawn(move || {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(seconds) && s.write_all(&[0]).is_ok() {
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

/// How long after `since` the listener closed `stream` (reading and dropping what it sent), or
/// `None` if it was still open `within` after.
fn closed_after(stream: &TcpStream, since: Instant, within: Duration) -> Option<Duration> {
    let mut s = stream.try_clone().unwrap();
    let mut buf = [0u8; 1024];
    loop {
        let left = (since + within).saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return Some(since.elapsed()),
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => return None,
            Err(_) => return Some(since.elapsed()),
        }
    }
}

#[test]
fn a_huge_or_trickling_hello_does_not_keep_the_real_peer_out() {
    let (listener, addr) = listen();
    let peak_before = proc_status("VmHWM:");
    let server = std::thread::spawn(move || tcp::accept(&listener, Role::Pipeline, &[Rank::stage(0)], TOKEN, LONG, &[Fault::default()]));
    // One client announces a 1 GiB hello, another a plausible one; both then trickle a byte every
    // 100 ms, which a per-read timeout would never end.
    let t0 = Instant::now();
    let huge = TcpStream::connect(&addr).unwrap();
    (&huge).write_all(&(1u32 << 30).to_be_bytes()).unwrap();
    let slow = TcpStream::connect(&addr).unwrap();
    (&slow).write_all(&90u32.to_be_bytes()).unwrap();
    let trickles = [trickle(&huge, 8), trickle(&slow, 8)];
    std::thread::sleep(Duration::from_millis(300));
    // The real peer gets in while both are still at it.
    let t = Instant::now();
    let link = tcp::connect_downstream(&addr, 0, TOKEN, LONG, &Fault::default());
    let took = t.elapsed();
    assert!(link.is_ok(), "{:?}", link.err());
    assert!(took < Duration::from_secs(3), "the real peer took {took:?} to get in");
    let links = server.join().unwrap().unwrap();
    assert_eq!(links[0].peer(), Rank::stage(0));
    // The huge hello was refused at once, unread; the trickling one when its 3 s were up, not
    // when it stopped.
    let huge_closed = closed_after(&huge, t0, Duration::from_secs(1));
    assert!(huge_closed.is_some(), "a hello of 1 GiB was not refused within 1 s");
    let slow_closed = closed_after(&slow, t0, Duration::from_secs(6)).expect("a trickling hello was not cut off within 6 s");
    assert!((Duration::from_millis(2500)..Duration::from_millis(4500)).contains(&slow_closed), "a trickling hello was cut off after {slow_closed:?}");
    let peak_after = proc_status("VmHWM:");
    assert!(peak_after < peak_before + 64 * 1024, "peak memory grew from {peak_before} kB to {peak_after} kB");
    for t in trickles {
        t.join().unwrap();
    }
}

#[test]
fn a_flood_of_silent_connections_is_bounded_and_the_real_peer_still_gets_in() {
    let (listener, addr) = listen();
    let threads_before = proc_status("Threads:");
    let server = std::thread::spawn(move || tcp::accept(&listener, Role::Pipeline, &[Rank::stage(0)], TOKEN, LONG, &[Fault::default()]));
    let flood: Vec<TcpStream> = (0..100).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(500));
    let threads_during = proc_status("Threads:");
    // A thread per handshake, at most 32 of them (and a few of the other tests running beside).
    assert!(threads_during < threads_before + 32 + 16, "{threads_before} threads before the flood, {threads_during} during it");
    let t = Instant::now();
    let link = tcp::connect_downstream(&addr, 0, TOKEN, LONG, &Fault::default());
    assert!(link.is_ok(), "{:?}", link.err());
    // At worst it waits for the silent handshakes' 3 s.
    assert!(t.elapsed() < Duration::from_secs(6), "the real peer took {:?} to get in", t.elapsed());
    server.join().unwrap().unwrap();
    drop(flood);
}

/// What crossed a proxy, each way.
#[derive(Clone, Default)]
struct Captured {
    to_listener: Arc<Mutex<Vec<u8>>>,
    to_connector: Arc<Mutex<Vec<u8>>>,
}

/// Passes one connection's frames from the connector through `edit` (the frame's number and its
/// bytes, length prefix included, to the frames sent on), and the listener's bytes unchanged.
type Edit = Box<dyn FnMut(usize, Vec<u8>) -> Vec<Vec<u8>> + Send>;

/// A proxy to `target` for one connection: its address, what crossed it, and its threads.
fn proxy(target: String, mut edit: Edit) -> (String, Captured, JoinHandle<()>) {
    let (listener, addr) = listen();
    let captured = Captured::default();
    let c = captured.clone();
    let handle = std::thread::spawn(move || {
        let (client, _) = listener.accept().unwrap();
        let server = TcpStream::connect(&target).unwrap();
        let (mut from_server, mut to_client, to_connector) = (server.try_clone().unwrap(), client.try_clone().unwrap(), c.to_connector.clone());
        let down = std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            while let Ok(n) = from_server.read(&mut buf) {
                if n == 0 {
                    break;
                }
                to_connector.lock().unwrap().extend(&buf[..n]);
                if to_client.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = to_client.shutdown(Shutdown::Write);
        });
        let (mut from_client, mut to_server) = (client, server);
        for number in 0.. {
            let mut len = [0u8; 4];
            if from_client.read_exact(&mut len).is_err() {
                break;
            }
            let mut frame = len.to_vec();
            frame.resize(4 + u32::from_be_bytes(len) as usize, 0);
            if from_client.read_exact(&mut frame[4..]).is_err() {
                break;
            }
            c.to_listener.lock().unwrap().extend(&frame);
            if edit(number, frame).iter().any(|f| to_server.write_all(f).is_err()) {
                break;
            }
        }
        let _ = to_server.shutdown(Shutdown::Write);
        down.join().unwrap();
    });
    (addr, captured, handle)
}

/// A link from stage 0 to stage 1 through a proxy that edits stage 0's frames: (stage 0's end,
/// stage 1's end, what crossed, the proxy).
fn linked_through(edit: Edit) -> (tcp::TcpLink, tcp::TcpLink, Captured, JoinHandle<()>) {
    let (listener, addr) = listen();
    let server = std::thread::spawn(move || tcp::accept_upstream(&listener, 0, TOKEN, LONG, &Fault::default()));
    let (via, captured, handle) = proxy(addr, edit);
    let down = tcp::connect_downstream(&via, 0, TOKEN, LONG, &Fault::default()).unwrap();
    let up = server.join().unwrap().unwrap();
    (down, up, captured, handle)
}

fn activation(micro_batch: u32) -> Message {
    Message::Activation { micro_batch, tensor: Tensor::arange(1000, (Kind::Float, Device::Cpu)) + micro_batch as f64 }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn the_token_never_crosses_the_wire() {
    let (mut down, mut up, captured, proxy) = linked_through(Box::new(|_, f| vec![f]));
    down.send(activation(0)).unwrap();
    assert!(matches!(up.recv().unwrap(), Message::Activation { micro_batch: 0, .. }));
    up.send(Message::Gradient { micro_batch: 0, tensor: Tensor::ones([10], (Kind::Float, Device::Cpu)) }).unwrap();
    assert!(matches!(down.recv().unwrap(), Message::Gradient { micro_batch: 0, .. }));
    drop((down, up));
    proxy.join().unwrap();
    let (to_listener, to_connector) = (captured.to_listener.lock().unwrap(), captured.to_connector.lock().unwrap());
    assert!(to_listener.len() > 4000 && to_connector.len() > 40, "the capture missed traffic");
    assert!(!contains(&to_listener, TOKEN), "the token went to the listener in clear");
    assert!(!contains(&to_connector, TOKEN), "the token went to the connector in clear");
}

/// The error stage 1 gets for stage 0's second frame (its first after the hello) edited on the
/// way, after stage 0 sends micro-batches 0 and 1: the messages before it, then the error.
fn received_after(edit: Edit) -> (Vec<u32>, TransportError) {
    let (mut down, mut up, _, proxy) = linked_through(edit);
    down.send(activation(0)).unwrap();
    down.send(activation(1)).unwrap();
    let mut got = vec![];
    let err = loop {
        match up.recv() {
            Ok(Message::Activation { micro_batch, tensor }) => {
                let want = Tensor::arange(1000, (Kind::Float, Device::Cpu)) + micro_batch as f64;
                assert!(tensor.equal(&want), "micro-batch {micro_batch} arrived altered");
                got.push(micro_batch);
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => break e,
        }
    };
    drop((down, up));
    proxy.join().unwrap();
    (got, err)
}

fn assert_refused(what: &str, err: &TransportError) {
    assert!(
        matches!(err, TransportError::Protocol { peer, .. } if *peer == Rank::stage(0)),
        "{what}: expected a protocol error naming stage 0, got {err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("pipeline stage 0") && text.contains("failed authentication"), "{what}: {text}");
}

#[test]
fn a_tampered_frame_is_refused() {
    // A byte of the tensor's data flipped, past the frame's header.
    let (got, err) = received_after(Box::new(|n, mut f| {
        if n == 1 {
            let at = f.len() / 2;
            f[at] ^= 0x40;
        }
        vec![f]
    }));
    assert!(got.is_empty(), "{got:?}");
    assert_refused("a flipped byte", &err);
}

#[test]
fn a_replayed_reordered_or_dropped_frame_is_refused() {
    let (got, err) = received_after(Box::new(|n, f| if n == 1 { vec![f.clone(), f] } else { vec![f] }));
    assert_eq!(got, [0], "replayed: the original passes, its copy must not");
    assert_refused("a replayed frame", &err);
    let mut held = None;
    let (got, err) = received_after(Box::new(move |n, f| match n {
        1 => {
            held = Some(f);
            vec![]
        }
        2 => vec![f, held.take().unwrap()],
        _ => vec![f],
    }));
    assert!(got.is_empty(), "reordered: {got:?}");
    assert_refused("reordered frames", &err);
    let (got, err) = received_after(Box::new(|n, f| if n == 1 { vec![] } else { vec![f] }));
    assert!(got.is_empty(), "dropped: {got:?}");
    assert_refused("a frame after a dropped one", &err);
}

#[test]
fn a_listener_that_cannot_prove_the_token_is_not_trusted() {
    let (listener, addr) = listen();
    // It challenges as a real listener would, then welcomes with a made-up proof.
    let fake = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut challenge = vec![9u8, 0, 0, 0, 0];
        challenge.extend(b"FRUGALPP");
        challenge.extend(3u32.to_be_bytes());
        challenge.extend([7u8; 32]);
        s.write_all(&(challenge.len() as u32).to_be_bytes()).unwrap();
        s.write_all(&challenge).unwrap();
        let mut len = [0u8; 4];
        s.read_exact(&mut len).unwrap();
        let mut hello = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut hello).unwrap();
        let mut welcome = vec![6u8, 0, 0, 0, 0];
        welcome.extend([0u8; 32]);
        s.write_all(&(welcome.len() as u32).to_be_bytes()).unwrap();
        s.write_all(&welcome).unwrap();
        hello
    });
    let err = tcp::connect_downstream(&addr, 0, TOKEN, LONG, &Fault::default()).err().expect("a made-up proof must not pass");
    let hello = fake.join().unwrap();
    assert!(!contains(&hello, TOKEN), "the hello carries the token");
    assert!(matches!(err, TransportError::Protocol { peer, .. } if peer == Rank::stage(1)), "{err:?}");
    assert!(err.to_string().contains("does not prove that it holds the job's token"), "{err}");
}
