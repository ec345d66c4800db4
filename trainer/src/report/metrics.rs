//! Prometheus metrics of a run, encoded by `prometheus-client` (OpenMetrics text) and served on
//! `/metrics` (and `/healthz`) by a small server: one thread a connection, each with read and
//! write timeouts, so an idle or slow client never holds up a scrape. Every series carries the
//! label `training_job` (Prometheus keeps `job` for the scrape job); ratios end in `_ratio`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

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

/// How long a connection may take to send its request or read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

enum Series {
    Gauge(Gauge<f64, AtomicU64>),
    /// Set from a running total: it only goes up.
    Counter(Counter<f64, AtomicU64>),
}

struct Inner {
    registry: Registry,
    series: BTreeMap<&'static str, Series>,
}

#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Mutex<Inner>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new("")
    }
}

impl Metrics {
    /// The metrics of TrainingJob `job`.
    pub fn new(job: &str) -> Self {
        let registry = Registry::with_labels([("training_job".into(), job.to_string().into())].into_iter());
        Self { inner: Arc::new(Mutex::new(Inner { registry, series: BTreeMap::new() })) }
    }

    /// Sets gauge `name` (registered with `help` on first use); a non-finite value reads 0.
    pub fn gauge(&self, name: &'static str, help: &'static str, value: f64) {
        let value = if value.is_finite() { value } else { 0.0 };
        self.with(
            name,
            help,
            || Series::Gauge(Gauge::default()),
            |s| {
                if let Series::Gauge(g) = s {
                    g.set(value);
                }
            },
        );
    }

    /// Raises counter `name` (exposed as `name_total`) to the running total `value`.
    pub fn counter(&self, name: &'static str, help: &'static str, value: f64) {
        self.with(
            name,
            help,
            || Series::Counter(Counter::default()),
            |s| {
                if let Series::Counter(c) = s {
                    let delta = value - c.get();
                    if delta.is_finite() && delta > 0.0 {
                        c.inc_by(delta);
                    }
                }
            },
        );
    }

    /// Runs `update` on series `name`, registering the one `new` makes on first use.
    fn with(&self, name: &'static str, help: &'static str, new: impl FnOnce() -> Series, update: impl FnOnce(&Series)) {
        let mut inner = self.inner.lock().unwrap();
        let Inner { registry, series } = &mut *inner;
        let entry = series.entry(name).or_insert_with(|| {
            let made = new();
            match &made {
                Series::Gauge(g) => registry.register(name, help, g.clone()),
                Series::Counter(c) => registry.register(name, help, c.clone()),
            }
            made
        });
        update(entry);
    }

    /// The OpenMetrics text of every series.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.inner.lock().unwrap().registry).expect("writing to a String cannot fail");
        out
    }

    /// Training progress, published by every process of a run: steps done, steps skipped on
    /// overflow and (with MoE) the dropped fraction of the last step.
    pub fn record_progress(&self, step: i64, skipped_steps: i64, dropped_fraction: Option<f64>) {
        self.gauge("frugal_trainer_step", "Optimizer steps completed.", step as f64);
        self.counter("frugal_trainer_skipped_steps", "Steps skipped on gradient overflow.", skipped_steps as f64);
        if let Some(d) = dropped_fraction {
            self.gauge("frugal_trainer_moe_dropped_ratio", "Token-expert assignments dropped for capacity in the last step.", d);
        }
    }

    /// The last step's numbers, published by the process that computes the loss.
    pub fn record_step(&self, s: &StepGauges) {
        self.counter("frugal_trainer_tokens", "Training tokens consumed.", s.tokens as f64);
        self.gauge("frugal_trainer_loss", "Training loss of the last step.", s.loss);
        self.gauge("frugal_trainer_learning_rate", "Learning rate of the last step.", s.lr);
        self.gauge("frugal_trainer_grad_norm", "Global gradient norm before clipping.", s.grad_norm);
        self.gauge("frugal_trainer_tokens_per_second", "Training throughput of the last step.", s.tokens_per_second);
        self.gauge("frugal_trainer_mfu_ratio", "Model FLOPs utilisation of the last step.", s.mfu);
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
                let metrics = metrics.clone();
                // a connection that sends nothing times out on its own thread
                let _ = std::thread::Builder::new().name("metrics-conn".into()).spawn(move || answer(&stream, &metrics));
            }
        })?;
        Ok(port)
    }
}

/// Reads one request from `stream` and answers it.
fn answer(stream: &TcpStream, metrics: &Metrics) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let mut reader = BufReader::new(stream);
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    // the headers, up to the empty line
    let mut line = String::new();
    while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
        line.clear();
    }
    let (status, kind, body) = if request.starts_with("GET /metrics") {
        ("200 OK", "application/openmetrics-text; version=1.0.0; charset=utf-8", metrics.render())
    } else if request.starts_with("GET /healthz") {
        ("200 OK", "text/plain", "ok\n".to_string())
    } else {
        ("404 Not Found", "text/plain", "not found\n".to_string())
    };
    let mut s = stream;
    let _ = write!(s, "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn scrape(port: u16) -> String {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    }

    #[test]
    fn serves_openmetrics_text_labelled_with_the_training_job() {
        let m = Metrics::new("demo");
        m.gauge("frugal_trainer_loss", "Training loss.", 2.5);
        m.counter("frugal_trainer_tokens", "Training tokens consumed.", 640.0);
        m.counter("frugal_trainer_tokens", "Training tokens consumed.", 1280.0);
        m.gauge("frugal_trainer_mfu_ratio", "Model FLOPs utilisation.", f64::NAN);
        let body = scrape(m.serve("127.0.0.1:0").unwrap());
        assert!(body.contains("frugal_trainer_loss{training_job=\"demo\"} 2.5"), "{body}");
        assert!(
            body.contains("# TYPE frugal_trainer_tokens counter") && body.contains("frugal_trainer_tokens_total{training_job=\"demo\"} 1280"),
            "{body}"
        );
        assert!(body.contains("frugal_trainer_mfu_ratio{training_job=\"demo\"} 0"), "{body}");
        assert!(body.trim_end().ends_with("# EOF") && !body.contains("{job="), "{body}");
    }

    /// A client that connects and sends nothing (or half a request) must not hold up the next
    /// scrape.
    #[test]
    fn an_idle_connection_does_not_block_a_scrape() {
        let m = Metrics::new("demo");
        m.gauge("frugal_trainer_step", "Optimizer steps completed.", 3.0);
        let port = m.serve("127.0.0.1:0").unwrap();
        let _idle = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut half = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        half.write_all(b"GET /met").unwrap();
        let started = std::time::Instant::now();
        let body = scrape(port);
        assert!(body.contains("frugal_trainer_step{training_job=\"demo\"} 3"), "{body}");
        assert!(started.elapsed() < Duration::from_secs(2), "the scrape waited {:?}", started.elapsed());
    }
}
