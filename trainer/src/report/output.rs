//! What a run tells the person or system watching it: a progress bar on a terminal, JSON lines
//! (one object per event) otherwise, and the final summary.

use serde_json::Value;
use std::io::{IsTerminal, Write};
use std::time::Instant;

use crate::log::{self, Level};
use crate::report::eta::Eta;
use crate::report::event::RunEvent;
use crate::report::summary::{Summary, human};

pub struct Reporter {
    tty: bool,
    total_steps: i64,
    last_draw: Option<Instant>,
    /// The bar's percentage and time left, as the status reports them.
    eta: Eta,
    clock: Instant,
    /// Every event also goes here (the pod's status reporter), whatever is printed.
    sink: Option<std::sync::mpsc::Sender<RunEvent>>,
}

impl Reporter {
    /// A progress bar when stderr is a terminal (unless `json`), JSON lines on stdout otherwise.
    pub fn new(total_steps: i64, json: bool) -> Self {
        Self {
            tty: !json && std::io::stderr().is_terminal(),
            total_steps,
            last_draw: None,
            eta: Eta::new(total_steps, None),
            clock: Instant::now(),
            sink: None,
        }
    }

    /// Also sends every event to `sink`.
    pub fn with_sink(mut self, sink: Option<std::sync::mpsc::Sender<RunEvent>>) -> Self {
        self.sink = sink;
        self
    }

    pub fn is_tty(&self) -> bool {
        self.tty
    }

    /// Reports one event: to the sink, and as a JSON line with its time (or, on a terminal, as
    /// the progress bar for a step and a line of `key=value` for the others).
    pub fn emit(&mut self, mut event: RunEvent) {
        match &mut event {
            RunEvent::Start(start) => self.eta = Eta::for_run(start),
            RunEvent::Step(s) => {
                // how far the run is and how long it has left, once, for every reader of the step
                self.eta.step(self.clock.elapsed().as_secs_f64(), s.step, s.tokens);
                let estimate = self.eta.estimate();
                (s.percent, s.remaining_seconds) = (estimate.map(|e| e.percent), estimate.and_then(|e| e.remaining_seconds));
            }
            RunEvent::Eval(e) => self.eta.evaluation(self.eta.tokens_at(e.step).unwrap_or(0), e.val_loss, e.bits_per_byte, e.quality_target_reached),
            _ => {}
        }
        if let Some(sink) = &self.sink {
            let _ = sink.send(event.clone());
        }
        if !self.tty {
            let mut line = log::head(Level::Info, "frugal_trainer::run");
            if let Value::Object(fields) = event.to_value() {
                line.extend(fields);
            }
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", Value::Object(line));
            let _ = out.flush();
            return;
        }
        match &event {
            RunEvent::Step(s) => self.draw(s),
            RunEvent::Summary(s) => self.print_summary(s),
            other => {
                self.clear_bar();
                let value = other.to_value();
                let kind = value["event"].as_str().unwrap_or_default().to_string();
                let text = match &value {
                    Value::Object(m) => {
                        m.iter().filter(|(k, _)| k.as_str() != "event").map(|(k, v)| format!("{k}={}", compact(v))).collect::<Vec<_>>().join(" ")
                    }
                    v => v.to_string(),
                };
                eprintln!("{kind:>10}  {text}");
            }
        }
    }

    /// The progress bar, redrawn at most ~10 times a second.
    fn draw(&mut self, s: &crate::report::event::Step) {
        if self.last_draw.is_some_and(|t| t.elapsed().as_millis() < 100) && s.step < self.total_steps {
            return;
        }
        self.last_draw = Some(Instant::now());
        let width = 30usize;
        let done = ((s.step as f64 / self.total_steps.max(1) as f64) * width as f64) as usize;
        let bar: String = "█".repeat(done.min(width)) + &"·".repeat(width - done.min(width));
        let left = s.remaining_seconds.map(|r| format!(" {} left", crate::progress::clock(r))).unwrap_or_default();
        eprint!(
            "\r\x1b[2K{bar} {}/{} {}%{left} loss {:.4} lr {:.2e} {:.0} tok/s MFU {:.1}%",
            s.step,
            self.total_steps,
            s.percent.unwrap_or(0),
            s.loss,
            s.lr,
            s.tokens_per_second,
            s.mfu * 100.0
        );
        let _ = std::io::stderr().flush();
    }

    fn clear_bar(&mut self) {
        if self.last_draw.is_some() {
            eprint!("\r\x1b[2K");
        }
    }

    /// The run's summary: a JSON line, or a table on a terminal.
    pub fn summary(&mut self, s: &Summary) {
        self.emit(RunEvent::Summary(Box::new(s.clone())));
    }

    fn print_summary(&mut self, s: &Summary) {
        {
            self.clear_bar();
            eprintln!();
            eprintln!("job            {}", s.job);
            eprintln!("device         {} ({})", s.device, s.precision);
            eprintln!("parameters     {} total, {} active", human(s.params_total as f64), human(s.params_active as f64));
            eprintln!("FLOPs          {:.3e} per token, {:.3e} total", s.flops_per_token, s.total_flops);
            eprintln!("steps          {} ({} tokens) in {:.1} s, stopped by {}", s.steps, s.tokens, s.seconds, s.stopped_by);
            eprintln!(
                "throughput     {:.0} tokens/s, {:.3} TFLOP/s, MFU {:.1}% of {}",
                s.tokens_per_second,
                s.achieved_tflops,
                s.mfu * 100.0,
                s.peak_source
            );
            eprintln!("loss           train {:.4}{}", s.train_loss, s.val_loss.map(|v| format!(", validation {v:.4}")).unwrap_or_default());
            if let Some(q) = &s.quality {
                let zs: Vec<String> = q.zero_shot.iter().map(|z| format!("{} {:.1}% of {}", z.name, z.accuracy * 100.0, z.examples)).collect();
                eprintln!(
                    "quality        {:.4} bits/byte, perplexity {:.3}{}",
                    q.bits_per_byte.unwrap_or(f64::NAN),
                    q.perplexity.unwrap_or(f64::NAN),
                    if zs.is_empty() { String::new() } else { format!("; zero-shot {}", zs.join(", ")) }
                );
            }
            if let Some(t) = &s.target {
                eprintln!("target         {}", t.message);
            }
            let unit = if s.gpus > 0 { "GPU-hours" } else { "CPU-hours" };
            eprintln!("spent          {:.6} {unit}, {:.2} {}", s.device_hours, s.cost, s.currency);
            let p = &s.provenance;
            eprintln!("provenance     config {} seed {} code {} libtorch {}", short(&p.config_hash), p.seed, p.code_version, p.libtorch_version);
            eprintln!("               data {} tokenizer {} on {}", short(&p.data_fingerprint), short(&p.tokenizer_fingerprint), p.device);
            if let Some(d) = s.dropped_token_fraction {
                eprintln!("MoE            {:.2}% of token-expert assignments dropped", d * 100.0);
            }
            if let Some(c) = &s.checkpoint {
                eprintln!("checkpoint     {c}");
            }
        }
    }
}

fn short(h: &str) -> &str {
    &h[..h.len().min(12)]
}

fn compact(v: &Value) -> String {
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.4}"),
            _ => n.to_string(),
        },
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use crate::report::TargetOutcome;
    use crate::report::event::{Checkpoint, Eval, Resume, Start, Step};

    use super::*;

    /// An event's own fields never hide the keys every log line starts with (`job` is the
    /// start event's own, the same name).
    #[test]
    fn no_event_field_is_named_like_a_log_key() {
        let text = ["job", "device", "precision", "peak_source", "stopped_by", "reason", "model", "currency"].map(|k| (k, serde_json::json!("")));
        let numbers = [
            "steps",
            "tokens",
            "params_total",
            "params_active",
            "flops_per_token",
            "total_flops",
            "seconds",
            "tokens_per_second",
            "achieved_tflops",
            "mfu",
            "train_loss",
            "skipped_steps",
            "gpus",
            "device_hours",
            "cost",
        ]
        .map(|k| (k, serde_json::json!(0)));
        let fields: serde_json::Map<String, Value> = text.into_iter().chain(numbers).map(|(k, v)| (k.to_string(), v)).collect();
        let mut summary: Summary = serde_json::from_value(Value::Object(fields)).unwrap();
        summary.target = Some(TargetOutcome {
            metric: "validationLoss".into(),
            value: 1.0,
            reached: false,
            step: None,
            tokens: None,
            device_hours: None,
            best: None,
            message: String::new(),
        });
        let events = [
            RunEvent::Start(Start::default()),
            RunEvent::Resume(Resume::default()),
            RunEvent::Step(Step::default()),
            RunEvent::Eval(Eval::default()),
            RunEvent::Checkpoint(Checkpoint::default()),
            RunEvent::Metrics { port: 1 },
            RunEvent::Summary(Box::new(summary)),
        ];
        for event in events {
            let value = event.to_value();
            for key in ["timestamp", "level", "target", "namespace", "message"] {
                assert!(value.get(key).is_none(), "{} has its own {key}", value["event"]);
            }
        }
    }
}
