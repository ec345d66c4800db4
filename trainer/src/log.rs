//! The trainer's own log lines beside its events: warnings and errors. On a terminal they are
//! text (`frugal-trainer: …` on stderr); where the output is JSON lines (a pod, `--json`) each is
//! one JSON object on stderr, and every line of either stream carries the same keys, so one
//! parser reads both: `timestamp`, `level` (`INFO` for events, `WARN`, `ERROR`, as the operator writes them), `target` (the
//! module that wrote it), `job` and `namespace` (the TrainingJob's, when known), then the event's
//! fields or `message`.

use std::io::Write as _;
use std::sync::OnceLock;

use k8s_openapi::jiff::Timestamp;
use serde_json::{Map, Value, json};

/// How the process logs, set once by [`init`]; text without a job until then.
#[derive(Debug)]
struct Context {
    json: bool,
    job: Option<String>,
    namespace: Option<String>,
}

static CONTEXT: OnceLock<Context> = OnceLock::new();

fn context() -> &'static Context {
    static UNSET: Context = Context { json: false, job: None, namespace: None };
    CONTEXT.get().unwrap_or(&UNSET)
}

/// Sets how the process logs: JSON lines or text, and the job and namespace every line names.
/// The first call wins.
pub fn init(json: bool, job: Option<String>, namespace: Option<String>) {
    let _ = CONTEXT.set(Context { json, job, namespace });
}

/// Whether log lines are JSON.
pub fn json() -> bool {
    context().json
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Self::Info => "INFO",
            Self::Warn => "WARN",
            Self::Error => "ERROR",
        }
    }
}

/// The keys every JSON line starts with.
pub fn head(level: Level, target: &str) -> Map<String, Value> {
    let c = context();
    let mut line = Map::new();
    line.insert("timestamp".into(), json!(Timestamp::now().to_string()));
    line.insert("level".into(), json!(level.name()));
    line.insert("target".into(), json!(target));
    line.insert("job".into(), json!(c.job));
    line.insert("namespace".into(), json!(c.namespace));
    line
}

/// A log line of `level` from `target` (a module path).
pub fn line(level: Level, target: &str, message: &str) {
    let text = if json() {
        let mut line = head(level, target);
        line.insert("message".into(), json!(message));
        Value::Object(line).to_string()
    } else {
        format!("frugal-trainer: {}{message}", if level == Level::Error { "error: " } else { "" })
    };
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{text}");
}

/// Something worth a line beside the events (an upload that finished).
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::line($crate::log::Level::Info, module_path!(), &format!($($arg)*)) };
}

/// A warning: something went wrong and the trainer goes on.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log::line($crate::log::Level::Warn, module_path!(), &format!($($arg)*)) };
}

/// An error: the command stops.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log::line($crate::log::Level::Error, module_path!(), &format!($($arg)*)) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_names_its_level_target_job_and_namespace() {
        init(true, Some("lm".into()), Some("ml".into()));
        let mut line = head(Level::Warn, "frugal_trainer::checkpoint");
        line.insert("message".into(), json!("x"));
        let parsed: Value = serde_json::from_str(&Value::Object(line).to_string()).unwrap();
        assert_eq!(parsed["level"], "WARN");
        assert_eq!(parsed["target"], "frugal_trainer::checkpoint");
        assert_eq!((parsed["job"].as_str(), parsed["namespace"].as_str()), (Some("lm"), Some("ml")));
        assert!(parsed["timestamp"].as_str().unwrap().parse::<Timestamp>().is_ok());
    }
}
