//! Progress of the trainer's long commands (`prepare`, `eval`, `quantize`, `export`) and of a
//! resume's checkpoint load: on a terminal a line redrawn in place on stderr (the task, how much
//! of it is done, the percentage and the time left at the rate so far); where the output is JSON
//! lines, a `progress` event on stderr at most once a second and when the task ends, with the
//! keys of every log line ([`crate::log`]) and `task`, `unit`, `done`, `total`, `percent`,
//! `remaining_seconds`. The code doing the work calls [`begin`] and [`advance`]; nothing is
//! written unless the command turned progress on ([`enable`]), so library callers and tests stay
//! quiet.

use std::io::{IsTerminal as _, Write as _};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::log::{self, Level};

static ENABLED: AtomicBool = AtomicBool::new(false);
static TASK: Mutex<Option<Task>> = Mutex::new(None);

#[derive(Debug)]
struct Task {
    name: String,
    unit: &'static str,
    total: Option<u64>,
    done: u64,
    started: Instant,
    last: Option<Instant>,
    /// `done` as last written.
    shown: Option<u64>,
}

impl Task {
    fn percent(&self) -> Option<u64> {
        self.total.filter(|t| *t > 0).map(|t| (100 * self.done / t).min(100))
    }

    /// Seconds left at the rate so far; none before anything is done or without a total.
    fn remaining_seconds(&self) -> Option<f64> {
        let total = self.total?;
        let elapsed = self.started.elapsed().as_secs_f64();
        (self.done > 0 && elapsed > 0.0).then(|| total.saturating_sub(self.done) as f64 * elapsed / self.done as f64)
    }

    fn line(&self) -> Value {
        let mut line = log::head(Level::Info, "frugal_trainer::progress");
        line.insert("event".into(), json!("progress"));
        line.insert("task".into(), json!(self.name));
        line.insert("unit".into(), json!(self.unit));
        line.insert("done".into(), json!(self.done));
        line.insert("total".into(), json!(self.total));
        line.insert("percent".into(), json!(self.percent()));
        line.insert("remaining_seconds".into(), json!(self.remaining_seconds()));
        Value::Object(line)
    }

    fn text(&self) -> String {
        let of = self.total.map(|t| format!("/{t}")).unwrap_or_default();
        let percent = self.percent().map(|p| format!(" {p}%")).unwrap_or_default();
        let left = self.remaining_seconds().map(|s| format!(" {} left", clock(s))).unwrap_or_default();
        format!("{} {}{of} {}{percent}{left}", self.name, self.done, self.unit)
    }

    fn draw(&mut self, last: bool) {
        let json = log::json();
        let every = if json { Duration::from_secs(1) } else { Duration::from_millis(100) };
        if (!last && self.last.is_some_and(|t| t.elapsed() < every)) || (last && json && self.shown == Some(self.done)) {
            return;
        }
        self.last = Some(Instant::now());
        self.shown = Some(self.done);
        let mut err = std::io::stderr().lock();
        let _ = if json {
            writeln!(err, "{}", self.line())
        } else if std::io::stderr().is_terminal() {
            write!(err, "\r\x1b[2K{}{}", self.text(), if last { "\n" } else { "" })
        } else {
            Ok(())
        };
        let _ = err.flush();
    }
}

/// Turns progress on for this process (the long commands do; `train` only for its resume, [`shown`]).
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Progress shown until the guard drops (then as it was before): `train` shows its resume's
/// download and verification this way, and nothing of the training after it.
#[must_use]
pub struct Shown(bool);

pub fn shown() -> Shown {
    Shown(ENABLED.swap(true, Ordering::Relaxed))
}

impl Drop for Shown {
    fn drop(&mut self) {
        if !self.0 {
            cancel();
        }
        ENABLED.store(self.0, Ordering::Relaxed);
    }
}

/// A task begins: `total` of `unit` (documents, batches, tensors, files), if known. Ends the
/// one before it.
pub fn begin(name: &str, unit: &'static str, total: Option<u64>) {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    let mut task = TASK.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(t) = task.as_mut() {
        t.draw(true);
    }
    let mut t = Task { name: name.into(), unit, total, done: 0, started: Instant::now(), last: None, shown: None };
    t.draw(false);
    *task = Some(t);
}

/// `n` more of the task's units are done.
pub fn advance(n: u64) {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    if let Some(t) = TASK.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
        t.done += n;
        t.draw(false);
    }
}

/// The task ends (its last line says so).
pub fn end() {
    if let Some(mut t) = TASK.lock().unwrap_or_else(|p| p.into_inner()).take() {
        if let Some(total) = t.total {
            t.done = t.done.max(total);
        }
        t.draw(true);
    }
}

/// The task stops short (it failed): its last line says how far it got.
pub fn cancel() {
    if let Some(mut t) = TASK.lock().unwrap_or_else(|p| p.into_inner()).take() {
        t.draw(true);
    }
}

/// Seconds as a clock reads them: `42s`, `3m07s`, `2h05m`.
pub fn clock(seconds: f64) -> String {
    let s = seconds.round().max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s / 60 % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_says_how_far_it_is_and_how_long_is_left() {
        let mut t = Task { name: "eval".into(), unit: "batches", total: Some(40), done: 10, started: Instant::now(), last: None, shown: None };
        t.started -= Duration::from_secs(5);
        assert_eq!(t.percent(), Some(25));
        // 10 batches in 5 s: 30 more in 15 s
        assert!((t.remaining_seconds().unwrap() - 15.0).abs() < 0.1);
        let line = t.line();
        assert_eq!(
            (line["event"].as_str(), line["task"].as_str(), line["done"].as_u64(), line["total"].as_u64()),
            (Some("progress"), Some("eval"), Some(10), Some(40))
        );
        assert!(line["level"].is_string() && line["target"].is_string());
        assert!(t.text().starts_with("eval 10/40 batches 25% 1"), "{}", t.text());
        // without a total: how much, no percentage or time
        t.total = None;
        assert_eq!((t.percent(), t.remaining_seconds()), (None, None));
        assert_eq!(t.text(), "eval 10 batches");
    }

    #[test]
    fn time_left_reads_as_a_clock() {
        let read: Vec<String> = [0.4, 42.0, 187.0, 7500.0].into_iter().map(super::clock).collect();
        assert_eq!(read, ["0s", "42s", "3m07s", "2h05m"]);
    }
}
