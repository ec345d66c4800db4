//! Data parallelism: the same stage of every replica forms a ring, each sending to the next
//! replica and receiving from the previous one. A ring all-reduce sums a flat buffer in
//! 2·(R − 1) exchanges per bucket, each moving 1/R of it (reduce-scatter, then all-gather), so
//! every replica sends 2·(R − 1)/R of the buffer whatever R is; every replica ends with the
//! same bits (each chunk's sum is computed once, by the replica that completes it, and copied).
//! A ring all-gather spreads each replica's region of a buffer to the others (the weights each
//! updated when the optimizer state is sharded).

use super::transport::{Link, Message, TransportError};
use tch::{Device, Tensor};

/// PyTorch DDP's default bucket, 25 MiB of fp32: large enough that per-message costs vanish,
/// small enough that a frame stays far below the transport's limit.
pub const DEFAULT_BUCKET_ELEMENTS: i64 = 25 * (1 << 20) / 4;

/// One stage's place in its ring.
pub struct Ring {
    pub replica: usize,
    pub replicas: usize,
    /// To the same stage of replica `replica + 1` (chunks go out).
    pub next: Box<dyn Link>,
    /// From the same stage of replica `replica − 1` (chunks come in).
    pub previous: Box<dyn Link>,
    /// Exchanges so far; both ends count alike, so a chunk out of order is caught.
    exchanged: u32,
    /// Bytes of tensor data sent to the next replica so far.
    pub sent_bytes: u64,
}

impl Ring {
    pub fn new(replica: usize, replicas: usize, next: Box<dyn Link>, previous: Box<dyn Link>) -> Self {
        Self { replica, replicas, next, previous, exchanged: 0, sent_bytes: 0 }
    }

    /// Sends `out` (a copy, on the host) to the next replica and returns what the previous one
    /// sent in the same exchange.
    fn exchange(&mut self, out: &Tensor) -> Result<Tensor, TransportError> {
        let index = self.exchanged;
        self.exchanged = self.exchanged.wrapping_add(1);
        self.sent_bytes += (out.numel() * out.kind().elt_size_in_bytes()) as u64;
        self.next.send(Message::Chunk { index, tensor: out.to_device(Device::Cpu).copy() })?;
        let peer = self.previous.peer();
        match self.previous.recv()? {
            Message::Chunk { index: got, tensor } if got == index => Ok(tensor),
            Message::Chunk { index: got, .. } => {
                Err(TransportError::Protocol { peer, detail: format!("expected ring chunk {index}, received {got}") })
            }
            other => Err(TransportError::Protocol { peer, detail: format!("expected a ring chunk, received {}", other.name()) }),
        }
    }

    /// Sums the flat tensor `buf` across the replicas, in place, `bucket` elements at a time.
    pub fn all_reduce(&mut self, buf: &Tensor, bucket: i64) -> Result<(), TransportError> {
        let n = self.replicas;
        if n < 2 {
            return Ok(());
        }
        let _guard = tch::no_grad_guard();
        let (r, total) = (self.replica, buf.numel() as i64);
        let bucket = bucket.max(n as i64);
        let mut start = 0;
        while start < total {
            let len = bucket.min(total - start);
            let chunk = |i: usize| {
                let (a, b) = (start + len * i as i64 / n as i64, start + len * (i as i64 + 1) / n as i64);
                buf.narrow(0, a, b - a)
            };
            // Reduce-scatter: after n − 1 exchanges replica r holds the whole sum of chunk r.
            for k in 0..n - 1 {
                let (send, recv) = ((r + 2 * n - 1 - k) % n, (r + 2 * n - 2 - k) % n);
                let got = self.exchange(&chunk(send))?;
                let _ = chunk(recv).g_add_(&got.to_device(buf.device()));
            }
            // All-gather: each completed chunk travels once around the ring.
            for k in 0..n - 1 {
                let (send, recv) = ((r + n - k) % n, (r + 2 * n - 1 - k) % n);
                let got = self.exchange(&chunk(send))?;
                chunk(recv).copy_(&got.to_device(buf.device()));
            }
            start += len;
        }
        Ok(())
    }

    /// Spreads `regions[i]` of `buf` from replica i to every replica, in place.
    pub fn all_gather(&mut self, buf: &Tensor, regions: &[(i64, i64)]) -> Result<(), TransportError> {
        let n = self.replicas;
        if n < 2 {
            return Ok(());
        }
        assert_eq!(regions.len(), n, "one region per replica");
        let _guard = tch::no_grad_guard();
        let r = self.replica;
        let region = |i: usize| buf.narrow(0, regions[i].0, regions[i].1 - regions[i].0);
        for k in 0..n - 1 {
            let (send, recv) = ((r + n - k) % n, (r + 2 * n - 1 - k) % n);
            let got = self.exchange(&region(send))?;
            let mut dst = region(recv);
            if got.size() != dst.size() {
                return Err(TransportError::Protocol {
                    peer: self.previous.peer(),
                    detail: format!("all-gather of region {recv}: {:?} elements arrived, {:?} expected", got.size(), dst.size()),
                });
            }
            dst.copy_(&got.to_device(buf.device()));
        }
        Ok(())
    }

    /// Tells both ring neighbours that this stage failed.
    pub fn abort(&mut self, reason: &str) {
        for link in [&mut self.next, &mut self.previous] {
            let _ = link.send(Message::Abort { reason: reason.to_string() });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parallel::transport::{DEFAULT_TIMEOUT, Fault, inproc};
    use tch::Kind;

    fn rings(n: usize) -> Vec<Ring> {
        let faults: Vec<Fault> = (0..n).map(|_| Fault::default()).collect();
        inproc::ring(0, DEFAULT_TIMEOUT, &faults).into_iter().enumerate().map(|(r, (next, prev))| Ring::new(r, n, next, prev)).collect()
    }

    #[test]
    fn ring_all_reduce_sums_and_every_replica_gets_the_same_bits() {
        for (n, numel, bucket) in [(2, 10, 4), (3, 17, 5), (4, 7, 1 << 20), (3, 2, 3)] {
            let inputs: Vec<Tensor> = (0..n).map(|r| Tensor::randn([numel], (Kind::Float, Device::Cpu)) * (r + 1) as f64).collect();
            let want = inputs.iter().fold(Tensor::zeros([numel], (Kind::Float, Device::Cpu)), |a, t| a + t);
            let handles: Vec<_> = rings(n)
                .into_iter()
                .zip(inputs.iter().map(|t| t.copy()))
                .map(|(mut ring, buf)| {
                    std::thread::spawn(move || {
                        ring.all_reduce(&buf, bucket).unwrap();
                        (buf, ring.sent_bytes)
                    })
                })
                .collect();
            let got: Vec<(Tensor, u64)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            if (n, numel) == (2, 10) {
                // 2·(n − 1)/n of the buffer leaves each replica, in fp32
                assert!(got.iter().all(|(_, sent)| *sent == 40), "{:?}", got.iter().map(|g| g.1).collect::<Vec<_>>());
            }
            let got: Vec<Tensor> = got.into_iter().map(|(t, _)| t).collect();
            for g in &got {
                assert!((g - &want).abs().max().double_value(&[]) < 1e-5, "{n} replicas, {numel} elements, buckets of {bucket}");
                assert!(g.equal(&got[0]), "replicas disagree in the last bits");
            }
        }
    }

    #[test]
    fn ring_all_gather_spreads_each_region() {
        let n = 3;
        let regions = [(0, 4), (4, 4), (4, 9)];
        let handles: Vec<_> = rings(n)
            .into_iter()
            .map(|mut ring| {
                std::thread::spawn(move || {
                    let r = ring.replica;
                    let buf = Tensor::full([9], -1.0, (Kind::Float, Device::Cpu));
                    let (a, b) = regions[r];
                    let _ = buf.narrow(0, a, b - a).fill_(r as f64);
                    ring.all_gather(&buf, &regions).unwrap();
                    buf
                })
            })
            .collect();
        let want = Tensor::from_slice(&[0f32, 0., 0., 0., 2., 2., 2., 2., 2.]);
        for h in handles {
            assert!(h.join().unwrap().equal(&want));
        }
    }
}
