//! Programs a test runs beside the cluster (Flux's controllers, Argo CD's components, a Redis):
//! each one's output in a log file of its own, all of them killed when the test drops them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context as _, Result, bail};

/// A loopback port free now, for a program to listen on.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Running programs and their logs; `what` names them in failures.
pub struct Processes {
    what: &'static str,
    dir: PathBuf,
    children: Vec<Child>,
    logs: Vec<PathBuf>,
}

impl Processes {
    /// None yet; their logs will go to `<dir>/<name>.log`.
    pub fn new(what: &'static str, dir: &Path) -> Self {
        Processes { what, dir: dir.to_path_buf(), children: Vec::new(), logs: Vec::new() }
    }

    /// Starts `cmd` as `name`, its stdout and stderr into `<dir>/<name>.log`.
    pub fn spawn(&mut self, name: &str, cmd: &mut Command) -> Result<()> {
        let path = self.dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&path)?;
        let child = cmd.stdin(Stdio::null()).stdout(file.try_clone()?).stderr(file).spawn().with_context(|| format!("starting {name}"))?;
        self.children.push(child);
        self.logs.push(path);
        Ok(())
    }

    /// The last `lines` lines of each log, for a failure's message.
    pub fn log_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for log in &self.logs {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            out += &format!("--- {}\n{}\n", log.display(), all[all.len().saturating_sub(lines)..].join("\n"));
        }
        out
    }

    /// Fails, with the logs' tails, if one of them has exited.
    pub fn running(&mut self) -> Result<()> {
        for child in &mut self.children {
            if let Some(status) = child.try_wait()? {
                bail!("one of {} exited ({status}):\n{}", self.what, self.log_tail(30));
            }
        }
        Ok(())
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.children {
            child.kill().ok();
            child.wait().ok();
        }
    }
}
