//! What a run tells the person or system watching it: a progress bar on a terminal, JSON lines
//! (one object per event) otherwise, and the final summary.

use serde::Serialize;
use serde_json::{Value, json};
use std::io::{IsTerminal, Write};
use std::time::Instant;

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub job: String,
    pub device: String,
    pub precision: String,
    pub steps: i64,
    pub tokens: i64,
    pub params_total: i64,
    pub params_active: i64,
    pub flops_per_token: f64,
    pub total_flops: f64,
    pub seconds: f64,
    pub tokens_per_second: f64,
    pub achieved_tflops: f64,
    pub mfu: f64,
    pub peak_source: String,
    pub train_loss: f64,
    pub val_loss: Option<f64>,
    pub dropped_token_fraction: Option<f64>,
    pub skipped_steps: i64,
    pub stopped_by: String,
    pub checkpoint: Option<String>,
}

pub struct Reporter {
    tty: bool,
    total_steps: i64,
    last_draw: Option<Instant>,
}

impl Reporter {
    /// A progress bar when stderr is a terminal (unless `json`), JSON lines on stdout otherwise.
    pub fn new(total_steps: i64, json: bool) -> Self {
        Self { tty: !json && std::io::stderr().is_terminal(), total_steps, last_draw: None }
    }

    pub fn is_tty(&self) -> bool {
        self.tty
    }

    /// A non-step event (start, eval, checkpoint, ...).
    pub fn event(&mut self, kind: &str, mut fields: Value) {
        if let Value::Object(m) = &mut fields {
            m.insert("event".into(), json!(kind));
        }
        if self.tty {
            self.clear_bar();
            let text = match &fields {
                Value::Object(m) => m
                    .iter()
                    .filter(|(k, _)| k.as_str() != "event")
                    .map(|(k, v)| format!("{k}={}", compact(v)))
                    .collect::<Vec<_>>()
                    .join(" "),
                v => v.to_string(),
            };
            eprintln!("{kind:>10}  {text}");
        } else {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{fields}");
            let _ = out.flush();
        }
    }

    pub fn step(&mut self, step: i64, loss: f64, lr: f64, tokens_per_second: f64, mfu: f64, extra: Value) {
        if self.tty {
            // Redraw at most ~10 times a second.
            if self.last_draw.is_some_and(|t| t.elapsed().as_millis() < 100) && step < self.total_steps {
                return;
            }
            self.last_draw = Some(Instant::now());
            let width = 30usize;
            let done = ((step as f64 / self.total_steps.max(1) as f64) * width as f64) as usize;
            let bar: String = "█".repeat(done.min(width)) + &"·".repeat(width - done.min(width));
            eprint!(
                "\r\x1b[2K{bar} {step}/{} loss {loss:.4} lr {lr:.2e} {:.0} tok/s MFU {:.1}%",
                self.total_steps,
                tokens_per_second,
                mfu * 100.0
            );
            let _ = std::io::stderr().flush();
        } else {
            let mut fields = json!({
                "step": step, "loss": loss, "lr": lr,
                "tokens_per_second": tokens_per_second, "mfu": mfu,
            });
            if let (Value::Object(m), Value::Object(e)) = (&mut fields, extra) {
                m.extend(e);
            }
            self.event("step", fields);
        }
    }

    fn clear_bar(&mut self) {
        if self.last_draw.is_some() {
            eprint!("\r\x1b[2K");
        }
    }

    pub fn summary(&mut self, s: &Summary) {
        if self.tty {
            self.clear_bar();
            eprintln!();
            eprintln!("job            {}", s.job);
            eprintln!("device         {} ({})", s.device, s.precision);
            eprintln!("parameters     {} total, {} active", human(s.params_total as f64), human(s.params_active as f64));
            eprintln!("FLOPs          {:.3e} per token, {:.3e} total", s.flops_per_token, s.total_flops);
            eprintln!("steps          {} ({} tokens) in {:.1} s, stopped by {}", s.steps, s.tokens, s.seconds, s.stopped_by);
            eprintln!("throughput     {:.0} tokens/s, {:.3} TFLOP/s, MFU {:.1}% of {}", s.tokens_per_second, s.achieved_tflops, s.mfu * 100.0, s.peak_source);
            eprintln!("loss           train {:.4}{}", s.train_loss, s.val_loss.map(|v| format!(", validation {v:.4}")).unwrap_or_default());
            if let Some(d) = s.dropped_token_fraction {
                eprintln!("MoE            {:.2}% of token-expert assignments dropped", d * 100.0);
            }
            if let Some(c) = &s.checkpoint {
                eprintln!("checkpoint     {c}");
            }
        } else {
            self.event("summary", serde_json::to_value(s).expect("summary serialises"));
        }
    }
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

pub fn human(x: f64) -> String {
    if x >= 1e9 {
        format!("{:.2}B", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}K", x / 1e3)
    } else {
        format!("{x}")
    }
}
