//! Prometheus metrics, served as text on `/metrics` by a small thread (no HTTP framework: one
//! GET, one response).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// What [`Metrics::record_step`] publishes.
pub struct StepGauges {
    pub tokens: i64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens_per_second: f64,
    pub mfu: f64,
    pub loss_scale: f64,
}

/// A gauge: its help text, its type and its value.
type Gauge = (&'static str, &'static str, f64);

#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<Mutex<BTreeMap<&'static str, Gauge>>>,
    labels: Arc<String>,
}

impl Metrics {
    pub fn new(job: &str) -> Self {
        let job = job.replace('\\', "\\\\").replace('"', "\\\"");
        Self { inner: Default::default(), labels: Arc::new(format!("{{job=\"{job}\"}}")) }
    }

    pub fn gauge(&self, name: &'static str, help: &'static str, value: f64) {
        self.inner.lock().unwrap().insert(name, (help, "gauge", value));
    }

    pub fn counter(&self, name: &'static str, help: &'static str, value: f64) {
        self.inner.lock().unwrap().insert(name, (help, "counter", value));
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, (help, kind, value)) in self.inner.lock().unwrap().iter() {
            let v = if value.is_finite() { *value } else { 0.0 };
            out += &format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{} {v}\n", self.labels);
        }
        out
    }

    /// Training progress, published by every process of a run: steps done, steps skipped on
    /// overflow and (with MoE) the dropped fraction of the last step.
    pub fn record_progress(&self, step: i64, skipped_steps: i64, dropped_fraction: Option<f64>) {
        self.gauge("frugal_trainer_step", "Optimizer steps completed.", step as f64);
        self.counter("frugal_trainer_skipped_steps_total", "Steps skipped on gradient overflow.", skipped_steps as f64);
        if let Some(d) = dropped_fraction {
            self.gauge("frugal_trainer_moe_dropped_fraction", "Token-expert assignments dropped for capacity.", d);
        }
    }

    /// The last step's numbers, published by the process that computes the loss.
    pub fn record_step(&self, s: &StepGauges) {
        self.counter("frugal_trainer_tokens_total", "Training tokens consumed.", s.tokens as f64);
        self.gauge("frugal_trainer_loss", "Training loss of the last step.", s.loss);
        self.gauge("frugal_trainer_learning_rate", "Learning rate of the last step.", s.lr);
        self.gauge("frugal_trainer_grad_norm", "Global gradient norm before clipping.", s.grad_norm);
        self.gauge("frugal_trainer_tokens_per_second", "Training throughput of the last step.", s.tokens_per_second);
        self.gauge("frugal_trainer_mfu", "Model FLOPs utilisation of the last step.", s.mfu);
        self.gauge("frugal_trainer_loss_scale", "fp16 dynamic loss scale.", s.loss_scale);
    }

    /// Serves on `port` at the pod's address (`$POD_IP`; every interface outside a pod);
    /// returns the port bound (useful with 0).
    pub fn serve_port(&self, port: u16) -> anyhow::Result<u16> {
        let addr = frugal_api::contract::listen_address(std::env::var(frugal_api::contract::env::POD_IP).ok().as_deref(), port);
        anyhow::Context::with_context(self.serve(&addr), || format!("serving metrics on port {port}"))
    }

    /// Serves `/metrics` on `addr` (e.g. `0.0.0.0:9400`) from a background thread; returns the
    /// bound port (useful with port 0).
    pub fn serve(&self, addr: &str) -> std::io::Result<u16> {
        let listener = TcpListener::bind(addr)?;
        let port = listener.local_addr()?.port();
        let metrics = self.clone();
        std::thread::Builder::new().name("metrics".into()).spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(&stream);
                let mut request = String::new();
                if reader.read_line(&mut request).is_err() {
                    continue;
                }
                // Drain headers.
                let mut line = String::new();
                while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
                    line.clear();
                }
                let (status, body) = if request.starts_with("GET /metrics") {
                    ("200 OK", metrics.render())
                } else if request.starts_with("GET /healthz") {
                    ("200 OK", "ok\n".to_string())
                } else {
                    ("404 Not Found", "not found\n".to_string())
                };
                let mut s = &stream;
                let _ = write!(
                    s,
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        })?;
        Ok(port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn serves_prometheus_text() {
        let m = Metrics::new("demo");
        m.gauge("frugal_trainer_loss", "Training loss.", 2.5);
        let port = m.serve("127.0.0.1:0").unwrap();
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        assert!(body.contains("frugal_trainer_loss{job=\"demo\"} 2.5"), "{body}");
    }
}
